"""Promotion gates as a pure function: each gate refuses with a reason that names the numbers, the
regression gate is a paired-bootstrap non-inferiority test (significantly worse → refused, too few
items to tell → undecided), and a missing metric fails its gate."""

from __future__ import annotations

from components.common.settings import PromoteSettings
from components.registry.promote import EvalSummary, check_gates

GATES = PromoteSettings(min_accuracy=40.0, max_regression=5.0, max_format_error_rate=10.0, mode="agent")


def _items(n: int, right: int, offset: int = 0) -> dict[str, bool]:
    """n items, the ``right`` ones starting at ``offset`` (wrapping) correct."""
    return {f"q{i:03d}": (i - offset) % n < right for i in range(n)}


def _e(outcomes: dict[str, dict[str, bool]], fer: float | None = 0.0, version="v1", sr: float | None = None,
       run_id="r") -> EvalSummary:
    acc = {b: 100.0 * sum(o.values()) / len(o) for b, o in outcomes.items()}
    return EvalSummary(run_id=run_id, benchmarks_version=version, accuracy=acc, average=sum(acc.values()) / len(acc),
                       format_error_rate=fer, search_required_accuracy=sr, outcomes=outcomes)


def test_first_model_passes_on_its_own_numbers():
    d = check_gates(_e({"okvqa": _items(40, 20)}), None, GATES)
    assert d.promoted and d.status == "promoted" and "no champion yet" in d.reasons


def test_significantly_worse_is_refused_with_its_interval():
    champion = _e({"okvqa": _items(200, 160)})
    d = check_gates(_e({"okvqa": _items(200, 120)}), champion, GATES)  # 60% vs 80% on the same items
    assert d.status == "refused"
    assert len(d.reasons) == 1 and d.reasons[0].startswith("okvqa: challenger - champion = -20.00 points")
    assert "significantly worse" in d.reasons[0] and "n=200" in d.reasons[0]


def test_too_few_items_is_undecided_not_promoted():
    champion = _e({"okvqa": _items(4, 3)})
    d = check_gates(_e({"okvqa": _items(4, 2)}), champion, GATES)   # one item = 25 points
    assert d.status == "undecided" and not d.promoted
    assert "undecided" in d.reasons[0] and "n=4" in d.reasons[0]


def test_equal_or_better_on_many_items_passes():
    champion = _e({"okvqa": _items(400, 200)})
    same = check_gates(_e({"okvqa": _items(400, 200)}), champion, GATES)
    better = check_gates(_e({"okvqa": _items(400, 260)}), champion, GATES)
    assert same.promoted and better.promoted
    assert "not worse by more than 5.00" in better.reasons[-1]


def test_the_worst_benchmark_decides():
    champion = _e({"okvqa": _items(200, 100), "infoseek": _items(200, 100)})
    d = check_gates(_e({"okvqa": _items(200, 150), "infoseek": _items(200, 60)}), champion, GATES)
    assert d.status == "refused" and d.reasons[0].startswith("infoseek:")


def test_minimum_accuracy_search_required_floor_and_format_ceiling():
    gates = GATES.model_copy(update={"min_search_required_accuracy": 30.0})
    d = check_gates(_e({"okvqa": _items(40, 12)}, fer=25.0, sr=10.0), None, gates)
    assert d.status == "refused"
    assert d.reasons == ["average accuracy 30.00 < minimum 40.00",
                         "search-required accuracy 10.00 < minimum 30.00",
                         "format-error rate 25.00% > ceiling 10.00%"]


def test_missing_metrics_fail_their_gates():
    gates = GATES.model_copy(update={"min_search_required_accuracy": 30.0})
    d = check_gates(_e({"okvqa": _items(40, 30)}, fer=None, sr=None, run_id="r7"), None, gates)
    assert d.status == "refused"
    assert any("no format-error rate" in r and "r7" in r for r in d.reasons)
    assert any("no search-required accuracy" in r for r in d.reasons)
    no_samples = _e({"okvqa": _items(40, 30)}).model_copy(update={"outcomes": None, "run_id": "r8"})
    d = check_gates(no_samples, _e({"okvqa": _items(40, 30)}), GATES)
    assert d.status == "refused" and "r8 has no per-item samples" in d.reasons[0]


def test_different_benchmark_versions_are_not_compared():
    d = check_gates(_e({"okvqa": _items(40, 36)}, version="aaa"), _e({"okvqa": _items(40, 4)}, version="bbb"), GATES)
    assert not d.promoted and "benchmark versions differ" in d.reasons[0]
    assert "aaa" in d.reasons[0] and "bbb" in d.reasons[0]


def test_missing_mode_says_how_to_fix():
    d = check_gates(EvalSummary(run_id="r9", benchmarks_version="v", accuracy={}, average=None,
                                format_error_rate=None), None, GATES)
    assert not d.promoted and "--modes agent" in d.reasons[0] and "DMMS_PROMOTE__MODE" in d.reasons[0]


def test_reference_gate_refuses_only_a_significant_drop_from_where_training_started():
    sft = _e({"world": _items(200, 150)}, run_id="sft-run-1")
    worse = check_gates(_e({"world": _items(200, 110)}), None, GATES, reference=sft)
    assert worse.status == "refused" and len(worse.reasons) == 1
    assert "reference sft-run-" in worse.reasons[0] and "significantly worse" in worse.reasons[0]
    slightly = check_gates(_e({"world": _items(200, 148)}), None, GATES, reference=sft)
    assert slightly.promoted and any("not significantly worse" in r for r in slightly.reasons)
    other = check_gates(_e({"world": _items(200, 148)}, version="v2"), None, GATES, reference=sft)
    assert other.status == "refused" and "benchmark version" in other.reasons[0]
