"""Start the GRPO step's vLLM rollout server on Kubernetes, wait for it, and always clean it up.

Why: on the cluster the GRPO trainer generates with a vLLM server in its own GPU pod. The step
creates that server as a Deployment + Service through the Kubernetes API, owned by the step's own
pod (so the garbage collector removes it if the step dies), waits until it is ready, trains against
``http://<svc>.<ns>.svc:8000`` and deletes both when done. The pod shape (probes, security,
/dev/shm, scheduling) comes from the template in manifests/base/rollout/rollout-template.yaml,
mounted from the ``rollout-pod-template`` ConfigMap; this module fills in name, labels, owner,
command and GPU count. Weight sync runs the other way (the rollout pods connect to the trainer's
group port 51216); the NetworkPolicies in the same folder allow exactly that.

    from components.grpo.rollout_pods import RolloutServers, RolloutSpec
    with RolloutServers(RolloutSpec(model="Qwen/Qwen2.5-VL-7B-Instruct", tensor_parallel=1)) as url:
        ...  # GRPOConfig(vllm_mode="server", vllm_server_base_url=url)

Needs (set by the pipeline on the step's pod): the ``dmms-pipeline-runner`` service account,
POD_NAME / POD_UID (and optionally POD_NAMESPACE) from the downward API, and the label
``deepmmsearch.io/role: grpo-trainer``. Does not import kfp. The step labels its server with the
pipeline run (``deepmmsearch.io/run``); the run's exit handler calls :func:`delete_by_label` for
anything a killed step left behind. ``components/grpo/servers.py`` drives this from the settings.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from components.common import kube, retry
from components.common.trainjob import ROLE_LABEL
from components.common.vllm_server import vllm_serve_command, vllm_serve_env

log = logging.getLogger(__name__)

TEMPLATE_ENV = "DMMS_ROLLOUT_TEMPLATE"
TEMPLATE_PATHS = (
    Path("/etc/dmms/rollout/rollout-template.yaml"),  # the ConfigMap, mounted by the pipeline
    Path(__file__).resolve().parents[2] / "manifests/base/rollout/rollout-template.yaml",  # a checkout
)
INSTANCE_LABEL = "app.kubernetes.io/instance"
ROLE = "rollout"  # the ROLE_LABEL the template sets; what the NetworkPolicies select
RUN_LABEL = "deepmmsearch.io/run"  # the pipeline run that launched a server (its exit handler cleans up)
SERVER_PORT = 8000


class RolloutError(RuntimeError):
    """The rollout server could not be created, reached or removed; the message says what to fix."""


class RolloutTimeoutError(RolloutError):
    """The rollout server did not become ready in time; the message carries the pods' state."""


