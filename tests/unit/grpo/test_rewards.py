"""GRPO reward functions on hand-built completions: correctness, format, search penalty, metrics,
and the LLM judge through a real OpenAI-compatible HTTP server on loopback (``openai_server``:
a stand-in for the hosted judge, which cannot run here)."""

from __future__ import annotations

import doctest

import pytest

from components.common.settings import Settings
from components.grpo import rewards
from components.grpo.rewards import correctness_reward, format_reward, make_judge, make_reward_funcs

SEARCH = "<reason>Need the year.</reason><text_search>Zorblat monument</text_search>"
CROP = "<reason>The logo matters.</reason><img_search>[0, 0, 64, 64]</img_search>"
RIGHT = "<reason>The page says 1889.</reason><answer>1889</answer>"
WRONG = "<reason>Guess.</reason><answer>1901</answer>"
GIVE_UP = "<reason>Nothing found.</reason><answer>Unable to answer due to lack of relevant information</answer>"


def _msg(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_doctests_pass():
    result = doctest.testmod(rewards)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize(("turns", "gold", "correct", "fmt"), [
    ([RIGHT], ["1889"], 1.0, 1.0),
    ([SEARCH, RIGHT], ["1889"], 1.0, 1.0),
    ([SEARCH, CROP, RIGHT], ["1889", "eighteen eighty-nine"], 1.0, 1.0),
    ([SEARCH, WRONG], ["1889"], 0.0, 1.0),
    ([SEARCH, "I think 1889", RIGHT], ["1889"], 1.0, 2 / 3),   # correct, one invalid turn
    ([SEARCH, SEARCH], ["1889"], 0.0, 0.0),                    # never answered
    ([GIVE_UP], ["1889"], 0.0, 1.0),                           # well formed, but a give-up is not correct
    (["<answer>1889</answer>"], ["1889"], 1.0, 0.0),           # right answer, no <reason>: format 0
])
def test_reward_table(turns, gold, correct, fmt):
    final = turns[-1]
    from components.agent.protocol import parse_turn

    action = parse_turn(final)
    answer = action.answer if action.kind == "answer" else None
    if answer is None and "<answer>" in final:  # the completion's answer even when the turn is malformed
        answer = final.split("<answer>")[1].split("</answer>")[0]
    got_c = correctness_reward([None], [_msg("".join(turns))], answers=[gold], final_answer=[answer])
    got_f = format_reward([None], [_msg("".join(turns))], turn_texts=[turns])
    assert got_c == [correct]
    assert got_f == [pytest.approx(fmt)]


def test_single_turn_completions_are_parsed_without_rollout_fields():
    comps = [_msg(RIGHT), _msg(WRONG), "plain text, no tags", _msg(SEARCH)]
    assert correctness_reward([None] * 4, comps, answers=[["1889"]] * 4) == [1.0, 0.0, 0.0, 0.0]
    assert format_reward([None] * 4, comps) == [1.0, 1.0, 0.0, 0.0]


def test_search_penalty_applies_only_to_correct_answers_that_searched():
    kw = dict(answers=[["1889"]] * 4, final_answer=["1889", "1889", "1901", "1889"],
              text_searches=[1, 0, 2, 0], image_searches=[0, 0, 0, 0], crop_searches=[0, 0, 0, 1])
    got = correctness_reward([None] * 4, [_msg("")] * 4, search_penalty=0.1, **kw)
    assert got == [pytest.approx(0.9), 1.0, 0.0, pytest.approx(0.9)]
    assert correctness_reward([None] * 4, [_msg("")] * 4, **kw) == [1.0, 1.0, 0.0, 1.0]


def test_format_reward_logs_format_rate_and_searches_per_rollout():
    logged: dict[str, float] = {}
    format_reward([None] * 2, [None] * 2, turn_texts=[[SEARCH, RIGHT], [SEARCH, SEARCH]],
                  text_searches=[1, 2], image_searches=[0, 0], crop_searches=[1, 0],
                  log_metric=lambda name, value: logged.__setitem__(name, value))
    assert logged == {"format/rate": 0.5, "searches/text_searches_per_rollout": 1.5,
                      "searches/image_searches_per_rollout": 0.0, "searches/crop_searches_per_rollout": 0.5,
                      "searches/per_rollout": 2.0}


def test_make_reward_funcs_names_order_and_penalty():
    settings = Settings(profile="tiny", grpo={"search_penalty": 0.25})
    funcs = make_reward_funcs(settings)
    assert [f.__name__ for f in funcs] == ["correctness", "format"]
    got = funcs[0]([None], [_msg(RIGHT)], answers=[["1889"]], final_answer=["1889"], text_searches=[1])
    assert got == [0.75]


def test_llm_judge_needs_an_endpoint():
    with pytest.raises(ValueError, match="DMMS_JUDGE__BASE_URL"):
        make_judge(Settings(profile="tiny", grpo={"judge": "llm"}))
    assert make_judge(Settings(profile="tiny", grpo={"judge": "auto"})).name == "rule"


def test_llm_judge_over_http_decides_correctness(openai_server, tmp_path):
    """The paper's judge: each prediction is sent to the endpoint; CORRECT/INCORRECT decide;
    verdicts are cached (a second call with the same predictions sends nothing)."""
    openai_server.responder = lambda body: "INCORRECT" if "Someone else" in body["messages"][0]["content"] else "CORRECT"
    settings = Settings(profile="tiny", grpo={"judge": "auto"},
                        judge={"base_url": openai_server.base_url, "model": "judge-x", "max_retries": 0})
    correctness = make_reward_funcs(settings, cache_dir=tmp_path)[0]
    kw = dict(answers=[["Gustave Eiffel"]] * 3, question=["Who built it?"] * 3,
              final_answer=["It was Gustave Eiffel's firm", "Someone else", None])
    assert correctness([None] * 3, [_msg("")] * 3, **kw) == [1.0, 0.0, 0.0]
    assert len(openai_server.requests) == 2  # no request for the missing answer
    assert correctness([None] * 3, [_msg("")] * 3, **kw) == [1.0, 0.0, 0.0]
    assert len(openai_server.requests) == 2
