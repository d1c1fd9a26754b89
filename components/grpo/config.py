"""Map our settings tree onto TRL's ``GRPOConfig`` (and peft's ``LoraConfig``) — in ONE place each.

Why: STYLE.md habit 2. ``settings.grpo`` holds the knobs the paper names (rollouts per prompt, KL,
clip, lr, max response, reward weights) and :func:`grpo_config` turns them into a ``GRPOConfig``.
What the GRPO step must always do is decided here, so the core, the benchmark's plain-TRL baseline
and the tests train with the same config:

- ``reward_weights=[correct_weight, format_weight]`` over the two reward functions of
  :mod:`components.grpo.rewards` (TRL logs each part as ``rewards/<name>/mean``);
- no TRL ``report_to`` (our MLflow callback logs to the step's run), no bf16 or gradient
  checkpointing on CPU;
- on GPU, ``use_vllm=True, vllm_mode="server"`` with ``vllm_server_base_url`` (the rollout pods,
  ``trl vllm-serve``) and vLLM importance-sampling correction ON (the rollout returns real vLLM
  logprobs); without vLLM the correction is off (the local generator's logprobs are only recorded);
- ``max_completion_length`` is TRL's per-generation-call limit: one model TURN
  (``model.max_new_tokens``); the whole response is capped by ``grpo.max_response_tokens`` in the
  rollout.

Import-only; tested by ``tests/unit/grpo/test_grpo_train.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from components.common.settings import Settings

log = logging.getLogger(__name__)


def on_cpu(settings: Settings) -> bool:
    """True when training runs on the CPU (no CUDA, or the model device is cpu)."""
    return settings.model.device == "cpu" or not torch.cuda.is_available()


def grpo_config(settings: Settings, output_dir: str | Path, **overrides) -> GRPOConfig:  # noqa: F821
    """The ``GRPOConfig`` for ``settings.grpo``; ``overrides`` win (tests and benchmarks only)."""
    from trl import GRPOConfig

    g = settings.grpo
    cpu = on_cpu(settings)
    if cpu and (g.bf16 or g.gradient_checkpointing):
        log.info("training on CPU: bf16 and gradient checkpointing turned off")
    kwargs = dict(
        output_dir=str(output_dir),
        num_train_epochs=g.epochs,
        max_steps=g.max_steps,
        learning_rate=g.learning_rate,
        lr_scheduler_type=g.lr_scheduler,
        warmup_steps=g.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        per_device_train_batch_size=g.batch_size,
        gradient_accumulation_steps=g.grad_accum,
        num_generations=g.num_generations,
        beta=g.beta,
        epsilon=g.epsilon,
        temperature=g.temperature,
        max_completion_length=settings.model.max_new_tokens,  # per model turn (per generation call)
        reward_weights=[g.correct_weight, g.format_weight],
        bf16=g.bf16 and not cpu,
        gradient_checkpointing=g.gradient_checkpointing and not cpu,
        use_cpu=cpu,
        seed=g.seed,
        data_seed=g.seed,
        logging_steps=g.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=g.save_steps,
        save_only_model=False,  # a step checkpoint holds optimizer, scheduler and RNG state to resume
        report_to="none",  # our MLflow callback logs to the step's tracked run
        remove_unused_columns=False,  # rewards read `answers` and `question`
        log_completions=False,
        disable_tqdm=True,
        use_vllm=g.use_vllm,
        vllm_importance_sampling_correction=g.use_vllm,
    )
    if g.use_vllm:
        kwargs.update(vllm_mode="server", vllm_server_base_url=g.vllm_server_base_url,
                      vllm_group_port=g.vllm_group_port)
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def language_linear_modules(model) -> list[str]:
    """Leaf names of the language model's ``nn.Linear`` layers (not the vision tower, not lm_head)."""
    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear) and ".language_model." in f".{name}"
                     and "visual" not in name})
    if not leaves:
        raise ValueError(f"{type(model).__name__} has no language-model linear layers: "
                         "GRPO with LoRA expects a Qwen2.5-VL model")
    return leaves


def lora_config(settings: Settings, model) -> LoraConfig:  # noqa: F821
    """peft ``LoraConfig`` over the language model's linear layers (GRPO with ``full_finetune=false``)."""
    from peft import LoraConfig

    g = settings.grpo
    pattern = rf".*language_model.*\.({'|'.join(language_linear_modules(model))})$"
    return LoraConfig(r=g.lora_r, lora_alpha=g.lora_alpha, lora_dropout=0.0, target_modules=pattern,
                      bias="none", task_type="CAUSAL_LM")
