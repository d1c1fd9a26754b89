"""Build and load the tool-server's index: text (tantivy) + image (reverse-image) + image metadata.

Why versions and an alias: a tool-server keeps serving the index it loaded, an autoscaled replica
starts during a rebuild, two pipelines build at once. So a build never touches what is served: it
publishes a new content-addressed version and then moves the alias, last::

    dmms index build --corpus PATH --out ROOT        # local folders or s3:// URIs

    ROOT/versions/<sha256[:16]>/   text/ (tantivy), image/ (absent without images), images.jsonl,
                                   manifest.json (written last: a folder without it is not an index)
    ROOT/current.json              {"version", "uri", "built_at"}: the alias, one atomic write

``load_index(ROOT)`` resolves the alias (a plain index folder with a manifest loads as it is, as
an unversioned index); the tool-server re-resolves it on ``POST /admin/reload`` or every
``tools.index_poll_s`` and swaps in a new version atomically. Old versions stay readable (a server
that has not reloaded yet, a run being reproduced) until ``keep`` newer ones exist.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.atomic import staged_dir
from components.common.settings import Settings
from components.search.text_index import IndexFormatError, TextIndex

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ALIAS = "current.json"
VERSIONS = "versions"
UNVERSIONED = "unversioned"
FORMAT_VERSION = 1


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def build_index(corpus: str, out: str, settings: Settings, keep: int = 5) -> dict[str, Any]:
    """Build the index of ``corpus`` as a new version under ``out`` and point ``out``'s alias at it;
    return the version's manifest (with ``version`` and ``uri``). Keeps the ``keep`` newest versions."""
    with tempfile.TemporaryDirectory(prefix="dmms-index-") as tmp:
        corpus_dir = _local(corpus)
        if _is_remote(corpus):
            from components.common.storage import open_store

            corpus_dir = open_store(settings).download_dir(corpus, Path(tmp, "corpus"))
        if not corpus_dir.is_dir():
            raise IndexFormatError(f"corpus {corpus} is not a folder (docs/design.md §5: docs.jsonl, images.jsonl)")
        work = Path(tmp, "index")
        manifest = _build_into(corpus_dir, work, corpus, settings)
        version = _content_version(work)
        manifest.update(version=version, uri=_join(out, VERSIONS, version))
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2))
        alias = json.dumps({"version": version, "uri": manifest["uri"], "built_at": manifest["built_at"]})
        if _is_remote(out):
            from components.common.storage import open_store

            store = open_store(settings)
            (work / MANIFEST).rename(Path(tmp, MANIFEST))
            store.upload_dir(work, manifest["uri"])
            store.put_file(Path(tmp, MANIFEST), _join(manifest["uri"], MANIFEST))  # the version exists now
            store.put_bytes(_join(out, ALIAS), alias.encode())  # and is served from now on
            _prune_remote(store, out, keep)
        else:
            root = _local(out)
            target = root / VERSIONS / version
            if not (target / MANIFEST).is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                with staged_dir(target) as staged:
                    shutil.copytree(work, staged, dirs_exist_ok=True)
            _atomic_write(root / ALIAS, alias)
            _prune_local(root, keep)
        log.info("index version %s published under %s (alias moved)", version, out)
        return manifest


def resolve_index(index: str, settings: Settings) -> tuple[str, str]:
    """(URI of the version to serve, its version) for an alias root or a plain index folder."""
    if _is_remote(index):
        from components.common.storage import open_store

        store = open_store(settings)
        if store.exists(_join(index, ALIAS)):
            alias = json.loads(store.get_bytes(_join(index, ALIAS)))
            return alias["uri"], alias["version"]
        if store.exists(_join(index, MANIFEST)):
            return index, json.loads(store.get_bytes(_join(index, MANIFEST))).get("version", UNVERSIONED)
        raise IndexFormatError(f"{index} holds neither {ALIAS} nor {MANIFEST}: run `dmms index build --out {index}`")
    path = _local(index)
    if (path / ALIAS).is_file():
        alias = json.loads((path / ALIAS).read_text())
        return alias["uri"], alias["version"]
    if (path / MANIFEST).is_file():
        return index, json.loads((path / MANIFEST).read_text()).get("version", UNVERSIONED)
    raise IndexFormatError(f"{index} is not a built index (no {ALIAS} or {MANIFEST}): run `dmms index build`")


