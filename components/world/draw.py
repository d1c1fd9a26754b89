"""Procedural images of the offline world: one distinctive picture per entity, views, scenes.

Why: image search must tell entities apart from their pixels, the way a reverse-image engine
tells photos apart. Each entity is drawn from its own ``style_seed``: a background pattern (stripes,
checks, rings, dots — orientation, count and colours vary), a palette, and a kind-specific motif
(a tiered building with a roof, an animal with spots, a framed abstract painting, an emblem, a
portrait) whose layout also depends on the seed, so two entities differ in layout and colour. A
near-duplicate distractor shares the style seed but changes its accent colour and motif details.

Questions never show the corpus image itself: :func:`view_of` makes a re-framed, re-sized,
re-lit copy (what a second photo of the same thing would be). :func:`compose_scene` places 2–4
entity images on a plain canvas at known boxes inside the halves/quadrants that spatial words
("left", "top right") name, for crop questions.

Library module; ``draw_entity(kind, style_seed, variant)``.
"""

from __future__ import annotations

import colorsys
import io
import math
import random

from PIL import Image, ImageDraw, ImageEnhance

SIZE = 256
SCENE_BG = (240, 240, 240)
Colour = tuple[int, int, int]
# Which region phrase names each tile, by tile count; each tile sits inside its phrase's region.
SCENE_LAYOUTS: dict[int, tuple[tuple[int, int], list[tuple[str, tuple[int, int, int, int]]]]] = {
    2: ((480, 240), [("left", (0, 0, 240, 240)), ("right", (240, 0, 480, 240))]),
    3: ((480, 480), [("left", (0, 0, 240, 480)), ("top right", (240, 0, 480, 240)),
                     ("bottom right", (240, 240, 480, 480))]),
    4: ((480, 480), [("top left", (0, 0, 240, 240)), ("top right", (240, 0, 480, 240)),
                     ("bottom left", (0, 240, 240, 480)), ("bottom right", (240, 240, 480, 480))]),
}


def png_bytes(img: Image.Image) -> bytes:
    """Deterministic PNG encoding (fixed compression, no metadata)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


def _colour(rng: random.Random, s: tuple[float, float] = (0.4, 0.95),
            v: tuple[float, float] = (0.3, 0.8)) -> Colour:
    """A random colour, never close to the scene background (value <= 0.8)."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*s), rng.uniform(*v))
    return (round(r * 255), round(g * 255), round(b * 255))


def _pattern(d: ImageDraw.ImageDraw, rng: random.Random, c1: Colour, c2: Colour) -> None:
    """Background: one of several patterns whose geometry depends on ``rng``."""
    d.rectangle((0, 0, SIZE, SIZE), fill=c1)
    kind = rng.choice(["hstripes", "vstripes", "diag", "checks", "rings", "dots", "split"])
    n = rng.randint(2, 7)
    step = SIZE / n
    if kind in ("hstripes", "vstripes"):
        w = rng.uniform(0.25, 0.6) * step
        for i in range(n):
            a = i * step + rng.uniform(0, step - w)
            box = (0, a, SIZE, a + w) if kind == "hstripes" else (a, 0, a + w, SIZE)
            d.rectangle(box, fill=c2)
    elif kind == "diag":
        w = rng.randint(10, 40)
        sign = rng.choice([-1, 1])
        for i in range(-n, 2 * n):
            x = i * step * 1.5
            d.line((x, 0, x + sign * SIZE, SIZE), fill=c2, width=w)
    elif kind == "checks":
        for i in range(n):
            for j in range(n):
                if (i + j) % 2:
                    d.rectangle((i * step, j * step, (i + 1) * step, (j + 1) * step), fill=c2)
    elif kind == "rings":
        cx, cy = rng.uniform(0, SIZE), rng.uniform(0, SIZE)
        for i in range(2 * n, 0, -2):
            r = i * step / 2
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=c2 if i % 4 == 0 else c1)
    elif kind == "dots":
        r = step * rng.uniform(0.15, 0.35)
        for i in range(n):
            for j in range(n):
                cx, cy = (i + 0.5) * step, (j + 0.5) * step
                d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=c2)
    else:
        a = rng.uniform(0.25, 0.75) * SIZE
        d.polygon([(0, a), (SIZE, rng.uniform(0.2, 0.8) * SIZE), (SIZE, SIZE), (0, SIZE)], fill=c2)


