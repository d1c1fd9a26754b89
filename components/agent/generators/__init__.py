"""Generator backends of the agent loop: one small interface (:mod:`.base`), three backends.

``local`` (a transformers model in this process), ``openai`` (any OpenAI-compatible chat endpoint)
and ``vllm`` (TRL's vLLM generation inside GRPO). Import-only; tests in tests/unit/agent.
"""
