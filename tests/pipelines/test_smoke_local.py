"""The smoke pipeline end to end through the KFP local runner: ``dmms run --pipeline smoke``.

Every step really runs (SubprocessRunner, this environment): the offline world, its index, a
tool-server on a free loopback port, datagen with the oracle teacher, SFT and GRPO of the tiny model,
evaluation and promotion in the local MLflow registry (SQLite) — with small numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from components.common.storage import MANIFEST

DMMS = str(Path(sys.executable).parent / "dmms")


def test_dmms_run_smoke_end_to_end(tmp_path):
    env = {**os.environ, "DMMS_SFT__COPY_PRETRAIN_STEPS": "5", "DMMS_GRPO__MAX_STEPS": "2"}  # the mechanism, not the recipe
    out = subprocess.run([DMMS, "run", "--pipeline", "smoke", "--param", "n_entities=20", "--param", "datagen_n=4",
                          "--param", "eval_limit=2"], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "| Mode |" in out.stdout and "| rag |" in out.stdout and "| agent |" in out.stdout  # the table
    assert "eval run" in out.stdout and "promotion:" in out.stdout

    db = f"sqlite:///{tmp_path}/.dmms/mlflow.db"
    mlc = MlflowClient(tracking_uri=db, registry_uri=db)  # both: never MLflow's process-wide registry
    exp = mlc.get_experiment_by_name("deepmmsearch")
    runs = mlc.search_runs([exp.experiment_id])
    steps = {r.data.tags["dmms.step"]: r for r in runs}
    assert set(steps) == {"datagen", "sft", "grpo", "evaluate"}
    assert all(r.info.status == "FINISHED" for r in runs)
    # one KFP run id (the main stage's) tags every step's MLflow run
    assert len({r.data.tags["dmms.kfp_run_id"] for r in runs}) == 1

    store = tmp_path / ".dmms" / "store"
    grpo_uri = steps["grpo"].data.tags["dmms.checkpoint_uri"]  # relative to the run's folder
    grpo_final = tmp_path / grpo_uri
    assert (grpo_final / MANIFEST).is_file() and grpo_final.parent.parent == store / "checkpoints"
    assert steps["evaluate"].data.tags["dmms.model_uri"] == grpo_uri  # GRPO's output was evaluated
    assert {"accuracy.avg.direct", "accuracy.avg.rag", "accuracy.avg.agent"} <= set(steps["evaluate"].data.metrics)

    # promotion registered the GRPO checkpoint and, there being no champion yet and the tiny
    # profile's gates being the mechanism-only ones (profiles/tiny.yaml), crowned it champion
    (version,) = mlc.search_model_versions("name = 'deepmmsearch-agent'")
    assert version.tags["dmms.eval_run_id"] == steps["evaluate"].info.run_id
    assert version.tags["dmms.promotion.decision"] == "promoted", version.tags
    assert json.loads(version.tags["dmms.promotion.reasons"])
    assert mlc.get_model_version_by_alias("deepmmsearch-agent", "challenger").version == version.version
    assert mlc.get_model_version_by_alias("deepmmsearch-agent", "champion").version == version.version
