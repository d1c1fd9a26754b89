"""The command line of a vLLM OpenAI-compatible server: GRPO rollout pods, the judge, the champion.

Why: TRL 1.16's ``trl vllm-serve`` is now a deprecated thin wrapper that execs ``vllm serve`` with
flags TRL's trainers rely on (NCCL weight transfer, processed logprobs, no logprob cap, and — on
vLLM >= 0.30 — ``--enable-scale-out`` for multimodal prompts) plus ``VLLM_SERVER_DEV_MODE=1``.
We build the same ``vllm serve`` command directly, so the rollout pod (components/grpo/rollout_pods.py)
needs no TRL, and the same builder makes a plain server (``weight_sync=False``) for the judge.

    >>> vllm_serve_command("Qwen/Qwen2.5-VL-7B-Instruct", tensor_parallel=2)[:3]
    ['vllm', 'serve', 'Qwen/Qwen2.5-VL-7B-Instruct']
    >>> vllm_serve_env(weight_sync=True)
    {'VLLM_SERVER_DEV_MODE': '1'}
"""

from __future__ import annotations

import json
from collections.abc import Sequence

# The vLLM pinned in images/train (TRL 1.16 supports 0.22.0-0.31.0).
DEFAULT_VLLM_VERSION = "0.30.0"
SCALE_OUT_MIN_VERSION = (0, 30)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _check(model: str, tensor_parallel: int, gpu_memory_utilization: float,
           max_model_len: int | None, port: int) -> None:
    problems = []
    if not model or not model.strip():
        problems.append("model must name a checkpoint folder or hub id (e.g. Qwen/Qwen2.5-VL-7B-Instruct)")
    if tensor_parallel < 1:
        problems.append(f"tensor_parallel must be >= 1 (got {tensor_parallel})")
    if not 0.0 < gpu_memory_utilization <= 1.0:
        problems.append(f"gpu_memory_utilization must be in (0, 1] (got {gpu_memory_utilization})")
    if max_model_len is not None and max_model_len < 1:
        problems.append(f"max_model_len must be >= 1 or None (got {max_model_len})")
    if not 1 <= port <= 65535:
        problems.append(f"port must be in 1..65535 (got {port})")
    if problems:
        raise ValueError("vllm_serve_command: " + "; ".join(problems))


def vllm_serve_command(
    model: str,
    *,
    tensor_parallel: int = 1,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    host: str = "0.0.0.0",
    port: int = 8000,
    dtype: str = "auto",
    enable_prefix_caching: bool | None = None,
    enforce_eager: bool = False,
    served_model_name: str | None = None,
    weight_sync: bool = True,
    vllm_version: str = DEFAULT_VLLM_VERSION,
    max_pixels: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """``vllm serve`` argv. ``weight_sync=True`` adds what TRL's GRPO trainer needs to push weights
    into the server and read logprobs (the flags ``trl vllm-serve`` imposes); run it with
    :func:`vllm_serve_env`. ``host`` defaults to 0.0.0.0 because it runs in a pod behind a Service."""
    _check(model, tensor_parallel, gpu_memory_utilization, max_model_len, port)
    argv = [
        "vllm", "serve", model,
        "--host", host,
        "--port", str(port),
        "--tensor-parallel-size", str(tensor_parallel),
        "--data-parallel-size", "1",
        "--gpu-memory-utilization", str(gpu_memory_utilization),
        "--dtype", dtype,
    ]
    if max_model_len is not None:
        argv += ["--max-model-len", str(max_model_len)]
    if enable_prefix_caching is not None:
        argv += ["--enable-prefix-caching" if enable_prefix_caching else "--no-enable-prefix-caching"]
    if enforce_eager:
        argv += ["--enforce-eager"]
    if served_model_name:
        argv += ["--served-model-name", served_model_name]
    if max_pixels is not None:  # the image frame the trainer's processor, the prompt and the crop boxes assume
        argv += ["--mm-processor-kwargs", json.dumps({"max_pixels": int(max_pixels)})]
    if weight_sync:
        if _version_tuple(vllm_version)[:2] >= SCALE_OUT_MIN_VERSION:
            argv += ["--enable-scale-out"]
        argv += [
            "--weight-transfer-config", json.dumps({"backend": "nccl"}),
            "--logprobs-mode", "processed_logprobs",
            "--max-logprobs", "-1",
        ]
    return argv + list(extra_args)


def vllm_serve_env(weight_sync: bool = True) -> dict[str, str]:
    """Environment the server needs: the weight-transfer endpoints live behind vLLM's dev mode."""
    return {"VLLM_SERVER_DEV_MODE": "1"} if weight_sync else {}
