"""``dmms agent run`` end to end: a VQA set on disk, the tiny model (local generator) or an
OpenAI-compatible server (the stand-in on loopback), the real tool-server under uvicorn; checks the
written trajectories and images, and that bad input exits 2 with a message and writes nothing.

Run: ``.venv/bin/python -m pytest -q tests/integration/test_agent_loop.py``.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from components.agent.tiny import build_tiny_model
from components.agent.trajectory import Trajectory
from components.cli import _register, app
from tests.unit.agent.loop_support import png


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture
def vqa(tmp_path):
    root = tmp_path / "vqa"
    (root / "images").mkdir(parents=True)
    with (root / "vqa.jsonl").open("w") as f:
        for i in range(3):
            (root / "images" / f"{i}.png").write_bytes(png(i))
            f.write(json.dumps({"id": f"q{i}", "image": f"images/{i}.png", "question": "Which monument is this?",
                                "answers": ["Zorashmar"]}) + "\n")
    return root


def _invoke(args, env):
    _register()
    return CliRunner().invoke(app, args, env=env, catch_exceptions=False)


def _read(out):
    return [Trajectory.model_validate_json(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]


def test_agent_run_with_the_tiny_model(model_dir, vqa, tmp_path, toolserver):
    out = tmp_path / "run"
    env = {"DMMS_TOOLS__TOKEN": toolserver.token, "DMMS_MODEL__MAX_NEW_TOKENS": "8", "DMMS_AGENT__MAX_TURNS": "2"}
    res = _invoke(["agent", "run", "--model", str(model_dir), "--vqa", str(vqa), "--out", str(out),
                   "--tools", toolserver.url], env)
    assert res.exit_code == 0, res.output
    trajs = _read(out)
    assert [t.sample_id for t in trajs] == ["q0", "q1", "q2"]
    for t in trajs:
        assert t.end_reason is not None and t.prompt_ids and t.logprobs is not None
        data = (out / "images" / f"{t.input_image.sha256}.png").read_bytes()
        assert hashlib.sha256(data).hexdigest() == t.input_image.sha256
    assert json.loads(res.output[res.output.index("{"):])["trajectories"] == 3


def test_agent_run_against_an_openai_server(openai_server, vqa, tmp_path, toolserver):
    def reply(body):
        asked = sum(m["role"] == "assistant" for m in body["messages"])
        return ["<reason>Crop the sign.</reason><img_search>[0, 0, 128, 128]",
                "<reason>Found.</reason><answer>Zorashmar"][min(asked, 1)]

    openai_server.responder = reply
    out = tmp_path / "run"
    env = {"DMMS_TOOLS__TOKEN": toolserver.token, "DMMS_TEACHER__MODEL": "teacher"}
    res = _invoke(["agent", "run", "--model", openai_server.base_url, "--vqa", str(vqa), "--out", str(out),
                   "--tools", toolserver.url], env)
    assert res.exit_code == 0, res.output
    trajs = _read(out)
    assert all(t.end_reason == "answer" and t.crop_searches == 1 for t in trajs)
    crops = [i for t in trajs for i in t.images if i.role == "crop"]
    assert len(crops) == 3 and all((out / "images" / f"{c.sha256}.png").is_file() for c in crops)


def test_agent_run_refuses_a_bad_vqa_set(tmp_path, toolserver):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vqa.jsonl").write_text('{"id": "a", "question": "q"}\n')
    out = tmp_path / "run"
    res = _invoke(["agent", "run", "--model", "http://127.0.0.1:9/v1", "--vqa", str(bad), "--out", str(out)], {})
    assert res.exit_code == 2 and "vqa.jsonl:1" in res.output and not out.exists()
