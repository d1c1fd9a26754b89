"""The SFT step's core: TRL ``SFTTrainer`` on a DeepMMSearchVQA version, resumable, tracked.

Why: the paper's cold start teaches the model when and how to search. This runs it (DESIGN.md §1:
LoRA r=8 on every linear layer of the language model, vision tower + projector frozen, loss only
on the model's turns), and makes it survive preemption: every ``save_steps`` the Trainer's own
checkpoint folder (weights/adapter, optimizer, scheduler, RNG, trainer state) is published
atomically as ``<out>/step-N/``; a restarted run fetches the newest VALID one and resumes from it.
The final model (LoRA merged, with processor, tokenizer and chat template, so vLLM can serve it)
is published as ``<out>/final/``. Metrics go to the step's MLflow run every logging step.

Registration in the model registry is left to the promote step (it decides what becomes a
challenger); this run records ``dmms.checkpoint_uri`` and the manifest sha256 as run tags.

Run: ``dmms sft --data deepmmsearchvqa --model .dmms/models/tiny --out .dmms/store/checkpoints/sft1``
or ``run_sft(load_settings(), data_uri, model_path, out_uri)``. Tests: ``pytest tests/unit/sft``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field
from transformers import PrinterCallback, TrainerCallback

from components.agent.models import freeze_vision, load_model_and_processor
from components.agent.sft_data import load_dataset_version, resolve_dataset
from components.common.checkpoints import (
    MlflowMetricsCallback,
    PublishCheckpointCallback,
    prepare_resume,
    save_merged,
)
from components.common.settings import Settings
from components.common.storage import (
    MANIFEST,
    StorageError,
    join_uri,
    open_store,
    publish_dir,
)
from components.common.tracking import tracked_run
from components.common.training import check_master_precision
from components.sft.config import lora_config, sft_config

log = logging.getLogger(__name__)
FINAL = "final"
TRAIN_COLUMNS = ("messages", "images")


class SFTResult(BaseModel):
    """What one SFT run produced."""

    final_uri: str = Field(description="Object-store URI of the merged final checkpoint version.")
    manifest_sha256: str = Field(description="sha256 of the final checkpoint's manifest.json.")
    data_uri: str = Field(description="The dataset version trained on.")
    global_step: int
    resumed_from: str | None = Field(None, description="Step checkpoint URI this run resumed from.")
    run_id: str | None = Field(None, description="MLflow run id (None with tracking disabled).")
    train_loss: float | None = None
    trainable_params: int
    lora: bool


def build_trainer(settings: Settings, dataset, model_path: str, output_dir: Path, callbacks=(),
                  **config_overrides):
    """Load the model (vision frozen), wrap LoRA unless full fine-tuning, return the ``SFTTrainer``."""
    from trl import SFTTrainer

    model, processor = load_model_and_processor(model_path, settings.model)
    freeze_vision(model)
    peft = None if settings.sft.full_finetune else lora_config(settings, model)
    args = sft_config(settings, output_dir, **config_overrides)
    train = dataset.select_columns(list(TRAIN_COLUMNS))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                         peft_config=peft, callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # it prints to stdout; our callback logs instead
    check_master_precision(trainer.model)  # fp32 master weights; bf16 only as compute (args.bf16)
    return trainer


def run_sft(settings: Settings, data_uri: str, model: str, out_uri: str,
            work_dir: str | Path | None = None, callbacks: Sequence[TrainerCallback] = ()) -> SFTResult:
    """Train on the dataset ``data_uri`` (version URI or name) from ``model``; publish checkpoints
    under ``out_uri``; resume from its newest valid ``step-N`` if there is one. ``callbacks`` are
    extra ``TrainerCallback``s (e.g. a caller's own monitoring)."""
    store = open_store(settings)
    if store.exists(join_uri(out_uri, FINAL, MANIFEST)):
        raise StorageError(f"{out_uri} already holds a final checkpoint: choose another --out")
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="dmms-sft-"))
    try:
        data = resolve_dataset(store, data_uri)
        dataset = load_dataset_version(store, data.uri, work / "cache")
        output_dir = work / "trainer"
        resume_path, resumed_from = prepare_resume(store, out_uri, output_dir)
        with tracked_run(settings, "sft", tags={"dmms.data_uri": data.uri, "dmms.out_uri": out_uri}) as run:
            run.log_params({"sft.data_uri": data.uri, "sft.model": model, "sft.out_uri": out_uri,
                            "sft.resumed_from": resumed_from or ""})
            publisher = PublishCheckpointCallback(store, out_uri)
            trainer = build_trainer(settings, dataset, model, output_dir,
                                    callbacks=[MlflowMetricsCallback(run), publisher, *callbacks])
            trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
            output = trainer.train(resume_from_checkpoint=resume_path)
            final_ref = publish_dir(store, save_merged(trainer, work / "final"), out_uri, version=FINAL,
                                    metadata={"kind": "merged_model", "global_step": trainer.state.global_step,
                                              "data_uri": data.uri, "base_model": model,
                                              "resumed_from": resumed_from})
            sha = hashlib.sha256(store.get_bytes(join_uri(final_ref.uri, MANIFEST))).hexdigest()
            run.set_tags({"dmms.checkpoint_uri": final_ref.uri, "dmms.manifest_sha256": sha})
            return SFTResult(final_uri=final_ref.uri, manifest_sha256=sha, data_uri=data.uri,
                             global_step=trainer.state.global_step, resumed_from=resumed_from,
                             run_id=run.run_id, train_loss=output.training_loss,
                             trainable_params=trainable, lora=not settings.sft.full_finetune)
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
