"""Fresh search-free images (components/sft/visual.py) on the real tiny Qwen2.5-VL, on CPU.

Proves: a redrawn visual row carries a new image whose answer — recomputed from its pixels —
is the one in the model's turn (reason and ``<answer>``), with the question rewritten to match;
rows that are not visual are left alone; the SFT transform redraws visual rows and never swaps
a count's digit without redrawing; a few visual-pretraining steps lower the loss and train the
vision tower (a from-scratch model's tower is random: it must learn).

Run: ``.venv/bin/python -m pytest -q tests/unit/sft/test_visual.py``
"""

from __future__ import annotations

import random
import re

import pytest
import torch

from components.agent.models import load_model_and_processor
from components.agent.tiny import build_tiny_model
from components.common.settings import load_settings
from components.sft.counterfactual import CounterfactualTransform
from components.sft.visual import VisualPretrainConfig, VisualRow, is_visual, redraw, visual_pretrain
from components.world.visual import analyse, make_visual
from tests.unit.sft.test_counterfactual import ROW

SYSTEM = {"role": "system", "content": "Answer about the image."}


def visual_row(kind: str, seed: int) -> tuple[VisualRow, object]:
    image, question, answers, category = make_visual(kind, random.Random(seed))
    value = answers[0]
    messages = [SYSTEM, {"role": "user", "content": f"Question: {question}"},
                {"role": "assistant", "content": "<reason>The question is about what the image shows, so no "
                 f"search is needed: looking at the shapes, the answer is {value}.</reason>\n<answer>{value}</answer>"}]
    return VisualRow(messages, question, category, value), image


@pytest.mark.parametrize("kind", ["colour", "count", "shape", "position"])
def test_redraw_matches_the_new_pixels(kind):
    row, _ = visual_row(kind, 0)
    rng = random.Random(1)
    seen, questions = set(), set()
    for _ in range(20):
        messages, image, question = redraw(row, rng)
        assert messages[1]["content"] == f"Question: {question}"
        truth = analyse(image)[kind]
        answer = re.search(r"<answer>(.*)</answer>", messages[2]["content"]).group(1)
        assert answer == truth and f"the answer is {truth}." in messages[2]["content"]
        seen.add(truth)
        questions.add(messages[1]["content"])
    assert len(seen) > 1  # the answers vary: the image, not a constant, decides
    assert all(q.startswith("Question: ") for q in questions)
    assert len(questions) > 1 or kind == "colour"  # the colour question is one fixed sentence
    assert messages[0] == SYSTEM


def test_rows_that_are_not_visual_are_left_alone():
    assert not is_visual("person/born") and not is_visual(None) and is_visual("visual/count")
    assert redraw(VisualRow(ROW, "Who built it?", "landmark/architect", "Oyo"), random.Random(0)) is None
    row, _ = visual_row("colour", 0)
    broken = VisualRow(row.messages, row.question, row.category, "mauve")  # answer not in the model's turn
    assert redraw(broken, random.Random(0)) is None


def test_transform_redraws_visual_rows_and_swaps_names_elsewhere():
    rows = [visual_row("count", s) for s in range(6)]
    batch = {"messages": [r.messages for r, _ in rows] + [ROW], "images": [[img] for _, img in rows] + [[]],
             "question": [r.question for r, _ in rows] + ["q"], "category": [r.category for r, _ in rows] + ["x/y"],
             "final_answer": [r.final_answer for r, _ in rows] + ["a"]}
    out = CounterfactualTransform(seed=3, share=1.0, redraw_visual=True)(batch)
    assert set(out) == {"messages", "images"}  # the row columns are read here, not passed to the collator
    for messages, images in zip(out["messages"][:-1], out["images"][:-1], strict=True):
        assert re.search(r"<answer>(.*)</answer>", messages[2]["content"]).group(1) == analyse(images[0])["count"]
    assert out["messages"][-1] != ROW  # the search row got fresh names
    kept = CounterfactualTransform(seed=3, share=1.0)(batch)  # no redraw: visual rows pass unchanged
    assert kept["messages"][:-1] == batch["messages"][:-1] and kept["images"][:-1] == batch["images"][:-1]


def test_a_few_steps_lower_the_loss_and_train_the_vision_tower(tmp_path):
    model, processor = load_model_and_processor(str(build_tiny_model(tmp_path / "m")),
                                                load_settings(profile="tiny").model)
    vision = {n: p.detach().clone() for n, p in model.named_parameters() if "visual" in n}
    rows = [visual_row(k, s)[0] for s in range(3) for k in ("colour", "count", "shape", "position")]
    logged = []
    hist = visual_pretrain(model, processor, rows, VisualPretrainConfig(steps=20, batch_size=4, log_every=5),
                           on_log=lambda step, m: logged.append(step))
    assert logged == [5, 10, 15, 20]
    assert hist[-1]["visual_pretrain/loss"] < hist[0]["visual_pretrain/loss"]
    changed = sum(not torch.equal(p, vision[n]) for n, p in model.named_parameters() if "visual" in n)
    assert changed == len(vision)
    with pytest.raises(ValueError, match="visual"):
        visual_pretrain(model, processor, [VisualRow(ROW, "q", "x/y", "a")], VisualPretrainConfig(steps=1))
