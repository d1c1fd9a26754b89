"""Text search benchmark: tantivy BM25 (our local backend) vs rank_bm25 (what research code uses).

    python -m bench.search_text [--docs 100000] [--seconds 4]

Generates ``--docs`` synthetic documents (80 tokens from a Zipf vocabulary of 50k words), builds the
tantivy index, and measures queries/s and p50/p99 latency of 5-term queries, top-10:
- raw engine in-process (``TextIndex.search_ids``; and ``TextIndex.search`` with snippets), at
  concurrency 1 and 32 (threads: tantivy releases the GIL);
- over HTTP end to end (the real app under uvicorn on loopback, httpx client, unique queries so no
  cache hits) at concurrency 1 and 32, and cache-hit latency (the same query repeated);
- rank_bm25's BM25Okapi in the same run. It scores every document per query in Python, so it runs
  on a subset (``--bm25-docs``, default 20k) and its rate is scaled to the full corpus by the doc
  ratio (its cost is linear in the corpus size) — stated in the report's details.
Headline: raw in-process QPS (concurrency 1) vs rank_bm25 QPS, both at ``--docs`` documents.
"""

from __future__ import annotations

import argparse
import asyncio
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


async def run_http(url: str, token: str, queries: list[str], concurrency: int, seconds: float) -> dict:
    import httpx

    lat: list[float] = []
    stop = time.perf_counter() + seconds
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30,
                                 limits=limits) as client:
        async def worker() -> None:
            while time.perf_counter() < stop:
                q = queries[next(counter) % len(queries)]
                t = time.perf_counter()
                r = await client.post("/v1/text_search", json={"query": q, "top_k": 10})
                r.raise_for_status()
                lat.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
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
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from components.common.settings import Settings
    from components.search.app import create_app
    from components.search.index import LoadedIndex
    from components.search.text_index import TextIndex

    words, docs = make_corpus(args.docs)
    queries = make_queries(words, 20_000)
    t = time.perf_counter()
    index = TextIndex.from_docs(docs)
    build_s = time.perf_counter() - t
    log.info("tantivy index of %d docs built in %.1fs", args.docs, build_s)

    raw = {f"c{c}": run_threads(lambda q: index.search_ids(q, 10), queries, c, args.seconds) for c in (1, 32)}
    full = {f"c{c}": run_threads(lambda q: index.search(q, 10), queries, c, args.seconds) for c in (1, 32)}
    log.info("raw %s / with snippets %s", raw, full)

    bm25 = bench_rank_bm25(docs, queries, min(args.bm25_docs, args.docs), n_queries=30)
    scale = bm25["docs"] / args.docs
    bm25_qps_full = bm25["qps"] * scale
    log.info("rank_bm25 on %d docs: %s -> %.2f qps scaled to %d docs", bm25["docs"], bm25, bm25_qps_full, args.docs)

    http = asyncio.run(_http_part(create_app, Settings, LoadedIndex, index, queries, args.seconds))
    write_report(
        "search_text",
        params={"docs": args.docs, "vocab": 50_000, "doc_tokens": 80, "query_terms": 5, "top_k": 10,
                "seconds_per_point": args.seconds},
        metric="queries_per_s", ours=raw["c1"]["qps"], baseline=bm25_qps_full,
        baseline_name=f"rank_bm25 BM25Okapi (measured on {bm25['docs']} docs, scaled x{scale:.2f} to {args.docs})",
        details={"tantivy_build_s": round(build_s, 2), "raw_engine": raw, "engine_with_snippets": full,
                 "http_end_to_end": http["uncached"], "http_cache_hit": http["cache_hit"],
                 "http_note": "each HTTP request: auth, tantivy search + snippets, extractive summary of "
                              "the top 10 pages, 2 SQLite cache writes; client and server share the 2 cores",
                 "rank_bm25_subset": bm25, "rank_bm25_qps_scaled_to_full": round(bm25_qps_full, 3)},
    )


async def _http_part(create_app, Settings, LoadedIndex, index, queries, seconds) -> dict:  # noqa: ANN001
    import socket

    import uvicorn

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(profile="tiny", tools={"token": "bench", "cache_url": f"sqlite:///{Path(tmp, 'c.db')}"})
        app = create_app(settings, index=LoadedIndex(text=index, image=None))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        try:
            # unique queries per point: every request misses the cache
            out = {"uncached": {}, "cache_hit": None}
            for i, c in enumerate((1, 32)):
                qs = queries[i * 10_000:(i + 1) * 10_000]
                out["uncached"][f"c{c}"] = await run_http(url, "bench", qs, c, seconds)
            out["cache_hit"] = await run_http(url, "bench", queries[:1], 1, seconds / 2)
            return out
        finally:
            server.should_exit = True
            thread.join(timeout=10)


if __name__ == "__main__":
    main()
