"""Text search benchmark: the tool-server's serving path against the same work done in process.

    python -m bench.search_text [--docs 100000] [--seconds 4] [--workers 1 2]

Generates ``--docs`` synthetic documents (80 tokens from a Zipf vocabulary of 50k words), builds the
index with the real ``build_index``, and measures queries/s and p50/p99 latency of 5-term queries,
top-10, unique queries (no cache hits):
- in process, the work a request does: ``SearchService.text_search`` (tantivy search + snippets +
  page texts + extractive summary + the two cache writes), 1 and 32 concurrent (asyncio tasks; a
  local text search never yields to the event loop, so the 32 run one after another: their
  throughput is the in-process capacity, their latency the service time without queueing);
- over HTTP end to end: ``dmms tools serve`` in its own process(es) (``--workers`` uvicorn workers,
  each run) on loopback, at 1 and 32 concurrent callers, each a closed loop on its own keep-alive
  connection (bench/loopback_http.py: a minimal HTTP/1.1 client, ~0.2 ms of CPU a request, so the
  load generator takes as little as it can of the cores it shares with the server), the same 32
  from httpx for reference (``c32_httpx_client``: ~2 ms a request), and cache-hit latency;
- the raw engine (``TextIndex.search_ids``, and ``search`` with snippets) in threads, and
  rank_bm25's BM25Okapi (what research code uses) on a subset (``--bm25-docs``) scaled to the full
  corpus by the doc ratio (its cost is linear in the corpus size), for reference.
Headline: HTTP queries/s at 32 concurrent (best worker count) ÷ the in-process path at 32 concurrent.
Client and server share the machine's cores (stated in the report).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.report import write_report

log = logging.getLogger("bench.search_text")


def make_corpus(n_docs: int, vocab: int = 50_000, length: int = 80, seed: int = 0) -> tuple[list[str], list[dict]]:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab)]
    ranks = np.arange(1, vocab + 1)
    p = 1.0 / ranks**1.07
    p /= p.sum()
    toks = rng.choice(vocab, size=(n_docs, length), p=p)
    docs = []
    for i in range(n_docs):
        text = " ".join(words[t] for t in toks[i])
        docs.append({"id": f"d{i}", "title": " ".join(words[t] for t in toks[i][:4]), "text": text})
    return words, docs


def make_queries(words: list[str], n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    # terms from the mid-frequency band: what real queries look like (not stop-words, not hapaxes)
    return [" ".join(words[int(t)] for t in rng.integers(50, 5000, size=5)) for _ in range(n)]


def _stats(latencies: list[float], wall: float) -> dict[str, float]:
    lat = sorted(latencies)
    return {"qps": round(len(lat) / wall, 1), "p50_ms": round(1000 * statistics.median(lat), 3),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3), "n": len(lat)}


def run_threads(fn: Callable[[str], object], queries: list[str], concurrency: int, seconds: float) -> dict:
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    counter = iter(range(10**9))

    def worker() -> None:
        while time.perf_counter() < stop:
            q = queries[next(counter) % len(queries)]
            t = time.perf_counter()
            fn(q)
            with lock:
                lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return _stats(lat, time.perf_counter() - start)


async def run_http(url: str, token: str, queries: list[str], concurrency: int, seconds: float,
                   client: str = "loopback") -> dict:
    """``concurrency`` callers in a closed loop, each on its own keep-alive connection, POSTing
    ``/v1/text_search`` (top 10) and reading the whole JSON answer. ``client``: ``loopback``
    (bench/loopback_http.py, ~0.2 ms CPU a request) or ``httpx`` (the project's client, ~2 ms)."""
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    counter = iter(range(10**9))
    headers = {"Authorization": f"Bearer {token}"}

    async def call(post) -> None:  # noqa: ANN001
        while time.perf_counter() < stop:
            q = queries[next(counter) % len(queries)]
            t = time.perf_counter()
            status, body = await post(q)
            if status != 200 or "results" not in body:
                raise RuntimeError(f"text_search answered HTTP {status}: {str(body)[:200]}")
            lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    if client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30, limits=limits) as http:
            async def post(q: str) -> tuple[int, dict]:
                r = await http.post("/v1/text_search", json={"query": q, "top_k": 10})
                return r.status_code, r.json()

            await asyncio.gather(*(call(post) for _ in range(concurrency)))
    else:
        from bench.loopback_http import LoopbackClient

        async def caller() -> None:
            async with LoopbackClient(url, headers=headers) as conn:
                await call(lambda q: conn.post_json("/v1/text_search", {"query": q, "top_k": 10}))

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return _stats(lat, time.perf_counter() - start)


