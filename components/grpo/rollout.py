"""The GRPO ``rollout_func``: TRL's extension point driven by OUR agent loop (multi-turn, real tools).

Why: TRL 1.16's built-in tool loop only knows Qwen3-style ``<tool_call>`` JSON; our tag protocol
runs through ``rollout_func(prompts, trainer) -> dict`` (see docs/facts.md). For every prompt
(TRL already repeated each one ``num_generations`` times; we return one row per prompt, in order)
the agent loop plays a whole trajectory against the tool-server over HTTP, and
:func:`components.agent.rollout.to_rollout_output` turns the trajectories into ``prompt_ids``,
``completion_ids``, per-token ``logprobs`` and ``env_mask`` (0 = tool/template token: TRL multiplies
it into the loss mask), plus extra per-row fields the rewards read (``final_answer``,
``turn_texts``, the search counts).

Generators:
- CPU / no vLLM: the ``local`` generator over the trainer's CURRENT policy (the trainer's model,
  unwrapped, in eval mode, generation under inference mode; back to train mode after);
- GPU: ``use_vllm=True, vllm_mode="server"``: the ``vllm`` generator over
  ``trainer.vllm_generation`` (weights synced by the trainer before each round; the calls are
  collectives, every rank in lockstep — the loop's ``LockstepBatcher`` sees to it).

``prompt_ids`` must be the processor's tokenisation of the ORIGINAL prompt (TRL re-renders it to
rebuild the image's pixel values): the loop renders the protocol's initial messages for the row's
question; we check that they render to the same text as the prompt TRL gave us and refuse a
dataset built with another prompt version or other limits.

    rollout = make_rollout_func(settings, dataset["question"])
    GRPOTrainer(..., rollout_func=rollout)
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Iterable
from typing import Any

from PIL import Image

from components.agent.frame import unstated
from components.agent.loop import AgentLoop, Sample
from components.agent.protocol import Limits, render_initial_user
from components.agent.rollout import to_rollout_output
from components.common.settings import Settings, env_name
from components.search.client import ToolClient

log = logging.getLogger(__name__)

GeneratorFactory = Callable[[Any], Any]  # trainer -> a generator backend of the agent loop


def _user_text(prompt: list[dict[str, Any]]) -> str:
    user = next(m for m in prompt if m["role"] == "user")
    content = user["content"]
    if isinstance(content, str):
        return content
    return "".join(c.get("text", "") for c in content if c.get("type") == "text")


def _image(prompt: list[dict[str, Any]]) -> Image.Image:
    for message in prompt:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image" and part.get("image") is not None:
                    return part["image"]
    raise ValueError("a GRPO prompt has no image: the dataset's `images` column must hold the input image")


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def default_generator(settings: Settings) -> GeneratorFactory:
    """local generator over the trainer's policy, or the vllm generator when the trainer uses vLLM."""

    def make(trainer: Any) -> Any:
        processor = trainer.processing_class
        if getattr(trainer, "use_vllm", False):
            from components.agent.generators.vllm import VLLMGenerator

            return VLLMGenerator(trainer.vllm_generation, processor, accelerator=trainer.accelerator)
        from components.agent.generators.local import LocalGenerator

        model = trainer.accelerator.unwrap_model(trainer.model)
        return LocalGenerator(model, processor, seed=settings.grpo.seed + trainer.state.global_step * 7919)

    return make


def _cap(out: dict[str, Any], max_tokens: int) -> list[bool]:
    """Cut each response at ``max_tokens`` (model and tool tokens): the paper's max response length.
    Returns which rows were cut: they no longer end with the end-of-turn token, so TRL's
    ``mask_truncated_completions`` drops them from the loss, and :func:`_zero_reward_rows` makes
    their rewards 0."""
    cut = []
    for i, ids in enumerate(out["completion_ids"]):
        cut.append(len(ids) > max_tokens)
        if cut[-1]:
            out["completion_ids"][i] = ids[:max_tokens]
            out["env_mask"][i] = out["env_mask"][i][:max_tokens]
            if out["logprobs"] is not None:
                out["logprobs"][i] = out["logprobs"][i][:max_tokens]
    return cut


