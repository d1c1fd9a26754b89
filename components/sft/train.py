"""The SFT step's core: TRL ``SFTTrainer`` on a DeepMMSearchVQA version, resumable, tracked.

Why: the paper's cold start teaches the model when and how to search. This runs it (docs/design.md §1:
LoRA r=8 on every linear layer of the language model, vision tower + projector frozen, loss only
on the model's turns), and makes it survive preemption: every ``save_steps`` the Trainer's own
checkpoint folder (weights/adapter, optimizer, scheduler, RNG, trainer state) is published
atomically as ``<out>/step-N/``; a restarted run fetches the newest VALID one and resumes from it.
The final model (LoRA merged, with processor, tokenizer and chat template, so vLLM can serve it)
is published as ``<out>/final/``. Metrics go to the step's MLflow run every logging step.

For a model trained from scratch (the tiny profile) the step also builds the base model from the
dataset it trains on (tokenizer on the data's own text; :func:`base_model_for`), pretrains its vision
tower (:mod:`components.sft.vision`), teaches it to read the tower on freshly drawn search-free images
(:mod:`components.sft.visual`), copy-pretrains it last (:mod:`components.sft.pretrain`), publishes it
as ``<out>/base/`` (the evaluation's base row), trains the vision tower in SFT only if
``sft.train_vision`` (the tiny profile keeps its pretrained tower) and swaps each row's names afresh on every
access (``sft.counterfactual_share``, :mod:`components.sft.counterfactual`); the search-free picture
rows get a fresh image each access instead (``sft.redraw_visual``). Rows longer than
``sft.max_length`` are dropped and counted (``sft.dropped_too_long`` in MLflow), never truncated.

Registration in the model registry is left to the promote step (it decides what becomes a
challenger); this run records ``dmms.checkpoint_uri`` and the manifest sha256 as run tags.

Run: ``dmms sft --data deepmmsearchvqa --model .dmms/models/tiny --out .dmms/store/checkpoints/sft1``
or ``run_sft(load_settings(), data_uri, model_path, out_uri)``. Tests: ``pytest tests/unit/sft``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field
from transformers import PrinterCallback, TrainerCallback

from components.agent.models import ensure_model, freeze_vision, load_model_and_processor
from components.agent.sft_data import load_dataset_version, resolve_dataset
from components.common.checkpoints import (
    MlflowMetricsCallback,
    PublishCheckpointCallback,
    prepare_resume,
    save_merged,
)
from components.common.launch import LaunchError, Runner, launch_plan, launch_step, run_subprocess
from components.common.settings import Settings
from components.common.storage import (
    MANIFEST,
    StorageError,
    fetch_version,
    join_uri,
    open_store,
    publish_dir,
)
from components.common.tracking import tracked_run
from components.common.training import check_master_precision
from components.sft.config import lora_config, sft_config
from components.sft.data import prepare_rows, tokenizer_corpus
from components.sft.pretrain import CopyPretrainConfig, copy_pretrain
from components.sft.vision import VisionPretrainConfig, vision_pretrain
from components.sft.visual import VisualPretrainConfig, VisualRow, redraw, visual_batches, visual_pretrain

log = logging.getLogger(__name__)
FINAL = "final"
BASE = "base"


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
    dropped_too_long: int = Field(0, description="Rows dropped for being longer than sft.max_length.")
    base_model_uri: str | None = Field(None, description="The from-scratch base model, published for evaluation.")


def build_trainer(settings: Settings, dataset, model_path: str, output_dir: Path, callbacks=(),
                  **config_overrides):
    """Load the model (vision frozen unless ``sft.train_vision`` with full fine-tuning), wrap LoRA
    unless full fine-tuning, drop rows too long for ``sft.max_length`` (counted), swap names on the
    fly when ``sft.counterfactual_share`` > 0; return the ``SFTTrainer`` (``trainer.dmms_rows``:
    the :class:`PreparedRows` it trains on)."""
    from trl import SFTTrainer

    s = settings.sft
    model, processor = load_model_and_processor(model_path, settings.model)
    if not (s.full_finetune and s.train_vision):
        freeze_vision(model)
    peft = None if s.full_finetune else lora_config(settings, model)
    args = sft_config(settings, output_dir, **config_overrides)
    rows = prepare_rows(dataset, processor, s.max_length, s.length_margin, s.counterfactual_share, s.seed,
                        redraw_visual=s.redraw_visual, direct_share=s.direct_share,
                        prompt_version=settings.agent.prompt_version)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows.dataset, processing_class=processor,
                         peft_config=peft, callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # it prints to stdout; our callback logs instead
    check_master_precision(trainer.model)  # fp32 master weights; bf16 only as compute (args.bf16)
    trainer.dmms_rows = rows
    return trainer


def base_model_for(settings: Settings, model: str, dataset, work: Path) -> str:
    """The model to start from: ``model`` as given; empty → ``model.name_or_path`` if a checkpoint is
    there, else the tiny profile with ``model.tiny.tokenizer_corpus=data`` builds one here from
    scratch, its tokenizer trained on this dataset's own text (pages, names, prompts; names swapped)."""
    if model:
        return model
    tiny, name = settings.model.tiny, Path(settings.model.name_or_path)
    if settings.profile != "tiny" or tiny.tokenizer_corpus != "data" or (name / "config.json").is_file():
        return ensure_model(settings)  # a hub id, or a checkpoint already at model.name_or_path
    from components.agent.tiny import build_tiny_model

    corpus = tokenizer_corpus(dataset["messages"], seed=settings.model.seed)
    return str(build_tiny_model(work / "base", seed=settings.model.seed, max_pixels=settings.model.max_pixels,
                                tiny=tiny, corpus=corpus))


