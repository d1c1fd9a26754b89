"""Upstreams that fail, caches on disk and Redis, single-flight, and the ``dmms`` CLI — all against the
tool-server under uvicorn on loopback.

The web search API and the summariser LLM cannot run here: each is replaced by a local HTTP server
on loopback that speaks the same JSON (a SearXNG stand-in defined below; the OpenAI-compatible
``openai_server`` fixture), scripted to answer, fail with 500, or hang.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from tests.fixtures.openai_server import Reply
from tests.fixtures.toolserver import TOKEN, ToolServer, start_toolserver, tool_settings
from tests.support import free_port, wait_http, wait_port

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


class SearxngStandIn:
    """A loopback server speaking SearXNG's ``/search?format=json``; ``mode`` is ok, error or hang."""

    def __init__(self) -> None:
        self.mode, self.calls = "ok", 0
        app = FastAPI()

        @app.get("/search")
        async def search(q: str, format: str = "json"):
            self.calls += 1
            if self.mode == "error":
                return JSONResponse({"error": "boom"}, status_code=500)
            if self.mode == "hang":
                await asyncio.sleep(30)
            return {"results": [{"url": f"http://127.0.0.1:9/page{i}", "title": f"Result {i} for {q}",
                                 "content": f"Snippet {i}: {q} is described here."} for i in range(3)]}

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> SearxngStandIn:
        self.thread.start()
        wait_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.server.force_exit = True
        self.thread.join(timeout=10)


def _ts(url: str, corpus) -> ToolServer:
    corpus_dir, index, entities = corpus
    return ToolServer(url=url, token=TOKEN, corpus=corpus_dir, index=index, entities=entities)


def _search(url: str, query: str) -> httpx.Response:
    return httpx.post(url + "/v1/text_search", json={"query": query, "top_k": 3}, headers=HEADERS, timeout=30)


@pytest.fixture(scope="module")
def web_toolserver(toolserver_corpus, tmp_path_factory):
    with SearxngStandIn() as web:
        settings = tool_settings(tmp_path_factory.mktemp("web"), text_backend="searxng",
                                 searxng_url=f"http://127.0.0.1:{web.port}", web_max_retries=1,
                                 web_timeout_s=10.0, deadline_s=1.5)
        with start_toolserver(settings, toolserver_corpus[1]) as (url, _app):
            yield web, _ts(url, toolserver_corpus)


def test_web_backend_results_and_failures(web_toolserver):
    web, ts = web_toolserver
    web.mode = "ok"
    ok = _search(ts.url, "zebra crossing")
    assert ok.status_code == 200, ok.text
    assert [r["title"] for r in ok.json()["results"]][0] == "Result 0 for zebra crossing"
    assert "zebra crossing is described here" in ok.json()["summary"]  # snippets: pages are refused (SSRF)

    web.mode = "error"
    bad = _search(ts.url, f"q {uuid.uuid4().hex}")
    assert bad.status_code == 502, bad.text
    assert bad.json()["error"]["code"] == "upstream_error" and "HTTP 500" in bad.json()["error"]["message"]

    web.mode = "hang"
    slow = _search(ts.url, f"q {uuid.uuid4().hex}")
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "upstream_timeout"
    assert ts.metric("dmms_backend_errors_total", backend="text_searxng", kind="timeout") >= 1

    web.mode = "ok"  # the server keeps serving
    assert _search(ts.url, f"q {uuid.uuid4().hex}").status_code == 200
    assert httpx.get(ts.url + "/healthz").status_code == 200


@pytest.fixture(scope="module")
def llm_toolserver(toolserver_corpus, tmp_path_factory, _openai_server_session):
    settings = tool_settings(
        tmp_path_factory.mktemp("llm"), deadline_s=1.5,
        summariser={"base_url": _openai_server_session.base_url, "model": "summ", "max_retries": 1,
                    "timeout_s": 10.0})
    with start_toolserver(settings, toolserver_corpus[1]) as (url, _app):
        yield _ts(url, toolserver_corpus)


