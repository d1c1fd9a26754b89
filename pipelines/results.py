"""The results of a local pipeline run, as a person reads them: before/after table + ``results.json``.

Why: ``make run`` must show that training worked — the base, SFT and RL checkpoints side by side,
in agent mode and with tools off (direct), on the same benchmark version, each accuracy with its n
and 95% bootstrap interval, split into search-required and search-free questions — and say what
the promotion gates decided. Everything is read back from MLflow (the evaluation runs this pipeline
run made, tagged ``dmms.checkpoint``), so the table is what the tracking server holds.

    results = collect_results(settings, since_ms=t0_ms, wall_s={"data": 12.0})
    text = format_table(results); write_results(results, Path(".dmms/results.json"))

``results.json``: ``{"rows": [{"checkpoint", "mode", "split", "n", "accuracy", "ci95", "searches_per_question",
"search_decision", "format_error_rate", "copy_rate"}], "wall_s": {step: s}, "champion": {"version", "checkpoint_uri",
"decision", "reasons"}}`` (accuracy in %, rates in [0, 1]; ``copy_rate``: the share of agent trajectories
whose first text query holds the name the image search returned, None where no trajectory applies).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.common.settings import Settings

CHECKPOINTS = ("base", "sft", "rl")
MODES = ("agent", "direct")
SPLITS = ("all", "search_required", "search_free")


def _rows(metrics: dict[str, float], checkpoint: str) -> list[dict[str, Any]]:
    rows = []
    for mode in MODES:
        for split in SPLITS:
            def m(field: str, mode: str = mode, split: str = split) -> float | None:
                return metrics.get(f"split/{field}/{split}/{mode}")
            if m("n") is None:
                continue
            rows.append({"checkpoint": checkpoint, "mode": mode, "split": split, "n": int(m("n")),
                         "accuracy": round(m("accuracy"), 2), "ci95": [round(m("ci95_lo"), 2), round(m("ci95_hi"), 2)],
                         "searches_per_question": round(m("searches_per_question"), 3),
                         "search_decision": round(m("search_decision"), 4),
                         "format_error_rate": round(m("format_error_rate"), 4),
                         "copy_rate": None if m("copy_rate") is None else round(m("copy_rate"), 4)})
    return rows


def collect_results(settings: Settings, since_ms: int, wall_s: dict[str, float] | None = None) -> dict[str, Any]:
    """Rows of every evaluation run started since ``since_ms`` (newest per checkpoint label), the
    wall time of every tracked step, and the promotion decision on the RL checkpoint."""
    from components.common.tracking import client

    mlc = client(settings)
    out: dict[str, Any] = {"rows": [], "wall_s": dict(wall_s or {}), "champion": {}}
    exp = mlc.get_experiment_by_name(settings.tracking.experiment)
    if exp is None:
        return out
    runs = mlc.search_runs([exp.experiment_id], f"attributes.start_time >= {since_ms}",
                           order_by=["attributes.start_time ASC"])
    evals: dict[str, Any] = {}
    for run in runs:
        step = run.data.tags.get("dmms.step", "")
        label = run.data.tags.get("dmms.checkpoint", "")
        key = f"{step}-{label}" if step == "evaluate" and label else step
        if run.info.end_time and step:
            out["wall_s"][key] = round((run.info.end_time - run.info.start_time) / 1000.0, 1)
        if step == "evaluate":
            evals[label or "model"] = run
    for label in (*CHECKPOINTS, *(k for k in evals if k not in CHECKPOINTS)):
        if label in evals:
            out["rows"] += _rows(evals[label].data.metrics, label)
    rl = evals.get("rl") or (list(evals.values())[-1] if evals else None)
    if rl is not None:
        for v in mlc.search_model_versions(f"name = '{settings.tracking.model_name}'"):
            if v.tags.get("dmms.eval_run_id") == rl.info.run_id:
                out["champion"] = {"version": int(v.version), "checkpoint_uri": v.tags.get("dmms.checkpoint_uri", ""),
                                   "decision": v.tags.get("dmms.promotion.decision", ""),
                                   "reasons": json.loads(v.tags.get("dmms.promotion.reasons", "[]"))}
        out["eval_run_id"] = rl.info.run_id
    return out


def format_table(results: dict[str, Any]) -> str:
    """A fixed-width table of the rows, then the promotion decision and its reasons."""
    head = f"{'checkpoint':<10} {'mode':<6} {'split':<15} {'n':>4} {'accuracy':>8}  {'95% CI':<14} " \
           f"{'searches/q':>10} {'decision':>8} {'format err':>10} {'copied':>6}"
    lines = [head, "-" * len(head)]
    for r in results["rows"]:
        ci = f"[{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]"
        lines.append(f"{r['checkpoint']:<10} {r['mode']:<6} {r['split']:<15} {r['n']:>4} {r['accuracy']:>8.1f}  "
                     f"{ci:<14} {r['searches_per_question']:>10.2f} {r['search_decision']:>8.0%} "
                     f"{r['format_error_rate']:>10.0%} "
                     f"{'' if r.get('copy_rate') is None else format(r['copy_rate'], '.0%'):>6}")
    c = results.get("champion") or {}
    if c:
        lines.append(f"\npromotion of the RL checkpoint (model version {c['version']}): {c['decision'].upper()}")
        lines += [f"  - {reason}" for reason in c["reasons"]]
    if results.get("wall_s"):
        lines.append("\nwall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["wall_s"].items()))
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
    tmp.replace(path)
    return path
