"""Benchmark loaders: the paper's six benchmarks, from their RELEASED formats, into our VQA format.

Why: evaluation reads ONE format (docs/design.md §5: a folder with ``vqa.jsonl`` + images), so every
benchmark is converted once, sub-sampled deterministically if asked (the paper used 2,000 items of
InfoSeek and Enc-VQA), and fingerprinted (``version``: sha256 over the items and image bytes) so
that two evaluations can prove they ran on the same benchmark version before they are compared.

Released formats read here:

- ``infoseek``: JSONL lines ``{"data_id", "image_id", "question", "answer": [..], "answer_eng": [..],
  "answer_eval"?: [str | {"range": [lo, hi]}], "data_split"}``; images ``<image_id>.jpg`` (OVEN).
- ``encvqa`` (Encyclopedic-VQA): CSV with ``question``, ``answer`` (annotators' answers separated by
  ``|``, multi-answer parts by ``&&``), ``dataset_image_ids`` (up to 5, ``|``-separated; the first is
  used), ``dataset_name``, ``question_type``, ``wikipedia_title``; images ``<id>.jpg``.
- ``simplevqa``: JSON list / JSONL / parquet with ``data_id``, ``image`` (a path, base64 text, or the
  HF image struct ``{"bytes", "path"}``), ``language`` (only English items are kept, as in the paper),
  ``question``, ``answer``, ``vqa_category``.
- ``dynvqa`` (Dyn-VQA, OmniSearch): JSON list / JSONL with ``question``, ``answer`` (str or list),
  ``image_url`` or ``image`` (the image file is looked up by its basename), optional ``question_id``.
- ``okvqa``: the VQA-v2-style pair ``OpenEnded_mscoco_val2014_questions.json`` (``{"questions":
  [{"image_id", "question", "question_id"}]}``) + ``mscoco_val2014_annotations.json``
  (``{"annotations": [{"question_id", "answers": [{"answer", ...}]}]}``); images
  ``COCO_val2014_<image_id:012d>.jpg``.
- ``aokvqa``: ``aokvqa_v1p0_val.json``, a list of ``{"question_id", "image_id", "question",
  "choices", "correct_choice_idx", "direct_answers"}``; images ``<image_id:012d>.jpg`` (COCO 2017).
- ``world``: the offline world's test split, already in VQA format, read as-is.

Use: ``convert_benchmark("okvqa", src_folder, out_folder, limit=2000, seed=0)`` then
``load_vqa_folder(out_folder)``. Tests: ``pytest tests/unit/evaluate/test_benchmarks.py``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import logging
import random
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from components.agent.infoseek import infoseek_answers

log = logging.getLogger(__name__)

VQA_FILE = "vqa.jsonl"
BENCHMARKS = ("infoseek", "encvqa", "simplevqa", "dynvqa", "okvqa", "aokvqa", "world")
# The paper's Table 1 column names, in its order.
DISPLAY = {"infoseek": "InfoSeek", "encvqa": "Enc-VQA", "simplevqa": "SimpleVQA", "dynvqa": "DynVQA",
           "okvqa": "OKVQA", "aokvqa": "A-OKVQA", "world": "World"}
JPEG_MAGIC = b"\xff\xd8\xff"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".JPG", ".JPEG", ".PNG")


class BenchmarkError(ValueError):
    """A benchmark file is missing or not in its released format; the message says what to fix."""


class BenchItem(BaseModel):
    """One VQA item (docs/design.md §5); ``image`` is relative to the benchmark folder."""

    id: str
    image: str
    question: str
    answers: list[str] = Field(min_length=1)
    answer_range: tuple[float, float] | None = Field(None, description="Accepted numeric range (InfoSeek).")
    requires_search: bool | None = None
    category: str | None = None
    entity: str | None = None


class Benchmark(BaseModel):
    """A loaded benchmark: its items, its folder and its content version."""

    name: str
    root: str
    version: str
    items: list[BenchItem]


# ---------------------------------------------------------------- reading our own format
def load_vqa_folder(root: str | Path, name: str | None = None, limit: int | None = None,
                    seed: int = 0) -> Benchmark:
    """Read ``root/vqa.jsonl``; check every image exists; optionally sub-sample."""
    root = Path(root)
    path = root / VQA_FILE
    if not path.is_file():
        raise BenchmarkError(f"{path} not found: a benchmark folder holds {VQA_FILE} and its images "
                             f"(convert a released benchmark with `dmms benchmark convert`)")
    items: list[BenchItem] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = BenchItem.model_validate_json(line)
        except ValueError as exc:
            raise BenchmarkError(f"{path}:{n}: not a VQA item: {str(exc)[:300]}") from None
        if not (root / item.image).is_file():
            raise BenchmarkError(f"{path}:{n}: image {item.image!r} not found under {root}")
        items.append(item)
    if not items:
        raise BenchmarkError(f"{path} holds no items")
    items = subsample(items, limit, seed)
    return Benchmark(name=name or root.name, root=str(root), version=content_version(root, items),
                     items=items)


def subsample(items: list[Any], limit: int | None, seed: int = 0) -> list[Any]:
    """Deterministic sample of ``limit`` items (same seed, same items, original order kept)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise BenchmarkError(f"limit must be >= 1, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def content_version(root: Path, items: Iterable[BenchItem]) -> str:
    """sha256 (16 hex) over the items' JSON and their images' bytes: the benchmark version."""
    h = hashlib.sha256()
    for item in items:
        h.update(item.model_dump_json().encode())
        h.update(hashlib.sha256((root / item.image).read_bytes()).digest())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- helpers
def _read_json_records(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, dict):  # some releases wrap the list: {"data": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise BenchmarkError(f"{path}: expected a JSON list of items")
        data = lists[0]
    return data


def _find_file(src: Path, pattern: Iterable[str]) -> Path:
    for glob in pattern:
        found = sorted(src.rglob(glob)) if src.is_dir() else ([src] if src.match(glob) else [])
        if found:
            return found[0]
    raise BenchmarkError(f"no file matching {list(pattern)} under {src}")


def _image_index(src: Path) -> dict[str, Path]:
    """Every image file under ``src`` by file name and by stem."""
    index: dict[str, Path] = {}
    base = src if src.is_dir() else src.parent
    for p in sorted(base.rglob("*")):
        if p.suffix in IMAGE_EXTS and p.is_file():
            index.setdefault(p.name, p)
            index.setdefault(p.stem, p)
    return index


def _dedupe(answers: Iterable[Any]) -> list[str]:
    """Non-empty answers, most frequent first, each once."""
    counts = Counter(str(a).strip() for a in answers if a is not None and str(a).strip())
    return [a for a, _ in counts.most_common()]


class _Writer:
    """Collects converted items and copies (or decodes) their images into the output folder."""

    def __init__(self, out: Path, name: str):
        self.out, self.name = out, name
        (out / "images").mkdir(parents=True, exist_ok=True)
        self.items: list[BenchItem] = []
        self.skipped = Counter()

    def add(self, item_id: str, question: str, answers: list[str], image: Path | bytes | None,
            category: str | None = None, entity: str | None = None,
            answer_range: tuple[float, float] | None = None) -> None:
        if image is None:
            self.skipped["image not found"] += 1
            return
        if not answers or not question.strip():
            self.skipped["no question or answer"] += 1
            return
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in item_id)
        if isinstance(image, Path):
            rel = f"images/{safe}{image.suffix.lower()}"
            shutil.copyfile(image, self.out / rel)
        else:
            ext = ".jpg" if image[:3] == JPEG_MAGIC else ".png"
            rel = f"images/{safe}{ext}"
            (self.out / rel).write_bytes(image)
        self.items.append(BenchItem(id=f"{self.name}-{item_id}", image=rel, question=question.strip(),
                                    answers=answers, answer_range=answer_range, category=category, entity=entity))