def _landmark(d: ImageDraw.ImageDraw, rng: random.Random, fg: Colour, accent: Colour, variant: int) -> None:
    ground = rng.uniform(0.75, 0.9) * SIZE
    d.rectangle((0, ground, SIZE, SIZE), fill=tuple(c // 2 for c in fg))
    tiers, width = rng.randint(1, 4), rng.uniform(0.35, 0.7) * SIZE
    cx = SIZE / 2 + rng.uniform(-0.15, 0.15) * SIZE
    tier_h = rng.uniform(0.12, 0.2) * SIZE
    top = ground
    for t in range(tiers):
        w = width * (1 - 0.2 * t)
        d.rectangle((cx - w / 2, top - tier_h, cx + w / 2, top), fill=fg)
        cols = rng.randint(2, 5) + variant
        for c in range(cols):
            x = cx - w / 2 + (c + 0.5) * w / cols
            d.rectangle((x - 4, top - tier_h * 0.7, x + 4, top - tier_h * 0.3), fill=accent)
        top -= tier_h
    w = width * (1 - 0.2 * tiers)
    roof = (rng.choice(["spire", "dome", "flat"]) if not variant else "dome")
    if roof == "spire":
        d.polygon([(cx - w / 2, top), (cx + w / 2, top), (cx, top - rng.uniform(0.1, 0.25) * SIZE)], fill=accent)
    elif roof == "dome":
        d.pieslice((cx - w / 2, top - w / 2, cx + w / 2, top + w / 2), 180, 360, fill=accent)
    else:
        d.rectangle((cx - w / 2 - 6, top - 8, cx + w / 2 + 6, top), fill=accent)


def _species(d: ImageDraw.ImageDraw, rng: random.Random, fg: Colour, accent: Colour, variant: int) -> None:
    cx, cy = SIZE / 2 + rng.uniform(-20, 20), SIZE / 2 + rng.uniform(-20, 20)
    bw, bh = rng.uniform(0.25, 0.4) * SIZE, rng.uniform(0.12, 0.22) * SIZE
    side = rng.choice([-1, 1]) * (-1 if variant else 1)
    for k in range(rng.randint(2, 4)):  # legs
        x = cx - bw * 0.6 + k * bw * 0.4
        d.line((x, cy, x + rng.uniform(-10, 10), cy + bh + rng.uniform(15, 40)), fill=fg, width=6)
    d.polygon([(cx - side * bw * 0.8, cy), (cx - side * bw * 1.5, cy - bh), (cx - side * bw * 1.5, cy + bh * 0.5)],
              fill=fg)
    d.ellipse((cx - bw, cy - bh, cx + bw, cy + bh), fill=fg)
    hr = rng.uniform(0.35, 0.6) * bh * 1.5
    hx, hy = cx + side * bw * 1.05, cy - bh * rng.uniform(0.4, 1.0)
    d.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=fg)
    d.ellipse((hx + side * hr * 0.3 - 4, hy - 6, hx + side * hr * 0.3 + 4, hy + 2), fill=(250, 250, 250))
    for _ in range(rng.randint(3, 8)):
        sx, sy = cx + rng.uniform(-0.7, 0.7) * bw, cy + rng.uniform(-0.5, 0.5) * bh
        r = rng.uniform(4, 12)
        d.ellipse((sx - r, sy - r, sx + r, sy + r), fill=accent)


def _artwork(d: ImageDraw.ImageDraw, rng: random.Random, fg: Colour, accent: Colour, variant: int) -> None:
    m = rng.randint(14, 30)
    frame = _colour(rng, (0.3, 0.7), (0.3, 0.6))
    d.rectangle((0, 0, SIZE, SIZE), outline=frame, width=m)
    for i in range(rng.randint(4, 7)):
        x0, y0 = rng.uniform(m, SIZE * 0.7), rng.uniform(m, SIZE * 0.7)
        x1, y1 = x0 + rng.uniform(30, 110), y0 + rng.uniform(30, 110)
        fill = accent if (i + variant) % 2 else fg
        shape = rng.choice(["rect", "ellipse", "tri"])
        if shape == "rect":
            d.rectangle((x0, y0, x1, y1), fill=fill)
        elif shape == "ellipse":
            d.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            d.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)


