"""Trainer checkpoints in the object store, resume, per-step MLflow metrics: shared by SFT and GRPO.

Why: a preempted GPU pod or a killed process must resume where it stopped, and both trainers are
HF Trainers. Every ``save_steps`` the Trainer's own checkpoint folder (weights, optimizer,
scheduler, RNG, trainer state) is published atomically as ``<out>/step-N/`` (parts first,
``manifest.json`` last: docs/design.md §5, a version without its manifest does not exist); a restarted
run fetches the newest VALID one (every part's sha256 checked; corrupt ones are skipped) and hands
it to ``trainer.train(resume_from_checkpoint=...)``. The final model is saved with LoRA merged so
vLLM can serve it.

Tested through the trainers: tests/unit/sft/test_resume.py and tests/unit/grpo/test_grpo_train.py
(SIGKILL a training process, restart, assert it resumes).
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

from components.common.storage import (
    MANIFEST,
    CorruptVersionError,
    ObjectStore,
    VersionRef,
    fetch_version,
    join_uri,
    list_versions,
    publish_dir,
    verify_version,
)
from components.common.tracking import RunHandle

log = logging.getLogger(__name__)
STEP_VERSION = re.compile(r"^step-(\d+)$")


class MlflowMetricsCallback(TrainerCallback):
    """Every log event → the step's MLflow run (loss, reward and its parts, format rate, searches per
    rollout, KL, ...), plus ``tokens_per_s`` from TRL's ``num_tokens`` counter."""

    def __init__(self, run: RunHandle):
        self.run = run
        self._last: tuple[float, float] | None = None
        self.history: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        metrics = {k: float(v) for k, v in logs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        now, tokens = time.perf_counter(), metrics.get("num_tokens")
        if tokens is not None and self._last is not None and now > self._last[0] and tokens >= self._last[1]:
            metrics["tokens_per_s"] = (tokens - self._last[1]) / (now - self._last[0])
        if tokens is not None:
            self._last = (now, tokens)
        self.history.append({**metrics, "step": state.global_step})
        self.run.log_metrics(metrics, step=state.global_step)
        log.info("step %d/%d %s", state.global_step, state.max_steps,
                 " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


class PublishCheckpointCallback(TrainerCallback):
    """After the Trainer saved ``checkpoint-N``, publish the folder atomically as ``<out>/step-N/``,
    delete the local folder (the store holds it now: pod disks do not fill up), and keep only the
    newest ``keep`` step checkpoints in the store (:func:`prune_step_checkpoints`)."""

    def __init__(self, store: ObjectStore, out_uri: str, keep: int | None = None):
        self.store, self.out_uri = store, out_uri
        self.keep = keep if keep is not None else store.settings.keep_step_checkpoints
        self.published: list[str] = []

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir, f"checkpoint-{state.global_step}")
        ref = publish_dir(self.store, folder, self.out_uri, version=f"step-{state.global_step}",
                          metadata={"kind": "trainer_checkpoint", "global_step": state.global_step})
        self.published.append(ref.uri)
        shutil.rmtree(folder, ignore_errors=True)
        pruned = prune_step_checkpoints(self.store, self.out_uri, self.keep)
        log.info("published step checkpoint %s%s", ref.uri, f" (deleted {', '.join(pruned)})" if pruned else "")


def prune_step_checkpoints(store: ObjectStore, out_uri: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` step checkpoints under ``out_uri`` (``final`` is never
    touched). The manifest goes first, so a half-deleted version is already one that does not exist;
    resume (:func:`newest_valid_checkpoint`) picks the newest of those kept that verifies."""
    deleted = []
    for step, ref in step_checkpoints(store, out_uri)[keep:]:
        store.delete(join_uri(ref.uri, MANIFEST))
        store.delete(ref.uri, recursive=True)
        deleted.append(f"step-{step}")
    return deleted


def step_checkpoints(store: ObjectStore, out_uri: str) -> list[tuple[int, VersionRef]]:
    """Completed ``step-N`` versions under ``out_uri``, newest step first."""
    found = [(int(m.group(1)), ref) for ref in list_versions(store, out_uri)
             if (m := STEP_VERSION.match(ref.version))]
    return sorted(found, key=lambda x: x[0], reverse=True)


def newest_valid_checkpoint(store: ObjectStore, out_uri: str) -> VersionRef | None:
    """The newest step checkpoint whose every part matches its manifest (corrupt ones skipped)."""
    for step, ref in step_checkpoints(store, out_uri):
        try:
            verify_version(store, ref.uri)
            return ref
        except CorruptVersionError as exc:
            log.warning("skipping step-%d: %s", step, exc)
    return None


def prepare_resume(store: ObjectStore, out_uri: str, output_dir: Path) -> tuple[str | None, str | None]:
    """Fetch the newest valid step checkpoint into ``output_dir/checkpoint-N``: (local path, its URI)."""
    ref = newest_valid_checkpoint(store, out_uri)
    if ref is None:
        return None, None
    step = int(STEP_VERSION.match(ref.version).group(1))
    local = output_dir / f"checkpoint-{step}"
    if local.exists():
        shutil.rmtree(local)
    fetch_version(store, ref.uri, local)
    (local / MANIFEST).unlink()  # a Trainer checkpoint folder, as the Trainer wrote it
    log.info("resuming from %s (global step %d)", ref.uri, step)
    return str(local), ref.uri


def save_merged(trainer, dest: Path, base_model: str | None = None) -> Path | None:
    """Save the trained model with LoRA merged in (if any), plus processor/tokenizer/chat template.

    Every rank calls it: under FSDP the full weights are gathered collectively (``trainer.save_model``
    with the FULL_STATE_DICT the launch config asks for) and rank 0 merges a LoRA adapter into
    ``base_model`` on the CPU. Returns ``dest`` on the main process, None on the others."""
    from accelerate.utils import DistributedType

    acc = trainer.accelerator
    if acc.distributed_type == DistributedType.FSDP:
        gathered = dest.with_name(dest.name + "-gathered")
        trainer.save_model(str(gathered))  # collective: every rank takes part, rank 0 writes
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return None
        _merge_saved(gathered, dest, base_model)
        trainer.processing_class.save_pretrained(dest)
        shutil.rmtree(gathered, ignore_errors=True)
        return dest
    if not acc.is_main_process:
        return None
    model = acc.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(dest)
    trainer.processing_class.save_pretrained(dest)
    return dest


def _merge_saved(saved: Path, dest: Path, base_model: str | None) -> None:
    """A folder ``save_model`` wrote (full weights, or a LoRA adapter) as a plain merged checkpoint."""
    if not (saved / "adapter_config.json").is_file():
        shutil.copytree(saved, dest, dirs_exist_ok=True)
        return
    if not base_model:
        raise ValueError(f"{saved} holds a LoRA adapter: the base model it was trained on is needed to merge it")
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(base_model, dtype="float32")
    PeftModel.from_pretrained(base, saved).merge_and_unload().save_pretrained(dest)
