"""A multi-node training step as a Kubeflow Trainer v2 ``TrainJob``, created and watched by its pipeline step.

Why: one node holds 8 GPUs; past that, ranks must be scheduled together on several nodes, restarted
together and admitted together by Kueue. Kubeflow Trainer v2 does exactly that (a JobSet of one Job
per node, the torch runtime's ``PET_*`` rendezvous env), so with ``pipelines.nodes`` > 1 the SFT/GRPO
step pod does not train: it creates a ``TrainJob`` (trainer.kubeflow.org/v1alpha1, the torch
``ClusterTrainingRuntime`` of ``pipelines.trainjob_runtime``; not the legacy PyTorchJob) through
the Kubernetes API, follows node 0's log, fails with the job's own reason, and deletes the job at the
end. Every node runs ``python -m components.common.launch <step> -- ARGS`` (its ranks under
``accelerate launch``), so one and many nodes train through the same code.

The job is owned by the step's pod (an ownerReference from the downward API), so it cannot outlive
a killed step; it carries the step's image, ``DMMS_*`` env and Secrets (as ``secretKeyRef``), the
GPU resources, node selector, tolerations and ``/dev/shm`` of the GPU pool, the Kueue queue label,
and — for GRPO — the trainer role label the rollout pods' NetworkPolicy admits (NCCL weight sync).

Objects are built with the Trainer's own API types (``kubeflow_trainer_api``), so a field the API
does not know fails here, not on the cluster. Tests: ``pytest tests/unit/common/test_trainjob.py``
(against an in-memory Kubernetes API: no API server runs on a CPU machine).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client as k8s

from components.common import kube

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
ROLE_LABEL, TRAINER_ROLE = "deepmmsearch.io/role", "grpo-trainer"
STEP_LABEL, RUN_LABEL = "deepmmsearch.io/step", "deepmmsearch.io/run"
NODE_JOB = "node"  # the replicated job (and container) of the torch runtime
PATCH_MANAGER = "deepmmsearch.io/pipeline-step"
SHM_VOLUME = "dshm"
CLIENT_LABELS = {"deepmmsearch.io/pipeline-workload": "true", "deepmmsearch.io/tools-client": "true"}


class TrainJobError(RuntimeError):
    """The TrainJob failed, timed out or could not be created; the message carries the job's reason."""


def _env(settings: Any, overrides: Mapping[str, str]) -> list[dict[str, Any]]:
    """The step's env for every node: profile, non-secret cluster env, run id, overrides, Secrets by reference."""
    p = settings.pipelines
    plain = {"DMMS_PROFILE": settings.profile, **p.cluster_env, **dict(overrides)}
    if os.environ.get("KFP_RUN_ID"):
        plain["KFP_RUN_ID"] = os.environ["KFP_RUN_ID"]
    env = [{"name": k, "value": v} for k, v in plain.items()]
    for optional, secret_map in ((False, p.secrets), (True, p.optional_secrets)):
        for secret, keys in secret_map.items():
            for key, var in keys.items():
                env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key,
                                                                        "optional": optional}}})
    return env


def build_trainjob(settings: Any, step: str, step_args: Sequence[str], *, name: str, namespace: str,
                   owner: Mapping[str, Any], env: Mapping[str, str] | None = None,
                   run_id: str = "") -> dict[str, Any]:
    """The TrainJob of ``step`` as JSON, checked against the Trainer API types (pure: no cluster)."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    p = settings.pipelines
    gpus = str(p.gpu_count)
    labels = {STEP_LABEL: step, **({RUN_LABEL: run_id[:63]} if run_id else {})}
    job_labels = {**labels, **({QUEUE_LABEL: p.kueue_queue} if p.kueue_queue else {})}
    # what the NetworkPolicies admit (manifests/base/*/networkpolicy.yaml): like a pipeline pod, the
    # nodes reach MinIO, MLflow, the judge and the tool-server; GRPO's also take the rollout pods' NCCL
    pod_labels = {**labels, **CLIENT_LABELS, **({ROLE_LABEL: TRAINER_ROLE} if step == "grpo" else {})}
    pod_spec: dict[str, Any] = {
        "nodeSelector": dict(p.gpu_node_selector),
        "tolerations": [dict(t) for t in p.gpu_tolerations],
        "serviceAccountName": p.service_account,
        "volumes": [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": p.shm_size}}],
        "containers": [{"name": NODE_JOB, "volumeMounts": [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]}],
    }
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace, "labels": job_labels,
                     "ownerReferences": [dict(owner)]},
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": p.trainjob_runtime},
            "trainer": {
                "image": p.train_image,
                "command": ["python", "-m", "components.common.launch", step, "--", *step_args],
                "numNodes": p.nodes,
                "numProcPerNode": p.gpu_count,
                "resourcesPerNode": {
                    "requests": {p.gpu_accelerator: gpus, "cpu": p.gpu_cpu, "memory": p.gpu_memory},
                    "limits": {p.gpu_accelerator: gpus, "cpu": p.gpu_cpu, "memory": p.gpu_memory},
                },
                "env": _env(settings, env or {}),
            },
            "runtimePatches": [{
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                    "name": NODE_JOB,
                    "template": {"spec": {"template": {"metadata": {"labels": pod_labels}, "spec": pod_spec}}},
                }]}}},
            }],
        },
    }
    TrainerV1alpha1TrainJob.from_dict(body)  # raises on a field or type the Trainer API does not have
    unknown = _unknown_fields(body)
    if unknown:
        raise TrainJobError(f"TrainJob fields unknown to the Trainer API: {unknown}")
    return body


def _unknown_fields(body: dict[str, Any]) -> list[str]:
    """Fields the API types dropped on a round trip (pydantic ignores extras): must be none."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    back = TrainerV1alpha1TrainJob.from_dict(body).to_dict()
    missing: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict):
            for key, value in a.items():
                if not isinstance(b, dict) or key not in b:
                    missing.append(f"{path}.{key}")
                else:
                    walk(value, b[key], f"{path}.{key}")
        elif isinstance(a, list) and isinstance(b, list):
            for i, (x, y) in enumerate(zip(a, b, strict=False)):
                walk(x, y, f"{path}[{i}]")

    walk(body, back, "")
    return missing


