"""Counterfactual rows: swap a row's invented names, numbers and fact phrases for fresh ones, consistently.

Why: a from-scratch model trained on oracle rows can lower its loss by memorising — the entity
name from the image's features, the year from the name — and never learns to read
``<information>``. Test entities never appear in training, so only copying answers them. If every
epoch shows each row with fresh names and values, replaced CONSISTENTLY in every turn (the image
search's summary, the model's reason and text query, the text search's result, the final
answer), memorising no longer lowers the loss and copying from the context is the only way left.

What is swapped, per row, with a fresh draw each time :func:`swap_messages` is called:

- invented words: capitalised words that follow the offline world's syllable grammar
  (:class:`components.world.entities.Namer`: onset + vowel syllables, an optional coda), e.g.
  ``Viath``, ``Brouthozel``, ``Kodiax`` — entity, person and city names. Each distinct word gets a
  fresh word from the world's own name generator (so the tokenizer splits it like a real name);
  the mapping is word-level, so a full name and its short form (``Viath Brouthozel`` /
  ``Brouthozel``) stay consistent. A few template words fit the grammar too (``Gate``, ``Tide``);
  they are swapped consistently as well, which is harmless;
- numbers inside ``<information>`` and in the model's turns (years, heights, counts), each distinct
  number for a fresh one with as many digits (years stay in 1700–1999); never inside
  ``<img_search>`` (a crop box is a position in the image) nor in the template text outside
  ``<information>`` ("9 searches left");
- fact phrases from the world's closed lists (habitats, media), permuted within their list.

Import-only: ``swap_messages(messages, random.Random(seed))``; :class:`CounterfactualTransform`
applies it on the fly to a ``datasets.Dataset`` (``dataset.set_transform``), so every access
— every epoch — draws new names. Tests: ``pytest tests/unit/sft/test_counterfactual.py``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.agent.protocol import INFO_CLOSE, INFO_OPEN
from components.world import entities as world_entities

_ONSET = "|".join(sorted(world_entities._ONSETS, key=len, reverse=True))
_CODA = "|".join(sorted({c for c in world_entities._CODAS if c}, key=len, reverse=True))
# Namer's grammar, relaxed for its near-duplicate variants (one vowel changed: any 1-2 vowels).
_INVENTED = re.compile(rf"^(?:(?:{_ONSET})[aeiou]{{1,2}})+(?:{_CODA})?$")
_WORD = re.compile(r"(?<![A-Za-z])[A-Z][a-z]{3,10}(?![A-Za-z])")
_NUMBER = re.compile(r"(?<![\d.])\d+(?![\d.]*\d)")
_IMG_SEARCH = re.compile(r"<img_search>.*?</img_search>", re.DOTALL)
_INFO = re.compile(re.escape(INFO_OPEN) + r".*?" + re.escape(INFO_CLOSE), re.DOTALL)
PHRASE_LISTS: tuple[tuple[str, ...], ...] = (tuple(world_entities._HABITATS), tuple(world_entities._MEDIA))


def is_invented(word: str) -> bool:
    """True if ``word`` (capitalised, 4-11 letters) follows the world's name grammar."""
    return bool(_WORD.fullmatch(word)) and bool(_INVENTED.match(word.lower()))


@dataclass
class Swap:
    """The row after swapping, and what was swapped for what."""

    messages: list[dict[str, Any]]
    words: dict[str, str]
    numbers: dict[str, str]
    phrases: dict[str, str]


def _fresh_number(old: str, rng: random.Random, used: set[str]) -> str:
    for _ in range(100):
        if len(old) == 4 and old[0] == "1":
            new = str(rng.randint(1700, 1999))
        elif len(old) == 1:
            new = str(rng.randint(1, 9))
        else:
            new = str(rng.randint(10 ** (len(old) - 1), 10 ** len(old) - 1))
        if new not in used:
            used.add(new)
            return new
    return old


def _sub_all(text: str, mapping: Mapping[str, str], pattern: re.Pattern | None) -> str:
    if not mapping or pattern is None:
        return text
    return pattern.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)


def _alternation(keys: Sequence[str], left: str, right: str) -> re.Pattern | None:
    if not keys:
        return None
    body = "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
    return re.compile(f"{left}(?:{body}){right}")


def _number_spans(role: str, text: str) -> list[tuple[int, int]]:
    """Where numbers may be swapped: a user turn's <information> blocks; a model turn except <img_search>."""
    if role == "user":
        return [m.span() for m in _INFO.finditer(text)]
    if role != "assistant":
        return []
    spans, start = [], 0
    for m in _IMG_SEARCH.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    return [*spans, (start, len(text))]


def _swap_numbers(role: str, text: str, mapping: Mapping[str, str]) -> str:
    if not mapping:
        return text
    out, last = [], 0
    for a, b in _number_spans(role, text):
        out.append(text[last:a])
        out.append(_NUMBER.sub(lambda m: mapping.get(m.group(0), m.group(0)), text[a:b]))
        last = b
    out.append(text[last:])
    return "".join(out)


