"""The object store: one small API over ``s3://bucket/key`` and local paths, with the same semantics.

Why: datasets and checkpoints live in a local folder on one machine (the embedded default) and in
MinIO/SeaweedFS on Kubernetes (DESIGN.md §5, §6). Every step reads and writes them through this
module, so a URI is all a step needs, and a version without a ``manifest.json`` never exists.

    store = open_store(load_settings())          # or open_store(settings.storage)
    ref = publish_dir(store, "ckpt/", store.uri("checkpoints", "run1"), metadata={"step": 50})
    path = fetch_version(store, latest_version(store, store.uri("checkpoints", "run1")).uri, "out")

A URI is ``s3://bucket/key`` or a local path (relative, absolute or ``file://``). The S3 client is
made on first use of an ``s3://`` URI from ``StorageSettings`` (``DMMS_STORAGE__*``). Local writes
are atomic (temp file + ``os.replace``). Tests: ``pytest tests/unit/common/test_storage.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from minio.helpers import check_bucket_name
from pydantic import BaseModel, Field, ValidationError

from components.common.settings import Settings, SettingsError, StorageSettings, env_name

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
_TMP = ".dmms-tmp-"
_CHUNK = 1 << 20


class StorageError(RuntimeError):
    """An object-store operation failed; the message names the URI."""


class ObjectNotFound(StorageError):
    """No object at this URI."""

    def __init__(self, uri: str):
        super().__init__(f"no object at {uri}")
        self.uri = uri


class CorruptVersionError(StorageError):
    """A version is incomplete (no manifest) or a part does not match its manifest."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join_uri(base: str, *parts: str) -> str:
    """``join_uri("s3://b/x", "a", "c.txt")`` → ``s3://b/x/a/c.txt`` (also for local paths)."""
    pieces = [p.strip("/") for p in parts if p.strip("/")]
    return "/".join([base.rstrip("/"), *pieces]) if pieces else base


def folder_uri(prefix: str) -> str:
    """The folder form of ``prefix``, ending in "/" (S3 keys normalised)."""
    if is_s3(prefix):
        bucket, key = _split_s3(prefix)
        return f"s3://{bucket}/{key}/" if key else f"s3://{bucket}/"
    return prefix.rstrip("/") + "/"


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    parts = [p for p in key.split("/") if p]
    try:
        check_bucket_name(bucket)
        if any(p in (".", "..") for p in parts):
            raise ValueError(uri)
    except ValueError:
        raise StorageError(f"bad S3 URI {uri!r}: use s3://bucket/key (a valid bucket name, no '.' "
                           "or '..' parts)") from None
    return bucket, "/".join(parts)


def _local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def _digest(chunks: Iterator[bytes]) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    for chunk in chunks:
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from iter(lambda: f.read(_CHUNK), b"")