def pretrain_base(settings: Settings, model_path: str, dataset, out: Path, run) -> str:
    """Pretrain the from-scratch base: the vision tower (:mod:`components.sft.vision`, classifiers on
    fresh search-free images), visual pretraining (:mod:`components.sft.visual`, the answer loss on
    fresh images, the language model learns to read the tower), then copy pretraining
    (:mod:`components.sft.pretrain`, text only) LAST: the copy circuit forms late (~1,000 steps) and
    400 high-learning-rate steps of constant answers after it wiped it out (search-required 20 -> 3 %
    in make run, bench/copy_recipe.md). ``sft.copy_pretrain_visual_every`` rehearses the readout during
    copy pretraining (every N-th step a visual batch). Save to ``out``."""
    s = settings.sft
    model, processor = load_model_and_processor(model_path, settings.model)
    if s.vision_pretrain_steps:
        seen = vision_pretrain(model, processor, VisionPretrainConfig(
            steps=s.vision_pretrain_steps, batch_size=s.vision_pretrain_batch_size,
            learning_rate=s.vision_pretrain_learning_rate, seed=s.seed),
            on_log=lambda step, metrics: run.log_metrics(metrics, step=step))
        run.log_metrics({f"sft.vision_acc_{k}": v for k, v in seen.items()})
    rows = [VisualRow(m, q, c, a) for m, q, c, a in zip(dataset["messages"], dataset["question"],
                                                        dataset["category"], dataset["final_answer"], strict=True)]
    pictures = any(redraw(r, random.Random(0)) is not None for r in rows)
    if not s.train_vision and (s.visual_pretrain_steps or s.copy_pretrain_visual_every):
        freeze_vision(model)  # a pretrained tower stays as it is; the language model learns to read it
    if s.visual_pretrain_steps:
        if pictures:
            visual_pretrain(model, processor, rows,
                            VisualPretrainConfig(steps=s.visual_pretrain_steps,
                                                 batch_size=s.visual_pretrain_batch_size,
                                                 learning_rate=s.visual_pretrain_learning_rate, seed=s.seed),
                            on_log=lambda step, metrics: run.log_metrics(metrics, step=step))
        else:  # a small run's dataset may hold no picture question: nothing to learn the readout from
            log.warning("visual pretraining skipped: the dataset's %d rows hold no search-free picture question "
                        "(category visual/...)", len(rows))
            run.log_metrics({"sft.visual_pretrain_skipped": 1.0})
    if s.copy_pretrain_steps:
        config = CopyPretrainConfig(steps=s.copy_pretrain_steps, batch_size=s.copy_pretrain_batch_size,
                                    learning_rate=s.copy_pretrain_learning_rate,
                                    max_tokens=s.copy_pretrain_max_tokens,
                                    synthetic_share=s.copy_pretrain_synthetic_share, seed=s.seed,
                                    answer_share=s.copy_pretrain_answer_share,
                                    rehearse_every=s.copy_pretrain_visual_every if pictures else 0)
        rehearse = (visual_batches(processor, rows, s.visual_pretrain_batch_size, s.seed + 1)
                    if config.rehearse_every else None)
        copy_pretrain(model, processor, dataset["messages"], config,
                      on_log=lambda step, metrics: run.log_metrics(metrics, step=step), rehearse=rehearse)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return str(out)


