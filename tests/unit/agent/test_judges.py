"""Judges: a table of tricky answer pairs for the rule judge; the LLM judge against a real HTTP
server on loopback speaking the OpenAI JSON (tests/fixtures/openai_server.py says why)."""

import pytest

from components.agent.judges import LLMJudge, RuleJudge, normalise, parse_verdict
from components.common.llm import LLMError
from components.common.settings import LLMEndpointSettings
from tests.fixtures.openai_server import Reply

TABLE = [
    # golds, prediction, expected
    (["1889"], "1889", True),
    (["1889"], "in 1889", True),
    (["1889"], "It was completed in 1889.", True),
    (["1889"], "18890", False),
    (["1889"], "1887 or 1889", False),
    (["1889"], "1,889", True),
    (["3.5"], "3.50", True),
    (["3.5"], "3.6", False),
    (["Eiffel Tower", "Tour Eiffel"], "the eiffel tower", True),
    (["Eiffel Tower"], "Eiffel", False),
    (["Paris"], "Paris, France", True),
    (["Paris"], "Parisian", False),
    (["São Paulo"], "Sao Paulo", True),
    (["red"], "Unable to answer due to lack of relevant information", False),
    (["red"], "", False),
    (["red"], None, False),
    (["New York"], "york", False),
    (["Gustave Eiffel"], "The architect was Gustave Eiffel, a French engineer", True),
    (["blue"], "it is blue and it is a very long answer that goes on and on about many other things "
               "which could match by accident", False),
]


@pytest.mark.parametrize("golds,prediction,expected", TABLE)
def test_rule_judge_table(golds, prediction, expected):
    verdict = RuleJudge().judge("q?", golds, prediction)
    assert verdict.correct is expected, verdict
    assert verdict.judge == "rule"


def test_numeric_tolerance_is_configurable():
    assert RuleJudge(rel_tol=0.05).judge("q", ["100"], "103").correct
    assert not RuleJudge(rel_tol=0.05).judge("q", ["100"], "110").correct
    assert not RuleJudge().judge("q", ["100"], "103").correct


def test_normalise():
    assert normalise("The  Eiffel-Tower!") == "eiffel tower"
    assert normalise("It costs 3.5 dollars.") == "it costs 3.5 dollars"


def test_parse_verdict():
    assert parse_verdict("CORRECT") is True
    assert parse_verdict("Incorrect") is False
    assert parse_verdict("The answer is INCORRECT.") is False
    assert parse_verdict("unsure") is None


async def test_llm_judge_sends_paper_prompt_and_caches(openai_server, tmp_path):
    openai_server.replies.append(Reply(text="CORRECT"))
    endpoint = LLMEndpointSettings(base_url=openai_server.base_url, model="judge")
    judge = LLMJudge(endpoint, cache_path=tmp_path / "verdicts.db")
    v1 = await judge.ajudge("When was it built?", ["1889"], "eighteen eighty-nine")
    v2 = await judge.ajudge("When was it built?", ["1889"], "eighteen eighty-nine")
    assert v1.correct and v2.correct
    assert v2.detail == "cached"
    assert len(openai_server.requests) == 1
    prompt = openai_server.requests[0]["body"]["messages"][0]["content"]
    assert "When was it built?" in prompt and "1889" in prompt and "eighteen eighty-nine" in prompt
    assert "CORRECT or INCORRECT" in prompt
    await judge.aclose()
    # a new judge on the same cache file does not ask again
    judge2 = LLMJudge(endpoint, cache_path=tmp_path / "verdicts.db")
    assert (await judge2.ajudge("When was it built?", ["1889"], "eighteen eighty-nine")).correct
    assert len(openai_server.requests) == 1
    await judge2.aclose()


async def test_llm_judge_incorrect_and_garbage(openai_server):
    endpoint = LLMEndpointSettings(base_url=openai_server.base_url, model="judge", max_retries=0)
    judge = LLMJudge(endpoint)
    openai_server.replies.append(Reply(text="INCORRECT"))
    assert not (await judge.ajudge("q", ["a"], "b")).correct
    openai_server.replies.append(Reply(text="maybe?"))
    with pytest.raises(LLMError, match="neither CORRECT nor INCORRECT"):
        await judge.ajudge("q", ["a"], "c")
    assert not (await judge.ajudge("q", ["a"], "  ")).correct  # empty: no request made
    assert len(openai_server.requests) == 2
    await judge.aclose()