def bench_rank_bm25(docs: list[dict], queries: list[str], n_sub: int, n_queries: int) -> dict:
    from rank_bm25 import BM25Okapi

    sub = docs[:n_sub]
    t = time.perf_counter()
    bm25 = BM25Okapi([(d["title"] + " " + d["text"]).split() for d in sub])
    build_s = time.perf_counter() - t
    lat = []
    start = time.perf_counter()
    for q in queries[:n_queries]:
        t = time.perf_counter()
        scores = bm25.get_scores(q.split())
        np.argpartition(-scores, 10)[:10]
        lat.append(time.perf_counter() - t)
    stats = _stats(lat, time.perf_counter() - start)
    stats["build_s"] = round(build_s, 2)
    stats["docs"] = len(sub)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--bm25-docs", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="uvicorn worker counts to run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from components.common.settings import Settings
    from components.search.index import build_index, load_index

    words, docs = make_corpus(args.docs)
    queries = make_queries(words, 20_000 + 20_000 * len(args.workers))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp, "corpus")
        corpus.mkdir()
        with (corpus / "docs.jsonl").open("w") as fh:
            fh.writelines(json.dumps(d) + "\n" for d in docs)
        t = time.perf_counter()
        settings = Settings(profile="tiny", tools={"token": "bench", "cache_url": f"sqlite:///{Path(tmp, 'c.db')}"})
        build_index(str(corpus), str(Path(tmp, "index")), settings)
        build_s = time.perf_counter() - t
        log.info("index of %d docs built in %.1fs", args.docs, build_s)
        loaded = load_index(str(Path(tmp, "index")), settings)
        index = loaded.text

        raw = {f"c{c}": run_threads(lambda q: index.search_ids(q, 10), queries, c, args.seconds) for c in (1, 32)}
        full = {f"c{c}": run_threads(lambda q: index.search(q, 10), queries, c, args.seconds) for c in (1, 32)}
        log.info("raw %s / with snippets %s", raw, full)
        service = asyncio.run(_service_part(settings, loaded, queries[:20_000], args.seconds))
        log.info("in process (search + snippets + pages + summary + cache): %s", service)
        http = {f"workers_{w}": _http_part(Path(tmp), w, queries[20_000 + 20_000 * i:], args.seconds)
                for i, w in enumerate(args.workers)}
        log.info("over HTTP: %s", http)

    bm25 = bench_rank_bm25(docs, queries, min(args.bm25_docs, args.docs), n_queries=30)
    scale = bm25["docs"] / args.docs
    bm25_qps_full = bm25["qps"] * scale
    best = max(http, key=lambda k: http[k]["uncached"]["c32"]["qps"])
    ours = http[best]["uncached"]["c32"]["qps"]
    write_report(
        "search_text",
        params={"docs": args.docs, "vocab": 50_000, "doc_tokens": 80, "query_terms": 5, "top_k": 10,
                "seconds_per_point": args.seconds, "workers": args.workers},
        metric="queries_per_s_at_32_concurrent", ours=ours, baseline=service["c32"]["qps"],
        baseline_name="the same work in process (SearchService.text_search: search, snippets, pages, "
                      "summary, cache writes), 32 concurrent",
        details={"headline": f"HTTP ({best}) / in process at 32 concurrent", "ratio": round(ours / service["c32"]["qps"], 3),
                 "http_p99_ms_c32": http[best]["uncached"]["c32"]["p99_ms"],
                 "index_build_s": round(build_s, 2), "in_process": service, "http": http,
                 "raw_engine": raw, "engine_with_snippets": full,
                 "http_p50_ms_c32": http[best]["uncached"]["c32"]["p50_ms"],
                 "http_note": "each HTTP request: auth, tantivy search + snippets, page texts, extractive summary "
                              "of the top 10 pages, 2 SQLite cache writes; the server runs as `dmms tools serve` "
                              "processes and the client in this one, all on the same cores; the client: one "
                              "keep-alive HTTP/1.1 connection per concurrent caller (bench/loopback_http.py, "
                              "~0.2 ms CPU a request), closed loop, whole JSON answer read and parsed; "
                              "c32_httpx_client: the same load from httpx (~2 ms CPU a request)",
                 "rank_bm25_subset": bm25, "rank_bm25_qps_scaled_to_full": round(bm25_qps_full, 3)},
    )


async def _service_part(settings, loaded, queries: list[str], seconds: float) -> dict:  # noqa: ANN001
    """``SearchService.text_search`` at 1 and 32 concurrent, unique queries: the in-process path."""
    from components.search.app import create_app

    app = create_app(settings, index=loaded)
    out = {}
    async with app.router.lifespan_context(app):
        service = app.state.service
        for i, c in enumerate((1, 32)):
            qs = queries[i * 10_000:(i + 1) * 10_000]
            lat: list[float] = []
            stop, counter = time.perf_counter() + seconds, iter(range(10**9))

            async def worker(qs=qs, lat=lat, stop=stop, counter=counter) -> None:
                while time.perf_counter() < stop:
                    q = qs[next(counter) % len(qs)]
                    t = time.perf_counter()
                    await service.text_search(q, 10)
                    lat.append(time.perf_counter() - t)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(c)))
            out[f"c{c}"] = _stats(lat, time.perf_counter() - start)
    return out


def _http_part(tmp: Path, workers: int, queries: list[str], seconds: float) -> dict:
    """``dmms tools serve`` with ``workers`` processes; the client at 1 and 32 concurrent, then cache hits."""
    from bench.served import TOKEN, served_tools

    with served_tools(tmp / "index", tmp / f"http{workers}.db", workers) as (url, pid):
        out = {"uncached": {}, "cache_hit": None, "server_rss_mb": _rss_mb(pid)}
        for i, c in enumerate((1, 32)):
            out["uncached"][f"c{c}"] = asyncio.run(run_http(url, TOKEN, queries[i * 6_000:(i + 1) * 6_000], c, seconds))
        # the same load from httpx, for reference: what the project's own client costs on these cores
        out["uncached"]["c32_httpx_client"] = asyncio.run(
            run_http(url, TOKEN, queries[12_000:], 32, seconds, client="httpx"))
        out["cache_hit"] = asyncio.run(run_http(url, TOKEN, queries[:1], 1, seconds / 2))
        return out


def _rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of the server's processes (the supervisor and each worker), MB."""
    def rss(p: int) -> float:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    kids = [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
            for c in (Path(f"/proc/{pid}/task/{t.name}/children").read_text().split())]
    return {"main": round(rss(pid), 1), "workers": [round(rss(k), 1) for k in kids]}


if __name__ == "__main__":
    main()
