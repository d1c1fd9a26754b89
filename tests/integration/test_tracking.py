"""Tracking and registry against real MLflow servers (SQLite and PostgreSQL backends) and the
embedded SQLite file: tags, masked params, metrics, artifacts, checkpoint pointers and aliases.

Run: ``DMMS_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test \
.venv/bin/python -m pytest -q tests/integration/test_tracking.py``
"""

from __future__ import annotations

import json
import logging
import subprocess
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from components.common.settings import load_settings
from components.common.tracking import (
    MAX_PARAM_LEN,
    TrackingError,
    alias_history,
    get_alias,
    git_sha,
    previous_version,
    register_checkpoint,
    resolve_alias,
    set_alias,
    set_version_tags,
    tracked_run,
)

SECRET = "s3cr3t"


@pytest.fixture(params=["mlflow_server", "mlflow_server_pg"])
def server(request) -> str:
    return request.getfixturevalue(request.param)


def _settings(uri: str, **tracking):
    name = uuid.uuid4().hex[:8]
    return load_settings(tools={"token": SECRET}, tracking={
        "uri": uri, "experiment": f"exp-{name}", "model_name": f"model-{name}", **tracking})


def _all_artifact_text(mlc: MlflowClient, run_id: str, dst: Path) -> str:
    local = Path(mlc.download_artifacts(run_id, "", str(dst)))
    return "\n".join(p.read_text(errors="replace") for p in local.rglob("*") if p.is_file())


def test_run_is_tagged_and_params_hold_no_secret(server, monkeypatch, tmp_path):
    monkeypatch.setenv("DMMS_GIT_SHA", "abc123")
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-42")
    monkeypatch.setenv("KFP_POD_NAME", "full-xyz-system-container-impl-1")
    settings = _settings(server)
    with tracked_run(settings, step="sft", tags={"team": "search"}) as run:
        run.log_params({"long.value": "x" * (MAX_PARAM_LEN + 500)})
        run.log_text(f"token is {settings.tools.token}", "notes/token.txt")
    mlc = MlflowClient(server)
    data = mlc.get_run(run.run_id).data
    assert mlc.get_run(run.run_id).info.status == "FINISHED"
    assert data.tags["dmms.profile"] == "tiny"
    assert data.tags["dmms.step"] == "sft"
    assert data.tags["dmms.git_sha"] == "abc123"
    assert data.tags["dmms.kfp_run_id"] == "kfp-run-42"
    assert data.tags["dmms.kfp_pod_name"] == "full-xyz-system-container-impl-1"
    assert data.tags["team"] == "search"
    flat = settings.flat_params()
    assert {k: data.params[k] for k in flat} == flat
    assert data.params["tools.token"] == "**********"
    long = data.params["long.value"]
    assert len(long) <= MAX_PARAM_LEN and long.startswith("xxx") and long.endswith(f"[{MAX_PARAM_LEN + 500} chars]")
    assert not any(SECRET in v for v in data.params.values())
    assert not any(SECRET in v for v in data.tags.values())
    text = _all_artifact_text(mlc, run.run_id, tmp_path / "dl")
    assert "**********" in text and SECRET not in text
    assert json.loads((tmp_path / "dl" / "settings.json").read_text())["tools"]["token"] == "**********"


