"""The datagen step: seed VQA -> teacher through the agent loop -> filters -> taxonomy + balance ->
DeepMMSearchVQA, a versioned dataset in the object store, tracked in MLflow.

Why: this is the paper's data pipeline (docs/design.md §3) as one pure, typed core that the CLI
(``dmms datagen``) and the KFP component call. Every failure before publishing — a corrupt seed
file, an unreachable teacher or tool-server, nothing left after the filters — raises
:class:`DatagenError` (or :class:`VQAError`) with what to change, and publishes nothing: the
dataset version is written by ``publish_dataset`` with its manifest last, only at the end.

Nothing paid for is lost: every trajectory is journaled as it finishes and every teacher
completion as it arrives (:mod:`components.datagen.journal`, ``<out>.journal/`` or
``DMMS_DATAGEN__JOURNAL_DIR``), so a run killed halfway and started again with the same arguments
skips the finished samples, replays the in-flight ones from the journal, makes no teacher call
twice and publishes the same content-addressed dataset. Judge verdicts are cached there too; a
failed verdict is counted (MLflow ``judge_errors``), never fatal.

    result = run_datagen(load_settings(), Path("world/vqa/train"), "oracle", n=200, out=Path("out/dg"))
    result.dataset_uri   # datasets/deepmmsearchvqa/<version> in the object store

``out`` gets the run's local record: ``trajectories.jsonl`` (every trajectory, with its verdict),
``stats.json`` (counts after each filter, balance, tool-use mix, turns) and ``turns.png``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from components.agent.judging import JudgeConfigError, judge_tags, make_judge
from components.agent.llm_judge import LLMJudge
from components.agent.loop import AgentLoop, Sample
from components.agent.protocol import EndReason, Limits
from components.agent.sft_data import publish_dataset, rows_from_trajectories
from components.agent.trajectory import Trajectory, sha256_of
from components.agent.vqa import VQAItem, read_vqa
from components.common.atomic import staged_dir
from components.common.settings import Settings, env_name
from components.common.storage import open_store
from components.common.tracking import tracked_run
from components.datagen.balance import Candidate, balance
from components.datagen.filters import apply_filters
from components.datagen.journal import Journal, JournaledGenerator, JournalError
from components.datagen.teachers import TeacherError, assign_categories, make_teacher

log = logging.getLogger(__name__)


class DatagenError(ValueError):
    """Datagen cannot produce a dataset; the message says why and what to change."""


@dataclass
class DatagenResult:
    dataset_uri: str
    version: str
    rows: int
    counts: dict[str, int]  # generated, format, turns, answer, correct, selected
    balance: dict[str, Any]
    tool_mix: dict[str, int]
    turns: dict[int, int]
    categories: dict[str, int]
    run_id: str | None
    out: str
    extra: dict[str, Any] = field(default_factory=dict)


def _seed_items(settings: Settings, seed_vqa: Path) -> list[VQAItem]:
    items = read_vqa(Path(seed_vqa))
    if not items:
        raise DatagenError(f"{seed_vqa} holds no questions: give a VQA set with at least one item")
    limit = settings.datagen.max_seed_items
    if limit is not None and len(items) > limit:
        items = sorted(random.Random(settings.datagen.seed).sample(items, limit), key=lambda i: i.id)
    return items


async def _check_tools(settings: Settings) -> None:
    url = settings.tools.url.rstrip("/") + "/readyz"
    try:
        async with httpx.AsyncClient(timeout=min(10.0, settings.tools.client_timeout_s)) as client:
            resp = await client.get(url)
    except httpx.HTTPError as exc:
        raise DatagenError(f"tool-server at {settings.tools.url} does not answer ({type(exc).__name__}): "
                           f"start it (dmms tools serve) or set {env_name('tools', 'url')}") from None
    if resp.status_code != 200:
        raise DatagenError(f"tool-server at {settings.tools.url} is not ready (HTTP {resp.status_code}: "
                           f"{resp.text[:200]})")


def _samples(items: list[VQAItem], root: Path) -> list[Sample]:
    return [Sample(id=i.id, question=i.question, image=(root / i.image).read_bytes(), answers=list(i.answers))
            for i in items]


def tool_mix(trajs: list[Trajectory]) -> dict[str, int]:
    """How the trajectories used the tools: searches by kind, and trajectories by pattern."""
    mix = Counter()
    for t in trajs:
        mix["text_searches"] += t.text_searches
        mix["image_searches"] += t.image_searches
        mix["crop_searches"] += t.crop_searches
        img = t.image_searches + t.crop_searches > 0
        pattern = ("image_and_text" if img and t.text_searches else "image_only" if img
                   else "text_only" if t.text_searches else "no_search")
        mix[f"pattern/{pattern}"] += 1
    return dict(sorted(mix.items()))


def turn_histogram_png(hists: dict[str, dict[int, int]], path: Path, max_turns: int) -> Path:
    """A bar chart of model turns per trajectory, one series per stage (generated, dataset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = list(range(1, max_turns + 1))
    width = 0.8 / max(1, len(hists))
    for k, (label, hist) in enumerate(hists.items()):
        ax.bar([x + k * width for x in xs], [hist.get(x, 0) for x in xs], width=width, label=label)
    ax.set_xlabel("model turns per trajectory")
    ax.set_ylabel("trajectories")
    ax.set_title("DeepMMSearchVQA: turns")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write_record(out: Path, trajs: list[Trajectory], stats: dict[str, Any], max_turns: int,
                  hists: dict[str, dict[int, int]]) -> None:
    """Write trajectories.jsonl, stats.json and turns.png to ``out`` (built aside, then renamed)."""
    with staged_dir(out) as tmp:
        (tmp / "trajectories.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in trajs),
                                                encoding="utf-8")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1, default=str), encoding="utf-8")
        turn_histogram_png(hists, tmp / "turns.png", max_turns)


