"""The paper's filters over teacher trajectories: format, turns, ends in an answer, judged correct.

Why: a teacher is not always right or well-formed; only trajectories that a policy should imitate
go into DeepMMSearchVQA. Applied in order, each counting what is left (``FilterReport.counts``):

1. ``format``  — every model turn is valid protocol (no invalid turn, no refused second image search);
2. ``turns``   — fewer than ``settings.agent.max_turns`` model turns (paper: drop 10+ turns);
3. ``answer``  — the trajectory ends in ``<answer>`` (not a limit, a tool or generation error);
4. ``correct`` — the judge says the answer is right: the step's judge from
   :func:`components.agent.judging.make_judge` (``DMMS_DATAGEN__JUDGE``; auto = the paper's LLM judge
   when ``DMMS_JUDGE__BASE_URL`` is set, else the rule judge). The verdict is stored on the record; a
   verdict the judge could not give counts as INCORRECT and in ``FilterReport.judge_errors``.

    kept, report = await apply_filters(trajectories, settings)
    report.counts  # {"generated": 120, "format": 118, "turns": 118, "answer": 112, "correct": 97}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from components.agent.judging import Judge, JudgeItem, JudgeStats, ajudge_many, make_judge
from components.agent.llm_judge import LLMJudge
from components.agent.protocol import ActionKind
from components.agent.trajectory import JudgeVerdict, Trajectory
from components.common.settings import Settings

log = logging.getLogger(__name__)

STAGES = ("generated", "format", "turns", "answer", "correct")


@dataclass
class FilterReport:
    """How many trajectories were left after each filter, and which were dropped where."""

    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    judge_errors: int = 0  # verdicts the judge could not give (scored INCORRECT, so dropped)

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "dropped": {k: list(v) for k, v in self.dropped.items()},
                "judge_errors": self.judge_errors}


def well_formed(traj: Trajectory) -> bool:
    return bool(traj.turns) and all(t.action.valid for t in traj.turns)


def short_enough(traj: Trajectory, max_turns: int) -> bool:
    return len(traj.turns) < max_turns


def ends_in_answer(traj: Trajectory) -> bool:
    return bool(traj.turns) and traj.turns[-1].action.kind == ActionKind.ANSWER


async def judge_trajectories(trajs: list[Trajectory], judge: Judge, concurrency: int = 16,
                             ranges: dict[str, tuple[float, float]] | None = None) -> JudgeStats:
    """Set ``traj.judge`` on every trajectory (bounded; a failed verdict is INCORRECT and counted)."""
    ranges = ranges or {}
    stats = JudgeStats()
    items = [JudgeItem(t.question, t.answers, t.final_answer, ranges.get(t.sample_id)) for t in trajs]
    verdicts = await ajudge_many(judge, items, concurrency, stats)
    for t, v in zip(trajs, verdicts, strict=True):
        t.judge = JudgeVerdict(correct=v.correct, judge=v.judge, detail=v.detail)
    return stats


async def apply_filters(trajs: list[Trajectory], settings: Settings, judge: Judge | None = None,
                        ranges: dict[str, tuple[float, float]] | None = None) -> tuple[list[Trajectory], FilterReport]:
    """Run the four filters in order; return the survivors and the counts after each filter."""
    report = FilterReport(counts={"generated": len(trajs)})
    max_turns = settings.agent.max_turns
    checks = [("format", well_formed), ("turns", lambda t: short_enough(t, max_turns)),
              ("answer", ends_in_answer)]
    kept = list(trajs)
    for stage, check in checks:
        report.dropped[stage] = [t.sample_id for t in kept if not check(t)]
        kept = [t for t in kept if check(t)]
        report.counts[stage] = len(kept)
    own_judge = judge is None
    judge = judge or make_judge(settings, "datagen")
    try:
        stats = await judge_trajectories(kept, judge, settings.judge.concurrency, ranges)
    finally:
        if own_judge and isinstance(judge, LLMJudge):
            await judge.aclose()
    report.judge_errors = stats.errors
    report.dropped["correct"] = [t.sample_id for t in kept if not t.judge.correct]
    kept = [t for t in kept if t.judge.correct]
    report.counts["correct"] = len(kept)
    log.info("filters: %s", " -> ".join(f"{k} {v}" for k, v in report.counts.items()))
    return kept, report
