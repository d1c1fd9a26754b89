"""The DeepMMSearchVQA dataset format: trajectories → parquet rows → a versioned dataset → ``datasets``.

Why: datagen writes the dataset, SFT and GRPO read it, reports read its trajectories. One module
fixes the columns and the I/O (docs/design.md §5): ``datasets/<name>/<version>/{manifest.json,
part-*.parquet}`` in the object store, images as bytes inside the parquet, the manifest written
last (a version without one does not exist), every part's sha256 checked on fetch.

Columns (one row per trajectory):

- ``id``, ``question``, ``answers`` (list), ``requires_search``, ``category``
- ``messages``: TRL's conversational SFT form from ``Trajectory.to_sft_messages()`` — system,
  user, assistant turns with string content; tool results are user ``<information>`` turns
- ``images``: the INPUT image only (``[{"bytes", "path"}]``, read back as PIL through the
  ``datasets.Image`` feature); the model never sees a crop, it reads the crop's search summary
- ``num_turns``, ``text_searches``, ``image_searches``, ``crop_searches``, ``invalid_turns``,
  ``end_reason``, ``final_answer``, ``judge_correct``, ``judge_name``
- ``trajectory_json``: the full record, for reports

Use::

    rows = rows_from_trajectories(trajs, image_bytes_by_sha)
    ref = publish_dataset(store, "deepmmsearchvqa", rows, {"seed_set": "..."})
    ds = load_dataset_version(store, resolve_dataset(store, "deepmmsearchvqa").uri, ".dmms/cache")

Tests: ``.venv/bin/python -m pytest -q tests/unit/agent/test_sft_data.py``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from components.agent.trajectory import Trajectory
from components.common.storage import (
    MANIFEST,
    CorruptVersionError,
    ObjectStore,
    StorageError,
    VersionRef,
    fetch_version,
    is_s3,
    join_uri,
    latest_version,
    publish_version,
    read_manifest,
)

log = logging.getLogger(__name__)

FORMAT = "deepmmsearchvqa/1"
DATASETS_PREFIX = "datasets"
MAX_PART_BYTES = 128 * 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def features():
    """The ``datasets.Features`` of a row; its ``arrow_schema`` (with HF metadata) is the parquet schema."""
    from datasets import Features, Image, List, Value

    return Features({
        "id": Value("string"),
        "question": Value("string"),
        "answers": List(Value("string")),
        "requires_search": Value("bool"),
        "category": Value("string"),
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "images": List(Image()),
        "num_turns": Value("int32"),
        "text_searches": Value("int32"),
        "image_searches": Value("int32"),
        "crop_searches": Value("int32"),
        "invalid_turns": Value("int32"),
        "end_reason": Value("string"),
        "final_answer": Value("string"),
        "judge_correct": Value("bool"),
        "judge_name": Value("string"),
        "trajectory_json": Value("string"),
    })


def row_from_trajectory(traj: Trajectory, image_bytes_by_sha: Mapping[str, bytes],
                        meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One dataset row. ``meta`` may set ``requires_search`` (default: the run searched) and ``category``."""
    meta = meta or {}
    messages = traj.to_sft_messages()
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"trajectory {traj.sample_id!r} has no model turn: nothing to train on")
    images = []
    ref = traj.input_image
    if ref is not None:
        data = image_bytes_by_sha.get(ref.sha256)
        if data is None:
            raise ValueError(f"trajectory {traj.sample_id!r}: no bytes for its input image {ref.sha256} "
                             "in image_bytes_by_sha")
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ValueError(f"trajectory {traj.sample_id!r}: the bytes given for {ref.sha256} hash to "
                             "something else")
        images.append({"bytes": data, "path": f"{ref.sha256}.img"})
    searched = traj.text_searches + traj.image_searches + traj.crop_searches
    return {
        "id": traj.sample_id,
        "question": traj.question,
        "answers": list(traj.answers),
        "requires_search": bool(meta.get("requires_search", searched > 0)),
        "category": meta.get("category"),
        "messages": messages,
        "images": images,
        "num_turns": len(traj.turns),
        "text_searches": traj.text_searches,
        "image_searches": traj.image_searches,
        "crop_searches": traj.crop_searches,
        "invalid_turns": traj.invalid_turns,
        "end_reason": traj.end_reason.value if traj.end_reason is not None else None,
        "final_answer": traj.final_answer,
        "judge_correct": traj.judge.correct,
        "judge_name": traj.judge.judge,
        # What was said, not how long it took: wall-clock latencies stay out of the row, so the same
        # trajectories give the same content-addressed version (a resumed datagen run included).
        "trajectory_json": traj.model_copy(update={"turns": [
            t.model_copy(update={"tool_latency_s": None}) for t in traj.turns]}).model_dump_json(),
    }


