"""Make the offline world: a corpus the tool-server indexes, VQA splits, and gold metadata.

Why: everything downstream (tool-server, datagen with the oracle teacher, SFT, GRPO, evaluation)
must run and be tested with no web access. ``make_world`` writes, deterministically for a seed:

    OUT/corpus/docs.jsonl, images.jsonl, images/<entity>.png       (docs/design.md §5 corpus)
    OUT/vqa/{train,val,test}/vqa.jsonl, images/*.png              (docs/design.md §5 VQA sets)
    OUT/world.json   entities with facts and links; scenes with boxes; every question's gold
                     entity, hop chain and crop box (what the oracle teacher plans from)

Search-required questions show a re-framed *view* of an entity (never the corpus file itself) or
a composite scene (crop questions; scenes are not in the corpus). Search-free questions show
plain shapes whose answer is computable from the pixels. Splits are disjoint by pictured entity
(a distractor twin goes with its source; a scene holds only its split's entities), scene and image. Same seed, byte-identical files (fixed PNG parameters, no clocks, no UUIDs). The world is
written to a temporary sibling folder and renamed into place, so a failure leaves nothing behind.

    dmms world make --entities 200 --seed 0 --out .dmms/world
    make_world(Path(".dmms/world"), n_entities=200, seed=0)
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from components.common.atomic import staged_dir
from components.world import draw, visual
from components.world.entities import Entity, build_entities
from components.world.pages import page_text, page_url
from components.world.questions import Draft, crop_question, entity_questions

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
SPLIT_SHARE = (0.8, 0.1, 0.1)


class WorldError(ValueError):
    """The world cannot be made as asked; the message says what to change."""


class WorldSummary(BaseModel):
    """What :func:`make_world` wrote (also printed by ``dmms world make``)."""

    out: str
    seed: int
    entities: int
    distractors: int
    corpus_images: int
    scenes: int
    questions: dict[str, int]
    search_required: int
    search_free: int
    categories: dict[str, int]


def _split_of(items: list[Any], rng: random.Random) -> dict[str, list[Any]]:
    """Shuffle and cut into train/val/test (val and test get at least one item when possible)."""
    items = list(items)
    rng.shuffle(items)
    n = len(items)
    n_val = max(1, round(n * SPLIT_SHARE[1])) if n >= 3 else 0
    n_test = max(1, round(n * SPLIT_SHARE[2])) if n >= 3 else 0
    n_train = n - n_val - n_test
    return {"train": items[:n_train], "val": items[n_train:n_train + n_val], "test": items[n_train + n_val:]}


class _Writer:
    """Accumulates questions and their images per split; writes the VQA folders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        self.n = 0

    def image(self, split: str, name: str, img: Any) -> str:
        rel = f"images/{name}.png"
        path = self.root / "vqa" / split / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(draw.png_bytes(img))
        return rel

    def add(self, split: str, image: str, question: str, answers: list[str], requires_search: bool,
            category: str, entity: str | None, gold: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        row = {"id": f"q{self.n:06d}", "image": image, "question": question, "answers": answers,
               "requires_search": requires_search, "category": category, "entity": entity}
        self.rows[split].append({**row, "split": split, **gold})
        return row

    def flush(self) -> None:
        keys = ("id", "image", "question", "answers", "requires_search", "category", "entity")
        for split, rows in self.rows.items():
            folder = self.root / "vqa" / split
            folder.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps({k: r[k] for k in keys}, ensure_ascii=False) for r in rows]
            (folder / "vqa.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _write_corpus(root: Path, entities: list[Entity], by_id: dict[str, Entity],
                  images: dict[str, Any]) -> None:
    corpus = root / "corpus"
    (corpus / "images").mkdir(parents=True)
    docs, rows = [], []
    for e in entities:
        rel = f"images/{e.id}.png"
        (corpus / rel).write_bytes(draw.png_bytes(images[e.id]))
        docs.append({"id": e.id, "title": e.name, "text": page_text(e, by_id), "url": page_url(e),
                     "image_ids": [f"img-{e.id}"]})
        rows.append({"id": f"img-{e.id}", "path": rel, "doc_id": e.id, "title": e.name,
                     "caption": f"{e.name} ({e.kind})"})
    for name, data in (("docs.jsonl", docs), ("images.jsonl", rows)):
        (corpus / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data),
                                   encoding="utf-8")


def _entity_splits(entities: list[Entity], rng: random.Random) -> dict[str, list[Entity]]:
    """Entities cut into splits with each near-duplicate distractor in its source's split: a test
    entity's twin (same drawing, a name one vowel away) never appears in training."""
    splits = _split_of([e for e in entities if e.distractor_of is None], rng)
    where = {e.id: s for s, group in splits.items() for e in group}
    for e in entities:
        if e.distractor_of is not None:
            splits[where[e.distractor_of]].append(e)
    return splits


