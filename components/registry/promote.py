"""Promotion: register an evaluated checkpoint as ``challenger``; make it ``champion`` only through gates.

Why gates: what we serve must not get worse by accident. A challenger becomes champion only when
(1) its average accuracy in the gated mode (``DMMS_PROMOTE__MODE``, default agent) reaches
``DMMS_PROMOTE__MIN_ACCURACY``, (2) no benchmark is worse than the champion's by more than
``DMMS_PROMOTE__MAX_REGRESSION`` points, and (3) its share of samples with a format error is at most
``DMMS_PROMOTE__MAX_FORMAT_ERROR_RATE`` — and (2) is only judged when both evaluation runs carry the
SAME benchmark version (tag ``dmms.benchmarks_version`` written by the evaluation); otherwise the
promotion is refused and the reason says so. The decision and its reasons are recorded as tags on
the model version (``dmms.promotion.*``). ``rollback`` moves ``champion`` back along its history.

Built on :mod:`components.common.tracking` (register_checkpoint, set_alias, alias history).

    decision = promote(settings, eval_run_id, "s3://store/checkpoints/run1/final", manifest_sha)
    decision.promoted, decision.reasons
    rollback(settings)                     # champion -> the version it replaced
"""

from __future__ import annotations

import json
import logging

from mlflow.exceptions import MlflowException
from pydantic import BaseModel, Field

from components.common.settings import PromoteSettings, Settings
from components.common.tracking import (
    TrackingError,
    client,
    get_alias,
    previous_version,
    register_checkpoint,
    set_alias,
    set_version_tags,
)

log = logging.getLogger(__name__)
CHALLENGER, CHAMPION = "challenger", "champion"
EVAL_RUN_TAG = "dmms.eval_run_id"
BENCH_VERSION_TAG = "dmms.benchmarks_version"


class EvalSummary(BaseModel):
    """What the gates read from one evaluation run."""

    run_id: str
    benchmarks_version: str | None
    accuracy: dict[str, float] = Field(description="Per benchmark, in the gated mode.")
    average: float | None
    format_error_rate: float | None


class Decision(BaseModel):
    promoted: bool
    reasons: list[str]
    version: str | None = None
    champion_before: str | None = None


def read_eval(settings: Settings, run_id: str, mode: str) -> EvalSummary:
    """The gated mode's numbers and the benchmark version of an evaluation run."""
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
                       format_error_rate=m.get(f"format_error_rate.all.{mode}"))


def check_gates(challenger: EvalSummary, champion: EvalSummary | None, gates: PromoteSettings) -> Decision:
    """Pure: does ``challenger`` pass the gates against ``champion`` (None: no champion yet)?"""
    reasons: list[str] = []
    if challenger.average is None:
        return Decision(promoted=False, reasons=[
            f"evaluation run {challenger.run_id} has no '{gates.mode}' metrics: evaluate with --modes "
            f"{gates.mode}, or set DMMS_PROMOTE__MODE to a mode it ran"])
    if challenger.average < gates.min_accuracy:
        reasons.append(f"average accuracy {challenger.average:.2f} < minimum {gates.min_accuracy:.2f}")
    fer = challenger.format_error_rate or 0.0
    if fer > gates.max_format_error_rate:
        reasons.append(f"format-error rate {fer:.2f}% > ceiling {gates.max_format_error_rate:.2f}%")
    if champion is not None:
        if not challenger.benchmarks_version or challenger.benchmarks_version != champion.benchmarks_version:
            return Decision(promoted=False, reasons=[
                f"benchmark versions differ: challenger evaluated on {challenger.benchmarks_version}, "
                f"champion on {champion.benchmarks_version}; accuracies on different benchmark versions "
                f"are not comparable: evaluate both on the same benchmarks", *reasons])
        for bench, acc in sorted(challenger.accuracy.items()):
            ref = champion.accuracy.get(bench)
            if ref is not None and acc < ref - gates.max_regression:
                reasons.append(f"{bench}: accuracy {acc:.2f} is {ref - acc:.2f} points below the champion's "
                               f"{ref:.2f} (allowed: {gates.max_regression:.2f})")
    if reasons:
        return Decision(promoted=False, reasons=reasons)
    passed = [f"average accuracy {challenger.average:.2f} >= {gates.min_accuracy:.2f}",
              f"format-error rate {fer:.2f}% <= {gates.max_format_error_rate:.2f}%"]
    passed.append("no champion yet" if champion is None else
                  f"no benchmark more than {gates.max_regression:.2f} points below the champion "
                  f"(same benchmark version {challenger.benchmarks_version})")
    return Decision(promoted=True, reasons=passed)


def _champion_eval(settings: Settings, mode: str) -> tuple[str | None, EvalSummary | None]:
    current = get_alias(settings, CHAMPION)
    if current is None:
        return None, None
    run_id = current.tags.get(EVAL_RUN_TAG) or current.run_id
    return str(current.version), read_eval(settings, run_id, mode)


def promote(settings: Settings, eval_run_id: str, checkpoint_uri: str,
            manifest_sha256: str | None = None) -> Decision:
    """Register the checkpoint with its eval run, alias it challenger, gate it, maybe crown it."""
    gates = settings.promote
    challenger = read_eval(settings, eval_run_id, gates.mode)
    champion_version, champion = _champion_eval(settings, gates.mode)
    version = register_checkpoint(settings, eval_run_id, checkpoint_uri, manifest_sha256, tags={
        EVAL_RUN_TAG: eval_run_id, BENCH_VERSION_TAG: challenger.benchmarks_version or ""})
    set_alias(settings, CHALLENGER, version)
    decision = check_gates(challenger, champion, gates)
    decision = decision.model_copy(update={"version": version, "champion_before": champion_version})
    set_version_tags(settings, version, {
        "dmms.promotion.decision": "promoted" if decision.promoted else "refused",
        "dmms.promotion.reasons": json.dumps(decision.reasons),
        "dmms.promotion.compared_to": champion_version or "none",
        "dmms.promotion.gates": gates.model_dump_json()})
    if decision.promoted:
        set_alias(settings, CHAMPION, version)
    log.info("version %s: %s (%s)", version, "promoted to champion" if decision.promoted else "refused",
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
    return str(current.version), target
