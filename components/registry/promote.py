"""Promotion: register an evaluated checkpoint as ``challenger``; make it ``champion`` only through gates.

Why gates: what we serve must not get worse by accident, and a gate that cannot fail protects
nothing. A challenger becomes champion only when, in the gated mode (``DMMS_PROMOTE__MODE``,
default agent):

1. its average accuracy reaches ``DMMS_PROMOTE__MIN_ACCURACY`` and its accuracy on search-required
   questions reaches ``DMMS_PROMOTE__MIN_SEARCH_REQUIRED_ACCURACY``;
2. its share of samples with a format error is at most ``DMMS_PROMOTE__MAX_FORMAT_ERROR_RATE``;
3. against the champion, on the SAME benchmark version, per benchmark, a paired bootstrap over the
   items both answered (:func:`components.common.stats.paired_diff`) of challenger − champion:
   interval wholly below 0 → significantly worse, **refused**; interval above
   ``-DMMS_PROMOTE__MAX_REGRESSION`` → not worse by more than the margin, passes; otherwise the
   sample is too small to tell → **undecided**, not promoted.

A metric the gates need that the run lacks (the mode, the format-error rate, the per-item
samples) fails its gate with the reason. The decision (``promoted`` / ``refused`` / ``undecided``)
and its reasons are tags on the model version (``dmms.promotion.*``). ``rollback`` moves
``champion`` back along its history.

Built on :mod:`components.common.tracking` (register_checkpoint, set_alias, alias history).

    decision = promote(settings, eval_run_id, "s3://store/checkpoints/run1/final", manifest_sha)
    decision.status, decision.reasons
    rollback(settings)                     # champion -> the version it replaced
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Literal

from mlflow.exceptions import MlflowException
from pydantic import BaseModel, Field, computed_field

from components.common.settings import PromoteSettings, Settings
from components.common.stats import paired_diff
from components.common.tracking import (
    TrackingError,
    client,
    get_alias,
    previous_version,
    register_checkpoint,
    resolve_alias,
    set_alias,
    set_version_tags,
)
from components.registry.serving import ServingError, update_serving

log = logging.getLogger(__name__)
CHALLENGER, CHAMPION = "challenger", "champion"
EVAL_RUN_TAG = "dmms.eval_run_id"
BENCH_VERSION_TAG = "dmms.benchmarks_version"
SAMPLES_ARTIFACT = "evaluation/samples.jsonl"  # written by components/evaluate/run.py


class EvalSummary(BaseModel):
    """What the gates read from one evaluation run."""

    run_id: str
    benchmarks_version: str | None
    accuracy: dict[str, float] = Field(description="Per benchmark, in the gated mode.")
    average: float | None
    format_error_rate: float | None
    search_required_accuracy: float | None = None
    outcomes: dict[str, dict[str, bool]] | None = Field(
        None, description="Per benchmark: item id -> judged correct, in the gated mode (samples.jsonl).")


class Decision(BaseModel):
    status: Literal["promoted", "refused", "undecided"]
    reasons: list[str]
    version: str | None = None
    champion_before: str | None = None

    @computed_field
    @property
    def promoted(self) -> bool:
        return self.status == "promoted"


def _outcomes(settings: Settings, run_id: str, mode: str) -> dict[str, dict[str, bool]] | None:
    """Per-item verdicts of the gated mode from the run's ``evaluation/samples.jsonl``; None if absent."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client(settings).download_artifacts(run_id, SAMPLES_ARTIFACT, tmp)
            lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (MlflowException, OSError) as exc:
        log.warning("run %s: no %s (%s)", run_id, SAMPLES_ARTIFACT, exc)
        return None
    out: dict[str, dict[str, bool]] = {}
    for line in lines:
        if line.strip():
            row = json.loads(line)
            if row.get("mode") == mode:
                out.setdefault(row["benchmark"], {})[row["item_id"]] = bool(row.get("correct"))
    return out


def read_eval(settings: Settings, run_id: str, mode: str) -> EvalSummary:
    """The gated mode's numbers, per-item verdicts and the benchmark version of an evaluation run."""
    try:
        run = client(settings).get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"no MLflow run {run_id!r} at {settings.tracking.uri}: pass the run id "
                            f"that `dmms evaluate` printed") from exc
    m, tags = run.data.metrics, run.data.tags
    if tags.get("dmms.step") != "evaluate":
        raise TrackingError(f"run {run_id} is not an evaluation run (dmms.step={tags.get('dmms.step')!r})")
    acc = {k.split(".")[1]: v for k, v in m.items()
           if k.startswith("accuracy.") and k.endswith(f".{mode}") and k.count(".") == 2
           and k.split(".")[1] != "avg"}
    return EvalSummary(run_id=run_id, benchmarks_version=tags.get(BENCH_VERSION_TAG), accuracy=acc,
                       average=m.get(f"accuracy.avg.{mode}"),
                       format_error_rate=m.get(f"format_error_rate.all.{mode}"),
                       search_required_accuracy=m.get(f"split/accuracy/search_required/{mode}"),
                       outcomes=_outcomes(settings, run_id, mode))


