"""The prepared GPU check: does training really train on this accelerator? One JSON report.

Why: the GPU machine we are sometimes lent has no network and little time (one H200, minutes), so
what runs there is prepared here: ``make gpu-wheels`` fills ``wheels/`` with what that machine lacks
(``bench/gpu_wheels.py``), and ``make gpu-check`` installs only from that folder and runs this. It
builds the CPU profile's model from scratch, then on the device:

- SFT with the ``paper`` profile's precision (fp32 master weights, bf16 autocast compute) at the
  paper's GRPO learning rate 2e-6: the fraction of trainable master values that changed (bf16
  weights would round most updates away; >= 0.99 passes), loss finite, steps/s; the same steps in
  plain fp32 are the baseline of the headline (bf16 ÷ fp32 steps/s);
- GRPO through our ``rollout_func`` (the agent loop, local generator over the live policy) against
  the real tool-server over the offline world on loopback, bf16 autocast: loss finite, every step
  done, reward, steps/s. The policy is the untrained from-scratch model, so its rewards (and with
  them GRPO's gradient) are 0: this part proves the multi-turn rollout path runs on the device;
  that GRPO moves weights is shown on CPU by tests/unit/grpo/test_grpo_train.py;
- peak GPU memory, torch / CUDA / transformers / TRL versions.

The report has the shape of docs/design.md §7 plus ``passed`` and ``checks``; the exit code is 1
when a check fails. Run: ``make gpu-check`` (``DEVICE=cpu`` on a machine without a GPU: what CI runs)
or ``python -m bench.gpu_check --device cuda``.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from bench.report import write_report

log = logging.getLogger("gpu_check")
MIN_CHANGED = 0.99


class Watch(TrainerCallback):
    """Trainable master values at train begin and end, the logged losses, and the loop's wall time."""

    def __init__(self):
        self.losses: list[float] = []
        self.rewards: list[float] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.dtypes = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad})
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
        if logs and "reward" in logs:
            self.rewards.append(float(logs["reward"]))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.seconds = time.perf_counter() - self.started
        self.steps = state.global_step
        changed = total = 0
        for name, p in model.named_parameters():
            if name in self.before:
                changed += int((p.detach().float().cpu() != self.before[name]).sum())
                total += p.numel()
        self.changed = changed / total if total else 0.0

    def summary(self) -> dict[str, Any]:
        finite = bool(self.losses) and all(math.isfinite(x) for x in self.losses)
        return {"steps": self.steps, "seconds": round(self.seconds, 3), "steps_per_s": round(self.steps / self.seconds, 3),
                "loss_first": self.losses[0] if self.losses else None,
                "loss_last": self.losses[-1] if self.losses else None, "loss_finite": finite,
                "changed_fraction": round(self.changed, 5), "master_dtypes": self.dtypes}


def _settings(tmp: Path, device: str, **sections):
    from components.common.settings import Settings

    return Settings(profile="tiny", storage={"root": str(tmp / "store")}, tracking={"enabled": False},
                    model={"name_or_path": str(tmp / "model"), "device": device, "max_new_tokens": 24}, **sections)


def sft_run(tmp: Path, device: str, model: str, steps: int, lr: float, bf16: bool) -> dict[str, Any]:
    from bench.expert_data import expert_trajectories
    from components.agent.sft_data import load_dataset_version, publish_dataset, rows_from_trajectories
    from components.common.storage import open_store
    from components.sft.train import build_trainer

    settings = _settings(tmp, device, sft={"counterfactual_share": 0.0, "direct_share": 0.0,
                                            "group_by_length": False, "max_length": 2048})
    store = open_store(settings)
    trajs, images = expert_trajectories(32)
    ref = publish_dataset(store, "gpu-check", rows_from_trajectories(trajs, images))
    dataset = load_dataset_version(store, ref.uri, tmp / "cache")
    watch = Watch()
    trainer = build_trainer(settings, dataset, model, tmp / f"sft-{'bf16' if bf16 else 'fp32'}", callbacks=[watch],
                            max_steps=steps, learning_rate=lr, warmup_steps=0, lr_scheduler_type="constant",
                            bf16=bf16, save_strategy="no", logging_steps=1, per_device_train_batch_size=4,
                            gradient_accumulation_steps=1)
    trainer.train()
    return watch.summary()


