"""What a pipeline step needs to create Kubernetes objects from inside its pod: credentials, its
namespace, and an ownerReference to itself (so what it creates cannot outlive it).

Why here: the GRPO step's rollout servers (components/grpo/rollout_pods.py) and the TrainJob of a
multi-node step (components/common/trainjob.py) both create objects owned by the step's pod. The
pod's name and uid come from the downward API (POD_NAME, POD_UID; pipelines/tasks.py sets them).
Import-only; tested through tests/unit/grpo/test_rollout_pods.py and tests/unit/common/test_trainjob.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
SA_TOKEN_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
DEFAULT_NAMESPACE = "deepmmsearch"


class KubeError(RuntimeError):
    """No credentials, or no identity of the step's own pod; the message says what to set."""


def in_cluster(env: Mapping[str, str] = os.environ) -> bool:
    """True inside a pod that can talk to its API server (service host set, token mounted)."""
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and SA_TOKEN_FILE.is_file()


def owner_from_env(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """An ownerReference to the current pod, from POD_NAME/POD_UID (downward API). blockOwnerDeletion
    stays false: setting it would need update rights on pods/finalizers, which the Role does not grant."""
    name, uid = env.get("POD_NAME"), env.get("POD_UID")
    if not name or not uid:
        raise KubeError("POD_NAME and POD_UID are not set: expose metadata.name and metadata.uid to "
                        "the step through the downward API (kfp-kubernetes use_field_path_as_env), so "
                        "what the step creates is owned by the step's pod and cannot leak")
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid,
            "controller": False, "blockOwnerDeletion": False}


def current_namespace(env: Mapping[str, str] = os.environ) -> str:
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    if SA_NAMESPACE_FILE.is_file():
        return SA_NAMESPACE_FILE.read_text().strip()
    return DEFAULT_NAMESPACE


def default_api_client() -> k8s.ApiClient:
    """The pod's in-cluster credentials, else ``KUBECONFIG``."""
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        try:
            k8s_config.load_kube_config()
        except (k8s_config.ConfigException, OSError) as exc:
            raise KubeError("no Kubernetes credentials: run inside a pod with the dmms-pipeline-runner "
                            "service account, or point KUBECONFIG at a cluster") from exc
    return k8s.ApiClient()
