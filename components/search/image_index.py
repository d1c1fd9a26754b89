"""The local reverse-image index: find the corpus image (and its page) from an altered copy.

Why: the offline world and on-prem deployments have no web image search; the agent's
``<img_search>`` still has to find which corpus page an image (or a crop of it) comes from.

How: every corpus image is described by ~108 windows (whole, border-trimmed, multi-scale grid; see
:mod:`components.search.image_features`), stored as float32 shards of at most ``SHARD_WINDOWS``
rows (whole images per shard). A query is described by its whole image and its border-trimmed
content. Candidates: brute force (one matrix product per shard, the best window of each image is its
coarse score) for small indexes, or the FAISS IVF index of :mod:`components.search.image_ann` once
there are ``ANN_MIN_WINDOWS`` windows (~4,600 images) or ``tools.image_ann=on``. Either way the
candidates' windows are then scored exactly, and re-ranked by normalised cross-correlation of a
sharper thumbnail of the matched window (near-duplicates differ there).

On disk (``out_dir``): ``meta.json`` (embedder, dim, counts, ANN parameters), ``records.json`` (image
rows), ``vectors-NNNNN.npy`` (window descriptors), ``boxes.npy``, ``starts.npy`` (first window of each
image), ``grey.npy`` + ``sizes.npy`` (grey work images for verification), ``ann.faiss`` when built.
The folder is written to a temporary sibling and renamed, so a crash never leaves a half-written
index; building streams (one shard of vectors in memory, the grey images straight to a memory map)
and describes images in ``workers`` processes. Loaded arrays are read-only memory maps, so one
:class:`ImageIndex` is safely shared by every request thread, and the pages by every worker process.

    idx = ImageIndex.build(Path("corpus"), Path("index/image"))
    idx = ImageIndex.load(Path("index/image")); idx.search(PIL.Image.open("q.jpg"), top_k=5)
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from components.common.atomic import staged_dir
from components.search import image_features as F
from components.search.image_ann import WindowANN

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
VERIFY_CANDIDATES = 12
VERIFY_WEIGHT = 0.5
REFINE_SHIFT = 0.035  # fraction of the image side: about half the window grid step
SHARD_WINDOWS = 1 << 18  # ~200 MB of float32 descriptors a shard: the most a build holds in memory
ANN_MIN_WINDOWS = 500_000  # below this brute force is exact and takes milliseconds (64k windows: a 50 MB scan)
ANN_WINDOWS = 512  # windows the ANN returns per query descriptor; they name the candidate images
PARALLEL_MIN_IMAGES = 2000  # below this a process pool costs more than it saves
SAT_CACHE = 256  # summed-area tables of verified images kept (~0.15 MB each)


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

    def __init__(self, records: list[dict[str, Any]], shards: Sequence[np.ndarray], boxes: np.ndarray,
                 starts: np.ndarray, grey: np.ndarray, sizes: np.ndarray,
                 embedder: F.ImageEmbedder | None = None, ann: WindowANN | None = None) -> None:
        self.records = records
        self.ids = [r["id"] for r in records]
        self.by_id = {r["id"]: r for r in records}
        self.embedder = embedder or F.GridEmbedder()
        self.shards, self.boxes, self.starts = list(shards), boxes, starts
        self.grey, self.sizes, self.ann = grey, sizes, ann
        for arr in (*self.shards, boxes, starts, grey, sizes):
            arr.setflags(write=False)
        self.shard_starts = np.cumsum([0] + [len(s) for s in self.shards])  # first window of each shard
        # summed-area tables of recently verified corpus images (see _grey_sat), most recent last
        self._sats: OrderedDict[int, np.ndarray] = OrderedDict()
        self._sats_lock = threading.Lock()
        self.windows = int(self.shard_starts[-1])
        self.ends = np.append(starts[1:], self.windows)
        # the images of each shard: shard k holds images [image_cut[k], image_cut[k+1])
        self.image_cut = np.searchsorted(starts, self.shard_starts)

    def __len__(self) -> int:
        return len(self.records)

    # ---- build -------------------------------------------------------------------------------
    @classmethod
    def build(cls, corpus_dir: Path, out_dir: Path, embedder: F.ImageEmbedder | None = None,
              ann: bool | None = None, nprobe: int = 32, workers: int | None = None) -> ImageIndex:
        """Index every image of ``corpus_dir/images.jsonl`` into ``out_dir``. ``ann``: build the FAISS
        index (None: when there are ``ANN_MIN_WINDOWS`` windows or more); ``workers``: describing
        processes for the grid embedder (None: one per CPU for corpora of ``PARALLEL_MIN_IMAGES``+)."""
        corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
        embedder = embedder or F.GridEmbedder()
        rows = read_image_rows(corpus_dir)
        if not rows:
            raise ImageIndexError(f"{corpus_dir / 'images.jsonl'} lists no images")
        with staged_dir(out_dir) as tmp:
            grey = np.lib.format.open_memmap(tmp / "grey.npy", mode="w+", dtype=np.uint8,
                                             shape=(len(rows), F.WORK_SIDE, F.WORK_SIDE))
            boxes, starts, sizes, pending, shards = [], [], [], [], []
            total = pending_windows = 0
            described = _describe_all(corpus_dir, rows, embedder, workers)
            for i, (vecs, wb, g, size) in enumerate(tqdm(described, total=len(rows), desc="image index",
                                                         unit="img", disable=len(rows) < 500)):
                if pending_windows + len(wb) > SHARD_WINDOWS and pending:  # shards hold whole images
                    shards.append(_write_shard(tmp, len(shards), pending))
                    pending, pending_windows = [], 0
                pending.append(vecs)
                pending_windows += len(wb)
                boxes.append(np.asarray(wb, np.float32))
                starts.append(total)
                total += len(wb)
                grey[i] = g
                sizes.append(size)
            shards.append(_write_shard(tmp, len(shards), pending))
            grey.flush()
            del grey
            for name, arr in (("boxes", np.vstack(boxes)), ("starts", np.asarray(starts, np.int64)),
                              ("sizes", np.asarray(sizes, np.int32))):
                np.save(tmp / f"{name}.npy", arr)
            (tmp / "records.json").write_text(json.dumps(rows, ensure_ascii=False))
            use_ann = total >= ANN_MIN_WINDOWS if ann is None else ann
            meta = {"format": FORMAT_VERSION, "embedder": embedder.name, "dim": embedder.dim, "images": len(rows),
                    "windows": total, "shards": len(shards), "ann": None}
            if use_ann:
                vectors = [np.load(tmp / name, mmap_mode="r") for name in shards]
                index = WindowANN.build(vectors, embedder.dim, nprobe=nprobe)
                index.save(tmp / "ann.faiss")
                meta["ann"] = {"kind": "faiss IVF SQ8 inner product", "nlist": index.nlist, "vectors": len(index)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        log.info("image index: %d images, %d windows in %d shard(s)%s, embedder %s -> %s", len(rows), total,
                 len(shards), f", ANN with {meta['ann']['nlist']} cells" if meta["ann"] else "", embedder.name,
                 out_dir)
        return cls.load(out_dir, embedder, nprobe=nprobe)

    def save(self, out_dir: Path) -> None:
        """Write this index to ``out_dir`` (a copy of a loaded one), staged like :meth:`build`."""
        with staged_dir(Path(out_dir)) as tmp:
            names = [_write_shard(tmp, k, [shard]) for k, shard in enumerate(self.shards)]
            for name in ("boxes", "starts", "grey", "sizes"):
                np.save(tmp / f"{name}.npy", getattr(self, name))
            (tmp / "records.json").write_text(json.dumps(self.records, ensure_ascii=False))
            meta = {"format": FORMAT_VERSION, "embedder": self.embedder.name, "dim": self.embedder.dim,
                    "images": len(self.records), "windows": self.windows, "shards": len(names), "ann": None}
            if self.ann is not None:
                self.ann.save(tmp / "ann.faiss")
                meta["ann"] = {"kind": "faiss IVF SQ8 inner product", "nlist": self.ann.nlist,
                               "vectors": len(self.ann)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    # ---- load --------------------------------------------------------------------------------
    @classmethod
    def load(cls, index_dir: Path, embedder: F.ImageEmbedder | None = None, ann: bool = True,
             nprobe: int = 32) -> ImageIndex:
        """Load an index folder written by :meth:`build`; the embedder must match the one used.
        ``ann=False`` ignores a built ANN index (brute force, exact)."""
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
        # memory-mapped: the tool-server's worker processes share these pages instead of each a copy
        arrays = {n: np.load(index_dir / f"{n}.npy", mmap_mode="r") for n in ("boxes", "starts", "grey", "sizes")}
        shards = [np.load(index_dir / f"vectors-{k:05d}.npy", mmap_mode="r") for k in range(meta["shards"])]
        records = json.loads((index_dir / "records.json").read_text())
        index = None
        if ann and meta.get("ann"):
            index = WindowANN.load(index_dir / "ann.faiss", nprobe=nprobe)
        return cls(records, shards, embedder=embedder, ann=index, **arrays)

    # ---- search ------------------------------------------------------------------------------
    def search(self, image: Image.Image, top_k: int, exact: bool = False) -> list[tuple[str, float]]:
        """``(image_id, score)`` of the ``top_k`` most similar corpus images, best first. ``exact``
        picks candidates by brute force even when an ANN index is loaded (the benchmark's baseline)."""
        return self.search_many([image], top_k, exact=exact)[0]

    def search_many(self, images: Sequence[Image.Image], top_k: int,
                    exact: bool = False) -> list[list[tuple[str, float]]]:
        """:meth:`search` for several queries at once: one pass over the shards (or one ANN call)."""
        if top_k <= 0 or not self.records or not images:
            return [[] for _ in images]
        works = [F.work_image(im) for im in images]
        qboxes = [F.query_boxes(w) for w in works]
        qs = [_embed_boxes(self.embedder, w, b) for w, b in zip(works, qboxes, strict=True)]  # (nq, dim) each
        n_cand = min(len(self.records), max(top_k, VERIFY_CANDIDATES))
        if self.ann is not None and not exact:
            cands = self._ann_candidates(qs, n_cand)
        else:
            cands = self._exact_candidates(qs, n_cand)
        out = []
        for work, boxes, q, cand in zip(works, qboxes, qs, cands, strict=True):
            final = self._verify(work, boxes, q, cand)
            order = np.lexsort((cand, -final))[:top_k]  # ties: earlier corpus row first (deterministic)
            out.append([(self.ids[cand[i]], float(final[i])) for i in order])
        return out

    def _exact_candidates(self, qs: list[np.ndarray], n_cand: int) -> list[np.ndarray]:
        """Brute force: every window scored, each image's best window is its score, top ``n_cand``."""
        stacked = np.vstack(qs)
        col_starts = np.cumsum([0] + [len(q) for q in qs[:-1]])
        per_image = np.empty((len(self.records), len(qs)), np.float32)
        for k, shard in enumerate(self.shards):
            lo, hi = self.image_cut[k], self.image_cut[k + 1]
            if lo == hi:
                continue
            scores = np.maximum.reduceat(shard @ stacked.T, col_starts, axis=1)  # (windows, queries)
            local = self.starts[lo:hi] - self.shard_starts[k]
            per_image[lo:hi] = np.maximum.reduceat(scores, local, axis=0)
        return [np.argpartition(-per_image[:, j], n_cand - 1)[:n_cand] for j in range(len(qs))]

    def _ann_candidates(self, qs: list[np.ndarray], n_cand: int) -> list[np.ndarray]:
        """The FAISS index's nearest windows of every query descriptor; their best ``n_cand`` images."""
        scores, ids = self.ann.search(np.vstack(qs), ANN_WINDOWS)
        out, row = [], 0
        for q in qs:
            s, w = scores[row:row + len(q)].ravel(), ids[row:row + len(q)].ravel()
            row += len(q)
            s, w = s[w >= 0], w[w >= 0]
            img = np.searchsorted(self.starts, w, side="right") - 1
            order = np.argsort(-s, kind="stable")
            _, first = np.unique(img[order], return_index=True)  # each image's best window
            best = order[np.sort(first)]  # ... in score order
            out.append(img[best][:n_cand])
        return out

    def _image_windows(self, c: int) -> np.ndarray:
        """The descriptors of image ``c``'s windows (an image never straddles two shards)."""
        lo, hi = int(self.starts[c]), int(self.ends[c])
        k = int(np.searchsorted(self.shard_starts, lo, side="right")) - 1
        return self.shards[k][lo - self.shard_starts[k]:hi - self.shard_starts[k]]

    def _verify(self, work: Image.Image, qboxes: list[F.Box], q: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Each candidate's exact coarse score (its best window against the best query box), blended
        with the NCC of that window's sharper thumbnail."""
        grey_query = np.asarray(work.convert("L"))
        qthumbs = F.verify_thumbs(F.summed_area(grey_query), work.size, qboxes)
        out = np.empty(len(cand), np.float32)
        for i, c in enumerate(cand):
            scores = self._image_windows(int(c)) @ q.T  # (windows of c, nq)
            wi, qi = np.unravel_index(int(np.argmax(scores)), scores.shape)
            sw, sh = (int(v) for v in self.sizes[c])
            box = tuple(float(v) for v in self.boxes[int(self.starts[c]) + wi])
            thumbs = F.verify_thumbs(self._grey_sat(int(c), sw, sh), (sw, sh), _refined(box))
            ncc = float((thumbs @ qthumbs[qi]).max())
            out[i] = (1 - VERIFY_WEIGHT) * float(scores[wi, qi]) + VERIFY_WEIGHT * ncc
        return out


    def _grey_sat(self, c: int, sw: int, sh: int) -> np.ndarray:
        """The summed-area table of corpus image ``c``'s grey work image, kept for the last
        :data:`SAT_CACHE` images verified. Why: the G generations of a GRPO prompt search the same
        image (whole or cropped), so they verify the same candidates; a table is ~0.15 MB, and
        computing it was about a third of a verification (python -m bench.rollout)."""
        with self._sats_lock:
            sat = self._sats.get(c)
            if sat is not None:
                self._sats.move_to_end(c)
                return sat
        sat = F.summed_area(self.grey[c, :sh, :sw])
        sat.setflags(write=False)
        with self._sats_lock:
            self._sats[c] = sat
            while len(self._sats) > SAT_CACHE:
                self._sats.popitem(last=False)
        return sat


def _write_shard(folder: Path, k: int, parts: list[np.ndarray]) -> str:
    name = f"vectors-{k:05d}.npy"
    np.save(folder / name, np.vstack(parts).astype(np.float32, copy=False))
    return name


def _describe(args: tuple[Path, str, F.ImageEmbedder]) -> tuple[np.ndarray, list[F.Box], np.ndarray, tuple[int, int]]:
    path, image_id, embedder = args
    work = _open(path, image_id)
    wb = F.window_boxes(work)
    return _embed_boxes(embedder, work, wb), wb, _grey_pad(work), work.size


def _describe_all(corpus_dir: Path, rows: list[dict[str, Any]], embedder: F.ImageEmbedder,
                  workers: int | None) -> Iterator[tuple[np.ndarray, list[F.Box], np.ndarray, tuple[int, int]]]:
    """Every row's (descriptors, windows, grey work image, size), in order; the grid embedder in a
    process pool for large corpora (a CLIP embedder holds a model: it stays in this process)."""
    jobs = ((corpus_dir / row["path"], row["id"], embedder) for row in rows)
    if workers is None:
        workers = (os.cpu_count() or 1) if len(rows) >= PARALLEL_MIN_IMAGES else 1
    if workers <= 1 or not isinstance(embedder, F.GridEmbedder):
        yield from map(_describe, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_describe, jobs, chunksize=32)


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
