"""Tests of the trajectory record: building one turn by turn, JSON round trip, token-field checks,
the SFT message form (through TRL's own preparation and chat template) and format scoring."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
import trl
from pydantic import ValidationError
from transformers.utils.chat_template_utils import render_jinja_template
from trl.data_utils import prepare_multimodal_messages

import components.agent.protocol.parser as protocol_parser
import components.agent.trajectory as trajectory_module
from components.agent.protocol import (
    INFO_OPEN,
    ActionKind,
    EndReason,
    Limits,
    ProtocolState,
    parse_turn,
    render_information,
    render_invalid,
)
from components.agent.trajectory import Trajectory, format_score, sha256_of, turn_valid

IMAGE = b"\x89PNG fake input image bytes"
CROP = b"crop bytes"
TURNS = [
    "<reason>The tower in the picture matters.</reason>\n<img_search>[10, 20, 110, 220]</img_search>",
    "<reason>Searching again.</reason><img_search><img></img_search>",  # refused: image search used
    "<reason>It is the Eiffel Tower; who designed it?</reason><text_search>Eiffel Tower designer</text_search>",
    "<reason>The findings name him.</reason><answer>Gustave Eiffel</answer>",
]


def _run(turns: list[str], limits: Limits | None = None) -> Trajectory:
    """Drive the protocol the way the agent loop does, with fixed tool texts (no tools involved)."""
    limits = limits or Limits()
    traj = Trajectory.start("s-1", "Who designed this tower?", ["Gustave Eiffel", "Eiffel"], IMAGE, limits=limits)
    state = ProtocolState(limits=limits)
    for raw in turns:
        action = state.check(parse_turn(raw))
        if not action.valid:
            traj.add_turn(raw, action, render_invalid(action, state))
        elif action.kind == ActionKind.ANSWER:
            traj.add_turn(raw, action)
        else:
            summary = f"findings for turn {len(traj.turns)}"
            crop = action.box
            traj.add_turn(raw, action, render_information(summary, action.kind, state), tool_result=summary,
                          tool_latency_s=0.25, crop_box=crop, crop_image=CROP if crop else None)
        if state.end_reason():
            traj.finish(state.end_reason())
            break
    traj.completion_ids = [5, 6, 7, 8]
    traj.completion_mask = [1, 1, 0, 1]
    traj.logprobs = [-0.5, -1.0, None, -0.1]
    traj.prompt_ids = [1, 2, 3]
    return traj


def test_building_a_trajectory_records_turns_counts_and_images():
    traj = _run(TURNS)
    assert traj.end_reason == EndReason.ANSWER and traj.final_answer == "Gustave Eiffel"
    assert (traj.text_searches, traj.image_searches, traj.crop_searches, traj.invalid_turns) == (1, 0, 1, 1)
    assert traj.turns[1].error and "only once" in traj.turns[1].error
    assert traj.images[0].sha256 == sha256_of(IMAGE) and traj.input_image.role == "input"
    assert traj.images[1].model_dump() == {"sha256": sha256_of(CROP), "role": "crop",
                                           "box": [10.0, 20.0, 110.0, 220.0], "turn": 0}
    roles = [m["role"] for m in traj.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert traj.messages[3]["content"].startswith(INFO_OPEN)


def test_json_round_trip_keeps_everything_and_no_bytes():
    traj = _run(TURNS)
    text = traj.model_dump_json()
    back = Trajectory.model_validate_json(text)
    assert back == traj
    assert back.turns[0].action.region == [10.0, 20.0, 110.0, 220.0]
    data = json.loads(text)
    assert data["crop_searches"] == 1 and data["end_reason"] == "answer" and data["judge"]["correct"] is None
    assert "fake input image" not in text  # images by hash only


def test_token_fields_must_line_up():
    traj = _run(TURNS)
    data = traj.model_dump()
    with pytest.raises(ValidationError, match="completion_mask has 3 entries"):
        Trajectory.model_validate({**data, "completion_mask": [1, 0, 1]})
    with pytest.raises(ValidationError, match="only 0"):
        Trajectory.model_validate({**data, "completion_mask": [1, 2, 0, 1]})
    with pytest.raises(ValidationError, match="logprobs has 1"):
        Trajectory.model_validate({**data, "logprobs": [0.0]})


def test_sft_messages_are_strings_and_render_through_trl_with_one_image():
    traj = _run(TURNS)
    sft = traj.to_sft_messages()
    assert all(isinstance(m["content"], str) for m in sft)
    assert sft[1]["content"].startswith("Question: Who designed this tower?")
    prepared = prepare_multimodal_messages(sft, images=["<the input image>"])
    template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja").read_text()
    rendered, _ = render_jinja_template([prepared], chat_template=template)
    text = rendered[0]
    assert text.count("<|image_pad|>") == 1
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Question:" in text
    assert text.count("<|im_start|>assistant\n") == 4
    # the same conversation as the model saw at rollout, where the image was a content element
    live, _ = render_jinja_template([traj.messages], chat_template=template)
    assert live[0] == text


def test_sft_form_refuses_a_later_image():
    traj = _run(TURNS)
    traj.messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]})
    with pytest.raises(ValueError, match="only one, in the first user message"):
        traj.to_sft_messages()


def test_trajectory_ending_on_limits_has_no_final_answer():
    traj = _run(["<reason>a</reason><text_search>q</text_search>"] * 3, Limits(max_tool_calls=2))
    assert traj.end_reason == EndReason.MAX_TOOL_CALLS and traj.final_answer is None
    assert format_score(traj) == 0.0


def test_format_score_on_hand_built_cases():
    full = _run(TURNS)
    assert format_score(full) == pytest.approx(3 / 4)  # the refused second image search counts
    clean = _run([TURNS[0], TURNS[2], TURNS[3]])
    assert format_score(clean) == 1.0
    assert format_score(_run([TURNS[3]])) == 1.0
    assert format_score(_run(["no tags at all", TURNS[3]])) == 0.5
    assert format_score(_run([TURNS[0], "<reason>x</reason><answer></answer>"], Limits(max_invalid_turns=5))) == 0.0
    assert format_score(Trajectory(sample_id="x", question="q")) == 0.0
    assert [turn_valid(t) for t in full.turns] == [True, False, True, True]


@pytest.mark.parametrize("module", [protocol_parser, trajectory_module])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
