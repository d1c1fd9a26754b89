"""Promotion against a real MLflow server, on real evaluation runs.

The evaluated "models" are served by the ``openai_server`` stand-in (a real loopback HTTP server
speaking the OpenAI chat JSON; hosted models cannot run here), scripted to answer a chosen subset
of a small VQA benchmark correctly, so each evaluation run has a known accuracy. The gated mode is
``direct``. The tool-server is not needed for direct mode.
"""

from __future__ import annotations

import json
import shutil
import uuid

import pytest
from mlflow import MlflowClient
from PIL import Image

from components.common.settings import load_settings
from components.common.tracking import TrackingError, alias_history, get_alias
from components.evaluate.generate import ModelSpec
from components.evaluate.run import evaluate
from components.registry.promote import promote, rollback


@pytest.fixture(scope="module")
def benches(tmp_path_factory):
    """Two versions of a 40-item benchmark: ``v1`` and ``v2`` (one more item)."""
    root = tmp_path_factory.mktemp("promote-bench")
    rows = []
    for k in range(41):
        rows.append({"id": f"q{k}", "image": f"images/{k}.png", "question": f"What is the code of panel {k}?",
                     "answers": [f"code{k}"]})
    out = {}
    for name, n in (("v1", 40), ("v2", 41)):
        folder = root / name
        (folder / "images").mkdir(parents=True)
        for r in rows[:n]:
            Image.new("RGB", (32, 32), (6 * int(r["id"][1:]), 90, 90)).save(folder / r["image"])
        (folder / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
        out[name] = folder
    return out, rows


def _eval(settings, openai_server, folder, rows, n_right: int) -> str:
    right = {r["question"]: r["answers"][0] for r in rows[:n_right]}

    def respond(body):
        text = json.dumps(body["messages"])
        answer = next((a for q, a in right.items() if q in text), "no idea")
        return f"<reason>Reading the panel.</reason><answer>{answer}</answer>"
    openai_server.responder = respond
    spec = ModelSpec(backend="openai", name=f"model-{n_right}", base_url=openai_server.base_url)
    return evaluate(settings, spec, [f"panels={folder}"], ["direct"]).run_id


def _tags(mlflow_server, settings, version):
    return MlflowClient(mlflow_server).get_model_version(settings.tracking.model_name, version).tags


def test_promote_refuse_undecided_and_rollback(benches, mlflow_server, openai_server, tmp_path):
    folders, rows = benches
    settings = load_settings(
        tracking={"uri": mlflow_server, "experiment": "promote-tests", "model_name": f"p-{uuid.uuid4().hex[:8]}"},
        promote={"mode": "direct", "min_accuracy": 25.0, "max_regression": 10.0, "max_format_error_rate": 5.0,
                 "min_search_required_accuracy": 0.0},
        evaluate={"out_dir": str(tmp_path / "eval")})
    # 1. first model, 50%: no champion yet, passes the minimum -> champion
    run_a = _eval(settings, openai_server, folders["v1"], rows, 20)
    a = promote(settings, run_a, "s3://store/checkpoints/a/final", "sha-a")
    assert a.promoted and a.champion_before is None
    assert get_alias(settings, "champion").version == a.version
    assert _tags(mlflow_server, settings, a.version)["dmms.eval_run_id"] == run_a
    # 2. better challenger, 90% on the same benchmark version -> champion
    run_b = _eval(settings, openai_server, folders["v1"], rows, 36)
    b = promote(settings, run_b, "s3://store/checkpoints/b/final")
    assert b.promoted and b.champion_before == a.version
    assert get_alias(settings, "champion").version == b.version
    tags_b = _tags(mlflow_server, settings, b.version)
    assert tags_b["dmms.promotion.decision"] == "promoted" and tags_b["dmms.promotion.compared_to"] == a.version
    # 3. significantly worse challenger, 60% (12 of B's right items now wrong) -> refused, says why
    run_c = _eval(settings, openai_server, folders["v1"], rows, 24)
    c = promote(settings, run_c, "s3://store/checkpoints/c/final")
    assert c.status == "refused"
    assert get_alias(settings, "champion").version == b.version
    assert get_alias(settings, "challenger").version == c.version
    tags_c = _tags(mlflow_server, settings, c.version)
    assert tags_c["dmms.promotion.decision"] == "refused"
    reasons = json.loads(tags_c["dmms.promotion.reasons"])
    assert len(reasons) == 1 and reasons[0].startswith("panels: challenger - champion = -30.00 points")
    assert reasons[0].endswith("significantly worse")
    # 4. two items worse (85%): 40 items cannot rule out a drop beyond 10 points -> undecided
    run_u = _eval(settings, openai_server, folders["v1"], rows, 34)
    u = promote(settings, run_u, "s3://store/checkpoints/u/final")
    assert u.status == "undecided" and not u.promoted
    tags_u = _tags(mlflow_server, settings, u.version)
    assert tags_u["dmms.promotion.decision"] == "undecided" and "undecided" in tags_u["dmms.promotion.reasons"]
    assert get_alias(settings, "champion").version == b.version
    # 5. a perfect challenger on ANOTHER benchmark version: not compared, refused, says why
    run_d = _eval(settings, openai_server, folders["v2"], rows, 41)
    d = promote(settings, run_d, "s3://store/checkpoints/d/final")
    assert not d.promoted and "benchmark versions differ" in d.reasons[0]
    assert "benchmark versions differ" in _tags(mlflow_server, settings, d.version)["dmms.promotion.reasons"]
    assert get_alias(settings, "champion").version == b.version
    # 6. a gate whose metric the run lacks: refused with the reason as a tag
    floor = settings.model_copy(update={"promote": settings.promote.model_copy(
        update={"min_search_required_accuracy": 10.0})})
    m = promote(floor, run_b, "s3://store/checkpoints/b/final")
    assert m.status == "refused"
    assert "no search-required accuracy" in _tags(mlflow_server, settings, m.version)["dmms.promotion.reasons"]
    # 7. rollback: champion back to the previous version (a), then nothing further back
    assert rollback(settings) == (b.version, a.version)
    assert get_alias(settings, "champion").version == a.version
    assert _tags(mlflow_server, settings, b.version)["dmms.promotion.rolled_back_to"] == a.version
    assert [h["version"] for h in alias_history(settings, "champion")] == [a.version, b.version, a.version]
    with pytest.raises(TrackingError, match="nothing to roll back to"):
        rollback(settings)


def test_rollback_without_champion_and_unknown_run(mlflow_server):
    settings = load_settings(tracking={"uri": mlflow_server, "model_name": f"empty-{uuid.uuid4().hex[:8]}"})
    with pytest.raises(TrackingError, match="no champion"):
        rollback(settings)
    with pytest.raises(TrackingError, match="no MLflow run"):
        promote(settings, "0" * 32, "s3://x/y")


def test_cli_promote_and_rollback(benches, mlflow_server, openai_server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from components.cli import _register, app

    folders, rows = benches
    name = f"cli-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DMMS_TRACKING__URI", mlflow_server)
    monkeypatch.setenv("DMMS_TRACKING__MODEL_NAME", name)
    monkeypatch.setenv("DMMS_PROMOTE__MODE", "direct")
    monkeypatch.setenv("DMMS_PROMOTE__MIN_SEARCH_REQUIRED_ACCURACY", "0")
    settings = load_settings(evaluate={"out_dir": str(tmp_path / "eval")})
    run_id = _eval(settings, openai_server, folders["v1"], rows, 4)
    _register()
    runner = CliRunner()
    out = runner.invoke(app, ["promote", "--eval-run", run_id, "--checkpoint", "s3://store/ckpt/x/final"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output[out.output.index("{\n"):])["promoted"] is True
    out = runner.invoke(app, ["promote", "--rollback"])
    assert out.exit_code == 2 and "nothing to roll back to" in out.output
    shutil.rmtree(tmp_path / "eval")


def test_promotion_and_rollback_move_the_served_checkpoint(benches, mlflow_server, openai_server, tmp_path,
                                                           monkeypatch):
    """The serving object (a KServe InferenceService) follows the champion. The Kubernetes API is an
    in-memory stand-in (kmock, tests/unit/grpo/kube_standin.py: no API server runs here); a cluster
    adds KServe pulling the checkpoint from MinIO and vLLM answering on its URL."""
    from kubernetes import client as k8s

    from components.registry import serving
    from tests.unit.grpo.kube_standin import NS, StandIn

    api = StandIn()
    monkeypatch.setattr(serving, "_api", lambda: api.api)
    try:
        folders, rows = benches
        settings = load_settings(
            tracking={"uri": mlflow_server, "experiment": "serve-tests", "model_name": f"s-{uuid.uuid4().hex[:8]}"},
            promote={"mode": "direct", "min_accuracy": 25.0, "max_regression": 10.0, "max_format_error_rate": 5.0,
                     "min_search_required_accuracy": 0.0},
            serving={"target": "kserve"}, pipelines={"namespace": NS},
            evaluate={"out_dir": str(tmp_path / "eval")})
        assert serving.serving_status(settings)["version"] is None  # nothing served yet
        a = promote(settings, _eval(settings, openai_server, folders["v1"], rows, 20), "s3://store/ckpt/a/final")
        status = serving.serving_status(settings)
        assert (status["version"], status["checkpoint_uri"]) == (a.version, "s3://store/ckpt/a/final")
        b = promote(settings, _eval(settings, openai_server, folders["v1"], rows, 36), "s3://store/ckpt/b/final")
        group, version, plural = serving.KSERVE
        isvc = k8s.CustomObjectsApi(api.api).get_namespaced_custom_object(group, version, NS, plural,
                                                                          "deepmmsearch-agent")
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://store/ckpt/b/final"
        assert isvc["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == settings.pipelines.kueue_queue
        refused = promote(settings, _eval(settings, openai_server, folders["v1"], rows, 24), "s3://store/ckpt/c/final")
        assert refused.status == "refused" and serving.serving_status(settings)["version"] == b.version
        rollback(settings)
        status = serving.serving_status(settings)
        assert (status["version"], status["checkpoint_uri"]) == (a.version, "s3://store/ckpt/a/final")
    finally:
        api.close()
