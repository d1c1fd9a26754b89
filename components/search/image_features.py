"""Image features of the local reverse-image index: window descriptors and pixel verification.

Why: the tool-server must find the corpus image (and so its page) from a copy that was resized,
re-encoded as JPEG, blurred, padded or partly cropped. Perceptual hashes of the whole image break
on crops and padding, so the index describes every corpus image by many *windows* (the whole
image, its border-trimmed content, and a multi-scale grid of sub-windows) and each window by a
small descriptor that survives re-encoding:

* a grey ``GRID x GRID`` thumbnail, mean-removed and L2-normalised (layout, invariant to
  brightness/contrast and robust to blur, JPEG and resizing, which all act like low-pass filters);
* a ``4 x 4`` grid of mean colours (so a red square is not a blue square of equal luminance).

The dot product of two descriptors is ``GREY_WEIGHT * cos(grey) + (1 - GREY_WEIGHT) * cos(colour)``.
A second stage (:func:`verify_thumbs`, used by the index) re-ranks the best candidates by normalised cross-correlation
of a sharper grey thumbnail of the matched window, which separates near-duplicates.

:class:`ImageEmbedder` is the protocol the index uses, so a CLIP-style embedder
(:class:`ClipEmbedder`, transformers ``CLIPModel`` from a local path) can replace the handmade one
on GPU deployments. Library module: used by ``components.search.image_index``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

GRID = 12  # grey thumbnail side of a window descriptor
COLOUR_GRID = 4
GREY_WEIGHT = 0.7
VERIFY = 24  # grey thumbnail side used by the verification stage
WORK_SIDE = 192  # images are reduced to this longest side before windows are cut
# (scale, step) pairs: window side as a fraction of the image side, grid step as a fraction.
WINDOW_SCALES: tuple[tuple[float, float], ...] = ((0.85, 0.075), (0.7, 0.075), (0.6, 0.08), (0.5, 0.1))

Box = tuple[float, float, float, float]  # fractions of width/height: x0, y0, x1, y1


@runtime_checkable
class ImageEmbedder(Protocol):
    """Turns images (whole images or windows cut from them) into L2-normalised vectors.

    ``name`` and ``dim`` are written into the index so a loaded index refuses a different embedder.
    """

    name: str
    dim: int

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Return float32 ``(len(images), dim)``, each row L2-normalised."""
        ...


def work_image(image: Image.Image) -> Image.Image:
    """RGB copy reduced (area filter) to at most ``WORK_SIDE`` on its longest side."""
    rgb = image.convert("RGB")
    scale = WORK_SIDE / max(rgb.size)
    if scale < 1:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BOX)
    return rgb


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-6)


class GridEmbedder:
    """The handmade descriptor (grey layout + colour grid); CPU, no weights."""

    name = "grid-v2"  # v2: box means from summed-area tables (v1: one PIL resize a box)
    dim = GRID * GRID + COLOUR_GRID * COLOUR_GRID * 3

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        return describe_boxes_many([(work_image(im), [(0.0, 0.0, 1.0, 1.0)]) for im in images])


def box_means(sat: np.ndarray, boxes: np.ndarray, n: int) -> np.ndarray:
    """Area-weighted mean of each cell of an ``n x n`` grid over each box, from a summed-area table.

    ``sat`` is :func:`summed_area` of an ``(h, w)`` or ``(h, w, c)`` image; ``boxes`` ``(B, 4)`` in
    pixels (fractional edges allowed). The integral of a piecewise-constant image is bilinear inside
    each pixel, so bilinear interpolation of the table gives the exact area integral — what PIL's
    BOX resampling of ``box`` computes, for all boxes in a few array operations instead of one resize
    each (~25x faster building and querying). Returns ``(B, n, n)`` or ``(B, n, n, c)``.
    """
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    t = np.linspace(0.0, 1.0, n + 1)
    xs = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * t  # (B, n+1) cell edges
    ys = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * t
    xs, ys = np.clip(xs, 0, w), np.clip(ys, 0, h)
    ix, iy = np.minimum(xs.astype(np.int64), w - 1), np.minimum(ys.astype(np.int64), h - 1)
    fx, fy = xs - ix, ys - iy
    if sat.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]
    # table at every (edge y, edge x) of every box: (B, n+1, n+1[, c])
    y0, y1, x0, x1 = iy[:, :, None], iy[:, :, None] + 1, ix[:, None, :], ix[:, None, :] + 1
    wx, wy = fx[:, None, :], fy[:, :, None]
    top = sat[y0, x0] * (1 - wx) + sat[y0, x1] * wx
    bottom = sat[y1, x0] * (1 - wx) + sat[y1, x1] * wx
    table = top * (1 - wy) + bottom * wy
    sums = table[:, 1:, 1:] - table[:, :-1, 1:] - table[:, 1:, :-1] + table[:, :-1, :-1]
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (n * n)).reshape(-1, *([1] * (sums.ndim - 1)))
    return sums / np.maximum(area, 1e-9)


def summed_area(a: np.ndarray) -> np.ndarray:
    """Summed-area table with a leading zero row and column: ``sat[y, x] = a[:y, :x].sum()``. 8-bit
    images sum exactly in int32 (up to 8M pixels; 8x faster than float64), anything else in float64."""
    a = np.asarray(a)
    exact = a.dtype == np.uint8 and a.shape[0] * a.shape[1] <= 8_000_000
    dtype = np.int32 if exact else np.float64
    sat = np.zeros((a.shape[0] + 1, a.shape[1] + 1, *a.shape[2:]), dtype)
    sat[1:, 1:] = a.cumsum(0, dtype=dtype).cumsum(1, dtype=dtype)
    return sat


