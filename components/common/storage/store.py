"""The object store itself: one API over ``s3://bucket/key`` and local paths (see the package)."""


from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from minio.helpers import check_bucket_name

from components.common.retry import RETRY_STATUS
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
    # The minio SDK retries inside its urllib3 pool; the pool follows the project's one policy
    # (components/common/retry.py): connection failures, 429 (Retry-After), 502 and 503 (S3's
    # SlowDown); never a read timeout, a 500 or a 504.
    retry = urllib3.Retry(total=s.retries, connect=s.retries, read=0, status=s.retries, backoff_factor=0.5,
                          status_forcelist=sorted(RETRY_STATUS), respect_retry_after_header=True,
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
