"""A multi-node step as a Kubeflow Trainer v2 TrainJob (components/common/trainjob.py), against an
in-memory Kubernetes API.

Why a stand-in: no Kubernetes API server runs here. kmock's KubernetesEmulator
(tests/unit/grpo/kube_standin.py) serves the real REST calls of the ``kubernetes`` client on loopback;
a thread plays the Trainer controller (sets the job's Complete or Failed condition). The created
object is checked against the Trainer's own API types (``kubeflow_trainer_api``). What a cluster adds:
the Trainer controller turning the job into a JobSet of 2 pods with the torch runtime's PET_* env,
Kueue admitting it through its queue, the ranks' rendezvous, and garbage collection by the owner.
"""

from __future__ import annotations

import threading
import time

import pytest
from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
from kubernetes import client as k8s

from components.common.settings import load_settings
from components.common.trainjob import (
    CLIENT_LABELS,
    GROUP,
    PLURAL,
    QUEUE_LABEL,
    ROLE_LABEL,
    VERSION,
    TrainJobError,
    _unknown_fields,
    build_trainjob,
    run_trainjob,
)
from tests.unit.grpo.kube_standin import NS, OWNER, StandIn


@pytest.fixture()
def api():
    stand_in = StandIn()
    yield stand_in
    stand_in.close()


def _two_nodes():
    return load_settings(pipelines={"nodes": 2, "gpu_count": 8, "gpu_cpu": "64", "gpu_memory": "900Gi"})


def _controller(api, condition: dict, seen: dict) -> threading.Thread:
    """Wait for the TrainJob, record it as created, then set ``condition`` on its status."""
    custom = k8s.CustomObjectsApi(api.api)

    def run():
        for _ in range(500):
            jobs = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
            if jobs:
                seen["job"] = jobs[0]
                custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, NS, PLURAL, jobs[0]["metadata"]["name"],
                    {"status": {"conditions": [{"lastTransitionTime": "2026-12-03T10:00:00Z", "status": "True",
                                                **condition}]}})
                return
            time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_two_nodes_become_one_owned_queued_trainjob_then_it_is_deleted(api, monkeypatch):
    monkeypatch.setenv("KFP_RUN_ID", "run-77")
    settings = _two_nodes()
    settings.pipelines.trainjob_poll_s = 0.05
    seen: dict = {}
    thread = _controller(api, {"type": "Complete", "reason": "JobsCompleted", "message": "done"}, seen)
    final = run_trainjob(settings, "grpo", ["--data", "s3://b/d", "--out", "s3://b/o"],
                         env={"DMMS_GRPO__VLLM_SERVER_BASE_URL": "http://r:8000"}, api_client=api.api,
                         namespace=NS, owner=OWNER, follow_logs=False)
    thread.join(5)
    job, p = seen["job"], settings.pipelines
    assert final["metadata"]["name"] == job["metadata"]["name"]
    TrainerV1alpha1TrainJob.from_dict(job)  # what the API stored is a valid TrainJob
    assert job["metadata"]["ownerReferences"] == [OWNER]
    assert job["metadata"]["labels"][QUEUE_LABEL] == p.kueue_queue
    spec, trainer = job["spec"], job["spec"]["trainer"]
    assert spec["runtimeRef"] == {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": "torch-distributed"}
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["image"] == p.train_image
    assert trainer["command"] == ["python", "-m", "components.common.launch", "grpo", "--",
                                  "--data", "s3://b/d", "--out", "s3://b/o"]
    assert trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "8", "cpu": "64", "memory": "900Gi"}
    env = {e["name"]: e for e in trainer["env"]}
    assert env["DMMS_PROFILE"]["value"] == settings.profile and env["KFP_RUN_ID"]["value"] == "run-77"
    assert env["DMMS_GRPO__VLLM_SERVER_BASE_URL"]["value"] == "http://r:8000"
    assert env["DMMS_STORAGE__ROOT"]["value"] == p.cluster_env["DMMS_STORAGE__ROOT"]
    assert env["DMMS_STORAGE__SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "minio-credentials", "key": "rootPassword", "optional": False}
    assert env["DMMS_JUDGE__API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert not any("value" in e and "CHANGE-ME" in str(e["value"]) for e in trainer["env"])
    (patch,) = spec["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"][ROLE_LABEL] == "grpo-trainer"  # the rollout pods may reach it
    assert pod["metadata"]["labels"].items() >= CLIENT_LABELS.items()  # it may reach MinIO, MLflow, tools
    assert pod["spec"]["nodeSelector"] == p.gpu_node_selector
    assert pod["spec"]["tolerations"] == p.gpu_tolerations
    assert pod["spec"]["volumes"][0]["emptyDir"] == {"medium": "Memory", "sizeLimit": p.shm_size}
    with pytest.raises(k8s.ApiException) as gone:  # deleted at the end
        k8s.CustomObjectsApi(api.api).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL,
                                                                   job["metadata"]["name"])
    assert gone.value.status == 404


def test_a_failed_trainjob_fails_the_step_with_its_reason_and_is_deleted(api):
    settings = _two_nodes()
    settings.pipelines.trainjob_poll_s = 0.05
    seen: dict = {}
    thread = _controller(api, {"type": "Failed", "reason": "BackoffLimitExceeded",
                               "message": "node-1 exited with code 137 (OOMKilled)"}, seen)
    with pytest.raises(TrainJobError, match="BackoffLimitExceeded: node-1 exited with code 137"):
        run_trainjob(settings, "sft", ["--out", "o"], api_client=api.api, namespace=NS, owner=OWNER,
                     follow_logs=False)
    thread.join(5)
    assert not k8s.CustomObjectsApi(api.api).list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]


def test_sft_job_has_no_trainer_role_and_no_queue_label_when_disabled():
    settings = _two_nodes()
    settings.pipelines.kueue_queue = ""
    body = build_trainjob(settings, "sft", [], name="j", namespace=NS, owner=OWNER)
    pod = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert ROLE_LABEL not in pod["template"]["spec"]["template"]["metadata"]["labels"]
    assert QUEUE_LABEL not in body["metadata"]["labels"]


def test_a_field_the_trainer_api_does_not_know_is_caught():
    body = build_trainjob(_two_nodes(), "sft", [], name="j", namespace=NS, owner=OWNER)
    body["spec"]["trainer"]["numGPUs"] = 8  # not a Trainer field: pydantic would drop it silently
    assert _unknown_fields(body) == [".spec.trainer.numGPUs"]


def test_outside_a_pod_the_owner_is_required(monkeypatch):
    monkeypatch.delenv("POD_NAME", raising=False)
    with pytest.raises(TrainJobError, match="POD_NAME and POD_UID"):
        run_trainjob(_two_nodes(), "sft", [], api_client=object(), namespace=NS)
