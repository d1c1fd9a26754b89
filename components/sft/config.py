"""Map our settings tree onto TRL's ``SFTConfig`` and peft's ``LoraConfig`` — in ONE place each.

Why: STYLE.md habit 2: we never re-declare TRL's fields; ``settings.sft`` holds the knobs the
paper names (epochs, lr, scheduler, warmup, batch, LoRA) and :func:`sft_config` turns them into an
``SFTConfig``. Everything the SFT step must always do (loss only on assistant turns, no TRL
``report_to`` — our own MLflow callback logs — no bf16 or gradient checkpointing on CPU) is decided
here, so the core, the benchmark's plain-TRL baseline and the tests all train with the same config.

Import-only; tested by ``tests/unit/sft``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from components.common.settings import Settings

if TYPE_CHECKING:  # heavy imports, done lazily at call time
    from peft import LoraConfig
    from trl import SFTConfig

log = logging.getLogger(__name__)

# Qwen2.5-VL: the language model lives under ``model.language_model``; the vision tower and its
# merger (the projector) under ``model.visual``. LoRA targets only the former.
LANGUAGE_PREFIX = "model.language_model."
VISION_MARKERS = ("visual", "merger", "vision")


def on_cpu(settings: Settings) -> bool:
    """True when training will run on the CPU (no CUDA, or the model device is cpu)."""
    return settings.model.device == "cpu" or not torch.cuda.is_available()


def sft_config(settings: Settings, output_dir: str | Path, **overrides) -> SFTConfig:
    """The ``SFTConfig`` for ``settings.sft``; ``overrides`` win (tests and benchmarks only)."""
    from trl import SFTConfig

    s = settings.sft
    cpu = on_cpu(settings)
    if cpu and (s.bf16 or s.gradient_checkpointing):
        log.info("training on CPU: bf16 and gradient checkpointing turned off")
    kwargs = dict(
        output_dir=str(output_dir),
        num_train_epochs=s.epochs,
        max_steps=s.max_steps,
        learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler,
        warmup_steps=s.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        weight_decay=s.weight_decay,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        max_length=s.max_length,
        bf16=s.bf16 and not cpu,
        gradient_checkpointing=s.gradient_checkpointing and not cpu,
        use_cpu=cpu,
        seed=s.seed,
        data_seed=s.seed,
        logging_steps=s.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=s.save_steps,
        save_only_model=False,  # a step checkpoint must hold optimizer, scheduler and RNG state to resume
        report_to="none",  # our MlflowCallback logs to the step's tracked run
        assistant_only_loss=True,  # loss on model turns only: system, user and <information> turns masked
        dataloader_num_workers=s.dataloader_workers,
        remove_unused_columns=False,  # the vision collator needs the raw `messages` and `images`
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def language_linear_modules(model) -> list[str]:
    """Full names of every ``nn.Linear`` of the language model (not the vision tower/merger, not lm_head)."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if name.startswith(LANGUAGE_PREFIX) and not any(m in name for m in VISION_MARKERS):
            names.append(name)
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear layers under {LANGUAGE_PREFIX!r}: "
                         "LoRA targets a Qwen2.5-VL language model")
    return names


def lora_config(settings: Settings, model) -> LoraConfig:
    """peft ``LoraConfig`` over exactly the language model's linear layers (regex of their full names)."""
    from peft import LoraConfig

    s = settings.sft
    leaves = sorted({n.rsplit(".", 1)[-1] for n in language_linear_modules(model)})
    pattern = rf"{re.escape(LANGUAGE_PREFIX)}(?:.*\.)?({'|'.join(map(re.escape, leaves))})"
    return LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                      target_modules=pattern, bias="none", task_type="CAUSAL_LM")