def _finish(w: _Writer, limit: int | None, seed: int) -> Benchmark:
    if w.skipped:
        log.warning("%s: skipped %s", w.name, dict(w.skipped))
    if not w.items:
        raise BenchmarkError(f"{w.name}: no item could be converted ({dict(w.skipped)}): check the "
                             f"annotation file and that the images are under the source folder")
    items = subsample(w.items, limit, seed)
    keep = {i.image for i in items}
    for p in (w.out / "images").iterdir():
        if f"images/{p.name}" not in keep:
            p.unlink()
    tmp = w.out / (VQA_FILE + ".tmp")
    tmp.write_text("".join(i.model_dump_json(exclude_none=True) + "\n" for i in items), encoding="utf-8")
    tmp.replace(w.out / VQA_FILE)
    log.info("%s: %d items written to %s", w.name, len(items), w.out)
    return load_vqa_folder(w.out, w.name)


# ---------------------------------------------------------------- the loaders
def _infoseek(src: Path, w: _Writer) -> None:
    images = _image_index(src)
    for row in _read_json_records(_find_file(src, ["*.jsonl"])):
        answers, answer_range = infoseek_answers(row)
        w.add(str(row["data_id"]), row["question"], answers, images.get(str(row["image_id"])),
              category=row.get("data_split"), entity=row.get("entity_text") or row.get("entity_id"),
              answer_range=answer_range)


def _encvqa(src: Path, w: _Writer) -> None:
    images = _image_index(src)
    with _find_file(src, ["*.csv"]).open(newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.DictReader(fh)):
            answers = _dedupe(a.replace("&&", ", ") for a in (row.get("answer") or "").split("|"))
            image_id = (row.get("dataset_image_ids") or "").split("|")[0].strip()
            w.add(f"{n:06d}", row.get("question", ""), answers, images.get(image_id),
                  category=row.get("question_type"), entity=row.get("wikipedia_title") or None)


