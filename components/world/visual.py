"""Search-free questions of the offline world: images whose answer is in the pixels.

Why: the paper balances search-required and search-free questions 50:50 so the model also learns
when NOT to search. These images hold plain shapes in named colours on a white background, drawn
without anti-aliasing, so each answer — the dominant colour, how many shapes, which shape, where
it is — can be recomputed from the pixels alone (:func:`analyse`); :func:`make_visual` checks its
own answer that way before returning.

Library module: ``make_visual(kind, rng) -> (image, question, answers, category)``.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

BG = (255, 255, 255)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 70, 220), "yellow": (245, 215, 30),
    "orange": (250, 140, 20), "purple": (130, 50, 180), "black": (25, 25, 25), "pink": (240, 110, 180),
}
SHAPES = ("circle", "square", "triangle")
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VISUAL_KINDS = ("colour", "count", "shape", "position")
_POS_ALIASES = {"left": ["left", "on the left", "the left side", "left side"],
                "right": ["right", "on the right", "the right side", "right side"],
                "top": ["top", "at the top", "the top", "upper part"],
                "bottom": ["bottom", "at the bottom", "the bottom", "lower part"],
                "center": ["center", "in the center", "centre", "in the middle", "middle"]}
POSITIONS = tuple(_POS_ALIASES)
_SIDE = 256


def _shape(d: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill: tuple) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)


def _grid_boxes(rng: random.Random, n: int, cells: int = 3) -> list[tuple[float, float, float, float]]:
    """``n`` non-touching boxes: one per distinct grid cell, jittered inside it."""
    step = _SIDE / cells
    chosen = rng.sample(range(cells * cells), n)
    out = []
    for c in sorted(chosen):
        i, j = c % cells, c // cells
        side = rng.uniform(0.4, 0.7) * step
        x0 = i * step + rng.uniform(4, step - side - 4)
        y0 = j * step + rng.uniform(4, step - side - 4)
        out.append((x0, y0, x0 + side, y0 + side))
    return out


def _position_box(rng: random.Random, where: str) -> tuple[float, float, float, float]:
    side = rng.uniform(40, 60)
    lo, mid, hi = (0.08, 0.2), (0.45, 0.55), (0.8, 0.92)
    fx, fy = {"left": (lo, mid), "right": (hi, mid), "top": (mid, lo), "bottom": (mid, hi),
              "center": (mid, mid)}[where]
    cx, cy = rng.uniform(*fx) * _SIDE, rng.uniform(*fy) * _SIDE
    cx = min(max(cx, side / 2 + 2), _SIDE - side / 2 - 2)
    cy = min(max(cy, side / 2 + 2), _SIDE - side / 2 - 2)
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def make_visual(kind: str, rng: random.Random, verify: bool = True) -> tuple[Image.Image, str, list[str], str]:
    """One search-free image with its question, answers (aliases) and category.

    ``verify`` recomputes the answer from the pixels (:func:`analyse`, ~10 ms an image) and raises if
    it differs; the world always verifies, training drills that draw thousands of images may skip it."""
    img = Image.new("RGB", (_SIDE, _SIDE), BG)
    d = ImageDraw.Draw(img)
    names = list(COLOURS)
    if kind == "count":
        n, shape, colour = rng.randint(1, 7), rng.choice(SHAPES), rng.choice(names)
        for box in _grid_boxes(rng, n):
            _shape(d, shape, box, COLOURS[colour])
        question = f"How many {colour} {shape}s are there in this image?"
        answers = [str(n), NUMBER_WORDS[n]]
    elif kind == "colour":
        main, other = rng.sample(names, 2)
        boxes = _grid_boxes(rng, rng.randint(3, 6))
        for i, box in enumerate(boxes):  # main colour on the larger share of shapes, drawn bigger
            is_main = i % 3 != 2
            bx = box if is_main else _shrink(box, 0.55)
            _shape(d, rng.choice(SHAPES), bx, COLOURS[main if is_main else other])
        question = "What is the dominant colour of the shapes in this image?"
        answers = [main, f"{main} colour", f"it is {main}"]
    elif kind == "shape":
        shape, colour = rng.choice(SHAPES), rng.choice(names)
        side = rng.uniform(90, 170)
        x0, y0 = rng.uniform(10, _SIDE - side - 10), rng.uniform(10, _SIDE - side - 10)
        _shape(d, shape, (x0, y0, x0 + side, y0 + side), COLOURS[colour])
        question = f"What shape is the {colour} object in this image?"
        answers = [shape, f"a {shape}"] + (["rectangle"] if shape == "square" else [])
    elif kind == "position":
        where, shape, colour = rng.choice(list(_POS_ALIASES)), rng.choice(SHAPES), rng.choice(names)
        _shape(d, shape, _position_box(rng, where), COLOURS[colour])
        question = f"Where in the image is the {colour} {shape}: left, right, top, bottom or center?"
        answers = list(_POS_ALIASES[where])
    else:
        raise ValueError(f"unknown visual question kind {kind!r}: use one of {VISUAL_KINDS}")
    got = analyse(img)[kind] if verify else answers[0]
    if got != answers[0]:  # the answer must be recomputable from the pixels
        raise AssertionError(f"visual {kind} image: pixels say {got!r}, spec says {answers[0]!r}")
    return img, question, answers, f"visual/{kind}"


def _shrink(box: tuple[float, float, float, float], f: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    cx, cy, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * f / 2
    return (cx - h, cy - h, cx + h, cy + h)


# ---- recomputing answers from pixels ------------------------------------------------------------
def colour_names(img: Image.Image) -> np.ndarray:
    """Per pixel: index into ``list(COLOURS)`` of the exact palette colour, -1 for background/other."""
    a = np.asarray(img.convert("RGB"), np.int32)
    packed = (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]
    out = np.full(packed.shape, -1, np.int32)
    for i, (r, g, b) in enumerate(COLOURS.values()):
        out[packed == ((r << 16) | (g << 8) | b)] = i
    return out


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate(([0], row.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def components(mask: np.ndarray) -> list[dict[str, float]]:
    """4-connected components of a boolean mask, labelled by joining runs row by row (union-find).

    Each component: ``area``, bounding box ``x0, y0, x1, y1`` (inclusive) and centroid ``cx, cy``.
    """
    parent: list[int] = []
    runs: list[tuple[int, int, int]] = []  # (y, start, end)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    prev: list[int] = []
    for y in range(mask.shape[0]):
        cur = []
        for s, e in _runs(mask[y]):
            rid = len(runs)
            runs.append((y, s, e))
            parent.append(rid)
            for p in prev:  # runs of the row above that overlap this one are the same component
                _, ps, pe = runs[p]
                if ps < e and s < pe:
                    parent[find(p)] = find(rid)
            cur.append(rid)
        prev = cur
    comps: dict[int, dict[str, float]] = {}
    for rid, (y, s, e) in enumerate(runs):
        c = comps.setdefault(find(rid), {"area": 0, "x0": s, "y0": y, "x1": e - 1, "y1": y, "sx": 0.0, "sy": 0.0})
        n = e - s
        c["area"] += n
        c["x0"], c["x1"] = min(c["x0"], s), max(c["x1"], e - 1)
        c["y0"], c["y1"] = min(c["y0"], y), max(c["y1"], y)
        c["sx"] += (s + e - 1) * n / 2
        c["sy"] += y * n
    out = []
    for c in comps.values():
        c["cx"], c["cy"] = c.pop("sx") / c["area"], c.pop("sy") / c["area"]
        out.append(c)
    return out


def _shape_of(c: dict[str, float]) -> str:
    fill = c["area"] / float((c["x1"] - c["x0"] + 1) * (c["y1"] - c["y0"] + 1))
    return "square" if fill > 0.93 else "circle" if fill > 0.65 else "triangle"


def _position_of(c: dict[str, float], size: tuple[int, int]) -> str:
    cx, cy = c["cx"] / size[0], c["cy"] / size[1]
    if abs(cx - 0.5) < 0.1 and abs(cy - 0.5) < 0.1:
        return "center"
    if abs(cx - 0.5) >= abs(cy - 0.5):
        return "left" if cx < 0.5 else "right"
    return "top" if cy < 0.5 else "bottom"


def analyse(img: Image.Image) -> dict[str, str]:
    """Answers of every visual question kind, recomputed from the pixels of ``img``."""
    idx = colour_names(img)
    names = list(COLOURS)
    counts = np.bincount(idx[idx >= 0].ravel(), minlength=len(names))
    comps = components(idx >= 0)
    if not comps:
        return {"colour": "none", "count": "0", "shape": "none", "position": "none"}
    biggest = max(comps, key=lambda c: c["area"])
    return {"colour": names[int(counts.argmax())], "count": str(len(comps)),
            "shape": _shape_of(biggest), "position": _position_of(biggest, img.size)}
