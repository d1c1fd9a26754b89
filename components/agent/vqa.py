"""The VQA-set format (docs/design.md §5): validate, read and write ``vqa.jsonl`` + image files.

Why: seed data (the offline world, InfoSeek, FVQA) and benchmarks all meet datagen and evaluation
in one shape — a folder with ``vqa.jsonl`` (one :class:`VQAItem` a line, ``image`` relative to the
folder) and the images. A corrupt seed file must stop a run before any work is done, with a
message naming the file and line (bad JSON, a missing or empty field, a missing image, a repeated
id), never a traceback from deep inside datagen.

    items = read_vqa(Path("world/vqa/train"))          # or the vqa.jsonl path itself
    write_vqa(items, {"images/a.png": pil_or_bytes_or_path}, Path("out/vqa"))
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ImageSource = Image.Image | bytes | Path


class VQAError(ValueError):
    """A VQA set is unusable; the message names the file (and line) and what is wrong."""


class VQAItem(BaseModel):
    """One question about one image (docs/design.md §5); unknown extra keys are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, description="Unique id within the set.")
    image: str = Field(min_length=1, description="Image path relative to the set's folder.")
    question: str = Field(min_length=1)
    answers: list[str] = Field(min_length=1, description="Gold answer first, then aliases.")
    answer_range: tuple[float, float] | None = Field(
        None, description="Accepted numeric range [lo, hi] (InfoSeek's numeric answers).")
    requires_search: bool | None = None
    category: str | None = None
    entity: str | None = None

    @field_validator("answers")
    @classmethod
    def _answers_non_empty(cls, v: list[str]) -> list[str]:
        if not all(a.strip() for a in v):
            raise ValueError("answers must be non-empty strings")
        return v

    @field_validator("image")
    @classmethod
    def _relative(cls, v: str) -> str:
        p = Path(v)
        if p.is_absolute() or ".." in p.parts:
            raise ValueError(f"image must be a path inside the set's folder, got {v!r}")
        return v


def _jsonl_path(path: Path) -> Path:
    path = Path(path)
    return path / "vqa.jsonl" if path.is_dir() or path.suffix != ".jsonl" else path


def read_vqa(path: Path, check_images: bool = True) -> list[VQAItem]:
    """Items of a VQA set (folder or its ``vqa.jsonl``); refuses a corrupt file with a clear error."""
    file = _jsonl_path(path)
    if not file.is_file():
        raise VQAError(f"{file} does not exist: a VQA set is a folder with vqa.jsonl (docs/design.md §5)")
    root = file.parent
    items: list[VQAItem] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise VQAError(f"{file}:{n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise VQAError(f"{file}:{n}: expected a JSON object, got {type(row).__name__}")
        try:
            item = VQAItem.model_validate(row)
        except ValidationError as exc:
            errs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
            raise VQAError(f"{file}:{n}: {errs}") from None
        if item.id in seen:
            raise VQAError(f"{file}:{n}: id {item.id!r} already used on line {seen[item.id]}")
        seen[item.id] = n
        if check_images and not (root / item.image).is_file():
            raise VQAError(f"{file}:{n}: image {item.image!r} not found at {root / item.image}")
        items.append(item)
    return items


def _write_image(src: ImageSource, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(src, Image.Image):
        fmt = (dest.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG")
        src.save(dest, format=fmt, **({"compress_level": 6} if fmt == "PNG" else {}))
    elif isinstance(src, bytes | bytearray):
        dest.write_bytes(bytes(src))
    else:
        shutil.copyfile(src, dest)


class VQAWriter:
    """Builds a VQA set next to ``out`` item by item (images streamed to disk), renames it into
    place on :meth:`commit`; :meth:`abort` (or an exception inside ``with``) leaves nothing behind.
    An existing ``out`` is replaced only if it is a VQA set (has ``vqa.jsonl``) or empty."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        if self.out.exists() and (not self.out.is_dir() or (
                any(self.out.iterdir()) and not (self.out / "vqa.jsonl").is_file())):
            raise VQAError(f"{self.out} exists and is not a VQA set: choose a new or empty output folder")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        self.items: list[VQAItem] = []
        self._ids: set[str] = set()
        self._images: set[str] = set()

    def has_image(self, rel: str) -> bool:
        return rel in self._images

    def has_id(self, item_id: str) -> bool:
        return item_id in self._ids

    def add(self, item: VQAItem | Mapping[str, Any], image: ImageSource | None = None) -> VQAItem:
        """Add an item; ``image`` may be omitted when an earlier item already wrote that path."""
        it = item if isinstance(item, VQAItem) else VQAItem.model_validate(item)
        if it.id in self._ids:
            raise VQAError(f"{self.out}: repeated item id {it.id!r}")
        if image is not None and it.image not in self._images:
            _write_image(image, self.tmp / it.image)
            self._images.add(it.image)
        elif it.image not in self._images:
            raise VQAError(f"{self.out}: no image given for item {it.id!r} ({it.image})")
        self._ids.add(it.id)
        self.items.append(it)
        return it

    def commit(self) -> Path:
        lines = [json.dumps(i.model_dump(), ensure_ascii=False) for i in self.items]
        (self.tmp / "vqa.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        if self.out.exists():
            shutil.rmtree(self.out)
        self.tmp.rename(self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> VQAWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_vqa(items: list[VQAItem | Mapping[str, Any]], images: Mapping[str, ImageSource], out: Path) -> Path:
    """Write a VQA set to ``out`` (replacing a previous set): ``vqa.jsonl`` and every item's image.

    ``images`` maps each item's relative ``image`` path to a PIL image, encoded bytes or a file
    to copy. The folder is built next to ``out`` and renamed into place: all or nothing.
    """
    parsed = [i if isinstance(i, VQAItem) else VQAItem.model_validate(i) for i in items]
    missing = sorted({i.image for i in parsed} - set(images))
    if missing:
        raise VQAError(f"write_vqa({out}): no image given for {missing[:5]} ({len(missing)} missing)")
    with VQAWriter(out) as w:
        for item in parsed:
            w.add(item, images[item.image])
    return Path(out)