def run_datagen(settings: Settings, seed_vqa: Path, teacher: str, n: int, out: Path) -> DatagenResult:
    """Run datagen end to end (see module docstring); blocking wrapper of :func:`arun_datagen`."""
    return asyncio.run(arun_datagen(settings, seed_vqa, teacher, n, out))


def journal_dir(settings: Settings, out: Path) -> Path:
    return Path(settings.datagen.journal_dir) if settings.datagen.journal_dir else Path(f"{out}.journal")


def _fingerprint(settings: Settings, seed_vqa: Path, teacher: str, items: list[VQAItem]) -> dict[str, Any]:
    """What must not change between a run and its restart (else the journal is refused)."""
    ids = hashlib.sha256("\n".join(i.id for i in items).encode()).hexdigest()[:16]
    return {"seed_vqa": str(seed_vqa.resolve()), "teacher": teacher, "items": ids,
            "teacher_model": settings.teacher.model if teacher == "llm" else "",
            "prompt_version": settings.agent.prompt_version,
            "limits": Limits.from_settings(settings.agent).model_dump(mode="json")}


async def arun_datagen(settings: Settings, seed_vqa: Path, teacher: str, n: int, out: Path) -> DatagenResult:
    if n < 1:
        raise DatagenError(f"--n must be at least 1, got {n}")
    if teacher == "oracle" and settings.profile != "tiny" and not settings.datagen.allow_synthetic:
        raise DatagenError(f"the oracle teacher reads the answers from the offline world's metadata: its data is "
                           f"synthetic. Outside the tiny profile (profile is {settings.profile!r}) use the llm "
                           f"teacher (DMMS_TEACHER__BASE_URL) on real seed data, or set "
                           f"{env_name('datagen', 'allow_synthetic')}=true (dmms run/submit --allow-synthetic)")
    seed_vqa, out = Path(seed_vqa), Path(out)
    items = _seed_items(settings, seed_vqa)
    root = (seed_vqa.parent if seed_vqa.suffix == ".jsonl" else seed_vqa)
    try:
        journal = Journal.open(journal_dir(settings, out), _fingerprint(settings, seed_vqa, teacher, items))
    except JournalError as exc:
        raise DatagenError(str(exc)) from None
    resuming = bool(journal.done()) or journal.has_completions
    try:
        generator = await make_teacher(settings, teacher, items, root, probe=not resuming)
    except TeacherError as exc:
        journal.close()
        raise DatagenError(str(exc)) from None
    if teacher == "llm":  # a paid teacher: every completion journaled, replayed on a restart
        generator = JournaledGenerator(generator, journal)
    try:
        await _check_tools(settings)
        from components.search.client import served_index_tags

        tags = {"dmms.teacher": teacher, **served_index_tags(settings.tools.url, settings.tools.client_timeout_s)}
        with tracked_run(settings, "datagen", tags=tags) as run:
            result = await _generate(settings, items, root, generator, teacher, n, out, run, seed_vqa, journal)
    except BaseException:
        journal.close()
        raise
    finally:
        await generator.aclose()
    journal.remove()  # published; the record in ``out`` keeps every trajectory
    return result


