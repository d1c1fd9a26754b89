"""How a pipeline task runs on the cluster: env, Secrets, GPUs, retries, caching (kfp-kubernetes).

Why one place: every pipeline configures its tasks the same way, and the tests read the compiled
YAML for exactly these settings. ``Placement`` says what a task needs; :func:`configure` applies it:

- env: the non-secret ``DMMS_*`` of ``settings.pipelines.cluster_env`` (+ ``DMMS_PROFILE``), and the
  Kubernetes Secrets of ``settings.pipelines.secrets`` as env (``kubernetes.use_secret_as_env``);
- GPU steps: accelerator type and count, CPU/memory, the GPU node pool's node selector and
  tolerations, ``/dev/shm`` as a memory emptyDir (NCCL and DataLoader workers need more than 64 MB);
- retries with exponential backoff on preemptible steps; caching only on deterministic steps;
- Kueue: every pod that requests GPUs carries ``kueue.x-k8s.io/queue-name`` (``pipelines.kueue_queue``),
  so a cluster whose GPUs are under Kueue admits it (Kueue's pod integration);
- the training steps (``trains``): with ``pipelines.nodes`` > 1 they only launch and watch a
  TrainJob (components/common/trainjob.py), so their own pod is a small CPU pod with its identity
  (POD_NAME/POD_UID/POD_NAMESPACE from the downward API) for the TrainJob's owner reference;
- the GRPO step (``rollout_launcher``): what components/grpo/servers.py needs to start its vLLM
  rollout server (manifests/README.md): the pod label ``deepmmsearch.io/role: grpo-trainer`` (the
  NetworkPolicies let rollout pods reach it), POD_NAME/POD_UID/POD_NAMESPACE from the downward API
  (the owner reference), and the ``rollout-pod-template`` ConfigMap at /etc/dmms/rollout/. The
  service account (``dmms-pipeline-runner``, RBAC for it) is set per run by pipelines/submit.py.

Built with ``cluster=False`` (the KFP local runner) a task gets no env: the local runner would pass
it to the subprocess, and the cluster's Service names mean nothing on a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass

from kfp import dsl, kubernetes

from components.common.settings import Settings
from components.common.trainjob import QUEUE_LABEL, ROLE_LABEL, TRAINER_ROLE
from components.grpo.rollout_pods import TEMPLATE_PATHS

SHM_VOLUME = "dshm"
ROLLOUT_TEMPLATE_CONFIGMAP = "rollout-pod-template"
POD_FIELD_ENV = {"POD_NAME": "metadata.name", "POD_UID": "metadata.uid", "POD_NAMESPACE": "metadata.namespace"}


@dataclass(frozen=True)
class Placement:
    gpu: bool = False
    retry: bool = False
    cache: bool = False
    rollout_launcher: bool = False  # the GRPO step: starts its vLLM rollout server on Kubernetes
    trains: bool = False  # SFT/GRPO: with pipelines.nodes > 1 a TrainJob trains, this pod launches it


CPU_CACHED = Placement(cache=True)
CPU = Placement()
CPU_RETRY = Placement(retry=True)
GPU = Placement(gpu=True, retry=True)
SFT = Placement(gpu=True, retry=True, trains=True)
GRPO = Placement(gpu=True, retry=True, rollout_launcher=True, trains=True)


def configure(task: dsl.PipelineTask, settings: Settings, place: Placement, *, profile: str,
              cluster: bool, gpu_pool: bool = True) -> dsl.PipelineTask:
    """Apply env, Secrets, resources, retries and caching to ``task``; return it."""
    p = settings.pipelines
    task.set_caching_options(place.cache)
    if place.retry:
        task.set_retry(p.retries, backoff_duration=p.retry_backoff, backoff_factor=2.0)
    if not cluster:
        return task
    task.set_env_variable("DMMS_PROFILE", profile)
    for key, value in p.cluster_env.items():
        task.set_env_variable(key, value)
    for name, keys in p.secrets.items():
        kubernetes.use_secret_as_env(task, name, keys)
    for name, keys in p.optional_secrets.items():
        kubernetes.use_secret_as_env(task, name, keys, optional=True)
    trainjob = place.trains and p.nodes > 1  # the ranks run in a TrainJob; this pod only watches it
    if place.gpu and gpu_pool and not trainjob:
        _gpu(task, settings)
    else:
        task.set_cpu_limit(p.cpu_cpu).set_memory_limit(p.cpu_memory)
    if place.rollout_launcher or trainjob:
        _pod_identity(task)
    if place.rollout_launcher and not trainjob:  # with a TrainJob, its node-0 pod is the trainer
        kubernetes.add_pod_label(task, ROLE_LABEL, TRAINER_ROLE)
    if place.rollout_launcher:
        # optional: a step that does not launch (use_vllm off) must not hang on a missing ConfigMap;
        # one that does says "no rollout template at /etc/dmms/rollout/..." (rollout_pods.load_template)
        kubernetes.use_config_map_as_volume(task, ROLLOUT_TEMPLATE_CONFIGMAP,
                                            mount_path=str(TEMPLATE_PATHS[0].parent), optional=True)
    return task


def _pod_identity(task: dsl.PipelineTask) -> None:
    """POD_NAME/POD_UID/POD_NAMESPACE: what the step creates (rollout server, TrainJob) is owned by its pod."""
    for env, field_path in POD_FIELD_ENV.items():
        kubernetes.use_field_path_as_env(task, env, field_path)


def _gpu(task: dsl.PipelineTask, settings: Settings) -> None:
    p = settings.pipelines
    task.set_accelerator_type(p.gpu_accelerator).set_accelerator_limit(p.gpu_count)
    task.set_cpu_request(p.gpu_cpu).set_cpu_limit(p.gpu_cpu)
    task.set_memory_request(p.gpu_memory).set_memory_limit(p.gpu_memory)
    for key, value in p.gpu_node_selector.items():
        kubernetes.add_node_selector(task, key, value)
    if p.kueue_queue:
        kubernetes.add_pod_label(task, QUEUE_LABEL, p.kueue_queue)
    for tol in p.gpu_tolerations:
        kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator"),
                                  value=tol.get("value"), effect=tol.get("effect"))
    kubernetes.empty_dir_mount(task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory",
                               size_limit=p.shm_size)
