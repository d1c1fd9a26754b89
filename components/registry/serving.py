"""Serve the champion: promotion and rollback point a serving object at the champion's checkpoint.

Why: ``models:/deepmmsearch-agent@champion`` is a pointer only our code can read; users want an
OpenAI-compatible endpoint that serves the champion. With ``serving.target``:

- ``kserve``: a KServe ``InferenceService`` (serving.kserve.io/v1beta1) whose predictor is the
  Hugging Face runtime with its vLLM backend, ``storageUri`` = the checkpoint in the object store
  (read with the S3 credentials of ``serving.storage_service_account``);
- ``deployment``: where KServe is absent, a vLLM Deployment + Service whose init container fetches
  the checkpoint (verified against its manifest) and whose server is ``vllm serve`` on it.

Both carry the model-registry version and checkpoint URI as annotations, the Kueue queue label,
and the GPU pool's scheduling; :func:`serving_status` reads them back (``dmms serve status``).
Created or replaced through the Kubernetes API from the promote step's pod (its Role grants it).
Tests: ``pytest tests/unit/registry/test_serving.py`` (in-memory Kubernetes API stand-in).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kubernetes import client as k8s

from components.common import kube
from components.common.trainjob import QUEUE_LABEL

log = logging.getLogger(__name__)

KSERVE = ("serving.kserve.io", "v1beta1", "inferenceservices")
VERSION_ANNOTATION, CHECKPOINT_ANNOTATION = "deepmmsearch.io/model-version", "deepmmsearch.io/checkpoint-uri"
PORT = 8000


class ServingError(RuntimeError):
    """The serving object could not be written or read; the message says what to fix."""


def _labels(settings: Any) -> dict[str, str]:
    q = settings.pipelines.kueue_queue
    return {"app.kubernetes.io/name": settings.serving.name, "deepmmsearch.io/role": "serving",
            **({QUEUE_LABEL: q} if q else {})}


def _annotations(checkpoint_uri: str, version: str) -> dict[str, str]:
    return {VERSION_ANNOTATION: str(version), CHECKPOINT_ANNOTATION: checkpoint_uri}


def _resources(settings: Any) -> dict[str, Any]:
    s, p = settings.serving, settings.pipelines
    amounts = {"cpu": s.cpu, "memory": s.memory, p.gpu_accelerator: str(s.gpus)}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def inference_service(settings: Any, checkpoint_uri: str, version: str) -> dict[str, Any]:
    """The KServe InferenceService serving ``checkpoint_uri`` (pure: validated offline)."""
    s, p = settings.serving, settings.pipelines
    return {
        "apiVersion": f"{KSERVE[0]}/{KSERVE[1]}", "kind": "InferenceService",
        "metadata": {"name": s.name, "namespace": p.namespace, "labels": _labels(settings),
                     "annotations": _annotations(checkpoint_uri, version)},
        "spec": {"predictor": {
            "serviceAccountName": s.storage_service_account,
            "nodeSelector": dict(p.gpu_node_selector),
            "tolerations": [dict(t) for t in p.gpu_tolerations],
            "model": {
                "modelFormat": {"name": "huggingface"},
                "storageUri": checkpoint_uri,
                "args": [f"--model_name={s.name}", "--backend=vllm", f"--max-model-len={s.max_model_len}",
                         f"--tensor-parallel-size={s.gpus}",  # vLLM engine args pass through; the frame:
                         "--mm-processor-kwargs=" + json.dumps({"max_pixels": settings.model.max_pixels})],
                "resources": _resources(settings),
            },
        }},
    }


def vllm_deployment(settings: Any, checkpoint_uri: str, version: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The vLLM Deployment + Service serving ``checkpoint_uri`` where KServe is absent (pure)."""
    from components.common.vllm_server import vllm_serve_command

    s, p = settings.serving, settings.pipelines
    labels = _labels(settings)
    selector = {"app.kubernetes.io/name": s.name}
    secure = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    env = [{"name": k, "value": v} for k, v in p.cluster_env.items() if k.startswith("DMMS_STORAGE__")]
    for secret, keys in p.secrets.items():
        for key, var in keys.items():
            if var.startswith("DMMS_STORAGE__"):
                env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    mounts = [{"name": "model", "mountPath": "/models"}, {"name": "tmp", "mountPath": "/tmp"},
              {"name": "dshm", "mountPath": "/dev/shm"}]
    command = vllm_serve_command("/models/champion", tensor_parallel=s.gpus, max_model_len=s.max_model_len,
                                 port=PORT, served_model_name=s.name, weight_sync=False,
                                 max_pixels=settings.model.max_pixels)
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": s.name, "namespace": p.namespace, "labels": labels,
                     "annotations": _annotations(checkpoint_uri, version)},
        "spec": {
            "replicas": 1, "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels, "annotations": _annotations(checkpoint_uri, version)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                    "nodeSelector": dict(p.gpu_node_selector),
                    "tolerations": [dict(t) for t in p.gpu_tolerations],
                    "initContainers": [{
                        "name": "fetch-checkpoint", "image": p.train_image,
                        "command": ["python", "-m", "components.registry.fetch", checkpoint_uri, "/models/champion"],
                        "env": env + [{"name": "HOME", "value": "/tmp"}],
                        "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}},
                        "securityContext": secure, "volumeMounts": mounts[:2],
                    }],
                    "containers": [{
                        "name": "vllm", "image": p.train_image, "command": command,
                        "env": [{"name": "HOME", "value": "/tmp"}],
                        "ports": [{"name": "http", "containerPort": PORT}],
                        "startupProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10,
                                         "failureThreshold": 120},
                        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10},
                        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 15,
                                          "failureThreshold": 4},
                        "resources": _resources(settings), "securityContext": secure, "volumeMounts": mounts,
                    }],
                    "volumes": [{"name": "model", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": p.shm_size}}],
                },
            },
        },
    }
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": s.name, "namespace": p.namespace, "labels": labels},
               "spec": {"selector": selector, "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]}}
    return deployment, service


def _api() -> k8s.ApiClient:
    try:
        return kube.default_api_client()
    except kube.KubeError as exc:
        raise ServingError(str(exc)) from None


def update_serving(settings: Any, checkpoint_uri: str, version: str,
                   api_client: k8s.ApiClient | None = None) -> dict[str, Any] | None:
    """Create or replace the serving object for the champion; None when ``serving.target`` is none."""
    target, ns = settings.serving.target, settings.pipelines.namespace
    if target == "none":
        return None
    api = api_client or _api()
    try:
        if target == "kserve":
            body = inference_service(settings, checkpoint_uri, version)
            _upsert_custom(k8s.CustomObjectsApi(api), body)
        else:
            deployment, service = vllm_deployment(settings, checkpoint_uri, version)
            apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
            _upsert(apps.read_namespaced_deployment, apps.create_namespaced_deployment,
                    apps.patch_namespaced_deployment, deployment, ns)
            _upsert(core.read_namespaced_service, core.create_namespaced_service,
                    core.patch_namespaced_service, service, ns)
            body = deployment
    except k8s.ApiException as exc:
        raise ServingError(f"could not point {target} {ns}/{settings.serving.name} at version {version}: HTTP "
                           f"{exc.status} {exc.reason} (is KServe installed for target kserve; may the "
                           f"promote step's service account write it?)") from exc
    log.info("serving %s/%s now serves version %s (%s)", ns, settings.serving.name, version, checkpoint_uri)
    return body


def _upsert_custom(custom: k8s.CustomObjectsApi, body: dict[str, Any]) -> None:
    group, version, plural = KSERVE
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        custom.get_namespaced_custom_object(group, version, ns, plural, name)
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise
        custom.create_namespaced_custom_object(group, version, ns, plural, body)
        return
    custom.patch_namespaced_custom_object(group, version, ns, plural, name, body)  # a merge patch


def _upsert(read, create, patch, body: dict[str, Any], ns: str) -> None:
    name = body["metadata"]["name"]
    try:
        read(name, ns)
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise
        create(ns, body)
        return
    patch(name, ns, body)


def serving_status(settings: Any, api_client: k8s.ApiClient | None = None) -> dict[str, Any]:
    """Which version the serving object serves: kind, name, version, checkpoint URI, ready."""
    target, ns, name = settings.serving.target, settings.pipelines.namespace, settings.serving.name
    if target == "none":
        return {"target": "none", "note": "DMMS_SERVING__TARGET is none: only the registry alias names the champion"}
    api = api_client or _api()
    try:
        if target == "kserve":
            obj = k8s.CustomObjectsApi(api).get_namespaced_custom_object(*KSERVE[:2], ns, KSERVE[2], name)
            meta, status = obj["metadata"], obj.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
            url = status.get("url")
        else:
            dep = api.sanitize_for_serialization(k8s.AppsV1Api(api).read_namespaced_deployment(name, ns))
            meta, status = dep["metadata"], dep.get("status") or {}
            ready, url = bool(status.get("readyReplicas")), f"http://{name}.{ns}.svc:{PORT}/v1"
    except k8s.ApiException as exc:
        if exc.status == 404:
            return {"target": target, "name": name, "version": None, "note": "nothing served yet: promote a model"}
        raise ServingError(f"could not read {target} {ns}/{name}: HTTP {exc.status} {exc.reason}") from exc
    notes = meta.get("annotations") or {}
    return {"target": target, "name": name, "version": notes.get(VERSION_ANNOTATION),
            "checkpoint_uri": notes.get(CHECKPOINT_ANNOTATION), "ready": ready, "url": url}