def _entity_questions(w: _Writer, entities: list[Entity], by_id: dict[str, Entity],
                      images: dict[str, Any], rng: random.Random) -> dict[str, list[Entity]]:
    splits = _entity_splits(entities, rng)
    for split in SPLITS:
        for e in sorted(splits[split], key=lambda x: x.id):
            rel = w.image(split, e.id, draw.view_of(images[e.id], rng))
            for d in entity_questions(e, by_id, rng):
                w.add(split, rel, d.question, d.answers, True, d.category, e.id,
                      {"kind": d.kind, "hops": d.hops, **d.extra})
    return splits


def _scene_questions(w: _Writer, splits: dict[str, list[Entity]], entities: list[Entity],
                     by_id: dict[str, Entity], images: dict[str, Any], rng: random.Random,
                     n_scenes: int) -> list[dict[str, Any]]:
    scenes = []
    scene_split = _split_of(list(range(n_scenes)), rng)
    for split in SPLITS:
        for k in sorted(scene_split[split]):
            pool = splits[split]  # only the split's own entities: no scene leaks an entity across splits
            k_tiles = min(rng.choice([2, 3, 4]), len(pool))
            if k_tiles < 2:
                continue
            members = rng.sample(sorted(pool, key=lambda x: x.id), k_tiles)
            canvas, placed = draw.compose_scene([images[e.id] for e in members], rng)
            sid = f"scene-{k:05d}"
            rel = w.image(split, sid, canvas)
            boxes = [{"entity": e.id, "region": phrase, "box": box}
                     for e, (phrase, box) in zip(members, placed, strict=True)]
            scenes.append({"id": sid, "split": split, "image": rel, "size": list(canvas.size),
                           "placements": boxes})
            for t in rng.sample(range(k_tiles), min(2, k_tiles)):
                target = members[t]
                d: Draft = crop_question(target, by_id, rng, placed[t][0])
                w.add(split, rel, d.question, d.answers, True, d.category, target.id,
                      {"kind": "crop", "hops": d.hops, "scene": sid, "region": placed[t][0],
                       "crop_box": placed[t][1], **d.extra})
    return scenes


def _visual_questions(w: _Writer, n: int, rng: random.Random) -> None:
    idx = _split_of(list(range(n)), rng)
    for split in SPLITS:
        for k in sorted(idx[split]):
            kind = visual.VISUAL_KINDS[k % len(visual.VISUAL_KINDS)]
            img, question, answers, category = visual.make_visual(kind, rng)
            rel = w.image(split, f"visual-{k:05d}", img)
            w.add(split, rel, question, answers, False, category, None, {"kind": "visual"})


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "world.json").is_file())):
        raise WorldError(f"{out} exists and is not a world made by `dmms world make`: "
                         "choose a new or empty --out folder")


def make_world(out: Path, n_entities: int, seed: int) -> WorldSummary:
    """Write the offline world for ``seed`` with ``n_entities`` entities to ``out`` (see module doc)."""
    out = Path(out)
    if n_entities < 5:
        raise WorldError(f"--entities must be at least 5 (one of each kind), got {n_entities}")
    _check_out(out)
    with staged_dir(out) as tmp:
        summary = _make(tmp, out, n_entities, seed)
    log.info("world: %d entities, %s questions -> %s", summary.entities, summary.questions, out)
    return summary


def _make(root: Path, out: Path, n_entities: int, seed: int) -> WorldSummary:
    rng = random.Random(seed)
    entities, cities = build_entities(n_entities, rng)
    by_id = {e.id: e for e in entities}
    images = {e.id: draw.draw_entity(e.kind, e.style_seed, variant=1 if e.distractor_of else 0)
              for e in entities}
    _write_corpus(root, entities, by_id, images)
    w = _Writer(root)
    splits = _entity_questions(w, entities, by_id, images, rng)
    scenes = _scene_questions(w, splits, entities, by_id, images, rng, max(2, n_entities // 4))
    n_required = sum(len(r) for r in w.rows.values())
    _visual_questions(w, n_required, rng)
    w.flush()
    questions = [q for s in SPLITS for q in w.rows[s]]
    world = {"format": FORMAT_VERSION, "seed": seed, "n_entities": n_entities, "cities": cities,
             "entities": [{**e.to_json(), "doc_id": e.id, "image_id": f"img-{e.id}",
                           "image": f"corpus/images/{e.id}.png"} for e in entities],
             "scenes": scenes, "questions": questions}
    (root / "world.json").write_text(json.dumps(world, ensure_ascii=False, indent=1), encoding="utf-8")
    cats = Counter(q["category"] for q in questions)
    return WorldSummary(
        out=str(out), seed=seed, entities=len(entities),
        distractors=sum(1 for e in entities if e.distractor_of), corpus_images=len(entities),
        scenes=len(scenes), questions={s: len(w.rows[s]) for s in SPLITS},
        search_required=n_required, search_free=len(questions) - n_required,
        categories=dict(sorted(cats.items())))
