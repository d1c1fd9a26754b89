"""The FAISS window index behind the image index's candidates at scale (components/search/image_ann.py).

Real FAISS on random unit vectors: ids follow the shards' order (the image index maps them back to
images by position), the file round-trips memory-mapped, and a vector finds itself. Recall at 100k
images is a benchmark (``python -m bench.search_image_scale``), not a test.
"""

from __future__ import annotations

import numpy as np
import pytest

from components.search.image_ann import MAX_NLIST, WindowANN, nlist_for


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cells_follow_the_faiss_guideline_within_bounds():
    assert nlist_for(1) == 16 and nlist_for(10_800_000) == MAX_NLIST
    assert nlist_for(64_000) == 512  # 4 * sqrt(64k) = 1,012 -> the power of two below
    assert all(nlist_for(n) <= nlist_for(n * 4) for n in (100, 10_000, 1_000_000))


def test_ids_follow_shard_order_and_the_file_round_trips(tmp_path):
    vectors = _unit(6000, 48, seed=0)
    shards = [vectors[:2500], vectors[2500:4000], vectors[4000:]]
    ann = WindowANN.build(shards, dim=48, nprobe=8)
    assert len(ann) == 6000 and ann.nlist == nlist_for(6000)
    ann.save(tmp_path / "ann.faiss")
    loaded = WindowANN.load(tmp_path / "ann.faiss", nprobe=8)
    probes = [3, 2600, 5999]
    scores, ids = loaded.search(vectors[probes], k=5)
    assert ids[:, 0].tolist() == probes  # each finds itself, under its position across shards
    assert np.allclose(scores[:, 0], 1.0, atol=0.02)  # 8-bit codes: inner products within ~1 %
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_nprobe_is_bounded_by_the_cells_and_an_empty_index_is_refused():
    ann = WindowANN.build([_unit(500, 16, seed=1)], dim=16, nprobe=10_000)
    assert ann.nprobe == ann.nlist
    with pytest.raises(ValueError, match="at least one window"):
        WindowANN.build([np.zeros((0, 16), np.float32)], dim=16)
