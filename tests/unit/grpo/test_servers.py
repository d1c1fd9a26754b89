"""The GRPO step's rollout server from settings (components/grpo/servers.py) against an in-memory Kubernetes API.

Why a stand-in: no Kubernetes API server can run here (no cluster, no Docker). kmock's
KubernetesEmulator (tests/unit/grpo/kube_standin.py, the ``api`` fixture) is a stateful fake API
server over real HTTP on loopback: the real ``kubernetes`` client makes the same REST calls it makes
in a pod, and a thread plays the Deployment controller (marks the Deployment ready).

What a cluster run adds (cannot run here): a real vLLM pod scheduled on the GPU pool, pulling the
train image and loading the model; readiness from its /health probe; TRL's weight-sync rendezvous
from the rollout pod to the trainer's port 51216 through the NetworkPolicies; and the garbage
collector removing the server through its owner reference when the step's pod dies.
"""

from __future__ import annotations

import logging
import threading

import pytest
from kmock import KubernetesError

from components.common.settings import load_settings
from components.common.trainjob import QUEUE_LABEL
from components.grpo.rollout_pods import RUN_LABEL, RolloutServers
from components.grpo.servers import cleanup_rollout_servers, rollout_server, rollout_spec
from tests.unit.grpo.kube_standin import DEPLOYMENTS, NS, OWNER, SERVICES, play_controller

LAUNCH = {"use_vllm": True, "launch_rollout_servers": True, "rollout_tensor_parallel": 2,
          "rollout_gpu_memory_utilization": 0.7}


@pytest.fixture()
def in_pod(monkeypatch):
    """The downward-API env the pipeline gives the GRPO step's pod."""
    monkeypatch.setenv("POD_NAME", OWNER["name"])
    monkeypatch.setenv("POD_UID", OWNER["uid"])
    monkeypatch.setenv("POD_NAMESPACE", NS)


def _controller(api):
    stop = threading.Event()
    return stop, play_controller(api, None, stop)


def test_launches_points_settings_at_it_and_deletes_it_after(api, in_pod):
    settings = load_settings(grpo=LAUNCH)
    stop, thread = _controller(api)
    with rollout_server(settings, run_id="run-42", api_client=api.api, poll_s=0.05) as inside:
        (name,) = api.names(DEPLOYMENTS)
        assert inside is settings
        assert settings.grpo.vllm_server_base_url == f"http://{name}.{NS}.svc:8000"
        assert api.names(SERVICES) == {name}
        dep = api.get(DEPLOYMENTS, name)
        assert dep["metadata"]["labels"][RUN_LABEL] == "run-42"
        assert dep["metadata"]["ownerReferences"][0]["uid"] == OWNER["uid"]
        pod = dep["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["command"][:3] == ["vllm", "serve", settings.model.name_or_path]
        assert container["command"][container["command"].index("--gpu-memory-utilization") + 1] == "0.7"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert container["image"] == settings.pipelines.train_image
        assert pod["nodeSelector"] == settings.pipelines.gpu_node_selector
        assert pod["tolerations"] == settings.pipelines.gpu_tolerations
    stop.set()
    thread.join(5)
    assert api.names(DEPLOYMENTS) == set() and api.names(SERVICES) == set()
    assert settings.grpo.vllm_server_base_url is None  # no URL of a deleted server left behind


def test_training_that_raises_still_deletes_the_server(api, in_pod):
    settings = load_settings(grpo=LAUNCH)
    stop, thread = _controller(api)
    with pytest.raises(RuntimeError, match="loss is nan"):
        with rollout_server(settings, run_id="run-43", api_client=api.api, poll_s=0.05):
            assert api.names(DEPLOYMENTS)
            raise RuntimeError("loss is nan")
    stop.set()
    thread.join(5)
    assert api.names(DEPLOYMENTS) == set() and api.names(SERVICES) == set()


@pytest.mark.parametrize("grpo", [
    {"use_vllm": False, "launch_rollout_servers": True},
    {"use_vllm": True, "vllm_server_base_url": "http://given:8000"},
])
def test_no_launch_unless_use_vllm_and_launch(api, grpo):
    settings = load_settings(grpo=grpo)
    before = settings.grpo.model_dump()
    with rollout_server(settings, run_id="run-44", api_client=api.api) as inside:
        assert inside is settings and settings.grpo.model_dump() == before
        assert api.names(DEPLOYMENTS) == set() and api.names(SERVICES) == set()


def test_spec_model_defaults_to_the_policy_base_and_can_be_set():
    settings = load_settings(grpo=LAUNCH)
    assert rollout_spec(settings).model == settings.model.name_or_path
    assert rollout_spec(settings).labels == {QUEUE_LABEL: settings.pipelines.kueue_queue}  # admitted by Kueue
    settings.pipelines.kueue_queue = ""
    assert rollout_spec(settings).labels == {}  # a cluster without Kueue
    settings.grpo.rollout_model = "Qwen/Qwen2.5-VL-3B-Instruct"
    spec = rollout_spec(settings, "a/b:c" * 20)
    assert spec.model == "Qwen/Qwen2.5-VL-3B-Instruct"
    value = spec.labels[RUN_LABEL]  # a valid label value, whatever the run id looks like
    assert len(value) <= 63 and value[0].isalnum() and value[-1].isalnum() and "/" not in value


def _leftover(api, settings, run_id: str, name: str) -> None:
    """What a killed GRPO step leaves behind: created, never deleted."""
    RolloutServers(rollout_spec(settings, run_id), namespace=NS, owner=OWNER, api_client=api.api,
                   name=name).create()


def test_exit_handler_deletes_only_this_runs_rollout_servers(api):
    settings = load_settings(grpo=LAUNCH)
    _leftover(api, settings, "run-a", "vllm-rollout-a1")
    _leftover(api, settings, "run-a", "vllm-rollout-a2")
    _leftover(api, settings, "run-b", "vllm-rollout-b1")
    api.core.create_namespaced_service(NS, {  # same run label, not a rollout server: never touched
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "toolserver", "namespace": NS, "labels": {RUN_LABEL: "run-a"}},
        "spec": {"ports": [{"port": 8080}]}})
    deleted = cleanup_rollout_servers("run-a", namespace=NS, api_client=api.api)
    assert sorted(deleted) == ["Deployment/vllm-rollout-a1", "Deployment/vllm-rollout-a2",
                               "Service/vllm-rollout-a1", "Service/vllm-rollout-a2"]
    assert api.names(DEPLOYMENTS) == {"vllm-rollout-b1"}
    assert api.names(SERVICES) == {"vllm-rollout-b1", "toolserver"}
    assert cleanup_rollout_servers("run-a", namespace=NS, api_client=api.api) == []  # idempotent


def test_exit_handler_logs_and_survives_a_forbidden_list(api, caplog):
    settings = load_settings(grpo=LAUNCH)
    _leftover(api, settings, "run-a", "vllm-rollout-a1")
    api.handler[f"get /apis/apps/v1/namespaces/{NS}/deployments"] << KubernetesError(
        status=403, reason="Forbidden", message="deployments is forbidden")
    with caplog.at_level(logging.ERROR, logger="components.grpo.servers"):
        assert cleanup_rollout_servers("run-a", namespace=NS, api_client=api.api) == []
    assert "HTTP 403" in caplog.text and "dmms-pipeline-runner" in caplog.text


def test_exit_handler_skips_outside_a_cluster(monkeypatch, caplog):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with caplog.at_level(logging.INFO, logger="components.grpo.servers"):
        assert cleanup_rollout_servers("run-a") == []
    assert "not in a Kubernetes pod" in caplog.text