def _pixel_boxes(img_size: tuple[int, int], boxes: Sequence[Box]) -> np.ndarray:
    w, h = img_size
    return np.asarray(boxes, np.float64).reshape(-1, 4) * np.array([w, h, w, h], np.float64)


def describe_boxes(img: Image.Image, boxes: Sequence[Box]) -> np.ndarray:
    """Grid descriptors of ``boxes`` (fractions) of an RGB work image: ``(len(boxes), dim)``."""
    px = _pixel_boxes(img.size, boxes)
    grey_rows = box_means(summed_area(np.asarray(img.convert("L"))), px, GRID).reshape(len(px), -1)
    colour_rows = box_means(summed_area(np.asarray(img.convert("RGB"))), px, COLOUR_GRID).reshape(len(px), -1)
    grey_rows = grey_rows - grey_rows.mean(axis=1, keepdims=True)
    colour_rows = colour_rows - 128.0  # absolute colour: centred on mid-grey, not on the window's own mean
    return np.hstack([_unit(grey_rows) * np.sqrt(GREY_WEIGHT),
                      _unit(colour_rows) * np.sqrt(1 - GREY_WEIGHT)]).astype(np.float32)


def describe_boxes_many(items: Sequence[tuple[Image.Image, Sequence[Box]]]) -> np.ndarray:
    return np.vstack([describe_boxes(img, boxes) for img, boxes in items])


def trim_box(img: Image.Image, tol: float = 12.0) -> Box | None:
    """The box (fractions) left after removing uniform borders of the corner colour.

    Padding adds such borders; returns ``None`` when nothing (or everything) would be trimmed.
    """
    a = np.asarray(img, np.float32)
    h, w = a.shape[:2]
    corners = np.stack([a[0, 0], a[0, -1], a[-1, 0], a[-1, -1]])
    bg = np.median(corners, axis=0)
    d = np.abs(a - bg)
    # "some channel differs": three comparisons, ~2x faster than a max over the 3-long last axis
    content = (d[..., 0] > tol) | (d[..., 1] > tol) | (d[..., 2] > tol)
    rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return None
    box = (cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h)
    if box == (0.0, 0.0, 1.0, 1.0) or (box[2] - box[0]) * (box[3] - box[1]) < 0.05:
        return None
    return box


def window_boxes(img: Image.Image) -> list[Box]:
    """The windows indexed for one corpus image: whole, trimmed content, and the multi-scale grid."""
    boxes: list[Box] = [(0.0, 0.0, 1.0, 1.0)]
    trimmed = trim_box(img)
    if trimmed is not None:
        boxes.append(trimmed)
    for scale, step in WINDOW_SCALES:
        starts = np.arange(0.0, 1.0 - scale + 1e-6, step)
        if 1.0 - scale - starts[-1] > 1e-6:
            starts = np.append(starts, 1.0 - scale)
        boxes.extend((float(x), float(y), float(x) + scale, float(y) + scale)
                     for y in starts for x in starts)
    return boxes


def query_boxes(img: Image.Image) -> list[Box]:
    """The windows a query is described by: the whole image and, if padded, its trimmed content."""
    trimmed = trim_box(img)
    return [(0.0, 0.0, 1.0, 1.0)] + ([trimmed] if trimmed is not None else [])


def verify_thumbs(grey_sat: np.ndarray, size: tuple[int, int], boxes: Sequence[Box]) -> np.ndarray:
    """Mean-removed, unit-norm ``VERIFY x VERIFY`` grey thumbnails of ``boxes`` of a work image whose
    grey summed-area table is ``grey_sat`` (:func:`summed_area`): ``(len(boxes), VERIFY*VERIFY)``."""
    g = box_means(grey_sat, _pixel_boxes(size, boxes), VERIFY).reshape(len(boxes), -1)
    g = g - g.mean(axis=1, keepdims=True)
    return (g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-6)).astype(np.float32)


class ClipEmbedder:
    """CLIP image embeddings from a LOCAL checkpoint folder (``CLIPModel`` + ``CLIPImageProcessor``).

    For GPU deployments: ``tools.image_embedder=clip`` and ``tools.image_embedder_path=/models/clip``.
    It never downloads (``local_files_only=True``). The tests exercise it with a tiny random CLIP
    built from a config offline (real weights cannot be fetched here), so they prove the code path,
    not CLIP's retrieval quality.
    """

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 64) -> None:
        import torch
        from transformers import CLIPImageProcessor, CLIPModel

        self._torch = torch
        self.model = CLIPModel.from_pretrained(model_path, local_files_only=True).to(device).eval()
        self.processor = CLIPImageProcessor.from_pretrained(model_path, local_files_only=True)
        self.device = device
        self.batch_size = batch_size
        self.dim = int(self.model.config.projection_dim)
        self.name = f"clip:{model_path}"
        log.info("CLIP image embedder loaded from %s on %s (dim %d)", model_path, device, self.dim)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
            with self._torch.no_grad():
                feats = self.model.get_image_features(pixel_values=inputs["pixel_values"])
            if not isinstance(feats, self._torch.Tensor):  # some versions return a model output
                feats = feats.pooler_output
            out.append(feats.float().cpu().numpy())
        return _unit(np.vstack(out)).astype(np.float32)


def make_embedder(settings: object) -> ImageEmbedder:
    """The embedder ``tools.image_embedder`` names: ``grid`` (default) or ``clip`` from a local path."""
    tools = settings.tools  # type: ignore[attr-defined]
    if tools.image_embedder == "clip":
        return ClipEmbedder(tools.image_embedder_path, device=settings.model.device)  # type: ignore[attr-defined]
    return GridEmbedder()
