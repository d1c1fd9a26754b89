"""The vLLM rollout-pod launcher (components/grpo/rollout_pods.py) against an in-memory Kubernetes API.

Why a stand-in: no Kubernetes API server can run on this machine (no cluster, no Docker). The
``kmock`` package's KubernetesEmulator (tests/unit/grpo/kube_standin.py, the ``api`` fixture) is a
stateful fake API server over real HTTP on loopback, so the real ``kubernetes`` client makes the
same REST calls it makes in a pod (create, read, patch status, list, delete). It has no controllers:
a test plays the Deployment controller by patching the status subresource, and creates pods/events
itself. The filled template is also checked against the official schemas with kubernetes-validate.
"""

from __future__ import annotations

import threading

import kubernetes_validate
import pytest
from kmock import KubernetesError

from components.common.vllm_server import vllm_serve_command
from components.grpo.rollout_pods import (
    INSTANCE_LABEL,
    RolloutError,
    RolloutServers,
    RolloutSpec,
    RolloutTimeoutError,
    build_objects,
    load_template,
    owner_from_env,
)
from tests.unit.grpo.kube_standin import DEPLOYMENTS, NS, OWNER, SERVICES, StandIn, play_controller


def _servers(api: StandIn, **kw) -> RolloutServers:
    spec = kw.pop("spec", RolloutSpec(model="Qwen/Qwen2.5-VL-7B-Instruct", tensor_parallel=2,
                                      max_model_len=8192, labels={"deepmmsearch.io/run": "r1"}))
    return RolloutServers(spec, namespace=NS, owner=OWNER, api_client=api.api,
                          **{"ready_timeout_s": 30.0, "poll_s": 0.05, **kw})


def test_create_makes_owned_labelled_gpu_deployment_and_service(api):
    servers = _servers(api)
    servers.create()
    dep, svc = api.get(DEPLOYMENTS, servers.name), api.get(SERVICES, servers.name)
    for obj in (dep, svc):
        assert obj["metadata"]["ownerReferences"] == [OWNER]
        assert obj["metadata"]["labels"]["deepmmsearch.io/role"] == "rollout"
        assert obj["metadata"]["labels"][INSTANCE_LABEL] == servers.name
        assert obj["metadata"]["labels"]["deepmmsearch.io/run"] == "r1"
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert pod["metadata"]["labels"]["deepmmsearch.io/role"] == "rollout"  # what the NetworkPolicy selects
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert container["command"][:3] == ["vllm", "serve", "Qwen/Qwen2.5-VL-7B-Instruct"]
    assert "--tensor-parallel-size" in container["command"]
    assert {"name": "VLLM_SERVER_DEV_MODE", "value": "1"} in container["env"]
    assert servers.url == f"http://{servers.name}.{NS}.svc:8000"
    servers.delete()


def test_context_waits_until_ready_then_deletes_both(api):
    servers = _servers(api)
    stop = threading.Event()
    controller = play_controller(api, servers.name, stop)
    with servers as url:
        assert url == f"http://{servers.name}.{NS}.svc:8000"
        assert api.exists(DEPLOYMENTS, servers.name) and api.exists(SERVICES, servers.name)
    stop.set()
    controller.join(5)
    assert not api.exists(DEPLOYMENTS, servers.name)
    assert not api.exists(SERVICES, servers.name)


def test_timeout_error_quotes_pod_conditions_and_events_and_cleans_up(api):
    servers = _servers(api, ready_timeout_s=0.3)
    pod_name = f"{servers.name}-5d8f-x2k9"
    api.core.create_namespaced_pod(NS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": NS,
                     "labels": dict(servers.deployment["spec"]["selector"]["matchLabels"])},
        "spec": {"containers": [{"name": "vllm", "image": "x"}]},
        "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}})
    api.core.create_namespaced_event(NS, {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{pod_name}.1", "namespace": NS},
        "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": NS},
        "type": "Warning", "reason": "FailedScheduling", "message": "no GPU node fits",
        "lastTimestamp": "2026-11-01T10:00:00Z"})
    with pytest.raises(RolloutTimeoutError) as err, servers:
        pass
    text = str(err.value)
    assert servers.name in text and "not ready after 0.3s" in text
    assert "Unschedulable" in text and "Insufficient nvidia.com/gpu" in text
    assert "FailedScheduling: no GPU node fits" in text
    assert not api.exists(DEPLOYMENTS, servers.name) and not api.exists(SERVICES, servers.name)


