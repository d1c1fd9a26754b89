"""The HF Trainer arguments every training step shares (SFT and GRPO map onto them identically).

Why: both steps checkpoint the same way (step checkpoints with optimizer/scheduler/RNG state, so a
preempted run resumes), log through our MLflow callback instead of TRL's ``report_to``, and turn
bf16 and gradient checkpointing off on a CPU. ``components/sft/config.py`` and
``components/grpo/config.py`` add only what is their own.

Import-only; exercised by tests/unit/sft and tests/unit/grpo.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from components.common.settings import Settings

log = logging.getLogger(__name__)


def on_cpu(settings: Settings) -> bool:
    """True when training runs on the CPU (no CUDA, or the model device is cpu)."""
    return settings.model.device == "cpu" or not torch.cuda.is_available()


def check_master_precision(model: Any) -> None:
    """Refuse to train parameters stored in less than fp32.

    Why: an optimizer step on a bf16 weight rounds to bf16's 8-bit mantissa, so updates smaller than
    ~0.4% of the weight vanish (at the paper's lr 2e-6 almost all of them). Mixed precision done right
    keeps the trainable ("master") weights and the optimizer state in fp32 and computes in bf16
    (``bf16=True``: autocast); a frozen base may be bf16 (LoRA: peft keeps the adapters in fp32).
    """
    import torch

    low = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad and p.dtype != torch.float32})
    if low:
        n = sum(p.numel() for p in model.parameters() if p.requires_grad and p.dtype != torch.float32)
        raise ValueError(f"{n} trainable parameters are {', '.join(low)}, not float32: load the model with "
                         f"DMMS_MODEL__DTYPE=float32 and compute in bf16 with DMMS_SFT__BF16 / DMMS_GRPO__BF16")


def trainer_kwargs(section: Any, settings: Settings, output_dir: str | Path) -> dict[str, Any]:
    """TrainingArguments fields from a training section (``settings.sft`` or ``settings.grpo``)."""
    cpu = on_cpu(settings)
    if cpu and (section.bf16 or section.gradient_checkpointing):
        log.info("training on CPU: bf16 and gradient checkpointing turned off")
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=section.epochs,
        max_steps=section.max_steps,
        learning_rate=section.learning_rate,
        lr_scheduler_type=section.lr_scheduler,
        warmup_steps=section.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        per_device_train_batch_size=section.batch_size,
        gradient_accumulation_steps=section.grad_accum,
        bf16=section.bf16 and not cpu,
        gradient_checkpointing=section.gradient_checkpointing and not cpu,
        use_cpu=cpu,
        seed=section.seed,
        data_seed=section.seed,
        logging_steps=section.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=section.save_steps,
        save_only_model=False,  # a step checkpoint holds optimizer, scheduler and RNG state to resume
        save_total_limit=1,  # locally; each is published and deleted (checkpoints.PublishCheckpointCallback)
        report_to="none",  # our MLflow callback (components/common/checkpoints.py) logs instead
        remove_unused_columns=False,  # collators and rewards read raw columns (messages, images, answers)
        disable_tqdm=True,
    )
