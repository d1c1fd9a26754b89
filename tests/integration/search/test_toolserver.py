"""The tool-server under uvicorn on loopback, over a generated corpus (fixture ``toolserver``).

Proves: text and image search find the right document; crops by box and by phrase return the
right box and entity on a composite image; auth, body/image size limits and malformed
JSON/base64/image give 4xx with a message; the cache serves repeats (counted in /metrics).
"""

from __future__ import annotations

import base64
import io
import uuid

import httpx
import pytest
from PIL import Image

from components.search.client import ToolClient
from tests.fixtures.toolserver import composite


def _post(ts, path: str, body=None, *, content=None, headers=None) -> httpx.Response:
    h = dict(ts.headers)
    h.update(headers or {})
    return httpx.post(ts.url + path, json=body, content=content, headers=h, timeout=30)


def _jpeg_b64(img: Image.Image, size: tuple[int, int], quality: int = 70) -> str:
    buf = io.BytesIO()
    img.convert("RGB").resize(size).save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode()


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _image(ts, k: int) -> Image.Image:
    return Image.open(ts.corpus / ts.entities[k].image_path)


def test_health_and_ready(toolserver):
    assert httpx.get(toolserver.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(toolserver.url + "/readyz").json()
    assert ready["docs"] == len(toolserver.entities) and ready["images"] == 6
    assert ready["summariser"] == "extractive"


@pytest.mark.parametrize("k", [3, 17, 30])
def test_text_search_finds_the_document_with_the_fact(toolserver, k):
    e = toolserver.entities[k]
    r = _post(toolserver, "/v1/text_search", {"query": f"In which city is the {e.name} monument?", "top_k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["doc_id"] == e.doc_id
    assert e.city in body["results"][0]["snippet"]
    assert e.city in body["summary"] and str(e.year) in body["summary"]
    assert len(body["results"]) <= 5


def test_image_search_finds_the_page_from_a_resized_jpeg(toolserver):
    for k in range(6):
        e = toolserver.entities[k]
        r = _post(toolserver, "/v1/image_search", {"image_b64": _jpeg_b64(_image(toolserver, k), (150, 170)),
                                                   "top_k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["results"][0]["image_id"] == e.image_id
        assert body["results"][0]["doc_id"] == e.doc_id
        assert body["crop_box"] is None
        assert e.name in body["summary"]


def test_crop_by_box_and_by_phrase_on_a_composite(toolserver):
    comp = composite([_image(toolserver, k) for k in range(4)])  # 512x512, four quadrants
    b64 = _png_b64(comp)
    cases = [("top-left", 0, [0, 0, 256, 256]), ("the right half of the bottom", 3, [256, 256, 512, 512]),
             ([256, 0, 512, 256], 1, [256, 0, 512, 256]), ([0, 256, 256, 600], 2, [0, 256, 256, 512])]
    for region, k, box in cases:
        r = _post(toolserver, "/v1/image_search", {"image_b64": b64, "region": region, "top_k": 3})
        assert r.status_code == 200, (region, r.text)
        body = r.json()
        assert body["crop_box"] == box, region
        assert body["results"][0]["doc_id"] == toolserver.entities[k].doc_id, region


def test_auth_required(toolserver):
    body = {"query": "anything", "top_k": 1}
    r = httpx.post(toolserver.url + "/v1/text_search", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert "Bearer" in r.json()["error"]["message"]
    r = httpx.post(toolserver.url + "/v1/text_search", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "malformed_json"),
        ({"body": {"query": "", "top_k": 5}}, 422, "invalid_request"),
        ({"body": {"query": "x", "top_k": 0}}, 422, "invalid_request"),
        ({"body": {"query": "x", "extra": 1}}, 422, "invalid_request"),
    ],
)
def test_bad_text_requests_are_4xx(toolserver, kwargs, status, code):
    r = _post(toolserver, "/v1/text_search", kwargs.get("body"), content=kwargs.get("content"),
              headers=kwargs.get("headers"))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]


def _bomb_png() -> str:
    """A valid PNG of 8000x8000 pixels that compresses to a few hundred KB."""
    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"image_b64": "!!!not base64!!!"}, 400, "bad_base64"),
        ({"image_b64": base64.b64encode(b"hello, not an image").decode()}, 400, "bad_image"),
        ({"image_b64": "PLACEHOLDER_IMG", "region": [10, 10, 10, 50]}, 422, "bad_region"),
        ({"image_b64": "PLACEHOLDER_IMG", "region": [900, 900, 1000, 1000]}, 422, "bad_region"),
        ({"image_b64": "PLACEHOLDER_IMG", "region": [1, 2, 3]}, 422, "invalid_request"),
    ],
)
def test_bad_image_requests_are_4xx(toolserver, body, status, code):
    if body["image_b64"] == "PLACEHOLDER_IMG":
        body = {**body, "image_b64": _png_b64(_image(toolserver, 0))}
    r = _post(toolserver, "/v1/image_search", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and len(err["message"]) > 10


def test_too_many_pixels_is_413(toolserver, monkeypatch):
    r = _post(toolserver, "/v1/image_search", {"image_b64": _bomb_png()})
    # 64M pixels > the 40M default limit: refused from the header, before decoding
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "image_too_large"
    assert "pixels" in r.json()["error"]["message"]


def test_body_too_large_is_413(toolserver):
    big = b'{"query": "' + b"a" * (17 * 1024 * 1024) + b'"}'
    r = _post(toolserver, "/v1/text_search", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"
    # and the server keeps serving
    assert _post(toolserver, "/v1/text_search", {"query": "monument"}).status_code == 200


def test_unknown_route_is_json_404(toolserver):
    r = httpx.get(toolserver.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_second_identical_request_is_served_from_cache(toolserver):
    query = f"monument {uuid.uuid4().hex}"
    hits0 = toolserver.metric("dmms_cache_hits_total", layer="text")
    calls0 = toolserver.metric("dmms_backend_calls_total", backend="text_local")
    first = _post(toolserver, "/v1/text_search", {"query": query}).json()
    second = _post(toolserver, "/v1/text_search", {"query": query}).json()
    assert first["cached"] is False and second["cached"] is True
    assert second["results"] == first["results"] and second["summary"] == first["summary"]
    assert toolserver.metric("dmms_cache_hits_total", layer="text") == hits0 + 1
    assert toolserver.metric("dmms_backend_calls_total", backend="text_local") == calls0 + 1


def test_image_cache_hit(toolserver):
    b64 = _jpeg_b64(_image(toolserver, 4), (123, 99), quality=55)
    first = _post(toolserver, "/v1/image_search", {"image_b64": b64, "region": "center"}).json()
    second = _post(toolserver, "/v1/image_search", {"image_b64": b64, "region": "center"}).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["crop_box"] == first["crop_box"]
    assert toolserver.metric("dmms_cache_hits_total", layer="image") >= 1


def test_metrics_count_requests_per_route(toolserver):
    before = toolserver.metric("dmms_requests_total", route="/v1/text_search", status="200")
    _post(toolserver, "/v1/text_search", {"query": "city"})
    assert toolserver.metric("dmms_requests_total", route="/v1/text_search", status="200") == before + 1


async def test_client_against_the_server(toolserver):
    e = toolserver.entities[5]
    async with ToolClient(toolserver.url, toolserver.token, timeout_s=10, retries=1) as client:
        resp = await client.text_search(f"{e.name} architect", top_k=2)
        assert resp.results[0].doc_id == e.doc_id
        img = await client.image_search(_image(toolserver, 5), region=None, top_k=1)
        assert img.results[0].doc_id == e.doc_id
        none, err = await client.safe_image_search(b"garbage", region=None)
        assert none is None and "not a readable image" in err
    async with ToolClient(toolserver.url, "wrong", timeout_s=10, retries=3) as client:
        none, err = await client.safe_text_search("x")
        assert none is None and "401" in err