def test_delete_is_idempotent(api):
    servers = _servers(api)
    servers.create()
    servers.delete()
    servers.delete()
    assert not api.exists(DEPLOYMENTS, servers.name) and not api.exists(SERVICES, servers.name)


def test_delete_after_partial_create_removes_the_deployment(api):
    servers = _servers(api)
    api.handler[f"post /api/v1/namespaces/{NS}/services"] << KubernetesError(
        status=403, reason="Forbidden", message="services is forbidden")
    with pytest.raises(RolloutError, match="dmms-pipeline-runner") as err:
        servers.create()
    assert "HTTP 403" in str(err.value) and "Service" in str(err.value)
    assert api.exists(DEPLOYMENTS, servers.name)
    servers.delete()  # the Service may or may not exist: both outcomes are fine
    assert not api.exists(DEPLOYMENTS, servers.name) and not api.exists(SERVICES, servers.name)


def test_name_clash_never_deletes_a_foreign_service(api):
    servers = _servers(api, name="vllm-rollout-taken")
    api.core.create_namespaced_service(NS, {"apiVersion": "v1", "kind": "Service",
                                            "metadata": {"name": "vllm-rollout-taken", "namespace": NS},
                                            "spec": {"ports": [{"port": 80}]}})
    with pytest.raises(RolloutError, match="HTTP 409"), servers:
        pass
    assert not api.exists(DEPLOYMENTS, "vllm-rollout-taken")
    assert api.exists(SERVICES, "vllm-rollout-taken")


def test_owner_needs_downward_api_env():
    with pytest.raises(RolloutError, match="POD_NAME and POD_UID"):
        owner_from_env({"POD_NAME": "x"})
    assert owner_from_env({"POD_NAME": "p", "POD_UID": "u"})["uid"] == "u"


def test_filled_template_is_schema_valid():
    dep, svc = build_objects(load_template(), RolloutSpec(model="m", tensor_parallel=4,
                                                         node_selector={"pool": "gpu"}),
                             name="vllm-rollout-1", namespace=NS, owner=OWNER)
    for obj in (dep, svc):
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)  # raises if not
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_vllm_command_matches_trl_vllm_serve():
    """Our ``vllm serve`` argv carries every flag TRL 1.16's ``trl vllm-serve`` would pass."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    ours = vllm_serve_command("Qwen/Qwen2.5-VL-7B-Instruct", tensor_parallel=2,
                              gpu_memory_utilization=0.8, max_model_len=8192)
    trl = build_command(ScriptArguments(model="Qwen/Qwen2.5-VL-7B-Instruct", tensor_parallel_size=2,
                                        gpu_memory_utilization=0.8, max_model_len=8192))
    trl = trl[trl.index("serve"):]
    pairs = lambda argv: {a: argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None  # noqa: E731
                          for i, a in enumerate(argv) if a.startswith("--")}
    ours_flags, trl_flags = pairs(ours), pairs(trl)
    skipped = {"--kv-cache-dtype", "--model-impl", "--uvicorn-log-level"}  # TRL restates vLLM defaults
    assert {k: v for k, v in trl_flags.items() if k not in skipped}.items() <= ours_flags.items()
    assert "--enable-scale-out" in ours  # vLLM 0.30 (pinned in images/train): multimodal prompts
    assert "--weight-transfer-config" not in vllm_serve_command("m", weight_sync=False)


def test_vllm_command_rejects_bad_input_naming_the_field():
    with pytest.raises(ValueError, match="tensor_parallel.*gpu_memory_utilization"):
        vllm_serve_command("m", tensor_parallel=0, gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="model"):
        vllm_serve_command(" ")
