"""The ``agent`` evaluation mode: the agent loop (:mod:`components.agent.loop`) over a benchmark.

Why a module of its own: the loop runs every item of a benchmark at once (trajectories
concurrent, generation batched), unlike the one-turn baselines, and its :class:`Trajectory`
records are converted here into :class:`EvalSample` records that metrics and the report share.
Evaluation is greedy (temperature 0) so a re-run gives the same answers.

``latency_s`` of an agent sample is the benchmark's wall time divided by its items (amortised:
trajectories run concurrently, so a per-trajectory wall time would double-count the overlap);
tool latencies are exact per turn.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from components.agent.generators.local import LocalGenerator as AgentLocalGenerator
from components.agent.generators.openai import OpenAIGenerator as AgentOpenAIGenerator
from components.agent.judging import Judge
from components.agent.loop import AgentLoop, Sample
from components.agent.protocol import SEARCH_KINDS, ActionKind
from components.agent.trajectory import Trajectory
from components.common.settings import Settings
from components.evaluate.benchmarks import BenchItem, Benchmark
from components.evaluate.generate import ModelSpec, endpoint_of
from components.evaluate.modes import judge_sample
from components.evaluate.records import EvalSample, TurnRecord
from components.search.client import ToolClient


def open_agent_generator(spec: ModelSpec, settings: Settings) -> Any:
    if spec.backend == "local":
        return AgentLocalGenerator.load(spec.name, settings.model)
    return AgentOpenAIGenerator(endpoint_of(spec, settings), concurrency=settings.evaluate.concurrency)


def _turns(traj: Trajectory) -> list[TurnRecord]:
    out: list[TurnRecord] = []
    for t in traj.turns:
        a = t.action
        kind = a.refused_kind if a.kind == ActionKind.INVALID and a.refused_kind else a.kind
        query = a.query if a.query is not None else (str(a.region) if a.region is not None else None)
        out.append(TurnRecord(role="model", text=t.raw, action=a.kind.value, query=query, error=a.error))
        if a.kind in SEARCH_KINDS:
            out.append(TurnRecord(role="tool", action=kind.value, text=t.tool_result or "", error=t.error,
                                  crop_box=t.crop_box, latency_s=t.tool_latency_s or 0.0))
    return out


def to_sample(traj: Trajectory, bench: Benchmark, image_path: str, latency_s: float,
              item: BenchItem | None = None) -> EvalSample:
    return EvalSample(
        benchmark=bench.name, mode="agent", item_id=traj.sample_id, question=traj.question,
        answers=traj.answers, answer_range=item.answer_range if item else None,
        requires_search=item.requires_search if item else None,
        image_path=image_path, prediction=traj.final_answer or "",
        turns=_turns(traj), model_turns=len(traj.turns), text_searches=traj.text_searches,
        image_searches=traj.image_searches, crop_searches=traj.crop_searches,
        format_errors=traj.invalid_turns, end_reason=traj.end_reason.value if traj.end_reason else "",
        latency_s=latency_s)


async def run_agent(benchmarks: list[Benchmark], generator: Any, tools: ToolClient, judge: Judge,
                    settings: Settings) -> list[EvalSample]:
    """Every item of every benchmark through the agent loop, judged."""
    loop = AgentLoop.from_settings(generator, tools, settings, temperature=0.0,
                                   concurrency=settings.evaluate.concurrency)
    samples: list[EvalSample] = []
    for bench in benchmarks:
        paths = {i.id: str((Path(bench.root) / i.image).resolve()) for i in bench.items}
        inputs = [Sample(id=i.id, question=i.question, answers=i.answers, image=Path(paths[i.id]).read_bytes())
                  for i in bench.items]
        t0 = time.perf_counter()
        result = await loop.run(inputs)
        per_item = (time.perf_counter() - t0) / max(1, len(inputs))
        by_id = {i.id: i for i in bench.items}
        for traj in result.trajectories:
            samples.append(to_sample(traj, bench, paths[traj.sample_id], per_item, by_id.get(traj.sample_id)))
    sem = asyncio.Semaphore(settings.judge.concurrency)

    async def judged(sample: EvalSample) -> EvalSample:
        async with sem:
            return await judge_sample(sample, judge)

    return list(await asyncio.gather(*(judged(s) for s in samples)))
