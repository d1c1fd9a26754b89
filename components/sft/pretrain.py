"""Copy pretraining: a short text-only language-modelling stage before SFT, for a model built from scratch.

Why: a from-scratch tiny model SFT-trained on agent rows learns the tags and when to search, but
no in-context copy mechanism forms in the few hundred steps a CPU allows — it never copies a name
out of ``<information>`` into its query (issue 12). Copying needs an induction circuit; it forms
faster on short, copy-dense text than on long multimodal rows. So before SFT the model reads, as
plain text with the loss on EVERY token:

- the SFT rows from their first ``<information>`` turn on (the copy-dense part: results that
  repeat names, the model's reason and query that repeat them again), each drawn with fresh
  counterfactual names and values (:mod:`components.sft.counterfactual`), so nothing but copying
  predicts a name;
- an ``answer_share`` of those rows as their LAST ``<information>`` turn and the model's final turn
  instead (:func:`answer_segment`): the value copied out of the text search's result into the
  reason and the answer. Rows average ~450 tokens from their first ``<information>`` on, so a
  ``max_tokens`` window from there never reaches the answer turn (0 of 1,000 rows of ``make run``'s
  world did): without these segments nothing here teaches copying a value (a year, a height);
- a ``synthetic_share`` of copy drills in the same words: a list of fresh names then the list
  again in another order, or ``name: value`` facts then lookups of some of them.

No image is involved (the vision tower is untouched); the optimiser is AdamW with a linear
warm-up and a cosine decay to a tenth.

Import-only: ``copy_pretrain(model, tokenizer, conversations, CopyPretrainConfig(steps=600))``.
Tests: ``pytest tests/unit/sft/test_pretrain.py``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from components.agent.protocol import INFO_CLOSE, INFO_OPEN
from components.sft.counterfactual import swap_messages
from components.world.entities import Namer

log = logging.getLogger(__name__)


@dataclass
class CopyPretrainConfig:
    steps: int
    batch_size: int = 32
    learning_rate: float = 3e-3
    max_tokens: int = 192
    synthetic_share: float = 0.3
    seed: int = 0
    log_every: int = 50
    rehearse_every: int = 0  # every N-th step a batch of ``rehearse`` (another stage's data), on top of ``steps``
    answer_share: float = 0.0  # of the real rows: the last <information> turn and the final turn (answer_segment)


def lr_scale(step: int, steps: int) -> float:
    """The pretraining stages' schedule: linear warm-up over the first 5 %, cosine decay to a tenth."""
    warm = min(1.0, step / max(1, steps // 20))
    return warm * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))


def copy_segment(processor: Any, messages: Sequence[dict[str, Any]]) -> str | None:
    """The conversation's chat-template text from its first ``<information>`` on (None: no search)."""
    text = processor.apply_chat_template([dict(m) for m in messages], tokenize=False)
    at = text.find(INFO_OPEN)
    return text[at:] if at >= 0 else None


def answer_segment(processor: Any, messages: Sequence[dict[str, Any]]) -> tuple[str, str] | None:
    """The conversation's chat-template text from its LAST ``<information>`` on, split after that
    turn's ``</information>``: (the result, the rest: the model's final turn). None: no search."""
    text = processor.apply_chat_template([dict(m) for m in messages], tokenize=False)
    at = text.rfind(INFO_OPEN)
    if at < 0:
        return None
    close = text.find(INFO_CLOSE, at)
    cut = close + len(INFO_CLOSE) if close >= 0 else len(text)
    return text[at:cut], text[cut:]


def fit_answer_segment(tokenizer: Any, result: str, rest: str, max_tokens: int) -> list[int]:
    """Token ids of an answer segment within ``max_tokens``: the result's head (the subject's own
    section, where the oracle's value stands, comes first), its closing tag, and the whole final
    turn — the middle of a long result is dropped rather than the answer."""
    head = tokenizer.encode(result.removesuffix(INFO_CLOSE), add_special_tokens=False)
    tail = tokenizer.encode(INFO_CLOSE + rest, add_special_tokens=False)
    keep = max(0, max_tokens - len(tail))
    return (head[:keep] + tail)[:max_tokens]


