"""Benchmark loaders read small files written here in each benchmark's released format."""

from __future__ import annotations

import base64
import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.evaluate.benchmarks import (
    BenchmarkError,
    convert_benchmark,
    load_vqa_folder,
    subsample,
)


def _png(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(path, colour=(30, 200, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path, format="JPEG")


def test_infoseek_jsonl(tmp_path):
    src = tmp_path / "src"
    _jpg(src / "images" / "oven_00000001.jpg")
    _jpg(src / "images" / "oven_00000002.jpg")
    rows = [{"data_id": "val_00000000", "image_id": "oven_00000001", "question": "Which country is this in?",
             "answer": ["France", "French Republic"], "answer_eng": ["France", "French Republic"],
             "data_split": "val_unseen_question"},
            {"data_id": "val_00000001", "image_id": "oven_00000002", "question": "How tall is it?",
             "answer": ["300"], "answer_eng": ["300"], "answer_eval": [{"wikidata": 300.0, "range": [270, 330]}],
             "data_split": "val_unseen_entity"},
            {"data_id": "val_00000002", "image_id": "oven_missing", "question": "Q?", "answer": ["x"],
             "answer_eng": ["x"], "data_split": "val_unseen_entity"}]
    src.joinpath("infoseek_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = convert_benchmark("infoseek", src, tmp_path / "out")
    assert [i.id for i in bench.items] == ["infoseek-val_00000000", "infoseek-val_00000001"]  # no image: skipped
    assert bench.items[0].answers == ["France", "French Republic"]
    assert bench.items[1].category == "val_unseen_entity"
    again = load_vqa_folder(tmp_path / "out")
    assert again.version == bench.version and len(again.items) == 2


def test_encvqa_csv_answers_and_first_image(tmp_path):
    src = tmp_path / "src"
    _jpg(src / "landmarks" / "abc123.jpg")
    with (src / "test.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["question", "answer", "dataset_image_ids", "dataset_name",
                                           "dataset_category_id", "question_type", "wikipedia_url",
                                           "wikipedia_title", "encyclopedic_vqa_split"])
        w.writeheader()
        w.writerow({"question": "Who designed this building?", "answer": "Gustave Eiffel|Eiffel",
                    "dataset_image_ids": "abc123|def456", "dataset_name": "landmarks",
                    "dataset_category_id": "7", "question_type": "templated",
                    "wikipedia_url": "https://en.wikipedia.org/wiki/Eiffel_Tower",
                    "wikipedia_title": "Eiffel Tower", "encyclopedic_vqa_split": "test"})
        w.writerow({"question": "Which colours?", "answer": "red&&white", "dataset_image_ids": "abc123",
                    "dataset_name": "landmarks", "dataset_category_id": "7", "question_type": "multi_answer",
                    "wikipedia_url": "u", "wikipedia_title": "T", "encyclopedic_vqa_split": "test"})
    bench = convert_benchmark("encvqa", src, tmp_path / "out")
    assert bench.items[0].answers == ["Gustave Eiffel", "Eiffel"]
    assert bench.items[0].entity == "Eiffel Tower" and bench.items[0].category == "templated"
    assert bench.items[1].answers == ["red, white"]


def test_simplevqa_keeps_english_only_from_parquet_with_image_bytes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = [{"data_id": 1, "image": {"bytes": _png(), "path": None}, "image_description": "",
             "language": "EN", "question": "What animal is this?", "answer": "cat", "original_category": "x",
             "source": "s", "atomic_question": "", "atomic_fact": "", "vqa_category": "animals"},
            {"data_id": 2, "image": {"bytes": _png(), "path": None}, "image_description": "",
             "language": "CN", "question": "这是什么动物？", "answer": "猫", "original_category": "x",
             "source": "s", "atomic_question": "", "atomic_fact": "", "vqa_category": "animals"}]
    pq.write_table(pa.Table.from_pylist(rows), src / "test-00000-of-00001.parquet")
    bench = convert_benchmark("simplevqa", src, tmp_path / "out")
    assert [(i.question, i.answers, i.category) for i in bench.items] == [
        ("What animal is this?", ["cat"], "animals")]
    with Image.open(tmp_path / "out" / bench.items[0].image) as img:
        assert img.size == (16, 16)


def test_simplevqa_json_with_base64_image(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = [{"data_id": 9, "image": base64.b64encode(_png()).decode(), "language": "EN",
             "question": "Which city?", "answer": "Paris", "vqa_category": "places"}]
    src.joinpath("simplevqa.json").write_text(json.dumps(rows))
    bench = convert_benchmark("simplevqa", src, tmp_path / "out")
    assert bench.items[0].id == "simplevqa-9" and bench.items[0].answers == ["Paris"]


def test_dynvqa_json_image_url_by_basename(tmp_path):
    src = tmp_path / "src"
    _jpg(src / "imgs" / "q17.jpg")
    rows = [{"question_id": 17, "image_url": "https://example.org/pics/q17.jpg",
             "question": "Who is the current CEO of this company?", "answer": ["Jane Doe", "J. Doe"]}]
    src.joinpath("DynVQA_en.json").write_text(json.dumps(rows))
    bench = convert_benchmark("dynvqa", src, tmp_path / "out")
    assert bench.items[0].id == "dynvqa-17" and bench.items[0].answers == ["Jane Doe", "J. Doe"]


def test_okvqa_questions_plus_annotations(tmp_path):
    src = tmp_path / "src"
    _jpg(src / "val2014" / "COCO_val2014_000000000042.jpg")
    src.joinpath("OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(
        {"questions": [{"image_id": 42, "question": "What sport is this?", "question_id": 420}]}))
    answers = [{"answer": a, "raw_answer": a, "answer_confidence": "yes", "answer_id": k}
               for k, a in enumerate(["tennis"] * 6 + ["badminton"] * 4, 1)]
    src.joinpath("mscoco_val2014_annotations.json").write_text(json.dumps(
        {"annotations": [{"image_id": 42, "question_id": 420, "question_type": "other",
                          "answer_type": "other", "answers": answers, "confidence": 3}]}))
    bench = convert_benchmark("okvqa", src, tmp_path / "out")
    assert bench.items[0].answers == ["tennis", "badminton"]  # most frequent first
    assert bench.items[0].id == "okvqa-420"


def test_aokvqa_correct_choice_first(tmp_path):
    src = tmp_path / "src"
    _jpg(src / "val2017" / "000000461751.jpg")
    rows = [{"split": "val", "image_id": 461751, "question_id": "22jbM6gDxdaMaunuzgrsBB",
             "question": "What is in the motorcyclist's mouth?",
             "choices": ["toothpick", "food", "popsicle stick", "cigarette"], "correct_choice_idx": 3,
             "direct_answers": ["cigarette"] * 8 + ["cigar"] * 2, "difficult_direct_answer": False,
             "rationales": ["He's smoking while riding."]}]
    src.joinpath("aokvqa_v1p0_val.json").write_text(json.dumps(rows))
    bench = convert_benchmark("aokvqa", src, tmp_path / "out")
    assert bench.items[0].answers == ["cigarette", "cigar"]


def test_subsample_is_deterministic_and_keeps_order():
    items = list(range(100))
    a, b = subsample(items, 10, seed=3), subsample(items, 10, seed=3)
    assert a == b and a == sorted(a) and len(set(a)) == 10
    assert subsample(items, 10, seed=4) != a
    assert subsample(items, None) == items


def test_convert_with_limit_drops_unused_images_and_version_tracks_content(tmp_path):
    src = tmp_path / "src"
    rows = []
    for k in range(6):
        _jpg(src / "val2017" / f"{k:012d}.jpg", colour=(k * 40, 10, 10))
        rows.append({"image_id": k, "question_id": f"q{k}", "question": f"Q{k}?", "choices": ["a", "b"],
                     "correct_choice_idx": 0, "direct_answers": ["a"]})
    src.joinpath("aokvqa_v1p0_val.json").write_text(json.dumps(rows))
    bench = convert_benchmark("aokvqa", src, tmp_path / "out", limit=3, seed=1)
    assert len(bench.items) == 3 and len(list((tmp_path / "out" / "images").iterdir())) == 3
    before = bench.version
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "out" / bench.items[0].image, format="JPEG")
    assert load_vqa_folder(tmp_path / "out").version != before  # an image changed: a new version


def test_bad_inputs_say_what_to_fix(tmp_path):
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        convert_benchmark("vqav9", tmp_path, tmp_path / "o")
    with pytest.raises(BenchmarkError, match="vqa.jsonl"):
        load_vqa_folder(tmp_path / "nothing")
    src = tmp_path / "src"
    src.mkdir()
    src.joinpath("aokvqa_v1p0_val.json").write_text(json.dumps([{"question": "no ids"}]))
    with pytest.raises(BenchmarkError, match="not in the released aokvqa format"):
        convert_benchmark("aokvqa", src, tmp_path / "out")
