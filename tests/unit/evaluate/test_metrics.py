"""Metrics against a small case computed by hand."""

from __future__ import annotations

import pytest

from components.evaluate.metrics import accuracy_table, flat_metrics, percentile, summarise
from components.evaluate.records import EvalSample


def _s(bench, mode, correct, text=0, image=0, crop=0, turns=1, fmt=0, lat=1.0) -> EvalSample:
    return EvalSample(benchmark=bench, mode=mode, item_id="x", question="q", answers=["a"], image_path="/x",
                      correct=correct, text_searches=text, image_searches=image, crop_searches=crop,
                      model_turns=turns, format_errors=fmt, latency_s=lat)


SAMPLES = [
    # okvqa / agent: 3 samples, 2 correct; searches 2+1+0 = 3 (text 2, image 1, crop 0... see below)
    _s("okvqa", "agent", True, text=2, turns=3, lat=1.0),
    _s("okvqa", "agent", True, crop=1, turns=2, lat=2.0),
    _s("okvqa", "agent", False, turns=2, fmt=1, lat=6.0),
    # infoseek / agent: 1 sample, correct, 1 image + 1 text search
    _s("infoseek", "agent", True, text=1, image=1, turns=3, lat=4.0),
    # okvqa / direct: 2 samples, 1 correct
    _s("okvqa", "direct", True), _s("okvqa", "direct", False, fmt=2),
]


def test_cells_match_hand_computation():
    cells = summarise(SAMPLES)
    ok = cells[("okvqa", "agent")]
    assert ok.n == 3
    assert ok.accuracy == pytest.approx(200 / 3)
    assert ok.searches_per_question == pytest.approx(1.0)  # (2 + 1 + 0) / 3
    assert (ok.text_share, ok.image_share, ok.crop_share) == pytest.approx((200 / 3, 0.0, 100 / 3))
    assert ok.turns == pytest.approx(7 / 3)
    assert ok.format_errors == pytest.approx(1 / 3)
    assert ok.format_error_rate == pytest.approx(100 / 3)
    assert ok.latency_mean_s == pytest.approx(3.0)
    assert ok.latency_p50_s == pytest.approx(2.0)
    assert ok.latency_p95_s == pytest.approx(5.6)  # 2 + (6 - 2) * 0.9
    direct = cells[("okvqa", "direct")]
    assert direct.accuracy == 50.0 and direct.searches_per_question == 0.0 and direct.text_share == 0.0
    assert direct.format_errors == 1.0 and direct.format_error_rate == 50.0


def test_flat_metrics_average_is_unweighted_over_benchmarks():
    flat = flat_metrics(summarise(SAMPLES))
    assert flat["accuracy.avg.agent"] == pytest.approx((200 / 3 + 100) / 2)
    assert flat["accuracy.avg.direct"] == 50.0
    assert flat["accuracy.infoseek.agent"] == 100.0
    assert flat["format_error_rate.all.agent"] == pytest.approx(25.0)  # 1 of 4 agent samples
    assert flat["image_share.infoseek.agent"] == 50.0


def test_table_layout_rows_are_modes_columns_benchmarks():
    rows = accuracy_table(summarise(SAMPLES), ["infoseek", "okvqa"], ["direct", "agent"])
    keys = ("mode", "infoseek", "okvqa", "avg")
    assert [{k: r[k] for k in keys} for r in rows] == [
        {"mode": "direct", "infoseek": None, "okvqa": 50.0, "avg": 50.0},
        {"mode": "agent", "infoseek": 100.0, "okvqa": 66.67, "avg": 83.33}]
    # every cell carries n and its 95% bootstrap interval, which holds the point estimate
    assert rows[0]["infoseek_n"] == 0 and rows[0]["infoseek_ci95"] is None
    assert rows[1]["okvqa_n"] == 3
    lo, hi = rows[1]["okvqa_ci95"]
    assert lo <= 66.67 <= hi and hi - lo > 10


def test_percentile_edges():
    assert percentile([], 50) == 0.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5


def _traj(query: str | None, lead: str = "The image most likely shows Viath Brouthozel. More text.") -> EvalSample:
    from components.evaluate.records import TurnRecord

    turns = [TurnRecord(role="model", text="...", action="image_search"),
             TurnRecord(role="tool", text=lead, action="image_search")]
    if query is not None:
        turns.append(TurnRecord(role="model", text="...", action="text_search", query=query))
    return EvalSample(benchmark="world", mode="agent", item_id="x", question="q", answers=["a"], image_path="/x",
                      requires_search=True, turns=turns, image_searches=1, text_searches=int(query is not None))


def test_copy_rate_counts_queries_that_hold_the_returned_name():
    from components.evaluate.metrics import copied_name, split_metrics

    assert copied_name(_traj("viath brouthozel born city")) is True  # case does not matter
    assert copied_name(_traj("Kodiax born city")) is False  # a recalled or invented name
    assert copied_name(_traj(None)) is None  # no text query: not counted
    assert copied_name(_traj("x", lead="The image search found no matching images.")) is None
    m = split_metrics([_traj("Viath Brouthozel born"), _traj("Kodiax born"), _traj("Viath Brouthozel"), _traj(None)])
    assert m["split/copy_rate/search_required/agent"] == pytest.approx(2 / 3)
    assert m["split/copy_n/search_required/agent"] == 3.0
    assert "split/copy_rate/search_free/agent" not in m  # no search-free items
