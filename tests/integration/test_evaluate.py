"""Evaluation end to end: the tiny model (direct, rag) against the real tool-server and MLflow server.

Everything runs for real on loopback: the tool-server under uvicorn (``toolserver`` fixture), an
``mlflow server`` (``mlflow_server``), the tiny random Qwen2.5-VL through transformers. The
"OpenAI-compatible model" cases use the ``openai_server`` stand-in (a real HTTP server that speaks
the chat JSON: hosted models cannot run here), scripted to answer and to judge.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
from mlflow import MlflowClient

from components.agent.tiny import build_tiny_model
from components.common.settings import load_settings
from components.evaluate.generate import ModelSpec
from components.evaluate.run import EvalError, evaluate
from tests.fixtures.toolserver import TOKEN


def make_world_bench(folder, entities, n=4):
    """A VQA-format benchmark over the tool-server's corpus: which year was the monument completed?"""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    rows = []
    for e in [e for e in entities if e.image_path][:n]:
        shutil.copyfile(e.corpus_root / e.image_path, folder / e.image_path)
        rows.append({"id": e.doc_id, "image": e.image_path, "answers": [str(e.year)],
                     "question": f"In which year was the {e.name} monument completed?", "entity": e.name})
    (folder / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def world_bench(toolserver, tmp_path_factory):
    for e in toolserver.entities:
        e.corpus_root = toolserver.corpus
    folder = tmp_path_factory.mktemp("bench") / "world"
    rows = make_world_bench(folder, toolserver.entities)
    return folder, rows


def settings_for(mlflow_server, toolserver, tmp_path, **extra):
    return load_settings(
        tracking={"uri": mlflow_server, "experiment": "evaluate-tests", "model_name": f"m-{uuid.uuid4().hex[:8]}"},
        tools={"url": toolserver.url, "token": TOKEN}, model={"max_new_tokens": 16},
        evaluate={"out_dir": str(tmp_path / "eval"), "concurrency": 4, **extra.pop("evaluate", {})}, **extra)


def answering(rows, right: set[str]):
    """A responder for the OpenAI stand-in: the right year for questions whose id is in ``right``."""
    by_question = {r["question"]: r for r in rows}

    def respond(body):
        text = json.dumps(body["messages"])
        row = next(r for q, r in by_question.items() if q in text)
        answer = row["answers"][0] if row["id"] in right else "1066"
        return f"<reason>I recall the monument.</reason>\n<answer>{answer}</answer>"
    return respond


def test_direct_and_rag_with_tiny_model(tiny_model, world_bench, toolserver, mlflow_server, tmp_path):
    folder, rows = world_bench
    settings = settings_for(mlflow_server, toolserver, tmp_path)
    result = evaluate(settings, ModelSpec(name=str(tiny_model)), [f"world={folder}"], ["direct", "rag"],
                      tools_url=toolserver.url)
    samples = [json.loads(line) for line in open(result.files["samples"])]
    assert len(samples) == 2 * len(rows)
    for s in samples:  # a verdict and the judge's name on every sample
        assert isinstance(s["correct"], bool) and s["judge"] == "rule" and s["judge_detail"]
        assert s["model_turns"] == 1 and s["turns"][-1]["role"] == "model"
    rag = [s for s in samples if s["mode"] == "rag"]
    for s in rag:  # the fixed workflow: whole image, then the question as text, then the answer
        tools = [t for t in s["turns"] if t["role"] == "tool"]
        assert [t["action"] for t in tools] == ["image_search", "text_search"]
        assert all(t["error"] is None and t["text"] for t in tools)
        assert tools[1]["query"] == s["question"]
    # the text search with the question finds the monument's own page: its year is in the summary
    gold = {r["id"]: r["answers"][0] for r in rows}
    assert sum(gold[s["item_id"]] in s["turns"][1]["text"] for s in rag) >= len(rag) // 2
    m = result.metrics
    assert m["searches_per_question.world.rag"] == 2.0 and m["text_share.world.rag"] == 50.0
    assert m["searches_per_question.world.direct"] == 0.0
    run = MlflowClient(mlflow_server).get_run(result.run_id)
    assert run.data.tags["dmms.step"] == "evaluate"
    assert run.data.tags["dmms.benchmarks_version"] == result.benchmarks_version
    assert run.data.tags["dmms.bench.world.version"] == result.bench_versions["world"]
    assert len(run.data.tags["dmms.index_version"]) == 16  # the index version it searched (tool-server /readyz)
    assert run.data.metrics["accuracy.avg.rag"] == pytest.approx(m["accuracy.avg.rag"])
    arts = {a.path for a in MlflowClient(mlflow_server).list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/samples.jsonl", "evaluation/table.md",
            "evaluation/table.csv", "evaluation/plots"} <= arts
    table = open(result.files["table_md"]).read()
    assert table.splitlines()[0] == "| Mode | World | Avg |" and "| rag |" in table


def test_openai_model_verdicts_and_accuracy(world_bench, toolserver, mlflow_server, openai_server, tmp_path):
    folder, rows = world_bench
    right = {rows[0]["id"], rows[1]["id"]}
    openai_server.responder = answering(rows, right)
    settings = settings_for(mlflow_server, toolserver, tmp_path)
    spec = ModelSpec(backend="openai", name="served-vlm", base_url=openai_server.base_url)
    result = evaluate(settings, spec, [f"world={folder}"], ["direct"])
    samples = {s["item_id"]: s for s in map(json.loads, open(result.files["samples"]))}
    assert {k for k, s in samples.items() if s["correct"]} == right
    assert result.metrics["accuracy.world.direct"] == pytest.approx(100 * len(right) / len(rows))
    assert result.metrics["format_error_rate.all.direct"] == 0.0
    first = openai_server.requests[0]["body"]
    assert first["model"] == "served-vlm" and "</answer>" in first["stop"]
    assert any(p.get("type") == "image_url" for p in first["messages"][1]["content"])


def test_llm_judge_verdicts_are_stored_with_its_name(world_bench, toolserver, mlflow_server, openai_server,
                                                     tmp_path):
    folder, rows = world_bench
    model_reply = answering(rows, {r["id"] for r in rows})

    def respond(body):  # the judge says INCORRECT to everything; the model answers right
        return "INCORRECT" if body["model"] == "judge-x" else model_reply(body)
    openai_server.responder = respond
    settings = settings_for(mlflow_server, toolserver, tmp_path, evaluate={"judge": "llm"},
                            judge={"base_url": openai_server.base_url, "model": "judge-x"})
    spec = ModelSpec(backend="openai", name="served-vlm", base_url=openai_server.base_url)
    result = evaluate(settings, spec, [f"world={folder}"], ["direct"])
    samples = list(map(json.loads, open(result.files["samples"])))
    assert all(s["judge"] == "llm:judge-x" and s["correct"] is False for s in samples)
    judged = [r for r in openai_server.requests if r["body"]["model"] == "judge-x"]
    assert len(judged) == len(rows) and re.search(r"CORRECT", judged[0]["body"]["messages"][0]["content"])


def test_bad_requests_say_what_to_change(world_bench, toolserver, mlflow_server, tmp_path):
    folder, _ = world_bench
    settings = settings_for(mlflow_server, toolserver, tmp_path)
    spec = ModelSpec(name="unused")
    with pytest.raises(EvalError, match="use one or more of direct, rag, agent"):
        evaluate(settings, spec, [f"world={folder}"], ["oracle"])
    with pytest.raises(EvalError, match="DMMS_JUDGE__BASE_URL"):
        evaluate(settings_for(mlflow_server, toolserver, tmp_path, evaluate={"judge": "llm"}), spec,
                 [f"world={folder}"], ["direct"])


def test_agent_mode_with_tiny_model(tiny_model, world_bench, toolserver, mlflow_server, tmp_path):
    """The random tiny model rarely follows the protocol: its invalid turns are counted as format errors."""
    folder, rows = world_bench
    settings = settings_for(mlflow_server, toolserver, tmp_path, agent={"max_turns": 3, "max_invalid_turns": 2})
    result = evaluate(settings, ModelSpec(name=str(tiny_model)), [f"world={folder}"], ["agent", "direct"],
                      tools_url=toolserver.url)
    samples = [json.loads(line) for line in open(result.files["samples"])]
    agent = [s for s in samples if s["mode"] == "agent"]
    assert len(agent) == len(rows) and len(samples) == 2 * len(rows)
    for s in agent:
        assert 1 <= s["model_turns"] <= 3 and s["end_reason"] and s["judge"] == "rule"
        assert s["format_errors"] == sum(t["action"] == "invalid" for t in s["turns"] if t["role"] == "model")
    assert result.metrics["turns.world.agent"] >= 1.0
    table = open(result.files["table_md"]).read().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == ["agent", "direct"]


def test_agent_mode_searches_then_answers(world_bench, toolserver, mlflow_server, openai_server, tmp_path):
    """A scripted OpenAI-compatible agent: text search with the monument's name, then the year it read."""
    folder, rows = world_bench

    def respond(body):
        text = json.dumps(body["messages"])
        row = next(r for r in rows if r["question"] in text)
        if not any(m["role"] == "assistant" for m in body["messages"]):
            return f"<reason>Look it up.</reason>\n<text_search>{row['entity']} monument</text_search>"
        info = body["messages"][-1]["content"]
        info = info if isinstance(info, str) else json.dumps(info)
        year = re.search(r"\b(1[6-9]\d\d)\b", info)
        return f"<reason>Found it.</reason>\n<answer>{year.group(1) if year else 'unknown'}</answer>"
    openai_server.responder = respond
    settings = settings_for(mlflow_server, toolserver, tmp_path)
    spec = ModelSpec(backend="openai", name="agent-vlm", base_url=openai_server.base_url)
    result = evaluate(settings, spec, [f"world={folder}"], ["agent"], tools_url=toolserver.url)
    samples = [json.loads(line) for line in open(result.files["samples"])]
    for s in samples:
        assert [t["role"] for t in s["turns"]] == ["model", "tool", "model"]
        assert s["turns"][1]["action"] == "text_search" and s["turns"][1]["text"]
        assert s["text_searches"] == 1 and s["model_turns"] == 2 and s["format_errors"] == 0
    m = result.metrics
    assert m["searches_per_question.world.agent"] == 1.0 and m["text_share.world.agent"] == 100.0
    assert m["accuracy.world.agent"] >= 50.0  # the monument's page (with its year) comes back first