def run_sft(settings: Settings, data_uri: str, model: str, out_uri: str,
            work_dir: str | Path | None = None, callbacks: Sequence[TrainerCallback] = ()) -> SFTResult:
    """Train on the dataset ``data_uri`` (version URI or name) from ``model`` (empty: the profile's
    model, see :func:`base_model_for`; a model built from scratch is published as ``<out>/base/``
    for the base row of evaluation); publish checkpoints under ``out_uri``; resume from its newest
    valid ``step-N`` if there is one. ``callbacks`` are extra ``TrainerCallback``s."""
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
            base_uri = join_uri(out_uri, BASE)
            if not model and store.exists(join_uri(base_uri, MANIFEST)):  # a resumed run: same base
                model = str(fetch_version(store, base_uri, work / "base"))
            given = model
            model = base_model_for(settings, model, dataset, work)
            if not given and model == str(work / "base"):  # built here from scratch
                s = settings.sft
                if s.vision_pretrain_steps or s.copy_pretrain_steps or s.visual_pretrain_steps:
                    model = pretrain_base(settings, model, dataset, work / "pretrained", run)
                publish_dir(store, Path(model), out_uri, version=BASE,
                            metadata={"kind": "base_model", "data_uri": data.uri, "built": "from scratch"})
                run.set_tags({"dmms.base_model_uri": base_uri})
            run.log_params({"sft.base_model": model})
            publisher = PublishCheckpointCallback(store, out_uri)
            trainer = build_trainer(settings, dataset, model, output_dir,
                                    callbacks=[MlflowMetricsCallback(run), publisher, *callbacks])
            rows = trainer.dmms_rows
            run.log_metrics({"sft.rows": rows.rows, "sft.dropped_too_long": rows.dropped_too_long,
                             "sft.max_tokens": rows.max_tokens, "sft.mean_tokens": rows.mean_tokens,
                             "sft.counterfactual_share": rows.counterfactual_share,
                             "sft.direct_share": rows.direct_share, "sft.redraw_visual": float(rows.redraw_visual)})
            trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
            output = trainer.train(resume_from_checkpoint=resume_path)
            final_dir = save_merged(trainer, work / "final", base_model=model)  # every rank (FSDP gathers)
            if final_dir is None:  # not rank 0: rank 0 publishes and reports
                trainer.accelerator.wait_for_everyone()
                return SFTResult(final_uri="", manifest_sha256="", data_uri=data.uri,
                                 global_step=trainer.state.global_step, trainable_params=trainable,
                                 lora=not settings.sft.full_finetune)
            final_ref = publish_dir(store, final_dir, out_uri, version=FINAL,
                                    metadata={"kind": "merged_model", "global_step": trainer.state.global_step,
                                              "data_uri": data.uri, "base_model": model,
                                              "resumed_from": resumed_from})
            trainer.accelerator.wait_for_everyone()
            sha = hashlib.sha256(store.get_bytes(join_uri(final_ref.uri, MANIFEST))).hexdigest()
            run.set_tags({"dmms.checkpoint_uri": final_ref.uri, "dmms.manifest_sha256": sha})
            return SFTResult(final_uri=final_ref.uri, manifest_sha256=sha, data_uri=data.uri,
                             global_step=trainer.state.global_step, resumed_from=resumed_from,
                             run_id=run.run_id, train_loss=output.training_loss,
                             trainable_params=trainable, lora=not settings.sft.full_finetune,
                             dropped_too_long=rows.dropped_too_long,
                             base_model_uri=base_uri if store.exists(join_uri(base_uri, MANIFEST)) else None)
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def train_step(settings: Settings, data_uri: str, model: str, out_uri: str, *,
               runner: Runner = run_subprocess) -> SFTResult:
    """The SFT step as a pipeline runs it: in this process on one rank, else one rank per GPU (and
    node) through :func:`components.common.launch.launch_step`; ``runner`` is for tests."""
    if not launch_plan(settings, "sft").distributed:
        return run_sft(settings, data_uri, model, out_uri)
    if not model and settings.profile == "tiny" and settings.model.tiny.tokenizer_corpus == "data":
        raise LaunchError("the tiny profile builds its model from scratch inside the SFT step, once per process: "
                          "train it on one rank (DMMS_PIPELINES__GPU_COUNT=1, DMMS_PIPELINES__NODES=1) or "
                          "pass a base model to start from")
    args = ["--data", data_uri, "--model", model, "--out", out_uri]
    return SFTResult(**launch_step(settings, "sft", args, out_uri, runner=runner))


def main(argv: list[str] | None = None) -> None:
    """``python -m components.sft.train --data URI --model PATH --out URI``: what each rank runs
    under ``accelerate launch`` (components/common/launch.py); rank 0 writes ``<out>/result.json``."""
    from components.common.launch import is_main_process, node_local, write_result
    from components.common.logging import setup_logging
    from components.common.settings import load_settings

    parser = argparse.ArgumentParser(description="SFT on a DeepMMSearchVQA version (see components/sft/train.py)")
    parser.add_argument("--data", required=True, help="dataset version URI, or a dataset name (newest version)")
    parser.add_argument("--model", default="", help="base model folder or hub id (default: the profile's)")
    parser.add_argument("--out", required=True, help="object-store prefix for step-N/ and final/")
    parser.add_argument("--work-dir", default=None, help="local scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    setup_logging()
    settings = load_settings()
    model = node_local(settings, args.model) if args.model else ""  # a TrainJob node fetches it
    result = run_sft(settings, args.data, model, args.out, work_dir=args.work_dir)
    if is_main_process():
        write_result(settings, args.out, result)
        log.info("SFT done: %s (step %d)", result.final_uri, result.global_step)


if __name__ == "__main__":
    main()