def test_llm_summariser_answers_fails_and_recovers(llm_toolserver, openai_server):
    ts = llm_toolserver
    e = ts.entities[8]
    openai_server.responder = lambda body: "SUMMARY from the model."
    ok = _search(ts.url, f"{e.name} city")
    assert ok.status_code == 200 and ok.json()["summary"] == "SUMMARY from the model."
    prompt = openai_server.requests[-1]["body"]["messages"][0]["content"]
    assert f"{e.name} city" in prompt and e.city in prompt and "10 to 12 sentences" in prompt

    openai_server.replies.extend([Reply(status=503), Reply(status=503)])  # retried once (max_retries=1)
    bad = _search(ts.url, f"{e.name} year")
    assert bad.status_code == 502 and bad.json()["error"]["code"] == "summariser_error"

    openai_server.replies.append(Reply(text="late", delay_s=5))
    slow = _search(ts.url, f"{e.name} architect")
    assert slow.status_code == 504 and "summariser" in slow.json()["error"]["message"]

    again = _search(ts.url, f"{e.name} year")  # results were cached; the summary is computed now
    assert again.status_code == 200 and again.json()["summary"] == "SUMMARY from the model."
    assert ts.metric("dmms_cache_hits_total", layer="text") >= 1


@pytest.fixture(scope="module")
def redis_toolserver(toolserver_corpus, tmp_path_factory):
    redis_url = os.environ.get("DMMS_TEST_REDIS_URL")
    if not redis_url:
        pytest.skip("DMMS_TEST_REDIS_URL not set")
    prefix = f"dmms-test-{uuid.uuid4().hex}:"
    settings = tool_settings(tmp_path_factory.mktemp("redis"), cache_url=redis_url, cache_prefix=prefix)
    with start_toolserver(settings, toolserver_corpus[1]) as (url, _app):
        yield _ts(url, toolserver_corpus), redis_url, prefix
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


def test_redis_cache_serves_repeats(redis_toolserver):
    ts, redis_url, prefix = redis_toolserver
    import redis

    query = f"{ts.entities[2].name} monument"
    first, second = _search(ts.url, query).json(), _search(ts.url, query).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["results"] == first["results"]
    assert ts.metric("dmms_cache_hits_total", layer="text") == 1
    assert ts.metric("dmms_cache_hits_total", layer="summary") == 1
    keys = list(redis.Redis.from_url(redis_url, socket_timeout=5).scan_iter(match=prefix + "text:*"))
    assert len(keys) == 1


@pytest.fixture(scope="module")
def slow_toolserver(toolserver_corpus, tmp_path_factory):
    settings = tool_settings(tmp_path_factory.mktemp("slow"), simulated_latency_ms=500)
    with start_toolserver(settings, toolserver_corpus[1]) as (url, _app):
        yield _ts(url, toolserver_corpus)


async def test_concurrent_identical_requests_are_computed_once(slow_toolserver):
    ts = slow_toolserver
    before = ts.metric("dmms_backend_calls_total", backend="text_local")
    query = f"{ts.entities[4].name} city {uuid.uuid4().hex}"
    async with httpx.AsyncClient(headers=HEADERS, timeout=30) as client:
        answers = await asyncio.gather(*(client.post(ts.url + "/v1/text_search", json={"query": query})
                                         for _ in range(8)))
    assert all(a.status_code == 200 for a in answers)
    assert len({str(a.json()["results"]) for a in answers}) == 1
    assert ts.metric("dmms_backend_calls_total", backend="text_local") == before + 1
    shared = ts.metric("dmms_singleflight_shared_total", layer="text")
    hits = ts.metric("dmms_cache_hits_total", layer="text")
    assert shared + hits == 7


