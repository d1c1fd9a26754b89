"""Map our settings tree onto TRL's ``SFTConfig`` and peft's ``LoraConfig`` — in ONE place each.

Why: docs/contributing.md habit 2: we never re-declare TRL's fields; ``settings.sft`` holds the knobs the
paper names (epochs, lr, scheduler, warmup, batch, LoRA) and :func:`sft_config` turns them into an
``SFTConfig``. Everything the SFT step must always do (loss only on assistant turns, no TRL
``report_to`` — our own MLflow callback logs — no bf16 or gradient checkpointing on CPU) is decided
here, so the core, the benchmark's plain-TRL baseline and the tests all train with the same config.

Import-only; tested by ``tests/unit/sft``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from components.agent.models import language_lora_config
from components.common.settings import Settings
from components.common.training import trainer_kwargs

if TYPE_CHECKING:  # heavy imports, done lazily at call time
    from peft import LoraConfig
    from trl import SFTConfig



def sft_config(settings: Settings, output_dir: str | Path, **overrides) -> SFTConfig:
    """The ``SFTConfig`` for ``settings.sft``; ``overrides`` win (tests and benchmarks only)."""
    from trl import SFTConfig

    s = settings.sft
    kwargs = trainer_kwargs(s, settings, output_dir)
    kwargs.update(
        weight_decay=s.weight_decay,
        max_length=s.max_length,
        assistant_only_loss=True,  # loss on model turns only: system, user and <information> turns masked
        dataloader_num_workers=s.dataloader_workers,
        # batches of rows of similar length (the ``length`` column of components/sft/data.py): less padding
        train_sampling_strategy="group_by_length" if s.group_by_length else "random",
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def lora_config(settings: Settings, model) -> LoraConfig:
    """peft ``LoraConfig`` over exactly the language model's linear layers (regex of their full names)."""
    s = settings.sft
    return language_lora_config(model, s.lora_r, s.lora_alpha, s.lora_dropout)