@contextmanager
def _atomic(dest: Path) -> Iterator[Path]:
    """A temp file beside ``dest`` that replaces it only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}{_TMP}", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(name)
        os.replace(name, dest)
    finally:
        Path(name).unlink(missing_ok=True)


def _make_client(s: StorageSettings) -> Minio:
    missing = [env_name("storage", f) for f in ("endpoint", "access_key", "secret_key") if not getattr(s, f)]
    if missing:
        raise SettingsError(f"s3:// URIs need {', '.join(missing)} (e.g. DMMS_STORAGE__ENDPOINT=minio:9000)")
    scheme, _, host = str(s.endpoint).rpartition("://")
    secure = s.secure if s.secure is not None else scheme == "https"
    retry = urllib3.Retry(total=s.retries, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                          raise_on_status=False)
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=min(10.0, s.timeout_s), read=s.timeout_s),
                               retries=retry, maxsize=10)
    log.info("S3 client for %s (secure=%s)", host, secure)
    return Minio(host.rstrip("/"), access_key=s.access_key.get_secret_value(),  # type: ignore[union-attr]
                 secret_key=s.secret_key.get_secret_value(),  # type: ignore[union-attr]
                 secure=secure, region=s.region, http_client=http)


class ObjectStore:
    """Bytes, files and folders at URIs. Copies take (source, destination); ``put_bytes`` (uri, data).

    Local paths and ``s3://`` behave the same: a folder is a prefix that exists while an object is
    under it; deleting an absent object is not an error; a missing object raises ObjectNotFound.
    """

    def __init__(self, settings: StorageSettings):
        self.settings = settings
        self._client: Minio | None = None

    @property
    def s3(self) -> Minio:
        """The S3 client, made on first use (a missing endpoint/key is a SettingsError)."""
        if self._client is None:
            self._client = _make_client(self.settings)
        return self._client

    def uri(self, *parts: str) -> str:
        """A URI under ``settings.root`` (``DMMS_STORAGE__ROOT``)."""
        return join_uri(self.settings.root, *parts)

    @contextmanager
    def _s3_op(self, uri: str, need_key: bool = True) -> Iterator[tuple[str, str]]:
        """Yield (bucket, key); turn SDK and urllib3 errors into StorageError naming the URI."""
        bucket, key = _split_s3(uri)
        if need_key and not key:
            raise StorageError(f"{uri!r} names a bucket, not an object: add a key (s3://bucket/key)")
        try:
            yield bucket, key
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFound(uri) from None
            if exc.code == "NoSuchBucket":
                raise StorageError(f"{uri}: bucket {bucket!r} does not exist: create it or change "
                                   f"{env_name('storage', 'root')}") from None
            raise StorageError(f"{uri}: S3 error {exc.code}: {exc.message}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise StorageError(f"{uri}: S3 endpoint {self.settings.endpoint} failed "
                               f"({self.settings.retries} retries): {exc}") from None

    def put_bytes(self, uri: str, data: bytes) -> None:
        if is_s3(uri):
            with self._s3_op(uri) as (bucket, key):
                self.s3.put_object(bucket, key, io.BytesIO(data), len(data))
        else:
            with _atomic(_local_path(uri)) as tmp:
                tmp.write_bytes(data)

    def put_file(self, src: str | Path, uri: str) -> None:
        if not Path(src).is_file():
            raise StorageError(f"cannot upload {src}: not a file")
        if is_s3(uri):
            with self._s3_op(uri) as (bucket, key):
                self.s3.fput_object(bucket, key, str(src))
        else:
            with _atomic(_local_path(uri)) as tmp:
                shutil.copyfile(src, tmp)

    def iter_bytes(self, uri: str) -> Iterator[bytes]:
        """The object's bytes in chunks, streamed."""
        if not is_s3(uri):
            if not _local_path(uri).is_file():
                raise ObjectNotFound(uri)
            yield from _read_chunks(_local_path(uri))
            return
        with self._s3_op(uri) as (bucket, key):
            resp = self.s3.get_object(bucket, key)
            try:
                yield from resp.stream(_CHUNK)
            finally:
                resp.close()
                resp.release_conn()

    def get_bytes(self, uri: str) -> bytes:
        return b"".join(self.iter_bytes(uri))

    def get_file(self, uri: str, dest: str | Path) -> Path:
        """Download to ``dest`` atomically; nothing is written if the object is missing."""
        chunks = self.iter_bytes(uri)
        first = next(chunks, b"")
        with _atomic(Path(dest)) as tmp, tmp.open("wb") as f:
            f.write(first)
            for chunk in chunks:
                f.write(chunk)
        return Path(dest)

    def digest(self, uri: str) -> tuple[str, int]:
        """(sha256 hex, size) of the object, streamed."""
        return _digest(self.iter_bytes(uri))

    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return _local_path(uri).is_file()
        try:
            with self._s3_op(uri) as (bucket, key):
                self.s3.stat_object(bucket, key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str, recursive: bool = False) -> list[str]:
        """URIs under the folder ``prefix``, sorted; non-recursive also gives sub-folders ending in "/"."""
        folder = folder_uri(prefix)
        if is_s3(prefix):
            with self._s3_op(prefix, need_key=False) as (bucket, key):
                objs = self.s3.list_objects(bucket, prefix=key and key + "/", recursive=recursive)
                return sorted(f"s3://{bucket}/{o.object_name}" for o in objs)
        base = _local_path(prefix)
        names = {p.relative_to(base).as_posix() for p in (base.rglob("*") if base.is_dir() else [])
                 if p.is_file() and _TMP not in p.name}
        if not recursive:
            names = {n.split("/")[0] + ("/" if "/" in n else "") for n in names}
        return sorted(folder + n for n in names)

    def delete(self, uri: str, recursive: bool = False) -> None:
        """Delete the object (no error if absent); ``recursive``: also everything under the folder."""
        if not is_s3(uri):
            path = _local_path(uri)
            if path.is_dir() and recursive:
                shutil.rmtree(path)
            elif path.is_file():
                path.unlink()
            return
        under = self.list(uri, recursive=True) if recursive else []
        with self._s3_op(uri, need_key=not recursive) as (bucket, key):
            keys = [DeleteObject(u.split("/", 3)[3]) for u in under] + ([DeleteObject(key)] if key else [])
            for err in self.s3.remove_objects(bucket, keys):
                raise StorageError(f"{uri}: could not delete {err.name}: {err.code} {err.message}")

    def upload_dir(self, local_dir: str | Path, prefix: str) -> list[str]:
        """Upload every file under ``local_dir`` (nested folders kept); return their URIs."""
        root = Path(local_dir)
        if not root.is_dir():
            raise StorageError(f"cannot upload {root}: not a folder")
        uris = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            uris.append(join_uri(prefix, path.relative_to(root).as_posix()))
            self.put_file(path, uris[-1])
        return uris

    def download_dir(self, prefix: str, local_dir: str | Path) -> Path:
        """Download every object under ``prefix`` into ``local_dir``; ObjectNotFound if none."""
        uris = self.list(prefix, recursive=True)
        if not uris:
            raise ObjectNotFound(prefix)
        base = folder_uri(prefix)
        for uri in uris:
            self.get_file(uri, Path(local_dir, uri[len(base):]))
        return Path(local_dir)


