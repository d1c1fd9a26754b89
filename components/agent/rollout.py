"""Trajectories → the dict TRL 1.16's ``GRPOTrainer`` wants back from a ``rollout_func``.

Why: GRPO trains on the agent loop's multi-turn trajectories through TRL's extension point
(``rollout_func(prompts, trainer) -> dict``, read from trl/trainer/grpo_trainer.py): it needs
``prompt_ids``, ``completion_ids`` and ``logprobs`` per row (flat per-token lists; ``None`` allowed
but vLLM's importance-sampling correction needs real ones), optionally ``env_mask`` (1 = model
token, 0 = tool token; TRL multiplies it into the loss mask), and passes every other key to the
reward functions as a per-row kwarg. One row per trajectory, in the order of the prompts.

    out = to_rollout_output(result.trajectories)
    out.keys()  # prompt_ids, completion_ids, logprobs, env_mask, trajectory, end_reason, format_score, …
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from components.agent.trajectory import Trajectory, format_score


def to_rollout_output(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    """The rollout_func dict for ``trajectories`` (each must carry token ids: a tokenizer backend)."""
    for t in trajectories:
        if not t.prompt_ids:
            raise ValueError(f"trajectory {t.sample_id} has no token ids: run the loop with a generator that "
                             "has a tokenizer (local, vllm) or give the openai generator a processor")
    have_logprobs = all(t.logprobs is not None for t in trajectories)
    return {
        "prompt_ids": [list(t.prompt_ids) for t in trajectories],
        "completion_ids": [list(t.completion_ids) for t in trajectories],
        "logprobs": [[float(x or 0.0) for x in t.logprobs] for t in trajectories] if have_logprobs else None,
        "env_mask": [list(t.completion_mask) for t in trajectories],
        # extra per-row fields: TRL hands them to the reward functions as kwargs
        "trajectory": [t.model_dump(mode="json", exclude={"prompt_ids", "completion_ids", "completion_mask",
                                                           "logprobs"}) for t in trajectories],
        "end_reason": [str(t.end_reason) for t in trajectories],
        "final_answer": [t.final_answer for t in trajectories],
        "format_score": [format_score(t) for t in trajectories],
        "num_turns": [len(t.turns) for t in trajectories],
        "tool_calls": [t.text_searches + t.image_searches + t.crop_searches for t in trajectories],
    }
