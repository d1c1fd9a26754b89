"""The offline world: deterministic, answers on the pages, answers in the pixels, findable images.

Builds one small world (module-scoped) plus a second copy with the same seed for the
byte-identity check; the findability test builds the real image index of components.search.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from components.agent.vqa import read_vqa
from components.search.grounding import crop_region, spatial_box
from components.search.image_index import ImageIndex, read_image_rows
from components.world import draw, visual
from components.world.make import WorldError, make_world

N, SEED = 40, 3


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    make_world(out, N, SEED)
    return out


@pytest.fixture(scope="module")
def gold(world) -> dict:
    return json.loads((world / "world.json").read_text())


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(world, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    make_world(again, N, SEED)
    make_world(other, N, SEED + 1)
    first = _hashes(world)
    assert len(first) > 100
    assert _hashes(again) == first
    assert _hashes(other) != first
    make_world(again, N, SEED)  # re-making over a previous world replaces it, same bytes
    assert _hashes(again) == first


def test_corpus_is_in_the_design_format_and_has_only_entity_images(world, gold):
    docs = [json.loads(line) for line in (world / "corpus/docs.jsonl").read_text().splitlines()]
    rows = read_image_rows(world / "corpus")
    assert len(docs) == len(rows) == len(gold["entities"]) == N
    doc_ids = {d["id"] for d in docs}
    for d in docs:
        assert d["title"] and d["text"] and d["url"].startswith("https://") and d["image_ids"]
    for r in rows:
        assert r["doc_id"] in doc_ids
        with Image.open(world / "corpus" / r["path"]) as im:
            assert 224 <= im.size[0] <= 384
    assert not any("scene" in r["path"] or "visual" in r["path"] for r in rows)
    assert {e["kind"] for e in gold["entities"]} == {"person", "landmark", "species", "artwork", "organisation"}


def test_entity_images_are_distinct(world, gold):
    thumbs = [np.asarray(Image.open(world / e["image"]).resize((16, 16)), np.float32).ravel()
              for e in gold["entities"]]
    for i in range(len(thumbs)):
        for j in range(i + 1, len(thumbs)):
            assert np.abs(thumbs[i] - thumbs[j]).mean() > 3.0, (i, j)


def test_splits_read_back_are_disjoint_and_balanced(world, gold):
    items = {s: read_vqa(world / "vqa" / s) for s in ("train", "val", "test")}
    assert all(items.values())
    ids = [i.id for s in items.values() for i in s]
    assert len(ids) == len(set(ids)) == len(gold["questions"])
    by_split = {q["id"]: q for q in gold["questions"]}
    twin_of = {e["id"]: e["distractor_of"] or e["id"] for e in gold["entities"]}
    scenes = {sc["id"]: sc for sc in gold["scenes"]}
    pictured = {s: set() for s in items}  # every entity shown in a split's images (scenes: every tile)
    for s, v in items.items():
        for i in v:
            q = by_split[i.id]
            if q.get("scene"):
                pictured[s] |= {p["entity"] for p in scenes[q["scene"]]["placements"]}
            elif q["entity"]:
                pictured[s].add(q["entity"])
    groups = {s: {twin_of[e] for e in v} for s, v in pictured.items()}  # an entity with its distractor twin
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert all(sc["split"] == s for s in items for sc in scenes.values()
               if any(by_split[i.id].get("scene") == sc["id"] for i in items[s]))
    req = Counter(q["requires_search"] for q in gold["questions"])
    assert req[True] == req[False] > 0
    kinds = Counter(q["kind"] for q in gold["questions"])
    assert kinds["single"] and kinds["multihop"] and kinds["crop"] and kinds["visual"]
    cats = {q["category"] for q in gold["questions"]}
    assert {"landmark/architecture", "nature/species", "art", "organisation", "people"} <= cats
    assert {"visual/colour", "visual/count", "visual/shape", "visual/position"} <= cats


def test_every_search_answer_is_on_the_page_of_the_last_hop(world, gold):
    pages = {json.loads(line)["id"]: json.loads(line)["text"]
             for line in (world / "corpus/docs.jsonl").read_text().splitlines()}
    checked = 0
    for q in gold["questions"]:
        if not q["requires_search"]:
            continue
        assert q["hops"][0] == q["entity"] and q["answers"]
        assert q["answers"][0] in pages[q["hops"][-1]], (q["question"], q["answers"])
        checked += 1
    kinds = {e["id"]: e["kind"] for e in gold["entities"]}
    multihop = [q for q in gold["questions"] if len(q.get("hops", [])) == 2]
    assert multihop and all(kinds[q["hops"][1]] == "person" != kinds[q["hops"][0]] for q in multihop)
    assert checked > 50


def _flood_count(mask: np.ndarray) -> int:
    """Independent 4-connected component count (plain BFS)."""
    seen = np.zeros_like(mask)
    n = 0
    h, w = mask.shape
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        n += 1
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return n


def test_search_free_answers_are_computable_from_the_pixels(world, gold):
    names = {rgb: name for name, rgb in visual.COLOURS.items()}
    free = [q for q in gold["questions"] if not q["requires_search"]]
    for q in free:
        a = np.asarray(Image.open(world / "vqa" / q["split"] / q["image"]).convert("RGB"))
        mask = (a != visual.BG).any(axis=2)
        kind = q["category"].split("/")[1]
        if kind == "count":
            assert str(_flood_count(mask)) == q["answers"][0]
        elif kind == "colour":
            colours, counts = np.unique(a[mask].reshape(-1, 3), axis=0, return_counts=True)
            assert names[tuple(int(c) for c in colours[counts.argmax()])] == q["answers"][0]
        elif kind == "position":
            ys, xs = np.nonzero(mask)
            cx, cy = xs.mean() / a.shape[1] - 0.5, ys.mean() / a.shape[0] - 0.5
            where = ("center" if max(abs(cx), abs(cy)) < 0.1 else
                     ("left" if cx < 0 else "right") if abs(cx) >= abs(cy) else ("top" if cy < 0 else "bottom"))
            assert where == q["answers"][0]
        else:
            ys, xs = np.nonzero(mask)
            fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
            assert {"square": fill > 0.93, "circle": 0.65 < fill <= 0.93, "triangle": fill <= 0.65}[q["answers"][0]]
        assert visual.analyse(Image.fromarray(a))[kind] == q["answers"][0]
    assert len(free) > 50


def test_scene_boxes_lie_inside_and_crop_to_the_entity_image(world, gold):
    assert gold["scenes"]
    for s in gold["scenes"]:
        scene = Image.open(world / "vqa" / s["split"] / s["image"]).convert("RGB")
        assert list(scene.size) == s["size"] and 2 <= len(s["placements"]) <= 4
        for p in s["placements"]:
            x1, y1, x2, y2 = p["box"]
            assert 0 <= x1 < x2 <= scene.width and 0 <= y1 < y2 <= scene.height
            region = spatial_box(scene.size, p["region"])  # the phrase's region holds the whole tile
            assert region[0] <= x1 and region[1] <= y1 and x2 <= region[2] and y2 <= region[3]
            ent = Image.open(world / "corpus/images" / f"{p['entity']}.png").convert("RGB")
            expect = draw.scene_tile(ent, x2 - x1)
            assert np.array_equal(np.asarray(scene.crop(p["box"])), np.asarray(expect))
    crops = [q for q in gold["questions"] if q["kind"] == "crop"]
    assert crops and all(q["region"] in q["question"] and q["crop_box"] and q["scene"] for q in crops)


def test_distractors_are_near_duplicates_with_different_facts(gold):
    by_id = {e["id"]: e for e in gold["entities"]}
    twins = [e for e in gold["entities"] if e["distractor_of"]]
    assert len(twins) >= 2
    for t in twins:
        src = by_id[t["distractor_of"]]
        assert t["kind"] == src["kind"] and t["name"] != src["name"] and len(t["name"]) == len(src["name"])
        assert sum(a != b for a, b in zip(t["name"], src["name"], strict=True)) == 1
        assert t["facts"] != src["facts"]


def test_every_search_required_question_is_findable_by_the_image_index(world, gold, tmp_path):
    """Image search (whole image, or the crop the question's region phrase names) ranks the
    entity's corpus image first; measured 100% on 200 entities (seed 0) and on this world."""
    index = ImageIndex.build(world / "corpus", tmp_path / "index")
    hits = total = 0
    for q in gold["questions"]:
        if not q["requires_search"]:
            continue
        img = Image.open(world / "vqa" / q["split"] / q["image"])
        if q["kind"] == "crop":
            img, _ = crop_region(img, q["region"])
        hits += index.search(img, 1)[0][0] == f"img-{q['entity']}"
        total += 1
    assert total > 50 and hits / total >= 0.95, f"{hits}/{total}"


def test_bad_requests_are_refused_and_leave_nothing(tmp_path):
    with pytest.raises(WorldError, match="at least 5"):
        make_world(tmp_path / "tiny", 3, 0)
    assert not (tmp_path / "tiny").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(WorldError, match="not a world"):
        make_world(tmp_path / "mine", 10, 0)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary folder left


def test_cli_world_make(tmp_path):
    from components import cli

    cli._register()
    runner = CliRunner()
    res = runner.invoke(cli.app, ["world", "make", "--entities", "8", "--seed", "2", "--out", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["entities"] == 8 and sum(summary["questions"].values()) > 0
    assert (tmp_path / "w" / "world.json").is_file()
    bad = runner.invoke(cli.app, ["world", "make", "--entities", "2", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "at least 5" in bad.output