def open_store(settings: StorageSettings | Settings) -> ObjectStore:
    """The object store for these settings (``Settings`` or its ``storage`` section)."""
    return ObjectStore(settings.storage if isinstance(settings, Settings) else settings)


# ---- versions (DESIGN.md §5): parts first, manifest.json last ----------------------------------


class FileEntry(BaseModel):
    sha256: str
    size: int


class Manifest(BaseModel):
    version: str
    created_at: str
    files: dict[str, FileEntry]
    metadata: dict[str, Any] = Field(default_factory=dict)


class VersionRef(BaseModel):
    uri: str
    version: str
    manifest: Manifest


def _entry(data: Path | bytes) -> FileEntry:
    sha, size = _digest(iter([data]) if isinstance(data, bytes) else _read_chunks(Path(data)))
    return FileEntry(sha256=sha, size=size)


def _check_name(name: str) -> None:
    parts = name.split("/")
    if name == MANIFEST or not name or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        raise StorageError(f"bad part name {name!r}: use a relative path like 'part-0.parquet' "
                           f"(not {MANIFEST!r}, no '..')")


def publish_version(store: ObjectStore, prefix: str, files: Mapping[str, Path | bytes],
                    version: str | None = None, metadata: dict | None = None) -> VersionRef:
    """Write the parts, then ``manifest.json``; the default version is a content address."""
    if not files:
        raise StorageError(f"nothing to publish under {prefix}: give at least one file")
    for name in files:
        _check_name(name)
    entries = {name: _entry(files[name]) for name in sorted(files)}
    if version is None:
        h = hashlib.sha256("".join(f"{n}\0{e.sha256}\n" for n, e in entries.items()).encode())
        version = f"v-{h.hexdigest()[:16]}"
    if "/" in version:
        raise StorageError(f"bad version {version!r}: one path segment, no '/'")
    _check_name(version)
    try:
        meta = json.loads(json.dumps(metadata or {}))
    except (TypeError, ValueError) as exc:
        raise StorageError(f"metadata of {prefix} must be JSON-serialisable: {exc}") from None
    uri = join_uri(prefix, version)
    if store.exists(join_uri(uri, MANIFEST)):
        old = read_manifest(store, uri)
        if old.files != entries:
            raise StorageError(f"version {uri} already exists with other content: choose another version")
        log.info("version %s already published", uri)
        return VersionRef(uri=uri, version=version, manifest=old)
    for name, data in files.items():
        if isinstance(data, bytes):
            store.put_bytes(join_uri(uri, name), data)
        else:
            store.put_file(data, join_uri(uri, name))
    manifest = Manifest(version=version, created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
                        files=entries, metadata=meta)
    store.put_bytes(join_uri(uri, MANIFEST), manifest.model_dump_json(indent=2).encode())
    log.info("published %s (%d files)", uri, len(entries))
    return VersionRef(uri=uri, version=version, manifest=manifest)


