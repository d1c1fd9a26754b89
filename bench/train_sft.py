"""Benchmark: SFT steps/s on the tiny profile, our core (``run_sft``) vs plain TRL ``SFTTrainer``.

Why: our step adds dataset fetch + verification, MLflow metrics every step, step checkpoints
published to the object store, and a merged final checkpoint. This measures what that costs
against a bare ``SFTTrainer`` with the same hyperparameters, model, LoRA and data, in the same
run on the same machine. Headline: training-loop steps/s (ours ÷ plain TRL); details also give
end-to-end wall times (model load, data, publishing, merge).

Run: ``python -m bench.train_sft [--steps 40] [--save-steps 10]`` → ``bench-results/train_sft.json``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from bench.report import write_report

log = logging.getLogger(__name__)


class LoopTimer(TrainerCallback):
    """Wall time of the training loop alone (train begin → train end)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start
        self.steps = state.global_step


def _dataset(settings, n: int):
    from bench.expert_data import expert_trajectories
    from components.agent.sft_data import publish_dataset, rows_from_trajectories
    from components.common.storage import open_store

    trajs, images = expert_trajectories(n)
    return publish_dataset(open_store(settings), "bench-vqa", rows_from_trajectories(trajs, images))


def run_ours(settings, model: str, root: Path, tag: str) -> dict:
    from components.common.storage import open_store
    from components.sft.train import run_sft

    timer, started = LoopTimer(), time.perf_counter()
    result = run_sft(settings, "bench-vqa", model, open_store(settings).uri("checkpoints", tag),
                     work_dir=root / tag, callbacks=[timer])
    total = time.perf_counter() - started
    return {"loop_s": timer.seconds, "steps": timer.steps, "end_to_end_s": total,
            "steps_per_s": timer.steps / timer.seconds, "final_uri": result.final_uri}


def run_plain_trl(settings, model_path: str, data_uri: str, root: Path, tag: str) -> dict:
    """The same model, LoRA, data and SFTConfig, but no tracking, no publishing, no merge."""
    from trl import SFTTrainer

    from components.agent.models import freeze_vision, load_model_and_processor
    from components.agent.sft_data import load_dataset_version
    from components.common.storage import open_store
    from components.sft.config import lora_config, sft_config

    started = time.perf_counter()
    dataset = load_dataset_version(open_store(settings), data_uri, root / f"{tag}-cache")
    model, processor = load_model_and_processor(model_path, settings.model)
    freeze_vision(model)
    timer = LoopTimer()
    trainer = SFTTrainer(model=model, args=sft_config(settings, root / tag, save_strategy="no"),
                         train_dataset=dataset.select_columns(["messages", "images"]),
                         processing_class=processor, peft_config=lora_config(settings, model),
                         callbacks=[timer])
    trainer.train()
    total = time.perf_counter() - started
    return {"loop_s": timer.seconds, "steps": timer.steps, "end_to_end_s": total,
            "steps_per_s": timer.steps / timer.seconds}


def _median(runs: list[dict]) -> dict:
    keys = ("loop_s", "end_to_end_s", "steps_per_s")
    return {"steps": runs[0]["steps"], **{k: statistics.median(r[k] for r in runs) for k in keys},
            "all_steps_per_s": [round(r["steps_per_s"], 3) for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2, help="Alternating runs of each; medians reported.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from components.agent.models import ensure_model
    from components.common.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        root = Path(tmp)
        settings = load_settings(profile="tiny", storage={"root": str(root / "store")},
                                 tracking={"uri": f"sqlite:///{root / 'mlflow.db'}"},
                                 model={"name_or_path": str(root / "models" / "tiny")},
                                 sft={"max_steps": args.steps, "save_steps": args.save_steps})
        model = ensure_model(settings)
        data = _dataset(settings, args.rows)
        warm = settings.model_copy(update={"sft": settings.sft.model_copy(update={"max_steps": 3})})
        run_plain_trl(warm, model, data.uri, root, "warmup")  # torch/TRL first-use costs, paid by neither
        plains, ourses = [], []
        for i in range(args.rounds):  # alternate, so machine noise hits both alike
            plains.append(run_plain_trl(settings, model, data.uri, root, f"plain-{i}"))
            ourses.append(run_ours(settings, model, root, f"ours-{i}"))
        plain, ours = _median(plains), _median(ourses)
    write_report(
        "train_sft",
        params={"profile": "tiny", "steps": args.steps, "save_steps": args.save_steps, "rows": args.rows,
                "batch_size": settings.sft.batch_size, "lora_r": settings.sft.lora_r,
                "max_length": settings.sft.max_length},
        metric="train_steps_per_s", ours=ours["steps_per_s"], baseline=plain["steps_per_s"],
        baseline_name="plain TRL SFTTrainer (same config, no tracking/publishing)",
        details={"ours": ours, "plain_trl": plain, "rounds": args.rounds,
                 "end_to_end_ratio": plain["end_to_end_s"] / ours["end_to_end_s"],
                 "note": "ours includes MLflow metrics every step, step checkpoints published to the "
                         "object store every save_steps; end_to_end adds the merge and final publish"},
    )


if __name__ == "__main__":
    main()
