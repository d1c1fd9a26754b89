"""The agent loop with the real tool-server on loopback: every end reason, token masks that line up
with the rendered conversation, the image-search-once and call limits, crops by hash, concurrency.

Turns come from a scripted policy (``ScriptedGenerator``: a deterministic policy standing for a
model, tokenised with the tiny model's real tokenizer) so every path is reached on purpose.
Run: ``.venv/bin/python -m pytest -q tests/unit/agent/test_loop.py``.
"""

from __future__ import annotations

import hashlib

import pytest

from components.agent.generators.scripted import ScriptedGenerator, fixed_turns, turn_index
from components.agent.loop import AgentLoop, LoopConfig, crop_png
from components.agent.models import load_model_and_processor
from components.agent.protocol import ActionKind, EndReason, Limits
from components.agent.rollout import to_rollout_output
from components.agent.tiny import build_tiny_model
from components.agent.tokens import PromptEncoder, encode_prompt
from components.agent.trajectory import Trajectory, format_score, sha256_of
from components.common.settings import load_settings
from components.search.client import ToolClient
from tests.support import free_port
from tests.unit.agent.loop_support import CountingTools, pil, png, samples

CROP = "<reason>The sign matters.</reason>\n<img_search>[10, 20, 120, 140]</img_search>"
WHOLE = "<reason>What is it?</reason>\n<img_search><img></img_search>"
TEXT = "<reason>Need the city.</reason>\n<text_search>monument city architect</text_search>"
ANSWER = "<reason>Found it.</reason>\n<answer>Zorashmar</answer>"
GIVE_UP = "<reason>Nothing found.</reason>\n<answer>Unable to answer due to lack of relevant information</answer>"
GARBAGE = "I think it is a tower"


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    _, proc = load_model_and_processor(str(path), load_settings(profile="tiny").model)
    return proc


@pytest.fixture
async def tools(toolserver):
    async with ToolClient(toolserver.url, toolserver.token, timeout_s=30, retries=0) as client:
        yield client


async def _run(gen, tools, n=1, **cfg):
    loop = AgentLoop(gen, tools, LoopConfig(progress=False, **cfg))
    return await loop.run(samples(n))


def _runs(mask: list[int], ids: list[int]) -> list[tuple[int, list[int]]]:
    out: list[tuple[int, list[int]]] = []
    for m, t in zip(mask, ids, strict=True):
        if out and out[-1][0] == m:
            out[-1][1].append(t)
        else:
            out.append((m, [t]))
    return out


def test_prompts_sharing_an_image_reuse_its_tensors_with_their_own_ids(processor):
    """The G generations of a prompt share its image: the processor prepares it once, and every
    prompt's ids (its own question) are still exactly the processor's tokenisation."""
    encoder = PromptEncoder(processor)
    data = {seed: png(seed) for seed in (1, 2)}
    got = {}
    for i, (seed, question) in enumerate([(1, "Who built this?"), (1, "Which city is this in? (variant 7)"),
                                          (2, "Who built this?"), (1, "When?")]):
        messages = Trajectory.start(f"s{i}", question, image=data[seed], version="t2", image_size=(112, 112)).messages
        ids, mm = encoder.encode(messages, [pil(data[seed])], sha256_of(data[seed]))
        want_ids, want_mm = encode_prompt(processor, messages, [pil(data[seed])])
        assert ids == want_ids
        assert mm.keys() == want_mm.keys() and all((mm[k] == want_mm[k]).all() for k in mm)
        got.setdefault(seed, []).append(mm)
    assert all(mm["pixel_values"] is got[1][0]["pixel_values"] for mm in got[1])  # prepared once
    assert got[2][0]["pixel_values"] is not got[1][0]["pixel_values"]


