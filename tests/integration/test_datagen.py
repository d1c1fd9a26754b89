"""Datagen end to end: a small offline world, its index, the REAL tool-server on loopback, the
agent loop with the oracle teacher, filters, balance, a published dataset in a local object
store and an MLflow run on a SQLite file.

Shows: the filter counts add up; the 50:50 ratio and per-category balance hold; the dataset re-reads
with its hashes verified and its rows render through the tiny model's chat template (TRL's
``prepare_multimodal_messages`` + ``apply_chat_template``) with exactly one image-pad block; a
corrupt seed file, an unreachable teacher endpoint and an empty filter result each end with a
clear error and no dataset version. Run: ``.venv/bin/python -m pytest -q tests/integration/test_datagen.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from components.agent.vqa import VQAError, read_vqa
from components.common.settings import Settings
from components.common.storage import list_versions, open_store, verify_version
from components.datagen.run import DatagenError, run_datagen
from tests.fixtures.toolserver import TOKEN, start_toolserver, tool_settings
from tests.support import free_port

N = 40


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from components.search.index import build_index
    from components.world.make import make_world

    root = tmp_path_factory.mktemp("dgworld")
    make_world(root / "world", n_entities=30, seed=3)
    build_index(str(root / "world" / "corpus"), str(root / "index"), Settings(profile="tiny"))
    return root


@pytest.fixture(scope="module")
def tools_url(world, tmp_path_factory):
    with start_toolserver(tool_settings(tmp_path_factory.mktemp("dgcache")), world / "index") as (url, _):
        yield url


def _settings(tmp: Path, tools_url: str, **extra) -> Settings:
    base = {"profile": "tiny", "tools": {"url": tools_url, "token": TOKEN},
            "storage": {"root": str(tmp / "store")},
            "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}"}}
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return Settings(**base)


def _versions(settings: Settings) -> list:
    store = open_store(settings)
    return list_versions(store, store.uri("datasets", settings.datagen.dataset_name))


@pytest.fixture(scope="module")
def oracle_run(world, tools_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dgrun")
    settings = _settings(tmp, tools_url)
    result = run_datagen(settings, world / "world" / "vqa" / "train", "oracle", N, tmp / "out")
    return settings, result, tmp


def test_filter_counts_add_up(oracle_run, world):
    settings, result, tmp = oracle_run
    seed = read_vqa(world / "world" / "vqa" / "train")
    c = result.counts
    assert c["generated"] == len(seed)
    assert c["generated"] >= c["format"] >= c["turns"] >= c["answer"] >= c["correct"] >= c["selected"] == N
    stats = json.loads((tmp / "out" / "stats.json").read_text())
    dropped = stats["filters"]["dropped"]
    assert c["generated"] - c["correct"] == sum(len(v) for v in dropped.values())
    trajs = [json.loads(line) for line in (tmp / "out" / "trajectories.jsonl").read_text().splitlines()]
    assert len(trajs) == len(seed)
    assert sum(t["judge"]["correct"] is True for t in trajs) == c["correct"]
    assert (tmp / "out" / "turns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratio_and_category_balance_hold(oracle_run, world):
    settings, result, tmp = oracle_run
    from components.agent.sft_data import load_dataset_version

    ds = load_dataset_version(open_store(settings), result.dataset_uri, tmp / "cache")
    assert len(ds) == N == result.rows
    required = [r for r in ds if r["requires_search"]]
    assert len(required) == N // 2
    for group in (required, [r for r in ds if not r["requires_search"]]):
        counts = {}
        for r in group:
            counts[r["category"]] = counts.get(r["category"], 0) + 1
        assert len(counts) >= 4 and max(counts.values()) - min(counts.values()) <= 1, counts
    # search-free rows answer from the pixels; search-required rows searched the image first
    for r in ds:
        searched = r["text_searches"] + r["image_searches"] + r["crop_searches"]
        assert (searched > 0) == r["requires_search"]
        if r["requires_search"]:
            assert r["image_searches"] + r["crop_searches"] == 1
    assert result.tool_mix["crop_searches"] > 0 and result.tool_mix["text_searches"] > 0


def test_dataset_rereads_with_hashes_and_renders_one_image(oracle_run, tmp_path):
    settings, result, tmp = oracle_run
    import trl
    from trl.data_utils import prepare_multimodal_messages

    from components.agent.models import load_model_and_processor
    from components.agent.sft_data import load_dataset_version
    from components.agent.tiny import build_tiny_model

    store = open_store(settings)
    manifest = verify_version(store, result.dataset_uri)
    assert manifest.metadata["num_rows"] == N and manifest.metadata["counts"]["selected"] == N
    assert [v.uri for v in _versions(settings)] == [result.dataset_uri]
    ds = load_dataset_version(store, result.dataset_uri, tmp_path / "cache")
    _, processor = load_model_and_processor(str(build_tiny_model(tmp_path / "tiny")),
                                            Settings(profile="tiny").model)
    template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja").read_text()
    for row in ds.select(range(6)):
        assert len(row["images"]) == 1
        messages = prepare_multimodal_messages(row["messages"], images=row["images"])
        text = processor.apply_chat_template(messages, chat_template=template, tokenize=False)
        assert text.count("<|vision_start|>") == 1
        assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
        assert text.count("<|im_start|>assistant\n") == row["num_turns"]
        out = processor.apply_chat_template(messages, chat_template=template, tokenize=True,
                                            return_dict=True, return_tensors="pt")
        grid = out["image_grid_thw"]
        assert grid.shape[0] == 1  # exactly one image in the row
        pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        assert int((out["input_ids"] == pad).sum()) == int(grid.prod()) // 4


def test_mlflow_run_records_counts_mix_and_uri(oracle_run):
    settings, result, tmp = oracle_run
    run = MlflowClient(settings.tracking.uri).get_run(result.run_id)
    m = run.data.metrics
    for stage, value in result.counts.items():
        assert m[f"count/{stage}"] == value
    assert m["tools/text_searches"] == result.tool_mix["text_searches"]
    assert sum(v for k, v in m.items() if k.startswith("category/")) == N
    assert run.data.tags["dmms.dataset_uri"] == result.dataset_uri
    assert len(run.data.tags["dmms.index_version"]) == 16  # the index version its trajectories searched
    arts = [a.path for a in MlflowClient(settings.tracking.uri).list_artifacts(result.run_id, "datagen")]
    assert "datagen/turns.png" in arts and "datagen/stats.json" in arts


def test_corrupt_seed_file_stops_before_any_work(world, tools_url, tmp_path):
    seed = tmp_path / "seed"
    shutil.copytree(world / "world" / "vqa" / "val", seed)
    lines = (seed / "vqa.jsonl").read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]
    (seed / "vqa.jsonl").write_text("\n".join(lines) + "\n")
    settings = _settings(tmp_path, tools_url)
    with pytest.raises(VQAError, match=r"vqa.jsonl:2: not valid JSON"):
        run_datagen(settings, seed, "oracle", 4, tmp_path / "out")
    assert _versions(settings) == [] and not (tmp_path / "out").exists()
    from components.cli import _register, app

    _register()
    res = CliRunner().invoke(app, ["datagen", "--seed-vqa", str(seed), "--n", "4", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "vqa.jsonl:2: not valid JSON" in res.output
    assert "Traceback" not in res.output


def test_unreachable_teacher_endpoint_is_a_clear_error(world, tools_url, tmp_path):
    port = free_port()  # nothing listens here
    settings = _settings(tmp_path, tools_url, teacher={"base_url": f"http://127.0.0.1:{port}/v1",
                                                       "model": "teacher", "max_retries": 0})
    with pytest.raises(DatagenError, match=rf"teacher endpoint http://127.0.0.1:{port}/v1 does not answer"):
        run_datagen(settings, world / "world" / "vqa" / "val", "llm", 4, tmp_path / "out")
    assert _versions(settings) == [] and not (tmp_path / "out").exists()


def test_empty_filter_result_publishes_nothing(world, tools_url, tmp_path):
    """Seed answers nobody can reach: every trajectory is judged wrong, nothing is published."""
    seed = tmp_path / "seed"
    shutil.copytree(world / "world" / "vqa" / "val", seed)
    rows = [json.loads(line) for line in (seed / "vqa.jsonl").read_text().splitlines()]
    for r in rows:
        r["answers"] = ["no such answer zzq"]
    (seed / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = _settings(tmp_path, tools_url, datagen={"world": str(world / "world" / "world.json")})
    with pytest.raises(DatagenError, match=r"no trajectory passed the filters .*'correct': 0"):
        run_datagen(settings, seed, "oracle", 4, tmp_path / "out")
    assert _versions(settings) == [] and not (tmp_path / "out").exists()
    runs = MlflowClient(settings.tracking.uri).search_runs(
        [MlflowClient(settings.tracking.uri).get_experiment_by_name("deepmmsearch").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_llm_teacher_through_an_openai_compatible_endpoint(world, tools_url, tmp_path, openai_server):
    """The llm teacher against a local server speaking the OpenAI chat JSON (a hosted vision model
    cannot run here). The server's replies stand for a model: it decodes the inline image and
    plays the oracle's policy; taxonomy prompts (the seed has no categories) get a category."""
    from components.agent.generators.base import GenRequest
    from components.datagen.oracle import OracleGenerator, load_world

    seed = tmp_path / "seed"
    shutil.copytree(world / "world" / "vqa" / "val", seed)
    rows = [json.loads(line) for line in (seed / "vqa.jsonl").read_text().splitlines()]
    (seed / "vqa.jsonl").write_text("".join(json.dumps({**r, "category": None}) + "\n" for r in rows))
    policy = OracleGenerator(load_world(world / "world" / "world.json"), read_vqa(seed), seed)

    def model(body: dict) -> str:
        msgs = body["messages"]
        if isinstance(msgs[-1]["content"], str) and msgs[-1]["content"].startswith("You sort visual"):
            return "visual/shape" if "shape" in msgs[-1]["content"] else "other"
        if msgs[-1]["content"] == "Reply with OK.":
            return "OK"
        ours, images = _decode_teacher_request(body)
        out = policy._one(GenRequest(images=images, messages=ours))
        return out.text.removesuffix(out.stop or "")  # servers drop the stop string

    openai_server.responder = model
    settings = _settings(tmp_path, tools_url, teacher={"base_url": openai_server.base_url, "model": "teacher"})
    result = run_datagen(settings, seed, "llm", 6, tmp_path / "out")
    assert result.rows == 6 and result.balance["selected"] == {"search_required": 3, "search_free": 3}
    assert set(result.categories) <= {"visual/shape", "other"}
    bodies = [r["body"] for r in openai_server.requests]
    assert any(isinstance(b["messages"][-1]["content"], str) and "You sort visual" in b["messages"][-1]["content"]
               for b in bodies)
    assert all(b["model"] == "teacher" for b in bodies)
    assert [v.uri for v in _versions(settings)] == [result.dataset_uri]


