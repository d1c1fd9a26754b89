"""Judges: a table of adversarial and paraphrase cases for the rule judge (it is a GRPO reward, so
every hedge a policy could learn must be INCORRECT); a table of LLM verdict strings for the parser;
the LLM judge against a real HTTP server on loopback speaking the OpenAI JSON
(tests/fixtures/openai_server.py says why)."""

import pytest

from components.agent.judges import RuleJudge, normalise
from components.agent.llm_judge import LLMJudge, parse_verdict
from components.common.settings import LLMEndpointSettings
from tests.fixtures.openai_server import Reply

RULE_TABLE = [
    # golds, prediction, expected: correct answers and paraphrases (kept right)
    (["Paris"], "Paris", True),
    (["Paris"], "The capital is Paris.", True),
    (["Paris"], "paris", True),
    (["1889"], "1889", True),
    (["1889"], "in 1889", True),
    (["1889"], "It was completed in 1889.", True),
    (["1889"], "1,889", True),
    (["156 m"], "156 m", True),
    (["156 m"], "156 metres", True),
    (["156 m"], "It is 156m tall.", True),
    (["156"], "156 meters", True),
    (["3"], "There are 3 circles.", True),
    (["3"], "three", True),
    (["three"], "There are 3 circles.", True),
    (["21"], "twenty one", True),
    (["1000"], "1,000", True),
    (["1000"], "1 000", True),
    (["3.5"], "3.50", True),
    (["Eiffel Tower", "Tour Eiffel"], "the eiffel tower", True),
    (["Eiffel Tower", "Tour Eiffel"], "Tour Eiffel", True),
    (["São Paulo"], "Sao Paulo", True),
    (["Gustave Eiffel"], "The architect was Gustave Eiffel, a French engineer", True),
    (["Paris", "Paris, France"], "Paris, France", True),
    (["red"], "It is red.", True),
    (["No"], "No", True),
    # hedges
    (["Paris"], "Paris or Rome", False),
    (["Paris"], "either Paris or Rome", False),
    (["Paris"], "maybe Paris", False),
    (["Paris"], "Perhaps it is Paris.", False),
    (["Paris"], "probably Paris", False),
    (["1889"], "1887 or 1889", False),
    (["1889"], "between 1887 and 1889", False),
    (["156 m"], "150 or 156 m", False),
    # lists
    (["Paris"], "Rome, Paris, Berlin, London, Madrid, Lisbon", False),
    (["Paris"], "Paris, Rome", False),
    (["Paris"], "Paris and Rome", False),
    (["Paris"], "Paris / Rome", False),
    (["Paris"], "Paris; Rome; Berlin", False),
    (["Paris"], "Paris, France", False),  # two names: an alias must spell the compound out
    (["1889"], "1887, 1888, 1889", False),
    # negations
    (["Paris"], "not Paris", False),
    (["Paris"], "It is not Paris.", False),
    (["Paris"], "Paris is wrong, it is Rome", False),
    (["Paris"], "It isn't Paris", False),
    (["Paris"], "definitely no Paris", False),
    # near misses
    (["1889"], "18890", False),
    (["1889"], "1890", False),
    (["3.5"], "3.6", False),
    (["156 m"], "156 km", False),
    (["3"], "4 circles", False),
    (["Eiffel Tower"], "Eiffel", False),
    (["Paris"], "Parisian", False),
    (["New York"], "york", False),
    (["red"], "Unable to answer due to lack of relevant information", False),
    (["red"], "", False),
    (["red"], None, False),
    (["blue"], "it is blue and it is a very long answer that goes on and on about many other things "
               "which could match by accident", False),
]


@pytest.mark.parametrize("golds,prediction,expected", RULE_TABLE)
def test_rule_judge_table(golds, prediction, expected):
    verdict = RuleJudge().judge("What is it?", golds, prediction)
    assert verdict.correct is expected, verdict
    assert verdict.judge == "rule" and not verdict.error


def test_rule_table_is_large_enough():
    assert len(RULE_TABLE) >= 40
    assert sum(not e for *_, e in RULE_TABLE) >= 25


def test_numbers_copied_from_the_question_are_ignored():
    judge = RuleJudge()
    assert judge.judge("How many floors did it have in 1920?", ["12"], "In 1920 it had 12 floors").correct
    assert not judge.judge("How tall is it?", ["156 m"], "It is 156 m tall and 1889 was the year").correct