def _fill_empty(out: dict[str, Any], eos_id: int) -> list[bool]:
    """A trajectory with no completion token (the generator failed before its first token) would
    crash TRL's padding (IndexError); it gets one end-of-turn token with mask 0 — no loss — instead.
    Returns which rows were empty."""
    empty = []
    for i, ids in enumerate(out["completion_ids"]):
        empty.append(not ids)
        if not ids:
            out["completion_ids"][i] = [eos_id]
            out["env_mask"][i] = [0]
            if out["logprobs"] is not None:
                out["logprobs"][i] = [0.0]
    return empty


def _zero_reward_rows(out: dict[str, Any], rows: list[bool]) -> None:
    """Rows the rewards must score 0: no final answer (correctness 0), no turns (format 0)."""
    for i, zero in enumerate(rows):
        if zero:
            out["final_answer"][i] = None
            out["turn_texts"][i] = []


class RolloutFunc:
    """``rollout_func(prompts, trainer) -> dict`` for ``GRPOTrainer``; keeps the last batch's
    trajectories (``last``) for logging and tests."""

    def __init__(self, settings: Settings, questions: Iterable[str],
                 generator_factory: GeneratorFactory | None = None):
        self.settings = settings
        a = settings.agent
        limits = Limits.from_settings(a)
        self.by_prompt = {render_initial_user(q, a.prompt_version, limits): q for q in questions}
        self.generator_factory = generator_factory or default_generator(settings)
        self.last: list[Any] = []
        self.__name__ = "agent_loop_rollout"

    def samples(self, prompts: list[list[dict[str, Any]]], step: int) -> list[Sample]:
        out = []
        for i, prompt in enumerate(prompts):
            question = self.by_prompt.get(unstated(_user_text(prompt)))  # the frame is checked below
            if question is None:
                raise ValueError(
                    "a GRPO prompt is not the protocol's initial turn for any question of the dataset: rebuild "
                    f"the dataset with the current {env_name('agent', 'prompt_version')} and agent limits")
            out.append(Sample(id=f"step{step}-{i}", question=question, image=_png(_image(prompt))))
        return out

    def __call__(self, prompts: list[list[dict[str, Any]]], trainer: Any) -> dict[str, Any]:
        samples = self.samples(prompts, trainer.state.global_step)
        generator = self.generator_factory(trainer)
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        try:
            result = asyncio.run(self._run(generator, samples))
        finally:
            model.train(was_training)
        trajs = result.trajectories
        self._check_prompts(prompts, trajs, trainer.processing_class)
        self.last = trajs
        out = to_rollout_output(trajs)
        out["turn_texts"] = [[t.raw for t in traj.turns] for traj in trajs]
        cut = _cap(out, self.settings.grpo.max_response_tokens)
        empty = _fill_empty(out, trainer.processing_class.tokenizer.eos_token_id)
        _zero_reward_rows(out, [c or e for c, e in zip(cut, empty, strict=True)])
        if any(cut) or any(empty):
            log.warning("rollout step %d: %d of %d responses cut at grpo.max_response_tokens=%d (masked, reward 0), "
                        "%d empty (one masked end-of-turn token, reward 0)", trainer.state.global_step, sum(cut),
                        len(cut), self.settings.grpo.max_response_tokens, sum(empty))
        for name in ("text_searches", "image_searches", "crop_searches"):
            out[name] = [getattr(traj, name) for traj in trajs]
        return out

    async def _run(self, generator: Any, samples: list[Sample]):
        s = self.settings
        async with ToolClient.from_settings(s) as tools:
            loop = AgentLoop.from_settings(generator, tools, s, temperature=s.grpo.temperature, progress=False)
            return await loop.run(samples)

    def _check_prompts(self, prompts, trajs, processor) -> None:
        """The loop's initial messages must render like TRL's prompt (one check per distinct prompt)."""
        seen: set[str] = set()
        for prompt, traj in zip(prompts, trajs, strict=True):
            key = _user_text(prompt)
            if key in seen:
                continue
            seen.add(key)
            ours = processor.apply_chat_template(traj.messages[:2], add_generation_prompt=True, tokenize=False)
            theirs = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            if ours != theirs:
                raise ValueError("the agent loop renders the prompt differently from the dataset's prompt: rebuild "
                                 f"the dataset with the current {env_name('agent', 'prompt_version')}")


def make_rollout_func(settings: Settings, questions: Iterable[str],
                      generator_factory: GeneratorFactory | None = None) -> RolloutFunc:
    """The rollout_func for a dataset whose questions are ``questions``."""
    return RolloutFunc(settings, questions, generator_factory)
