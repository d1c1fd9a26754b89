"""Mixed precision that learns: fp32 master weights with bf16 compute, never bf16 weights trained.

The ``paper`` profile full-fine-tunes at lr 2e-6. Here, on CPU, the tiny Qwen2.5-VL is loaded the way
the training steps load it (``load_model_and_processor``) and trained 20 AdamW steps at that lr with
bf16 autocast (``bf16=True`` on CPU: the same autocast a GPU run uses, on CPU kernels): at least 99%
of the trainable master values change. Loaded in bf16 instead, the same steps round almost every
update away — which is why the settings refuse that combination and the steps refuse bf16 trainable
weights. A GPU run adds CUDA bf16 kernels and FSDP's sharded fp32 masters; the arithmetic is the same.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from components.agent.models import freeze_vision, load_model_and_processor
from components.agent.tiny import build_tiny_model
from components.common.settings import SettingsError, load_settings
from components.common.training import check_master_precision


class _Tokens(Dataset):
    """Text-only rows that hold every token id once (a shuffled vocabulary), so every embedding row
    gets a gradient; the vision placeholders are left out (text without pixels must not hold them)."""

    def __init__(self, tokenizer, length: int = 64):
        vision = {tokenizer.convert_tokens_to_ids(t) for t in
                  ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
        ids = torch.tensor([i for i in range(len(tokenizer)) if i not in vision])
        ids = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))]
        self.rows = list(ids[: len(ids) // length * length].view(-1, length)) + [ids[-length:]]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "attention_mask": torch.ones_like(self.rows[i]), "labels": self.rows[i]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("prec") / "tiny", seed=0)


def _train(tiny, tmp_path, dtype: str, steps: int = 20) -> float:
    settings = load_settings(profile="tiny", model={"name_or_path": str(tiny), "dtype": dtype},
                             sft={"full_finetune": False}, grpo={"full_finetune": False})
    model, processor = load_model_and_processor(str(tiny), settings.model)
    freeze_vision(model)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path / dtype), max_steps=steps, learning_rate=2e-6,
                             lr_scheduler_type="constant", per_device_train_batch_size=4, bf16=True, use_cpu=True,
                             report_to="none", save_strategy="no", disable_tqdm=True, weight_decay=0.0)
    trainer = Trainer(model=model, args=args, train_dataset=_Tokens(processor.tokenizer))
    trainer.train()
    assert args.bf16 and all(s["exp_avg"].dtype == before_p.dtype
                             for s, before_p in zip(trainer.optimizer.state.values(), before.values(), strict=False))
    changed = sum((p.detach() != before[n]).sum().item() for n, p in model.named_parameters() if n in before)
    return changed / sum(t.numel() for t in before.values())


def test_fp32_masters_with_bf16_compute_change_nearly_every_weight(tiny, tmp_path):
    assert _train(tiny, tmp_path, "float32") >= 0.99


def test_bf16_weights_round_the_updates_away(tiny, tmp_path):
    assert _train(tiny, tmp_path, "bfloat16") < 0.5  # what the paper profile did before


def test_settings_refuse_full_finetuning_of_low_precision_weights():
    with pytest.raises(SettingsError, match="DMMS_MODEL__DTYPE=bfloat16 with DMMS_GRPO__FULL_FINETUNE=true"):
        load_settings(profile="tiny", model={"dtype": "bfloat16"}, sft={"full_finetune": False})
    with pytest.raises(SettingsError, match="DMMS_MODEL__DTYPE=bfloat16 with DMMS_SFT__FULL_FINETUNE=true"):
        load_settings(profile="tiny", model={"dtype": "bfloat16"}, sft={"full_finetune": True})
    ok = load_settings(profile="tiny", model={"dtype": "bfloat16"}, sft={"full_finetune": False},
                       grpo={"full_finetune": False})
    assert ok.model.dtype == "bfloat16"  # LoRA over a bf16 base: the adapters are fp32 (peft)


def test_paper_profile_keeps_fp32_masters_and_bf16_compute():
    s = load_settings(profile="paper", tools={"token": "t"}, storage={"access_key": "a", "secret_key": "b"})
    assert s.model.dtype == "float32" and s.sft.bf16 and s.grpo.bf16 and s.grpo.full_finetune


def test_steps_refuse_bf16_trainable_weights(tiny):
    model, _ = load_model_and_processor(str(tiny), load_settings(
        profile="tiny", model={"dtype": "bfloat16"}, sft={"full_finetune": False},
        grpo={"full_finetune": False}).model)
    with pytest.raises(ValueError, match="not float32: load the model with DMMS_MODEL__DTYPE=float32"):
        check_master_precision(model)
    freeze_vision(model)
    for p in model.parameters():
        p.requires_grad_(False)
    check_master_precision(model)  # a frozen bf16 base is fine
