"""The sections of the settings tree (one pydantic model per part of the system).

Why a module of its own: the tree is large; :mod:`components.common.settings` assembles these
sections into ``Settings``, resolves the sources and explains errors. Here: the services and the
model (storage, tracking, LLM endpoints, tools, model, agent); the pipeline steps' sections live in
``settings_steps.py``, where things run (pipelines, serving) in ``settings_cluster.py``. Import sections from
there (it re-exports them); every field carries a description, which ``dmms config show`` and
the README's settings table rely on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

ENV_PREFIX = "DMMS_"
PROFILES_DIR = Path(__file__).parent / "profiles"
Profile = Literal["tiny", "paper"]
CLIENT_MARGIN_S = 15.0  # tool-server clients wait this much longer than the server's deadline


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
    max_retries: int = Field(3, ge=0, le=10, description="Retries of connection failures, 429, 502 and 503 "
                             "(components/common/retry.py; never a read timeout, 500 or 504).")
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
    timeout_s: float | None = Field(
        None, gt=0, description="Client timeout of one tool call, seconds; must exceed deadline_s (so the "
        "server's 504 arrives first). Unset: deadline_s + 15.")
    retries: int = Field(2, ge=0, le=10, description="Client retries of connection failures, 429, 502 and 503 "
                         "(never a 504 or a read timeout: components/common/retry.py).")
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
    web_max_retries: int = Field(2, ge=0, le=10, description="Retries of a web API call or page fetch "
                                 "(connection failures, 429, 502, 503: components/common/retry.py).")
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
    image_ann: Literal["auto", "on", "off"] = Field(
        "auto", description="Approximate nearest-neighbour candidates in the local image index (FAISS IVF, "
        "8-bit codes): auto builds it from 500,000 windows (~4,600 images) on, where brute force gets slow; "
        "on/off force it. Read when the index is built (`dmms index build`) and when it is loaded (off: "
        "brute force even where one was built).")
    image_ann_nprobe: int = Field(
        32, ge=1, le=4096, description="Cells of the image ANN index probed per query: more is slower and "
        "closer to brute force (bench/search_image_scale measures both at 100k images).")
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
    image_search_threads: int = Field(
        1, ge=1, le=64, description="Local image searches run at once in one server process, each start to "
        "finish (decode, crop, search). They are CPU-bound numpy and Python under one GIL: interleaving a burst "
        "of them made every one finish last. Scale with `workers`; raise it only with more cores than workers.")
    workers: int = Field(
        1, ge=1, le=64, description="Server processes of `dmms tools serve` (uvicorn workers) sharing the port. "
        "Each loads the index (tantivy and the image arrays are memory-mapped, so their pages are shared); "
        "/metrics adds up every worker. POST /admin/reload reaches one worker, so workers > 1 needs "
        "index_poll_s > 0 (each worker follows the alias).")
    deadline_s: float = Field(
        45.0, gt=0, description="Server deadline of one search request, everything included (search, page "
        "fetches, grounding, summary, their retries); past it the answer is 504 upstream_timeout, which "
        "clients never retry.")

    @model_validator(mode="after")
    def _cross_checks(self) -> ToolsSettings:
        if self.workers > 1 and self.index_poll_s <= 0:
            raise ValueError(
                f"{env_name('tools', 'workers')}={self.workers} needs {env_name('tools', 'index_poll_s')} > 0: "
                "POST /admin/reload reaches one worker, so each worker must follow the index alias itself")
        if self.timeout_s is not None and self.timeout_s <= self.deadline_s:
            raise ValueError(
                f"{env_name('tools', 'timeout_s')}={self.timeout_s} must exceed "
                f"{env_name('tools', 'deadline_s')}={self.deadline_s}: a client that gives up first "
                "retries work the server is still doing")
        return self

    @property
    def client_timeout_s(self) -> float:
        """The timeout a client of this server uses: ``timeout_s``, or the deadline plus a margin for
        the network and the queue in front of the server."""
        return self.timeout_s if self.timeout_s is not None else self.deadline_s + CLIENT_MARGIN_S


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
    year_tokens: bool = Field(
        False, description="One token per year 1700-2029 (the world's years) instead of Qwen's single digits. "
        "Measured on the tiny profile: it did not make a 2-layer model copy years out of <information> (0 of "
        "63 number answers with or without it): the 330 year embeddings collapse towards one another (mean "
        "cosine 0.89, name tokens 0.65), so the copy carries little of which year it was.")
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
    prompt_version: str = Field("v2", description="Prompt template version (agent/prompts/); v2 and t2 state the "
                                "image frame the model sees, so its crop boxes are rescaled to the original image.")
    concurrency: int = Field(32, ge=1, description="Trajectories in flight at once.")
    batch_window_ms: float = Field(
        5.0, ge=0, le=1000, description="How long a generation batch waits for more trajectories (those whose "
        "tool calls are returning) before it starts; 0: only the ones ready at once (bench/rollout.py).")