def rows_from_trajectories(trajectories: Iterable[Trajectory], image_bytes_by_sha: Mapping[str, bytes],
                           meta_by_id: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict]:
    """Rows for :func:`publish_dataset`; ``meta_by_id[sample_id]`` carries requires_search/category."""
    meta_by_id = meta_by_id or {}
    return [row_from_trajectory(t, image_bytes_by_sha, meta_by_id.get(t.sample_id)) for t in trajectories]


def _row_bytes(row: Mapping[str, Any]) -> int:
    return sum(len(i["bytes"]) for i in row["images"]) + len(row["trajectory_json"]) + 256


def _chunks(rows: Sequence[dict], max_part_bytes: int) -> Iterable[Sequence[dict]]:
    start, size = 0, 0
    for i, row in enumerate(rows):
        n = _row_bytes(row)
        if i > start and size + n > max_part_bytes:
            yield rows[start:i]
            start, size = i, 0
        size += n
    if start < len(rows):
        yield rows[start:]


def _check_dataset_name(name: str) -> None:
    if not _NAME.match(name):
        raise StorageError(f"bad dataset name {name!r}: use letters, digits, '.', '_' or '-' (one segment)")


def publish_dataset(store: ObjectStore, name: str, rows: Sequence[dict], metadata: dict | None = None,
                    version: str | None = None, max_part_bytes: int = MAX_PART_BYTES) -> VersionRef:
    """Write ``rows`` as parquet parts of at most ~``max_part_bytes`` and publish them (manifest last)
    under ``datasets/<name>/``; the default version is a content address. Returns the version."""
    _check_dataset_name(name)
    if not rows:
        raise ValueError(f"dataset {name!r} has no rows: nothing to publish")
    feats = features()
    schema = feats.arrow_schema
    tmp = Path(tempfile.mkdtemp(prefix="dmms-dataset-"))
    try:
        files = {}
        for i, chunk in enumerate(_chunks(rows, max_part_bytes)):
            table = pa.Table.from_pylist([feats.encode_example(r) for r in chunk], schema=schema)
            path = tmp / f"part-{i:05d}.parquet"
            pq.write_table(table, path, compression="zstd")
            files[path.name] = path
        meta = {**(metadata or {}), "format": FORMAT, "name": name, "num_rows": len(rows),
                "num_parts": len(files), **_stats(rows)}
        ref = publish_version(store, store.uri(DATASETS_PREFIX, name), files, version=version, metadata=meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("dataset %s: %d rows in %d parts at %s", name, len(rows), len(files), ref.uri)
    return ref


def _stats(rows: Sequence[dict]) -> dict[str, Any]:
    return {
        "requires_search": sum(bool(r["requires_search"]) for r in rows),
        "categories": dict(Counter(r["category"] or "" for r in rows)),
        "end_reasons": dict(Counter(r["end_reason"] or "" for r in rows)),
    }


def _looks_like_uri(value: str) -> bool:
    return is_s3(value) or value.startswith("file://") or "/" in value or Path(value).exists()


def resolve_dataset(store: ObjectStore, uri_or_name: str) -> VersionRef:
    """A dataset version: a version URI as given, or the newest version under a name
    (``datasets/<name>`` in the store) or a prefix URI. A version must have its manifest."""
    if not uri_or_name:
        raise StorageError("no dataset given: pass a version URI or a dataset name (--data)")
    if _looks_like_uri(uri_or_name) and store.exists(join_uri(uri_or_name, MANIFEST)):
        uri = uri_or_name.rstrip("/")
        return VersionRef(uri=uri, version=uri.rsplit("/", 1)[-1], manifest=read_manifest(store, uri))
    if _looks_like_uri(uri_or_name):
        prefix = uri_or_name
    else:
        _check_dataset_name(uri_or_name)
        prefix = store.uri(DATASETS_PREFIX, uri_or_name)
    ref = latest_version(store, prefix)
    if ref is None:
        raise StorageError(f"no dataset version at {prefix} (nor a manifest.json at {uri_or_name}): "
                           "publish one (dmms datagen) or pass a version URI")
    return ref


def load_dataset_version(store: ObjectStore, version_uri: str, cache_dir: str | Path):
    """Fetch (verified against the manifest) and open a version as a ``datasets.Dataset``; images
    decode to PIL. Raises :class:`CorruptVersionError` naming the version and part if tampered."""
    import datasets

    manifest = read_manifest(store, version_uri)
    if manifest.metadata.get("format") != FORMAT:
        raise CorruptVersionError(f"{version_uri} is not a {FORMAT} dataset "
                                  f"(its manifest says format={manifest.metadata.get('format')!r})")
    name = manifest.metadata.get("name", "dataset")
    local = fetch_version(store, version_uri, Path(cache_dir, "datasets", name, manifest.version))
    parts = sorted(str(p) for p in local.glob("part-*.parquet"))
    if len(parts) != len([n for n in manifest.files if n.startswith("part-")]):
        raise CorruptVersionError(f"{local}: parts on disk differ from the manifest of {version_uri}")
    return datasets.Dataset.from_parquet(parts, features=features(),
                                         cache_dir=str(Path(cache_dir, "hf-datasets")))
