"""Promotion gates as a pure function: each gate refuses with a reason that names the numbers."""

from __future__ import annotations

from components.common.settings import PromoteSettings
from components.registry.promote import EvalSummary, check_gates

GATES = PromoteSettings(min_accuracy=40.0, max_regression=2.0, max_format_error_rate=10.0, mode="agent")


def _e(avg, acc, fer=0.0, version="v1") -> EvalSummary:
    return EvalSummary(run_id="r", benchmarks_version=version, accuracy=acc, average=avg, format_error_rate=fer)


def test_first_model_passes_on_its_own_numbers():
    d = check_gates(_e(50.0, {"okvqa": 50.0}), None, GATES)
    assert d.promoted and "no champion yet" in d.reasons


def test_regression_beyond_margin_is_refused_and_named():
    champion = _e(60.0, {"okvqa": 60.0, "infoseek": 60.0})
    d = check_gates(_e(61.0, {"okvqa": 57.5, "infoseek": 64.5}), champion, GATES)
    assert not d.promoted
    assert d.reasons == ["okvqa: accuracy 57.50 is 2.50 points below the champion's 60.00 (allowed: 2.00)"]
    assert check_gates(_e(61.0, {"okvqa": 58.5, "infoseek": 63.5}), champion, GATES).promoted  # within margin


def test_minimum_accuracy_and_format_error_ceiling():
    d = check_gates(_e(30.0, {"okvqa": 30.0}, fer=25.0), None, GATES)
    assert not d.promoted
    assert d.reasons == ["average accuracy 30.00 < minimum 40.00", "format-error rate 25.00% > ceiling 10.00%"]


def test_different_benchmark_versions_are_not_compared():
    d = check_gates(_e(90.0, {"okvqa": 90.0}, version="aaa"), _e(10.0, {"okvqa": 10.0}, version="bbb"), GATES)
    assert not d.promoted and "benchmark versions differ" in d.reasons[0]
    assert "aaa" in d.reasons[0] and "bbb" in d.reasons[0]


def test_missing_mode_says_how_to_fix():
    d = check_gates(EvalSummary(run_id="r9", benchmarks_version="v", accuracy={}, average=None,
                                format_error_rate=None), None, GATES)
    assert not d.promoted and "--modes agent" in d.reasons[0] and "DMMS_PROMOTE__MODE" in d.reasons[0]
