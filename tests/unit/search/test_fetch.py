"""The page fetcher against a real HTTP server on loopback (uvicorn), and its SSRF guard.

Pages are served from 127.0.0.1, so these tests pass ``allow_private=True``, which lets LOOPBACK
through and nothing else; the guard tests show that everything else (and loopback without the
flag) is refused, including after a redirect.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from components.search.fetch import FetchError, FetchRefused, fetch_page, resolve_checked
from tests.support import serve_in_thread

ARTICLE = """<html><head><title>The Harbor Lighthouse</title></head><body>
<nav>Home | About | Contact</nav>
<article><h1>The Harbor Lighthouse</h1>
<p>The Harbor Lighthouse was built in 1871 on the northern breakwater and stands 31 metres tall.</p>
<p>Its first-order Fresnel lens was replaced in 1962 by an automated rotating beacon.</p>
<p>Visitors can climb its 143 steps every summer weekend, guided by volunteers of the society.</p>
</article><footer>Copyright footer text</footer></body></html>"""
calls: Counter[str] = Counter()


def _site() -> FastAPI:
    app = FastAPI()

    @app.get("/article")
    def article():
        return HTMLResponse(ARTICLE)

    @app.get("/hop")
    def hop():
        return RedirectResponse("/article", status_code=302)

    @app.get("/to")
    def to(target: str):
        return RedirectResponse(target, status_code=301)

    @app.get("/loop")
    def loop():
        return RedirectResponse("/loop", status_code=302)

    @app.get("/json")
    def as_json():
        return JSONResponse({"not": "html"})

    @app.get("/big")
    def big():  # streamed without Content-Length: the reader must stop at the limit
        async def chunks():
            yield b"<html><body>"
            for _ in range(200):
                yield b"<p>" + b"x" * 1000 + b"</p>"
        return StreamingResponse(chunks(), media_type="text/html")

    @app.get("/big-declared")
    def big_declared():
        return Response(b"<html>" + b"y" * 50_000 + b"</html>", media_type="text/html")

    @app.get("/error")
    def error():
        calls["error"] += 1
        return Response("boom", status_code=500)

    @app.get("/busy")
    def busy():
        calls["busy"] += 1
        return Response("restarting", status_code=503, headers={"Retry-After": "0"})

    @app.get("/slow")
    async def slow():
        calls["slow"] += 1
        await asyncio.sleep(2.0)
        return HTMLResponse(ARTICLE)

    return app


@pytest.fixture(scope="module")
def site():
    with serve_in_thread(_site()) as url:
        yield url


async def test_extracts_main_text_after_a_redirect(site):
    page = await fetch_page(site + "/hop", allow_private=True)
    assert page.url == site + "/article"
    assert page.title == "The Harbor Lighthouse"
    assert "built in 1871" in page.text and "143 steps" in page.text
    assert "Home | About" not in page.text  # boilerplate dropped


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://localhost/", "http://10.1.2.3/", "http://192.168.0.1/",
    "http://172.16.5.5/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/",
    "http://[fe80::1]/", "http://224.0.0.1/", "http://0.0.0.0/", "http://100.64.0.1/",
    "http://240.0.0.1/", "http://[::ffff:127.0.0.1]/", "http://[fc00::1]/",
])
async def test_non_public_addresses_are_refused(url):
    with pytest.raises(FetchRefused, match="non-public address"):
        await resolve_checked(url)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/", "gopher://x/",
                                 "javascript:alert(1)", "http:///nohost"])
async def test_other_schemes_and_hostless_urls_are_refused(url):
    with pytest.raises(FetchRefused):
        await fetch_page(url)


async def test_loopback_needs_the_flag_and_the_flag_allows_only_loopback(site):
    with pytest.raises(FetchRefused, match="non-public address 127.0.0.1"):
        await fetch_page(site + "/article")
    with pytest.raises(FetchRefused, match="non-public address 10.0.0.7"):
        await resolve_checked("http://10.0.0.7/", allow_private=True)


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.8/",
                                    "file:///etc/passwd"])
async def test_redirect_targets_are_rechecked(site, target):
    with pytest.raises(FetchRefused):
        await fetch_page(f"{site}/to?target={target}", allow_private=True)


async def test_redirect_loops_are_bounded(site):
    with pytest.raises(FetchRefused, match="more than 3 redirects"):
        await fetch_page(site + "/loop", allow_private=True, max_redirects=3)


async def test_non_html_and_oversized_bodies_are_refused(site):
    with pytest.raises(FetchRefused, match="'application/json' is not HTML"):
        await fetch_page(site + "/json", allow_private=True)
    with pytest.raises(FetchRefused, match="exceeds the 20000-byte limit"):
        await fetch_page(site + "/big", allow_private=True, max_bytes=20_000)
    with pytest.raises(FetchRefused, match="body of 50013 bytes exceeds"):
        await fetch_page(site + "/big-declared", allow_private=True, max_bytes=20_000)


async def test_only_retryable_failures_are_retried(site):
    """The shared policy: a 503 (after its Retry-After) is retried; a 500 and a read timeout are not
    (a bug stays a bug; a slow server may still be working on the first request)."""
    with pytest.raises(FetchError, match=r"HTTP 503 \(after 3 attempts\)"):
        await fetch_page(site + "/busy", allow_private=True, max_retries=2, backoff_s=0.01)
    assert calls["busy"] == 3
    with pytest.raises(FetchError, match=r"HTTP 500"):
        await fetch_page(site + "/error", allow_private=True, max_retries=2, backoff_s=0.01)
    assert calls["error"] == 1
    with pytest.raises(FetchError, match=r"timed out after 0.2s \(not retried\)"):
        await fetch_page(site + "/slow", allow_private=True, timeout_s=0.2, max_retries=1, backoff_s=0.01)
    assert calls["slow"] == 1
