"""The local reverse-image index: find the corpus image (and its page) from an altered copy.

Why: the offline world and on-prem deployments have no web image search; the agent's
``<img_search>`` still has to find which corpus page an image (or a crop of it) comes from.

How: every corpus image is described by ~110 windows (whole, border-trimmed, multi-scale grid; see
:mod:`components.search.image_features`), stored as one float32 matrix. A query is described by
its whole image and its border-trimmed content; one matrix product scores every window, the best
window of each image is its coarse score, and the top candidates are re-ranked by normalised
cross-correlation of a sharper thumbnail of the matched window (near-duplicates differ there).

On disk (``out_dir``): ``meta.json`` (embedder, dim, counts), ``records.json`` (image rows),
``vectors.npy``, ``boxes.npy``, ``starts.npy`` (first window of each image), ``grey.npy`` +
``sizes.npy`` (grey work images for verification). The folder is written to a temporary sibling
and renamed, so a crash never leaves a half-written index. Loaded arrays are read-only memory maps,
so one :class:`ImageIndex` is safely shared by every request thread, and the pages by every worker
process of the tool-server.

    idx = ImageIndex.build(Path("corpus"), Path("index/image"))
    idx = ImageIndex.load(Path("index/image")); idx.search(PIL.Image.open("q.jpg"), top_k=5)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from components.common.atomic import staged_dir
from components.search import image_features as F

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VERIFY_CANDIDATES = 12
VERIFY_WEIGHT = 0.5
REFINE_SHIFT = 0.035  # fraction of the image side: about half the window grid step


class ImageIndexError(ValueError):
    """The corpus or the index folder is unusable; the message says what to fix."""


def read_image_rows(corpus_dir: Path) -> list[dict[str, Any]]:
    """Rows of ``images.jsonl`` (docs/design.md §5), checked: id, path, doc_id, title present, ids unique."""
    path = corpus_dir / "images.jsonl"
    if not path.is_file():
        raise ImageIndexError(f"{path} does not exist: a corpus needs images.jsonl (docs/design.md §5)")
    rows, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ImageIndexError(f"{path}:{n} is not JSON ({exc.msg})") from None
        missing = [k for k in ("id", "path", "doc_id", "title") if k not in row]
        if missing:
            raise ImageIndexError(f"{path}:{n} lacks {', '.join(missing)}")
        if row["id"] in seen:
            raise ImageIndexError(f"{path}:{n} repeats image id {row['id']!r}")
        seen.add(row["id"])
        rows.append(row)
    return rows


def _grey_pad(img: Image.Image) -> np.ndarray:
    out = np.zeros((F.WORK_SIDE, F.WORK_SIDE), np.uint8)
    g = np.asarray(img.convert("L"), np.uint8)
    out[: g.shape[0], : g.shape[1]] = g
    return out


class ImageIndex:
    """Read-only multi-window image index; ``search`` is safe to call from many threads."""

    def __init__(self, records: list[dict[str, Any]], vectors: np.ndarray, boxes: np.ndarray,
                 starts: np.ndarray, grey: np.ndarray, sizes: np.ndarray,
                 embedder: F.ImageEmbedder | None = None) -> None:
        self.records = records
        self.ids = [r["id"] for r in records]
        self.by_id = {r["id"]: r for r in records}
        self.embedder = embedder or F.GridEmbedder()
        self.vectors, self.boxes, self.starts = vectors, boxes, starts
        self.grey, self.sizes = grey, sizes
        for arr in (vectors, boxes, starts, grey, sizes):
            arr.setflags(write=False)

    def __len__(self) -> int:
        return len(self.records)

    # ---- build -------------------------------------------------------------------------------
    @classmethod
    def build(cls, corpus_dir: Path, out_dir: Path, embedder: F.ImageEmbedder | None = None) -> ImageIndex:
        """Index every image of ``corpus_dir/images.jsonl`` and write the index to ``out_dir``."""
        corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
        embedder = embedder or F.GridEmbedder()
        rows = read_image_rows(corpus_dir)
        if not rows:
            raise ImageIndexError(f"{corpus_dir / 'images.jsonl'} lists no images")
        vecs, boxes, starts, grey, sizes = [], [], [], [], []
        total = 0
        for row in tqdm(rows, desc="image index", unit="img", disable=len(rows) < 500):
            work = _open(corpus_dir / row["path"], row["id"])
            wb = F.window_boxes(work)
            vecs.append(_embed_boxes(embedder, work, wb))
            boxes.append(np.asarray(wb, np.float32))
            starts.append(total)
            total += len(wb)
            grey.append(_grey_pad(work))
            sizes.append(work.size)
        index = cls(rows, np.vstack(vecs).astype(np.float32), np.vstack(boxes),
                    np.asarray(starts, np.int64), np.stack(grey), np.asarray(sizes, np.int32), embedder)
        index.save(out_dir)
        log.info("image index: %d images, %d windows, embedder %s -> %s",
                 len(rows), total, embedder.name, out_dir)
        return index

    def save(self, out_dir: Path) -> None:
        with staged_dir(Path(out_dir)) as tmp:
            for name in ("vectors", "boxes", "starts", "grey", "sizes"):
                np.save(tmp / f"{name}.npy", getattr(self, name))
            (tmp / "records.json").write_text(json.dumps(self.records, ensure_ascii=False))
            meta = {"format": FORMAT_VERSION, "embedder": self.embedder.name, "dim": self.embedder.dim,
                    "images": len(self.records), "windows": int(self.vectors.shape[0])}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    # ---- load --------------------------------------------------------------------------------
    @classmethod
    def load(cls, index_dir: Path, embedder: F.ImageEmbedder | None = None) -> ImageIndex:
        """Load an index folder written by :meth:`build`; the embedder must match the one used."""
        index_dir = Path(index_dir)
        meta_path = index_dir / "meta.json"
        if not meta_path.is_file():
            raise ImageIndexError(f"{index_dir} is not an image index (no meta.json): run `dmms index build`")
        meta = json.loads(meta_path.read_text())
        embedder = embedder or F.GridEmbedder()
        if meta.get("format") != FORMAT_VERSION or meta.get("embedder") != embedder.name:
            raise ImageIndexError(
                f"{index_dir} was built with embedder {meta.get('embedder')!r} (format {meta.get('format')}),"
                f" but {embedder.name!r} (format {FORMAT_VERSION}) is configured: rebuild the index")
        names = ("vectors", "boxes", "starts", "grey", "sizes")
        # memory-mapped: the tool-server's worker processes share these pages instead of each a copy
        arrays = {n: np.load(index_dir / f"{n}.npy", mmap_mode="r") for n in names}
        records = json.loads((index_dir / "records.json").read_text())
        return cls(records, embedder=embedder, **arrays)

    # ---- search ------------------------------------------------------------------------------
    def search(self, image: Image.Image, top_k: int) -> list[tuple[str, float]]:
        """``(image_id, score)`` of the ``top_k`` most similar corpus images, best first."""
        if top_k <= 0 or not self.records:
            return []
        work = F.work_image(image)
        qboxes = F.query_boxes(work)
        q = _embed_boxes(self.embedder, work, qboxes)  # (nq, dim)
        window_scores = self.vectors @ q.T  # (windows, nq)
        best_q = window_scores.argmax(axis=1)
        flat = window_scores[np.arange(len(best_q)), best_q]
        per_image = np.maximum.reduceat(flat, self.starts)
        n_cand = min(len(per_image), max(top_k, VERIFY_CANDIDATES))
        cand = np.argpartition(-per_image, n_cand - 1)[:n_cand]
        final = self._verify(work, qboxes, cand, flat, best_q, per_image)
        order = np.lexsort((cand, -final))[:top_k]  # ties: earlier corpus row first (deterministic)
        return [(self.ids[cand[i]], float(final[i])) for i in order]

    def _verify(self, work: Image.Image, qboxes: list[F.Box], cand: np.ndarray, flat: np.ndarray,
                best_q: np.ndarray, per_image: np.ndarray) -> np.ndarray:
        """Blend each candidate's coarse score with the NCC of its best window's sharper thumbnail."""
        grey_query = work.convert("L")
        qthumbs = [F.verify_thumb(grey_query, b) for b in qboxes]
        ends = np.append(self.starts[1:], len(flat))
        out = np.empty(len(cand), np.float32)
        for i, c in enumerate(cand):
            lo, hi = int(self.starts[c]), int(ends[c])
            w = lo + int(np.argmax(flat[lo:hi]))
            sw, sh = (int(v) for v in self.sizes[c])
            grey = Image.fromarray(np.ascontiguousarray(self.grey[c, :sh, :sw]))
            thumbs = np.stack([F.verify_thumb(grey, b) for b in _refined(tuple(self.boxes[w]))])
            ncc = float((thumbs @ qthumbs[int(best_q[w])]).max())
            out[i] = (1 - VERIFY_WEIGHT) * per_image[c] + VERIFY_WEIGHT * ncc
        return out


def _refined(box: F.Box) -> list[F.Box]:
    """The window and its neighbours (shifted by ~half a grid step, rescaled by ±8%), inside the image."""
    x0, y0, x1, y1 = box
    cx, cy, side_w, side_h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    out = [box]
    for k in (0.92, 1.0, 1.08):
        hw, hh = side_w * k / 2, side_h * k / 2
        for dy in (-REFINE_SHIFT, 0.0, REFINE_SHIFT):
            for dx in (-REFINE_SHIFT, 0.0, REFINE_SHIFT):
                b = (cx + dx - hw, cy + dy - hh, cx + dx + hw, cy + dy + hh)
                if b[0] >= -1e-6 and b[1] >= -1e-6 and b[2] <= 1 + 1e-6 and b[3] <= 1 + 1e-6 and b != box:
                    out.append(b)
    return out


def _embed_boxes(embedder: F.ImageEmbedder, work: Image.Image, boxes: list[F.Box]) -> np.ndarray:
    if isinstance(embedder, F.GridEmbedder):  # fast path: descriptors straight from the work image
        return F.describe_boxes(work, boxes)
    w, h = work.size
    crops = [work.crop((round(b[0] * w), round(b[1] * h), round(b[2] * w), round(b[3] * h))) for b in boxes]
    return embedder.embed(crops)


def _open(path: Path, image_id: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return F.work_image(im)
    except (OSError, ValueError) as exc:
        raise ImageIndexError(f"image {image_id!r}: cannot read {path} ({exc})") from None
