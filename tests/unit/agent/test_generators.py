"""Generator backends: the local tiny model (one batched call, stop strings, logprobs), the openai
backend against the OpenAI stand-in server on loopback, the vllm backend against a stand-in of
TRL's ``VLLMGeneration`` (lockstep rounds), and the batcher.

Run: ``.venv/bin/python -m pytest -q tests/unit/agent/test_generators.py``.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from components.agent.generators.base import Batcher, GenRequest, LockstepBatcher
from components.agent.generators.local import LocalGenerator
from components.agent.generators.openai import OpenAIGenerator, restore_stop
from components.agent.generators.scripted import ScriptedGenerator, fixed_turns
from components.agent.generators.vllm import VLLMGenerator
from components.agent.loop import AgentLoop, LoopConfig
from components.agent.models import load_model_and_processor
from components.agent.protocol import STOP_STRINGS, EndReason
from components.agent.rollout import to_rollout_output
from components.agent.tiny import build_tiny_model
from components.common.settings import LLMEndpointSettings, load_settings
from components.search.client import ToolClient
from tests.unit.agent.loop_support import CountingTools, samples

ANSWER = "<reason>Known.</reason>\n<answer>Zorashmar</answer>"
TEXT = "<reason>Need the city.</reason>\n<text_search>monument city</text_search>"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    return load_model_and_processor(str(path), load_settings(profile="tiny").model)


@pytest.fixture
async def tools(toolserver):
    async with ToolClient(toolserver.url, toolserver.token, timeout_s=30, retries=0) as client:
        yield client


async def test_local_tiny_model_batches_and_returns_ids_and_logprobs(tiny, tools):
    model, processor = tiny
    gen = LocalGenerator(model, processor, seed=0)
    loop = AgentLoop(gen, CountingTools(tools), LoopConfig(progress=False, max_new_tokens=12,
                                                            concurrency=3))
    result = await loop.run(samples(3))
    assert max(result.batch_sizes) == 3  # three trajectories, one generate call per round
    for traj in result.trajectories:
        assert traj.end_reason is not None and traj.logprobs is not None
        model_lps = [lp for lp, m in zip(traj.logprobs, traj.completion_mask, strict=True) if m]
        assert model_lps and all(lp <= 0.0 for lp in model_lps)
        assert all(lp == 0.0 for lp, m in zip(traj.logprobs, traj.completion_mask, strict=True) if not m)
        # every model turn's text is the decoding of its mask-1 ids
        ones = [t for t, m in zip(traj.completion_ids, traj.completion_mask, strict=True) if m]
        decoded = processor.tokenizer.decode(ones, skip_special_tokens=True)
        assert decoded == "".join(t.raw for t in traj.turns)
    out = to_rollout_output(result.trajectories)
    assert [len(x) for x in out["logprobs"]] == [len(x) for x in out["completion_ids"]]


async def test_local_never_generates_vision_placeholder_tokens(tmp_path, tools):
    """A policy that emits <|image_pad|> breaks the training forward pass (more placeholders than image
    features): bias a tiny model so the pad is its favourite token and check it is never produced."""
    from components.agent.generators.local import vision_token_ids

    path = build_tiny_model(tmp_path / "model", seed=3)
    model, processor = load_model_and_processor(str(path), load_settings(profile="tiny").model)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert pad in vision_token_ids(processor.tokenizer)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[pad] = 1e4  # the pad is every position's favourite token by far
    model.lm_head = head
    ids = processor.tokenizer("<reason>", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits[0, -1].argmax().item() == pad  # unsuppressed, it would win
    loop = AgentLoop(LocalGenerator(model, processor, seed=0), CountingTools(tools),
                     LoopConfig(progress=False, max_new_tokens=16, temperature=0.0))
    result = await loop.run(samples(2))
    for traj in result.trajectories:
        generated = [t for t, m in zip(traj.completion_ids, traj.completion_mask, strict=True) if m]
        assert generated and pad not in generated
        assert not set(generated) & set(vision_token_ids(processor.tokenizer))


def test_local_row_is_cut_after_stop_string_or_eos(tiny):
    model, processor = tiny
    gen = LocalGenerator(model, processor)
    tok = processor.tokenizer
    ids = tok.encode(ANSWER, add_special_tokens=False)
    pad = [tok.pad_token_id] * 3
    out = gen._row(ids + pad, [-0.5] * (len(ids) + 3), GenRequest(stop=STOP_STRINGS))
    assert out.stop_reason == "stop_string" and out.stop == "</answer>" and out.token_ids == ids
    out = gen._row(ids[:3] + [tok.eos_token_id] + pad, [-0.1] * 7, GenRequest(stop=STOP_STRINGS))
    assert out.stop_reason == "eos" and out.token_ids[-1] == tok.eos_token_id and len(out.logprobs) == 4


def test_restore_stop_puts_back_the_dropped_closing_tag():
    assert restore_stop("<reason>r</reason><answer>x", "stop", STOP_STRINGS) == \
        ("<reason>r</reason><answer>x</answer>", "</answer>")
    assert restore_stop("<reason>r</reason><answer>x", "length", STOP_STRINGS)[1] is None
    assert restore_stop("no tags", "stop", STOP_STRINGS) == ("no tags", None)


async def test_openai_generator_against_the_stand_in(openai_server, tiny, tools):
    _, processor = tiny
    replies = iter(["<reason>Need the city.</reason>\n<text_search>monument city",
                    "<reason>Found.</reason>\n<answer>Zorashmar"])
    openai_server.responder = lambda body: next(replies)
    gen = OpenAIGenerator(LLMEndpointSettings(base_url=openai_server.base_url, model="teacher", max_retries=0))
    loop = AgentLoop(gen, tools, LoopConfig(progress=False), processor=processor)
    traj = (await loop.run(samples(1))).trajectories[0]
    await gen.aclose()
    assert traj.end_reason == EndReason.ANSWER and traj.final_answer == "Zorashmar"
    first = openai_server.requests[0]["body"]
    assert first["stop"] == list(STOP_STRINGS) and first["model"] == "teacher"
    image_parts = [p for p in first["messages"][1]["content"] if p["type"] == "image_url"]
    assert len(image_parts) == 1 and image_parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    second = openai_server.requests[1]["body"]["messages"]
    assert second[2] == {"role": "assistant", "content": traj.turns[0].raw}
    assert second[3]["content"].startswith("<information>")
    # token fields from the local processor: the re-tokenised conversation, no logprobs
    assert traj.prompt_ids and traj.logprobs is None and 1 in traj.completion_mask


async def test_openai_generator_error_is_a_generation_error(openai_server, tools):
    from tests.fixtures.openai_server import Reply

    openai_server.replies.append(Reply(status=400))
    gen = OpenAIGenerator(LLMEndpointSettings(base_url=openai_server.base_url, model="m", max_retries=0))
    traj = (await AgentLoop(gen, tools, LoopConfig(progress=False)).run(samples(1))).trajectories[0]
    await gen.aclose()
    assert traj.end_reason == EndReason.GENERATION_ERROR and traj.prompt_ids == []


class StandInVLLMGeneration:
    """Stand-in for TRL's ``trl.generation.vllm_generation.VLLMGeneration`` (same ``generate``
    signature and return shape): vLLM cannot run here; a GPU run replaces it with the trainer's
    real ``trainer.vllm_generation``. It answers with a scripted policy's tokens and logprobs [T][1],
    and records every call (prompts, images, the generation_kwargs in force)."""

    def __init__(self, processor, turns):
        self.tok = processor.tokenizer
        self.turns, self.generation_kwargs, self.calls = turns, {"seed": 1}, []

    def generate(self, prompts, images, num_generations, profiler=None):
        assert num_generations == 1
        self.calls.append({"n": len(prompts), "images": images, "kwargs": dict(self.generation_kwargs)})
        start = self.tok.convert_tokens_to_ids("<|im_start|>")
        completions = []
        for ids in prompts:
            k = ids.count(start) - 3  # system, user, assistant header: the k-th model turn
            completions.append(self.tok.encode(self.turns[min(k, len(self.turns) - 1)], add_special_tokens=False))
        logprobs = [[[-0.25] for _ in c] for c in completions]
        return prompts, completions, logprobs, None


async def test_vllm_generator_through_trl_generation_api(tiny, tools):
    _, processor = tiny
    stand_in = StandInVLLMGeneration(processor, [TEXT, ANSWER])
    gen = VLLMGenerator(stand_in, processor)
    result = await AgentLoop(gen, tools, LoopConfig(progress=False)).run(samples(3))
    assert all(t.end_reason == EndReason.ANSWER for t in result.trajectories)
    sizes = [c["n"] for c in stand_in.calls if c["n"]]
    assert sizes[0] == 3 and sum(sizes) == 6  # the first round holds all three; 6 turns in all
    assert all(c["kwargs"]["stop"] == sorted(STOP_STRINGS) and c["kwargs"]["include_stop_str_in_output"]
               for c in stand_in.calls if c["n"])
    assert stand_in.generation_kwargs == {"seed": 1}  # restored after each call
    assert all("<|image_pad|>" in c["kwargs"]["bad_words"] for c in stand_in.calls)
    assert all(len(imgs) == 1 for c in stand_in.calls if c["n"] for imgs in c["images"])
    traj = result.trajectories[0]
    assert {lp for lp, m in zip(traj.logprobs, traj.completion_mask, strict=True) if m} == {-0.25}
    assert traj.completion_ids[-1] == processor.tokenizer.eos_token_id  # appended after "</answer>"


async def test_lockstep_batcher_joins_rounds_with_empty_batches():
    class Collective:
        """A single rank whose partner rank still generates for two more rounds."""

        name, lockstep, processor = "collective", True, None

        def __init__(self):
            self.batches, self.partner_rounds = [], 2

        async def all_gather(self, flag):
            partner = self.partner_rounds > 0
            self.partner_rounds -= 1
            return [flag, partner]

        async def generate(self, requests):
            self.batches.append(len(requests))
            return [type("O", (), {"error": None})() for _ in requests]

    gen = Collective()
    batcher = LockstepBatcher(gen)
    batcher.start()
    batcher.finish()  # this rank has nothing at all
    await asyncio.wait_for(batcher.aclose(), 10)
    assert gen.batches == [0, 0]  # it still joined both of the partner's rounds


async def test_batcher_collects_concurrent_requests_into_one_call(tiny):
    _, processor = tiny
    gen = ScriptedGenerator(fixed_turns([ANSWER]), processor)
    batcher = Batcher(gen, max_batch=4)
    outs = await asyncio.gather(*(batcher.submit(GenRequest(messages=[], stop=STOP_STRINGS)) for _ in range(6)))
    assert len(outs) == 6 and gen.calls == [4, 2]


async def test_the_batching_window_gathers_requests_that_arrive_a_moment_apart(tiny):
    """Trajectories come back from their tool calls at different times: 3 requests 2 ms apart make
    one batch with a 200 ms window, three batches of one without (the sizes are what the bench's
    histogram shows)."""
    _, processor = tiny

    async def staggered(batcher):
        async def one(k):
            await asyncio.sleep(0.002 * k)
            return await batcher.submit(GenRequest(messages=[], stop=STOP_STRINGS))
        return await asyncio.gather(*(one(k) for k in range(3)))

    windowed = ScriptedGenerator(fixed_turns([ANSWER]), processor)
    await staggered(Batcher(windowed, max_batch=8, window_s=0.2))
    assert windowed.calls == [3]
    bare = ScriptedGenerator(fixed_turns([ANSWER]), processor)
    await staggered(Batcher(bare, max_batch=8, window_s=0.0))
    assert bare.calls == [1, 1, 1]


async def test_a_steady_stream_of_requests_is_cut_into_batches_at_the_window(tiny):
    """Tool results are parsed one after another, so a request can arrive on EVERY event-loop
    iteration for a while: the first ones must not wait for the last (the window bounds the whole
    collection), while a burst that is ready at once still makes one batch."""
    _, processor = tiny

    async def stream(batcher, n):
        async def one(k):
            for _ in range(k):  # arrive on the k-th iteration of the event loop ...
                await asyncio.sleep(0)
            time.sleep(0.001)  # ... after some work of its own (blocking, as parsing a tool result is)
            return await batcher.submit(GenRequest(messages=[], stop=STOP_STRINGS))
        return await asyncio.gather(*(one(k) for k in range(n)))

    gen = ScriptedGenerator(fixed_turns([ANSWER]), processor)
    await stream(Batcher(gen, max_batch=64, window_s=0.005), 60)
    assert sum(gen.calls) == 60 and len(gen.calls) > 1 and gen.calls[0] < 30
    burst = ScriptedGenerator(fixed_turns([ANSWER]), processor)
    batcher = Batcher(burst, max_batch=64, window_s=0.005)
    await asyncio.gather(*(batcher.submit(GenRequest(messages=[], stop=STOP_STRINGS)) for _ in range(40)))
    assert burst.calls == [40]
