"""The pixel frame the model sees an image in, and boxes moved between it and the original image.

Why: a Qwen2.5-VL processor resizes every image before the model sees it (``smart_resize``: each
side a multiple of 28, the area between ``min_pixels`` and ``max_pixels``), and the model grounds in
absolute pixels of THAT resized image. A box it writes in ``<img_search>[x1, y1, x2, y2]</img_search>``
is therefore in the model's frame, not in the original image's pixels — with the tiny profile's
``max_pixels`` a 256 x 256 picture is seen at 112 x 112, so an uncorrected box would crop the wrong
quarter. The agent states the frame's size in its first user turn (``Image size: W x H pixels.``),
rescales the model's boxes to original pixels before the tool-server crops, and the data-generation
oracle writes its gold boxes (original pixels, from ``world.json``) in the same frame.

The frame comes from the processor the model runs with when the loop has one (what the model sees),
otherwise from ``model.max_pixels`` with Qwen2.5-VL's ``min_pixels`` and 28-pixel factor — the same
values :func:`components.agent.models.load_model` gives the processor and ``vllm serve`` receives
(``--mm-processor-kwargs``).

    frame = Frame.of((256, 256), max_pixels=12544)      # Frame(width=112, height=112, ...)
    frame.to_pixels([0, 0, 56, 56])                     # [0.0, 0.0, 128.0, 128.0]

Tests: ``pytest tests/unit/agent/test_frame.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from components.search.grounding import BOX_TEXT

QWEN_FACTOR = 28  # patch 14 x spatial merge 2
QWEN_MIN_PIXELS = 56 * 56  # Qwen2.5-VL's processor default
SIZE_LINE = re.compile(r"Image size: (\d+) ?x ?(\d+) pixels\.")


def processor_pixels(processor: Any) -> tuple[int, int, int] | None:
    """``(min_pixels, max_pixels, factor)`` of a Qwen2-VL-style processor, or None if it has none."""
    ip = getattr(processor, "image_processor", None)
    size = getattr(ip, "size", None)  # a dict, or transformers' SizeDict
    longest = (size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None))
    if ip is None or not longest:
        return None
    shortest = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
    factor = int(getattr(ip, "patch_size", 14)) * int(getattr(ip, "merge_size", 2))
    return int(shortest or QWEN_MIN_PIXELS), int(longest), factor


@dataclass(frozen=True)
class Frame:
    """An image of ``original`` size (width, height) as the model sees it: ``width`` x ``height``."""

    width: int
    height: int
    original: tuple[int, int]

    @classmethod
    def of(cls, size: tuple[int, int], max_pixels: int, min_pixels: int = QWEN_MIN_PIXELS,
           factor: int = QWEN_FACTOR) -> Frame:
        """The frame ``smart_resize`` gives an image of ``size`` (transformers' own function)."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        w, h = size
        min_pixels = min(min_pixels, max_pixels)
        fh, fw = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        return cls(width=int(fw), height=int(fh), original=(int(w), int(h)))

    @classmethod
    def for_model(cls, size: tuple[int, int], processor: Any, max_pixels: int) -> Frame:
        """The frame of the processor the model runs with, else of ``max_pixels`` (Qwen defaults)."""
        got = processor_pixels(processor) if processor is not None else None
        if got is None:
            return cls.of(size, max_pixels)
        lo, hi, factor = got
        return cls.of(size, hi, lo, factor)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def to_pixels(self, box: list[float]) -> list[float]:
        """A box in this frame -> the same region in original-image pixels."""
        sx, sy = self.original[0] / self.width, self.original[1] / self.height
        return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]

    def from_pixels(self, box: list[float] | tuple[float, ...]) -> list[int]:
        """A box in original-image pixels -> this frame, rounded to whole pixels (what a model writes)."""
        sx, sy = self.width / self.original[0], self.height / self.original[1]
        return [round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)]


def parse_box(region: Any) -> list[float] | None:
    """``region`` as four numbers if it is a box (a list, or text such as ``"[1, 2, 30, 40]"``), else None."""
    if isinstance(region, list | tuple):
        if len(region) != 4:
            return None
        try:
            return [float(v) for v in region]
        except (TypeError, ValueError):
            return None
    if isinstance(region, str):
        m = BOX_TEXT.match(region)  # the tool-server's own reading of a box written as text
        try:
            return [float(v) for v in m.group(1).split(",")] if m else None
        except ValueError:  # "1.2.3": the server refuses it (422); nothing to rescale
            return None
    return None


def unstated(text: str) -> str:
    """``text`` without its ``Image size`` statement (the first user turn as if no frame were known)."""
    return re.sub(r"\n?" + SIZE_LINE.pattern, "", text, count=1)


def stated_size(text: str) -> tuple[int, int] | None:
    """The frame size a prompt states (``Image size: W x H pixels.``), or None."""
    m = SIZE_LINE.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None
