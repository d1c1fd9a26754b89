"""GRPO rewards as plain TRL reward functions: ``f(prompts, completions, **kwargs) -> list[float]``.

Why: the paper's reward is 0.9 · correct (an LLM judge) + 0.1 · format. We give TRL the two parts
as TWO functions with ``reward_weights=[0.9, 0.1]`` (see :mod:`components.grpo.config`) so TRL
logs each part (``rewards/correctness/mean``, ``rewards/format/mean``) and sums them.

- :func:`correctness_reward` — 1.0 when the trajectory's final answer is judged correct against
  the row's ``answers`` (rule judge, or the paper's LLM judge through ``settings.judge``), else
  0.0; with MMSearch-R1's optional ``search_penalty`` a correct answer that searched earns
  ``1 - search_penalty``.
- :func:`format_reward` — the protocol's :func:`~components.agent.trajectory.format_score`
  (fraction of well-formed turns, 0 unless the trajectory ends in a well-formed answer).

Both read what the multi-turn ``rollout_func`` returns as extra fields (TRL hands every extra
key of the rollout output to the reward functions as a kwarg, one value per completion):
``final_answer``, ``turn_texts``, ``text_searches``, ``image_searches``, ``crop_searches``.
Without them (plain single-turn TRL, as in the benchmark's baseline) the completion itself is
the one model turn and is parsed. The format reward also logs the search counts per rollout
and the format rate through TRL's ``log_metric`` (→ MLflow every step).

Run the doctests: ``.venv/bin/python -m pytest -q --doctest-modules components/grpo/rewards.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from components.agent import judging
from components.agent.judges import RuleJudge
from components.agent.judging import Judge, JudgeItem, judge_many
from components.agent.protocol import ActionKind, parse_turn
from components.agent.trajectory import format_score
from components.common.settings import Settings

log = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float]]
SEARCH_FIELDS = ("text_searches", "image_searches", "crop_searches")


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string, or a conversational list of messages.

    >>> completion_text([{"role": "assistant", "content": "<answer>x</answer>"}])
    '<answer>x</answer>'
    """
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion or []:
        content = message.get("content", "")
        if isinstance(content, list):
            content = "".join(c.get("text", "") for c in content if c.get("type") == "text")
        parts.append(content or "")
    return "".join(parts)


def _turns(completions: Sequence[Any], turn_texts: Sequence[Sequence[str]] | None) -> list[list[str]]:
    if turn_texts is not None:
        return [list(t) for t in turn_texts]
    return [[completion_text(c)] for c in completions]  # single-turn: the completion is the one turn


def _answers(completions: Sequence[Any], final_answer: Sequence[str | None] | None) -> list[str | None]:
    if final_answer is not None:
        return list(final_answer)
    out = []
    for c in completions:
        action = parse_turn(completion_text(c))
        out.append(action.answer if action.kind == ActionKind.ANSWER else None)
    return out


def _searched(i: int, kwargs: dict[str, Any]) -> bool:
    return any((kwargs.get(f) or [0] * (i + 1))[i] for f in SEARCH_FIELDS)


