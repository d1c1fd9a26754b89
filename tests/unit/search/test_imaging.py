"""Untrusted image input: base64, size and pixel limits, non-images — all clear 4xx errors."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from components.search.errors import BadRequest
from components.search.imaging import decode_b64, open_image


def _png(size=(20, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def _noisy_png() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((128, 128), 64).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_plain_and_data_url():
    raw = _png()
    assert decode_b64(base64.b64encode(raw).decode(), 10_000) == raw
    assert decode_b64("data:image/png;base64," + base64.b64encode(raw).decode(), 10_000) == raw


@pytest.mark.parametrize(("text", "code", "status"), [
    ("@@@@", "bad_base64", 400), ("", "bad_base64", 400),
    (base64.b64encode(b"x" * 5000).decode(), "image_too_large", 413),
])
def test_decode_errors(text, code, status):
    with pytest.raises(BadRequest) as err:
        decode_b64(text, 1000)
    assert (err.value.code, err.value.status) == (code, status)


def test_open_image_limits():
    assert open_image(_png(), 1000).size == (20, 10)
    with pytest.raises(BadRequest, match="200 pixels, over the limit of 100") as err:
        open_image(_png(), 100)
    assert err.value.status == 413
    with pytest.raises(BadRequest, match="not a readable image"):
        open_image(b"GIF89a garbage", 1000)
    with pytest.raises(BadRequest, match="not a readable image"):
        open_image(_noisy_png()[:2000], 100_000)  # truncated PNG
