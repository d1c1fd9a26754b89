"""Benchmark: reverse-image search recall@1 and latency per query transform, vs an aHash baseline.

Why: the local image index must find the corpus image behind a resized, JPEG re-encoded, blurred,
padded or cropped copy. This draws a corpus of procedural images (shapes, colours, text, plus
near-duplicate distractors), builds the index, queries it with each transform, and compares with
what simple code does — the nearest neighbour by Hamming distance of an 8x8 average hash — in the
same run. Transforms: half size, JPEG q30, Gaussian blur, a white or black border on every side,
coloured letterbox bars of unequal widths on two sides, and 80% / 60% crops.

    python -m bench.search_image [--images 500] [--queries 100] [--seed 0]

Writes ``bench-results/search_image.json`` (docs/design.md §7). The corpus generator and transforms are
also used by ``tests/unit/search/test_image_index.py``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bench.report import write_report

WORDS = ["delta", "harbor", "quartz", "lumen", "orbit", "cedar", "maple", "zephyr", "nova", "atlas",
         "bridge", "falcon", "summit", "river", "ember", "tundra", "sable", "onyx", "coral", "vista"]


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _shape(draw: ImageDraw.ImageDraw, rng: random.Random, w: int, h: int, scale: float = 1.0) -> None:
    x0, y0 = rng.randrange(w), rng.randrange(h)
    x1 = x0 + int(rng.randrange(w // 8, w // 2) * scale)
    y1 = y0 + int(rng.randrange(h // 8, h // 2) * scale)
    kind, fill = rng.choice(["rect", "ellipse", "poly", "line"]), _colour(rng)
    if kind == "rect":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif kind == "ellipse":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif kind == "poly":
        draw.polygon([(x0, y0), (x1, y0 + (y1 - y0) // 3), ((x0 + x1) // 2, y1)], fill=fill)
    else:
        draw.line((x0, y0, x1, y1), fill=fill, width=rng.randrange(3, 12))


def draw_image(seed: int) -> Image.Image:
    """One procedural image: a background, 4–9 shapes and a word, deterministic in ``seed``."""
    rng = random.Random(seed)
    w, h = rng.randrange(220, 420), rng.randrange(220, 420)
    img = Image.new("RGB", (w, h), _colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randrange(4, 10)):
        _shape(draw, rng, w, h)
    draw.text((rng.randrange(w // 2), rng.randrange(h - 20)), rng.choice(WORDS), fill=_colour(rng),
              font_size=rng.randrange(18, 40))
    return img


def near_duplicate(img: Image.Image, seed: int) -> Image.Image:
    """A distractor: ``img`` with one small extra shape (a few % of its area)."""
    rng = random.Random(seed)
    out = img.copy()
    _shape(ImageDraw.Draw(out), rng, out.width, out.height, scale=0.35)
    return out


def make_corpus(root: Path, n: int, n_near: int, seed: int = 0) -> list[str]:
    """Write ``n`` images plus ``n_near`` near-duplicates and ``images.jsonl``; return the ids of
    the ``n`` originals (the query targets)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows, originals = [], []
    for i in range(n):
        img = draw_image(seed * 100_003 + i)
        iid = f"img{i:05d}"
        img.save(root / "img" / f"{iid}.png")
        if i < n_near:  # listed BEFORE its original, so exact ties resolve against us
            nid = f"near{i:05d}"
            near_duplicate(img, seed * 7 + i).save(root / "img" / f"{nid}.png")
            rows.append({"id": nid, "path": f"img/{nid}.png", "doc_id": f"neardoc{i:05d}",
                         "title": f"Near page {i}"})
        rows.append({"id": iid, "path": f"img/{iid}.png", "doc_id": f"doc{i:05d}", "title": f"Page {i}"})
        originals.append(iid)
    (root / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return originals


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(BytesIO(buf.getvalue())).convert("RGB")


def _pad(img: Image.Image, rng: random.Random) -> Image.Image:
    p = int(0.15 * max(img.size))
    out = Image.new("RGB", (img.width + 2 * p, img.height + 2 * p), rng.choice([(255,) * 3, (0,) * 3]))
    out.paste(img, (p, p))
    return out


def _letterbox(img: Image.Image, rng: random.Random) -> Image.Image:
    """Bars of one random colour on two opposite sides (a screenshot or a letterboxed frame), of
    unequal widths: the border is neither white nor black, nor the same on every side."""
    colour = _colour(rng)
    if rng.random() < 0.5:  # bars above and below
        top, bottom = int(rng.uniform(0.08, 0.25) * img.height), int(rng.uniform(0.08, 0.25) * img.height)
        out = Image.new("RGB", (img.width, img.height + top + bottom), colour)
        out.paste(img, (0, top))
    else:
        left, right = int(rng.uniform(0.08, 0.25) * img.width), int(rng.uniform(0.08, 0.25) * img.width)
        out = Image.new("RGB", (img.width + left + right, img.height), colour)
        out.paste(img, (left, 0))
    return out


def _crop(img: Image.Image, rng: random.Random, frac: float = 0.6) -> Image.Image:
    cw, ch = int(img.width * frac), int(img.height * frac)
    x, y = rng.randrange(img.width - cw + 1), rng.randrange(img.height - ch + 1)
    return img.crop((x, y, x + cw, y + ch))


TRANSFORMS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "resized": lambda im, rng: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR),
    "jpeg_q30": lambda im, rng: _jpeg(im, 30),
    "blurred": lambda im, rng: im.filter(ImageFilter.GaussianBlur(2.0)),
    "padded": _pad,
    "letterboxed_colour": _letterbox,
    "cropped_80": lambda im, rng: _crop(im, rng, 0.8),
    "cropped_60": _crop,
}