def _decode_image(value: Any, images: dict[str, Path]) -> Path | bytes | None:
    if isinstance(value, dict):  # HF datasets Image struct
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str) or not value:
        return None
    name = value.rsplit("/", 1)[-1].split("?")[0]
    if name in images or Path(name).stem in images:
        return images.get(name) or images[Path(name).stem]
    try:  # inline base64 (data URL or bare) of a PNG or JPEG
        data = base64.b64decode(value.split(",", 1)[-1], validate=True)
    except ValueError:
        return None
    return data if data[:3] == JPEG_MAGIC or data[:8] == b"\x89PNG\r\n\x1a\n" else None


def _simplevqa(src: Path, w: _Writer) -> None:
    images = _image_index(src)
    records = _read_json_records(_find_file(src, ["*.parquet", "*.jsonl", "*.json"]))
    for n, row in enumerate(records):
        if not str(row.get("language", "")).strip().lower().startswith("en"):
            w.skipped["not English"] += 1
            continue
        answers = _dedupe(row["answer"] if isinstance(row["answer"], list) else [row["answer"]])
        w.add(str(row.get("data_id", n)), row["question"], answers, _decode_image(row.get("image"), images),
              category=row.get("vqa_category") or row.get("original_category"))


def _dynvqa(src: Path, w: _Writer) -> None:
    images = _image_index(src)
    for n, row in enumerate(_read_json_records(_find_file(src, ["*.jsonl", "*.json"]))):
        ans = row.get("answer", row.get("answers"))
        answers = _dedupe(ans if isinstance(ans, list) else [ans])
        image = _decode_image(row.get("image") or row.get("image_url"), images)
        w.add(str(row.get("question_id", row.get("id", n))), row["question"], answers, image)


def _okvqa(src: Path, w: _Writer) -> None:
    images = _image_index(src)
    questions = json.loads(_find_file(src, ["*questions*.json"]).read_text())["questions"]
    annotations = json.loads(_find_file(src, ["*annotations*.json"]).read_text())["annotations"]
    by_qid = {a["question_id"]: a for a in annotations}
    for q in questions:
        ann = by_qid.get(q["question_id"])
        if ann is None:
            w.skipped["no annotation"] += 1
            continue
        iid = int(q["image_id"])
        image = images.get(f"COCO_val2014_{iid:012d}") or images.get(f"{iid:012d}")
        w.add(str(q["question_id"]), q["question"], _dedupe(a["answer"] for a in ann["answers"]), image,
              category=ann.get("question_type"))


def _aokvqa(src: Path, w: _Writer) -> None:
    images = _image_index(src)
    for row in _read_json_records(_find_file(src, ["aokvqa*.json", "*.json"])):
        answers = _dedupe(row.get("direct_answers") or [])
        idx = row.get("correct_choice_idx")
        if idx is not None and row.get("choices"):
            correct = row["choices"][idx]
            answers = [correct, *[a for a in answers if a != correct]]
        iid = int(row["image_id"])
        w.add(str(row["question_id"]), row["question"], answers, images.get(f"{iid:012d}"))


LOADERS = {"infoseek": _infoseek, "encvqa": _encvqa, "simplevqa": _simplevqa, "dynvqa": _dynvqa,
           "okvqa": _okvqa, "aokvqa": _aokvqa}


def convert_benchmark(name: str, src: str | Path, out: str | Path, limit: int | None = None,
                      seed: int = 0) -> Benchmark:
    """Convert a released benchmark under ``src`` (annotations + images) into ``out`` (VQA format)."""
    if name not in LOADERS:
        raise BenchmarkError(f"unknown benchmark {name!r}: use one of {', '.join(LOADERS)}")
    src, out = Path(src), Path(out)
    if not src.exists():
        raise BenchmarkError(f"{src} does not exist: pass the folder holding the released {name} files")
    if (out / VQA_FILE).exists():
        raise BenchmarkError(f"{out / VQA_FILE} already exists: pass an empty output folder")
    writer = _Writer(out, name)
    try:
        LOADERS[name](src, writer)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise BenchmarkError(f"{name}: {src} is not in the released {name} format "
                             f"({type(exc).__name__}: {exc})") from None
    return _finish(writer, limit, seed)


def iter_benchmarks(specs: Iterable[str], limit: int | None = None, seed: int = 0) -> Iterator[Benchmark]:
    """``name=folder`` or ``folder`` specs → loaded benchmarks (VQA-format folders)."""
    for spec in specs:
        name, _, folder = spec.partition("=") if "=" in spec else (None, "", spec)
        yield load_vqa_folder(folder, name or Path(folder).name, limit, seed)
