"""Fresh search-free images: a visual row redrawn with a new image of its kind, its answer recomputed.

Why: a from-scratch vision tower is random; the offline world gives it ~1,000 search-free training
rows (colour, count, shape, position), and in three SFT epochs it learns nothing from them — the
measured search-free accuracy stays at the ~21 % of a constant answer (issue 12). The world's own
generator (:func:`components.world.visual.make_visual`) draws unlimited images whose answers are
known, so every access of a visual row can show a NEW image of the same kind, with the question
and the answer in the model's turn rewritten to match: the vision tower sees thousands of distinct
images instead of a thousand, and memorising an image cannot lower the loss. (It also keeps the
name/number swap of :mod:`components.sft.counterfactual` away from these rows: swapping the digit
of a count answer without redrawing the image would teach a wrong count.)

:func:`redraw` does one row; :func:`visual_pretrain` is a short stage before SFT for a model built
from scratch — the analogue of starting from a pretrained vision encoder: batches of redrawn visual
rows only (short: ~120 tokens with the t1 prompt), the loss on the model's answer turn, the vision
tower and the language model both trained.

Import-only: ``redraw(VisualRow(messages, question, category, final_answer), rng)``,
``visual_pretrain(model, processor, rows, VisualPretrainConfig(steps=300))``.
Tests: ``pytest tests/unit/sft/test_visual.py``.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from components.sft.data import _with_image
from components.sft.pretrain import train_stage
from components.world.visual import VISUAL_KINDS, make_visual

log = logging.getLogger(__name__)
VISUAL_PREFIX = "visual/"


@dataclass(frozen=True)
class VisualRow:
    """What :func:`redraw` needs of a dataset row."""

    messages: Sequence[dict[str, Any]]
    question: str
    category: str
    final_answer: str


def is_visual(category: str | None) -> bool:
    """True for the world's search-free picture questions (``visual/colour`` ...)."""
    return bool(category) and category.startswith(VISUAL_PREFIX) and category[len(VISUAL_PREFIX):] in VISUAL_KINDS


def _value_re(value: str) -> re.Pattern:
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])")


def redraw(row: VisualRow, rng: random.Random) -> tuple[list[dict[str, Any]], Any, str] | None:
    """``row`` with a fresh image of its kind: (messages, image, question), or None when the row is
    not a one-answer visual row this can rewrite (it then trains as it is).

    The question in the user turns is replaced by the new image's question; in the model's turns
    the old answer (inside ``<answer>`` and where the reason states it) by the new one."""
    if not is_visual(row.category) or not row.final_answer or not row.question:
        return None
    old_tag = f"<answer>{row.final_answer}</answer>"
    if not any(m["role"] == "assistant" and old_tag in (m["content"] or "") for m in row.messages):
        return None
    image, question, answers, _ = make_visual(row.category[len(VISUAL_PREFIX):], rng, verify=False)
    old = _value_re(row.final_answer)
    out = []
    for m in row.messages:
        content = m["content"]
        if isinstance(content, str):
            if m["role"] == "user":
                content = content.replace(row.question, question)
            elif m["role"] == "assistant":
                content = old.sub(answers[0], content)
        out.append({**m, "content": content})
    return out, image, question


@dataclass
class VisualPretrainConfig:
    steps: int
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 0
    log_every: int = 50


def _answer_labels(ids: torch.Tensor, att: torch.Tensor, im_start: int) -> torch.Tensor:
    """Labels: the tokens after the last ``<|im_start|>`` (the model's answer turn, its role header
    excluded: the next two tokens, ``assistant`` and the newline); everything else -100."""
    labels = torch.full_like(ids, -100)
    for i in range(ids.shape[0]):
        starts = (ids[i] == im_start).nonzero().flatten()
        begin = int(starts[-1]) + 3
        labels[i, begin:] = ids[i, begin:]
    return labels.masked_fill(att == 0, -100)


def visual_batches(processor: Any, rows: Sequence[VisualRow], batch_size: int,
                   seed: int) -> Callable[[int], dict[str, Any]]:
    """``batch(step)`` of visual pretraining: ``batch_size`` rows of ``rows`` redrawn with fresh images,
    the labels on the model's answer turn. Also what copy pretraining rehearses the readout with."""
    templates = [r for r in rows if redraw(r, random.Random(0)) is not None]
    if not templates:
        raise ValueError("visual pretraining needs search-free visual rows (category visual/...): the dataset has none")
    im_start = processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    rng = random.Random(seed)

    def batch(step: int) -> dict[str, Any]:
        drawn = [redraw(rng.choice(templates), rng) for _ in range(batch_size)]
        texts = [processor.apply_chat_template(_with_image(m, 1), tokenize=False) for m, _, _ in drawn]
        enc = processor(text=texts, images=[[img] for _, img, _ in drawn], return_tensors="pt", padding=True)
        return {**enc, "labels": _answer_labels(enc["input_ids"], enc["attention_mask"], im_start)}

    return batch


def visual_pretrain(model: Any, processor: Any, rows: Sequence[VisualRow], config: VisualPretrainConfig,
                    on_log: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place for ``config.steps`` steps on redrawn visual rows; return the history."""
    batch = visual_batches(processor, rows, config.batch_size, config.seed)
    return train_stage(model, "visual_pretrain", config.steps, config.learning_rate, config.log_every, batch, on_log)
