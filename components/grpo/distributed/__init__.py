"""Distributed-run helpers for GRPO on GPUs: the accelerate/FSDP config for one 8-GPU node
(``accelerate_fsdp_8gpu.yaml``) and the vLLM server command for rollout pods (``vllm_server``)."""

from pathlib import Path

ACCELERATE_FSDP_8GPU = Path(__file__).with_name("accelerate_fsdp_8gpu.yaml")