def _cli(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "components.cli", *args], env={**os.environ, **(env or {})},
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_cli_builds_and_serves(toolserver_corpus, tmp_path):
    corpus, _index, entities = toolserver_corpus
    bad = _cli("index", "build", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    _out, err = bad.communicate(timeout=120)
    assert bad.returncode == 2 and "not a folder" in err and not (tmp_path / "x").exists()

    build = _cli("index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "idx"))
    out, err = build.communicate(timeout=120)
    assert build.returncode == 0, err
    assert '"docs": 36' in out and (tmp_path / "idx" / "current.json").is_file()  # the alias of the new version

    port = free_port()
    env = {"DMMS_TOOLS__CACHE_URL": f"sqlite:///{tmp_path / 'c.db'}", "DMMS_TOOLS__TOKEN": TOKEN}
    proc = _cli("tools", "serve", "--index", str(tmp_path / "idx"), "--port", str(port), env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout_s=120, proc=proc)
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{port}/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        r = _search(f"http://127.0.0.1:{port}", f"{entities[1].name} city")
        assert r.status_code == 200 and r.json()["results"][0]["doc_id"] == entities[1].doc_id
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_several_workers_serve_one_port_and_metrics_add_up(toolserver_corpus, tmp_path):
    """``DMMS_TOOLS__WORKERS=2``: two uvicorn worker processes behind one port, each following the
    index alias, sharing the SQLite cache; /metrics sums the requests of both (prometheus_client's
    multi-process mode), whichever worker answers the scrape."""
    _corpus, index, entities = toolserver_corpus
    port = free_port()
    env = {"DMMS_TOOLS__CACHE_URL": f"sqlite:///{tmp_path / 'c.db'}", "DMMS_TOOLS__TOKEN": TOKEN,
           "DMMS_TOOLS__WORKERS": "2", "DMMS_TOOLS__INDEX_POLL_S": "30",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    (tmp_path / "metrics").mkdir()
    proc = _cli("tools", "serve", "--index", str(index), "--port", str(port), env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", timeout_s=120, proc=proc)
        deadline = time.monotonic() + 60
        while httpx.get(url + "/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # both workers ready (readyz answered by one of them)
        for i in range(12):
            e = entities[i % len(entities)]
            r = _search(url, f"{e.name} city {i}")
            assert r.status_code == 200 and r.json()["results"][0]["doc_id"] == e.doc_id
        text = httpx.get(url + "/metrics", timeout=10).text
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("dmms_requests_total{") and 'route="/v1/text_search"' in line)
        assert total == 12
        pids = {f.name.split("_")[-1] for f in (tmp_path / "metrics").glob("*.db")}
        assert len(pids) >= 2  # two processes wrote counts
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_workers_need_the_alias_followed():
    from components.common.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="DMMS_TOOLS__WORKERS=4 needs DMMS_TOOLS__INDEX_POLL_S > 0"):
        load_settings(tools={"workers": 4})


def test_a_hanging_upstream_gets_our_504_and_the_client_does_not_retry_it(web_toolserver):
    """The tool-server answers 504 when its upstream deadline passes (deadline_s=1.5 here,
    below the client's 10 s timeout); the client then stops: asking again would spend the same
    deadline again. One client call = one request at the server."""
    from components.search.client import ToolClient, ToolError

    web, ts = web_toolserver
    web.mode = "hang"
    before = ts.metric("dmms_requests_total", route="/v1/text_search", status="504")

    async def call():
        async with ToolClient(ts.url, TOKEN, timeout_s=10, retries=3, backoff_s=0.01) as client:
            return await client.text_search(f"q {uuid.uuid4().hex}")

    with pytest.raises(ToolError) as exc:
        asyncio.run(call())
    web.mode = "ok"
    assert exc.value.status == 504 and exc.value.code == "upstream_timeout"
    assert "1.5s deadline" in str(exc.value) and "text_searxng" in str(exc.value)  # says what it waited for
    assert ts.metric("dmms_requests_total", route="/v1/text_search", status="504") == before + 1
