"""Evaluation core: benchmarks × modes → judged samples → metrics, table, plots, HTML report, MLflow.

Why one core: the CLI (``dmms evaluate``), the KFP component and the tests call this function; it
opens ONE MLflow run (``tracked_run(settings, "evaluate")``) that records the model, each
benchmark's content version (tags ``dmms.bench.<name>.version`` and their combination
``dmms.benchmarks_version``, which promotion compares), every metric of :mod:`metrics`, and the
artifacts under ``evaluation/``: ``samples.jsonl`` (verdict and judge per sample), ``table.md``,
``table.csv``, the PNG plots and the self-contained ``report.html``.

    result = evaluate(settings, ModelSpec(name=".dmms/models/tiny"), ["world=.dmms/world/test"],
                      ["direct", "rag"], tools_url="http://127.0.0.1:8080")
    result.metrics["accuracy.avg.rag"], result.run_id
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path

from pydantic import BaseModel
from tqdm import tqdm

from components.agent import judging
from components.agent.judging import Judge
from components.agent.llm_judge import LLMJudge
from components.agent.protocol import PROMPT_VERSION
from components.common.settings import Settings
from components.common.tracking import tracked_run
from components.evaluate import metrics as M
from components.evaluate.benchmarks import Benchmark, iter_benchmarks
from components.evaluate.generate import Generator, ModelSpec, open_generator
from components.evaluate.modes import MODES, run_direct, run_rag
from components.evaluate.plots import write_plots
from components.evaluate.records import EvalSample
from components.evaluate.report import write_html, write_table
from components.search.client import ToolClient

log = logging.getLogger(__name__)
ARTIFACT_DIR = "evaluation"


class EvalError(ValueError):
    """The evaluation cannot run as asked; the message says what to change."""


class EvalResult(BaseModel):
    run_id: str | None
    out_dir: str
    metrics: dict[str, float]
    bench_versions: dict[str, str]
    benchmarks_version: str
    files: dict[str, str]


def benchmarks_version(versions: dict[str, str]) -> str:
    """One fingerprint of a set of benchmark versions (order-independent)."""
    blob = ";".join(f"{k}={v}" for k, v in sorted(versions.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_judge(settings: Settings, out_dir: Path) -> Judge:
    """Evaluation's judge: the same factory as GRPO's reward and datagen's filter (``DMMS_EVALUATE__JUDGE``)."""
    try:
        return judging.make_judge(settings, "evaluate", cache_path=out_dir / "judge_cache.db")
    except judging.JudgeConfigError as exc:
        raise EvalError(str(exc)) from None


def _check_modes(modes: list[str]) -> None:
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise EvalError(f"unknown mode(s) {bad or modes}: use one or more of {', '.join(MODES)}")


async def run_samples(benchmarks: list[Benchmark], modes: list[str], gen: Generator, judge: Judge,
                      tools: ToolClient | None, concurrency: int,
                      prompt_version: str = PROMPT_VERSION) -> list[EvalSample]:
    """Every item of every benchmark in every mode, ``concurrency`` at a time, in a stable order."""
    sem = asyncio.Semaphore(concurrency)
    jobs = [(b, m, item) for b in benchmarks for m in modes for item in b.items]
    bar = tqdm(total=len(jobs), desc="evaluate", unit="sample", disable=None)

    async def one(bench: Benchmark, mode: str, item) -> EvalSample:
        async with sem:
            if mode == "direct":
                sample = await run_direct(bench.name, bench.root, item, gen, judge, prompt_version)
            else:
                sample = await run_rag(bench.name, bench.root, item, gen, judge, tools, prompt_version)
        bar.update(1)
        return sample

    try:
        return list(await asyncio.gather(*(one(*job) for job in jobs)))
    finally:
        bar.close()


def _tool_client(settings: Settings, tools_url: str | None) -> ToolClient:
    return ToolClient.from_settings(settings, url=tools_url)


async def _collect(settings: Settings, spec: ModelSpec, benches: list[Benchmark], modes: list[str],
                   tools_url: str | None, judge: Judge) -> list[EvalSample]:
    baseline_modes = [m for m in modes if m != "agent"]
    agent_gen = gen = None
    tools = _tool_client(settings, tools_url) if ("rag" in modes or "agent" in modes) else None
    try:
        samples: list[EvalSample] = []
        if "agent" in modes:
            from components.evaluate.agent_mode import open_agent_generator, run_agent

            agent_gen = open_agent_generator(spec, settings)
            samples += await run_agent(benches, agent_gen, tools, judge, settings)
        if baseline_modes:
            loaded = (agent_gen.model, agent_gen.processor) if hasattr(agent_gen, "model") else None
            gen = open_generator(spec, settings, loaded)
            samples += await run_samples(benches, baseline_modes, gen, judge, tools, settings.evaluate.concurrency,
                                         settings.agent.prompt_version)
        return samples
    finally:
        for closable in (gen, agent_gen, tools):
            if closable is not None:
                await closable.aclose()
        if isinstance(judge, LLMJudge):
            await judge.aclose()


