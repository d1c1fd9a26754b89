"""Evaluation metrics as pure functions over :class:`EvalSample` lists.

Why pure: the table, the plots, MLflow and the promotion gates all read these numbers, so they are
computed in one place, from the stored samples alone, and tested against a hand-computed case.

Per (benchmark, mode) cell: accuracy (%) with ``n`` and its 95% bootstrap interval
(:func:`components.common.stats.bootstrap_ci`), judge errors, searches per question, share of text / image / crop
searches among all searches, model turns per question, format errors per question and the share of
samples with at least one, mean / p50 / p95 latency. Per mode: the average accuracy over benchmarks
(the paper's "Avg" column: an unweighted mean of the benchmark accuracies).

    cells = summarise(samples)           # {(benchmark, mode): Cell}
    flat_metrics(cells)                  # {"accuracy.okvqa.direct": 50.0, ...} for MLflow
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable

from pydantic import BaseModel

from components.common.stats import bootstrap_ci
from components.evaluate.records import EvalSample


class Cell(BaseModel):
    """Metrics of one benchmark × mode."""

    benchmark: str
    mode: str
    n: int
    accuracy: float
    ci95_lo: float
    ci95_hi: float
    judge_errors: int
    searches_per_question: float
    text_share: float
    image_share: float
    crop_share: float
    turns: float
    format_errors: float
    format_error_rate: float
    latency_mean_s: float
    latency_p50_s: float
    latency_p95_s: float


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); 0.0 for no values.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    """
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def cell(samples: list[EvalSample]) -> Cell:
    """Metrics of samples that share one benchmark and mode."""
    if not samples:
        raise ValueError("no samples")
    total = sum(s.searches for s in samples)
    share = (lambda k: 100.0 * k / total) if total else (lambda k: 0.0)
    lat = [s.latency_s for s in samples]
    return Cell(
        benchmark=samples[0].benchmark, mode=samples[0].mode, n=len(samples),
        accuracy=100.0 * _mean([float(s.correct) for s in samples]),
        **dict(zip(("ci95_lo", "ci95_hi"), bootstrap_ci([float(s.correct) for s in samples]), strict=True)),
        judge_errors=sum(s.judge_error for s in samples),
        searches_per_question=total / len(samples),
        text_share=share(sum(s.text_searches for s in samples)),
        image_share=share(sum(s.image_searches for s in samples)),
        crop_share=share(sum(s.crop_searches for s in samples)),
        turns=_mean([float(s.model_turns) for s in samples]),
        format_errors=_mean([float(s.format_errors) for s in samples]),
        format_error_rate=100.0 * _mean([float(s.format_errors > 0) for s in samples]),
        latency_mean_s=_mean(lat), latency_p50_s=percentile(lat, 50), latency_p95_s=percentile(lat, 95),
    )


def summarise(samples: Iterable[EvalSample]) -> dict[tuple[str, str], Cell]:
    """One :class:`Cell` per (benchmark, mode), in first-seen order."""
    groups: dict[tuple[str, str], list[EvalSample]] = defaultdict(list)
    for s in samples:
        groups[(s.benchmark, s.mode)].append(s)
    return {key: cell(group) for key, group in groups.items()}


def mode_averages(cells: dict[tuple[str, str], Cell]) -> dict[str, float]:
    """Per mode: the unweighted mean accuracy over its benchmarks (the paper's Avg)."""
    by_mode: dict[str, list[float]] = defaultdict(list)
    for (_, mode), c in cells.items():
        by_mode[mode].append(c.accuracy)
    return {mode: _mean(accs) for mode, accs in by_mode.items()}


def mode_format_error_rates(cells: dict[tuple[str, str], Cell]) -> dict[str, float]:
    """Per mode: the share (%) of all its samples with at least one format error."""
    bad: dict[str, float] = defaultdict(float)
    n: dict[str, int] = defaultdict(int)
    for (_, mode), c in cells.items():
        bad[mode] += c.format_error_rate * c.n
        n[mode] += c.n
    return {mode: bad[mode] / n[mode] for mode in n}


FIELDS = ("accuracy", "ci95_lo", "ci95_hi", "n", "judge_errors", "searches_per_question", "text_share", "image_share", "crop_share", "turns",
          "format_errors", "format_error_rate", "latency_mean_s", "latency_p50_s", "latency_p95_s")