class AHashBaseline:
    """What simple code does: 8x8 average hash, nearest neighbour by Hamming distance."""

    def __init__(self, corpus: Path) -> None:
        rows = [json.loads(line) for line in (corpus / "images.jsonl").read_text().splitlines()]
        self.ids = [r["id"] for r in rows]
        self.bits = np.stack([imagehash.average_hash(Image.open(corpus / r["path"])).hash.ravel()
                              for r in rows])

    def search(self, image: Image.Image, top_k: int) -> list[tuple[str, float]]:
        q = imagehash.average_hash(image).hash.ravel()
        dist = (self.bits != q).sum(axis=1)
        order = np.argsort(dist, kind="stable")[:top_k]
        return [(self.ids[i], float(64 - dist[i])) for i in order]


def evaluate(search: Callable[[Image.Image, int], list[tuple[str, float]]], corpus: Path,
             targets: list[str], seed: int = 1) -> dict[str, dict[str, float]]:
    """Per transform over ``targets``: recall@1 (ties with another image go against us),
    tie-aware recall@1 (the target shares the top score — a crop that misses the one small
    difference of a near-duplicate is identical in both), recall@5, and latency (ms)."""
    out = {}
    for name, fn in TRANSFORMS.items():
        rng, hits, tied, hits5, lat = random.Random(seed), 0, 0, 0, []
        for iid in targets:
            query = fn(Image.open(corpus / "img" / f"{iid}.png").convert("RGB"), rng)
            t0 = time.perf_counter()
            top = search(query, 5)
            lat.append((time.perf_counter() - t0) * 1000)
            hits += bool(top) and top[0][0] == iid
            tied += any(i == iid and s >= top[0][1] - 1e-6 for i, s in top)
            hits5 += any(i == iid for i, _ in top)
        n = len(targets)
        out[name] = {"recall_at_1": hits / n, "recall_at_1_tie_aware": tied / n, "recall_at_5": hits5 / n,
                     "latency_ms_p50": statistics.median(lat), "latency_ms_mean": statistics.fmean(lat)}
    return out


def main() -> None:
    from components.search.image_index import ImageIndex

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--near", type=int, default=100, help="near-duplicate distractors added")
    ap.add_argument("--queries", type=int, default=100, help="query targets per transform")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        targets = make_corpus(corpus, args.images, args.near, args.seed)
        targets = random.Random(args.seed).sample(targets, min(args.queries, len(targets)))
        t0 = time.perf_counter()
        index = ImageIndex.build(corpus, Path(tmp) / "index")
        build_s = time.perf_counter() - t0
        ours = evaluate(index.search, corpus, targets)
        base = evaluate(AHashBaseline(corpus).search, corpus, targets)
    mean = {k: statistics.fmean(v[name]["recall_at_1"] for name in TRANSFORMS)
            for k, v in (("ours", ours), ("base", base))}
    write_report(
        "search_image",
        params={"images": args.images + args.near, "near_duplicates": args.near,
                "queries_per_transform": len(targets), "transforms": list(TRANSFORMS), "seed": args.seed},
        metric="recall_at_1_mean_over_transforms", ours=mean["ours"], baseline=mean["base"],
        baseline_name="8x8 average-hash nearest neighbour",
        details={"ours": ours, "baseline": base, "index_build_s": round(build_s, 2),
                 "windows": index.windows},
    )


if __name__ == "__main__":
    main()
