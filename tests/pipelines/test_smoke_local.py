"""The smoke pipeline end to end through the KFP local runner: ``dmms run --pipeline smoke``.

Every step really runs (SubprocessRunner, this environment): the offline world, its index, a
tool-server on a free loopback port, datagen with the oracle teacher, SFT and GRPO of the tiny model,
evaluation of the base, SFT and RL checkpoints, and promotion in the local MLflow registry (SQLite)
— with small numbers, so this checks the plumbing; whether the model learns is make run's table."""

import json
import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from components.common.storage import MANIFEST

DMMS = str(Path(sys.executable).parent / "dmms")


def test_dmms_run_smoke_end_to_end(tmp_path):
    env = {**os.environ, "DMMS_SFT__COPY_PRETRAIN_STEPS": "5", "DMMS_SFT__VISION_PRETRAIN_STEPS": "5",
           "DMMS_SFT__VISUAL_PRETRAIN_STEPS": "5", "DMMS_GRPO__MAX_STEPS": "2"}  # the mechanism, not the recipe
    out = subprocess.run([DMMS, "run", "--pipeline", "smoke", "--param", "n_entities=20", "--param", "datagen_n=4",
                          "--param", "eval_limit=2", "--param", "modes=direct,rag,agent"], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "| Mode |" in out.stdout and "| rag |" in out.stdout and "| agent |" in out.stdout  # the table
    assert "eval run" in out.stdout and "promotion of the RL checkpoint" in out.stdout
    assert "checkpoint mode" in out.stdout and "95% CI" in out.stdout  # the before/after table
    # one line per step on the terminal, every step's output in the log file it names
    assert len(out.stdout.splitlines()) <= 80, out.stdout
    assert any(line.split()[:2] == ["datagen-op", "SUCCESS"] for line in out.stdout.splitlines())
    log_path = Path(out.stdout.split("step logs: ")[1].split()[0])
    assert log_path.is_file() and "Executing task" in log_path.read_text()
    results = json.loads((tmp_path / ".dmms" / "results.json").read_text())
    assert {(r["checkpoint"], r["mode"]) for r in results["rows"]} == {
        (c, m) for c in ("base", "sft", "rl") for m in ("agent", "direct")}
    for r in results["rows"]:
        assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] and 0.0 <= r["format_error_rate"] <= 1.0
    assert {"data", "main", "total", "datagen", "sft", "grpo", "evaluate-rl"} <= set(results["wall_s"])

    db = f"sqlite:///{tmp_path}/.dmms/mlflow.db"
    mlc = MlflowClient(tracking_uri=db, registry_uri=db)  # both: never MLflow's process-wide registry
    exp = mlc.get_experiment_by_name("deepmmsearch")
    runs = mlc.search_runs([exp.experiment_id])
    steps = {r.data.tags["dmms.step"] + (f"-{r.data.tags['dmms.checkpoint']}" if "dmms.checkpoint" in r.data.tags
                                        else ""): r for r in runs}
    assert set(steps) == {"datagen", "sft", "grpo", "evaluate-base", "evaluate-sft", "evaluate-rl"}
    assert all(r.info.status == "FINISHED" for r in runs)
    # one KFP run id (the main stage's) tags every step's MLflow run
    assert len({r.data.tags["dmms.kfp_run_id"] for r in runs}) == 1

    store = tmp_path / ".dmms" / "store"
    grpo_uri = steps["grpo"].data.tags["dmms.checkpoint_uri"]  # relative to the run's folder
    grpo_final = tmp_path / grpo_uri
    assert (grpo_final / MANIFEST).is_file() and grpo_final.parent.parent == store / "checkpoints"
    assert steps["evaluate-rl"].data.tags["dmms.model_uri"] == grpo_uri  # GRPO's output was evaluated
    assert steps["evaluate-sft"].data.tags["dmms.model_uri"] == steps["sft"].data.tags["dmms.checkpoint_uri"]
    assert {"accuracy.avg.direct", "accuracy.avg.rag", "accuracy.avg.agent"} <= set(steps["evaluate-rl"].data.metrics)
    # the RL report shows the SFT loss and GRPO reward curves of the runs that trained it
    rl_tags = steps["evaluate-rl"].data.tags
    assert rl_tags["dmms.training_run.sft"] == steps["sft"].info.run_id
    assert rl_tags["dmms.training_run.grpo"] == steps["grpo"].info.run_id
    plots = {a.path for a in mlc.list_artifacts(steps["evaluate-rl"].info.run_id, "evaluation/plots")}
    assert "evaluation/plots/training_curves.png" in plots
    versions = {r.data.tags["dmms.benchmarks_version"] for k, r in steps.items() if k.startswith("evaluate")}
    assert len(versions) == 1  # the same benchmark version before and after

    # promotion registered the GRPO checkpoint against the real tiny gates (profiles/tiny.yaml) and the
    # SFT evaluation as its reference; with these small numbers the decision is what the gates say
    (version,) = mlc.search_model_versions("name = 'deepmmsearch-agent'")
    assert version.tags["dmms.eval_run_id"] == steps["evaluate-rl"].info.run_id
    assert version.tags["dmms.promotion.reference_eval_run"] == steps["evaluate-sft"].info.run_id
    decision = version.tags["dmms.promotion.decision"]
    reasons = json.loads(version.tags["dmms.promotion.reasons"])
    assert decision in ("promoted", "refused", "undecided") and reasons
    assert results["champion"] == {"version": int(version.version), "decision": decision, "reasons": reasons,
                                   "checkpoint_uri": version.tags["dmms.checkpoint_uri"]}
    assert mlc.get_model_version_by_alias("deepmmsearch-agent", "challenger").version == version.version
