"""``vllm`` generator: generation through TRL's vLLM client inside GRPO (the policy's live weights).

Why: in GRPO the trainer keeps a vLLM server (or colocated engine) in sync with the policy
(``trainer.vllm_generation.sync_weights()`` before each round); the agent loop's turns must come
from it, in token space, with per-token logprobs for the importance-sampling correction. TRL 1.16
API (trl/generation/vllm_generation.py)::

    prompt_ids, completion_ids, logprobs, logprob_token_ids = trainer.vllm_generation.generate(
        prompts=<token-id lists>, images=<per-prompt PIL lists or None>, num_generations=1)

``logprobs`` is ``[B][T][k]`` (k = 1 with the default ``logprobs=0``): we keep the sampled
token's (the first). Stop strings go through ``generation_kwargs`` (vLLM ``SamplingParams``:
``stop`` and ``include_stop_str_in_output=True``); the call is made per batch with them set and
the trainer's own values restored after. Per-turn length is TRL's ``max_completion_length``.

The call is a COLLECTIVE over the training ranks (gather to the main process, broadcast back), so
this backend is ``lockstep``: the loop drives it with :class:`LockstepBatcher`, which makes every
rank call ``generate`` the same number of times (with an empty batch when it has nothing) and
agrees through :meth:`all_gather` (accelerate's ``gather_object``) when every rank is done. The
blocking call runs in a worker thread so this rank's tool calls go on meanwhile.

    gen = VLLMGenerator(trainer.vllm_generation, processor, accelerator=trainer.accelerator)
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from components.agent.generators.base import GenOutput, GenRequest, find_stop
from components.agent.generators.local import VISION_TOKENS

log = logging.getLogger(__name__)


class VLLMGenerator:
    name = "vllm"
    lockstep = True

    def __init__(self, vllm_generation: Any, processor: Any, accelerator: Any | None = None):
        self.vg, self.processor, self.accelerator = vllm_generation, processor, accelerator
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self._lock = threading.Lock()

    async def all_gather(self, flag: bool) -> list[bool]:
        """This rank's flag next to every other rank's (one element per rank)."""
        if self.accelerator is None or getattr(self.accelerator, "num_processes", 1) == 1:
            return [flag]
        from accelerate.utils import gather_object

        return list(await asyncio.to_thread(gather_object, [flag]))

    async def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        for r in requests:
            if r.prompt_ids is None:
                raise ValueError("the vllm generator needs prompt_ids (build the conversation in token space)")
        stops = sorted({s for r in requests for s in r.stop})
        return await asyncio.to_thread(self._generate_sync, requests, stops)

    def _generate_sync(self, requests: list[GenRequest], stops: list[str]) -> list[GenOutput]:
        images = [list(r.images) or None for r in requests]
        with self._lock:
            saved = self.vg.generation_kwargs
            # vision placeholders are never generated (see local.VISION_TOKENS for why)
            self.vg.generation_kwargs = {**saved, "bad_words": list(VISION_TOKENS),
                                         **({"stop": stops, "include_stop_str_in_output": True}
                                            if stops else {})}
            try:
                _, completion_ids, logprobs, _ = self.vg.generate(
                    prompts=[list(r.prompt_ids) for r in requests],
                    images=images if any(images) else None, num_generations=1)
            finally:
                self.vg.generation_kwargs = saved
        outs = []
        for i, r in enumerate(requests):
            ids = list(completion_ids[i])
            lps = [float(x[0]) if isinstance(x, list | tuple) else float(x) for x in logprobs[i]] \
                if logprobs is not None else None
            outs.append(self._output(ids, lps, r))
        return outs

    def _output(self, ids: list[int], logprobs: list[float] | None, req: GenRequest) -> GenOutput:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if ids and ids[-1] == self.tokenizer.eos_token_id:
            return GenOutput(text=text, token_ids=ids, logprobs=logprobs, stop_reason="eos")
        hit = find_stop(text, req.stop)
        if hit is not None:
            return GenOutput(text=text, token_ids=ids, logprobs=logprobs, stop_reason="stop_string", stop=hit[1])
        return GenOutput(text=text, token_ids=ids, logprobs=logprobs, stop_reason="length")

    async def aclose(self) -> None:
        return None
