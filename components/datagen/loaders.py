"""Seed loaders: real VQA data converted to our VQA format (docs/design.md §5).

Why: the paper seeds DeepMMSearchVQA with InfoSeek and trains GRPO on MMSearch-R1's FVQA train
set. These loaders read them in their released shapes and write a VQA set (``vqa.jsonl`` +
images) that datagen and evaluation read with :func:`components.agent.vqa.read_vqa`.

* **InfoSeek** — JSONL rows ``{"data_id", "image_id", "question", "answer", "answer_eng",
  "data_split", ...}`` (``entity_id`` in the ``_withkb`` files). ``answer``/``answer_eng`` are
  lists of strings; numerical answers come as ``{"wikidata": 1.0, "range": [0.9, 1.1]}``, from
  which the value becomes the answer. Images are the OVEN snapshot files named ``<image_id>.jpg``
  (or ``.JPEG``/``.png``, possibly in sub-folders), or listed in an ``id2image.jsonl``
  (``{"image_id", "image_path"}``).
* **FVQA** (MMSearch-R1, verl-style parquet) — columns ``data_id``, ``prompt`` (chat messages;
  the last user turn is the question), ``images`` (list of ``{"bytes", "path"}``),
  ``reward_model`` (``{"ground_truth", "candidate_answers"}``), ``category``
  (``search_required``/``search_free``), ``data_source``, ``image_urls``. The same rows as JSONL
  with image file paths are read too.

A row that cannot be converted stops the load with a message naming the file and line/row; the
output is written all-or-nothing. Local paths here; object-store paths are resolved by the caller.

    load_infoseek(Path("infoseek_val.jsonl"), Path("oven_images"), Path("seed/infoseek"))
    load_fvqa(Path("fvqa_train.parquet"), Path("seed/fvqa"))
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from components.agent.infoseek import infoseek_answers
from components.agent.vqa import VQAError, VQAItem, VQAWriter

log = logging.getLogger(__name__)

_EXTS = (".jpg", ".JPEG", ".jpeg", ".JPG", ".png", ".PNG", ".webp")
_IMAGE_TOKEN = re.compile(r"<image>\s*")


def _dedupe(values: list[str]) -> list[str]:
    seen, out = set(), []
    for v in values:
        v = v.strip()
        if v and v.lower() not in seen:
            seen.add(v.lower())
            out.append(v)
    return out


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise VQAError(f"{path} does not exist")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise VQAError(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise VQAError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            yield n, row


def _image_format(data: bytes, where: str) -> str:
    """The file extension for encoded image ``data``; refuses bytes that do not decode."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
            fmt = (im.format or "").lower()
    except Exception as exc:  # PIL raises many types for corrupt data
        raise VQAError(f"{where}: image bytes do not decode ({exc})") from None
    return {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "gif": ".gif", "bmp": ".bmp"}.get(fmt, ".img")


# ---- InfoSeek ------------------------------------------------------------------------------------
class _ImageFinder:
    """Finds ``<image_id>.<ext>`` under a folder (directly, else by one recursive scan) or in id2image."""

    def __init__(self, image_dir: Path, id2image: Path | None) -> None:
        self.dir = image_dir
        self.index: dict[str, Path] | None = None
        self.mapped: dict[str, Path] = {}
        if id2image is not None:
            for n, row in _jsonl_rows(id2image):
                if "image_id" not in row or "image_path" not in row:
                    raise VQAError(f"{id2image}:{n}: needs image_id and image_path")
                p = Path(row["image_path"])
                self.mapped[row["image_id"]] = p if p.is_absolute() else id2image.parent / p

    def find(self, image_id: str) -> Path | None:
        if image_id in self.mapped:
            return self.mapped[image_id] if self.mapped[image_id].is_file() else None
        for ext in _EXTS:
            p = self.dir / f"{image_id}{ext}"
            if p.is_file():
                return p
        if self.index is None:
            self.index = {p.stem: p for p in sorted(self.dir.rglob("*")) if p.suffix in _EXTS}
        return self.index.get(image_id)