async def _run_loop(settings: Settings, generator: Any, items: list[VQAItem], root: Path, teacher: str,
                    journal: Journal) -> tuple[list[Trajectory], dict[str, bytes]]:
    """Trajectories of every item, in item order: the journal's finished ones, and the rest run now."""
    from components.search.client import ToolClient

    done = journal.done()
    todo = [i for i in items if i.id not in done]
    if done:
        log.info("datagen: %d of %d samples already done (journal %s); running %d", len(items) - len(todo),
                 len(items), journal.root, len(todo))
    overrides: dict[str, Any] = {"concurrency": settings.datagen.concurrency}
    if teacher == "llm":
        overrides.update(temperature=settings.teacher.temperature, max_new_tokens=settings.teacher.max_tokens)
    images = journal.images()
    for item in items:
        if item.id in done:
            data = (root / item.image).read_bytes()
            images[sha256_of(data)] = data
    fresh: dict[str, Trajectory] = {}
    if todo:
        async with ToolClient.from_settings(settings) as tools:
            loop = AgentLoop.from_settings(generator, tools, settings, **overrides)
            result = await loop.run(_samples(todo, root), on_finish=journal.record)
        fresh = {t.sample_id: t for t in result.trajectories}
        images.update(result.images)
    if isinstance(generator, JournaledGenerator):
        log.info("teacher: %d completions replayed from the journal, %d asked", journal.replayed, journal.recorded)
    trajs = [done.get(i.id) or fresh[i.id] for i in items]
    errors = sum(t.end_reason == EndReason.GENERATION_ERROR for t in trajs)
    if errors == len(trajs):
        raise DatagenError(f"the {teacher} teacher produced no turn for any of the {errors} samples "
                           f"(every generation failed; see the log): check {env_name('teacher', 'base_url')}")
    tool_errors = sum(t.end_reason == EndReason.TOOL_ERROR for t in trajs)
    if tool_errors:
        log.warning("%d of %d trajectories ended on a tool error", tool_errors, len(trajs))
    return trajs, images


