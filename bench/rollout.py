"""Rollout benchmark: trajectories/s of the concurrent, batched agent loop vs the sequential loop.

    python -m bench.rollout [--prompts 8] [--generations 4] [--latency-ms 300] [--policy scripted|tiny]

Setup (one machine, same run): a small offline world (``make_world``) indexed with the real
``build_index`` and served by the real tool-server app in process, with
``settings.tools.simulated_latency_ms`` (default 300 ms: realistic web-search latency) added to
every local search. The tool-server runs as ``dmms tools serve`` in its own processes
(``--tools-workers``, default 2), as it is deployed — its own pods, not the rollout's — so the
numbers measure the loop and its batching; ``--in-process-tools`` puts it in this process instead
(tools and loop then share one interpreter), reported as ``tools``. N prompts × G generations = N·G trajectories of the agent loop:
- ``policy=scripted`` (default): a deterministic policy standing for a model (``ScriptedGenerator``,
  tokenised with the tiny model's tokenizer): an image search, 0-2 text searches (by prompt), an answer;
- ``policy=tiny``: the tiny random model through the local generator (mostly invalid turns).
Ours: all trajectories at once (concurrency N·G, generation batched with the batching window
``--window-ms``; the same without a window is reported beside it, with both batch-size
histograms). Baseline: the same loop one
trajectory at a time (concurrency 1), which also gives each trajectory's own duration; the ideal
is N·G / (the longest single trajectory's duration), i.e. only its critical path remains, and the
report gives ours ÷ ideal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

from bench.report import write_report

log = logging.getLogger(__name__)

IMG = "<reason>What is shown?</reason>\n<img_search>[0, 0, {w}, {w}]</img_search>"
TEXT = "<reason>Need facts about it.</reason>\n<text_search>{q}</text_search>"
ANSWER = "<reason>I know it now.</reason>\n<answer>{a}</answer>"


def _policy(req) -> str:
    from components.agent.generators.scripted import turn_index

    question = next(p["text"] for p in req.messages[1]["content"] if p.get("type") == "text")
    u = int(re.search(r"\(variant (\d+)\)", question).group(1))  # unique per trajectory: no cache hits
    n_text = len(question) % 3
    k = turn_index(req)
    if k == 0:
        return IMG.format(w=64 + u)
    if k <= n_text:
        return TEXT.format(q=f"monument history {u} {k}")
    return ANSWER.format(a="unknown")


def _setup(tmp: Path, latency_ms: int):
    from components.common.settings import Settings
    from components.search.index import build_index
    from components.world.make import make_world

    make_world(tmp / "world", n_entities=20, seed=0)
    settings = Settings(profile="tiny", tools={"simulated_latency_ms": latency_ms})
    build_index(str(tmp / "world" / "corpus"), str(tmp / "index"), settings)
    return settings


def _app(settings, tmp: Path, name: str):
    """A fresh tool-server app with its own empty cache (no run sees another's cache)."""
    from components.search.app import create_app

    tools = settings.tools.model_copy(update={"cache_url": f"sqlite:///{tmp / name}.db"})
    return create_app(settings.model_copy(update={"tools": tools}), tmp / "index")


@asynccontextmanager
async def _tools(args, settings, tmp: Path, name: str):
    """A ToolClient of a fresh tool-server with its own empty cache: by default ``dmms tools serve``
    in its own processes (``--tools-workers``), as deployed (tool-server pods apart from the rollout
    pods), so its CPU does not share the loop's process; ``--in-process-tools``: the app in this
    process (``httpx.ASGITransport``), everything on one event loop."""
    from components.search.client import ToolClient, in_process_client

    if args.in_process_tools:
        async with in_process_client(_app(settings, tmp, name)) as client:
            yield client
        return
    from bench.served import TOKEN, served_tools

    env = {"DMMS_TOOLS__SIMULATED_LATENCY_MS": str(args.latency_ms),
           "DMMS_TOOLS__BACKEND_CONCURRENCY": str(settings.tools.backend_concurrency)}
    with served_tools(tmp / "index", tmp / f"{name}.db", args.tools_workers, env) as (url, _pid):
        async with ToolClient(url, TOKEN, timeout_s=60, retries=0) as client:
            yield client


def _samples(tmp: Path, n: int, g: int):
    from components.agent.loop import Sample
    from components.agent.run import read_samples

    base = read_samples(tmp / "world" / "vqa" / "test", limit=n)
    if len(base) < n:
        raise SystemExit(f"the world's test split has only {len(base)} questions: lower --prompts")
    return [Sample(id=f"{s.id}#{j}", question=f"{s.question} (variant {i * g + j})", image=s.image,
                   answers=s.answers) for i, s in enumerate(base) for j in range(g)]


async def _measure(args, tmp: Path) -> dict:
    from components.agent.generators.local import LocalGenerator
    from components.agent.generators.scripted import ScriptedGenerator
    from components.agent.loop import AgentLoop, LoopConfig
    from components.agent.models import load_model_and_processor
    from components.agent.tiny import build_tiny_model

    settings = _setup(tmp, args.latency_ms)
    model, processor = load_model_and_processor(str(build_tiny_model(tmp / "tiny", seed=0)), settings.model)
    gen = (ScriptedGenerator(_policy, processor) if args.policy == "scripted"
           else LocalGenerator(model, processor, seed=0))
    samples = _samples(tmp, args.prompts, args.generations)
    def loop(tools, concurrency, window_ms=args.window_ms):
        return AgentLoop(gen, tools, LoopConfig(concurrency=concurrency, max_new_tokens=args.max_new_tokens,
                                                progress=False, temperature=1.0, batch_window_s=window_ms / 1000))

    async with _tools(args, settings, tmp, "warm") as tools:
        await loop(tools, 1).run(samples[:1])  # warm-up (model, index, processor)
    async with _tools(args, settings, tmp, "sequential") as tools:
        singles = []
        started = time.perf_counter()
        for s in samples:
            t0 = time.perf_counter()
            await loop(tools, 1).run([s])
            singles.append(time.perf_counter() - t0)
        sequential_s = time.perf_counter() - started
    async with _tools(args, settings, tmp, "no-window") as tools:  # batching without a window
        started = time.perf_counter()
        unwindowed = await loop(tools, len(samples), window_ms=0).run(samples)
        unwindowed_s = time.perf_counter() - started
    async with _tools(args, settings, tmp, "concurrent") as tools:
        started = time.perf_counter()
        result = await loop(tools, len(samples)).run(samples)
        concurrent_s = time.perf_counter() - started
    ends: dict[str, int] = {}
    for t in result.trajectories:
        ends[str(t.end_reason)] = ends.get(str(t.end_reason), 0) + 1
    n = len(samples)
    ideal = n / max(singles)
    return {"n": n, "ours": n / concurrent_s, "baseline": n / sequential_s, "ideal": ideal,
            "concurrent_s": concurrent_s, "sequential_s": sequential_s, "longest_single_s": max(singles),
            "mean_single_s": sum(singles) / n, "batch_sizes": result.batch_sizes, "end_reasons": ends,
            "batch_size_histogram": _histogram(result.batch_sizes),
            "no_window": {"trajectories_per_s": round(n / unwindowed_s, 3), "ratio_to_ideal": round(n / unwindowed_s / ideal, 3),
                          "batch_size_histogram": _histogram(unwindowed.batch_sizes)},
            "tool_calls": sum(t.text_searches + t.image_searches + t.crop_searches for t in result.trajectories)}


def _histogram(sizes: list[int]) -> dict[str, int]:
    """Generation calls per batch size (how well tool returns were gathered into batches)."""
    counts: dict[int, int] = {}
    for size in sizes:
        counts[size] = counts.get(size, 0) + 1
    return {str(k): counts[k] for k in sorted(counts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--latency-ms", type=int, default=300, help="settings.tools.simulated_latency_ms")
    parser.add_argument("--policy", choices=["scripted", "tiny"], default="scripted")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--window-ms", type=float, default=5.0, help="the batching window (agent.batch_window_ms)")
    parser.add_argument("--tools-workers", type=int, default=2, help="processes of the tool-server (tools.workers)")
    parser.add_argument("--in-process-tools", action="store_true",
                        help="serve the tools from this process (shares its CPU with the loop) instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        m = asyncio.run(_measure(args, Path(tmp)))
    write_report("rollout", params=vars(args), metric="trajectories_per_s", ours=m["ours"],
                 baseline=m["baseline"], baseline_name="sequential loop (one trajectory at a time)",
                 details={**m, "ratio_to_ideal": round(m["ours"] / m["ideal"], 3),
                          "tools": "in this process" if args.in_process_tools else f"dmms tools serve, {args.tools_workers} workers",
                          "ideal_definition": "N*G / longest single trajectory's duration (its critical path)"})


if __name__ == "__main__":
    main()
