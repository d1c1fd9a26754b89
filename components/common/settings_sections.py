"""The sections of the settings tree (one pydantic model per part of the system).

Why a module of its own: the tree is large; :mod:`components.common.settings` assembles these
sections into ``Settings``, resolves the sources and explains errors. Import sections from
there (it re-exports them); every field carries a description, which ``dmms config show`` and
the README's settings table rely on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

ENV_PREFIX = "DMMS_"
PROFILES_DIR = Path(__file__).parent / "profiles"
Profile = Literal["tiny", "paper"]


class SettingsError(ValueError):
    """Settings are invalid; the message names the variable(s) to change."""


def env_name(*loc: str | int) -> str:
    """The environment variable that sets the field at ``loc`` (``("tools", "port")`` →
    ``DMMS_TOOLS__PORT``)."""
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageSettings(_Section):
    """Object store: a local folder (embedded default) or an S3 bucket (MinIO, SeaweedFS, AWS)."""

    root: str = Field(
        ".dmms/store",
        description="Where datasets and checkpoints live: a local folder, or s3://bucket[/prefix].",
    )
    endpoint: str | None = Field(
        None,
        description="S3 endpoint, host:port or http(s)://host:port (MinIO: minio:9000). "
        "Required when root is s3://.",
    )
    access_key: SecretStr | None = Field(None, description="S3 access key.")
    secret_key: SecretStr | None = Field(None, description="S3 secret key.")
    secure: bool | None = Field(
        None, description="Use TLS to the endpoint; default: inferred from the endpoint scheme."
    )
    region: str | None = Field(None, description="S3 region, if the server needs one.")
    timeout_s: float = Field(60.0, gt=0, description="Timeout of one S3 request, seconds.")
    retries: int = Field(3, ge=0, le=10, description="Retries of a failed S3 request.")
    keep_step_checkpoints: int = Field(
        2, ge=1, description="Training steps keep this many newest step-N checkpoints in the store (plus "
        "final); older ones are deleted once a newer one is published (a 7B full checkpoint with its "
        "optimizer state is ~60-90 GB).")


class TrackingSettings(_Section):
    """MLflow tracking and model registry."""

    uri: str = Field(
        "sqlite:///.dmms/mlflow.db",
        description="MLflow tracking URI: sqlite:///file.db (embedded) or http(s)://server.",
    )
    registry_uri: str | None = Field(None, description="Registry URI, if not the tracking URI.")
    experiment: str = Field("deepmmsearch", description="MLflow experiment name.")
    model_name: str = Field("deepmmsearch-agent", description="Registered model name.")
    artifact_location: str | None = Field(
        None,
        description="Artifact root for a NEW experiment (e.g. s3://mlflow); default: MLflow's.",
    )
    enabled: bool = Field(True, description="Set false to skip tracking entirely (no run made).")


class LLMEndpointSettings(_Section):
    """An OpenAI-compatible chat completions endpoint (vLLM server, hosted model)."""

    base_url: str | None = Field(
        None, description="e.g. http://vllm-judge:8000/v1; unset means 'not configured'."
    )
    api_key: SecretStr | None = Field(None, description="Bearer key for the endpoint.")
    model: str = Field("", description="Model name the endpoint serves.")
    timeout_s: float = Field(60.0, gt=0, description="Timeout of one request, seconds.")
    max_retries: int = Field(3, ge=0, le=10, description="Retries with backoff on 429/5xx.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature.")
    max_tokens: int = Field(1024, gt=0, description="Max tokens of one reply.")

    @property
    def configured(self) -> bool:
        return bool(self.base_url)


class JudgeSettings(LLMEndpointSettings):
    """The answer judge (components/agent/judging.py): its LLM endpoint (the paper's CORRECT/INCORRECT
    judge) and what every step that judges shares — datagen filters, GRPO rewards, evaluation."""

    prompt_version: str = Field("v2", description="Judge prompt template (components/agent/prompts/judge/).")
    concurrency: int = Field(16, ge=1, description="Judge requests in flight at once, per step.")
    rel_tol: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Rule judge: relative tolerance of numeric answers (0: exact; years are always exact).")


class ToolsSettings(_Section):
    """The search tool-server: how it serves and how clients reach it."""

    url: str = Field("http://127.0.0.1:8080", description="Base URL clients use.")
    host: str = Field("127.0.0.1", description="Address the server binds to.")
    port: int = Field(8080, ge=1, le=65535, description="Port the server binds to.")
    token: SecretStr | None = Field(
        None, description="Bearer token; required by the server unless the profile is tiny."
    )
    index: str = Field(".dmms/index", description="Index to serve: the root `dmms index build --out` published to "
                       "(its current.json alias names the version), or a plain index folder.")
    index_poll_s: float = Field(0.0, ge=0, description="Re-resolve the index alias every this many seconds and "
                                "serve a newly built version (0: only on POST /admin/reload).")
    text_backend: Literal["local", "searxng", "brave", "serper"] = Field(
        "local", description="Text search backend."
    )
    image_backend: Literal["local", "serpapi_lens"] = Field(
        "local", description="Image search backend."
    )
    top_k: int = Field(5, ge=1, le=50, description="Results per search (paper: 5).")
    timeout_s: float = Field(30.0, gt=0, description="Client timeout of one tool call, seconds.")
    retries: int = Field(2, ge=0, le=10, description="Client retries with backoff.")
    cache_url: str = Field(
        "sqlite:///.dmms/cache.db",
        description="Cache: sqlite:///path (disk) or redis://host:port/db.",
    )
    cache_ttl_s: int = Field(7 * 24 * 3600, ge=0, description="Cache entry lifetime, seconds.")
    simulated_latency_ms: int = Field(
        0,
        ge=0,
        description="Added latency of the LOCAL backends, to model web search in benchmarks.",
    )
    web_api_key: SecretStr | None = Field(None, description="Key of the web text-search API.")
    image_api_key: SecretStr | None = Field(None, description="Key of the reverse-image API.")
    searxng_url: str | None = Field(None, description="SearXNG base URL (self-hosted).")
    web_api_url: str | None = Field(
        None, description="Override of the Brave/Serper endpoint URL (a proxy or a test server); "
        "default: the vendor's.")
    image_api_url: str | None = Field(
        None, description="Override of the SerpApi endpoint URL (a proxy or a test server).")
    image_publish_url: str | None = Field(
        None, description="Public base URL where query images are made reachable for the reverse-image "
        "API (SerpApi Lens needs an image URL): the image is PUT to <this>/<sha256>.jpg and that URL is "
        "sent; e.g. a bucket prefix writable by the tool-server and publicly readable.")
    web_max_retries: int = Field(2, ge=0, le=10, description="Retries of a web API call on 429/5xx.")
    web_timeout_s: float = Field(15.0, gt=0, description="Timeout of one web API or page fetch, seconds.")
    grounding_model: str | None = Field(
        None, description="Local GroundingDINO checkpoint folder for referring-expression crops, run in the "
        "tool-server's process (needs torch); unset: see grounding_url.")
    grounding_url: str | None = Field(
        None, description="The grounding service (GroundingDINO behind HTTP, `dmms tools ground-serve`; the "
        "grounding Deployment: http://grounding.deepmmsearch.svc:8000). Neither set: a referring expression "
        "searches the whole image, and the answer says so.")
    grounding_timeout_s: float = Field(10.0, gt=0, description="Timeout of one grounding-service call, seconds.")
    image_embedder: Literal["grid", "clip"] = Field(
        "grid", description="Local image-index features: grid (CPU, no weights) or clip (GPU).")
    image_embedder_path: str | None = Field(
        None, description="Local CLIP checkpoint folder, required when image_embedder=clip.")
    summariser: LLMEndpointSettings = Field(default_factory=LLMEndpointSettings)
    cache_prefix: str = Field(
        "dmms:", description="Key prefix in a shared Redis cache (one per deployment or test run)."
    )
    cache_max_entries: int = Field(
        200_000, ge=1, description="Cache size bound: oldest entries are evicted past this many."
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body the server accepts, bytes."
    )
    max_image_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest encoded image accepted, bytes."
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1024, description="Largest image accepted, width x height (decompression bombs)."
    )
    backend_concurrency: int = Field(
        16, ge=1, description="Calls in flight at once per backend (local index, web API, summariser)."
    )
    upstream_timeout_s: float = Field(
        60.0, gt=0, description="Deadline of one upstream call (web backend, summariser) incl. retries."
    )


class TinyModelSettings(_Section):
    """Architecture and tokenizer of the from-scratch tiny Qwen2.5-VL (components/agent/tiny.py).

    Used only where the tiny profile builds its model; sized by measurement on 2 CPU cores
    (tiny.yaml says why each value is what it is)."""

    hidden_size: int = Field(64, ge=16, description="Text (and vision output) hidden size.")
    num_layers: int = Field(2, ge=1, description="Decoder layers (>= 2 for an induction (copy) circuit).")
    num_heads: int = Field(4, ge=1, description="Attention heads; hidden_size / num_heads must be a multiple of 8.")
    num_kv_heads: int = Field(2, ge=1, description="Key/value heads (grouped-query attention).")
    intermediate_size: int = Field(128, ge=16, description="MLP width of the text decoder.")
    vision_depth: int = Field(2, ge=1, description="Vision transformer blocks.")
    vocab_size: int = Field(1536, ge=300, description="Upper bound of the byte-level BPE vocabulary.")
    tie_embeddings: bool = Field(
        False, description="Share the input embedding and the output head: every token's output row is "
        "trained by its uses as input too (untied rows of tokens never seen as targets stay random).")
    tokenizer_corpus: Literal["packaged", "data"] = Field(
        "packaged", description="packaged: BPE on the small packaged corpus (tiny_corpus.txt); data: BPE on "
        "the SFT dataset's own text (its pages, names and prompt templates, names counterfactually "
        "swapped so merges stay at the syllable level), the model then built by the SFT step.")


class ModelSettings(_Section):
    """The policy model."""

    name_or_path: str = Field(
        ".dmms/models/tiny",
        description="Checkpoint folder or hub id (Qwen/Qwen2.5-VL-7B-Instruct). "
        "The tiny profile builds a random tiny Qwen2.5-VL here if missing.",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="Weights dtype."
    )
    device: str = Field("cpu", description="cpu, cuda, cuda:0, or auto.")
    max_new_tokens: int = Field(256, gt=0, description="Max new tokens per model turn.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="Sampling temperature.")
    max_pixels: int = Field(
        64 * 28 * 28, gt=0, description="Max pixels of an input image for the processor."
    )
    seed: int = Field(0, description="Seed for model building and sampling.")
    tiny: TinyModelSettings = Field(default_factory=TinyModelSettings,
                                    description="The tiny profile's from-scratch model (ignored otherwise).")


class AgentSettings(_Section):
    """The tag protocol's limits (docs/design.md §2)."""

    max_tool_calls: int = Field(10, ge=0, description="Tool calls per trajectory (paper: 10).")
    max_image_searches: int = Field(1, ge=0, description="Image searches per trajectory (paper: 1).")
    max_turns: int = Field(
        10, ge=1, description="Model turns per trajectory; datagen keeps < this (paper: 10)."
    )
    max_invalid_turns: int = Field(
        3, ge=1, description="Invalid model turns after which a trajectory ends (end reason invalid_limit)."
    )
    prompt_version: str = Field("v1", description="Prompt template version (agent/prompts/).")
    concurrency: int = Field(32, ge=1, description="Trajectories in flight at once.")
    batch_window_ms: float = Field(
        5.0, ge=0, le=1000, description="How long a generation batch waits for more trajectories (those whose "
        "tool calls are returning) before it starts; 0: only the ones ready at once (bench/rollout.py).")


