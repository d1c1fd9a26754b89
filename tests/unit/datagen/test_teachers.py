"""Teachers: the oracle plans like a good model and answers only from what the tools returned;
the llm teacher's endpoint probe; taxonomy classification through an OpenAI-JSON server on loopback."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from components.agent.generators.base import GenRequest
from components.agent.protocol import GIVE_UP_ANSWER, Action, ActionKind, initial_messages, parse_turn
from components.agent.vqa import VQAItem, read_vqa
from components.common.settings import Settings
from components.datagen.oracle import (
    Gold,
    OracleError,
    OracleGenerator,
    candidates,
    extract,
    load_world,
    plan_turn,
)
from components.datagen.teachers import (
    UNCATEGORISED,
    TeacherError,
    assign_categories,
    make_teacher,
    parse_category,
    probe_endpoint,
    world_path,
)
from tests.support import free_port

NAMES = ["Gleimul Palace", "Chilaith Bridge", "Stou Siadrer", "Faitrem Mobugol"]
TEXT_INFO = ("Stou Siadrer: Stou Siadrer (1861–1944) was an architect. Full name: Stou Siadrer. "
             "Gleimul Palace: It was designed by the architect Stou Siadrer and completed in 1902. "
             "Architect: Stou Siadrer. Completed: 1902. Chilaith Bridge: It was designed by the architect "
             "Faitrem Mobugol and completed in 1974. Completed: 1974.")
IMAGE_INFO = "The image most likely shows Gleimul Palace. Gleimul Palace: The Gleimul Palace is a palace."


def _gold(**kw) -> Gold:
    base = dict(id="q1", question="In what year was the landmark in this image completed?", requires_search=True,
                category="landmark/architecture", entity_name="Gleimul Palace", chain=("completed_year",),
                region=None, crop_box=None)
    return Gold(**{**base, **kw})


def _img_search() -> Action:
    return Action(kind=ActionKind.IMAGE_SEARCH, reason="r")


def _text(q: str) -> Action:
    return Action(kind=ActionKind.TEXT_SEARCH, reason="r", query=q)


def test_extract_reads_only_the_subjects_section():
    assert extract(TEXT_INFO, "Gleimul Palace", "completed_year", NAMES) == "1902"
    assert extract(TEXT_INFO, "Chilaith Bridge", "completed_year", NAMES) == "1974"
    assert extract(TEXT_INFO, "Gleimul Palace", "architect", NAMES) == "Stou Siadrer"
    assert extract(TEXT_INFO, "Stou Siadrer", "completed_year", NAMES) is None
    assert extract(TEXT_INFO, "Stou Siadrer", "occupation", NAMES) == "architect"
    assert candidates(IMAGE_INFO + " Stou Siadrer", NAMES) == ["Gleimul Palace", "Stou Siadrer"]


def test_plan_searches_the_image_then_text_then_answers_from_the_result():
    img = Image.new("RGB", (64, 64))
    first = plan_turn(_gold(), img, [], NAMES)
    assert first.kind == ActionKind.IMAGE_SEARCH
    second = plan_turn(_gold(), img, [(first, IMAGE_INFO)], NAMES)
    assert second.kind == ActionKind.TEXT_SEARCH and second.query.startswith("Gleimul Palace")
    third = plan_turn(_gold(), img, [(first, IMAGE_INFO), (second, TEXT_INFO)], NAMES)
    assert third.kind == ActionKind.ANSWER and third.answer == "1902"


def test_answer_comes_from_what_the_tools_returned_not_from_gold():
    lying = TEXT_INFO.replace("1902", "1777")  # the tool says 1777: the oracle repeats the tool
    act = plan_turn(_gold(), Image.new("RGB", (8, 8)), [(_img_search(), IMAGE_INFO), (_text("q"), lying)], NAMES)
    assert act.answer == "1777"


def test_a_miss_is_requeried_then_given_up():
    img, hist = Image.new("RGB", (8, 8)), [(_img_search(), IMAGE_INFO)]
    queries = []
    for _ in range(3):
        act = plan_turn(_gold(), img, hist, NAMES, requeries=2)
        assert act.kind == ActionKind.TEXT_SEARCH
        queries.append(act.query)
        hist.append((act, "Chilaith Bridge: Completed: 1974."))
    assert len(set(queries)) == 3  # each re-query is a different query
    assert plan_turn(_gold(), img, hist, NAMES, requeries=2).answer == GIVE_UP_ANSWER


def test_wrong_identification_follows_the_top_result():
    info = "The image most likely shows Chilaith Bridge. Chilaith Bridge: a bridge."
    act = plan_turn(_gold(), Image.new("RGB", (8, 8)), [(_img_search(), info)], NAMES)
    assert act.query.startswith("Chilaith Bridge")
    empty = plan_turn(_gold(), Image.new("RGB", (8, 8)), [(_img_search(), "No results.")], NAMES)
    assert empty.answer == GIVE_UP_ANSWER


def test_multihop_follows_the_chain():
    gold = _gold(chain=("architect", "birth_city"), question="In which city was the architect of the landmark "
                 "in this image born?")
    img = Image.new("RGB", (8, 8))
    hist = [(_img_search(), IMAGE_INFO), (_text("Gleimul Palace architect"), TEXT_INFO)]
    act = plan_turn(gold, img, hist, NAMES)
    assert act.kind == ActionKind.TEXT_SEARCH and act.query.startswith("Stou Siadrer")
    hist.append((act, "Stou Siadrer: Siadrer was born in 1861 in the city of Stireplel. Born: Stireplel, 1861."))
    assert plan_turn(gold, img, hist, NAMES).answer == "Stireplel"


def test_crop_search_uses_box_or_region_phrase():
    q = "In what year was the building on the left of this image completed?"
    acts = [plan_turn(_gold(id=f"q{i}", question=q, region="left", crop_box=(0, 0, 100, 200)),
                      Image.new("RGB", (8, 8)), [], NAMES) for i in range(6)]
    assert all(a.kind == ActionKind.CROP_SEARCH for a in acts)
    regions = {json.dumps(a.region) for a in acts}
    assert '"the building on the left"' in regions and "[0.0, 0.0, 100.0, 200.0]" in regions


async def test_oracle_boxes_are_in_the_frame_the_prompt_states(world):
    """world.json keeps crop boxes in original pixels; the oracle writes them in the frame the first
    user turn states (v2/t2), as a model that sees the resized image would, and the loop's rescale
    (components/agent/frame.py) brings them back to the same pixels."""
    from components.agent.frame import Frame

    data = json.loads((world / "world.json").read_text())
    gold = {q["id"]: q for q in data["questions"]}
    boxed = []
    for split in ("train", "val", "test"):
        items = read_vqa(world / "vqa" / split)
        gen = OracleGenerator(load_world(world / "world.json"), items, world / "vqa" / split)
        boxed += [(gen, world / "vqa" / split, i) for i in items
                  if gold[i.id].get("crop_box") and int(i.id.encode().hex(), 16) % 2 == 0]
    assert boxed, "the test world has no question the oracle answers with a crop box"
    for gen, root, item in boxed[:3]:
        img = Image.open(root / item.image).convert("RGB")
        frame = Frame.of(img.size, 12544)
        for version, expect in (("v2", frame.from_pixels(gold[item.id]["crop_box"])),
                                ("v1", [float(v) for v in gold[item.id]["crop_box"]])):
            out = (await gen.generate([GenRequest(images=[img], messages=initial_messages(
                item.question, version, image_size=frame.size))]))[0]
            action = parse_turn(out.text)
            assert action.kind == ActionKind.CROP_SEARCH and action.region == expect, (version, out.text)
        in_frame = frame.from_pixels(gold[item.id]["crop_box"])
        assert frame.to_pixels(in_frame) == pytest.approx(gold[item.id]["crop_box"], abs=img.width / frame.width)


def test_search_free_answers_from_the_pixels_without_searching():
    from components.world.visual import VISUAL_KINDS, make_visual

    rng = random.Random(0)
    for kind in VISUAL_KINDS:
        img, question, answers, category = make_visual(kind, rng)
        gold = _gold(requires_search=False, category=category, question=question, entity_name=None, chain=())
        act = plan_turn(gold, img, [], NAMES)
        assert act.kind == ActionKind.ANSWER and act.answer == answers[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from components.world.make import make_world

    root = tmp_path_factory.mktemp("tw") / "world"
    make_world(root, n_entities=10, seed=1)
    return root


async def test_oracle_generator_emits_protocol_turns(world):
    items = read_vqa(world / "vqa" / "train")
    gen = OracleGenerator(load_world(world / "world.json"), items, world / "vqa" / "train")
    reqs = []
    for item in items[:5]:
        img = Image.open(world / "vqa" / "train" / item.image).convert("RGB")
        reqs.append(GenRequest(images=[img], messages=initial_messages(item.question)))
    reqs.append(GenRequest(images=[Image.new("RGB", (8, 8))], messages=initial_messages("What is this?")))
    outs = await gen.generate(reqs)
    for item, out in zip(items[:5], outs, strict=False):
        action = parse_turn(out.text)
        assert action.valid and out.text.endswith(out.stop)
        assert (action.kind == ActionKind.ANSWER) == (not item.requires_search)
    assert outs[-1].error and "unknown question" in outs[-1].error


def test_oracle_refuses_seed_data_outside_its_world(world, tmp_path):
    item = VQAItem(id="zz", image="a.png", question="q?", answers=["a"])
    with pytest.raises(OracleError, match="not questions of this world"):
        OracleGenerator(load_world(world / "world.json"), [item], tmp_path)
    (tmp_path / "world.json").write_text("{}")
    with pytest.raises(OracleError, match="not a world.json"):
        load_world(tmp_path / "world.json")


def test_world_path_is_found_above_the_split_or_named_by_settings(world, tmp_path):
    assert world_path(Settings(profile="tiny"), world / "vqa" / "train") == world / "world.json"
    with pytest.raises(TeacherError, match="DMMS_DATAGEN__WORLD"):
        world_path(Settings(profile="tiny"), tmp_path)


async def test_unknown_teacher_and_unconfigured_llm_are_clear_errors(world):
    with pytest.raises(TeacherError, match="unknown teacher 'gpt'"):
        await make_teacher(Settings(profile="tiny"), "gpt", [], world)
    with pytest.raises(TeacherError, match="DMMS_TEACHER__BASE_URL"):
        await make_teacher(Settings(profile="tiny"), "llm", [], world)


async def test_probe_of_a_closed_port_names_the_endpoint():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(TeacherError, match=f"teacher endpoint {url} does not answer"):
        await probe_endpoint(Settings(profile="tiny", teacher={"base_url": url, "max_retries": 0}))


async def test_llm_teacher_probe_passes_against_a_live_endpoint(openai_server):
    settings = Settings(profile="tiny", teacher={"base_url": openai_server.base_url, "model": "t"})
    gen = await make_teacher(settings, "llm", [], None)
    assert gen.name == "openai"
    await gen.aclose()
    assert openai_server.requests[0]["body"]["model"] == "t"


def test_parse_category():
    assert parse_category("people") == "people"
    assert parse_category("Category: Visual/Count.") == "visual/count"
    assert parse_category("no idea") == "other"


async def test_missing_categories_are_classified_by_the_teacher_endpoint(openai_server):
    openai_server.responder = lambda body: "food" if "soup" in body["messages"][0]["content"] else "sports"
    items = [VQAItem(id="a", image="a.png", question="What soup is this?", answers=["borscht"]),
             VQAItem(id="b", image="b.png", question="Which team plays here?", answers=["X"]),
             VQAItem(id="c", image="c.png", question="q", answers=["y"], category="people")]
    settings = Settings(profile="tiny", teacher={"base_url": openai_server.base_url, "model": "t"})
    assert await assign_categories(settings, items) == {"a": "food", "b": "sports", "c": "people"}
    assert len(openai_server.requests) == 2
    assert "- nature/species" in openai_server.requests[0]["body"]["messages"][0]["content"]
    assert await assign_categories(Settings(profile="tiny"), items[:1]) == {"a": UNCATEGORISED}


def test_a_fact_in_the_image_summary_is_answered_from_it_unless_summary_answers_is_off():
    img = Image.new("RGB", (8, 8))
    info = IMAGE_INFO + " It was completed in 1902. Completed: 1902."
    hist = [(_img_search(), info)]
    assert plan_turn(_gold(), img, hist, NAMES).answer == "1902"  # what a good model does
    act = plan_turn(_gold(), img, hist, NAMES, summary_answers=False)  # text-first: copy the name first
    assert act.kind == ActionKind.TEXT_SEARCH and act.query.startswith("Gleimul Palace")
    hist.append((act, TEXT_INFO))
    assert plan_turn(_gold(), img, hist, NAMES, summary_answers=False).answer == "1902"


def test_quoting_oracle_writes_the_pages_own_words_before_the_value():
    """With ``quote`` the final reason repeats the words of the returned page that state the value
    (``completed in 1902``), so in the reason the value follows the same tokens as in <information>;
    the answer is the same as without quoting, and the quote comes from the subject's own section."""
    img = Image.new("RGB", (8, 8))
    hist = [(_img_search(), IMAGE_INFO), (_text("Gleimul Palace completed year"), TEXT_INFO)]
    plain = plan_turn(_gold(), img, hist, NAMES)
    quoted = plan_turn(_gold(), img, hist, NAMES, quote=True)
    assert plain.answer == quoted.answer == "1902"
    words = quoted.reason.split("state: ", 1)[1].rstrip(".")
    assert words == "completed in 1902" and words in TEXT_INFO and words not in plain.reason
    gold = _gold(chain=("architect", "birth_city"))
    hist = [(_img_search(), IMAGE_INFO), (_text("Gleimul Palace architect"), TEXT_INFO),
            (_text("Stou Siadrer born city"), "Stou Siadrer: Born: Stireplel, 1861.")]
    act = plan_turn(gold, img, hist, NAMES, quote=True)
    assert act.answer == "Stireplel" and act.reason.endswith("Born: Stireplel.")  # no dangling comma
    assert parse_turn(f"<reason>{act.reason}</reason>\n<answer>{act.answer}</answer>").answer == "Stireplel"