def copy_drill(rng: random.Random) -> str:
    """One synthetic copy drill in the world's words (see the module docstring)."""
    namer = Namer(rng)
    names = [" ".join(namer.word((1, 3)) for _ in range(rng.randint(1, 2))) for _ in range(rng.randint(3, 8))]
    years = {n: rng.randint(1700, 1999) for n in names}
    if rng.random() < 0.5:
        order = rng.sample(names, len(names))
        return (f"{INFO_OPEN}\n" + ". ".join(f"{n}: {n} was born in {years[n]}" for n in names)
                + ".\n</information>\n<text_search>" + " | ".join(order) + "</text_search>")
    asked = rng.sample(names, min(3, len(names)))
    return (f"{INFO_OPEN}\n" + " ".join(f"{n}: Born: {namer.word()}, {years[n]}." for n in names)
            + "\n</information>\n" + " ".join(f"<reason>{n}: {years[n]}.</reason>" for n in asked))


def train_stage(model: Any, name: str, steps: int, learning_rate: float, log_every: int,
                batch: Callable[[int], dict[str, Any]],
                on_log: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """The pretraining stages' loop: AdamW on the trainable parameters with :func:`lr_scale`, gradient
    clipping at 1, ``batch(step)`` giving the model's keyword arguments (labels included); every
    ``log_every`` steps ``<name>/loss``, ``/lr``, ``/seconds`` to the log ("<name with spaces> step
    N/M", which ``dmms run`` shows as progress) and to ``on_log``. A batch holding ``dmms_kind`` (a
    rehearsal of another stage's data) is trained on and logged as ``<name>/<kind>_loss`` (its last
    value), not as the stage's loss. Returns the logged history."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    device = next(model.parameters()).device
    label = name.replace("_", " ").removesuffix("pretrain") + "pretraining"
    history: list[dict[str, float]] = []
    model.train()
    started = time.perf_counter()
    last: dict[str, float] = {}
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = learning_rate * lr_scale(step, steps)
        kwargs = batch(step)
        kind = kwargs.pop("dmms_kind", None)
        loss = model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        last[f"{name}/{kind}_loss" if kind else f"{name}/loss"] = float(loss.item())
        if (step % log_every == 0 or step == steps) and f"{name}/loss" in last:
            entry = {**last, f"{name}/lr": opt.param_groups[0]["lr"], f"{name}/seconds": time.perf_counter() - started}
            history.append({**entry, "step": step})
            log.info("%s step %d/%d loss %.4f", label, step, steps, entry[f"{name}/loss"])
            if on_log is not None:
                on_log(step, entry)
    model.eval()
    return history


def copy_pretrain(model: Any, processor: Any, conversations: Sequence[Sequence[dict[str, Any]]],
                  config: CopyPretrainConfig,
                  on_log: Callable[[int, dict[str, float]], None] | None = None,
                  rehearse: Callable[[int], dict[str, Any]] | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place for ``config.steps`` steps; return the logged history. With
    ``rehearse`` (a batch function of another stage, e.g. :func:`components.sft.visual.visual_batches`)
    and ``config.rehearse_every`` = N, every N-th step trains on ``rehearse(step)``, so what that stage
    taught is not forgotten (logged as ``copy_pretrain/rehearse_loss``); those steps come on top of
    ``config.steps`` copy steps (the copy circuit needs its ~1,000+)."""
    if rehearse is not None and config.rehearse_every == 1:
        raise ValueError("rehearse_every=1 would leave no copy pretraining step: use 0 (never) or >= 2")
    every = config.rehearse_every if rehearse is not None else 0
    tokenizer = getattr(processor, "tokenizer", processor)
    searched = [m for m in conversations if any(INFO_OPEN in (x["content"] or "") for x in m if x["role"] == "user")]
    if not searched:
        raise ValueError("copy pretraining needs rows with an <information> turn: the dataset has none")
    rng = random.Random(config.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def sequence() -> list[int]:
        if rng.random() < config.synthetic_share:
            text = copy_drill(rng)
        else:
            messages = swap_messages(rng.choice(searched), rng).messages
            if config.answer_share and rng.random() < config.answer_share:
                return fit_answer_segment(tokenizer, *answer_segment(processor, messages), config.max_tokens)
            text = copy_segment(processor, messages)
        return tokenizer.encode(text, add_special_tokens=False)[: config.max_tokens]

    def batch(step: int) -> dict[str, Any]:
        if every and step % every == 0:
            return {**rehearse(step), "dmms_kind": "rehearse"}
        rows = [sequence() for _ in range(config.batch_size)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        att = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            att[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": att, "labels": ids.masked_fill(att == 0, -100)}

    total = config.steps + (config.steps // (every - 1) if every else 0)  # copy steps stay config.steps
    return train_stage(model, "copy_pretrain", total, config.learning_rate, config.log_every, batch, on_log)