def flat_metrics(cells: dict[tuple[str, str], Cell]) -> dict[str, float]:
    """``<field>.<benchmark>.<mode>`` and ``accuracy.avg.<mode>`` (MLflow metric names)."""
    out: dict[str, float] = {}
    for (bench, mode), c in cells.items():
        for f in FIELDS:
            out[f"{f}.{bench}.{mode}"] = float(getattr(c, f))
    for mode, acc in mode_averages(cells).items():
        out[f"accuracy.avg.{mode}"] = acc
    for mode, rate in mode_format_error_rates(cells).items():
        out[f"format_error_rate.all.{mode}"] = rate
    return out


def accuracy_table(cells: dict[tuple[str, str], Cell], benchmarks: list[str],
                   modes: list[str]) -> list[dict[str, object]]:
    """Rows in the paper's Table 1 layout: one row per mode, one column per benchmark, then Avg."""
    averages = mode_averages(cells)
    rows = []
    for mode in modes:
        row: dict[str, object] = {"mode": mode}
        for bench in benchmarks:
            c = cells.get((bench, mode))
            row[bench] = round(c.accuracy, 2) if c else None
            row[f"{bench}_ci95"] = (c.ci95_lo, c.ci95_hi) if c else None
            row[f"{bench}_n"] = c.n if c else 0
        row["avg"] = round(averages[mode], 2) if mode in averages else None
        rows.append(row)
    return rows


SPLITS = ("all", "search_required", "search_free")
SPLIT_FIELDS = ("accuracy", "ci95_lo", "ci95_hi", "n", "searches_per_question", "search_decision",
                "format_error_rate", "copy_rate", "copy_n")
# The lead sentence of the tool-server's extractive image summary (components/search/summarise.py).
_IMAGE_LEAD = re.compile(r"The image most likely shows (.+?)\.(?:\s|$)")


def _split_of(s: EvalSample, split: str) -> bool:
    return split == "all" or (s.requires_search is not None and s.requires_search == (split == "search_required"))


def _decided_right(s: EvalSample) -> bool:
    """Searched exactly when the item needs it (items without a label: counted as right)."""
    return s.requires_search is None or (s.searches > 0) == s.requires_search


def copied_name(s: EvalSample) -> bool | None:
    """Did the first text query after the image search contain the name that search returned?

    The direct measure of copying (issue 12): an answer to an unseen entity can only come from
    reading ``<information>``. None when the trajectory has no image search whose summary names an
    entity in the extractive lead ("The image most likely shows X.") or no text query after it."""
    name = None
    for t in s.turns:
        if t.role == "tool" and t.action in ("image_search", "crop_search") and name is None:
            m = _IMAGE_LEAD.search(t.text or "")
            if m is None:
                return None
            name = m.group(1).strip()
        elif name is not None and t.role == "model" and t.action == "text_search":
            return name.lower() in (t.query or "").lower()
    return None


def split_metrics(samples: Iterable[EvalSample]) -> dict[str, float]:
    """Per mode and split (all items, search-required, search-free; over every benchmark): accuracy
    (%) with n and its 95% bootstrap interval, searches per question, the search decision (share of
    items where the model searched exactly when the item needs it: for search-required items, that
    it searched; for search-free ones, that it did not), the format-error rate (share in [0, 1]) and
    the copy rate (:func:`copied_name`, share in [0, 1] over the ``copy_n`` trajectories it applies
    to; no key when none does).

    Keys: ``split/<field>/<split>/<mode>``; no key for a split without items.
    """
    by_mode: dict[str, list[EvalSample]] = defaultdict(list)
    for s in samples:
        by_mode[s.mode].append(s)
    out: dict[str, float] = {}
    for mode, group in by_mode.items():
        for split in SPLITS:
            part = [s for s in group if _split_of(s, split)]
            if not part:
                continue
            lo, hi = bootstrap_ci([float(s.correct) for s in part])
            values = {"accuracy": 100.0 * _mean([float(s.correct) for s in part]), "ci95_lo": lo, "ci95_hi": hi,
                      "n": float(len(part)), "searches_per_question": _mean([float(s.searches) for s in part]),
                      "search_decision": _mean([float(_decided_right(s)) for s in part]),
                      "format_error_rate": _mean([float(s.format_errors > 0) for s in part])}
            copies = [c for c in (copied_name(s) for s in part) if c is not None]
            if copies:
                values.update(copy_rate=_mean([float(c) for c in copies]), copy_n=float(len(copies)))
            out.update({f"split/{k}/{split}/{mode}": v for k, v in values.items()})
    return out
