"""Balanced sampling: the search ratio, uniform categories, recorded shortfalls, determinism."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.datagen.balance import Candidate, balance, quotas


def _pool(spec: dict[tuple[bool, str], int]) -> list[Candidate]:
    return [Candidate(f"{cat}-{req}-{i}", req, cat) for (req, cat), k in spec.items() for i in range(k)]


def test_fifty_fifty_and_uniform_over_categories():
    pool = _pool({(True, "a"): 10, (True, "b"): 10, (True, "c"): 10, (False, "x"): 10, (False, "y"): 10})
    picked, report = balance(pool, 12, 0.5, seed=1)
    assert len(picked) == 12 and report.selected == {"search_required": 6, "search_free": 6}
    assert Counter(c.category for c in picked) == {"a": 2, "b": 2, "c": 2, "x": 3, "y": 3}
    assert not report.category_shortfall and not report.group_shortfall and report.total_shortfall == 0


def test_short_category_is_filled_from_the_others_and_recorded():
    pool = _pool({(True, "a"): 1, (True, "b"): 10, (True, "c"): 10, (False, "x"): 20})
    picked, report = balance(pool, 18, 0.5, seed=0)
    counts = Counter(c.category for c in picked if c.requires_search)
    assert counts == {"a": 1, "b": 4, "c": 4}
    assert report.category_shortfall == {"a": 2}
    assert report.selected["search_required"] == 9


def test_short_group_is_filled_from_the_other_group_and_recorded():
    pool = _pool({(True, "a"): 2, (False, "x"): 10, (False, "y"): 10})
    picked, report = balance(pool, 10, 0.5, seed=0)
    assert len(picked) == 10
    assert report.selected == {"search_required": 2, "search_free": 8}
    assert report.group_shortfall == {"search_required": 3}


def test_not_enough_candidates_takes_all_and_records_the_total_shortfall():
    pool = _pool({(True, "a"): 2, (False, "x"): 1})
    picked, report = balance(pool, 10, 0.5)
    assert len(picked) == 3 and report.total_shortfall == 7


def test_ratio_is_configurable():
    pool = _pool({(True, "a"): 30, (False, "x"): 30})
    _, report = balance(pool, 20, 0.25)
    assert report.selected == {"search_required": 5, "search_free": 15}


def test_same_seed_same_rows_other_seed_other_rows():
    pool = _pool({(True, "a"): 50, (False, "x"): 50})
    ids = lambda s: [c.id for c in balance(list(reversed(pool)), 10, 0.5, seed=s)[0]]  # noqa: E731
    assert ids(3) == [c.id for c in balance(pool, 10, 0.5, seed=3)[0]]
    assert ids(3) != ids(4)


def test_n_must_be_positive():
    with pytest.raises(ValueError, match="n must be at least 1"):
        balance([], 0)


def test_quotas_split_evenly():
    assert quotas(10, ["b", "a", "c"]) == {"a": 4, "b": 3, "c": 3}
    assert quotas(3, []) == {}


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.tuples(st.booleans(), st.sampled_from("abcdef")), st.integers(0, 12), max_size=8),
       st.integers(1, 40), st.sampled_from([0.0, 0.3, 0.5, 1.0]))
def test_properties(spec, n, ratio):
    pool = _pool(spec)
    picked, report = balance(pool, n, ratio, seed=7)
    assert len({c.id for c in picked}) == len(picked) == min(n, len(pool))
    assert report.total_shortfall == n - len(picked)
    for group in (True, False):
        got = Counter(c.category for c in picked if c.requires_search is group)
        have = Counter(c.category for c in pool if c.requires_search is group)
        # uniform: a category below the most-picked one by more than one has run out
        top = max(got.values(), default=0)
        assert all(got[cat] >= top - 1 or got[cat] == have[cat] for cat in have)
