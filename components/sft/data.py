"""The SFT step's training rows: length check (no silent truncation), counterfactual swaps, tokenizer corpus.

Why: TRL's vision collator truncates every conversation to ``max_length`` without a word, which
cuts the final answer off the longest (multi-hop) rows; we measure each row's tokenised length
(image pads included) once and DROP the rows that do not fit, with the count logged and returned
for MLflow. A margin of ``sft.length_margin`` tokens is kept free because counterfactual swapping
(:mod:`components.sft.counterfactual`) may draw names a few tokens longer than the originals.

The tiny profile's from-scratch tokenizer is trained on the dataset's own text
(:func:`tokenizer_corpus`): the pages, names and prompt templates the rows carry, with the
invented names swapped for fresh ones so the BPE learns syllables rather than whole world names.

Import-only; tests: ``pytest tests/unit/sft/test_data.py``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from components.sft.counterfactual import ROW_COLUMNS, CounterfactualTransform, swap_messages

log = logging.getLogger(__name__)
TRAIN_COLUMNS = ("messages", "images", "length")  # length: tokens, for the length-grouped sampler


@dataclass
class PreparedRows:
    """The rows to train on and what was done to get them."""

    dataset: Any
    rows: int
    dropped_too_long: int
    max_tokens: int
    mean_tokens: float
    counterfactual_share: float
    redraw_visual: bool = False
    direct_share: float = 0.0


def _with_image(messages: Sequence[dict[str, Any]], n_images: int) -> list[dict[str, Any]]:
    """The first user turn with its image element(s) in front, as the chat template wants it."""
    out = [dict(m) for m in messages]
    first = next((i for i, m in enumerate(out) if m["role"] == "user"), None)
    if first is not None and n_images:
        out[first] = {"role": "user", "content": [*({"type": "image"} for _ in range(n_images)),
                                                  {"type": "text", "text": out[first]["content"]}]}
    return out


def row_tokens(processor: Any, messages: Sequence[dict[str, Any]], images: Sequence[Any]) -> int:
    """Tokens of one conversation as the trainer sees it (rendered with the chat template, image
    pads expanded by the processor)."""
    text = processor.apply_chat_template(_with_image(messages, len(images)), tokenize=False)
    if images:
        enc = processor(text=[text], images=list(images), return_tensors="pt")
    else:
        tokenizer = getattr(processor, "tokenizer", processor)
        enc = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    return int(enc["input_ids"].shape[1])


def prepare_rows(dataset: Any, processor: Any, max_length: int, margin: int = 0,
                 counterfactual_share: float = 0.0, seed: int = 0, redraw_visual: bool = False,
                 direct_share: float = 0.0, prompt_version: str = "v1") -> PreparedRows:
    """``dataset`` reduced to the training columns, rows longer than ``max_length - margin`` tokens
    dropped (counted), and — with ``counterfactual_share > 0`` — swapped on the fly on every access;
    with ``redraw_visual`` the search-free picture rows get a fresh image on every access
    (:mod:`components.sft.visual`); with ``direct_share`` that share of rows is shown in the no-tools
    ``direct`` form (prompt ``prompt_version``, :func:`components.sft.counterfactual.direct_row`)."""
    limit = max_length - margin
    if limit < 16:
        raise ValueError(f"sft.max_length {max_length} minus sft.length_margin {margin} leaves no room: "
                         "raise DMMS_SFT__MAX_LENGTH")
    lengths = [row_tokens(processor, m, imgs) for m, imgs in zip(dataset["messages"], dataset["images"],
                                                                  strict=True)]
    keep = [i for i, n in enumerate(lengths) if n <= limit]
    dropped = len(lengths) - len(keep)
    if not keep:
        raise ValueError(f"every SFT row is longer than {limit} tokens (sft.max_length {max_length} - "
                         f"sft.length_margin {margin}; longest {max(lengths)}): raise DMMS_SFT__MAX_LENGTH")
    if dropped:
        log.warning("SFT: dropped %d of %d rows longer than %d tokens (max_length %d - margin %d; longest %d); "
                    "raise DMMS_SFT__MAX_LENGTH to keep them", dropped, len(lengths), limit, max_length,
                    margin, max(lengths))
    train = dataset.select(keep) if dropped else dataset
    if "length" in train.column_names:
        train = train.remove_columns("length")
    train = train.add_column("length", [lengths[i] for i in keep])
    has_row_columns = all(c in train.column_names for c in ROW_COLUMNS)
    if (redraw_visual or direct_share) and not has_row_columns:
        log.warning("SFT: the dataset lacks %s: no visual redraws, no direct rows", ", ".join(ROW_COLUMNS))
        redraw_visual, direct_share = False, 0.0
    extra = list(ROW_COLUMNS) if (redraw_visual or direct_share) else []
    train = train.select_columns(list(TRAIN_COLUMNS) + extra)
    if counterfactual_share > 0 or redraw_visual or direct_share:
        train.set_transform(CounterfactualTransform(seed=seed, share=counterfactual_share,
                                                    redraw_visual=redraw_visual, direct_share=direct_share,
                                                    version=prompt_version))
    log.info("SFT rows: %d kept, %d dropped as too long, tokens mean %.0f max %d, counterfactual share %.2f, "
             "visual rows redrawn: %s, direct share %.2f", len(keep), dropped, sum(lengths) / len(lengths),
             max(lengths), counterfactual_share, redraw_visual, direct_share)
    return PreparedRows(train, len(keep), dropped, max(lengths), sum(lengths) / len(lengths),
                        counterfactual_share, redraw_visual, direct_share)


def tokenizer_corpus(conversations: Iterable[Sequence[dict[str, Any]]], swaps: int = 3,
                     seed: int = 0) -> list[str]:
    """Lines for the tiny tokenizer: every conversation's text (system prompt once), each rendered
    ``swaps`` times with fresh counterfactual names, so merges cover syllables, not whole names."""
    rng = random.Random(seed)
    lines: list[str] = []
    systems: set[str] = set()
    for messages in conversations:
        for m in messages:
            if m["role"] == "system" and m["content"] not in systems:
                systems.add(m["content"])
                lines.append(m["content"])
        for _ in range(swaps):
            lines += [m["content"] for m in swap_messages(messages, rng).messages if m["role"] != "system"]
    return lines