def _absolute_gates(c: EvalSummary, gates: PromoteSettings) -> tuple[list[str], list[str]]:
    """(failures, passes) of the gates that read the challenger alone."""
    bad: list[str] = []
    good: list[str] = []
    if c.average < gates.min_accuracy:
        bad.append(f"average accuracy {c.average:.2f} < minimum {gates.min_accuracy:.2f}")
    else:
        good.append(f"average accuracy {c.average:.2f} >= {gates.min_accuracy:.2f}")
    if gates.min_search_required_accuracy > 0:
        sr = c.search_required_accuracy
        if sr is None:
            bad.append(f"no search-required accuracy in run {c.run_id} (no item labelled requires_search): "
                       f"the {gates.min_search_required_accuracy:.2f} floor cannot be checked")
        elif sr < gates.min_search_required_accuracy:
            bad.append(f"search-required accuracy {sr:.2f} < minimum {gates.min_search_required_accuracy:.2f}")
        else:
            good.append(f"search-required accuracy {sr:.2f} >= {gates.min_search_required_accuracy:.2f}")
    fer = c.format_error_rate
    if fer is None:
        bad.append(f"run {c.run_id} has no format-error rate for '{gates.mode}' (metric "
                   f"format_error_rate.all.{gates.mode}): re-run the evaluation")
    elif fer > gates.max_format_error_rate:
        bad.append(f"format-error rate {fer:.2f}% > ceiling {gates.max_format_error_rate:.2f}%")
    else:
        good.append(f"format-error rate {fer:.2f}% <= {gates.max_format_error_rate:.2f}%")
    return bad, good


def _regression_gate(c: EvalSummary, champ: EvalSummary, gates: PromoteSettings) -> tuple[list[str], list[str], list[str]]:
    """(refusals, undecided, passes) of the paired comparison with the champion, per benchmark."""
    if c.outcomes is None or champ.outcomes is None:
        which = c.run_id if c.outcomes is None else champ.run_id
        return [f"run {which} has no per-item samples ({SAMPLES_ARTIFACT}): the paired comparison with "
                f"the champion cannot be made"], [], []
    refused, undecided, passed = [], [], []
    margin, level = gates.max_regression, gates.confidence
    for bench in sorted(c.accuracy):
        mine, theirs = c.outcomes.get(bench, {}), champ.outcomes.get(bench)
        if not theirs:
            passed.append(f"{bench}: the champion was not scored on it")
            continue
        d = paired_diff(mine, theirs, level=level)
        what = (f"{bench}: challenger - champion = {d.diff:+.2f} points, {level:.0%} paired-bootstrap "
                f"interval [{d.lo:+.2f}, {d.hi:+.2f}] over n={d.n}")
        if d.n == 0:
            refused.append(f"{bench}: no item in common with the champion's evaluation")
        elif d.hi < 0:
            refused.append(f"{what}: significantly worse")
        elif d.lo >= -margin:
            passed.append(f"{what}: not worse by more than {margin:.2f}")
        else:
            undecided.append(f"{what}: undecided, a drop of more than {margin:.2f} points is not ruled out "
                             f"(evaluate on more items)")
    return refused, undecided, passed


def _reference_gate(c: EvalSummary, ref: EvalSummary, gates: PromoteSettings) -> tuple[list[str], list[str]]:
    """(refusals, passes) against the checkpoint this one was trained from (GRPO's SFT start):
    refused only when significantly worse on some benchmark of the same benchmark version."""
    if c.benchmarks_version != ref.benchmarks_version:
        return [f"reference run {ref.run_id} was evaluated on benchmark version {ref.benchmarks_version}, the "
                f"challenger on {c.benchmarks_version}: evaluate both on the same benchmarks"], []
    if c.outcomes is None or ref.outcomes is None:
        which = c.run_id if c.outcomes is None else ref.run_id
        return [f"run {which} has no per-item samples ({SAMPLES_ARTIFACT}): the paired comparison with the "
                f"reference cannot be made"], []
    refused, passed = [], []
    for bench in sorted(c.accuracy):
        d = paired_diff(c.outcomes.get(bench, {}), ref.outcomes.get(bench, {}), level=gates.confidence)
        what = (f"{bench}: challenger - reference {ref.run_id[:8]} = {d.diff:+.2f} points, {gates.confidence:.0%} "
                f"interval [{d.lo:+.2f}, {d.hi:+.2f}] over n={d.n}")
        (refused if d.n and d.hi < 0 else passed).append(
            f"{what}: {'significantly worse' if d.n and d.hi < 0 else 'not significantly worse'}")
    return refused, passed


