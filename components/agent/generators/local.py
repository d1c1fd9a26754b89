"""``local`` generator: a transformers model in this process (the tiny model on CPU, any checkpoint on GPU).

Why: datagen and evaluation on one machine, and the tests, need a generator without a server.
The batch is left-padded and generated in ONE ``model.generate`` call with the input images'
``pixel_values``/``image_grid_thw``; it stops at the protocol's stop strings (transformers
``stop_strings`` with the tokenizer) and at the end-of-turn token; it returns each row's ids as
generated (cut after its stop string or end-of-turn token) and per-token logprobs from
``compute_transition_scores`` (log-softmax of the logits after the sampling processors, i.e. at
the sampling temperature). Vision placeholder tokens are never generated (:data:`VISION_TOKENS`).
The blocking call runs in a worker thread so tool calls go on.

    gen = LocalGenerator.load(path, settings.model)
    outputs = await gen.generate(requests)
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import torch

from components.agent.generators.base import GenOutput, GenRequest, find_stop

log = logging.getLogger(__name__)


# Tokens only the processor may place (around and for image/video features). A policy that samples
# one (a random tiny model does) would make the training forward pass see more image placeholders
# than image features ("Image features and image tokens do not match"), so they are never generated.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def vision_token_ids(tokenizer: Any) -> list[int]:
    """Ids of :data:`VISION_TOKENS` that ``tokenizer`` knows."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in VISION_TOKENS if t in vocab)


class LocalGenerator:
    name = "local"
    lockstep = False

    def __init__(self, model: Any, processor: Any, seed: int | None = None):
        self.model, self.processor = model, processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.seed = seed
        self._lock = threading.Lock()  # one generate at a time on the model
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.suppress_ids = vision_token_ids(self.tokenizer)

    @classmethod
    def load(cls, name_or_path: str, model_settings: Any) -> LocalGenerator:
        from components.agent.models import load_model_and_processor

        model, processor = load_model_and_processor(name_or_path, model_settings)
        return cls(model, processor, seed=model_settings.seed)

    async def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            if r.prompt_ids is None:
                raise ValueError("the local generator needs prompt_ids (build the conversation in token space)")
            groups.setdefault(r.sampling_key(), []).append(i)
        out: list[GenOutput | None] = [None] * len(requests)
        for idx in groups.values():
            got = await asyncio.to_thread(self._generate_sync, [requests[i] for i in idx])
            for i, o in zip(idx, got, strict=True):
                out[i] = o
        return out  # type: ignore[return-value]

    def _batch(self, requests: list[GenRequest]) -> dict[str, torch.Tensor]:
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            n = len(r.prompt_ids)
            ids[i, width - n:] = torch.tensor(r.prompt_ids)
            att[i, width - n:] = 1
        batch = {"input_ids": ids, "attention_mask": att}
        mms = [r.mm_inputs for r in requests if r.mm_inputs]
        if mms:
            for key in mms[0]:
                batch[key] = torch.cat([m[key] for m in mms], dim=0)
            if "mm_token_type_ids" in getattr(self.processor, "model_input_names", ()):
                # per-token modality (1 = image pad) over the padded batch: Qwen2.5-VL's 3-D rope needs it
                batch["mm_token_type_ids"] = (ids == self.processor.image_token_id).long()
        return {k: v.to(self.model.device) for k, v in batch.items()}

    def _generate_sync(self, requests: list[GenRequest]) -> list[GenOutput]:
        first = requests[0]
        batch = self._batch(requests)
        sample = first.temperature > 0
        kwargs: dict[str, Any] = dict(max_new_tokens=first.max_new_tokens, do_sample=sample,
                                      output_scores=True, return_dict_in_generate=True,
                                      pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids),
                                      suppress_tokens=self.suppress_ids or None)
        if sample:
            kwargs.update(temperature=first.temperature, top_p=first.top_p, top_k=0)
        if first.stop:
            kwargs.update(stop_strings=list(first.stop), tokenizer=self.tokenizer)
        with self._lock, torch.inference_mode():
            if self.seed is not None and sample:
                torch.manual_seed(self.seed)
                self.seed += 1
            gen = self.model.generate(**batch, **kwargs)
            scores = self.model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
        width = batch["input_ids"].shape[1]
        return [self._row(gen.sequences[i, width:].tolist(), scores[i].tolist(), first)
                for i in range(len(requests))]

    def _row(self, ids: list[int], logprobs: list[float], req: GenRequest) -> GenOutput:
        """Cut one row after its end-of-turn token or stop string; the rest is padding."""
        for t, tok in enumerate(ids):
            if tok in self.eos_ids:
                ids, logprobs = ids[: t + 1], logprobs[: t + 1]
                return GenOutput(text=self._text(ids), token_ids=ids, logprobs=logprobs, stop_reason="eos")
            if req.stop:
                hit = find_stop(self.tokenizer.decode(ids[: t + 1], skip_special_tokens=True), req.stop)
                if hit is not None:
                    ids, logprobs = ids[: t + 1], logprobs[: t + 1]
                    return GenOutput(text=self._text(ids), token_ids=ids, logprobs=logprobs,
                                     stop_reason="stop_string", stop=hit[1])
        return GenOutput(text=self._text(ids), token_ids=ids, logprobs=logprobs, stop_reason="length")

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    async def aclose(self) -> None:
        return None