def correctness_reward(prompts: Sequence[Any], completions: Sequence[Any], answers: Sequence[Sequence[str]],
                       question: Sequence[str] | None = None, final_answer: Sequence[str | None] | None = None,
                       judge: Any = None, search_penalty: float = 0.0,
                       answer_range: Sequence[Sequence[float] | None] | None = None,
                       log_metric: Callable[[str, float], None] | None = None,
                       judge_concurrency: int = 16, **kwargs: Any) -> list[float]:
    """1.0 if the final answer is judged correct against the gold ``answers`` (rule judge unless
    ``judge`` is given), else 0.0; a correct answer that searched earns ``1 - search_penalty``
    (MMSearch-R1). A judge failure scores 0.0 and is counted: ``judge_errors`` through TRL's
    ``log_metric`` (→ MLflow), never raised — one flaky judge call must not kill a GRPO step.

    >>> done = [{"role": "assistant", "content": "<reason>Known.</reason><answer>Paris</answer>"}]
    >>> wrong = [{"role": "assistant", "content": "<reason>Guess.</reason><answer>Paris or Rome</answer>"}]
    >>> correctness_reward([None, None], [done, wrong], answers=[["Paris"], ["Paris"]])
    [1.0, 0.0]
    >>> correctness_reward([None, None], [done, done], answers=[["Paris"]] * 2, final_answer=["Paris", "Paris"],
    ...                    text_searches=[1, 0], search_penalty=0.1)
    [0.9, 1.0]
    """
    judge = judge or RuleJudge()
    predictions = _answers(completions, final_answer)
    questions = list(question) if question is not None else [""] * len(predictions)
    ranges = list(answer_range) if answer_range is not None else [None] * len(predictions)
    items = [JudgeItem(q, list(a), p, tuple(r) if r else None)
             for q, a, p, r in zip(questions, answers, predictions, ranges, strict=True)]
    verdicts, stats = judge_many(judge, items, judge_concurrency)
    if log_metric is not None:
        log_metric("judge_errors", float(stats.errors))
    if stats.errors:
        log.warning("correctness reward: %d of %d verdicts failed (scored 0)", stats.errors, stats.judged)
    return [(1.0 - search_penalty if _searched(i, kwargs) else 1.0) if v.correct else 0.0
            for i, v in enumerate(verdicts)]


def format_reward(prompts: Sequence[Any], completions: Sequence[Any],
                  turn_texts: Sequence[Sequence[str]] | None = None,
                  log_metric: Callable[[str, float], None] | None = None, **kwargs: Any) -> list[float]:
    """The protocol's format score of each trajectory (its turns, or the completion as one turn).

    Logs ``format/rate`` (share of rollouts with a perfect format) and the mean text, image and
    crop searches per rollout through TRL's ``log_metric`` when given.

    >>> ok = "<reason>Need facts.</reason><text_search>Eiffel tower architect</text_search>"
    >>> done = "<reason>Found it.</reason><answer>Gustave Eiffel</answer>"
    >>> format_reward([None, None], [None, None], turn_texts=[[ok, done], [ok, "oops", done]])
    [1.0, 0.6666666666666666]
    >>> format_reward([None], ["<answer>no reason</answer>"])
    [0.0]
    """
    scores = [format_score(turns) for turns in _turns(completions, turn_texts)]
    if log_metric is not None and scores:
        log_metric("format/rate", sum(s == 1.0 for s in scores) / len(scores))
        for name in SEARCH_FIELDS:
            values = kwargs.get(name)
            if values is not None:
                log_metric(f"searches/{name}_per_rollout", sum(values) / len(values))
        if all(kwargs.get(f) is not None for f in SEARCH_FIELDS):
            total = [sum(v) for v in zip(*(kwargs[f] for f in SEARCH_FIELDS), strict=True)]
            log_metric("searches/per_rollout", sum(total) / len(total))
    return scores


def make_judge(settings: Settings, cache_dir: str | Path | None = None) -> Judge:
    """The correctness judge of GRPO (``DMMS_GRPO__JUDGE``; :func:`components.agent.judging.make_judge`)."""
    cache = Path(cache_dir, "judge-verdicts.sqlite") if cache_dir else None
    try:
        return judging.make_judge(settings, "grpo", cache)
    except judging.JudgeConfigError as exc:
        raise ValueError(str(exc)) from None


def make_reward_funcs(settings: Settings, cache_dir: str | Path | None = None) -> list[RewardFunc]:
    """``[correctness, format]`` bound to the settings' judge and search penalty, in the order of
    ``GRPOConfig.reward_weights``."""
    judge = make_judge(settings, cache_dir)
    penalty, concurrency = settings.grpo.search_penalty, settings.judge.concurrency

    def correctness(prompts, completions, **kwargs):
        return correctness_reward(prompts, completions, judge=judge, search_penalty=penalty,
                                  judge_concurrency=concurrency, **kwargs)

    def format(prompts, completions, **kwargs):  # noqa: A001 - TRL logs the function's name
        return format_reward(prompts, completions, **kwargs)

    correctness.judge = judge  # so the step can record how it was judged (judging.judge_tags)
    return [correctness, format]
