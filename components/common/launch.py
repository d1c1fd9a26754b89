"""Run a training step (SFT or GRPO) on every GPU of a node, or across nodes: ranks, FSDP, hand-off.

Why: a 7B full fine-tune plus its reference model does not fit one GPU, and the paper's global
batch (512 rollouts a GRPO step) needs eight. So with ``pipelines.gpu_count`` > 1 the pipeline step
does not train in its own process: it becomes a launcher that starts one rank per GPU with
``accelerate launch`` (FSDP full-shard over the decoder layers and vision blocks, fp32 master shards,
bf16 compute; gloo DDP on a CPU, where accelerate has no FSDP), waits, and reads the result that rank 0
published. With ``pipelines.nodes`` > 1 the same command runs on every node of a Kubeflow Trainer v2
``TrainJob`` (components/common/trainjob.py), each node rank taken from the torch runtime's
``PET_*`` env. Whatever only happens once happens in the launcher or on rank 0:

- the launcher starts the vLLM rollout server (components/grpo/servers.py) and hands every rank its
  URL (``DMMS_GRPO__VLLM_SERVER_BASE_URL``, ``DMMS_GRPO__LAUNCH_ROLLOUT_SERVERS=false``);
- rank 0 opens the MLflow run (:func:`components.common.tracking.tracked_run` is a no-op elsewhere),
  publishes step checkpoints and the final model, and writes ``<out>/result.json``, which the
  launcher returns — TRL pushes weights to vLLM from rank 0 only.

Run on one node: ``python -m components.common.launch sft -- --data URI --model PATH --out URI``
(what the SFT step runs when gpu_count > 1). Tests: ``pytest tests/unit/common/test_launch.py``
(config and command lines at the ``paper`` profile) and ``tests/integration/test_launch_ranks.py``
(two real ranks on the CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

TRAIN_MODULES = {"sft": "components.sft.train", "grpo": "components.grpo.train"}
RESULT_FILE = "result.json"  # under the step's out URI: not a version (no manifest), so never listed
# FSDP units: one per decoder layer and per vision block (the frozen vision tower shards on its own)
FSDP_WRAP = ("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock")
MAIN_PORT = 29500
# What a launcher hands its ranks so that they do not start a second rollout server
ROLLOUT_URL_ENV, ROLLOUT_LAUNCH_ENV = "DMMS_GRPO__VLLM_SERVER_BASE_URL", "DMMS_GRPO__LAUNCH_ROLLOUT_SERVERS"


class LaunchError(RuntimeError):
    """The ranks of a step failed or left no result; the message says which and where to look."""


def process_rank(env: Mapping[str, str] = os.environ) -> int:
    """This process's global rank (torchrun/accelerate set ``RANK``); 0 when not launched."""
    return int(env.get("RANK", "0") or 0)


def is_main_process(env: Mapping[str, str] = os.environ) -> bool:
    return process_rank(env) == 0


@dataclass(frozen=True)
class LaunchPlan:
    """How many ranks train a step, where, and how they share the model."""

    nodes: int
    procs_per_node: int
    cpu: bool  # ranks on CPU (gloo, DDP): the CI test; on GPUs NCCL
    fsdp: bool
    mixed_precision: str  # "bf16" or "no": accelerate's autocast over fp32 master weights

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch_plan(settings: Any, step: str) -> LaunchPlan:
    """The plan for ``step`` ("sft" or "grpo") from ``settings.pipelines`` (gpu_count, nodes, fsdp)."""
    p, section = settings.pipelines, getattr(settings, step)
    cpu = settings.model.device == "cpu"
    return LaunchPlan(nodes=p.nodes, procs_per_node=p.gpu_count, cpu=cpu, fsdp=p.fsdp and not cpu,
                      mixed_precision="bf16" if section.bf16 and not cpu else "no")


def global_batch(settings: Any, step: str, plan: LaunchPlan) -> int:
    """Rows (SFT) or completions (GRPO) per optimizer step: per-device batch x accumulation x ranks."""
    section = getattr(settings, step)
    return section.batch_size * section.grad_accum * plan.world_size


