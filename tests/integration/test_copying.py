"""The CPU profile learns to COPY out of ``<information>``: a reduced training run, measured.

A test entity never appears in training, so the only way to answer it is to read the image
search's result and copy the name into the text query (issue 12). This trains the tiny profile
for a reduced run — its own 400-entity world, oracle datagen through the REAL tool-server on
loopback, copy pretraining (the profile's steps), TWO SFT epochs instead of six — then runs the
agent on the world's test split (unseen entities) and asserts:

- most agent trajectories' first text query holds the name the image search returned
  (:func:`components.evaluate.metrics.copied_name`);
- the name-swap probe: with the name inside ``<information>`` replaced by a fresh invented name,
  the next query holds the FRESH name in most cases — the model copies, it does not recall.

Minutes, not a benchmark (~11 on 2 cores; most of it copy pretraining). A GPU run would add
nothing to what this proves; the paper profile starts from a pretrained VLM that already copies.
Run: ``.venv/bin/python -m pytest -q tests/integration/test_copying.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import pytest
from PIL import Image

from components.agent.protocol import initial_messages, parse_turn, render_information
from components.agent.protocol.state import Limits, ProtocolState
from components.agent.protocol.tags import ActionKind
from components.common.settings import Settings
from components.common.storage import fetch_version, open_store
from components.datagen.run import run_datagen
from components.evaluate.generate import ModelSpec, open_generator
from components.evaluate.metrics import _IMAGE_LEAD, copied_name
from components.evaluate.run import evaluate
from components.sft.counterfactual import is_invented
from components.sft.train import run_sft
from components.world.entities import Namer
from tests.fixtures.toolserver import TOKEN, start_toolserver, tool_settings

log = logging.getLogger(__name__)
pytestmark = pytest.mark.slow
N_ROWS = 2000  # what the smoke pipeline generates from a 400-entity world
N_EVAL = 80  # test items; about half of them search-required


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from components.search.index import build_index
    from components.world.make import make_world

    root = tmp_path_factory.mktemp("copying")
    make_world(root / "world", n_entities=400, seed=0)
    build_index(str(root / "world" / "corpus"), str(root / "index"), Settings(profile="tiny"))
    with start_toolserver(tool_settings(root / "cache"), root / "index") as (url, _):
        settings = Settings(profile="tiny", tools={"url": url, "token": TOKEN},
                            storage={"root": str(root / "store")},
                            tracking={"uri": f"sqlite:///{root / 'mlflow.db'}"},
                            # copying is what this test is about: the vision stages (components/sft/vision.py,
                            # the visual readout) are off and the tower trains as before they existed
                            sft={"epochs": 2, "vision_pretrain_steps": 0, "visual_pretrain_steps": 0,
                                 "train_vision": True},
                            evaluate={"limit": N_EVAL, "out_dir": str(root / "eval")},
                            model={"name_or_path": str(root / "no-model-yet")})
        data = run_datagen(settings, root / "world" / "vqa" / "train", "oracle", N_ROWS, root / "datagen")
        sft = run_sft(settings, data.dataset_uri, "", open_store(settings).uri("checkpoints", "copy-sft"),
                      work_dir=root / "sft")
        model = fetch_version(open_store(settings), sft.final_uri, root / "final")
        result = evaluate(settings, ModelSpec(name=str(model)), [f"world={root / 'world' / 'vqa' / 'test'}"],
                          ["agent"], tools_url=url, out_dir=root / "eval")
        yield settings, Path(model), Path(result.out_dir)


def _samples(out_dir: Path):
    from components.evaluate.records import EvalSample

    return [EvalSample.model_validate_json(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]


def test_queries_hold_the_name_the_image_search_returned(trained):
    _, _, out = trained
    copies = [c for c in map(copied_name, _samples(out)) if c is not None]
    log.info("copied the returned name in %d of %d first text queries", sum(copies), len(copies))
    assert len(copies) >= 15, f"only {len(copies)} trajectories searched the image and then the text"
    assert sum(copies) / len(copies) > 0.5, f"copied in {sum(copies)} of {len(copies)} trajectories"


def test_swapping_the_name_in_information_swaps_it_in_the_query(trained):
    settings, model, out = trained
    probes = []
    for s in _samples(out):
        tool = next((t for t in s.turns if t.role == "tool" and t.action == "image_search"), None)
        first = next((t for t in s.turns if t.role == "model"), None)
        lead = _IMAGE_LEAD.search(tool.text) if tool else None
        if lead and first is not None and first.action == "image_search":
            probes.append((s, first.text, tool.text, lead.group(1)))
    assert len(probes) >= 15
    namer = Namer(random.Random(7))
    version, limits = settings.agent.prompt_version, Limits.from_settings(settings.agent)
    gen = open_generator(ModelSpec(name=str(model)), settings)

    async def next_query(s, turn: str, info: str) -> str | None:
        state = ProtocolState(limits=limits)
        state.check(parse_turn(turn))
        messages = [*initial_messages(s.question, version, limits), {"role": "assistant", "content": turn},
                    {"role": "user", "content": render_information(info, ActionKind.IMAGE_SEARCH, state, version)}]
        with Image.open(s.image_path) as img:
            action = parse_turn(await gen.generate(messages, img.convert("RGB")))
        return action.query if action.kind == ActionKind.TEXT_SEARCH else None

    async def run_all():
        try:
            out = []
            for s, turn, info, name in probes:
                fresh = " ".join(namer.word((1, 3)) if is_invented(w) else w for w in name.split())
                original = await next_query(s, turn, info)
                swapped = await next_query(s, turn, info.replace(name, fresh))
                out.append((name, original, fresh, swapped))
            return out
        finally:
            await gen.aclose()

    results = asyncio.run(run_all())
    log.info("name-swap probe over %d trajectories: %s", len(results),
             [(n, q, f, sq) for n, q, f, sq in results])
    held = sum(bool(q) and n.lower() in q.lower() for n, q, _, _ in results)
    swapped = sum(bool(q) and f.lower() in q.lower() for _, _, f, q in results)
    recalled = sum(bool(q) and n.lower() in q.lower() for n, _, _, q in results)
    log.info("probe: original name held %d, fresh name held %d, original after the swap %d (of %d)",
             held, swapped, recalled, len(results))
    assert swapped / len(results) > 0.5, f"fresh name copied in {swapped} of {len(results)} (original {held})"
    assert recalled < swapped  # after the swap the ORIGINAL name rarely comes back: it was read, not recalled
