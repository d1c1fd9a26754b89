"""Distributed-run helpers for GRPO on GPUs: the vLLM server command for rollout pods (``vllm_server``).
The multi-GPU launch of the trainer itself (accelerate + FSDP config, ranks, TrainJob) lives in
components/common/launch.py, shared with SFT."""
