"""Benchmark: GRPO optimizer steps per second on the tiny profile — our core vs plain TRL.

Ours: ``run_grpo`` (the agent loop as ``rollout_func``: multi-turn rollouts against the real
tool-server over HTTP, rewards from the trajectories, step checkpoints published, MLflow on
SQLite). Baseline: a plain TRL ``GRPOTrainer`` with the SAME ``GRPOConfig``, model, prompts,
images and reward functions, but TRL's own single-turn generation (no tools, no checkpoints
published, no tracking). Both run in this process, one after the other, on the same machine;
``ratio`` = ours ÷ baseline (< 1: what multi-turn tool use, checkpoints and tracking cost).

Run: ``.venv/bin/python -m bench.train_grpo [--steps 4]`` (prints JSON, writes bench-results/train_grpo.json).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path

from bench.report import write_report

log = logging.getLogger(__name__)


def _serve_tools(settings, index: Path):
    """The tool-server under uvicorn on a free loopback port, in a thread; returns (url, server)."""
    import socket

    import httpx
    import uvicorn

    from components.search.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings, index), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return url, server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("tool-server did not become ready")


def _steps_per_s(metrics: list[dict]) -> tuple[float, float]:
    last = next(m for m in reversed(metrics) if "train_runtime" in m)
    return last["step"] / last["train_runtime"], last["train_runtime"]


def _baseline(settings, data: str, model_path: str, tmp: Path, steps: int) -> tuple[float, float]:
    """Plain TRL GRPOTrainer, single-turn, same config, model, prompts and rewards."""
    from trl import GRPOTrainer

    from components.agent.models import freeze_vision, load_model_and_processor
    from components.common.storage import open_store
    from components.grpo.config import grpo_config
    from components.grpo.data import load_grpo_dataset
    from components.grpo.rewards import make_reward_funcs

    dataset = load_grpo_dataset(settings, open_store(settings), data, tmp / "cache")
    model, processor = load_model_and_processor(model_path, settings.model)
    freeze_vision(model)
    model.train()
    args = grpo_config(settings, tmp / "trl", max_steps=steps, save_strategy="no")
    trainer = GRPOTrainer(model=model, reward_funcs=make_reward_funcs(settings), args=args,
                          train_dataset=dataset, processing_class=processor)
    started = time.perf_counter()
    trainer.train()
    runtime = time.perf_counter() - started
    return steps / runtime, runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per trainer")
    parser.add_argument("--entities", type=int, default=10, help="offline-world entities")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from components.agent.tiny import build_tiny_model
    from components.common.settings import Settings
    from components.grpo.train import run_grpo
    from components.search.index import build_index
    from components.world.make import make_world

    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as d:
        tmp = Path(d)
        make_world(tmp / "world", n_entities=args.entities, seed=0)
        base = Settings(profile="tiny", tools={"cache_url": f"sqlite:///{tmp / 'cache.db'}"})
        build_index(str(tmp / "world" / "corpus"), str(tmp / "index"), base)
        model = build_tiny_model(tmp / "tiny", seed=0)
        url, server = _serve_tools(base, tmp / "index")
        settings = Settings(profile="tiny", tools={"url": url}, storage={"root": str(tmp / "store")},
                            tracking={"uri": f"sqlite:///{tmp / 'mlflow.db'}"},
                            model={"name_or_path": str(model), "max_new_tokens": 32},
                            grpo={"max_steps": args.steps, "save_steps": 2})
        data = str(tmp / "world" / "vqa" / "train")
        try:
            result = run_grpo(settings, data, str(model), str(tmp / "store" / "ckpt" / "bench"),
                              work_dir=tmp / "work")
            ours, ours_runtime = _steps_per_s(result.metrics)
            baseline, base_runtime = _baseline(settings, data, str(model), tmp / "baseline", args.steps)
        finally:
            server.should_exit = True
        g = settings.grpo
        write_report(
            "train_grpo",
            params={"profile": "tiny", "steps": args.steps, "num_generations": g.num_generations,
                    "batch_size": g.batch_size, "max_new_tokens_per_turn": settings.model.max_new_tokens,
                    "max_turns": settings.agent.max_turns, "entities": args.entities},
            metric="steps_per_s", ours=ours, baseline=baseline,
            baseline_name="plain TRL GRPOTrainer, single-turn, no tools/checkpoints/tracking",
            details={"ours_runtime_s": round(ours_runtime, 2), "baseline_runtime_s": round(base_runtime, 2),
                     "ours_mean_completion_tokens": result.metrics[-2].get("completions/mean_length"),
                     "ours_searches_per_rollout": result.metrics[-2].get("searches/per_rollout")},
        )


if __name__ == "__main__":
    main()
