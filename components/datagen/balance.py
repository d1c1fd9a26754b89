"""Balanced sampling of the filtered trajectories: a search-required : search-free ratio, and
uniform over taxonomy categories (the paper: 10k samples, 50:50, uniform over categories).

Why: the model must learn both when to search and when not to, over every kind of question. The
sampler is deterministic for a seed: candidates are sorted by id, shuffled per category with a
seeded RNG, then drawn round-robin over the sorted categories, so every category gets the same
share up to one. A category that runs short is filled from the others, and the shortfall is
recorded; a group (required or free) that runs short is filled from the other group, recorded
as well. Pure functions; tests: ``pytest tests/unit/datagen/test_balance.py``.

    picked, report = balance(candidates, n=100, search_ratio=0.5, seed=0)
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    id: str
    requires_search: bool
    category: str


@dataclass
class BalanceReport:
    requested: int
    targets: dict[str, int]  # {"search_required": k, "search_free": n - k}
    selected: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    category_shortfall: dict[str, int] = field(default_factory=dict)  # category -> rows it lacked
    group_shortfall: dict[str, int] = field(default_factory=dict)  # group -> rows filled from the other
    total_shortfall: int = 0  # rows fewer than requested (not enough candidates at all)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _group(c: Candidate) -> str:
    return "search_required" if c.requires_search else "search_free"


def quotas(target: int, categories: list[str]) -> dict[str, int]:
    """An even split of ``target`` over sorted ``categories`` (the first ones get the remainder).

    >>> quotas(7, ["a", "b", "c"])
    {'a': 3, 'b': 2, 'c': 2}
    """
    cats = sorted(categories)
    if not cats:
        return {}
    base, extra = divmod(target, len(cats))
    return {c: base + (i < extra) for i, c in enumerate(cats)}


def round_robin(pools: dict[str, list[Candidate]], target: int,
                have: Counter | None = None) -> list[Candidate]:
    """Take one from each category in turn, repeatedly, until ``target`` or all are empty. Categories
    go in sorted order, those with fewer rows already taken (``have``) first, so counts stay even."""
    have = have or Counter()
    order = sorted(pools, key=lambda c: (have[c], c))
    queues = {c: list(pools[c]) for c in order if pools[c]}
    out: list[Candidate] = []
    while len(out) < target and queues:
        for cat in list(queues):
            if len(out) == target:
                break
            out.append(queues[cat].pop(0))
            if not queues[cat]:
                del queues[cat]
    return out


def balance(candidates: list[Candidate], n: int, search_ratio: float = 0.5,
            seed: int = 0) -> tuple[list[Candidate], BalanceReport]:
    """Pick up to ``n`` candidates with ``search_ratio`` search-required, uniform over categories."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = random.Random(seed)
    n_req = round(n * search_ratio)
    targets = {"search_required": n_req, "search_free": n - n_req}
    report = BalanceReport(requested=n, targets=targets)
    pools: dict[str, dict[str, list[Candidate]]] = {g: defaultdict(list) for g in targets}
    for c in sorted(candidates, key=lambda c: c.id):
        pools[_group(c)][c.category].append(c)
    for group in pools.values():
        for cat in sorted(group):
            rng.shuffle(group[cat])
    picked: dict[str, list[Candidate]] = {}
    for g, target in targets.items():
        picked[g] = round_robin(pools[g], target)
        available = {c: len(p) for c, p in pools[g].items()}
        for cat, quota in quotas(target, list(available)).items():
            if available[cat] < quota:
                report.category_shortfall[cat] = quota - available[cat]
    for g, other in (("search_required", "search_free"), ("search_free", "search_required")):
        missing = targets[g] - len(picked[g])
        if missing > 0:  # fill from the other group's leftovers, still round-robin over categories
            taken = {c.id for c in picked[other]}
            rest = {cat: [c for c in p if c.id not in taken] for cat, p in pools[other].items()}
            extra = round_robin(rest, missing, Counter(c.category for c in picked[other]))
            if extra:
                report.group_shortfall[g] = len(extra)
            picked[other] += extra
    out = picked["search_required"] + picked["search_free"]
    report.selected = {g: sum(_group(c) == g for c in out) for g in targets}
    report.categories = dict(sorted(Counter(c.category for c in out).items()))
    report.total_shortfall = n - len(out)
    if report.category_shortfall or report.group_shortfall or report.total_shortfall:
        log.warning("balance: shortfall by category %s, by group %s, in total %d",
                    report.category_shortfall, report.group_shortfall, report.total_shortfall)
    return out, report