def accelerate_config(plan: LaunchPlan) -> dict[str, Any]:
    """The accelerate config file of ``plan`` (``accelerate launch --config_file``). Node rank and the
    main node's address come on the command line (:func:`accelerate_argv`): they differ per node."""
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        # on a CPU: accelerate's torchrun launcher (MULTI_GPU), whose ranks then run DDP over gloo because
        # the Trainer has use_cpu (accelerate's MULTI_CPU type would wait for an external mpirun instead)
        "distributed_type": "FSDP" if plan.fsdp else "MULTI_GPU",
        "mixed_precision": plan.mixed_precision,
        "num_machines": plan.nodes,
        "num_processes": plan.world_size,
        "machine_rank": 0,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": plan.cpu,
        "downcast_bf16": "no",  # never store weights in bf16: fp32 masters, bf16 only inside autocast
        "main_training_function": "main",
    }
    if config["distributed_type"] == "FSDP":
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": ",".join(FSDP_WRAP),
            "fsdp_reshard_after_forward": True,  # full shard: params, grads and optimizer state
            "fsdp_state_dict_type": "FULL_STATE_DICT",  # the final model is gathered on rank 0
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_offload_params": False,
            "fsdp_activation_checkpointing": False,  # the Trainer's gradient_checkpointing does it
        }
    return config


def accelerate_argv(plan: LaunchPlan, config_path: str | Path, step: str, step_args: Sequence[str], *,
                    node_rank: int = 0, main_address: str = "127.0.0.1", main_port: int = MAIN_PORT) -> list[str]:
    """``accelerate launch`` argv running ``step``'s module on this node's ranks."""
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path),
            "--num_processes", str(plan.world_size), "--num_machines", str(plan.nodes)]
    if plan.nodes > 1:
        argv += ["--machine_rank", str(node_rank), "--main_process_ip", main_address,
                 "--main_process_port", str(main_port)]
    else:
        argv += ["--main_process_port", str(main_port)]
    return argv + ["-m", TRAIN_MODULES[step], *step_args]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_result(settings: Any, out_uri: str, result: Any) -> None:
    """Rank 0: publish the step's result (a pydantic model) for its launcher."""
    from components.common.storage import join_uri, open_store

    open_store(settings).put_bytes(join_uri(out_uri, RESULT_FILE), result.model_dump_json().encode())


def read_result(settings: Any, out_uri: str) -> dict[str, Any]:
    from components.common.storage import join_uri, open_store

    store, uri = open_store(settings), join_uri(out_uri, RESULT_FILE)
    if not store.exists(uri):
        raise LaunchError(f"the ranks exited cleanly but rank 0 left no {uri}: see rank 0's log above")
    return json.loads(store.get_bytes(uri))


def node_local(settings: Any, uri: str, root: str | Path | None = None, keep_versions: bool = False) -> str:
    """``uri`` as a local folder, fetched once per node: the ranks of a node share one copy (a file
    lock; the first rank fetches, the others wait). A local path or hub id is returned as is, and
    with ``keep_versions`` so is a dataset version (the step reads those from the store itself)."""
    import hashlib

    from filelock import FileLock

    from components.common.storage import MANIFEST, fetch_version, is_s3, join_uri, open_store

    if not is_s3(uri) or (keep_versions and open_store(settings).exists(join_uri(uri, MANIFEST))):
        return uri
    base = Path(root or Path(tempfile.gettempdir(), "dmms-node-cache"))
    base.mkdir(parents=True, exist_ok=True)
    dest = base / hashlib.sha256(uri.encode()).hexdigest()[:16]
    with FileLock(str(dest) + ".lock"):
        if not (dest / ".complete").is_file():
            store = open_store(settings)
            if store.exists(join_uri(uri, MANIFEST)):
                fetch_version(store, uri, dest)
            else:
                store.download_dir(uri, dest)
            (dest / ".complete").write_text(uri)
    return str(dest)


Runner = Callable[[list[str], dict[str, str]], int]