def publish_dir(store: ObjectStore, local_dir: str | Path, prefix: str, version: str | None = None,
                metadata: dict | None = None) -> VersionRef:
    """Publish every file under ``local_dir`` (nested folders kept) as one version."""
    root = Path(local_dir)
    if not root.is_dir():
        raise StorageError(f"cannot publish {root}: not a folder")
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    return publish_version(store, prefix, files, version=version, metadata=metadata)


def read_manifest(store: ObjectStore, version_uri: str) -> Manifest:
    try:
        raw = store.get_bytes(join_uri(version_uri, MANIFEST))
    except ObjectNotFound:
        raise CorruptVersionError(f"{version_uri} has no {MANIFEST}: the version was never completed") from None
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        raise CorruptVersionError(f"{version_uri}/{MANIFEST} is not a valid manifest: {exc}") from None


def _verify_part(version_uri: str, name: str, want: FileEntry, got: tuple[str, int] | None) -> None:
    if got is None:
        raise CorruptVersionError(f"version {version_uri}: part {name!r} is missing")
    if got != (want.sha256, want.size):
        raise CorruptVersionError(f"version {version_uri}: part {name!r} has sha256 {got[0]} "
                                  f"({got[1]} bytes), the manifest says {want.sha256} ({want.size} bytes)")


def verify_version(store: ObjectStore, version_uri: str) -> Manifest:
    """Recompute every part's sha256; raise :class:`CorruptVersionError` naming the part."""
    manifest = read_manifest(store, version_uri)
    for name, want in manifest.files.items():
        try:
            got: tuple[str, int] | None = store.digest(join_uri(version_uri, name))
        except ObjectNotFound:
            got = None
        _verify_part(version_uri, name, want, got)
    return manifest


def fetch_version(store: ObjectStore, version_uri: str, local_dir: str | Path) -> Path:
    """Download and verify a version into ``local_dir`` (with its manifest); all or nothing."""
    dest = Path(local_dir)
    manifest = read_manifest(store, version_uri)
    if dest.exists():
        mine = dest / MANIFEST
        if mine.is_file() and mine.read_bytes() == manifest.model_dump_json(indent=2).encode():
            return dest
        raise StorageError(f"cannot fetch {version_uri} into {dest}: it exists; remove it or pick another")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_TMP}", dir=dest.parent))
    try:
        for name, want in manifest.files.items():
            try:
                store.get_file(join_uri(version_uri, name), tmp / name)
            except ObjectNotFound:
                _verify_part(version_uri, name, want, None)
            _verify_part(version_uri, name, want, _digest(_read_chunks(tmp / name)))
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def list_versions(store: ObjectStore, prefix: str) -> list[VersionRef]:
    """Completed versions (with a manifest) under ``prefix``, oldest to newest."""
    refs = []
    for sub in store.list(prefix):
        if sub.endswith("/") and store.exists(join_uri(sub, MANIFEST)):
            uri = sub.rstrip("/")
            manifest = read_manifest(store, uri)
            refs.append(VersionRef(uri=uri, version=uri.rsplit("/", 1)[-1], manifest=manifest))
    return sorted(refs, key=lambda r: (r.manifest.created_at, r.version))


def latest_version(store: ObjectStore, prefix: str) -> VersionRef | None:
    """The newest completed version under ``prefix``, or None when there is none."""
    versions = list_versions(store, prefix)
    return versions[-1] if versions else None
