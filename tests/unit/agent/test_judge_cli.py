"""``dmms judge``: rows in, the same rows with verdicts out (rule judge; the LLM judge through the
loopback OpenAI stand-in); a malformed row is refused with its line and writes nothing."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from components.cli import _register, app
from tests.fixtures.openai_server import Reply

ROWS = [
    {"question": "Which city?", "answers": ["Paris"], "prediction": "The capital is Paris.", "id": "a"},
    {"question": "Which city?", "answers": ["Paris"], "prediction": "Paris or Rome", "id": "b"},
    {"question": "How tall?", "answers": ["156"], "prediction": "153 m", "answer_range": [150, 162], "id": "c"},
    {"question": "Which city?", "answers": ["Paris"], "prediction": "", "id": "d"},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_rule_judge_rows_in_verdicts_out(tmp_path):
    _register()
    _write(tmp_path / "in.jsonl", ROWS)
    out = CliRunner().invoke(app, ["judge", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl")])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip().splitlines()[-1]) == {"rows": 4, "correct": 2, "errors": 0,
                                                                "dmms.judge.prompt_version": "rules-v2"}
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in got] == ["a", "b", "c", "d"]                 # rows kept, in order, fields kept
    assert [r["correct"] for r in got] == [True, False, True, False]
    assert all(r["judge"] == "rule" and r["detail"] for r in got)
    assert "hedges" in got[1]["detail"] and "range" in got[2]["detail"]


def test_llm_judge_through_the_endpoint(tmp_path, openai_server, monkeypatch):
    _register()
    monkeypatch.setenv("DMMS_JUDGE__BASE_URL", openai_server.base_url)
    monkeypatch.setenv("DMMS_JUDGE__MODEL", "judge")
    monkeypatch.setenv("DMMS_JUDGE__MAX_RETRIES", "0")
    monkeypatch.setenv("DMMS_JUDGE__CONCURRENCY", "1")
    openai_server.replies.extend([Reply(text="CORRECT"), Reply(text="INCORRECT"), Reply(status=500)])
    _write(tmp_path / "in.jsonl", ROWS)
    out = CliRunner().invoke(app, ["judge", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl"),
                                   "--judge", "llm"])
    assert out.exit_code == 0, out.output
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in got] == [True, False, False, False]
    assert got[2]["error"] is True and "judge error" in got[2]["detail"]
    assert got[0]["judge"] == "llm:judge" and len(openai_server.requests) == 3  # a 500 is not asked again; the empty answer is not sent


def test_malformed_row_is_refused_with_its_line_and_nothing_written(tmp_path):
    _register()
    (tmp_path / "in.jsonl").write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"question": "q", "answers": "x"}) + "\n")
    out = CliRunner().invoke(app, ["judge", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl")])
    assert out.exit_code == 2 and f"{tmp_path / 'in.jsonl'}:2" in out.output
    assert not (tmp_path / "out.jsonl").exists()
    out = CliRunner().invoke(app, ["judge", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                                   "--judge", "oracle"])
    assert out.exit_code == 2 and "rule or llm" in out.output
