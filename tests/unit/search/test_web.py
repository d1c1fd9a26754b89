"""Web search backends against a local HTTP server on loopback that speaks each vendor's JSON.

The real SearXNG/Brave/Serper/SerpApi endpoints cannot be reached from the test machines, so one
FastAPI app under uvicorn plays them (same paths, headers and JSON fields as documented in
``components/search/web.py``) and also plays the public image host the Lens backend uploads to.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter

import pytest
from fastapi import FastAPI, Header, HTTPException, Request, Response
from pydantic import SecretStr

from components.common.settings import load_settings
from components.search import web
from tests.support import free_port, serve_in_thread

KEY = "sk-test-0123456789"
hits: Counter[str] = Counter()
stored: dict[str, bytes] = {}


def _fake_apis() -> FastAPI:
    app = FastAPI()

    @app.get("/searxng/search")
    def searxng(q: str, format: str, pageno: int = 1):
        assert format == "json"
        return {"query": q, "results": [
            {"url": f"https://ex.org/{i}", "title": f"{q} result {i}", "content": f"about {q} {i}",
             "engine": "duckduckgo", "score": 3.0 - i} for i in range(4)]}

    @app.get("/brave/res/v1/web/search")
    def brave(q: str, count: int, x_subscription_token: str = Header()):
        if x_subscription_token != KEY:
            raise HTTPException(401, "bad token")
        return {"type": "search", "web": {"results": [
            {"title": f"{q} page {i}", "url": f"https://b.org/{i}", "description": f"desc {i}"}
            for i in range(count + 3)]}}

    @app.post("/serper/search")
    async def serper(request: Request, x_api_key: str = Header()):
        if x_api_key != KEY:
            raise HTTPException(403, "bad key")
        body = await request.json()
        return {"organic": [{"title": f"{body['q']} #{p}", "link": f"https://s.org/{p}",
                             "snippet": f"snip {p}", "position": p} for p in range(1, body["num"] + 1)]}

    @app.put("/img/{name}")
    async def put_image(name: str, request: Request):
        stored[name] = await request.body()
        return Response(status_code=201)

    @app.get("/serpapi/search.json")
    def lens(engine: str, url: str, api_key: str):
        if api_key != KEY or engine != "google_lens":
            return {"error": "Invalid API key."}
        name = url.rsplit("/", 1)[-1]
        data = stored.get(name)  # Lens fetches the image from the public URL
        if data is None:
            return {"error": "could not fetch image"}
        digest = hashlib.sha256(data).hexdigest()[:8]
        return {"search_metadata": {"status": "Success"}, "visual_matches": [
            {"position": p, "title": f"match {p} of {digest}", "link": f"https://l.org/{p}",
             "source": "l.org", "thumbnail": f"https://t.org/{p}.jpg"} for p in range(1, 8)]}

    @app.get("/flaky/{status}/search")
    def flaky(status: int, q: str = ""):
        hits[f"flaky{status}"] += 1
        raise HTTPException(status, "upstream trouble")

    @app.get("/slow/search")
    async def slow(q: str = ""):
        hits["slow"] += 1
        await asyncio.sleep(2.0)
        return {"results": []}

    return app


@pytest.fixture(scope="module")
def api_url():
    with serve_in_thread(_fake_apis()) as url:
        yield url


async def test_searxng_maps_results(api_url):
    backend = web.SearxngBackend(api_url + "/searxng")
    found = await backend.search("eiffel tower", 3)
    await backend.aclose()
    assert [h.url for h in found] == ["https://ex.org/0", "https://ex.org/1", "https://ex.org/2"]
    assert found[0].title == "eiffel tower result 0" and found[0].snippet == "about eiffel tower 0"
    assert found[0].doc_id == found[0].url and found[0].score == 3.0


async def test_brave_sends_key_and_maps_results(api_url):
    backend = web.BraveBackend(SecretStr(KEY), url=api_url + "/brave/res/v1/web/search")
    found = await backend.search("tokyo", 5)
    assert len(found) == 5 and found[1].url == "https://b.org/1" and found[1].snippet == "desc 1"
    assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
    bad = web.BraveBackend(SecretStr("wrong"), url=api_url + "/brave/res/v1/web/search")
    with pytest.raises(web.WebSearchError, match="HTTP 401"):
        await bad.search("tokyo", 5)


async def test_serper_posts_query_and_maps_organic(api_url):
    backend = web.SerperBackend(SecretStr(KEY), url=api_url + "/serper/search")
    found = await backend.search("mount fuji", 4)
    assert [h.url for h in found] == [f"https://s.org/{p}" for p in range(1, 5)]
    assert found[0].title == "mount fuji #1" and found[0].score == 1.0 and found[3].score == 0.25


async def test_lens_publishes_bytes_then_maps_visual_matches(api_url, caplog):
    caplog.set_level(logging.INFO)
    image = b"\xff\xd8fake-jpeg-bytes" * 10
    backend = web.SerpApiLensBackend(SecretStr(KEY), web.HttpPutPublisher(api_url + "/img"),
                                     url=api_url + "/serpapi/search.json")
    found = await backend.search_image(image, 5)
    digest = hashlib.sha256(image).hexdigest()
    assert stored[f"{digest}.jpg"] == image
    assert len(found) == 5 and found[0].title == f"match 1 of {digest[:8]}"
    assert found[0].url == found[0].doc_id == "https://l.org/1" and found[0].image_id == "https://t.org/1.jpg"
    assert "api_key=***" in caplog.text and KEY not in caplog.text  # httpx logs the URL, redacted


async def test_5xx_is_retried_then_raised(api_url):
    backend = web.SearxngBackend(api_url + "/flaky/503", max_retries=2, backoff_s=0.01)
    with pytest.raises(web.WebSearchError, match=r"searxng: HTTP 503 after 3 attempts"):
        await backend.search("x", 3)
    assert hits["flaky503"] == 3
    backend = web.SearxngBackend(api_url + "/flaky/404", max_retries=2, backoff_s=0.01)
    with pytest.raises(web.WebSearchError, match="HTTP 404"):
        await backend.search("x", 3)
    assert hits["flaky404"] == 1  # client errors are not retried


async def test_500_and_read_timeouts_are_not_retried(api_url):
    """A read timeout may already be billed and answered; a 500 is a bug: the shared policy retries neither."""
    backend = web.SearxngBackend(api_url + "/slow", timeout_s=0.2, max_retries=2, backoff_s=0.01)
    with pytest.raises(web.WebSearchError, match=r"timed out after 0.2s \(not retried"):
        await backend.search("x", 3)
    assert hits["slow"] == 1
    backend = web.SearxngBackend(api_url + "/flaky/500", max_retries=2, backoff_s=0.01)
    with pytest.raises(web.WebSearchError, match="HTTP 500"):
        await backend.search("x", 3)
    assert hits["flaky500"] == 1


async def test_unreachable_backend_is_retried_then_raised():
    backend = web.SearxngBackend(f"http://127.0.0.1:{free_port()}", max_retries=1, backoff_s=0.01)
    with pytest.raises(web.WebSearchError, match=r"connection failed \(ConnectError\) after 2 attempts"):
        await backend.search("x", 3)


def test_factories_follow_settings():
    s = load_settings(tools={"text_backend": "serper", "web_api_key": KEY, "web_api_url": "http://h/s",
                             "image_backend": "serpapi_lens", "image_api_key": KEY,
                             "image_publish_url": "http://h/img"})
    text, image = web.make_text_backend(s), web.make_image_backend(s)
    assert isinstance(text, web.SerperBackend) and text.url == "http://h/s"
    assert isinstance(image, web.SerpApiLensBackend) and image.publisher.base_url == "http://h/img"
    assert KEY not in repr(s.tools) and KEY not in str(s.public_dict())
    local = load_settings()
    assert web.make_text_backend(local) is None and web.make_image_backend(local) is None