def _decode_teacher_request(body: dict):
    """OpenAI chat JSON → our messages + PIL images (what a vision model would read)."""
    import base64
    import io

    from PIL import Image

    ours, images = [], []
    for m in body["messages"]:
        if isinstance(m["content"], list):
            url = next(p["image_url"]["url"] for p in m["content"] if p["type"] == "image_url")
            images.append(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
            text = "".join(p.get("text", "") for p in m["content"] if p["type"] == "text")
            ours.append({"role": m["role"], "content": [{"type": "image"}, {"type": "text", "text": text}]})
        else:
            ours.append(m)
    return ours, images


def test_sigkilled_datagen_resumes_without_asking_the_teacher_twice(world, tools_url, tmp_path, openai_server):
    """The llm teacher is a loopback stand-in (a hosted vision model cannot run here) that plays the
    oracle's policy and counts every request. Run A goes through uninterrupted. Run B is a real
    ``dmms datagen`` process, SIGKILLed by the teacher itself halfway through A's number of calls,
    then started again with the same arguments: it publishes the same dataset version as A, and the
    only teacher request made twice is the one in flight at the kill (its answer never arrived; B
    runs one trajectory at a time so exactly one is in flight) — every answer received is replayed."""
    import hashlib
    import os
    import signal
    import subprocess
    import sys
    import threading

    from components.agent.generators.base import GenRequest
    from components.datagen.oracle import OracleGenerator, load_world

    seed = world / "world" / "vqa" / "train"
    policy = OracleGenerator(load_world(world / "world" / "world.json"), read_vqa(seed), seed)
    calls: list[str] = []
    kill = {"after": None, "proc": None}
    lock = threading.Lock()

    def model(body: dict) -> str:
        if body["messages"][-1]["content"] == "Reply with OK.":
            with lock:
                calls.append("probe")
            return "OK"
        with lock:
            calls.append(hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest())
            if kill["after"] is not None and len(calls) >= kill["after"] and kill["proc"] is not None:
                os.kill(kill["proc"].pid, signal.SIGKILL)
                kill["proc"] = None
        ours, images = _decode_teacher_request(body)
        out = policy._one(GenRequest(images=images, messages=ours))
        return out.text.removesuffix(out.stop or "")

    openai_server.responder = model
    teacher = {"base_url": openai_server.base_url, "model": "teacher", "max_retries": 0}
    n_rows = 12
    # A: uninterrupted, in process
    settings_a = _settings(tmp_path / "a", tools_url, teacher=teacher, datagen={"concurrency": 4})
    result_a = run_datagen(settings_a, seed, "llm", n_rows, tmp_path / "a" / "out")
    total = len(calls)
    assert total > 20
    calls.clear()
    # B: a real process, killed halfway, then restarted
    env = {**os.environ, "DMMS_PROFILE": "tiny", "DMMS_TOOLS__URL": tools_url, "DMMS_TOOLS__TOKEN": TOKEN,
           "DMMS_STORAGE__ROOT": str(tmp_path / "b" / "store"),
           "DMMS_TRACKING__URI": f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}",
           "DMMS_TEACHER__BASE_URL": openai_server.base_url, "DMMS_TEACHER__MODEL": "teacher",
           "DMMS_TEACHER__MAX_RETRIES": "0", "DMMS_DATAGEN__CONCURRENCY": "4"}
    (tmp_path / "b").mkdir()
    cmd = [sys.executable, "-m", "components.cli", "datagen", "--seed-vqa", str(seed), "--teacher", "llm",
           "--n", str(n_rows), "--out", str(tmp_path / "b" / "out")]
    env["DMMS_DATAGEN__CONCURRENCY"] = "1"
    with lock:
        kill["after"] = total // 2
        kill["proc"] = proc = subprocess.Popen(cmd, env=env, cwd=Path(__file__).parents[2],
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    first = len(calls)
    journal = tmp_path / "b" / "out.journal"
    assert (journal / "teacher.jsonl").is_file() and not (tmp_path / "b" / "out").exists()
    kill["after"] = None
    done = subprocess.run(cmd, env=env, cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result_b = json.loads(done.stdout[done.stdout.index("{"):])
    assert result_b["version"] == result_a.version and result_b["rows"] == n_rows
    assert first == total // 2 < len(calls)                     # the restart did ask for what was missing
    trigger = calls[first - 1]
    repeated = [c for c in set(calls) if calls.count(c) > 1]
    assert repeated == [trigger], "a teacher request whose answer had arrived was made again"
    assert calls.count("probe") == 1                            # the resumed run skipped the probe
    assert len(calls) == total + 1                              # an uninterrupted run's calls + the lost one
    assert not journal.exists()                                 # removed once published


def test_a_shortfall_fails_with_the_counts_after_each_filter_and_publishes_nothing(world, tools_url, tmp_path):
    """fail_on_shortfall (the default outside tiny): asked for more rows than the seed can give."""
    seed = world / "world" / "vqa" / "val"
    n_seed = len((seed / "vqa.jsonl").read_text().splitlines())
    settings = _settings(tmp_path, tools_url, datagen={"world": str(world / "world" / "world.json"),
                                                       "fail_on_shortfall": True})
    with pytest.raises(DatagenError, match=rf"delivered \d+ of the {n_seed + 50} rows asked for; after each "
                                           rf"filter: generated {n_seed}, format \d+, .*selected \d+"):
        run_datagen(settings, seed, "oracle", n_seed + 50, tmp_path / "out")
    assert _versions(settings) == []


def test_the_oracle_teacher_is_refused_outside_tiny_unless_allowed(world, tools_url, tmp_path, monkeypatch):
    for key in ("DMMS_TOOLS__TOKEN", "DMMS_STORAGE__ACCESS_KEY", "DMMS_STORAGE__SECRET_KEY"):
        monkeypatch.setenv(key, "x")
    paper = _settings(tmp_path, tools_url, profile="paper", storage={"root": str(tmp_path / "store")})
    with pytest.raises(DatagenError, match=r"oracle teacher .* synthetic.*DMMS_DATAGEN__ALLOW_SYNTHETIC=true"):
        run_datagen(paper, world / "world" / "vqa" / "val", "oracle", 4, tmp_path / "out")
    assert not (tmp_path / "out").exists()
