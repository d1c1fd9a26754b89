"""Answer judges: is a prediction the gold answer? Datagen filters, GRPO rewards and evaluation
all ask this question, so it is answered here once (the factory is :mod:`components.agent.judging`).

- :class:`RuleJudge` — no model, deterministic, free: the default for the offline world and the
  tiny profile, and a GRPO reward, so it must not be gameable. In order:

  1. empty or give-up answers are INCORRECT;
  2. an exact match with any alias after :func:`~components.agent.answers.normalise` (case,
     accents, articles, punctuation, number words, thousands separators, unit spellings) is CORRECT;
  3. an answer that hedges (``or``, ``either``, ``maybe``, ``probably``, ``between`` …) or
     negates (``not``, ``isn't``, ``wrong`` …) is INCORRECT, unless the gold itself has the word;
  4. a numeric gold (or an InfoSeek range) is matched by the ONE number the answer gives (numbers
     copied from the question are ignored); a different unit after it, or a second number, is
     INCORRECT; exact unless ``rel_tol`` is set, and years always exact;
  5. a list (three or more parts, or two parts that both read as names: "Paris, Rome",
     "Paris and France") is INCORRECT — give the one answer; an alias may spell a compound out;
  6. the gold contained as a whole phrase in an answer at most ``max_extra_words`` longer is
     CORRECT ("The capital is Paris.", "It was designed by Gustave Eiffel, a French engineer").

- :class:`~components.agent.llm_judge.LLMJudge` — the paper's binary CORRECT/INCORRECT verdict
  through an OpenAI-compatible endpoint.

Both return a :class:`Verdict` that records which judge decided and why, and ``error=True`` when
the judge itself failed (the verdict is then INCORRECT and counted, never raised).

    judge = RuleJudge()
    judge.judge("When was it built?", ["1889"], "It was completed in 1889.").correct  # True
    judge.judge("Which city?", ["Paris"], "Paris or Rome").correct                    # False
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from components.agent import answers as A

normalise = A.normalise  # re-exported: callers compare answers through the judge module


@dataclass(frozen=True)
class Verdict:
    correct: bool
    judge: str
    detail: str = ""
    error: bool = False  # the judge failed (timeout, unreadable verdict): scored INCORRECT, counted


def _is_year(value: float, unit: str | None) -> bool:
    return unit is None and value.is_integer() and 1000 <= value <= 2100


class RuleJudge:
    """Normalised alias match that refuses hedges, negations and lists (see the module docstring)."""

    name = "rule"
    prompt_version = "rules-v2"

    def __init__(self, rel_tol: float = 0.0, max_extra_words: int = 12):
        self.rel_tol = rel_tol
        self.max_extra_words = max_extra_words

    async def ajudge(self, question: str, golds: list[str], prediction: str | None,
                     answer_range: tuple[float, float] | None = None) -> Verdict:
        return self.judge(question, golds, prediction, answer_range)

    def judge(self, question: str, golds: list[str], prediction: str | None,
              answer_range: tuple[float, float] | None = None) -> Verdict:
        raw = prediction or ""
        pred = A.normalise(raw)
        if not pred or A.gives_up(pred):
            return Verdict(False, self.name, "empty or give-up answer")
        normed = [(g, n) for g in golds if (n := A.normalise(g))]
        for gold, g in normed:
            if pred == g:
                return Verdict(True, self.name, f"exact match {gold!r}")
        gold_words = " ".join(g for _, g in normed)
        if cue := A.hedge_cue(pred, gold_words):
            return Verdict(False, self.name, f"hedges ({cue!r}): one answer, stated plainly")
        if cue := A.negation_cue(pred, gold_words):
            return Verdict(False, self.name, f"negates ({cue!r}): state the answer, not what it is not")
        numeric = self._numeric(question, normed, pred, answer_range)
        if numeric is not None:
            return numeric
        parts = A.raw_segments(raw)
        gold_parts = max((len(A.raw_segments(gold)) for gold, _ in normed), default=1)
        if len(parts) > max(2, gold_parts) or (len(parts) == 2 > gold_parts and all(map(A.name_like, parts))):
            return Verdict(False, self.name, f"lists {len(parts)} candidates: give one answer")
        words = len(pred.split())
        for gold, g in normed:
            if words <= len(g.split()) + self.max_extra_words and _contains_phrase(pred, g):
                return Verdict(True, self.name, f"contains {gold!r}")
        return Verdict(False, self.name, "no gold answer matched")

    def _numeric(self, question: str, normed: list[tuple[str, str]], pred: str,
                 answer_range: tuple[float, float] | None) -> Verdict | None:
        """A verdict when the gold is a number (or a range), else None (not a numeric question)."""
        targets = [(gold, A.quantities(g)[0]) for gold, g in normed if A.is_number(g)]
        if not targets and answer_range is None:
            return None
        asked = {q.value for q in A.quantities(A.normalise(question))}
        given = [q for q in A.quantities(pred) if q.value not in asked] or A.quantities(pred)
        if not given:
            return None if any(not A.is_number(g) for _, g in normed) else Verdict(
                False, self.name, "no number in the answer")
        if len({(q.value, q.unit) for q in given}) > 1:
            return Verdict(False, self.name, f"gives {len(given)} numbers: give one")
        q = given[0]
        if answer_range is not None and answer_range[0] <= q.value <= answer_range[1]:
            return Verdict(True, self.name, f"{q.value:g} within range [{answer_range[0]:g}, {answer_range[1]:g}]")
        for gold, t in targets:
            if q.unit is not None and t.unit is not None and q.unit != t.unit:
                continue
            if self._close(t, q.value):
                return Verdict(True, self.name, f"numeric match {gold!r}")
        if any(not A.is_number(g) for _, g in normed):
            return None  # some alias is text: let the phrase match decide
        return Verdict(False, self.name, f"number {q.value:g}{' ' + q.unit if q.unit else ''} matches no gold")

    def _close(self, gold: A.Quantity, value: float) -> bool:
        if self.rel_tol == 0.0 or _is_year(gold.value, gold.unit):
            return gold.value == value
        return abs(gold.value - value) <= self.rel_tol * max(abs(gold.value), abs(value))


def _contains_phrase(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(phrase)}(?![\w]|\.\d)", text) is not None