def training_histories(settings: Settings, training_runs: dict[str, str]) -> dict[str, dict[str, list]]:
    """Per training run label (sft, grpo): its MLflow histories of the metrics the report draws."""
    from components.common.tracking import client

    mlc, out = client(settings), {}
    for label, run_id in training_runs.items():
        if run_id:
            out[label] = {m: [(h.step, h.value) for h in mlc.get_metric_history(run_id, m)]
                          for m in ("loss", "reward", "reward_std")}
    return out


def write_outputs(samples: list[EvalSample], benches: list[Benchmark], modes: list[str],
                  meta: dict, out_dir: Path,
                  histories: dict | None = None) -> tuple[dict[tuple[str, str], M.Cell], dict[str, Path]]:
    """samples.jsonl, table.md/csv, plots and report.html in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = M.summarise(samples)
    names = [b.name for b in benches]
    files = {"samples": out_dir / "samples.jsonl"}
    files["samples"].write_text("".join(s.model_dump_json() + "\n" for s in samples), encoding="utf-8")
    files["table_md"], files["table_csv"] = write_table(cells, names, modes, out_dir)
    plots = write_plots(cells, out_dir / "plots", histories)
    files.update(plots)
    files["report"] = write_html(samples, cells, plots, meta, names, modes, out_dir / "report.html")
    return cells, files


def evaluate(settings: Settings, spec: ModelSpec, benchmark_specs: list[str], modes: list[str],
             tools_url: str | None = None, out_dir: str | Path | None = None,
             training_runs: dict[str, str] | None = None) -> EvalResult:
    """Run the evaluation, log it to MLflow, write the outputs; return where everything is.
    ``training_runs`` ({"sft": run id, "grpo": run id}): the runs that trained this checkpoint; the
    report shows their SFT loss and GRPO reward per step."""
    _check_modes(modes)
    ev = settings.evaluate
    benches = list(iter_benchmarks(benchmark_specs, ev.limit, ev.seed))
    if len({b.name for b in benches}) != len(benches):
        raise EvalError("two benchmarks share a name: give each a name with NAME=FOLDER")
    versions = {b.name: b.version for b in benches}
    combined = benchmarks_version(versions)
    out = Path(out_dir or ev.out_dir)
    judge = make_judge(settings, out)
    tags = {"dmms.model": spec.label, "dmms.model_backend": spec.backend, "dmms.modes": ",".join(modes),
            **judging.judge_tags(judge), "dmms.benchmarks": ",".join(versions),
            "dmms.benchmarks_version": combined,
            **{f"dmms.bench.{k}.version": v for k, v in versions.items()}}
    if "agent" in modes or "rag" in modes:  # the search results are part of "the same benchmark version"
        from components.search.client import served_index_tags

        tags.update(served_index_tags(tools_url or settings.tools.url, settings.tools.client_timeout_s))
    with tracked_run(settings, "evaluate", tags=tags) as run:
        t0 = time.perf_counter()
        samples = asyncio.run(_collect(settings, spec, benches, modes, tools_url, judge))
        wall = time.perf_counter() - t0
        meta = {"model": spec.label, "judge": judge.name, "run_id": run.run_id, "versions": versions}
        histories = training_histories(settings, training_runs or {})
        if training_runs:
            run.set_tags({f"dmms.training_run.{k}": v for k, v in training_runs.items() if v})
        cells, files = write_outputs(samples, benches, modes, meta, out, histories)
        flat = {**M.flat_metrics(cells), **M.split_metrics(samples)}
        flat["samples"] = float(len(samples))
        flat["judge_errors"] = float(sum(s.judge_error for s in samples))
        flat["wall_time_s"] = wall
        run.log_metrics(flat)
        run.log_artifact(out / "samples.jsonl", ARTIFACT_DIR)
        for key in ("table_md", "table_csv", "report"):
            run.log_artifact(files[key], ARTIFACT_DIR)
        run.log_artifact(out / "plots", f"{ARTIFACT_DIR}/plots")
        log.info("evaluated %s: %d samples in %.1fs; %s", spec.label, len(samples), wall,
                 {m: round(a, 2) for m, a in M.mode_averages(cells).items()})
    return EvalResult(run_id=run.run_id, out_dir=str(out), metrics=flat, bench_versions=versions,
                      benchmarks_version=combined, files={k: str(v) for k, v in files.items()})
