"""Benchmark: the local reverse-image index at 100k images — FAISS candidates against brute force.

Why: brute force scores every window of every image (~108 an image: 10.8M windows, 8.3 GB of
float32 at 100k images) per query. The index switches to FAISS IVF candidates past 500k windows
(:mod:`components.search.image_ann`); this measures what that buys and what it costs, in one run
on one machine: p50/p95 latency a query, recall@1 per transform of the ANN index and of brute force
on the same queries, build time and size on disk.

Corpus: ``--images`` procedural images (``bench.search_image.draw_image``: shapes, colours, a word),
generated here as JPEG q92 (nothing shipped), described in one process per CPU. Queries: the
transforms of ``bench.search_image`` (half size, JPEG q30, blur, white/black border, coloured
letterbox bars, 80% crop) of ``--queries`` random corpus images each. Brute force runs batched
(:meth:`ImageIndex.search_many` with ``exact=True``, one pass over the shards for a batch) for its
recall, and one query at a time on ``--exact-latency-queries`` queries for its latency.

    python -m bench.search_image_scale [--images 100000] [--queries 100] [--nprobe 32]

Writes ``bench-results/search_image_scale.json`` (docs/design.md §7); headline: p50 latency, brute
force ÷ ANN. Needs ~15 GB of disk in the temporary folder at 100k images.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from bench.report import write_report
from bench.search_image import TRANSFORMS, draw_image

log = logging.getLogger(__name__)
QUERY_TRANSFORMS = ("resized", "jpeg_q30", "blurred", "padded", "letterboxed_colour", "cropped_80")


def _write_one(args: tuple[Path, int, int]) -> None:
    root, i, seed = args
    draw_image(seed * 100_003 + i).save(root / "img" / f"img{i:06d}.jpg", "JPEG", quality=92)


def make_corpus(root: Path, n: int, seed: int) -> list[str]:
    """``n`` JPEG images and ``images.jsonl`` under ``root``, drawn in one process per CPU."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_write_one, ((root, i, seed) for i in range(n)), chunksize=256))
    ids = [f"img{i:06d}" for i in range(n)]
    with (root / "images.jsonl").open("w") as fh:
        for i, iid in enumerate(ids):
            fh.write(json.dumps({"id": iid, "path": f"img/{iid}.jpg", "doc_id": f"doc{i:06d}",
                                 "title": f"Page {i}"}) + "\n")
    return ids


def _recall(results: list[list[tuple[str, float]]], targets: list[str]) -> float:
    return sum(bool(r) and r[0][0] == t for r, t in zip(results, targets, strict=True)) / len(targets)


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    from components.search.image_index import ImageIndex

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100, help="query targets per transform")
    ap.add_argument("--exact-latency-queries", type=int, default=10,
                    help="brute-force queries timed one at a time (each scans every window)")
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="dmms-image-scale-") as tmp:
        corpus = Path(tmp) / "corpus"
        t0 = time.perf_counter()
        ids = make_corpus(corpus, args.images, args.seed)
        gen_s = time.perf_counter() - t0
        log.info("corpus: %d images in %.0f s", len(ids), gen_s)
        t0 = time.perf_counter()
        index = ImageIndex.build(corpus, Path(tmp) / "index", ann=True, nprobe=args.nprobe)
        build_s = time.perf_counter() - t0
        sizes = {p.name: p.stat().st_size for p in (Path(tmp) / "index").iterdir()}
        targets = random.Random(args.seed).sample(ids, min(args.queries, len(ids)))
        details: dict[str, dict] = {}
        ann_lat, exact_lat = [], []
        for name in QUERY_TRANSFORMS:
            rng = random.Random(args.seed + 1)
            queries = [TRANSFORMS[name](Image.open(corpus / "img" / f"{t}.jpg").convert("RGB"), rng) for t in targets]
            ann = []
            for q in queries:
                t1 = time.perf_counter()
                ann.append(index.search(q, 5))
                ann_lat.append((time.perf_counter() - t1) * 1000)
            exact = []
            for lo in range(0, len(queries), 50):  # batched: one pass over the 8 GB of shards per batch
                exact.extend(index.search_many(queries[lo:lo + 50], 5, exact=True))
            details[name] = {"recall_at_1_ann": _recall(ann, targets), "recall_at_1_brute_force": _recall(exact, targets),
                             "agree_top1": sum(a[0][0] == b[0][0] for a, b in zip(ann, exact, strict=True)) / len(targets)}
            log.info("%s: %s", name, details[name])
        rng = random.Random(args.seed + 2)
        for t in targets[: args.exact_latency_queries]:
            q = TRANSFORMS["jpeg_q30"](Image.open(corpus / "img" / f"{t}.jpg").convert("RGB"), rng)
            t1 = time.perf_counter()
            index.search(q, 5, exact=True)
            exact_lat.append((time.perf_counter() - t1) * 1000)
    worst_gap = max(d["recall_at_1_brute_force"] - d["recall_at_1_ann"] for d in details.values())
    write_report(
        "search_image_scale",
        params={"images": args.images, "windows": index.windows, "queries_per_transform": len(targets),
                "transforms": list(QUERY_TRANSFORMS), "nprobe": args.nprobe, "nlist": index.ann.nlist,
                "seed": args.seed},
        metric="latency_ms_p50", ours=statistics.median(ann_lat), baseline=statistics.median(exact_lat),
        baseline_name="brute force over every window (same index, exact=True)", lower_is_better=True,
        details={"per_transform": details, "worst_recall_gap_brute_minus_ann": round(worst_gap, 4),
                 "ann_latency_ms": {"p50": statistics.median(ann_lat), "p95": _pct(ann_lat, 0.95),
                                    "p99": _pct(ann_lat, 0.99)},
                 "brute_force_latency_ms": {"p50": statistics.median(exact_lat), "n": len(exact_lat)},
                 "corpus_generation_s": round(gen_s, 1), "index_build_s": round(build_s, 1),
                 "index_bytes": sizes, "index_bytes_total": sum(sizes.values())},
    )


if __name__ == "__main__":
    main()
