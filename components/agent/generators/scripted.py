"""``scripted`` generator: a deterministic policy that emits fixed turns, through a real tokenizer.

Why: the tiny random model almost never writes valid tags, yet tests and the rollout benchmark
need trajectories that search, crop, answer and give up on purpose. This generator STANDS FOR A
MODEL (a test double of the policy, not of our code): a policy function picks each turn's text
from the conversation so far, and the text is turned into token ids with the real tokenizer
(plus the end-of-turn token, unless ``eos=False`` — then it "stopped on the stop string" like a
model stopped by ``stop_strings``), so the loop's token-space bookkeeping runs for real.

    gen = ScriptedGenerator(lambda req: "<reason>r</reason><answer>x</answer>", processor)
    gen.calls  # sizes of the batches it received
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from components.agent.generators.base import GenOutput, GenRequest, find_stop

Policy = Callable[[GenRequest], str]


def turn_index(request: GenRequest) -> int:
    """How many model turns the conversation of ``request`` already holds."""
    return sum(m["role"] == "assistant" for m in request.messages or [])


def fixed_turns(turns: list[str]) -> Policy:
    """A policy that writes ``turns[k]`` as its k-th turn (the last one again past the end)."""
    return lambda req: turns[min(turn_index(req), len(turns) - 1)]


class ScriptedGenerator:
    name = "scripted"
    lockstep = False

    def __init__(self, policy: Policy, processor: Any | None = None, *, eos: bool = True,
                 fail_on: Callable[[GenRequest], bool] | None = None):
        self.policy, self.processor, self.eos, self.fail_on = policy, processor, eos, fail_on
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.calls: list[int] = []

    async def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        self.calls.append(len(requests))
        await asyncio.sleep(0)
        if self.fail_on is not None and any(self.fail_on(r) for r in requests):
            raise RuntimeError("scripted generation failure")
        return [self._one(r) for r in requests]

    def _one(self, req: GenRequest) -> GenOutput:
        text = self.policy(req)
        hit = find_stop(text, req.stop)
        stop = hit[1] if hit and hit[0] == len(text) else None
        if self.tokenizer is None:
            return GenOutput(text=text, stop_reason="stop_string" if stop else "eos", stop=stop)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if self.eos or stop is None:
            ids = [*ids, self.tokenizer.eos_token_id]
            return GenOutput(text=text, token_ids=ids, stop_reason="eos")
        return GenOutput(text=text, token_ids=ids, stop_reason="stop_string", stop=stop)

    async def aclose(self) -> None:
        return None
