"""The grounding service: GroundingDINO behind HTTP, so the tool-server (CPU, slim image) can crop by
referring expression (``<img_search>the red car</img_search>``) without torch or a GPU of its own.

    POST /v1/ground {"image_b64": str, "phrase": str} -> {"boxes": [[x1, y1, x2, y2], ...]}   best first
    GET /healthz, GET /readyz; OpenAPI at /openapi.json

Boxes are absolute pixels of the image sent. Serve it with ``dmms tools ground-serve --model DIR``
(a local GroundingDINO checkpoint, e.g. IDEA-Research/grounding-dino-tiny; on the cluster the
``grounding`` Deployment on the GPU pool, manifests/base/grounding); point the tool-server at it with
``DMMS_TOOLS__GROUNDING_URL``. :class:`HttpGrounder` is the tool-server's side: a timeout on every
call, and any failure is a :class:`GroundingUnavailable` the server answers by searching the whole
image (and saying so). Tests: ``pytest tests/integration/search/test_grounding_service.py``.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from components.search.grounding import Grounder

log = logging.getLogger(__name__)


class GroundRequest(BaseModel):
    image_b64: str = Field(description="The image, base64 (PNG or JPEG).")
    phrase: str = Field(min_length=1, max_length=500, description="A referring expression, e.g. 'the red car'.")


class GroundResponse(BaseModel):
    boxes: list[list[float]] = Field(description="Candidate boxes [x1, y1, x2, y2] in pixels, best first.")


class GroundingUnavailable(RuntimeError):
    """The grounding service did not answer usefully; the tool-server falls back to the whole image."""


def create_grounding_app(grounder: Grounder, max_image_bytes: int = 20_000_000) -> FastAPI:
    """The service over ``grounder`` (GroundingDINO in production)."""
    app = FastAPI(title="deepmmsearch grounding", version="1", description=__doc__.split("\n\n")[0])

    @app.post("/v1/ground", response_model=GroundResponse,
              responses={400: {"description": "not an image"}, 413: {"description": "image too large"}})
    def ground(body: GroundRequest) -> Any:
        """Boxes of ``phrase`` in the image, best first (empty: nothing found)."""
        try:
            data = base64.b64decode(body.image_b64, validate=True)
        except (binascii.Error, ValueError):
            return _error(400, "bad_base64", "image_b64 is not valid base64")
        if len(data) > max_image_bytes:
            return _error(413, "image_too_large", f"image is {len(data)} bytes, over {max_image_bytes}")
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except (UnidentifiedImageError, OSError):
            return _error(400, "not_an_image", "image_b64 does not decode to an image")
        return GroundResponse(boxes=[[float(v) for v in b] for b in grounder.locate(image, body.phrase)])

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready", "grounder": type(grounder).__name__}

    return app


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class HttpGrounder:
    """A :class:`~components.search.grounding.Grounder` that asks the grounding service."""

    def __init__(self, url: str, timeout_s: float = 10.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self.client = httpx.Client(timeout=timeout_s)

    def locate(self, image: Image.Image, phrase: str) -> list[list[float]]:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        try:
            resp = self.client.post(f"{self.url}/v1/ground",
                                    json={"image_b64": base64.b64encode(buf.getvalue()).decode(), "phrase": phrase})
        except httpx.HTTPError as exc:
            raise GroundingUnavailable(f"grounding service {self.url} did not answer ({type(exc).__name__})") from None
        if resp.status_code != 200:
            raise GroundingUnavailable(f"grounding service {self.url} answered HTTP {resp.status_code}")
        try:
            return GroundResponse.model_validate(resp.json()).boxes
        except ValueError as exc:
            raise GroundingUnavailable(f"grounding service {self.url} sent no boxes: {exc}") from None