@dataclass(frozen=True)
class RolloutSpec:
    """What to serve. ``model`` is the base checkpoint: the trainer pushes the policy's weights
    before the first generation round, so the server need not start from the SFT checkpoint."""

    model: str
    tensor_parallel: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    image: str | None = None
    node_selector: Mapping[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    extra_args: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    max_pixels: int | None = None  # the processor's pixel budget (model.max_pixels): the image frame


def load_template(path: str | Path | None = None) -> tuple[dict, dict]:
    """The (Deployment, Service) template: ``path``, else $DMMS_ROLLOUT_TEMPLATE, else the mounted
    ConfigMap, else the repository copy."""
    candidates = [Path(path)] if path else (
        [Path(os.environ[TEMPLATE_ENV])] if os.environ.get(TEMPLATE_ENV) else list(TEMPLATE_PATHS))
    for candidate in candidates:
        if candidate.is_file():
            docs = [d for d in yaml.safe_load_all(candidate.read_text()) if d]
            kinds = {d.get("kind"): d for d in docs}
            if set(kinds) != {"Deployment", "Service"}:
                raise RolloutError(f"rollout template {candidate} must hold one Deployment and one Service, "
                                   f"found kinds {sorted(map(str, kinds))}")
            return kinds["Deployment"], kinds["Service"]
    raise RolloutError(f"no rollout template at {', '.join(map(str, candidates))}: mount the "
                       f"rollout-pod-template ConfigMap at /etc/dmms/rollout or set {TEMPLATE_ENV}")


def owner_from_env(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """An ownerReference to the step's pod (:func:`components.common.kube.owner_from_env`)."""
    try:
        return kube.owner_from_env(env)
    except kube.KubeError as exc:
        raise RolloutError(str(exc)) from None


def current_namespace(env: Mapping[str, str] = os.environ) -> str:
    return kube.current_namespace(env)


def build_objects(template: tuple[dict, dict], spec: RolloutSpec, *, name: str, namespace: str,
                  owner: dict[str, Any]) -> tuple[dict, dict]:
    """Fill the template: pure, so it can be validated offline against the Kubernetes schemas."""
    deployment, service = (copy.deepcopy(t) for t in template)
    labels = {**deployment["metadata"].get("labels", {}), **spec.labels, INSTANCE_LABEL: name}
    for obj in (deployment, service):
        obj["metadata"].update(name=name, namespace=namespace, ownerReferences=[owner],
                               labels={**obj["metadata"].get("labels", {}), **labels})
    selector = {**deployment["spec"]["selector"]["matchLabels"], INSTANCE_LABEL: name}
    deployment["spec"]["selector"]["matchLabels"] = selector
    deployment["spec"]["replicas"] = 1  # one server URL per trainer (TRL)
    pod = deployment["spec"]["template"]
    pod["metadata"]["labels"] = {**pod["metadata"].get("labels", {}), **labels}
    service["spec"]["selector"] = dict(selector)
    pod_spec = pod["spec"]
    if spec.node_selector is not None:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations is not None:
        pod_spec["tolerations"] = list(spec.tolerations)
    container = pod_spec["containers"][0]
    argv = vllm_serve_command(spec.model, tensor_parallel=spec.tensor_parallel,
                              gpu_memory_utilization=spec.gpu_memory_utilization,
                              max_model_len=spec.max_model_len, port=SERVER_PORT,
                              max_pixels=spec.max_pixels, extra_args=spec.extra_args)
    container["command"] = argv
    container.pop("args", None)
    env = [e for e in container.get("env", []) if e["name"] not in vllm_serve_env()]
    container["env"] = env + [{"name": k, "value": v} for k, v in vllm_serve_env().items()]
    if spec.image:
        container["image"] = spec.image
    gpus = str(spec.tensor_parallel)
    for kind in ("requests", "limits"):
        container.setdefault("resources", {}).setdefault(kind, {})["nvidia.com/gpu"] = gpus
    return deployment, service


def _retrying(what: str, fn: Callable[[], Any], retries: int = 3, backoff_s: float = 1.0) -> Any:
    """Call the API under the shared retry policy (components/common/retry.py): connection failures,
    429 (after its Retry-After), 502 and 503 are retried; any other API error is raised as is, and a
    broken connection or read timeout becomes :class:`RolloutError`."""

    def once() -> Any:
        try:
            return fn()
        except k8s.ApiException as exc:
            if retry.retryable_status(exc.status or 0):
                raise retry.Retryable(exc, retry_after=retry.retry_after_s(exc.headers)) from None
            raise
        except RolloutError:
            raise
        except Exception as exc:  # urllib3 connection errors and timeouts surface as several types
            err = RolloutError(f"{what}: the Kubernetes API is unreachable ({exc})")
            if retry.is_connect_error(exc):
                raise retry.Retryable(err) from exc
            raise err from exc

    return retry.attempts_sync(once, name=f"kubernetes {what}", retries=retries, wait_initial=backoff_s)


class RolloutServers:
    """One vLLM rollout server (Deployment + Service) for the lifetime of a ``with`` block.

    ``with RolloutServers(spec) as url`` creates both, waits until the Deployment reports a ready
    replica (at most ``ready_timeout_s``; the error then quotes the pods' conditions and last
    events), yields ``http://<name>.<namespace>.svc:8000``, and deletes both on exit — also when
    creation or the wait failed. :meth:`delete` is idempotent and tolerates objects already gone.
    """

    def __init__(self, spec: RolloutSpec, *, namespace: str | None = None, name: str | None = None,
                 template: tuple[dict, dict] | None = None, owner: dict[str, Any] | None = None,
                 api_client: k8s.ApiClient | None = None, ready_timeout_s: float = 1800.0,
                 poll_s: float = 5.0, request_timeout_s: float = 30.0) -> None:
        if ready_timeout_s <= 0 or poll_s <= 0:
            raise ValueError("ready_timeout_s and poll_s must be > 0")
        self.spec = spec
        self.namespace = namespace or current_namespace()
        self.name = name or f"vllm-rollout-{uuid.uuid4().hex[:10]}"
        self.deployment, self.service = build_objects(
            template or load_template(), spec, name=self.name, namespace=self.namespace,
            owner=owner or owner_from_env())
        self._api = api_client or _default_api_client()
        self._apps, self._core = k8s.AppsV1Api(self._api), k8s.CoreV1Api(self._api)
        self.ready_timeout_s, self.poll_s, self._timeout = ready_timeout_s, poll_s, request_timeout_s
        self._ours: set[str] = set()  # kinds this object may have created (never a foreign object)

    @property
    def url(self) -> str:
        return f"http://{self.name}.{self.namespace}.svc:{SERVER_PORT}"

    def __enter__(self) -> str:
        try:
            self.create()
            return self.wait_ready()
        except BaseException:
            self.delete()
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.delete()
        except RolloutError:
            if exc_type is None:
                raise
            log.exception("cleanup of rollout server %s failed (the owner reference still "
                          "removes it when the step's pod goes)", self.name)

    def create(self) -> None:
        """Create the Deployment, then the Service (an existing object of the same name is an error)."""
        log.info("creating vLLM rollout server %s/%s (%s, %d GPU)", self.namespace, self.name,
                 self.spec.model, self.spec.tensor_parallel)
        for kind, call in (("Deployment", self._apps.create_namespaced_deployment),
                           ("Service", self._core.create_namespaced_service)):
            body = self.deployment if kind == "Deployment" else self.service
            self._ours.add(kind)
            try:
                _retrying(f"create {kind} {self.name}",
                          lambda c=call, b=body: c(self.namespace, b, _request_timeout=self._timeout))
            except k8s.ApiException as exc:
                if exc.status == 409:
                    self._ours.discard(kind)  # someone else's object: never delete it
                raise RolloutError(f"cannot create {kind} {self.namespace}/{self.name}: HTTP {exc.status} "
                                   f"{exc.reason}: {_message(exc)}" + _rbac_hint(exc)) from exc

    def wait_ready(self) -> str:
        """Poll until the Deployment has a ready replica; return the service URL."""
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            dep = _retrying(f"read Deployment {self.name}", lambda: self._apps.read_namespaced_deployment(
                self.name, self.namespace, _request_timeout=self._timeout))
            if _is_ready(dep):
                log.info("rollout server ready at %s", self.url)
                return self.url
            if time.monotonic() >= deadline:
                raise RolloutTimeoutError(
                    f"vLLM rollout server {self.namespace}/{self.name} not ready after "
                    f"{self.ready_timeout_s:g}s; {self.diagnose(dep)}")
            time.sleep(min(self.poll_s, max(deadline - time.monotonic(), 0.0)))

    def delete(self) -> None:
        """Delete what this object created; objects already gone (404) are fine."""
        for kind, call in (("Service", self._core.delete_namespaced_service),
                           ("Deployment", self._apps.delete_namespaced_deployment)):
            if kind not in self._ours:
                continue
            try:
                _retrying(f"delete {kind} {self.name}", lambda c=call: c(
                    self.name, self.namespace, propagation_policy="Background",
                    _request_timeout=self._timeout))
                log.info("deleted %s %s/%s", kind, self.namespace, self.name)
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise RolloutError(f"cannot delete {kind} {self.namespace}/{self.name}: HTTP "
                                       f"{exc.status} {exc.reason}" + _rbac_hint(exc)) from exc
            self._ours.discard(kind)

    def diagnose(self, dep: Any = None) -> str:
        """The Deployment's conditions, its pods' phase/conditions/container states and last events."""
        lines = [f"deployment: ready {getattr(dep.status, 'ready_replicas', None) or 0}/1"] if dep else []
        for c in (dep.status.conditions or []) if dep and dep.status else []:
            lines.append(f"deployment condition {c.type}={c.status} {c.reason or ''}: {c.message or ''}")
        selector = ",".join(f"{k}={v}" for k, v in self.deployment["spec"]["selector"]["matchLabels"].items())
        try:
            pods = self._core.list_namespaced_pod(self.namespace, label_selector=selector,
                                                  _request_timeout=self._timeout).items
        except k8s.ApiException as exc:
            return "; ".join(lines + [f"pods unreadable: HTTP {exc.status}"])
        pods = [p for p in pods if (p.metadata.labels or {}).get(INSTANCE_LABEL) == self.name]
        if not pods:
            lines.append("no pods created (quota, admission or a bad template?)")
        for pod in pods:
            lines.append(_describe_pod(pod))
            lines += [f"  event {e}" for e in self._events(pod.metadata.name)]
        return "; ".join(lines)

    def _events(self, pod_name: str, last: int = 5) -> list[str]:
        try:
            items = self._core.list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.name={pod_name}",
                _request_timeout=self._timeout).items
        except k8s.ApiException as exc:
            return [f"unreadable (HTTP {exc.status})"]
        items = [e for e in items if e.involved_object is None or e.involved_object.name == pod_name]
        items.sort(key=lambda e: str(e.last_timestamp or e.event_time or ""))
        return [f"{e.type or ''} {e.reason or ''}: {e.message or ''}" for e in items[-last:]]


def run_label_value(run_id: str) -> str:
    """``run_id`` as a valid label value (at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", run_id)[:63].strip("-_.")
    return value or "local"


def in_cluster(env: Mapping[str, str] = os.environ) -> bool:
    """True inside a pod that can talk to its API server (service host set, token mounted)."""
    return kube.in_cluster(env)


def delete_by_label(namespace: str, selector: Mapping[str, str], *, api_client: k8s.ApiClient | None = None,
                    request_timeout_s: float = 30.0) -> list[str]:
    """Delete every rollout Deployment and Service in ``namespace`` whose labels include ``selector``
    (the role label ``deepmmsearch.io/role=rollout`` is always added, so nothing else is touched);
    return ``Kind/name`` of each deleted object. Lists then deletes one by one: the Role grants
    list and delete, not deletecollection. Objects already gone are fine."""
    wanted = {**selector, ROLE_LABEL: ROLE}
    label_selector = ",".join(f"{k}={v}" for k, v in sorted(wanted.items()))
    api = api_client or _default_api_client()
    apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    deleted = []
    for kind, lister, deleter in (
            ("Deployment", apps.list_namespaced_deployment, apps.delete_namespaced_deployment),
            ("Service", core.list_namespaced_service, core.delete_namespaced_service)):
        try:
            items = _retrying(f"list {kind}s {label_selector}", lambda f=lister: f(
                namespace, label_selector=label_selector, _request_timeout=request_timeout_s)).items
        except k8s.ApiException as exc:
            raise RolloutError(f"cannot list {kind}s in {namespace}: HTTP {exc.status} {exc.reason}"
                               + _rbac_hint(exc)) from exc
        for obj in items:  # re-check the labels: never delete on a selector the server ignored
            if not wanted.items() <= (obj.metadata.labels or {}).items():
                continue
            name = obj.metadata.name
            try:
                _retrying(f"delete {kind} {name}", lambda f=deleter, n=name: f(
                    n, namespace, propagation_policy="Background", _request_timeout=request_timeout_s))
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise RolloutError(f"cannot delete {kind} {namespace}/{name}: HTTP {exc.status} "
                                       f"{exc.reason}" + _rbac_hint(exc)) from exc
                continue
            log.info("deleted leftover %s %s/%s", kind, namespace, name)
            deleted.append(f"{kind}/{name}")
    return deleted


def _default_api_client() -> k8s.ApiClient:
    try:
        return kube.default_api_client()
    except kube.KubeError as exc:
        raise RolloutError(str(exc)) from None


def _is_ready(dep: Any) -> bool:
    status = dep.status
    if status is None or not status.ready_replicas:
        return False
    generation, observed = dep.metadata.generation, status.observed_generation
    return status.ready_replicas >= 1 and (generation is None or observed is None or observed >= generation)


def _describe_pod(pod: Any) -> str:
    status = pod.status
    parts = [f"pod {pod.metadata.name}: phase {getattr(status, 'phase', None)}"]
    for c in (status.conditions or []) if status else []:
        if c.status != "True":
            parts.append(f"{c.type}={c.status} {c.reason or ''} {c.message or ''}".strip())
    for cs in (status.container_statuses or []) if status else []:
        state = cs.state
        if state and state.waiting:
            parts.append(f"container {cs.name} waiting: {state.waiting.reason} {state.waiting.message or ''}")
        elif state and state.terminated:
            parts.append(f"container {cs.name} terminated: {state.terminated.reason} "
                         f"(exit {state.terminated.exit_code})")
    return ", ".join(p.strip() for p in parts)


def _message(exc: k8s.ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message", ""))[:300]
    except ValueError:
        return (exc.body or "")[:300]


def _rbac_hint(exc: k8s.ApiException) -> str:
    if exc.status == 403:
        return (" (run the step with service account dmms-pipeline-runner; its Role is in "
                "manifests/base/rbac/rbac.yaml)")
    return ""
