"""Settings of where things run: Kubeflow Pipelines, GPU pools, nodes, Kueue, Secrets, and where
the champion is served. Re-exported by :mod:`components.common.settings`; import them from there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.common.settings_sections import _Section


class PipelinesSettings(_Section):
    """Kubeflow Pipelines: images, where runs go, GPU node pools, Secrets (pipelines/, components/kfp/)."""

    base_image: str = Field("deepmmsearch/train:0.1.0",
                            description="Image of the CPU steps (world, index, datagen, promote, cleanup): the train "
                            "image by default, which has every step body's dependencies and KFP's runtime (the slim "
                            "toolserver image only serves search).")
    train_image: str = Field("deepmmsearch/train:0.1.0",
                             description="Image of the GPU steps (sft, grpo, evaluate): CUDA, torch, trl, vllm.")
    image_registry: str | None = Field(None, description="Registry `make images` pushes to (e.g. ghcr.io/org).")
    kfp_host: str | None = Field(None, description="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow:80 "
                                 "(also read from KFP_HOST).")
    experiment: str = Field("deepmmsearch", description="KFP experiment that submitted runs join.")
    namespace: str = Field(
        "deepmmsearch",
        description="Namespace the runs execute in (multi-user KFP: a Profile namespace). The GRPO step creates its "
        "rollout pods there, owned by its own pod, so it must be the namespace of manifests/ (RBAC, template).")
    service_account: str = Field("dmms-pipeline-runner",
                                 description="Service account of the pipeline pods (RBAC for rollout pods).")
    pipeline_root: str = Field("s3://deepmmsearch/kfp",
                               description="KFP pipeline_root on the cluster (artifacts of each run).")
    local_root: str = Field(".dmms/kfp", description="pipeline_root of the KFP local runner (`dmms run`).")
    results_path: str = Field(".dmms/results.json",
                              description="Where `dmms run` writes its before/after results table as JSON.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Timeout of the reachability check of kfp_host.")
    gpu_node_selector: dict[str, str] = Field(
        default_factory=lambda: {"cloud.google.com/gke-nodepool": "gpu"},
        description="Node selector of the GPU steps (the GPU node pool's label).")
    gpu_tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="Tolerations of the GPU steps (key, operator, value?, effect).")
    gpu_accelerator: str = Field("nvidia.com/gpu", description="Accelerator resource the GPU steps request.")
    gpu_count: int = Field(1, ge=1, description="GPUs per GPU step and node (paper profile: 8); SFT and GRPO "
                           "start one training rank per GPU (components/common/launch.py).")
    nodes: int = Field(1, ge=1, le=64, description="Nodes of the SFT and GRPO steps: > 1 runs them as a Kubeflow "
                       "Trainer v2 TrainJob of nodes x gpu_count ranks (components/common/trainjob.py).")
    fsdp: bool = Field(True, description="Shard multi-GPU training with FSDP full-shard (decoder layers wrapped, "
                       "fp32 master shards, bf16 compute); false: DDP (each rank holds the whole model).")
    kueue_queue: str = Field(
        "deepmmsearch-gpu", description="Kueue LocalQueue that admits every GPU workload (GPU step pods, TrainJobs, "
        "rollout servers): the kueue.x-k8s.io/queue-name label; empty: no label (a cluster without Kueue).")
    trainjob_runtime: str = Field("torch-distributed",
                                  description="ClusterTrainingRuntime the TrainJob of a multi-node step uses.")
    trainjob_timeout_s: float = Field(7 * 24 * 3600.0, gt=0,
                                      description="How long a multi-node step waits for its TrainJob to finish.")
    trainjob_poll_s: float = Field(10.0, gt=0, description="Poll interval of a multi-node step on its TrainJob.")
    gpu_cpu: str = Field("8", description="CPU request/limit of a GPU step.")
    gpu_memory: str = Field("64Gi", description="Memory request/limit of a GPU step.")
    shm_size: str = Field("16Gi", description="Size of the /dev/shm memory emptyDir of GPU steps.")
    cpu_cpu: str = Field("2", description="CPU limit of a CPU step.")
    cpu_memory: str = Field("8Gi", description="Memory limit of a CPU step.")
    retries: int = Field(3, ge=0, le=10, description="Retries of preemptible steps (datagen, sft, grpo, evaluate).")
    retry_backoff: str = Field("60s", description="First backoff between retries (KFP duration).")
    secrets: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {
            "minio-credentials": {"rootUser": "DMMS_STORAGE__ACCESS_KEY",
                                  "rootPassword": "DMMS_STORAGE__SECRET_KEY"},
            "toolserver-secrets": {"token": "DMMS_TOOLS__TOKEN"},
            "hf-token": {"token": "HF_TOKEN"},
            "mlflow-auth": {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"},
        },
        description="Kubernetes Secrets mounted as env in every step: secret -> {key: ENV_VAR}.")
    cluster_env: dict[str, str] = Field(
        default_factory=lambda: {
            "DMMS_STORAGE__ROOT": "s3://deepmmsearch",
            "DMMS_STORAGE__ENDPOINT": "minio.deepmmsearch.svc:9000",
            "DMMS_STORAGE__SECURE": "false",
            "DMMS_TRACKING__URI": "http://mlflow.deepmmsearch.svc:5000",
            "DMMS_TOOLS__URL": "http://toolserver.deepmmsearch.svc:8080",
            "DMMS_TOOLS__INDEX": "s3://deepmmsearch/indexes/world",
            "DMMS_JUDGE__BASE_URL": "http://vllm-judge.deepmmsearch.svc:8000/v1",
            "DMMS_JUDGE__MODEL": "judge",
            "DMMS_LOG_FORMAT": "json",
        },
        description="Non-secret DMMS_* env of every step on the cluster (Service names of manifests/).")
    optional_secrets: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {"llm-credentials": {"judge-api-key": "DMMS_JUDGE__API_KEY",
                                                     "teacher-api-key": "DMMS_TEACHER__API_KEY"}},
        description="Secrets mounted as env when they exist (hosted judge/teacher keys).")


class ServingSettings(_Section):
    """Where the champion is served (components/registry/serving.py): promotion and rollback point it
    at the champion's checkpoint; ``dmms serve status`` says which version serves."""

    target: Literal["none", "kserve", "deployment"] = Field(
        "none", description="kserve: a KServe InferenceService (vLLM backend of the Hugging Face runtime); "
        "deployment: a vLLM Deployment + Service where KServe is absent; none: the registry alias only.")
    name: str = Field("deepmmsearch-agent", description="Name of the serving object, and the served model name.")
    gpus: int = Field(1, ge=1, le=8, description="GPUs of the server (vLLM tensor parallel).")
    max_model_len: int = Field(32768, ge=1024, description="vLLM --max-model-len of the server.")
    cpu: str = Field("8", description="CPU request/limit of the server.")
    memory: str = Field("64Gi", description="Memory request/limit of the server.")
    storage_service_account: str = Field(
        "dmms-model-reader", description="KServe: service account whose S3 credentials read the checkpoint.")