class SFTSettings(_Section):
    """Supervised fine-tuning (components/sft): TRL SFTTrainer hyperparameters, LoRA, checkpoints."""

    epochs: float = Field(3.0, gt=0, description="Training epochs over the dataset (paper: 3).")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps; -1: run all epochs.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate (paper: 1e-4).")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name (paper: cosine).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps spent warming up (paper: 0.1).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(1, ge=1, description="Per-device train batch size.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(
        4096, ge=16, description="Longest tokenised conversation (image pads included); longer rows are "
        "DROPPED before training (counted in the log and in MLflow as sft.dropped_too_long), never truncated.")
    length_margin: int = Field(
        0, ge=0, description="Tokens kept free below max_length when checking rows, for counterfactual "
        "names that come out longer than the originals.")
    full_finetune: bool = Field(False, description="Train every language-model weight instead of LoRA.")
    train_vision: bool = Field(
        False, description="With full_finetune: train the vision tower and merger too (a model built from "
        "scratch has a random tower; a pretrained one keeps it frozen, as in the paper).")
    copy_pretrain_steps: int = Field(
        0, ge=0, description="Steps of text-only copy pretraining (components/sft/pretrain.py) before SFT, "
        "for a model the SFT step builds from scratch; 0: none (paper: a pretrained model).")
    copy_pretrain_batch_size: int = Field(32, ge=1, description="Copy pretraining: sequences per step.")
    copy_pretrain_learning_rate: float = Field(3e-3, gt=0, description="Copy pretraining: peak learning rate.")
    copy_pretrain_max_tokens: int = Field(192, ge=16, description="Copy pretraining: tokens per sequence.")
    copy_pretrain_synthetic_share: float = Field(
        0.3, ge=0, le=1, description="Copy pretraining: share of synthetic copy drills among the sequences.")
    group_by_length: bool = Field(
        False, description="Batch rows of similar token length together (transformers' length-grouped "
        "sampler, randomised in mega-batches): less padding, faster steps; off: uniformly random batches.")
    visual_pretrain_steps: int = Field(
        0, ge=0, description="Steps of visual pretraining on freshly drawn search-free images "
        "(components/sft/visual.py) after copy pretraining, for a model the SFT step builds from scratch "
        "(its vision tower is random); 0: none (paper: a pretrained vision encoder).")
    visual_pretrain_batch_size: int = Field(32, ge=1, description="Visual pretraining: rows per step.")
    visual_pretrain_learning_rate: float = Field(2e-3, gt=0, description="Visual pretraining: peak learning rate.")
    redraw_visual: bool = Field(
        False, description="Give the world's search-free picture rows a fresh image of their kind, with the "
        "matching answer, on every access (components/sft/visual.py); off (paper): rows as generated.")
    direct_share: float = Field(
        0.0, ge=0, le=1, description="Share of rows shown, on each access, in the no-tools form of "
        "evaluation's direct mode (its prompt; the row's answer when it needs no search, else the give-up "
        "answer), so that baseline is not out of distribution. 0 (paper): agent rows only.")
    counterfactual_share: float = Field(
        0.0, ge=0, le=1, description="Share of rows whose invented names, numbers and fact phrases are "
        "swapped for fresh ones on every access (components/sft/counterfactual.py): memorising no longer "
        "pays, copying from <information> does. 0 (paper): rows as generated.")
    lora_r: int = Field(8, ge=1, description="LoRA rank (paper: 8).")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    bf16: bool = Field(True, description="bf16 mixed precision (ignored, i.e. off, on CPU).")
    gradient_checkpointing: bool = Field(True, description="Gradient checkpointing (ignored, i.e. off, on CPU).")
    save_steps: int = Field(500, ge=1, description="Publish a resumable step checkpoint every N steps.")
    logging_steps: int = Field(1, ge=1, description="Log metrics (MLflow) every N steps.")
    seed: int = Field(0, description="Seed for data order and LoRA init.")
    dataloader_workers: int = Field(0, ge=0, description="DataLoader worker processes.")


