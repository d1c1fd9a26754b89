"""One judge for every step: the factory, bounded fault-tolerant batches, and error counts.

Why here: datagen's "correct" filter, GRPO's correctness reward and evaluation's score must judge
alike — the same rules, the same LLM judge, the same prompt version — or a policy is trained
against one notion of correct and promoted on another. Each step asks :func:`make_judge` with its
own choice (``DMMS_DATAGEN__JUDGE``, ``DMMS_GRPO__JUDGE``, ``DMMS_EVALUATE__JUDGE``: ``auto`` = the
LLM judge when ``DMMS_JUDGE__BASE_URL`` is set, else the rule judge), and judges a batch with
:func:`ajudge_many`: at most ``DMMS_JUDGE__CONCURRENCY`` requests in flight, a failure of one item
becomes an INCORRECT verdict with ``error=True`` (counted in :class:`JudgeStats`, logged by the
step as the MLflow metric ``judge_errors``), never an exception out of the batch.

    judge = make_judge(settings, "evaluate")
    verdicts, stats = judge_many(judge, [JudgeItem("Which city?", ["Paris"], "Paris")], concurrency=8)
    run.set_tags(judge_tags(judge))     # dmms.judge, dmms.judge.model, dmms.judge.prompt_version
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from components.agent.judges import RuleJudge, Verdict
from components.agent.llm_judge import LLMJudge
from components.common.settings import Settings, env_name

log = logging.getLogger(__name__)

Judge = RuleJudge | LLMJudge
Step = Literal["datagen", "grpo", "evaluate"]


class JudgeConfigError(ValueError):
    """The judge asked for cannot be built; the message names the variable to set."""


@dataclass(frozen=True)
class JudgeItem:
    question: str
    answers: Sequence[str]
    prediction: str | None
    answer_range: tuple[float, float] | None = None


@dataclass
class JudgeStats:
    judged: int = 0
    errors: int = 0

    def add(self, verdicts: Sequence[Verdict]) -> None:
        self.judged += len(verdicts)
        self.errors += sum(v.error for v in verdicts)


def judge_choice(settings: Settings, step: Step) -> str:
    choice = getattr(settings, step).judge
    if choice == "auto":
        return "llm" if settings.judge.configured else "rule"
    return choice


def make_judge(settings: Settings, step: Step, cache_path: str | Path | None = None) -> Judge:
    """The judge ``step`` uses, from the settings (see the module docstring)."""
    if judge_choice(settings, step) == "rule":
        return RuleJudge(rel_tol=settings.judge.rel_tol)
    if not settings.judge.configured:
        raise JudgeConfigError(f"{env_name(step, 'judge')}=llm needs a judge endpoint: set "
                               f"{env_name('judge', 'base_url')} and {env_name('judge', 'model')} "
                               f"(or {env_name(step, 'judge')}=rule)")
    try:
        return LLMJudge(settings.judge, cache_path=cache_path, prompt_version=settings.judge.prompt_version)
    except ValueError as exc:
        raise JudgeConfigError(str(exc)) from None


def judge_tags(judge: Judge) -> dict[str, str]:
    """MLflow tags that say how a run was judged."""
    return {"dmms.judge": judge.name, "dmms.judge.model": getattr(judge, "model", "") or "rule",
            "dmms.judge.prompt_version": judge.prompt_version}


async def ajudge_many(judge: Judge, items: Sequence[JudgeItem], concurrency: int = 16,
                      stats: JudgeStats | None = None) -> list[Verdict]:
    """Verdicts of ``items`` in order; bounded; a failing item is INCORRECT with ``error=True``."""
    sem = asyncio.Semaphore(concurrency)

    async def one(item: JudgeItem) -> Verdict:
        if not item.prediction:
            return Verdict(False, judge.name, "no answer")
        async with sem:
            try:
                return await judge.ajudge(item.question, list(item.answers), item.prediction, item.answer_range)
            except Exception as exc:  # noqa: BLE001 - one bad item must not sink the batch
                log.warning("judge %s raised on one item (%s: %s): scored INCORRECT",
                            judge.name, type(exc).__name__, exc)
                return Verdict(False, judge.name, f"judge error: {type(exc).__name__}: {exc}", error=True)

    verdicts = list(await asyncio.gather(*(one(i) for i in items)))
    if stats is not None:
        stats.add(verdicts)
    return verdicts


def judge_many(judge: Judge, items: Sequence[JudgeItem], concurrency: int = 16) -> tuple[list[Verdict], JudgeStats]:
    """Blocking :func:`ajudge_many` for synchronous callers (GRPO's reward functions)."""
    async def run() -> list[Verdict]:
        try:
            return await ajudge_many(judge, items, concurrency)
        finally:
            if isinstance(judge, LLMJudge):
                await judge.aclose()

    verdicts = asyncio.run(run())
    stats = JudgeStats()
    stats.add(verdicts)
    return verdicts, stats