def check_gates(challenger: EvalSummary, champion: EvalSummary | None, gates: PromoteSettings,
                reference: EvalSummary | None = None) -> Decision:
    """Pure: does ``challenger`` pass the gates against ``champion`` (None: no champion yet) and,
    when given, the ``reference`` it was trained from (not significantly worse)?"""
    if challenger.average is None:
        return Decision(status="refused", reasons=[
            f"evaluation run {challenger.run_id} has no '{gates.mode}' metrics: evaluate with --modes "
            f"{gates.mode}, or set DMMS_PROMOTE__MODE to a mode it ran"])
    refused, passed = _absolute_gates(challenger, gates)
    undecided: list[str] = []
    if reference is not None:
        r, p = _reference_gate(challenger, reference, gates)
        refused, passed = refused + r, passed + p
    if champion is None:
        passed.append("no champion yet")
    elif not challenger.benchmarks_version or challenger.benchmarks_version != champion.benchmarks_version:
        refused.insert(0, f"benchmark versions differ: challenger evaluated on {challenger.benchmarks_version}, "
                          f"champion on {champion.benchmarks_version}; accuracies on different benchmark "
                          f"versions are not comparable: evaluate both on the same benchmarks")
    else:
        r, u, p = _regression_gate(challenger, champion, gates)
        refused, undecided, passed = refused + r, u, passed + p
    if refused:
        return Decision(status="refused", reasons=refused + undecided)
    if undecided:
        return Decision(status="undecided", reasons=undecided)
    return Decision(status="promoted", reasons=passed)


def _champion_eval(settings: Settings, mode: str) -> tuple[str | None, EvalSummary | None]:
    current = get_alias(settings, CHAMPION)
    if current is None:
        return None, None
    run_id = current.tags.get(EVAL_RUN_TAG) or current.run_id
    return str(current.version), read_eval(settings, run_id, mode)


def promote(settings: Settings, eval_run_id: str, checkpoint_uri: str,
            manifest_sha256: str | None = None, reference_eval_run_id: str | None = None) -> Decision:
    """Register the checkpoint with its eval run, alias it challenger, gate it, maybe crown it.
    ``reference_eval_run_id``: the evaluation of the checkpoint it was trained from (RL's SFT start),
    which it must not be significantly worse than."""
    gates = settings.promote
    challenger = read_eval(settings, eval_run_id, gates.mode)
    reference = read_eval(settings, reference_eval_run_id, gates.mode) if reference_eval_run_id else None
    champion_version, champion = _champion_eval(settings, gates.mode)
    version = register_checkpoint(settings, eval_run_id, checkpoint_uri, manifest_sha256, tags={
        EVAL_RUN_TAG: eval_run_id, BENCH_VERSION_TAG: challenger.benchmarks_version or ""})
    set_alias(settings, CHALLENGER, version)
    decision = check_gates(challenger, champion, gates, reference)
    decision = decision.model_copy(update={"version": version, "champion_before": champion_version})
    set_version_tags(settings, version, {
        "dmms.promotion.decision": decision.status,
        "dmms.promotion.reasons": json.dumps(decision.reasons),
        "dmms.promotion.compared_to": champion_version or "none",
        "dmms.promotion.reference_eval_run": reference_eval_run_id or "none",
        "dmms.promotion.gates": gates.model_dump_json()})
    if decision.promoted:
        # the server first: if it cannot be pointed at the new version, the champion does not move
        update_serving(settings, checkpoint_uri, version)
        set_alias(settings, CHAMPION, version)
    log.info("version %s: %s (%s)", version, "promoted to champion" if decision.promoted else decision.status,
             "; ".join(decision.reasons))
    return decision


def rollback(settings: Settings) -> tuple[str, str]:
    """Move ``champion`` to the version it replaced; return (from, to). Repeated rollbacks walk further back."""
    current = get_alias(settings, CHAMPION)
    if current is None:
        raise TrackingError(f"model {settings.tracking.model_name!r} has no champion to roll back")
    target = previous_version(settings, CHAMPION)
    if target is None:
        raise TrackingError(f"champion version {current.version} replaced no earlier version: nothing to "
                            f"roll back to")
    mlc, name = client(settings), settings.tracking.model_name
    # set_alias tags the target with the version it replaces (the rolled-back one); keep the target's
    # own predecessor instead, so a second rollback goes further back rather than undoing this one.
    own_prev = mlc.get_model_version(name, target).tags.get(f"dmms.previous_{CHAMPION}")
    set_alias(settings, CHAMPION, target)
    if own_prev is not None:
        mlc.set_model_version_tag(name, target, f"dmms.previous_{CHAMPION}", own_prev)
    else:
        mlc.delete_model_version_tag(name, target, f"dmms.previous_{CHAMPION}")
    set_version_tags(settings, current.version, {"dmms.promotion.rolled_back": "true",
                                                 "dmms.promotion.rolled_back_to": target})
    log.info("rolled champion back: %s -> %s", current.version, target)
    sync_serving(settings)
    return str(current.version), target


def sync_serving(settings: Settings) -> dict | None:
    """Point the serving object at the current champion (after a rollback; ``dmms serve sync``)."""
    pointer = resolve_alias(settings, CHAMPION)
    try:
        return update_serving(settings, pointer.checkpoint_uri, pointer.version)
    except ServingError as exc:
        raise ServingError(f"{exc}; the registry's champion is version {pointer.version}: fix that and run "
                           "`dmms serve sync`") from exc