class EvaluateSettings(_Section):
    """Evaluation: benchmarks x modes (direct, rag, agent), judged, reported."""

    endpoint: LLMEndpointSettings = Field(
        default_factory=LLMEndpointSettings,
        description="Timeouts, retries and key for a model evaluated behind an OpenAI-compatible endpoint.")
    judge: Literal["auto", "rule", "llm"] = Field(
        "auto", description="Correctness judge: rule, llm (DMMS_JUDGE__*), or auto (llm if DMMS_JUDGE__BASE_URL "
        "is set): the same judge GRPO trains with, so what is promoted is scored as it was rewarded.")
    limit: int | None = Field(None, ge=1, description="Items per benchmark (deterministic sample); all if unset.")
    seed: int = Field(0, description="Seed of the benchmark sub-sample.")
    concurrency: int = Field(8, ge=1, description="Samples in flight at once.")
    out_dir: str = Field(".dmms/eval", description="Local folder for samples, table, plots and the HTML report.")


class GRPOSettings(_Section):
    """Online RL (components/grpo): TRL GRPOTrainer with the agent loop as rollout_func (docs/design.md §1)."""

    num_generations: int = Field(8, ge=2, description="Rollouts per prompt, the GRPO group (paper: 8).")
    epochs: float = Field(30.0, gt=0, description="Epochs over the RL prompts (paper §4.1: 30; App. D says 20).")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps; -1: run all epochs.")
    learning_rate: float = Field(2e-6, gt=0, description="Learning rate (paper: 2e-6).")
    lr_scheduler: str = Field("constant", description="transformers scheduler name.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up.")
    beta: float = Field(0.001, ge=0, description="KL coefficient (paper: 0.001; > 0 loads a reference model).")
    epsilon: float = Field(0.2, gt=0, lt=1, description="PPO-style clip range (paper: 0.2).")
    temperature: float = Field(1.0, gt=0, le=2.0, description="Rollout sampling temperature.")
    batch_size: int = Field(8, ge=1, description="Per-device rollouts per micro-batch; with grad_accum and the "
                            "world size it makes the rollouts per step (paper §4.1: 512; App. D: 256).")
    grad_accum: int = Field(8, ge=1, description="Gradient accumulation steps.")
    max_response_tokens: int = Field(8192, ge=16, description="Longest response of one trajectory (model and "
                                     "tool tokens); longer ones are cut there (paper: 8192).")
    correct_weight: float = Field(0.9, ge=0, description="Weight of the correctness reward (paper: 0.9).")
    format_weight: float = Field(0.1, ge=0, description="Weight of the format reward (paper: 0.1).")
    search_penalty: float = Field(0.0, ge=0, le=1, description="MMSearch-R1's penalty: a correct answer that "
                                  "searched earns 1 - this (MMSearch-R1: 0.1; 0 = off, the paper).")
    judge: Literal["auto", "rule", "llm"] = Field(
        "auto", description="Correctness judge: rule, llm (DMMS_JUDGE__*), or auto (llm if DMMS_JUDGE__BASE_URL is set).")
    full_finetune: bool = Field(True, description="Train every language-model weight; false: LoRA (merged at the end).")
    lora_r: int = Field(8, ge=1, description="LoRA rank when full_finetune is false.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    bf16: bool = Field(True, description="bf16 mixed precision (ignored, i.e. off, on CPU).")
    gradient_checkpointing: bool = Field(True, description="Gradient checkpointing (ignored, i.e. off, on CPU).")
    save_steps: int = Field(50, ge=1, description="Publish a resumable step checkpoint every N steps.")
    logging_steps: int = Field(1, ge=1, description="Log metrics (MLflow) every N steps.")
    seed: int = Field(0, description="Seed for data order and sampling.")
    use_vllm: bool = Field(False, description="Roll out on a vLLM server (trl vllm-serve) kept in sync with the policy.")
    vllm_server_base_url: str | None = Field(
        None, description="URL of the rollout vLLM server, e.g. http://grpo-rollout:8000; with use_vllm, required "
        "unless launch_rollout_servers (which sets it).")
    vllm_group_port: int = Field(51216, ge=1, le=65535, description="Port the trainer listens on for weight sync.")
    launch_rollout_servers: bool = Field(
        False, description="With use_vllm: the GRPO step starts its own vLLM rollout server on Kubernetes "
        "(components/grpo/servers.py) and trains against it; needs the pod setup of manifests/README.md.")
    rollout_model: str | None = Field(
        None, description="Checkpoint the launched rollout server loads (the trainer pushes the policy's weights "
        "before each round); default: model.name_or_path.")
    rollout_tensor_parallel: int = Field(1, ge=1, description="GPUs (tensor parallel) of the launched rollout server.")
    rollout_gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vLLM --gpu-memory-utilization of the launched rollout server.")
    rollout_ready_timeout_s: float = Field(
        1800.0, gt=0, description="How long to wait for the launched rollout server to become ready.")


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


class PromoteSettings(_Section):
    """Promotion gates: a challenger becomes champion only if it passes all of them (components/registry)."""

    min_accuracy: float = Field(
        0.0, ge=0.0, le=100.0, description="Minimum average accuracy (%) of the gated mode.")
    min_search_required_accuracy: float = Field(
        0.0, ge=0.0, le=100.0,
        description="Minimum accuracy (%) of the gated mode on search-required questions (items labelled "
        "requires_search); a run without such items fails this gate when it is above 0.")
    max_regression: float = Field(
        2.0, ge=0.0, le=100.0,
        description="Non-inferiority margin (points): per benchmark, the paired-bootstrap interval of "
        "challenger - champion must lie above -margin to promote; wholly below 0 is a significant drop "
        "(refused); in between the sample cannot tell (undecided, not promoted).")
    max_format_error_rate: float = Field(
        20.0, ge=0.0, le=100.0, description="Ceiling on the share (%) of samples with a format error.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Level of the paired-bootstrap interval.")
    mode: str = Field("agent", description="The evaluation mode whose numbers the gates read.")


class DatagenSettings(_Section):
    """DeepMMSearchVQA data generation (components/datagen): teacher runs, filters, balance."""

    allow_synthetic: bool = Field(
        False, description="Allow the oracle teacher outside the tiny profile. It reads the gold entity and crop "
        "box from the offline world's metadata, so its data is synthetic: fine for a smoke run, not for a model "
        "anyone should use (`dmms run/submit --allow-synthetic`).")
    fail_on_shortfall: bool = Field(
        True, description="Fail when fewer rows pass the filters than were asked for (the counts after each "
        "filter say where they went); false: publish what there is, with a warning.")

    search_ratio: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Share of search-required samples in the published dataset (paper: 0.5, i.e. 50:50).")
    dataset_name: str = Field("deepmmsearchvqa", description="Dataset name under datasets/ in the object store.")
    seed: int = Field(0, description="Seed of the balanced sampling (same seed, same rows).")
    max_seed_items: int | None = Field(
        None, ge=1, description="Run the teacher on at most this many seed items (deterministic sample); all if unset.")
    concurrency: int = Field(16, ge=1, description="Trajectories in flight at once.")
    world: str | None = Field(
        None, description="world.json of the offline world for the oracle teacher; default: the "
        "world.json found above the seed VQA folder (OUT/vqa/<split> -> OUT/world.json).")
    oracle_summary_answers: bool = Field(
        True, description="Oracle teacher: answer a one-hop question from the image search's summary when "
        "it states the fact (what a good model does); off: always search the text first, so every "
        "search-required trajectory copies the returned name into a query.")
    oracle_requeries: int = Field(
        2, ge=0, le=8, description="Oracle teacher: text re-queries when a result misses the fact.")
    taxonomy_prompt_version: str = Field(
        "v1", description="Version of the category classification prompt (datagen/prompts/).")
    judge: Literal["auto", "rule", "llm"] = Field(
        "auto", description="Judge of the 'correct' filter: rule, llm (DMMS_JUDGE__*), or auto (llm if "
        "DMMS_JUDGE__BASE_URL is set).")
    journal_dir: str | None = Field(
        None, description="Folder of the run's journal (finished trajectories, teacher completions, verdicts) "
        "that a restarted run resumes from; default: <out>.journal. On a cluster, a path on a volume that "
        "outlives the pod.")


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
