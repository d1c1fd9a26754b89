"""Grounding for crop search: turn the model's ``region`` into a pixel box and crop the image.

Why: ``<img_search>`` may name a region of the input image (docs/design.md §2). The model writes it as

* a box ``[x1, y1, x2, y2]`` in absolute pixels of the image sent (Qwen2.5-VL grounds natively in
  absolute pixels) — a JSON list or the same text (``"[10, 20, 200, 180]"``); it is clamped to the
  image, and an empty or inverted box is refused;
* a spatial phrase, understood with no model: ``"top-left"``, ``"the right half"``, ``"center"``,
  ``"upper right corner"``, ``"bottom third"``, or spatial words inside a longer referring
  expression (``"the building on the left"`` → the left half);
* a referring expression (``"the red car"``) located by GroundingDINO through transformers
  (``AutoModelForZeroShotObjectDetection``) when ``tools.grounding_model`` names a local
  checkpoint; its spatial words, if any, choose among the detections.

Anything else raises :class:`GroundingError`: the tool-server answers 422 with its message for a
malformed box, and searches the whole image (saying so) for a referring expression it has no
grounder for (``tools.grounding_url``: the grounding service, components/search/grounding_service.py).

    crop, box = crop_region(image, "the upper right corner")
    crop, box = crop_region(image, [10, 20, 200, 180])
    crop, box = crop_region(image, "the red car", grounder=make_grounder(settings))
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any, Protocol

from PIL import Image

log = logging.getLogger(__name__)

MIN_SIDE = 4  # pixels: a smaller crop carries nothing to search with
# a box written as text: "[10, 20, 200, 180]", "(10,20,200,180)" (also read by components/agent/frame.py)
BOX_TEXT = re.compile(r"^\s*[\[(]?\s*(-?[\d.]+(?:\s*,\s*-?[\d.]+){3})\s*[\])]?\s*$")
_WORD = re.compile(r"[a-z]+")
_H = {"left": "left", "leftmost": "left", "right": "right", "rightmost": "right"}
_V = {"top": "top", "upper": "top", "topmost": "top", "above": "top",
      "bottom": "bottom", "lower": "bottom", "bottommost": "bottom", "below": "bottom"}
_C = {"center", "centre", "middle", "central", "centered", "centred"}
_FRAC = {"half": 1 / 2, "halves": 1 / 2, "third": 1 / 3, "thirds": 1 / 3, "quarter": 1 / 4,
         "quarters": 1 / 4, "fourth": 1 / 4}
_FILLER = {"the", "a", "an", "of", "on", "in", "at", "to", "side", "part", "region", "area", "corner",
           "image", "picture", "photo", "portion", "section", "half", "third", "quarter", "one", "and",
           "this", "that", "crop", "zoom", "into", "s"}
HELP = ("give a box [x1, y1, x2, y2] in pixels of the image, or a spatial phrase such as "
        "'top-left', 'the right half', 'center', 'bottom third'")


class GroundingError(ValueError):
    """The region cannot be turned into a crop; the message tells the model what to send instead."""


class Grounder(Protocol):
    """Locates a referring expression: candidate boxes ``[x1, y1, x2, y2]`` in pixels, best first."""

    def locate(self, image: Image.Image, phrase: str) -> list[list[float]]: ...


def crop_region(image: Image.Image, region: str | list[float], grounder: Grounder | None = None,
                ) -> tuple[Image.Image, list[int]]:
    """Crop ``image`` to ``region``; return the crop and the integer box used (clamped)."""
    box = resolve_box(image.size, region, image=image, grounder=grounder)
    return image.crop(tuple(box)), box


def resolve_box(size: tuple[int, int], region: Any, *, image: Image.Image | None = None,
                grounder: Grounder | None = None) -> list[int]:
    """The clamped integer pixel box for ``region`` on an image of ``size`` (width, height)."""
    if isinstance(region, list | tuple):
        return clamp_box(size, region)
    if not isinstance(region, str) or not region.strip():
        raise GroundingError(f"region must be a box or a phrase, got {type(region).__name__}: {HELP}")
    text = region.strip()
    if BOX_TEXT.match(text):
        return clamp_box(size, json.loads("[" + BOX_TEXT.match(text).group(1) + "]"))
    spatial = spatial_box(size, text)
    if grounder is not None and (spatial is None or _has_object_words(text)):
        found = _grounded(size, text, image, grounder, spatial)
        if found is not None:
            return found
    if spatial is not None:
        return spatial
    if grounder is None:
        raise GroundingError(f"cannot locate {text!r}: no grounding model is configured, so {HELP}")
    raise GroundingError(f"the grounding model found nothing matching {text!r}: {HELP}")


def needs_grounder(region: Any) -> bool:
    """True for a referring expression only a grounding model can place (no box, no spatial word)."""
    if not isinstance(region, str) or not region.strip() or BOX_TEXT.match(region.strip()):
        return False
    return _spatial_words(region) == (None, None, False)


def _spatial_words(text: str) -> tuple[str | None, str | None, bool]:
    """(horizontal side, vertical side, centre) named in ``text``."""
    words = _WORD.findall(text.lower())
    h = next((_H[t] for t in words if t in _H), None)
    v = next((_V[t] for t in words if t in _V), None)
    return h, v, any(t in _C for t in words)


def clamp_box(size: tuple[int, int], box: Any) -> list[int]:
    """Clamp ``[x1, y1, x2, y2]`` (pixels) to the image; refuse malformed, inverted or empty boxes."""
    w, h = size
    if len(box) != 4:
        raise GroundingError(f"a box has 4 numbers [x1, y1, x2, y2], got {len(box)}: {box!r}")
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise GroundingError(f"box values must be numbers, got {box!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise GroundingError(f"box values must be finite numbers, got {box!r}")
    if x2 <= x1 or y2 <= y1:
        raise GroundingError(f"box {box!r} has no area: x2 must exceed x1 and y2 exceed y1")
    cx1, cy1 = max(0, math.floor(x1)), max(0, math.floor(y1))
    cx2, cy2 = min(w, math.ceil(x2)), min(h, math.ceil(y2))
    if cx2 - cx1 < MIN_SIDE or cy2 - cy1 < MIN_SIDE:
        raise GroundingError(f"box {box!r} leaves less than {MIN_SIDE}x{MIN_SIDE} pixels inside the "
                             f"{w}x{h} image: boxes are absolute pixel coordinates of the image sent")
    return [cx1, cy1, cx2, cy2]


def spatial_box(size: tuple[int, int], text: str) -> list[int] | None:
    """The box a spatial phrase names, or ``None`` when ``text`` has no spatial word."""
    words = _WORD.findall(text.lower())
    h, v, centre = _spatial_words(text)
    if h is None and v is None and not centre:
        return None
    frac = next((_FRAC[t] for t in words if t in _FRAC), 0.5)
    xs = _span(h, frac, centre and h is None and v is not None)
    ys = _span(v, frac, centre and v is None and h is not None)
    if h is None and v is None:  # "center", "the middle third": a centred box
        xs = ys = ((1 - frac) / 2, (1 + frac) / 2)
    w, hh = size
    return clamp_box(size, [xs[0] * w, ys[0] * hh, xs[1] * w, ys[1] * hh])


def _span(side: str | None, frac: float, centred: bool) -> tuple[float, float]:
    if side in ("left", "top"):
        return 0.0, frac
    if side in ("right", "bottom"):
        return 1 - frac, 1.0
    return (0.25, 0.75) if centred else (0.0, 1.0)


def _has_object_words(text: str) -> bool:
    spatial = set(_H) | set(_V) | _C | set(_FRAC)
    return any(t not in spatial and t not in _FILLER for t in _WORD.findall(text.lower()))


def _grounded(size: tuple[int, int], text: str, image: Image.Image | None, grounder: Grounder,
              spatial: list[int] | None) -> list[int] | None:
    if image is None:
        raise GroundingError("a referring expression needs the image itself")
    boxes = [b for b in grounder.locate(image, text) if b[2] > b[0] and b[3] > b[1]]
    if spatial is not None:  # spatial words pick the detection whose centre lies in that region
        inside = [b for b in boxes if spatial[0] <= (b[0] + b[2]) / 2 <= spatial[2]
                  and spatial[1] <= (b[1] + b[3]) / 2 <= spatial[3]]
        boxes = inside
    for b in boxes:
        try:
            return clamp_box(size, b)
        except GroundingError:
            continue
    return None


class GroundingDinoGrounder:
    """GroundingDINO (transformers ``AutoModelForZeroShotObjectDetection``) from a LOCAL checkpoint.

    Set ``tools.grounding_model`` (``DMMS_TOOLS__GROUNDING_MODEL``) to a folder holding e.g.
    ``IDEA-Research/grounding-dino-tiny``; nothing is downloaded (``local_files_only=True``).
    """

    def __init__(self, model_path: str, device: str = "cpu", box_threshold: float = 0.3,
                 text_threshold: float = 0.25) -> None:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self._torch = torch
        self.processor = AutoProcessor.from_pretrained(model_path, local_files_only=True)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(
            model_path, local_files_only=True).to(device).eval()
        self.device, self.box_threshold, self.text_threshold = device, box_threshold, text_threshold
        log.info("GroundingDINO loaded from %s on %s", model_path, device)

    def locate(self, image: Image.Image, phrase: str) -> list[list[float]]:
        # GroundingDINO expects lower-case phrases each ending with a period.
        text = phrase.strip().lower().rstrip(".") + "."
        rgb = image.convert("RGB")
        inputs = self.processor(images=rgb, text=text, return_tensors="pt").to(self.device)
        with self._torch.no_grad():
            outputs = self.model(**inputs)
        result = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.box_threshold,
            text_threshold=self.text_threshold, target_sizes=[(rgb.height, rgb.width)])[0]
        order = result["scores"].argsort(descending=True)
        return [[float(v) for v in result["boxes"][i]] for i in order]


def make_grounder(settings: Any) -> Grounder | None:
    """The grounding service when ``tools.grounding_url`` is set, GroundingDINO in this process when
    ``tools.grounding_model`` is, else ``None`` (boxes and spatial phrases; a referring expression
    then searches the whole image, and the answer says so)."""
    if settings.tools.grounding_url:
        from components.search.grounding_service import HttpGrounder

        log.info("crop search grounds referring expressions through %s", settings.tools.grounding_url)
        return HttpGrounder(settings.tools.grounding_url, timeout_s=settings.tools.grounding_timeout_s)
    path = settings.tools.grounding_model
    if not path:
        log.info("no grounding model configured: crop search takes boxes and spatial phrases only")
        return None
    return GroundingDinoGrounder(path, device=settings.model.device)
