"""Approximate nearest-neighbour search over the image index's window descriptors (FAISS IVF, 8-bit codes).

Why: the reverse-image index describes every corpus image by ~108 windows, so brute force scores
10.8M windows (8.3 GB of float32) per query at 100k images: seconds, not milliseconds. This picks
the candidate images instead; :class:`components.search.image_index.ImageIndex` then rescores the
candidates' windows exactly and verifies them, so the ANN only has to put the right image among the
candidates, not rank it.

How: FAISS ``IVF<nlist>_HNSW32,SQ8`` — a k-means coarse quantiser with ``nlist`` cells (the FAISS
guideline, ~4·sqrt(N), a power of two, at most 4,096 so training stays ~30 s on 2 cores) over 8-bit
scalar-quantised codes (192 bytes a window: 2 GB at 10.8M windows instead of 8.3 GB), inner product
(descriptors are unit-norm); the centroids are searched through an HNSW graph, so assigning millions of
windows to cells stays cheap. It is trained on a sample of 40 windows per cell, then filled
shard by shard, so building never holds more than one shard of float vectors. A query probes
``nprobe`` cells (``tools.image_ann_nprobe``). The file is read memory-mapped, so the tool-server's
worker processes share its pages.

    ann = WindowANN.build([vectors_shard_0, vectors_shard_1], dim=192); ann.save(Path("ann.faiss"))
    ann = WindowANN.load(Path("ann.faiss"), nprobe=32); scores, ids = ann.search(queries, k=512)

Library module, used by ``components.search.image_index``; measured by ``python -m bench.search_image_scale``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAX_NLIST = 4096
TRAIN_PER_CELL = 40  # FAISS warns below 39 points a centroid; 40 keeps k-means training ~1 min at 4,096 cells
KMEANS_ITERATIONS = 10


def nlist_for(n_windows: int) -> int:
    """Cells of the inverted file for ``n_windows`` vectors: ~4·sqrt(N), a power of two in [16, 4096]."""
    return int(min(MAX_NLIST, max(16, 2 ** math.floor(math.log2(4 * math.sqrt(max(n_windows, 1)))))))


def _sample(shards: Sequence[np.ndarray], n: int, seed: int) -> np.ndarray:
    """``n`` rows drawn uniformly from the concatenation of ``shards`` without concatenating them."""
    sizes = np.array([len(s) for s in shards])
    total = int(sizes.sum())
    rows = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for k, shard in enumerate(shards):
        mine = rows[(rows >= offsets[k]) & (rows < offsets[k + 1])] - offsets[k]
        if len(mine):
            parts.append(np.asarray(shard[mine], np.float32))
    return np.ascontiguousarray(np.vstack(parts))


class WindowANN:
    """A trained, filled FAISS IVF-SQ8 index over window vectors; ``search`` is thread-safe."""

    def __init__(self, index, nprobe: int = 32) -> None:
        import faiss

        self.index = index
        self.nprobe = max(1, min(int(nprobe), int(faiss.extract_index_ivf(index).nlist)))
        self._params = faiss.SearchParametersIVF(nprobe=self.nprobe)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def nlist(self) -> int:
        import faiss

        return int(faiss.extract_index_ivf(self.index).nlist)

    @classmethod
    def build(cls, shards: Sequence[np.ndarray], dim: int, nprobe: int = 32, seed: int = 0) -> WindowANN:
        """Train on a sample of the windows of ``shards`` (row-wise float32 arrays, memory maps are
        fine) and add them all, in order: FAISS id ``i`` is the ``i``-th window overall."""
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)  # training and adding do use every core
        total = sum(len(s) for s in shards)
        if total == 0:
            raise ValueError("an ANN index needs at least one window vector")
        nlist = nlist_for(total)
        # the cells' centroids behind an HNSW graph: adding 10.8M windows to a flat quantiser of 4,096
        # centroids is 1.7e13 flops (~15 min on 2 cores), through the graph ~40x fewer
        index = faiss.index_factory(dim, f"IVF{nlist}_HNSW32,SQ8", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.cp.seed = seed
        sample = _sample(shards, max(nlist * TRAIN_PER_CELL, min(total, 1024)), seed)
        log.info("image ANN: training %d cells on %d of %d windows", nlist, len(sample), total)
        index.train(sample)
        for shard in shards:
            for lo in range(0, len(shard), 65536):  # bounded memory: one float32 block at a time
                index.add(np.ascontiguousarray(shard[lo:lo + 65536], np.float32))
        return cls(index, nprobe)

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, nprobe: int = 32) -> WindowANN:
        import faiss

        return cls(faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY), nprobe)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each ``(len(queries), k)``, best first; id -1 where fewer were found."""
        import faiss

        # one query's handful of vectors gain nothing from OpenMP threads, and a server's request
        # threads would oversubscribe the cores; this setting is per calling thread
        faiss.omp_set_num_threads(1)
        q = np.ascontiguousarray(queries, np.float32)
        return self.index.search(q, min(k, len(self)), params=self._params)