def grpo_run(tmp: Path, device: str, model: str, steps: int) -> dict[str, Any]:
    from bench.train_grpo import _serve_tools
    from components.common.settings import Settings
    from components.common.storage import open_store
    from components.grpo.data import load_grpo_dataset
    from components.grpo.train import build_trainer
    from components.search.index import build_index
    from components.world.make import make_world

    make_world(tmp / "world", n_entities=10, seed=0)
    base = Settings(profile="tiny", tools={"cache_url": f"sqlite:///{tmp / 'cache.db'}"})
    build_index(str(tmp / "world" / "corpus"), str(tmp / "index"), base)
    url, server = _serve_tools(base, tmp / "index")
    try:
        settings = _settings(tmp, device, tools={"url": url}, grpo={"max_steps": steps, "save_steps": 1000})
        dataset = load_grpo_dataset(settings, open_store(settings), str(tmp / "world" / "vqa" / "train"), tmp / "gc")
        watch = Watch()
        trainer = build_trainer(settings, dataset, model, tmp / "grpo", tmp / "grpo-work", callbacks=[watch],
                                bf16=True, save_strategy="no", logging_steps=1)
        trainer.train()
    finally:
        server.should_exit = True
    out = watch.summary()
    out["reward_mean"] = round(sum(watch.rewards) / len(watch.rewards), 4) if watch.rewards else None
    return out


def _stage(fn, *args, **kwargs) -> dict[str, Any]:
    """Run one stage; a failure becomes a failed check in the report (which is always written), not a
    lost run: on a borrowed machine the report is all that comes back."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        log.exception("%s failed", fn.__name__)
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


def versions(device: str) -> dict[str, Any]:
    import torch
    import transformers
    import trl

    out: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                           "trl": trl.__version__, "device": device}
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
        out["bf16_supported"] = torch.cuda.is_bf16_supported()
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--grpo-steps", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-6, help="the paper's GRPO learning rate")
    parser.add_argument("--out-dir", default="bench-results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")

    from components.agent.tiny import build_tiny_model
    from components.common.settings import Settings

    with tempfile.TemporaryDirectory(prefix="dmms-gpu-check-") as d:
        tmp = Path(d)
        model = str(build_tiny_model(tmp / "model", seed=0, tiny=Settings(profile="tiny").model.tiny))
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        log.info("SFT %d steps, bf16 autocast over fp32 masters, on %s", args.sft_steps, device)
        mixed = _stage(sft_run, tmp / "mixed", device, model, args.sft_steps, args.lr, bf16=True)
        log.info("SFT %d steps in fp32 (the baseline)", args.sft_steps)
        fp32 = _stage(sft_run, tmp / "fp32", device, model, args.sft_steps, args.lr, bf16=False)
        log.info("GRPO %d steps, agent loop against the tool-server", args.grpo_steps)
        grpo = _stage(grpo_run, tmp / "grpo", device, model, args.grpo_steps)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    checks = {
        "sft_ran": "error" not in mixed,
        "sft_loss_finite": bool(mixed.get("loss_finite")),
        "sft_masters_fp32": mixed.get("master_dtypes") == ["torch.float32"],
        f"sft_changed_fraction>={MIN_CHANGED}": mixed.get("changed_fraction", 0.0) >= MIN_CHANGED,
        "grpo_ran": "error" not in grpo,
        "grpo_loss_finite": bool(grpo.get("loss_finite")),
        "grpo_steps_done": grpo.get("steps") == args.grpo_steps,
    }
    report = write_report(
        "gpu_check",
        params={"device": device, "sft_steps": args.sft_steps, "grpo_steps": args.grpo_steps, "lr": args.lr,
                "model": "tiny profile, from scratch"},
        metric="sft_steps_per_s", ours=mixed.get("steps_per_s", 0.0), baseline=fp32.get("steps_per_s", 0.0),
        baseline_name="the same SFT steps in plain fp32",
        details={"passed": all(checks.values()), "checks": checks, "sft_bf16_mixed": mixed, "sft_fp32": fp32,
                 "grpo": grpo, "peak_gpu_memory_mb": round(peak, 1) if peak is not None else None,
                 "versions": versions(device)},
        out_dir=args.out_dir,
    )
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        log.error("GPU check FAILED: %s", ", ".join(failed))
        return 1
    log.info("GPU check passed (%s): %s", ", ".join(checks), report["headline"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
