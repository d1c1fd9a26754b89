"""Versions in the object store: parts first, ``manifest.json`` last; content addresses; verified reads."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from components.common.storage.store import (
    _TMP,
    MANIFEST,
    CorruptVersionError,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    _digest,
    _read_chunks,
    join_uri,
)

log = logging.getLogger(__name__)

# ---- versions (docs/design.md §5): parts first, manifest.json last ----------------------------------


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
