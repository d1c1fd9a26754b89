"""The paper's filters: each drops exactly what it should, the counts add up, verdicts are stored;
the LLM judge is used when ``settings.judge`` is configured (against a local OpenAI-JSON server)."""

from __future__ import annotations

import re

from components.agent.protocol import EndReason, Limits, ProtocolState, parse_turn
from components.agent.trajectory import Trajectory
from components.common.settings import Settings
from components.datagen.filters import STAGES, apply_filters
from tests.fixtures.openai_server import Reply

SEARCH = "<reason>Need facts.</reason><text_search>Gleimul Palace completed</text_search>"
CROP = "<reason>One region matters.</reason><img_search>[0, 0, 10, 10]</img_search>"


def _traj(sid: str, turns: list[str], answers=("1902",), limits: Limits | None = None) -> Trajectory:
    limits = limits or Limits()
    t = Trajectory.start(sid, "In what year was the landmark in this image completed?", list(answers),
                         b"png-bytes", limits=limits)
    state = ProtocolState(limits=limits)
    for raw in turns:
        action = state.check(parse_turn(raw))
        end = state.end_reason()
        t.add_turn(raw, action, None if end else "<information>\nCompleted: 1902.\n</information>")
        if end:
            break
    t.finish(state.end_reason() or EndReason.TOOL_ERROR)
    return t


def _answer(text: str) -> str:
    return f"<reason>The page says so.</reason><answer>{text}</answer>"


def _cases() -> list[Trajectory]:
    return [
        _traj("good", [SEARCH, _answer("1902")]),
        _traj("good-alias", [CROP, SEARCH, _answer("It was completed in 1902")]),
        _traj("bad-format", [SEARCH, "I think 1902", _answer("1902")]),
        _traj("second-image", [CROP, CROP, _answer("1902")]),
        _traj("too-long", [SEARCH] * 9 + [_answer("1902")]),
        _traj("no-answer", [SEARCH, SEARCH]),  # ended on a tool error
        _traj("wrong", [SEARCH, _answer("1903")]),
        _traj("gave-up", [SEARCH, _answer("Unable to answer due to lack of relevant information")]),
    ]


async def test_each_filter_drops_what_it_should_and_counts_add_up():
    kept, report = await apply_filters(_cases(), Settings(profile="tiny"))
    assert [t.sample_id for t in kept] == ["good", "good-alias"]
    assert list(report.counts) == list(STAGES)
    assert report.counts == {"generated": 8, "format": 6, "turns": 5, "answer": 4, "correct": 2}
    assert report.dropped == {"format": ["bad-format", "second-image"], "turns": ["too-long"],
                              "answer": ["no-answer"], "correct": ["wrong", "gave-up"]}
    assert sum(map(len, report.dropped.values())) == report.counts["generated"] - report.counts["correct"]
    assert all(t.judge.correct and t.judge.judge == "rule" for t in kept)


async def test_turn_limit_comes_from_settings():
    settings = Settings(profile="tiny", agent={"max_turns": 3})
    trajs = [_traj("two", [SEARCH, _answer("1902")]), _traj("three", [SEARCH, SEARCH, _answer("1902")])]
    kept, report = await apply_filters(trajs, settings)
    assert [t.sample_id for t in kept] == ["two"] and report.dropped["turns"] == ["three"]


async def test_llm_judge_when_configured(openai_server):
    def grade(body: dict) -> str:  # stands for a judge model: reads the prediction line of the prompt
        prediction = re.search(r"Prediction: (.*)", body["messages"][-1]["content"]).group(1)
        return "CORRECT" if prediction.strip() == "1902" else "INCORRECT"

    openai_server.responder = grade
    settings = Settings(profile="tiny", judge={"base_url": openai_server.base_url, "model": "judge"})
    kept, report = await apply_filters([_traj("a", [SEARCH, _answer("1902")]),
                                        _traj("b", [SEARCH, _answer("1903")])], settings)
    assert [t.sample_id for t in kept] == ["a"] and report.counts["correct"] == 1
    assert kept[0].judge.judge == "llm:judge"
    assert len(openai_server.requests) == 2


async def test_llm_judge_failure_is_counted_and_dropped_not_a_silent_pass(openai_server):
    """An unreadable verdict (twice) drops the trajectory and is counted; the batch carries on."""
    openai_server.replies.extend([Reply(text="maybe"), Reply(text="maybe")])
    openai_server.responder = lambda body: "CORRECT"
    settings = Settings(profile="tiny", judge={"base_url": openai_server.base_url, "model": "judge",
                                               "concurrency": 1})
    kept, report = await apply_filters([_traj("a", [SEARCH, _answer("1902")]),
                                        _traj("b", [SEARCH, _answer("1902")])], settings)
    assert [t.sample_id for t in kept] == ["b"]
    assert report.judge_errors == 1 and report.dropped["correct"] == ["a"]
