"""Map our settings tree onto TRL's ``GRPOConfig`` (and peft's ``LoraConfig``) — in ONE place each.

Why: docs/contributing.md habit 2. ``settings.grpo`` holds the knobs the paper names (rollouts per prompt, KL,
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

from pathlib import Path

from components.agent.models import language_lora_config
from components.common.settings import Settings
from components.common.training import trainer_kwargs


def grpo_config(settings: Settings, output_dir: str | Path, **overrides) -> GRPOConfig:  # noqa: F821
    """The ``GRPOConfig`` for ``settings.grpo``; ``overrides`` win (tests and benchmarks only)."""
    from trl import GRPOConfig

    g = settings.grpo
    kwargs = trainer_kwargs(g, settings, output_dir)
    kwargs.update(
        num_generations=g.num_generations,
        beta=g.beta,
        epsilon=g.epsilon,
        temperature=g.temperature,
        max_completion_length=settings.model.max_new_tokens,  # per model turn (per generation call)
        reward_weights=[g.correct_weight, g.format_weight],
        log_completions=False,
        # responses cut at grpo.max_response_tokens do not end with the end-of-turn token: no loss on them
        mask_truncated_completions=True,
        use_vllm=g.use_vllm,
        vllm_importance_sampling_correction=g.use_vllm,
    )
    if g.use_vllm:
        kwargs.update(vllm_mode="server", vllm_server_base_url=g.vllm_server_base_url,
                      vllm_group_port=g.vllm_group_port)
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def lora_config(settings: Settings, model) -> LoraConfig:  # noqa: F821
    """peft ``LoraConfig`` over the language model's linear layers (GRPO with ``full_finetune=false``)."""
    g = settings.grpo
    return language_lora_config(model, g.lora_r, g.lora_alpha, 0.0)
