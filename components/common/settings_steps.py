"""Settings of the pipeline steps: datagen, SFT, GRPO, evaluation, promotion (one section each).

Re-exported by :mod:`components.common.settings`; import them from there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.common.settings_sections import LLMEndpointSettings, _Section, env_name


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
    oracle_quote: bool = Field(
        False, description="Oracle teacher: the final reason quotes the page's own words that state the "
        "value (`Born: Deigleicha, 1853`) instead of naming the fact (`the born year of X: 1853`), so the "
        "value follows the same tokens in the reason as in <information> and copying it continues a copy.")
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
    copy_pretrain_answer_share: float = Field(
        0.0, ge=0.0, le=1.0, description="Copy pretraining: share of the real rows shown as their last "
        "<information> turn and final turn (the value copied into the answer) instead of from their first "
        "<information> on, whose window never reaches the answer turn.")
    copy_pretrain_synthetic_share: float = Field(
        0.3, ge=0, le=1, description="Copy pretraining: share of synthetic copy drills among the sequences.")
    copy_pretrain_visual_every: int = Field(
        0, ge=0, description="Copy pretraining: every N-th step trains on a batch of visual pretraining "
        "(fresh search-free pictures, the answer loss), so the readout learnt before is kept; these steps come "
        "on top of copy_pretrain_steps (N=5: a quarter more). 0: never; 1 is refused.")
    group_by_length: bool = Field(
        False, description="Batch rows of similar token length together (transformers' length-grouped "
        "sampler, randomised in mega-batches): less padding, faster steps; off: uniformly random batches.")
    vision_pretrain_steps: int = Field(
        0, ge=0, description="Steps of vision-tower pretraining (components/sft/vision.py: the tower with one "
        "classifier per search-free question kind, on freshly drawn images) before copy pretraining, for a model "
        "the SFT step builds from scratch; 0: none (paper: a pretrained vision encoder).")
    vision_pretrain_batch_size: int = Field(64, ge=1, description="Vision-tower pretraining: images per step.")
    vision_pretrain_learning_rate: float = Field(2e-3, gt=0, description="Vision-tower pretraining: peak "
                                                 "learning rate.")
    visual_pretrain_steps: int = Field(
        0, ge=0, description="Steps of visual pretraining on freshly drawn search-free images "
        "(components/sft/visual.py) before copy pretraining, for a model the SFT step builds from scratch "
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

    @model_validator(mode="after")
    def _cross_checks(self) -> SFTSettings:
        if self.copy_pretrain_visual_every == 1:
            raise ValueError(f"{env_name('sft', 'copy_pretrain_visual_every')}=1 would leave no copy pretraining "
                             "step: use 0 (never) or 2 and more")
        return self


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