def _condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


class TrainJobRun:
    """One TrainJob for the lifetime of a ``with`` block: created on enter, deleted on exit."""

    def __init__(self, body: dict[str, Any], *, api_client: k8s.ApiClient | None = None,
                 poll_s: float = 10.0, timeout_s: float = 7 * 24 * 3600.0, follow_logs: bool = True):
        self.body, self.poll_s, self.timeout_s, self.follow_logs = body, poll_s, timeout_s, follow_logs
        self.name, self.namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        if api_client is None:
            try:
                api_client = kube.default_api_client()
            except kube.KubeError as exc:
                raise TrainJobError(str(exc)) from None
        self.api = api_client
        self.custom, self.core = k8s.CustomObjectsApi(api_client), k8s.CoreV1Api(api_client)
        self._log_thread: threading.Thread | None = None

    def __enter__(self) -> TrainJobRun:
        try:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.body)
        except k8s.ApiException as exc:
            raise TrainJobError(f"could not create TrainJob {self.namespace}/{self.name}: HTTP {exc.status} "
                                f"{exc.reason} (is Kubeflow Trainer v2 installed, and may the step's service "
                                f"account create trainjobs.{GROUP}?)") from exc
        log.info("created TrainJob %s/%s: %d nodes x %d ranks", self.namespace, self.name,
                 self.body["spec"]["trainer"]["numNodes"], self.body["spec"]["trainer"]["numProcPerNode"])
        return self

    def __exit__(self, *exc: Any) -> None:
        self.delete()

    def get(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)

    def wait(self) -> dict[str, Any]:
        """Block until the job completes (return it) or fails / times out (raise with its reason)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            job = self.get()
            if self.follow_logs and self._log_thread is None:
                self._start_logs()
            if _condition(job, "Complete"):
                log.info("TrainJob %s completed", self.name)
                return job
            failed = _condition(job, "Failed")
            if failed:
                raise TrainJobError(f"TrainJob {self.namespace}/{self.name} failed: {failed.get('reason', '?')}: "
                                    f"{failed.get('message', '')}")
            if time.monotonic() > deadline:
                raise TrainJobError(f"TrainJob {self.namespace}/{self.name} did not finish within "
                                    f"{self.timeout_s:.0f} s (DMMS_PIPELINES__TRAINJOB_TIMEOUT_S)")
            time.sleep(self.poll_s)

    def _start_logs(self) -> None:
        """Follow node 0's log into ours once its pod exists (best effort: a log is not a result)."""
        selector = f"jobset.sigs.k8s.io/jobset-name={self.name},batch.kubernetes.io/job-completion-index=0"
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        pods = [pod for pod in pods if (pod.metadata.labels or {}).get("jobset.sigs.k8s.io/jobset-name") == self.name]
        if not pods or (pods[0].status and pods[0].status.phase == "Pending"):
            return
        pod = pods[0].metadata.name

        def follow() -> None:
            try:
                stream = self.core.read_namespaced_pod_log(pod, self.namespace, follow=True,
                                                          _preload_content=False, _request_timeout=(10, None))
                for line in stream.stream():
                    log.info("[%s] %s", pod, line.decode(errors="replace").rstrip())
            except Exception as exc:  # the job's status, not its log, decides the step
                log.warning("stopped following %s's log: %s", pod, exc)

        self._log_thread = threading.Thread(target=follow, daemon=True, name=f"log-{pod}")
        self._log_thread.start()

    def delete(self) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name,
                                                        body=k8s.V1DeleteOptions(propagation_policy="Foreground"))
            log.info("deleted TrainJob %s/%s", self.namespace, self.name)
        except k8s.ApiException as exc:
            if exc.status != 404:  # the owner reference still removes it with the step's pod
                log.warning("could not delete TrainJob %s/%s: HTTP %s", self.namespace, self.name, exc.status)


def _owner() -> dict[str, Any]:
    try:
        return kube.owner_from_env()
    except kube.KubeError as exc:
        raise TrainJobError(str(exc)) from None


def run_trainjob(settings: Any, step: str, step_args: Sequence[str], *, env: Mapping[str, str] | None = None,
                 api_client: k8s.ApiClient | None = None, namespace: str | None = None,
                 owner: Mapping[str, Any] | None = None, follow_logs: bool = True) -> dict[str, Any]:
    """Create the TrainJob of ``step``, wait for it, delete it; return its final state. In a pod,
    namespace and owner come from the pod itself (downward API); tests pass them."""
    run_id = os.environ.get("KFP_RUN_ID", "")
    name = f"dmms-{step}-{secrets.token_hex(4)}"
    body = build_trainjob(settings, step, step_args, name=name, namespace=namespace or kube.current_namespace(),
                          owner=owner or _owner(), env=env, run_id=run_id)
    p = settings.pipelines
    with TrainJobRun(body, api_client=api_client, poll_s=p.trainjob_poll_s, timeout_s=p.trainjob_timeout_s,
                     follow_logs=follow_logs) as job:
        return job.wait()
