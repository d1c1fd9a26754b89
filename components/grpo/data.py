"""The GRPO prompt dataset: one row per question, in the form TRL's ``GRPOTrainer`` reads.

Why: GRPO rolls out from prompts, not from recorded trajectories. A row holds ``prompt`` (the
protocol's initial messages — system prompt and first user turn — with STRING content, so TRL's
``prepare_multimodal_messages`` puts the one image before the first user text exactly where
:func:`components.agent.protocol.initial_messages` puts it), ``images`` ([the input image]: the
only image that reaches the loss), ``answers`` and ``question`` (read by the rewards) and ``id``.

The rows come from either
- a VQA set folder (``vqa.jsonl`` + images, docs/design.md §5) — the paper's RL data was a separate VQA
  set (MMSearch-R1's FVQA train split); or
- a DeepMMSearchVQA dataset version (name or URI in the object store): its questions, answers
  and input images (the recorded conversations are not used).

    ds = load_grpo_dataset(settings, store, "world/vqa/train", cache_dir)

Import-only; tests: ``tests/unit/grpo/test_grpo_train.py``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from PIL import Image

from components.agent.frame import Frame
from components.agent.protocol import Limits
from components.agent.trajectory import Trajectory
from components.common.settings import Settings
from components.common.storage import ObjectStore, is_s3

log = logging.getLogger(__name__)


def prompt_messages(question: str, settings: Settings, image_size: tuple[int, int] | None = None,
                    ) -> list[dict[str, str]]:
    """The protocol's initial messages for ``question`` about an image of ``image_size`` (original
    pixels; the prompt states the frame the model sees it in, as the agent loop does), string content."""
    frame = Frame.of(image_size, settings.model.max_pixels).size if image_size else None
    traj = Trajectory.start("prompt", question, version=settings.agent.prompt_version,
                            limits=Limits.from_settings(settings.agent), image_size=frame)
    return traj.to_sft_messages()


def features():
    from datasets import Features, Image, List, Value

    return Features({
        "id": Value("string"),
        "question": Value("string"),
        "answers": List(Value("string")),
        "prompt": List({"role": Value("string"), "content": Value("string")}),
        "images": List(Image()),
    })


def _png(image: Image.Image | bytes | Path) -> bytes:
    if isinstance(image, bytes):
        return image
    img = Image.open(image) if isinstance(image, Path) else image
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def make_row(sample_id: str, question: str, answers: list[str], image: Any, settings: Settings) -> dict:
    """One GRPO row; ``image`` is encoded bytes, a PIL image or a file path."""
    png = _png(image)
    with Image.open(io.BytesIO(png)) as img:
        size = img.size
    return {"id": sample_id, "question": question, "answers": list(answers),
            "prompt": prompt_messages(question, settings, size),
            "images": [{"bytes": png, "path": None}]}


def grpo_dataset(rows: list[dict]):
    """A ``datasets.Dataset`` of GRPO rows (images decode to PIL)."""
    import datasets

    if not rows:
        raise ValueError("the GRPO dataset has no rows: give a VQA set or dataset version with questions")
    return datasets.Dataset.from_list(rows, features=features())


def rows_from_vqa(folder: Path, settings: Settings) -> list[dict]:
    """Rows of a VQA set folder (``vqa.jsonl`` and its images)."""
    from components.agent.vqa import read_vqa

    items = read_vqa(folder)
    root = folder if folder.is_dir() else folder.parent
    return [make_row(i.id, i.question, i.answers, root / i.image, settings) for i in items]


def rows_from_version(store: ObjectStore, data_uri: str, settings: Settings, cache_dir: Path) -> list[dict]:
    """Rows of a DeepMMSearchVQA version: its questions, answers and input images."""
    from components.agent.sft_data import load_dataset_version, resolve_dataset

    ref = resolve_dataset(store, data_uri)
    ds = load_dataset_version(store, ref.uri, cache_dir)
    rows = []
    for r in ds:
        if not r["images"]:
            raise ValueError(f"{ref.uri}: row {r['id']!r} has no input image: GRPO rolls out from image questions")
        rows.append(make_row(r["id"], r["question"], r["answers"], r["images"][0], settings))
    return rows


def load_grpo_dataset(settings: Settings, store: ObjectStore, data_uri: str, cache_dir: str | Path):
    """The GRPO dataset from a VQA set folder or a DeepMMSearchVQA version (name or URI)."""
    local = Path(data_uri[len("file://"):] if data_uri.startswith("file://") else data_uri)
    if not is_s3(data_uri) and (local / "vqa.jsonl").is_file() or local.suffix == ".jsonl":
        rows = rows_from_vqa(local, settings)
        log.info("GRPO prompts: %d questions from the VQA set %s", len(rows), local)
    else:
        rows = rows_from_version(store, data_uri, settings, Path(cache_dir))
        log.info("GRPO prompts: %d questions from the dataset %s", len(rows), data_uri)
    return grpo_dataset(rows)