def test_infoseek_range():
    judge = RuleJudge()
    assert judge.judge("How long?", ["156"], "153 m", answer_range=(150.0, 162.0)).correct
    assert not judge.judge("How long?", ["156"], "170 m", answer_range=(150.0, 162.0)).correct
    assert not judge.judge("How long?", ["156"], "150 or 160", answer_range=(150.0, 162.0)).correct


def test_numeric_tolerance_is_configurable_and_years_stay_exact():
    assert RuleJudge(rel_tol=0.05).judge("q", ["100"], "103").correct
    assert not RuleJudge(rel_tol=0.05).judge("q", ["100"], "110").correct
    assert not RuleJudge().judge("q", ["100"], "103").correct
    assert not RuleJudge(rel_tol=0.05).judge("q", ["1889"], "1890").correct


def test_verdicts_say_why():
    judge = RuleJudge()
    assert "hedges" in judge.judge("q", ["Paris"], "Paris or Rome").detail
    assert "negates" in judge.judge("q", ["Paris"], "not Paris").detail
    assert "lists" in judge.judge("q", ["Paris"], "Rome, Paris, Berlin").detail


def test_normalise():
    assert normalise("The  Eiffel-Tower!") == "eiffel tower"
    assert normalise("It costs 3.5 dollars.") == "it costs 3.5 dollars"
    assert normalise("Twenty-one metres") == "21 m"


VERDICT_TABLE = [
    ("CORRECT", True),
    ("correct", True),
    (" Correct.", True),
    ("**CORRECT**", True),
    ('"CORRECT"', True),
    ("Verdict: CORRECT", True),
    ("INCORRECT", False),
    ("Incorrect.", False),
    ("**Incorrect**", False),
    ("The answer is INCORRECT.", False),
    ("Not correct", False),
    ("The prediction is not correct.", False),
    ("NOT CORRECT", False),
    ("isn't correct", False),
    ("CORRECT or INCORRECT", False),
    ("The prediction is correct.", None),
    ("Correct, because the years match", None),
    ("maybe", None),
    ("unsure", None),
    ("", None),
    ("   ", None),
    ("I cannot grade this", None),
    ("YES", None),
]


@pytest.mark.parametrize("text,expected", VERDICT_TABLE)
def test_parse_verdict_table(text, expected):
    assert parse_verdict(text) is expected


def test_verdict_table_is_large_enough():
    assert len(VERDICT_TABLE) >= 15


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


async def test_llm_judge_prompt_carries_the_range(openai_server):
    openai_server.replies.append(Reply(text="CORRECT"))
    judge = LLMJudge(LLMEndpointSettings(base_url=openai_server.base_url, model="judge"))
    assert (await judge.ajudge("How long?", ["156"], "153 m", answer_range=(150.0, 162.0))).correct
    assert "Accepted numeric range: 150 to 162" in openai_server.requests[0]["body"]["messages"][0]["content"]
    await judge.aclose()


async def test_llm_judge_unreadable_verdict_is_retried_once_then_an_error(openai_server):
    endpoint = LLMEndpointSettings(base_url=openai_server.base_url, model="judge", max_retries=0)
    judge = LLMJudge(endpoint)
    openai_server.replies.append(Reply(text="INCORRECT"))
    assert not (await judge.ajudge("q", ["a"], "b")).correct
    # unreadable, then readable: the retry decides
    openai_server.replies.extend([Reply(text="maybe?"), Reply(text="CORRECT")])
    v = await judge.ajudge("q", ["a"], "c")
    assert v.correct and not v.error
    # unreadable twice: INCORRECT, flagged, not raised
    openai_server.replies.extend([Reply(text="The prediction is correct."), Reply(text="yes")])
    v = await judge.ajudge("q", ["a"], "d")
    assert not v.correct and v.error and "unreadable" in v.detail
    # a failing endpoint: the chat client's retries (max_retries=0 here) decide; the judge does not
    # ask again on top of them
    openai_server.replies.extend([Reply(status=503), Reply(text="CORRECT")])
    v = await judge.ajudge("q", ["a"], "e")
    assert not v.correct and v.error and "request failed" in v.detail and "HTTP 503" in v.detail
    assert not (await judge.ajudge("q", ["a"], "  ")).correct  # empty: no request made
    assert len(openai_server.requests) == 6
    openai_server.replies.clear()
    await judge.aclose()


def test_unknown_prompt_version_is_refused_at_construction():
    with pytest.raises(ValueError, match="DMMS_JUDGE__PROMPT_VERSION"):
        LLMJudge(LLMEndpointSettings(base_url="http://127.0.0.1:9/v1"), prompt_version="v99")
