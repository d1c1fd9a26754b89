"""Seed loaders on small files in the real InfoSeek (JSONL) and FVQA (verl parquet) formats."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.agent.vqa import VQAError, read_vqa
from components.datagen.loaders import load_fvqa, load_infoseek


def _img_bytes(colour: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), colour).save(buf, format=fmt)
    return buf.getvalue()


# ---- InfoSeek ------------------------------------------------------------------------------------
INFOSEEK_ROWS = [
    {"data_id": "infoseek_val_00000000", "image_id": "oven_04990048",
     "question": "Which country does this engine come from?", "answer": ["United Kingdom"],
     "answer_eng": ["United Kingdom", "UK", "Britain"], "data_split": "val_unseen_question"},
    {"data_id": "infoseek_val_00000001", "image_id": "oven_01000001",
     "question": "How tall is this building in metres?",
     "answer": [{"wikidata": 324.0, "range": [291.6, 356.4]}],
     "answer_eng": [{"wikidata": 324.0, "range": [291.6, 356.4]}], "data_split": "val_unseen_entity"},
    {"data_id": "infoseek_val_00000002", "image_id": "oven_04990048",
     "question": "Who manufactured this engine?", "answer": ["Rolls-Royce"],
     "answer_eng": ["Rolls-Royce", "Rolls-Royce Limited"], "data_split": "val_unseen_question",
     "entity_id": "Q178185"},
    {"data_id": "infoseek_val_00000003", "image_id": "oven_02000002",
     "question": "What is the length of this river in kilometres?", "answer": ["2.5"],
     "answer_eng": ["2.5"], "data_split": "val_unseen_entity"},
]


@pytest.fixture
def infoseek(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "oven_images"
    (images / "04").mkdir(parents=True)
    (images / "04" / "oven_04990048.jpg").write_bytes(_img_bytes((200, 10, 10)))  # in a shard folder
    (images / "oven_01000001.JPEG").write_bytes(_img_bytes((10, 200, 10)))
    (images / "oven_02000002.png").write_bytes(_img_bytes((10, 10, 200), "PNG"))
    jsonl = tmp_path / "infoseek_val.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in INFOSEEK_ROWS))
    return jsonl, images


def test_infoseek_converts_answers_aliases_numbers_and_images(infoseek, tmp_path):
    jsonl, images = infoseek
    items = load_infoseek(jsonl, images, tmp_path / "out")
    assert [i.id for i in items] == [r["data_id"] for r in INFOSEEK_ROWS]
    assert items[0].answers == ["United Kingdom", "UK", "Britain"]
    assert items[1].answers == ["324"]
    assert items[2].answers == ["Rolls-Royce", "Rolls-Royce Limited"] and items[2].entity == "Q178185"
    assert items[3].answers == ["2.5"]
    assert items[0].image == items[2].image == "images/oven_04990048.jpg"  # one file for a shared image
    assert read_vqa(tmp_path / "out") == items
    assert (tmp_path / "out" / items[0].image).read_bytes() == (images / "04" / "oven_04990048.jpg").read_bytes()
    assert len(load_infoseek(jsonl, images, tmp_path / "lim", limit=2)) == 2


def test_infoseek_with_id2image_mapping(infoseek, tmp_path):
    jsonl, images = infoseek
    other = tmp_path / "elsewhere"
    other.mkdir()
    for r in INFOSEEK_ROWS:
        (other / f"{r['image_id']}.bin.jpg").write_bytes(_img_bytes((1, 2, 3)))
    mapping = tmp_path / "id2image.jsonl"
    mapping.write_text("".join(json.dumps({"image_id": r["image_id"], "image_path": f"elsewhere/{r['image_id']}.bin.jpg"})
                               + "\n" for r in INFOSEEK_ROWS))
    items = load_infoseek(jsonl, other, tmp_path / "out", id2image=mapping)
    assert len(items) == 4 and all(i.image.endswith(".jpg") for i in items)


@pytest.mark.parametrize("bad_line,message", [
    ('{"data_id": "x", "image_id": "oven_01000001", "question": "q", "answer": [', ":5: not valid JSON"),
    ('{"data_id": "x", "image_id": "oven_01000001", "answer": ["a"]}', ":5: missing question"),
    ('{"data_id": "x", "image_id": "oven_99999999", "question": "q", "answer": ["a"]}',
     ":5: image 'oven_99999999' not found"),
    ('{"data_id": "x", "image_id": "oven_01000001", "question": "q", "answer": []}', ":5: no usable answer"),
    ('{"data_id": "infoseek_val_00000000", "image_id": "oven_01000001", "question": "q", "answer": ["a"]}',
     ":5: data_id 'infoseek_val_00000000' repeats an earlier row"),
])
def test_infoseek_corrupt_rows_stop_with_the_line_and_write_nothing(infoseek, tmp_path, bad_line, message):
    jsonl, images = infoseek
    jsonl.write_text(jsonl.read_text() + bad_line + "\n")
    with pytest.raises(VQAError) as err:
        load_infoseek(jsonl, images, tmp_path / "out")
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# ---- FVQA ------------------------------------------------------------------------------------------
def _fvqa_table(rows: list[dict]) -> pa.Table:
    schema = pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("reward_model", pa.struct([("candidate_answers", pa.list_(pa.string())), ("ground_truth", pa.string()),
                                    ("style", pa.string())])),
        ("image_urls", pa.string()),
        ("category", pa.string()),
        ("data_id", pa.string()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def _fvqa_row(i: int, image: bytes, category: str, question: str, truth: str, cands: list[str]) -> dict:
    return {"data_source": "mmsearch_r1/fvqa_train", "data_id": f"fvqa_train_{i}",
            "prompt": [{"content": f"<image>\n{question}", "role": "user"}],
            "images": [{"bytes": image, "path": None}],
            "reward_model": {"candidate_answers": cands, "ground_truth": truth, "style": "rule"},
            "image_urls": f"https://example.org/{i}.jpg", "category": category}


def test_fvqa_parquet_with_image_bytes(tmp_path):
    jpg, png = _img_bytes((200, 100, 0)), _img_bytes((0, 100, 200), "PNG")
    rows = [_fvqa_row(0, jpg, "search_required", "Who designed this tower?", "Gustave Eiffel", ["Eiffel"]),
            _fvqa_row(1, png, "search_free", "What animal is this?", "cat", []),
            _fvqa_row(2, jpg, "unlabelled", "Which year?", "1889", ["1889", "in 1889"])]
    path = tmp_path / "fvqa_train.parquet"
    pq.write_table(_fvqa_table(rows), path)
    items = load_fvqa(path, tmp_path / "out")
    assert [i.id for i in items] == ["fvqa_train_0", "fvqa_train_1", "fvqa_train_2"]
    assert items[0].question == "Who designed this tower?"
    assert items[0].answers == ["Gustave Eiffel", "Eiffel"] and items[2].answers == ["1889", "in 1889"]
    assert [i.requires_search for i in items] == [True, False, None]
    assert items[0].image.endswith(".jpg") and items[1].image.endswith(".png")
    assert (tmp_path / "out" / items[1].image).read_bytes() == png
    assert read_vqa(tmp_path / "out") == items


def test_fvqa_corrupt_image_names_the_row(tmp_path):
    rows = [_fvqa_row(0, _img_bytes((1, 1, 1)), "search_free", "q?", "a", []),
            _fvqa_row(1, b"not an image", "search_free", "q?", "a", [])]
    path = tmp_path / "bad.parquet"
    pq.write_table(_fvqa_table(rows), path)
    with pytest.raises(VQAError, match="row 1: image bytes do not decode"):
        load_fvqa(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 nonsense")
    with pytest.raises(VQAError, match="not a readable parquet"):
        load_fvqa(tmp_path / "junk.parquet", tmp_path / "out")


def test_fvqa_jsonl_with_image_files(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(_img_bytes((5, 5, 5)))
    rows = [{"data_id": "fvqa_test_7", "prompt": [{"role": "user", "content": "Where is this?"}],
             "images": ["imgs/a.jpg"], "reward_model": {"ground_truth": "Paris", "candidate_answers": '["Paris, France"]'},
             "category": "search_required"},
            {"data_id": "fvqa_test_8", "prompt": "What is it?", "images": ["imgs/missing.jpg"],
             "reward_model": {"ground_truth": "x"}}]
    path = tmp_path / "fvqa_test.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    items = load_fvqa(path, tmp_path / "out")
    assert items[0].answers == ["Paris", "Paris, France"] and items[0].requires_search is True
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(VQAError, match=r"fvqa_test.jsonl:2: image file .*missing.jpg not found"):
        load_fvqa(path, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
