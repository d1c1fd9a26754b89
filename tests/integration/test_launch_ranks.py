"""Two real training ranks on the CPU: the multi-GPU path of the SFT step, end to end, without a GPU.

With ``pipelines.gpu_count=2`` the SFT step (``components.sft.train.train_step``) does not train in
its own process: it runs ``accelerate launch`` with two ranks (on a CPU accelerate runs them as
MULTI_CPU: gloo DDP), each rank runs ``python -m components.sft.train``, and the step returns what
rank 0 published. Proves: the ranks really trained together (each optimizer step consumed
2 x per-device rows), exactly one MLflow run and one final checkpoint exist (rank 0 only), the
final weights differ from the base, and a rank's failure fails the step with its exit code.

A GPU run adds NCCL and FSDP sharding (accelerate has no FSDP on a CPU); the FSDP config and the
8-rank command line of the ``paper`` profile are asserted in tests/unit/common/test_launch.py.
Run: ``.venv/bin/python -m pytest -q tests/integration/test_launch_ranks.py``
"""

from __future__ import annotations

import math

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from components.agent.models import ensure_model
from components.common.launch import RESULT_FILE, LaunchError
from components.common.settings import load_settings
from components.common.storage import MANIFEST, fetch_version, join_uri, open_store, verify_version
from components.sft.train import train_step
from tests.unit.sft.test_train import publish_train_set

ROWS, BATCH, RANKS = 16, 2, 2


@pytest.fixture()
def two_rank_env(tmp_path, monkeypatch):
    """The settings every rank loads from its env (the ranks are fresh processes)."""
    env = {
        "DMMS_PROFILE": "tiny",
        "DMMS_STORAGE__ROOT": str(tmp_path / "store"),
        "DMMS_TRACKING__URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "DMMS_MODEL__NAME_OR_PATH": str(tmp_path / "models" / "tiny"),
        "DMMS_MODEL__DEVICE": "cpu",
        "DMMS_PIPELINES__GPU_COUNT": str(RANKS),
        "DMMS_SFT__EPOCHS": "1",
        "DMMS_SFT__BATCH_SIZE": str(BATCH),
        "DMMS_SFT__GRAD_ACCUM": "1",
        "DMMS_SFT__SAVE_STEPS": "1000",
        "DMMS_SFT__LEARNING_RATE": "0.005",
        "DMMS_SFT__COUNTERFACTUAL_SHARE": "0",
        "DMMS_SFT__DIRECT_SHARE": "0",
        "DMMS_SFT__MAX_LENGTH": "2048",
        "DMMS_SFT__GROUP_BY_LENGTH": "false",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return tmp_path


def test_two_cpu_ranks_train_one_model_and_rank_zero_publishes(two_rank_env):
    settings = load_settings()
    base = ensure_model(settings)
    data = publish_train_set(settings, n=ROWS)
    out = open_store(settings).uri("checkpoints", "two-ranks")

    result = train_step(settings, data.uri, base, out)

    store = open_store(settings)
    assert result.final_uri == join_uri(out, "final")
    verify_version(store, result.final_uri)  # complete, every part matches its manifest
    assert store.exists(join_uri(out, RESULT_FILE))
    # DDP: each optimizer step took BATCH rows on each of the two ranks
    assert result.global_step == math.ceil(ROWS / (BATCH * RANKS))
    runs = MlflowClient(settings.tracking.uri).search_runs(
        [e.experiment_id for e in MlflowClient(settings.tracking.uri).search_experiments()])
    assert [r.data.tags.get("dmms.step") for r in runs].count("sft") == 1  # rank 1 opened none
    assert result.run_id == runs[0].info.run_id
    assert "train_loss" in runs[0].data.metrics

    final = fetch_version(store, result.final_uri, two_rank_env / "final-copy")
    trained, before = load_file(str(final / "model.safetensors")), load_file(f"{base}/model.safetensors")
    changed = [k for k in before if k in trained and not torch.equal(before[k], trained[k])]
    language = [k for k in before if "visual." not in k]  # the tiny profile keeps its vision tower frozen
    assert set(changed) <= set(language), "the frozen vision tower changed"
    assert len(changed) >= 0.5 * len(language), f"only {len(changed)} of {len(language)} language-model tensors changed"


def test_a_failing_rank_fails_the_step_and_publishes_nothing(two_rank_env):
    settings = load_settings()
    out = open_store(settings).uri("checkpoints", "no-data")
    with pytest.raises(LaunchError, match="exited with code"):
        train_step(settings, "datasets/missing/v1", ensure_model(settings), out)
    assert not open_store(settings).exists(join_uri(out, "final", MANIFEST))
    assert not open_store(settings).exists(join_uri(out, RESULT_FILE))
