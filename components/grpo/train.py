"""The GRPO step's core: TRL ``GRPOTrainer`` with the agent loop as ``rollout_func``, resumable, tracked.

Why: after the SFT cold start the paper trains online with GRPO: the policy runs the real tools,
and is rewarded 0.9 · correct + 0.1 · format (docs/design.md §1). This runs it through TRL's extension
points only (``rollout_func`` and plain reward functions; no vendoring): 8 rollouts per prompt,
KL 0.001, clip 0.2, lr 2e-6 in the ``paper`` profile (vLLM rollout server on GPU), tiny values on
CPU. Every ``save_steps`` the Trainer's checkpoint is published atomically as ``<out>/step-N/``; a
restarted run resumes from the newest valid one; the final model (LoRA merged if LoRA, with its
processor and chat template, so vLLM can serve it) is published as ``<out>/final/``. Metrics go
to the step's MLflow run every logging step; the run records ``dmms.checkpoint_uri``.

Run (one process, or any number under ``accelerate launch`` / ``torchrun``, same entry point)::

    dmms grpo --data world/vqa/train --model .dmms/store/checkpoints/sft1/final --out .dmms/store/checkpoints/grpo1
    python -m components.grpo.train --data … --model … --out …

``--data`` is a VQA set folder or a DeepMMSearchVQA version (name or URI); ``--model`` a local
checkpoint folder (or hub id). Tests: ``pytest tests/unit/grpo``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

from components.agent.judging import judge_tags
from components.agent.models import freeze_vision, load_model_and_processor
from components.common.checkpoints import (
    MlflowMetricsCallback,
    PublishCheckpointCallback,
    prepare_resume,
    save_merged,
)
from components.common.launch import (
    Runner,
    is_main_process,
    launch_plan,
    launch_step,
    rollout_env,
    run_subprocess,
)
from components.common.settings import Settings
from components.common.storage import MANIFEST, StorageError, join_uri, open_store, publish_dir
from components.common.tracking import tracked_run
from components.common.training import check_master_precision
from components.grpo.config import grpo_config, lora_config
from components.grpo.data import load_grpo_dataset
from components.grpo.rewards import make_reward_funcs
from components.grpo.rollout import GeneratorFactory, make_rollout_func

log = logging.getLogger(__name__)
FINAL = "final"


class GRPOResult(BaseModel):
    """What one GRPO run produced."""

    final_uri: str = Field(description="Object-store URI of the final (merged) checkpoint version.")
    manifest_sha256: str = Field(description="sha256 of the final checkpoint's manifest.json.")
    data_uri: str
    global_step: int
    resumed_from: str | None = Field(None, description="Step checkpoint URI this run resumed from.")
    run_id: str | None = Field(None, description="MLflow run id (None with tracking disabled).")
    train_loss: float | None = None
    metrics: list[dict[str, float]] = Field(default_factory=list, description="Every logged step's metrics.")


def build_trainer(settings: Settings, dataset, model_path: str, output_dir: Path, work: Path, callbacks=(),
                  generator_factory: GeneratorFactory | None = None, **config_overrides):
    """Load the policy (vision frozen), return the ``GRPOTrainer`` with our rewards and rollout_func."""
    from trl import GRPOTrainer

    model, processor = load_model_and_processor(model_path, settings.model)
    freeze_vision(model)
    model.train()
    peft = None if settings.grpo.full_finetune else lora_config(settings, model)
    args = grpo_config(settings, output_dir, **config_overrides)
    rollout = make_rollout_func(settings, dataset["question"], generator_factory)
    trainer = GRPOTrainer(model=model, reward_funcs=make_reward_funcs(settings, work), args=args,
                          train_dataset=dataset, processing_class=processor, peft_config=peft,
                          rollout_func=rollout, callbacks=list(callbacks))
    check_master_precision(trainer.model)  # fp32 master weights; bf16 only as compute (args.bf16)
    return trainer


def run_grpo(settings: Settings, data_uri: str, model: str, out_uri: str, work_dir: str | Path | None = None,
             generator_factory: GeneratorFactory | None = None, **config_overrides) -> GRPOResult:
    """Train from ``model`` on the prompts of ``data_uri``; publish checkpoints under ``out_uri``;
    resume from its newest valid ``step-N`` if there is one. ``generator_factory`` and
    ``config_overrides`` are for tests and benchmarks."""
    store = open_store(settings)
    if store.exists(join_uri(out_uri, FINAL, MANIFEST)):
        raise StorageError(f"{out_uri} already holds a final checkpoint: choose another --out")
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="dmms-grpo-"))
    try:
        dataset = load_grpo_dataset(settings, store, data_uri, work / "cache")
        output_dir = work / "trainer"
        resume_path, resumed_from = prepare_resume(store, out_uri, output_dir)
        from components.search.client import served_index_tags

        tags = {"dmms.data_uri": data_uri, "dmms.out_uri": out_uri,
                **(served_index_tags(settings.tools.url, settings.tools.client_timeout_s) if is_main_process() else {})}
        with tracked_run(settings, "grpo", tags=tags) as run:
            run.log_params({"grpo.data_uri": data_uri, "grpo.model": model, "grpo.out_uri": out_uri,
                            "grpo.resumed_from": resumed_from or ""})
            metrics = MlflowMetricsCallback(run)
            trainer = build_trainer(settings, dataset, model, output_dir, work,
                                    callbacks=[metrics, PublishCheckpointCallback(store, out_uri)],
                                    generator_factory=generator_factory, **config_overrides)
            run.set_tags(judge_tags(trainer.reward_funcs[0].judge))
            output = trainer.train(resume_from_checkpoint=resume_path)
            step = trainer.state.global_step
            final_dir = save_merged(trainer, work / "final", base_model=model)  # every rank (FSDP gathers)
            if final_dir is None:  # not rank 0: rank 0 publishes and reports
                trainer.accelerator.wait_for_everyone()
                return GRPOResult(final_uri="", manifest_sha256="", data_uri=data_uri, global_step=step)
            final_ref = publish_dir(store, final_dir, out_uri, version=FINAL,
                                    metadata={"kind": "merged_model", "global_step": step, "data_uri": data_uri,
                                              "base_model": model, "resumed_from": resumed_from})
            trainer.accelerator.wait_for_everyone()
            sha = hashlib.sha256(store.get_bytes(join_uri(final_ref.uri, MANIFEST))).hexdigest()
            run.set_tags({"dmms.checkpoint_uri": final_ref.uri, "dmms.manifest_sha256": sha})
            return GRPOResult(final_uri=final_ref.uri, manifest_sha256=sha, data_uri=data_uri, global_step=step,
                              resumed_from=resumed_from, run_id=run.run_id, train_loss=output.training_loss,
                              metrics=metrics.history)
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def train_step(settings: Settings, data_uri: str, model: str, out_uri: str, *, run_id: str = "",
               env: dict[str, str] | None = None, runner: Runner = run_subprocess, **launcher) -> GRPOResult:
    """The GRPO step as a pipeline runs it: ONE vLLM rollout server for the whole step (on the
    cluster, :func:`components.grpo.servers.rollout_server`), then GRPO in this process, or on one
    rank per GPU (and node) that all use that server's URL (:func:`components.common.launch.rollout_env`).
    ``env`` goes to every rank; ``runner`` and ``launcher`` (the rollout launcher's api_client,
    namespace, owner) are for tests."""
    from components.grpo.servers import rollout_server

    plan = launch_plan(settings, "grpo")
    with rollout_server(settings, run_id=run_id, **launcher) as settings:
        if not plan.distributed:
            return run_grpo(settings, data_uri, model, out_uri)
        args = ["--data", data_uri, "--model", model, "--out", out_uri]
        return GRPOResult(**launch_step(settings, "grpo", args, out_uri, env={**rollout_env(settings), **(env or {})},
                                        runner=runner))


def main(argv: list[str] | None = None) -> None:
    """``python -m components.grpo.train --data URI --model PATH --out URI`` (torchrun/accelerate too)."""
    from components.common.logging import setup_logging
    from components.common.settings import load_settings

    parser = argparse.ArgumentParser(description="GRPO on the agent loop (see components/grpo/train.py)")
    parser.add_argument("--data", required=True, help="VQA set folder or DeepMMSearchVQA version (name or URI)")
    parser.add_argument("--model", required=True, help="policy checkpoint folder or hub id (the SFT final)")
    parser.add_argument("--out", required=True, help="object-store prefix for step-N/ and final/")
    parser.add_argument("--work-dir", default=None, help="local scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    setup_logging()
    from components.common.launch import is_main_process, node_local, write_result
    from components.grpo.servers import rollout_server

    # a no-op under a launcher (it started the server and passed its URL) and off the cluster
    with rollout_server(load_settings()) as settings:
        # a TrainJob node fetches store URIs itself (once per node)
        result = run_grpo(settings, node_local(settings, args.data, keep_versions=True), node_local(settings, args.model), args.out,
                          work_dir=args.work_dir)
    if is_main_process():
        write_result(settings, args.out, result)
        log.info("GRPO done: %s (step %d)", result.final_uri, result.global_step)


if __name__ == "__main__":
    main()
