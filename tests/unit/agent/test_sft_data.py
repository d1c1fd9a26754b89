"""The DeepMMSearchVQA format: trajectories → parquet parts → a versioned dataset → ``datasets``.

Proves: rows hold TRL's conversational SFT form and the input image as bytes that decode to PIL;
the full trajectory round-trips; parts are bounded in size; names resolve to the newest version;
a tampered part or a version without its manifest is refused with its path; S3 (a real SeaweedFS
server on loopback) behaves like a local folder; bad input gets a clear error.

Run: ``.venv/bin/python -m pytest -q tests/unit/agent/test_sft_data.py``
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bench.expert_data import expert_trajectories
from components.agent.sft_data import (
    FORMAT,
    load_dataset_version,
    publish_dataset,
    resolve_dataset,
    rows_from_trajectories,
)
from components.agent.trajectory import Trajectory
from components.common.settings import StorageSettings
from components.common.storage import CorruptVersionError, StorageError, join_uri, open_store


@pytest.fixture
def store(tmp_path):
    return open_store(StorageSettings(root=str(tmp_path / "store")))


@pytest.fixture(scope="module")
def made():
    trajs, images = expert_trajectories(6)
    return trajs, images, rows_from_trajectories(trajs, images, {"search-1": {"category": "landmark"}})


def test_rows_hold_the_sft_form_and_only_the_input_image(made):
    trajs, images, rows = made
    direct, searched = rows[0], rows[1]
    assert [m["role"] for m in direct["messages"]] == ["system", "user", "assistant"]
    assert [m["role"] for m in searched["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert searched["messages"][3]["content"].startswith("<information>")
    assert all(isinstance(m["content"], str) for r in rows for m in r["messages"])
    assert searched["messages"] == trajs[1].to_sft_messages()
    assert len(searched["images"]) == 1 and searched["images"][0]["bytes"] == images[trajs[1].input_image.sha256]
    assert (direct["requires_search"], searched["requires_search"]) == (False, True)
    assert (searched["text_searches"], searched["num_turns"], searched["end_reason"]) == (1, 2, "answer")
    assert searched["category"] == "landmark" and direct["category"] is None
    assert searched["judge_correct"] is True and searched["final_answer"] == trajs[1].final_answer


def test_publish_then_load_round_trips(store, made, tmp_path):
    trajs, images, rows = made
    ref = publish_dataset(store, "vqa", rows, {"source": "test"})
    assert ref.uri == join_uri(store.uri("datasets", "vqa"), ref.version)
    meta = ref.manifest.metadata
    assert (meta["format"], meta["num_rows"], meta["requires_search"], meta["source"]) == (FORMAT, 6, 3, "test")
    ds = load_dataset_version(store, resolve_dataset(store, "vqa").uri, tmp_path / "cache")
    assert len(ds) == 6 and ds["id"] == [t.sample_id for t in trajs]
    row = ds[1]
    assert row["messages"] == rows[1]["messages"] and row["answers"] == trajs[1].answers
    image = row["images"][0]
    assert isinstance(image, Image.Image) and image.size == (60, 56)
    assert Trajectory.model_validate_json(row["trajectory_json"]) == trajs[1]


def test_parts_are_bounded_and_keep_row_order(store, made, tmp_path):
    _, _, rows = made
    ref = publish_dataset(store, "vqa", rows, max_part_bytes=1)  # one row per part
    parts = sorted(n for n in ref.manifest.files if n.startswith("part-"))
    assert len(parts) == 6 and ref.manifest.metadata["num_parts"] == 6
    ds = load_dataset_version(store, ref.uri, tmp_path / "cache")
    assert ds["id"] == [r["id"] for r in rows]


def test_name_resolves_to_the_newest_version_and_uris_pass_through(store, made):
    _, _, rows = made
    old = publish_dataset(store, "vqa", rows[:2])
    new = publish_dataset(store, "vqa", rows[:4])
    assert resolve_dataset(store, "vqa").uri == new.uri
    assert resolve_dataset(store, old.uri).uri == old.uri  # a version URI is taken as given
    assert resolve_dataset(store, store.uri("datasets", "vqa")).uri == new.uri  # a prefix → newest


def test_a_version_without_manifest_does_not_exist(store, made):
    _, _, rows = made
    ref = publish_dataset(store, "vqa", rows[:2])
    half = Path(store.uri("datasets", "vqa", "v-half"))
    half.mkdir()
    (half / "part-00000.parquet").write_bytes(b"half-written")
    assert resolve_dataset(store, "vqa").uri == ref.uri
    with pytest.raises(StorageError, match="v-half"):
        resolve_dataset(store, str(half))


def test_a_tampered_part_is_refused_with_its_path(store, made, tmp_path):
    _, _, rows = made
    ref = publish_dataset(store, "vqa", rows)
    part = Path(ref.uri) / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(CorruptVersionError, match=rf"{ref.uri}.*part-00000\.parquet"):
        load_dataset_version(store, ref.uri, tmp_path / "cache")
    assert not (tmp_path / "cache" / "datasets" / "vqa" / ref.version).exists()  # nothing half-fetched


def test_s3_behaves_like_a_folder(s3_settings, made, tmp_path):
    trajs, _, rows = made
    s3 = open_store(s3_settings)
    ref = publish_dataset(s3, "vqa", rows, max_part_bytes=2000)
    assert ref.uri.startswith("s3://")
    ds = load_dataset_version(s3, resolve_dataset(s3, "vqa").uri, tmp_path / "cache")
    assert ds["id"] == [t.sample_id for t in trajs]
    assert ds[0]["images"][0].size == (56, 56)


def test_bad_input_gets_clear_errors(store, made):
    trajs, images, rows = made
    with pytest.raises(ValueError, match="no bytes for its input image"):
        rows_from_trajectories(trajs[:1], {})
    sha = trajs[0].input_image.sha256
    with pytest.raises(ValueError, match="hash to something else"):
        rows_from_trajectories(trajs[:1], {sha: b"other bytes"})
    empty = Trajectory.start("empty", "q?", ["a"], images[sha])
    with pytest.raises(ValueError, match="no model turn"):
        rows_from_trajectories([empty], images)
    with pytest.raises(StorageError, match="bad dataset name"):
        publish_dataset(store, "../x", rows)
    with pytest.raises(ValueError, match="no rows"):
        publish_dataset(store, "vqa", [])
    with pytest.raises(StorageError, match="no dataset version"):
        resolve_dataset(store, "missing")
    with pytest.raises(StorageError, match="no dataset given"):
        resolve_dataset(store, "")
