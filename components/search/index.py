"""Build and load the tool-server's index: text (tantivy) + image (reverse-image) + image metadata.

Why one folder: the server loads everything it needs from one place, and one command builds it:

    dmms index build --corpus PATH --out PATH        # local folders or s3:// URIs

Layout of ``out``: ``text/`` (tantivy), ``image/`` (:class:`ImageIndex`, absent for a corpus without
images), ``images.jsonl`` (image rows: id, doc_id, title, caption) and ``manifest.json``, written
last: a folder without it is not an index. The index is built in a temporary sibling folder and
renamed into place, so a failed build never leaves a half-written index.
"""

from __future__ import annotations

import json
import logging
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
FORMAT_VERSION = 1


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def build_index(corpus: str, out: str, settings: Settings) -> dict[str, Any]:
    """Build the index of ``corpus`` into ``out`` (local paths or object-store URIs); return the manifest."""
    with tempfile.TemporaryDirectory(prefix="dmms-index-") as tmp:
        corpus_dir = _local(corpus)
        if _is_remote(corpus):
            from components.common.storage import open_store

            corpus_dir = open_store(settings).download_dir(corpus, Path(tmp, "corpus"))
        if not corpus_dir.is_dir():
            raise IndexFormatError(f"corpus {corpus} is not a folder (docs/design.md §5: docs.jsonl, images.jsonl)")
        if _is_remote(out):
            from components.common.storage import join_uri, open_store

            work = Path(tmp, "index")
            manifest = _build_into(corpus_dir, work, corpus, settings)
            # manifest.json last: a reader refuses an index without it, so a half-uploaded index
            # (a crash mid-upload) is never served; an old manifest goes first so the same holds
            # when an index is rebuilt in place.
            store = open_store(settings)
            store.delete(join_uri(out, MANIFEST))
            (work / MANIFEST).rename(Path(tmp, MANIFEST))
            store.upload_dir(work, out)
            store.put_file(Path(tmp, MANIFEST), join_uri(out, MANIFEST))
            return manifest
        with staged_dir(_local(out)) as work:
            return _build_into(corpus_dir, work, corpus, settings)


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

            ImageIndex.build(corpus_dir, work / "image", embedder=make_embedder(settings))
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


def load_index(index: str, settings: Settings, cache_dir: Path | None = None) -> LoadedIndex:
    """Load an index folder (an object-store URI is downloaded to ``cache_dir`` first)."""
    path = _local(index)
    if _is_remote(index):
        from components.common.storage import open_store

        path = Path(cache_dir or tempfile.mkdtemp(prefix="dmms-index-"))
        open_store(settings).download_dir(index, path)
    if not (path / MANIFEST).is_file():
        raise IndexFormatError(f"{index} is not a built index (no {MANIFEST}): run `dmms index build`")
    manifest = json.loads((path / MANIFEST).read_text())
    text = TextIndex.load(path / "text")
    image = None
    rows: dict[str, dict[str, Any]] = {}
    if (path / "image").is_dir():
        from components.search.image_features import make_embedder
        from components.search.image_index import ImageIndex

        image = ImageIndex.load(path / "image", embedder=make_embedder(settings))
    if (path / "images.jsonl").is_file():
        for line in (path / "images.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["id"]] = row
    log.info("index loaded from %s: %d docs, %d images", index, text.num_docs, len(rows))
    return LoadedIndex(text=text, image=image, images=rows, manifest=manifest)