def run_subprocess(argv: list[str], env: dict[str, str]) -> int:
    """Run the ranks with their output on ours (the step's log); return the exit code."""
    log.info("launching: %s", " ".join(argv))
    return subprocess.run(argv, env=env, check=False).returncode


def launch_node(settings: Any, step: str, step_args: Sequence[str], *, env: Mapping[str, str] | None = None,
                runner: Runner = run_subprocess, node_rank: int | None = None) -> None:
    """Start this node's ranks of ``step`` and wait; raise :class:`LaunchError` when they fail.
    On a TrainJob node, the node rank and the main node come from the torch runtime's ``PET_*`` env."""
    plan = launch_plan(settings, step)
    child_env = {**os.environ, **(env or {})}
    rank = node_rank if node_rank is not None else int(child_env.get("PET_NODE_RANK", "0") or 0)
    address = child_env.get("PET_MASTER_ADDR", "127.0.0.1")
    # one node: any free port (two steps on one machine must not meet); a TrainJob: the runtime's
    port = int(child_env["PET_MASTER_PORT"]) if child_env.get("PET_MASTER_PORT") else _free_port()
    with tempfile.TemporaryDirectory(prefix=f"dmms-{step}-launch-") as tmp:
        config_path = Path(tmp, "accelerate.yaml")
        config_path.write_text(yaml.safe_dump(accelerate_config(plan), sort_keys=False))
        argv = accelerate_argv(plan, config_path, step, step_args, node_rank=rank, main_address=address,
                               main_port=port)
        log.info("%s: node %d of %d, %d ranks in all (%s, mixed precision %s), global batch %d", step, rank,
                 plan.nodes, plan.world_size, accelerate_config(plan)["distributed_type"], plan.mixed_precision,
                 global_batch(settings, step, plan))
        code = runner(argv, child_env)
    if code != 0:
        raise LaunchError(f"{step}: the ranks of node {rank} exited with code {code}; the failing rank's "
                          "traceback is in the log above")


def launch_step(settings: Any, step: str, step_args: Sequence[str], out_uri: str, *,
                env: Mapping[str, str] | None = None, runner: Runner = run_subprocess,
                trainjob: Callable[..., None] | None = None) -> dict[str, Any]:
    """Run ``step`` on all its ranks (this node, or a TrainJob when ``pipelines.nodes`` > 1) and
    return the result rank 0 published under ``out_uri``. ``env`` goes to every rank (the rollout
    server's URL); ``runner`` and ``trainjob`` are for tests."""
    plan = launch_plan(settings, step)
    step_env = dict(env or {})
    if plan.nodes > 1:
        from components.common.trainjob import run_trainjob

        (trainjob or run_trainjob)(settings, step, list(step_args), env=step_env)
    else:
        launch_node(settings, step, step_args, env=step_env, runner=runner, node_rank=0)
    return read_result(settings, out_uri)


def rollout_env(settings: Any) -> dict[str, str]:
    """What every rank of a GRPO step needs to use the launcher's rollout server, not start its own."""
    g = settings.grpo
    return {ROLLOUT_URL_ENV: g.vllm_server_base_url or "", ROLLOUT_LAUNCH_ENV: "false"} if g.use_vllm else {}


def main(argv: list[str] | None = None) -> None:
    """``python -m components.common.launch {sft,grpo} -- STEP ARGS``: this node's ranks of the step
    (the command of every TrainJob node)."""
    from components.common.logging import setup_logging
    from components.common.settings import load_settings

    parser = argparse.ArgumentParser(description="Start this node's training ranks (see components/common/launch.py)")
    parser.add_argument("step", choices=sorted(TRAIN_MODULES))
    parser.add_argument("step_args", nargs=argparse.REMAINDER, help="arguments of the step's module, after --")
    args = parser.parse_args(argv)
    setup_logging()
    step_args = args.step_args[1:] if args.step_args[:1] == ["--"] else args.step_args
    try:
        launch_node(load_settings(), args.step, step_args)
    except LaunchError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