def _organisation(d: ImageDraw.ImageDraw, rng: random.Random, fg: Colour, accent: Colour, variant: int) -> None:
    cx, cy, r = SIZE / 2, SIZE * rng.uniform(0.38, 0.48), SIZE * rng.uniform(0.22, 0.32)
    sides = rng.choice([0, 3, 4, 5, 6, 8])
    if sides == 0:
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
    else:
        rot = rng.uniform(0, math.pi)
        d.polygon([(cx + r * math.cos(rot + 2 * math.pi * k / sides), cy + r * math.sin(rot + 2 * math.pi * k / sides))
                   for k in range(sides)], fill=fg)
    points = rng.randint(4, 8) + variant
    star = []
    for k in range(2 * points):
        rr = r * (0.6 if k % 2 == 0 else 0.28)
        a = math.pi * k / points - math.pi / 2
        star.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    d.polygon(star, fill=accent)
    for k in range(rng.randint(1, 3)):  # lettering bars
        y = SIZE * 0.8 + k * 14
        d.rectangle((SIZE * rng.uniform(0.15, 0.3), y, SIZE * rng.uniform(0.7, 0.85), y + 8), fill=fg)


def _person(d: ImageDraw.ImageDraw, rng: random.Random, fg: Colour, accent: Colour, variant: int) -> None:
    skin = rng.choice([(241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172)])
    cx = SIZE / 2 + rng.uniform(-25, 25)
    d.ellipse((cx - SIZE * 0.38, SIZE * 0.7, cx + SIZE * 0.38, SIZE * 1.3), fill=fg)
    r = SIZE * rng.uniform(0.15, 0.22)
    cy = SIZE * 0.45
    hair = accent
    style = rng.choice(["cap", "long", "bun"]) if not variant else "long"
    if style == "long":
        d.rectangle((cx - r * 1.15, cy - r, cx + r * 1.15, cy + r * 1.4), fill=hair)
    d.ellipse((cx - r, cy - r * 1.2, cx + r, cy + r * 1.2), fill=skin)
    d.chord((cx - r * 1.05, cy - r * 1.3, cx + r * 1.05, cy + r * 0.4), 180, 360, fill=hair)
    if style == "bun":
        d.ellipse((cx - r * 0.4, cy - r * 1.9, cx + r * 0.4, cy - r * 1.1), fill=hair)
    for ex in (-0.4, 0.4):
        d.ellipse((cx + ex * r - 4, cy - 4, cx + ex * r + 4, cy + 4), fill=(30, 30, 30))


_MOTIFS = {"landmark": _landmark, "species": _species, "artwork": _artwork,
           "organisation": _organisation, "person": _person}


def draw_entity(kind: str, style_seed: int, variant: int = 0) -> Image.Image:
    """The entity's own picture (SIZE x SIZE RGB). ``variant`` > 0 draws a near-duplicate."""
    rng = random.Random(style_seed)
    c1, c2, fg, accent = (_colour(rng) for _ in range(4))
    pattern_seed, motif_seed = rng.randrange(2**31), rng.randrange(2**31)
    if variant:
        accent = _colour(random.Random(style_seed + 7919 * variant))
    img = Image.new("RGB", (SIZE, SIZE), c1)
    d = ImageDraw.Draw(img)
    _pattern(d, random.Random(pattern_seed), c1, c2)
    _MOTIFS[kind](d, random.Random(motif_seed), fg, accent, variant)
    return img


def view_of(img: Image.Image, rng: random.Random) -> Image.Image:
    """Another 'photo' of the same thing: re-framed (88–100 %), re-sized, re-lit."""
    w, h = img.size
    frac = rng.uniform(0.88, 1.0)
    cw, ch = round(w * frac), round(h * frac)
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    side = rng.randint(224, 320)
    out = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((side, side), Image.Resampling.BILINEAR)
    return ImageEnhance.Brightness(out).enhance(rng.uniform(0.9, 1.1))


def compose_scene(tiles: list[Image.Image], rng: random.Random
                  ) -> tuple[Image.Image, list[tuple[str, list[int]]]]:
    """Place 2–4 images on a plain canvas; return it and ``(region phrase, [x1, y1, x2, y2])`` per tile."""
    size, cells = SCENE_LAYOUTS[len(tiles)]
    canvas = Image.new("RGB", size, SCENE_BG)
    placed = []
    for tile, (phrase, (cx0, cy0, cx1, cy1)) in zip(tiles, cells, strict=True):
        side = rng.randint(170, 210)
        x0 = rng.randint(cx0 + 10, cx1 - 10 - side)
        y0 = rng.randint(cy0 + 10, cy1 - 10 - side)
        canvas.paste(scene_tile(tile, side), (x0, y0))
        placed.append((phrase, [x0, y0, x0 + side, y0 + side]))
    return canvas, placed


def scene_tile(img: Image.Image, side: int) -> Image.Image:
    """The entity image as pasted into a scene (also what a test compares a crop against)."""
    return img.resize((side, side), Image.Resampling.LANCZOS)
