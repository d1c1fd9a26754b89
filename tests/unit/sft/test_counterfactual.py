"""Counterfactual swaps of SFT rows (components/sft/counterfactual.py) on real oracle-shaped rows.

Proves: a name is replaced by the same fresh name in every turn where it occurs (image-search
summary, reason, text query, text-search result, answer), short and full names stay consistent,
numbers are swapped consistently inside <information> and the model's turns but never in a crop
box nor in the template's "N searches left"; fact phrases permute within their list; template
words and the system prompt stay; each call draws new names; the transform swaps on every access.

Run: ``.venv/bin/python -m pytest -q tests/unit/sft/test_counterfactual.py``
"""

from __future__ import annotations

import random
import re

import datasets

from components.sft.counterfactual import CounterfactualTransform, is_invented, swap_messages
from components.world.entities import _HABITATS

SYSTEM = "Answer about the image. Image search once."
ROW = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Question: In what year was the architect of the landmark in this image born?"},
    {"role": "assistant", "content": "<reason>I search a crop.</reason>\n<img_search>[12, 40, 112, 140]</img_search>"},
    {"role": "user", "content": "<information>\nThe image most likely shows Kodiax Tower. Kodiax Tower: The "
     "Kodiax Tower is a tower in the city of Brouthox. It is 112 metres tall. Architect: Viath Drabrukou. "
     "Habitat: mangrove swamps.\n</information>\n\n9 searches left, no image search."},
    {"role": "assistant", "content": "<reason>The image shows Kodiax Tower; now I need its architect.</reason>\n"
     "<text_search>Kodiax Tower architect</text_search>"},
    {"role": "user", "content": "<information>\nViath Drabrukou: Viath Drabrukou (1776–1851) was an architect. "
     "Drabrukou was born in 1776 in the city of Brouthox.\n</information>\n\n8 searches left, no image search."},
    {"role": "assistant", "content": "<reason>The search results state the born year of Viath Drabrukou: "
     "1776.</reason>\n<answer>1776</answer>"},
]


def test_invented_words_follow_the_world_grammar():
    assert all(is_invented(w) for w in ("Kodiax", "Viath", "Drabrukou", "Brouthox"))
    assert not any(is_invented(w) for w in ("Tower", "Architect", "Habitat", "Question", "The", "Image"))


def test_names_are_swapped_the_same_way_in_every_turn():
    swap = swap_messages(ROW, random.Random(0))
    out = [m["content"] for m in swap.messages]
    new = {w: swap.words[w] for w in ("Kodiax", "Viath", "Drabrukou", "Brouthox")}
    assert len(set(new.values())) == 4 and not set(new.values()) & set(new)
    text = "\n".join(out)
    for old in new:
        assert not re.search(rf"(?<![A-Za-z]){old}(?![A-Za-z])", text)
    # image-search summary -> reason -> query: the same fresh entity name
    assert f"most likely shows {new['Kodiax']} Tower" in out[3]
    assert f"<text_search>{new['Kodiax']} Tower architect</text_search>" in out[4]
    # full and short person names stay consistent between the result and the answer turn
    full = f"{new['Viath']} {new['Drabrukou']}"
    assert full in out[3] and full in out[5] and f"{new['Drabrukou']} was born" in out[5]
    assert f"born year of {full}" in out[6]
    assert out[0] == SYSTEM and out[1] == ROW[1]["content"]


def test_numbers_swap_consistently_but_not_in_boxes_or_templates():
    swap = swap_messages(ROW, random.Random(1))
    out = [m["content"] for m in swap.messages]
    year = swap.numbers["1776"]
    assert year != "1776" and 1700 <= int(year) <= 1999
    assert f"({year}–" in out[5] and f"born in {year}" in out[5] and f"<answer>{year}</answer>" in out[6]
    assert "<img_search>[12, 40, 112, 140]</img_search>" in out[2]  # a crop box is a position: kept
    assert f"It is {swap.numbers['112']} metres tall" in out[3]      # the same number inside information
    assert out[3].endswith("9 searches left, no image search.") and out[5].endswith("8 searches left, no image search.")


def test_fact_phrases_permute_within_their_list():
    swaps = [swap_messages(ROW, random.Random(s)) for s in range(20)]
    got = {s.phrases["mangrove swamps"] for s in swaps}
    assert got <= set(_HABITATS) and len(got) > 3
    assert all(f"Habitat: {s.phrases['mangrove swamps']}." in s.messages[3]["content"] for s in swaps)


def test_each_draw_is_fresh_and_a_seed_reproduces():
    a, b = swap_messages(ROW, random.Random(5)), swap_messages(ROW, random.Random(6))
    assert a.words["Kodiax"] != b.words["Kodiax"]
    assert swap_messages(ROW, random.Random(5)).messages == a.messages


def test_transform_swaps_on_every_access():
    ds = datasets.Dataset.from_list([{"messages": ROW, "images": []}])
    ds.set_transform(CounterfactualTransform(seed=0))
    queries = {re.search(r"<text_search>(\w+)", ds[0]["messages"][4]["content"]).group(1) for _ in range(5)}
    assert len(queries) == 5 and "Kodiax" not in queries
    ds.set_transform(CounterfactualTransform(seed=0, share=0.0))
    assert ds[0]["messages"] == ROW


def test_direct_rows_use_the_baseline_prompt_and_give_up_without_search():
    from components.agent.protocol import GIVE_UP_ANSWER, baseline_messages, parse_turn
    from components.sft.counterfactual import direct_row

    question = "In what year was the architect of the landmark in this image born?"
    row = direct_row(ROW, question, True, "t1")
    assert [m["role"] for m in row] == ["system", "user", "assistant"]
    assert row[0]["content"] == baseline_messages("direct", question, version="t1")[0]["content"]
    assert row[1]["content"] == f"Question: {question}"
    turn = parse_turn(row[2]["content"])
    assert turn.valid and turn.answer == GIVE_UP_ANSWER  # no search, an unseen entity: it cannot know
    free = [ROW[0], {"role": "user", "content": "Question: What colour?"},
            {"role": "assistant", "content": "<reason>No search is needed: red.</reason>\n<answer>red</answer>"}]
    assert direct_row(free, "What colour?", False, "t1")[2] == free[2]  # search-free: its own answer


def test_the_transform_shows_a_share_of_rows_in_direct_form():
    batch = {"messages": [ROW] * 200, "images": [[]] * 200, "question": ["Who?"] * 200,
             "category": ["landmark/architect"] * 200, "final_answer": ["1776"] * 200,
             "requires_search": [True] * 200}
    out = CounterfactualTransform(seed=0, share=1.0, direct_share=0.25, version="t1")(batch)
    direct = [m for m in out["messages"] if len(m) == 3]
    assert 30 <= len(direct) <= 70  # ~25 %
    assert all(m[1]["content"] == "Question: Who?" for m in direct)
    assert all(len(m) == len(ROW) for m in out["messages"] if len(m) != 3)
