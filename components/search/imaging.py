"""Decode a client's image safely: size in bytes, pixel count (decompression bombs), real image data.

Why its own module: an image is untrusted input. Every failure becomes a :class:`BadRequest` (HTTP
4xx) whose message says what to change — never a 500, never a process eating gigabytes.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from components.search.errors import BadRequest


def decode_b64(image_b64: str, max_bytes: int) -> bytes:
    """Base64 text (plain or a ``data:image/...;base64,`` URL) → bytes; 400 or 413 on bad input."""
    text = image_b64.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) * 3 // 4 > max_bytes + 3:
        raise BadRequest(f"image is larger than {max_bytes} bytes: send a smaller image",
                         code="image_too_large", status=413)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image_b64 is not valid base64: encode the image file bytes with base64",
                         code="bad_base64") from None
    if not data:
        raise BadRequest("image_b64 decodes to no bytes", code="bad_base64")
    if len(data) > max_bytes:
        raise BadRequest(f"image is {len(data)} bytes, over the limit of {max_bytes}: send a smaller image",
                         code="image_too_large", status=413)
    return data


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes → an RGB PIL image, refusing non-images and images over ``max_pixels``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size  # header only: nothing decoded yet
            if width * height > max_pixels:
                raise BadRequest(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}: "
                    "send a smaller image", code="image_too_large", status=413)
            if width < 1 or height < 1:
                raise BadRequest("image has no pixels", code="bad_image")
            img.load()
            return img.convert("RGB")
    except BadRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadRequest(f"image has too many pixels (limit {max_pixels}): send a smaller image",
                         code="image_too_large", status=413) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadRequest(f"image_b64 is not a readable image ({type(exc).__name__}): send PNG, JPEG or WebP",
                         code="bad_image") from None


def to_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