@pytest.mark.parametrize("eos", [True, False], ids=["stops-on-eos", "stops-on-stop-string"])
async def test_masks_line_up_with_the_rendered_conversation(processor, tools, eos):
    tok = processor.tokenizer
    turns = [CROP, TEXT, ANSWER]
    result = await _run(ScriptedGenerator(fixed_turns(turns), processor, eos=eos), tools)
    traj = result.trajectories[0]
    assert traj.end_reason == EndReason.ANSWER and traj.final_answer == "Zorashmar"
    runs = _runs(traj.completion_mask, traj.completion_ids)
    # a turn stopped on "</answer>" gets the end-of-turn token appended with mask 0
    assert [m for m, _ in runs] == [1, 0, 1, 0, 1] + ([] if eos else [0])
    # mask-1 tokens: exactly the model's turns, ids as generated
    for (_, ids), text in zip(runs[0::2], turns, strict=True):
        assert ids == tok.encode(text, add_special_tokens=False) + ([tok.eos_token_id] if eos else [])
        assert tok.decode(ids, skip_special_tokens=True) == text
    # mask-0 tokens: the information turns (with the template's turn markers), then end-of-turn
    for (_, ids), turn in zip(runs[1:4:2], traj.turns[:2], strict=True):
        text = tok.decode(ids)
        assert turn.information and turn.information in text
        assert text == ("" if eos else "<|im_end|>") + f"\n<|im_start|>user\n{turn.information}<|im_end|>\n" \
            "<|im_start|>assistant\n"
    if not eos:
        assert tok.decode(runs[-1][1]) == "<|im_end|>"
    # prompt + completion == the processor's tokenisation of the whole rendered conversation
    rendered = processor.apply_chat_template(traj.messages, tokenize=False)
    image = pil(result.images[traj.input_image.sha256])
    expected = processor(text=[rendered], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    got = traj.prompt_ids + traj.completion_ids
    assert got == expected[: len(got)] and tok.decode(expected[len(got):]).strip() == ""
    assert got[-1] == tok.eos_token_id
    # the rollout_func dict lines up
    out = to_rollout_output(result.trajectories)
    assert out["env_mask"][0] == traj.completion_mask and out["prompt_ids"][0] == traj.prompt_ids
    assert out["logprobs"] is None and out["format_score"] == [1.0] and out["tool_calls"] == [2]


async def test_crop_kept_by_hash_and_image_search_only_once(processor, tools):
    result = await _run(ScriptedGenerator(fixed_turns([CROP, WHOLE, ANSWER]), processor), tools)
    traj = result.trajectories[0]
    kinds = [t.action.kind for t in traj.turns]
    assert kinds == [ActionKind.CROP_SEARCH, ActionKind.INVALID, ActionKind.ANSWER]
    assert traj.turns[1].action.refused_kind == ActionKind.IMAGE_SEARCH
    assert "only once" in traj.turns[1].information
    assert traj.crop_searches == 1 and traj.image_searches == 0 and traj.end_reason == EndReason.ANSWER
    crop_ref = next(i for i in traj.images if i.role == "crop")
    assert crop_ref.box == traj.turns[0].crop_box and crop_ref.turn == 0
    data = result.images[crop_ref.sha256]
    assert hashlib.sha256(data).hexdigest() == crop_ref.sha256
    assert data == crop_png(pil(result.images[traj.input_image.sha256]), crop_ref.box)
    assert format_score(traj) == pytest.approx(2 / 3)


@pytest.mark.parametrize("version,sent", [("v2", [0, 0, 128, 128]), ("t2", [0, 0, 128, 128]),
                                          ("v1", [0, 0, 56, 56])])
async def test_a_box_in_the_models_frame_crops_that_region_of_the_original(processor, tools, version, sent):
    """The tiny processor shows a 256 x 256 image at 112 x 112: the prompt (v2/t2) says so, and the
    model's box [0, 0, 56, 56] (its top-left quarter) reaches the tool-server as the original's
    top-left quarter; v1 states no frame, so its boxes stay in original pixels."""
    crop = "<reason>The corner matters.</reason>\n<img_search>[0, 0, 56, 56]</img_search>"
    result = await _run(ScriptedGenerator(fixed_turns([crop, ANSWER]), processor), tools, prompt_version=version)
    traj = result.trajectories[0]
    first = traj.messages[1]["content"][1]["text"]
    assert ("Image size: 112x112 pixels." in first) == (version != "v1")
    assert traj.turns[0].action.region == [0, 0, 56, 56]  # the record keeps what the model wrote
    assert traj.turns[0].crop_box == sent  # the server cropped (and reported) original pixels
    crop_ref = next(i for i in traj.images if i.role == "crop")
    assert pil(result.images[crop_ref.sha256]).size == (sent[2], sent[3])


async def test_trajectories_end_in_every_way(processor, tools):
    cases = {
        EndReason.ANSWER: ([TEXT, ANSWER], {}),
        EndReason.GIVE_UP: ([WHOLE, GIVE_UP], {}),
        EndReason.MAX_TURNS: ([TEXT], {"limits": Limits(max_turns=3, max_tool_calls=10)}),
        EndReason.MAX_TOOL_CALLS: ([TEXT], {"limits": Limits(max_turns=10, max_tool_calls=2)}),
        EndReason.INVALID_LIMIT: ([GARBAGE], {"limits": Limits(max_invalid_turns=2)}),
    }
    for reason, (turns, cfg) in cases.items():
        result = await _run(ScriptedGenerator(fixed_turns(turns), processor), tools, **cfg)
        traj = result.trajectories[0]
        assert traj.end_reason == reason, (reason, [t.action for t in traj.turns])
        assert len(traj.completion_mask) == len(traj.completion_ids) > 0
    max_calls = (await _run(ScriptedGenerator(fixed_turns([TEXT]), processor), tools,
                            limits=Limits(max_tool_calls=2))).trajectories[0]
    assert max_calls.text_searches == 2 and max_calls.turns[-1].action.refused_kind == ActionKind.TEXT_SEARCH
    max_turns = (await _run(ScriptedGenerator(fixed_turns([TEXT]), processor), tools,
                            limits=Limits(max_turns=3))).trajectories[0]
    assert len(max_turns.turns) == 3 and max_turns.turns[-1].information is None


async def test_tool_error_ends_the_trajectory(processor):
    async with ToolClient(f"http://127.0.0.1:{free_port()}", timeout_s=2, retries=0) as dead:
        result = await _run(ScriptedGenerator(fixed_turns([TEXT, TEXT, ANSWER]), processor), dead)
    traj = result.trajectories[0]
    assert traj.end_reason == EndReason.TOOL_ERROR
    assert len(traj.turns) == 2  # max_tool_failures=2 failures in a row end it
    assert "text search failed" in traj.turns[1].error and traj.turns[1].information is None
    assert traj.completion_ids[-1] == processor.tokenizer.eos_token_id


async def test_one_tool_failure_is_told_to_the_model(processor):
    async with ToolClient(f"http://127.0.0.1:{free_port()}", timeout_s=2, retries=0) as dead:
        result = await _run(ScriptedGenerator(fixed_turns([TEXT, ANSWER]), processor), dead)
    traj = result.trajectories[0]
    assert traj.end_reason == EndReason.ANSWER
    first = traj.turns[0]
    assert "text search failed" in first.error
    assert "<information>" in first.information and "The search failed" in first.information


async def test_generation_error_ends_the_trajectory(processor, tools):
    gen = ScriptedGenerator(fixed_turns([TEXT, ANSWER]), processor, fail_on=lambda r: turn_index(r) == 1)
    traj = (await _run(gen, tools)).trajectories[0]
    assert traj.end_reason == EndReason.GENERATION_ERROR and len(traj.turns) == 1
    assert traj.final_answer is None and traj.completion_mask[-1] == 0


@pytest.mark.parametrize(("n", "concurrency"), [(6, 4), (6, 8)])
async def test_tool_calls_overlap_and_generation_is_batched(processor, tools, n, concurrency):
    counting = CountingTools(tools)
    gen = ScriptedGenerator(fixed_turns([TEXT, TEXT, ANSWER]), processor)
    result = await _run(gen, counting, n=n, concurrency=concurrency)
    assert all(t.end_reason == EndReason.ANSWER for t in result.trajectories)
    assert [t.sample_id for t in result.trajectories] == [f"s{i}" for i in range(n)]
    assert counting.calls == 2 * n
    assert counting.max_in_flight == min(n, concurrency)
    assert max(gen.calls) == min(n, concurrency) and sum(gen.calls) == 3 * n
    assert result.batch_sizes == gen.calls
