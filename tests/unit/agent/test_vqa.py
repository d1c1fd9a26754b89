"""The VQA-set format: round trip, and corrupt files refused with the file and line named."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from components.agent.vqa import VQAError, VQAItem, read_vqa, write_vqa


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def vqa_set(tmp_path) -> Path:
    src = tmp_path / "src.png"
    src.write_bytes(_png((0, 0, 255)))
    items = [
        VQAItem(id="a", image="images/a.png", question="What colour?", answers=["red", "in red"],
                requires_search=False, category="visual/colour"),
        {"id": "b", "image": "images/b.png", "question": "Who?", "answers": ["Ada"], "entity": "e1"},
        {"id": "c", "image": "images/c.png", "question": "Where?", "answers": ["Oslo"], "requires_search": True},
        {"id": "d", "image": "images/a.png", "question": "Shape?", "answers": ["circle"]},  # shared image
    ]
    images = {"images/a.png": Image.new("RGB", (8, 8), (255, 0, 0)), "images/b.png": _png((0, 255, 0)),
              "images/c.png": src}
    return write_vqa(items, images, tmp_path / "set")


def test_round_trip(vqa_set):
    items = read_vqa(vqa_set)
    assert [i.id for i in items] == ["a", "b", "c", "d"]
    assert items[0].answers == ["red", "in red"] and items[0].requires_search is False
    assert items[1].entity == "e1" and items[2].requires_search is True and items[1].category is None
    assert Image.open(vqa_set / "images/a.png").getpixel((0, 0)) == (255, 0, 0)
    assert Image.open(vqa_set / "images/c.png").getpixel((0, 0)) == (0, 0, 255)
    assert read_vqa(vqa_set / "vqa.jsonl") == items
    assert sorted(p.name for p in vqa_set.parent.iterdir()) == ["set", "src.png"]  # no temp folder left


def _corrupt(vqa_set: Path, line: int, text: str) -> None:
    lines = (vqa_set / "vqa.jsonl").read_text().splitlines()
    lines[line - 1] = text
    (vqa_set / "vqa.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("line,text,message", [
    (2, '{"id": "b", "image": ', "vqa.jsonl:2: not valid JSON"),
    (3, '{"id": "c", "image": "images/c.png", "answers": ["x"]}', "vqa.jsonl:3: question: Field required"),
    (1, '{"id": "a", "image": "images/a.png", "question": "q", "answers": []}', "vqa.jsonl:1: answers"),
    (2, '{"id": "b", "image": "images/zz.png", "question": "q", "answers": ["x"]}',
     "vqa.jsonl:2: image 'images/zz.png' not found"),
    (3, '{"id": "a", "image": "images/c.png", "question": "q", "answers": ["x"]}',
     "vqa.jsonl:3: id 'a' already used on line 1"),
    (1, '["not", "an", "object"]', "vqa.jsonl:1: expected a JSON object"),
    (1, '{"id": "a", "image": "../a.png", "question": "q", "answers": ["x"]}', "inside the set's folder"),
])
def test_corrupt_files_are_refused_naming_file_and_line(vqa_set, line, text, message):
    _corrupt(vqa_set, line, text)
    with pytest.raises(VQAError) as err:
        read_vqa(vqa_set)
    assert message in str(err.value) and str(vqa_set) in str(err.value)


def test_missing_file_and_bad_writes(tmp_path, vqa_set):
    with pytest.raises(VQAError, match="does not exist"):
        read_vqa(tmp_path / "nowhere")
    item = {"id": "x", "image": "images/x.png", "question": "q", "answers": ["a"]}
    with pytest.raises(VQAError, match="no image given"):
        write_vqa([item], {}, tmp_path / "new")
    with pytest.raises(VQAError, match="repeated item id"):
        write_vqa([item, item], {"images/x.png": _png((1, 2, 3))}, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(VQAError, match="not a VQA set"):
        write_vqa([item], {"images/x.png": _png((1, 2, 3))}, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    write_vqa([item], {"images/x.png": _png((1, 2, 3))}, vqa_set)  # replacing a VQA set is fine
    assert [i.id for i in read_vqa(vqa_set)] == ["x"]
    assert json.loads((vqa_set / "vqa.jsonl").read_text())["answers"] == ["a"]
