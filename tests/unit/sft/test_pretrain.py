"""Copy pretraining (components/sft/pretrain.py) on the real tiny Qwen2.5-VL, text only, on CPU.

Proves: a segment starts at the row's first <information>; an answer segment is the last
<information> and the final turn, and when it must be cut the result's middle goes, never the answer; drills repeat their names (a copy is
the only way to predict the second half); a few steps lower the loss, touch no vision weight and
log through ``on_log``; rows without any search are refused.

Run: ``.venv/bin/python -m pytest -q tests/unit/sft/test_pretrain.py``
"""

from __future__ import annotations

import random
import re

import pytest
import torch

from components.agent.models import load_model_and_processor
from components.agent.tiny import build_tiny_model
from components.common.settings import load_settings
from components.sft.pretrain import (
    CopyPretrainConfig,
    answer_segment,
    copy_drill,
    copy_pretrain,
    copy_segment,
    fit_answer_segment,
)
from tests.unit.sft.test_counterfactual import ROW


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model_and_processor(str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")),
                                    load_settings(profile="tiny").model)


def test_segment_and_drills(tiny):
    _, processor = tiny
    seg = copy_segment(processor, ROW)
    assert seg.startswith("<information>\nThe image most likely shows Kodiax Tower") and seg.endswith("<|im_end|>\n")
    assert copy_segment(processor, ROW[:3]) is None
    for seed in range(10):
        drill = copy_drill(random.Random(seed))
        listed = re.findall(r"(?:^|\. |\n)([A-Z][a-z]+(?: [A-Z][a-z]+)?): ", drill)
        asked = re.findall(r"<text_search>(.*)</text_search>", drill)
        if asked:
            assert sorted(asked[0].split(" | ")) == sorted(listed)
        else:
            for name, year in re.findall(r"<reason>(.+?): (\d+)\.</reason>", drill):
                assert f"{name}: Born: " in drill and f", {year}." in drill


def test_a_few_steps_lower_the_loss_and_leave_vision_alone(tiny):
    model, processor = tiny
    vision = {n: p.detach().clone() for n, p in model.named_parameters() if "visual" in n}
    logged = []
    hist = copy_pretrain(model, processor, [ROW] * 4, CopyPretrainConfig(steps=30, batch_size=4, log_every=5,
                                                                         synthetic_share=0.5),
                         on_log=lambda step, m: logged.append(step))
    assert logged == [5, 10, 15, 20, 25, 30] and len(hist) == 6
    assert hist[-1]["copy_pretrain/loss"] < hist[0]["copy_pretrain/loss"]
    assert all(torch.equal(p, vision[n]) for n, p in model.named_parameters() if "visual" in n)
    with pytest.raises(ValueError, match="<information>"):
        copy_pretrain(model, processor, [ROW[:3]], CopyPretrainConfig(steps=1))


def test_rehearsal_batches_take_every_nth_step_and_are_logged_apart(tiny):
    """``sft.copy_pretrain_visual_every``: every N-th copy-pretraining step trains on the readout's
    batches (visual pretraining's fresh pictures) so the readout learnt before is kept; their loss is
    logged as ``copy_pretrain/rehearse_loss``, never as the copy loss, and they come on top of the
    configured copy steps."""
    from components.sft.visual import visual_batches
    from tests.unit.sft.test_visual import visual_row

    model, processor = tiny
    rows = [visual_row(k, s)[0] for s in range(2) for k in ("colour", "count", "shape", "position")]
    inner = visual_batches(processor, rows, batch_size=2, seed=0)
    asked = []

    def rehearse(step):
        asked.append(step)
        return inner(step)

    hist = copy_pretrain(model, processor, [ROW] * 4,
                         CopyPretrainConfig(steps=6, batch_size=2, log_every=3, rehearse_every=3),
                         rehearse=rehearse)
    assert asked == [3, 6, 9]  # on top of the 6 copy steps: 9 in all
    assert [h["step"] for h in hist] == [3, 6, 9]
    assert all("copy_pretrain/rehearse_loss" in h and "copy_pretrain/loss" in h for h in hist)
    assert all(h["copy_pretrain/rehearse_loss"] != h["copy_pretrain/loss"] for h in hist)
    with pytest.raises(ValueError, match="rehearse_every=1"):
        copy_pretrain(model, processor, [ROW], CopyPretrainConfig(steps=2, rehearse_every=1), rehearse=rehearse)


def test_answer_segment_keeps_the_final_turn_and_the_results_head(tiny):
    """The window from the first <information> on ends before the answer in most real rows (they
    average ~450 tokens); an answer segment keeps the value's page section and the final turn."""
    _, processor = tiny
    tok = processor.tokenizer
    result, rest = answer_segment(processor, ROW)
    assert result.startswith("<information>\nViath Drabrukou: Viath Drabrukou (1776") and result.endswith(
        "</information>") and "<answer>1776</answer>" in rest and "Kodiax" not in result
    assert answer_segment(processor, ROW[:3]) is None
    whole = fit_answer_segment(tok, result, rest, 10_000)
    assert tok.decode(whole) == result + rest
    tail = tok.encode("</information>" + rest, add_special_tokens=False)
    cut = fit_answer_segment(tok, result, rest, len(tail) + 12)
    assert len(cut) == len(tail) + 12 and cut[-len(tail):] == tail  # the answer turn whole, the head kept
    assert tok.decode(cut).startswith("<information>\nViath")
    hist = copy_pretrain(tiny[0], processor, [ROW] * 4, CopyPretrainConfig(steps=2, batch_size=4, log_every=1,
                                                                          synthetic_share=0.0, answer_share=1.0))
    assert len(hist) == 2 and all(h["copy_pretrain/loss"] > 0 for h in hist)
