"""The champion's serving objects (components/registry/serving.py) are valid Kubernetes objects.

The InferenceService is a CRD (no official schema offline): its shape is asserted; the vLLM
Deployment + Service (KServe absent) pass ``kubernetes-validate --strict``. A cluster adds KServe or
the Deployment controller, the checkpoint download and vLLM answering."""

from __future__ import annotations

import kubernetes_validate

from components.common.settings import load_settings
from components.registry.serving import (
    CHECKPOINT_ANNOTATION,
    VERSION_ANNOTATION,
    inference_service,
    serving_status,
    vllm_deployment,
)

URI = "s3://deepmmsearch/checkpoints/run-1-grpo/final"


def test_vllm_deployment_and_service_are_strictly_valid_and_serve_the_checkpoint():
    settings = load_settings(serving={"target": "deployment", "gpus": 2})
    deployment, service = vllm_deployment(settings, URI, "7")
    version = kubernetes_validate.latest_version()
    for obj in (deployment, service):
        kubernetes_validate.validate(obj, version, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"][-2:] == [URI, "/models/champion"]
    command = pod["containers"][0]["command"]
    assert command[:3] == ["vllm", "serve", "/models/champion"]
    assert command[command.index("--served-model-name") + 1] == "deepmmsearch-agent"
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    assert "--weight-transfer-config" not in command  # a plain server: nobody pushes weights into it
    assert deployment["metadata"]["annotations"] == {VERSION_ANNOTATION: "7", CHECKPOINT_ANNOTATION: URI}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == settings.pipelines.gpu_node_selector
    assert deployment["spec"]["template"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "deepmmsearch-gpu"
    env = {e["name"] for e in pod["initContainers"][0]["env"]}
    assert {"DMMS_STORAGE__ROOT", "DMMS_STORAGE__ACCESS_KEY", "DMMS_STORAGE__SECRET_KEY"} <= env


def test_inference_service_uses_the_vllm_backend_on_the_checkpoint():
    isvc = inference_service(load_settings(serving={"target": "kserve"}), URI, "3")
    model = isvc["spec"]["predictor"]["model"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert model["modelFormat"] == {"name": "huggingface"} and model["storageUri"] == URI
    assert "--backend=vllm" in model["args"] and "--model_name=deepmmsearch-agent" in model["args"]
    assert isvc["metadata"]["annotations"][VERSION_ANNOTATION] == "3"


def test_status_without_a_serving_target_says_so():
    assert serving_status(load_settings())["target"] == "none"


def test_without_kserve_the_deployment_follows_the_champion():
    """Against the in-memory Kubernetes API (kmock; no API server runs here): created, then moved."""
    from components.registry.serving import update_serving
    from tests.unit.grpo.kube_standin import NS, StandIn

    api = StandIn()
    try:
        settings = load_settings(serving={"target": "deployment"}, pipelines={"namespace": NS})
        update_serving(settings, URI, "1", api_client=api.api)
        update_serving(settings, URI.replace("run-1", "run-2"), "2", api_client=api.api)
        status = serving_status(settings, api_client=api.api)
        assert (status["version"], status["checkpoint_uri"]) == ("2", URI.replace("run-1", "run-2"))
        assert status["url"] == f"http://deepmmsearch-agent.{NS}.svc:8000/v1"
        assert api.names("v1/services") == {"deepmmsearch-agent"}
    finally:
        api.close()