def swap_messages(messages: Sequence[Mapping[str, Any]], rng: random.Random) -> Swap:
    """``messages`` (TRL conversational form, string contents) with invented words, numbers and fact
    phrases swapped for fresh ones, the same way in every turn (see the module docstring)."""
    texts = [(m["role"], m["content"]) for m in messages]
    live = [(r, t) for r, t in texts if r != "system" and isinstance(t, str)]
    words = list(dict.fromkeys(w for _, t in live for w in _WORD.findall(t) if is_invented(w)))
    numbers = list(dict.fromkeys(n for r, t in live for a, b in _number_spans(r, t)
                                 for n in _NUMBER.findall(t[a:b])))
    namer = world_entities.Namer(rng)
    namer.used |= {w.lower() for _, t in live for w in _WORD.findall(t)}
    word_map = {w: namer.word((1, 3)) for w in words}
    used_numbers = set(numbers)
    number_map = {n: _fresh_number(n, rng, used_numbers) for n in numbers}
    phrase_map: dict[str, str] = {}
    for options in PHRASE_LISTS:
        present = [p for p in options if any(p in t for _, t in live)]
        if present:
            shuffled = list(options)
            rng.shuffle(shuffled)
            phrase_map.update({p: shuffled[options.index(p)] for p in present})
    word_re = _alternation(list(word_map), r"(?<![A-Za-z])", r"(?![A-Za-z])")
    phrase_re = _alternation(list(phrase_map), r"(?<![a-z])", r"(?![a-z])")
    out = []
    for m in messages:
        content = m["content"]
        if m["role"] != "system" and isinstance(content, str):
            content = _swap_numbers(m["role"], content, number_map)
            content = _sub_all(content, word_map, word_re)
            content = _sub_all(content, phrase_map, phrase_re)
        out.append({**m, "content": content})
    return Swap(out, word_map, number_map, phrase_map)


ROW_COLUMNS = ("question", "category", "final_answer", "requires_search")  # read here, not by the collator
DIRECT_GIVE_UP_REASON = "This needs a search and I have no search: I cannot tell it from the image alone."


def direct_row(messages: Sequence[Mapping[str, Any]], question: str, requires_search: bool,
               version: str) -> list[dict[str, Any]]:
    """The row as the no-tools baseline (``direct`` mode) sees it: the version's direct prompt, the
    question, and one answer turn — the row's own final answer when it needs no search, else the
    give-up answer (without a search the model cannot know an unseen entity: it should say so)."""
    from components.agent.protocol import GIVE_UP_ANSWER, baseline_messages

    system, user = baseline_messages("direct", question, version=version)
    if requires_search:
        answer = f"<reason>{DIRECT_GIVE_UP_REASON}</reason>\n<answer>{GIVE_UP_ANSWER}</answer>"
    else:
        answer = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
    return [{"role": "system", "content": system["content"]},
            {"role": "user", "content": user["content"][-1]["text"]},
            {"role": "assistant", "content": answer}]


class CounterfactualTransform:
    """A ``datasets`` batch transform: each access swaps each row's ``messages`` afresh.

    ``share`` of the rows are swapped (the rest pass unchanged, so the real world's names still
    appear); the RNG is the transform's own, seeded, so a run is reproducible but no two epochs
    see the same names. With ``redraw_visual`` the world's search-free picture rows (batch columns
    ``category``, ``question``, ``final_answer``) get a fresh image of their kind and the matching
    answer instead (:func:`components.sft.visual.redraw`); names and numbers are never swapped in
    them. With ``direct_share`` that share of the rows (after swapping or redrawing) is shown in the
    no-tools form of evaluation's ``direct`` mode (:func:`direct_row`, prompt ``version``; batch
    columns ``question``, ``requires_search``). The output drops those row columns and keeps the
    rest (``messages``, ``images``, the sampler's ``length``)."""

    def __init__(self, seed: int = 0, share: float = 1.0, redraw_visual: bool = False,
                 direct_share: float = 0.0, version: str = "v1"):
        for name, value in (("counterfactual share", share), ("direct share", direct_share)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.rng, self.share, self.redraw_visual = random.Random(seed), share, redraw_visual
        self.direct_share, self.version = direct_share, version

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        from components.sft.visual import VisualRow, is_visual, redraw

        if "messages" not in batch:  # a column read (the length-grouped sampler reads ``length``)
            return batch
        messages, images = [], list(batch["images"]) if "images" in batch else None
        n = len(batch["messages"])
        categories = batch.get("category") or [None] * n
        questions = batch.get("question") or [None] * n
        for i, (m, category, question) in enumerate(zip(batch["messages"], categories, questions, strict=True)):
            if is_visual(category):
                fresh = redraw(VisualRow(m, question, category, batch["final_answer"][i]),
                               self.rng) if self.redraw_visual and images is not None else None
                if fresh is not None:
                    m, images[i] = fresh[0], [fresh[1]]
                    question = fresh[2]
            elif self.rng.random() < self.share:
                m = swap_messages(m, self.rng).messages
            if self.direct_share and question and self.rng.random() < self.direct_share:
                m = direct_row(m, question, bool(batch["requires_search"][i]), self.version)
            messages.append(m)
        out = {k: v for k, v in batch.items() if k not in ROW_COLUMNS}  # e.g. ``length`` for the sampler
        out["messages"] = messages
        if images is not None:
            out["images"] = images
        return out