def _content_version(folder: Path) -> str:
    """sha256 over every file's relative path and bytes (the manifest's timings excluded)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _versions_local(root: Path) -> list[Path]:
    found = [p for p in (root / VERSIONS).glob("*") if (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: json.loads((p / MANIFEST).read_text()).get("built_at", ""), reverse=True)


def _prune_local(root: Path, keep: int) -> None:
    current = json.loads((root / ALIAS).read_text())["version"]
    for old in [p for p in _versions_local(root) if p.name != current][max(keep - 1, 0):]:
        (old / MANIFEST).unlink()  # first: a half-deleted version is one that does not exist
        shutil.rmtree(old, ignore_errors=True)


def _prune_remote(store: Any, root: str, keep: int) -> None:
    current = json.loads(store.get_bytes(_join(root, ALIAS)))["version"]
    versions = []
    for sub in store.list(_join(root, VERSIONS) + "/"):
        if sub.endswith("/") and store.exists(_join(sub.rstrip("/"), MANIFEST)):
            manifest = json.loads(store.get_bytes(_join(sub.rstrip("/"), MANIFEST)))
            versions.append((manifest.get("built_at", ""), sub.rstrip("/")))
    for _, uri in sorted(versions, reverse=True):
        if uri.rsplit("/", 1)[-1] == current:
            continue
        keep -= 1
        if keep <= 0:
            store.delete(_join(uri, MANIFEST))
            store.delete(uri, recursive=True)


def _build_into(corpus_dir: Path, work: Path, corpus: str, settings: Settings) -> dict[str, Any]:
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    text = TextIndex.build(corpus_dir / "docs.jsonl", work / "text")
    images = 0
    if (corpus_dir / "images.jsonl").is_file():
        from components.search.image_index import ImageIndex, read_image_rows

        rows = read_image_rows(corpus_dir)
        with (work / "images.jsonl").open("w", encoding="utf-8") as fh:
            for row in rows:
                keep = {k: row.get(k) for k in ("id", "doc_id", "title", "caption", "path")}
                fh.write(json.dumps(keep, ensure_ascii=False) + "\n")
        if rows:
            from components.search.image_features import make_embedder

            t = settings.tools
            ImageIndex.build(corpus_dir, work / "image", embedder=make_embedder(settings),
                             ann={"auto": None, "on": True, "off": False}[t.image_ann], nprobe=t.image_ann_nprobe)
            images = len(rows)
    manifest = {"format": FORMAT_VERSION, "corpus": corpus, "docs": text.num_docs, "images": images,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.monotonic() - started, 2)}
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info("index built: %d docs, %d images in %.1fs", text.num_docs, images, manifest["build_seconds"])
    return manifest


@dataclass
class LoadedIndex:
    """What the server searches: the text index, the image index (or None) and image rows by id."""

    text: TextIndex
    image: Any | None
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    version: str = UNVERSIONED
    uri: str = ""


def load_index(index: str, settings: Settings, cache_dir: Path | None = None) -> LoadedIndex:
    """Load the version ``index``'s alias names, or a plain index folder (an object-store URI is
    downloaded to ``cache_dir`` first)."""
    uri, version = resolve_index(index, settings)
    path = _local(uri)
    if _is_remote(uri):
        from components.common.storage import open_store

        # one local copy per version, shared by every worker process of the server (their memory
        # maps then share pages too): the first downloads it, under a file lock, staged and renamed
        path = Path(cache_dir or Path(tempfile.gettempdir(), "dmms-index-cache")) / version
        if not (path / MANIFEST).is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with (path.parent / f".{version}.lock").open("w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (path / MANIFEST).is_file():
                    with staged_dir(path) as staged:
                        open_store(settings).download_dir(uri, staged)
    if not (path / MANIFEST).is_file():
        raise IndexFormatError(f"{uri} is not a built index (no {MANIFEST}): run `dmms index build`")
    manifest = json.loads((path / MANIFEST).read_text())
    text = TextIndex.load(path / "text")
    image = None
    rows: dict[str, dict[str, Any]] = {}
    if (path / "image").is_dir():
        from components.search.image_features import make_embedder
        from components.search.image_index import ImageIndex

        image = ImageIndex.load(path / "image", embedder=make_embedder(settings),
                                ann=settings.tools.image_ann != "off", nprobe=settings.tools.image_ann_nprobe)
    if (path / "images.jsonl").is_file():
        for line in (path / "images.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["id"]] = row
    log.info("index %s loaded from %s: %d docs, %d images", version, uri, text.num_docs, len(rows))
    return LoadedIndex(text=text, image=image, images=rows, manifest=manifest, version=version, uri=uri)