def load_infoseek(jsonl: Path, image_dir: Path, out: Path, *, id2image: Path | None = None,
                  limit: int | None = None) -> list[VQAItem]:
    """Convert an InfoSeek JSONL file (+ its images) into a VQA set at ``out``."""
    jsonl, image_dir = Path(jsonl), Path(image_dir)
    if not image_dir.is_dir():
        raise VQAError(f"InfoSeek image folder {image_dir} does not exist")
    finder = _ImageFinder(image_dir, Path(id2image) if id2image else None)
    with VQAWriter(out) as w:
        for n, row in _jsonl_rows(jsonl):
            if limit is not None and len(w.items) >= limit:
                break
            where = f"{jsonl}:{n}"
            missing = [k for k in ("data_id", "image_id", "question") if not row.get(k)]
            if missing:
                raise VQAError(f"{where}: missing {', '.join(missing)} (an InfoSeek row has data_id, "
                               "image_id, question, answer, answer_eng)")
            answers, answer_range = infoseek_answers(row)
            if not answers:
                raise VQAError(f"{where}: no usable answer in 'answer' or 'answer_eng'")
            if w.has_id(str(row["data_id"])):
                raise VQAError(f"{where}: data_id {row['data_id']!r} repeats an earlier row")
            src = finder.find(str(row["image_id"]))
            if src is None:
                raise VQAError(f"{where}: image {row['image_id']!r} not found under {image_dir}")
            rel = f"images/{row['image_id']}{src.suffix.lower()}"
            item = VQAItem(id=str(row["data_id"]), image=rel, question=str(row["question"]).strip(),
                           answers=answers, answer_range=answer_range, entity=row.get("entity_id"))
            w.add(item, None if w.has_image(rel) else src)
        items = list(w.items)
    log.info("InfoSeek: %d items from %s -> %s", len(items), jsonl, out)
    return items


# ---- FVQA (MMSearch-R1) -----------------------------------------------------------------------------
def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(_text_of(c.get("text") if isinstance(c, dict) else c) for c in content if c).strip()
    return str(content or "").strip()


def fvqa_question(prompt: Any) -> str:
    """The question of an FVQA ``prompt``: the last user message (or the string itself)."""
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and prompt:
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        last = (users or [m for m in prompt if isinstance(m, dict)] or [{}])[-1]
        text = _text_of(last.get("content"))
    else:
        text = ""
    return _IMAGE_TOKEN.sub("", text).strip()


def fvqa_answers(row: dict[str, Any]) -> list[str]:
    rm = row.get("reward_model") or {}
    if isinstance(rm, str):
        rm = json.loads(rm)
    cands = rm.get("candidate_answers") or []
    if isinstance(cands, str):
        cands = json.loads(cands) if cands.strip().startswith("[") else [cands]
    values = [rm.get("ground_truth"), row.get("answer"), *cands]
    return _dedupe([str(v) for v in values if v is not None and not isinstance(v, dict | list)])


def _fvqa_image(row: dict[str, Any], base: Path, where: str) -> bytes:
    images = row.get("images") if row.get("images") is not None else row.get("image")
    first = images[0] if isinstance(images, list) and images else images
    if isinstance(first, dict):
        if first.get("bytes"):
            return bytes(first["bytes"])
        first = first.get("path")
    if isinstance(first, bytes | bytearray):
        return bytes(first)
    if isinstance(first, str) and first:
        p = Path(first) if Path(first).is_absolute() else base / first
        if not p.is_file():
            raise VQAError(f"{where}: image file {p} not found")
        return p.read_bytes()
    raise VQAError(f"{where}: no image (expected 'images': [{{'bytes': ...}}] or an image path)")


def _fvqa_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for corrupt files
            raise VQAError(f"{path}: not a readable parquet file ({exc})") from None
        i = 0
        for batch in pf.iter_batches(batch_size=64):
            for row in batch.to_pylist():
                yield f"{path}: row {i}", row
                i += 1
    else:
        for n, row in _jsonl_rows(path):
            yield f"{path}:{n}", row


def load_fvqa(path: Path, out: Path, *, image_dir: Path | None = None, limit: int | None = None
              ) -> list[VQAItem]:
    """Convert FVQA-style rows (parquet with image bytes, or JSONL with image paths) into a VQA set."""
    path = Path(path)
    if not path.is_file():
        raise VQAError(f"{path} does not exist")
    base = Path(image_dir) if image_dir else path.parent
    with VQAWriter(out) as w:
        for i, (where, row) in enumerate(_fvqa_rows(path)):
            if limit is not None and len(w.items) >= limit:
                break
            question = fvqa_question(row.get("prompt") if row.get("prompt") is not None else row.get("question"))
            try:
                answers = fvqa_answers(row)
            except ValueError as exc:  # reward_model given as a JSON string that does not parse
                raise VQAError(f"{where}: reward_model is not valid JSON ({exc})") from None
            if not question or not answers:
                raise VQAError(f"{where}: needs a question (prompt) and an answer "
                               "(reward_model.ground_truth or candidate_answers)")
            data = _fvqa_image(row, base, where)
            qid = str(row.get("data_id") or f"fvqa_{i}")
            if w.has_id(qid):
                raise VQAError(f"{where}: data_id {qid!r} repeats an earlier row")
            rel = f"images/{re.sub(r'[^A-Za-z0-9_.-]', '_', qid)}{_image_format(data, where)}"
            label = str(row.get("category") or "").lower()
            requires = True if label == "search_required" else False if label == "search_free" else None
            w.add(VQAItem(id=qid, image=rel, question=question, answers=answers, requires_search=requires),
                  data)
        items = list(w.items)
    log.info("FVQA: %d items from %s -> %s", len(items), path, out)
    return items