def test_metrics_and_artifacts_read_back(server, tmp_path):
    settings = _settings(server)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha")
    (folder / "b.txt").write_text("beta")
    single = tmp_path / "report.html"
    single.write_text("<p>report</p>")
    with tracked_run(settings, step="grpo") as run:
        for step in range(5):
            run.log_metrics({"loss": 1.0 / (step + 1), "reward": step * 0.1}, step=step)
        run.log_artifact(single)
        run.log_artifact(folder, artifact_path="files")
        run.log_dict({"accuracy": 0.5}, "eval/summary.json")
    mlc = MlflowClient(server)
    history = mlc.get_metric_history(run.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert mlc.get_run(run.run_id).data.metrics["reward"] == pytest.approx(0.4)
    dst = Path(mlc.download_artifacts(run.run_id, "", str(tmp_path / "dl")))
    assert (dst / "report.html").read_text() == "<p>report</p>"
    assert (dst / "files" / "b.txt").read_text() == "beta"
    assert json.loads((dst / "eval" / "summary.json").read_text()) == {"accuracy": 0.5}


def test_failed_body_marks_run_failed_and_nested_runs_link(server):
    settings = _settings(server)
    with pytest.raises(ValueError, match="boom"):
        with tracked_run(settings, step="evaluate") as run:
            raise ValueError("boom")
    mlc = MlflowClient(server)
    assert mlc.get_run(run.run_id).info.status == "FAILED"
    with tracked_run(settings, step="pipeline") as parent:
        with tracked_run(settings, step="sft", nested=True) as child:
            pass
    assert mlc.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id


def test_register_alias_resolve_and_history(server):
    settings = _settings(server)
    with tracked_run(settings, step="sft") as run:
        v1 = register_checkpoint(settings, run.run_id, "s3://store/checkpoints/r1/final", "a" * 64,
                                 tags={"dmms.dataset": "datasets/vqa/v1"})
    with tracked_run(settings, step="grpo") as run2:
        v2 = register_checkpoint(settings, run2.run_id, "s3://store/checkpoints/r2/final", "b" * 64)
    assert v1 != v2
    assert get_alias(settings, "champion") is None
    assert set_alias(settings, "champion", v1) is None
    pointer = resolve_alias(settings, "champion")
    assert (pointer.checkpoint_uri, pointer.manifest_sha256, pointer.version) == (
        "s3://store/checkpoints/r1/final", "a" * 64, v1)
    assert pointer.run_id == run.run_id and pointer.tags == {"dmms.dataset": "datasets/vqa/v1"}

    assert set_alias(settings, "champion", v2) == v1
    assert resolve_alias(settings, "champion").checkpoint_uri == "s3://store/checkpoints/r2/final"
    assert previous_version(settings, "champion") == v1
    current = get_alias(settings, "champion")
    assert str(current.version) == v2 and current.tags["dmms.previous_champion"] == v1
    assert current.tags["dmms.manifest_sha256"] == "b" * 64
    assert [(h["version"], h["previous"]) for h in alias_history(settings, "champion")] == [
        (v1, None), (v2, v1)]
    assert set_alias(settings, "champion", v2) == v2  # idempotent: no new history entry
    assert len(alias_history(settings, "champion")) == 2

    set_version_tags(settings, v1, {"dmms.gate": "failed"})
    mv = MlflowClient(server).get_model_version(settings.tracking.model_name, v1)
    assert mv.tags["dmms.gate"] == "failed"


def test_registry_errors_name_what_to_change(server):
    settings = _settings(server)
    with tracked_run(settings, step="sft") as run:
        version = register_checkpoint(settings, run.run_id, "s3://store/checkpoints/r/final")
    with pytest.raises(TrackingError, match="has alias 'champion'"):
        resolve_alias(settings, "champion")
    with pytest.raises(TrackingError, match="no version '999'"):
        set_alias(settings, "champion", "999")
    with pytest.raises(TrackingError, match="checkpoint_uri is empty"):
        register_checkpoint(settings, run.run_id, "")
    assert get_alias(settings, "challenger") is None
    set_alias(settings, "challenger", version)
    assert resolve_alias(settings, "challenger").manifest_sha256 is None


def test_embedded_sqlite_default(tmp_path, monkeypatch):
    """No server: the default sqlite:///.dmms/mlflow.db, created under the working folder."""
    monkeypatch.setenv("DMMS_GIT_SHA", "feed")
    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    settings = load_settings(tools={"token": SECRET})
    assert settings.tracking.uri == "sqlite:///.dmms/mlflow.db"
    with tracked_run(settings, step="datagen") as run:
        run.log_metrics({"kept": 47.0}, step=1)
        version = register_checkpoint(settings, run.run_id, "file:///store/checkpoints/r/final")
    assert (tmp_path / ".dmms" / "mlflow.db").is_file()
    assert (tmp_path / ".dmms" / "mlartifacts").is_dir()
    set_alias(settings, "champion", version)
    assert resolve_alias(settings, "champion").checkpoint_uri == "file:///store/checkpoints/r/final"
    mlc = MlflowClient(settings.tracking.uri)
    got = mlc.get_run(run.run_id)
    assert got.data.tags["dmms.git_sha"] == "feed" and got.data.metrics["kept"] == 47.0
    assert "dmms.kfp_run_id" not in got.data.tags  # not under KFP: no made-up run id
    assert not any(SECRET in v for v in got.data.params.values())


def test_disabled_tracking_logs_nothing(tmp_path, caplog):
    settings = load_settings(tracking={"enabled": False})
    with caplog.at_level(logging.INFO, logger="components.common.tracking"):
        with tracked_run(settings, step="sft") as run:
            run.log_metrics({"loss": 1.0}, step=0)
            run.log_text("hello", "x.txt")
            run.log_artifact(tmp_path)
    assert run.run_id is None and not run.enabled
    assert "tracking disabled" in caplog.text
    assert not (tmp_path / ".dmms").exists()
    with pytest.raises(TrackingError, match="DMMS_TRACKING__ENABLED"):
        resolve_alias(settings, "champion")


def test_git_sha_from_env_then_git(monkeypatch):
    monkeypatch.setenv("DMMS_GIT_SHA", "0123abcd")
    assert git_sha() == "0123abcd"
    monkeypatch.delenv("DMMS_GIT_SHA")
    repo = Path(__file__).resolve().parents[2]
    expected = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=10).stdout.strip()
    assert git_sha() == (expected or "unknown")


@pytest.fixture(autouse=True)
def _no_active_run():
    """A failing test must not leave an MLflow run active for the next one."""
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run("FAILED")


def test_behind_basic_auth_runs_log_with_credentials_and_are_refused_without(mlflow_server_auth, monkeypatch):
    """MLflow behind its basic-auth app, as the cluster runs it (manifests/base/mlflow): the steps'
    credentials come from the mlflow-auth Secret as MLFLOW_TRACKING_USERNAME / _PASSWORD."""
    from components.common.tracking import TrackingError, tracked_run
    from tests.fixtures.mlflow_server import AUTH_PASSWORD, AUTH_USER

    settings = load_settings(tracking={"uri": mlflow_server_auth, "experiment": "auth-tests"})
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(TrackingError, match=r"refused the request \(no credentials\).*MLFLOW_TRACKING_USERNAME"):
        with tracked_run(settings, "sft"):
            pass
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", AUTH_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password")
    with pytest.raises(TrackingError, match=f"as {AUTH_USER}"):
        with tracked_run(settings, "sft"):
            pass
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", AUTH_PASSWORD)
    with tracked_run(settings, "sft") as run:
        run.log_metrics({"loss": 1.5}, step=1)
    assert MlflowClient(mlflow_server_auth).get_run(run.run_id).data.metrics["loss"] == 1.5