async def _generate(settings: Settings, items: list[VQAItem], root: Path, generator: Any, teacher: str,
                    n: int, out: Path, run: Any, seed_vqa: Path, journal: Journal) -> DatagenResult:
    trajs, images = await _run_loop(settings, generator, items, root, teacher, journal)
    try:
        judge = make_judge(settings, "datagen", cache_path=journal.root / "verdicts.sqlite")
    except JudgeConfigError as exc:
        raise DatagenError(str(exc)) from None
    run.set_tags(judge_tags(judge))
    ranges = {i.id: i.answer_range for i in items if i.answer_range is not None}
    try:
        kept, report = await apply_filters(trajs, settings, judge=judge, ranges=ranges)
    finally:
        if isinstance(judge, LLMJudge):
            await judge.aclose()
    run.log_metrics({"judge_errors": float(report.judge_errors)})
    if not kept:
        raise DatagenError(f"no trajectory passed the filters (after each: {report.counts}); nothing "
                           "to publish: check the teacher, the tool-server's index and the seed answers")
    by_id = {i.id: i for i in items}
    categories = await assign_categories(settings, [by_id[t.sample_id] for t in kept])
    searched = {t.sample_id: t.text_searches + t.image_searches + t.crop_searches > 0 for t in kept}
    meta = {t.sample_id: {"requires_search": (by_id[t.sample_id].requires_search
                                              if by_id[t.sample_id].requires_search is not None
                                              else searched[t.sample_id]),
                          "category": categories[t.sample_id]} for t in kept}
    candidates = [Candidate(i, bool(m["requires_search"]), m["category"]) for i, m in meta.items()]
    picked, bal = balance(candidates, n, settings.datagen.search_ratio, settings.datagen.seed)
    chosen = {c.id for c in picked}
    selected = [t for t in kept if t.sample_id in chosen]
    counts = {**report.counts, "selected": len(selected)}
    if len(selected) < n:
        short = (f"datagen delivered {len(selected)} of the {n} rows asked for; after each filter: "
                 f"{', '.join(f'{k} {v}' for k, v in counts.items())} (from {len(items)} seed questions)")
        if settings.datagen.fail_on_shortfall:
            raise DatagenError(short + f": give more seed questions, or ask for fewer rows, or set "
                                       f"{env_name('datagen', 'fail_on_shortfall')}=false")
        log.warning("%s", short)
    rows = rows_from_trajectories(selected, images, meta)
    mix = tool_mix(selected)
    turns = dict(sorted(Counter(len(t.turns) for t in selected).items()))
    hists = {"generated": dict(Counter(len(t.turns) for t in trajs)), "dataset": turns}
    dataset_meta = {"teacher": teacher, "seed_vqa": str(seed_vqa), "counts": counts, "balance": bal.as_dict(),
                    "tool_mix": mix, "search_ratio": settings.datagen.search_ratio, "mlflow_run_id": run.run_id}
    _log_counts(run, counts, mix, bal.categories)
    ref = publish_dataset(open_store(settings), settings.datagen.dataset_name, rows, dataset_meta)
    stats = {"dataset_uri": ref.uri, "counts": counts, "filters": report.as_dict(), "balance": bal.as_dict(),
             "tool_mix": mix, "turns": turns, "categories": bal.categories}
    _write_record(out, trajs, stats, settings.agent.max_turns, hists)
    _track(run, ref.uri, ref.version, out, stats)
    log.info("datagen: %d rows -> %s", len(rows), ref.uri)
    return DatagenResult(dataset_uri=ref.uri, version=ref.version, rows=len(rows), counts=counts,
                         balance=bal.as_dict(), tool_mix=mix, turns=turns, categories=bal.categories,
                         run_id=run.run_id, out=str(out))


def _metric_name(name: str) -> str:
    return re.sub(r"[^\w\-. :/]", "_", name)


def _log_counts(run: Any, counts: dict[str, int], mix: dict[str, int], categories: dict[str, int]) -> None:
    run.log_metrics({_metric_name(f"count/{k}"): v for k, v in counts.items()})
    run.log_metrics({_metric_name(f"tools/{k}"): v for k, v in mix.items()})
    run.log_metrics({_metric_name(f"category/{k}"): v for k, v in categories.items()})


def _track(run: Any, uri: str, version: str, out: Path, stats: dict[str, Any]) -> None:
    run.set_tags({"dmms.dataset_uri": uri, "dmms.dataset_version": version})
    run.log_params({"dataset_uri": uri})
    run.log_dict(stats, "datagen/stats.json")
    run.log_artifact(out / "turns.png", "datagen")
