"""The evaluation modes: ``direct`` (no tools), ``rag`` (a fixed search workflow) and ``agent`` (the loop).

Why these three: they are the paper's baselines (Table 1) — what the model knows alone, what a
fixed "search the image, then the question" pipeline adds, and what on-demand search adds. Each
mode answers one :class:`BenchItem` and returns an :class:`EvalSample` that the judge has scored.

- direct: one model turn; the prompt (``baseline_direct.txt`` of the agent's prompt version,
  :func:`components.agent.protocol.baseline_messages`) asks for ``<reason>`` + ``<answer>``.
- rag: whole-image search, then a text search with the question, then one model turn with both
  results in ``<information>`` blocks (``baseline_rag.txt``). Tool failures become text.

The baselines use the same prompt version as the agent (``DMMS_AGENT__PROMPT_VERSION``): a model
trained on the short ``t1`` wording meets ``t1`` in every mode.
- agent: the agent loop (``components/agent/loop.py``), run by :mod:`components.evaluate.agent_mode`.

The model's turn is read with the protocol's parser (:func:`parse_turn`), as in agent mode: the
prediction is what an ``<answer>`` holds; a turn that is not a valid ``<answer>`` is a format error
and "no answer" (never its raw text judged), so no mode gets credit the others cannot.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PIL import Image

from components.agent.judges import Verdict
from components.agent.judging import Judge
from components.agent.protocol import PROMPT_VERSION, ActionKind, baseline_messages, parse_turn
from components.evaluate.benchmarks import BenchItem
from components.evaluate.generate import Generator
from components.evaluate.records import EvalSample, TurnRecord
from components.search.client import ToolClient

MODES = ("direct", "rag", "agent")


async def judge_sample(sample: EvalSample, judge: Judge) -> EvalSample:
    """Score ``sample.prediction``; a judge failure is INCORRECT with ``judge_error`` set, never raised."""
    if not sample.prediction:
        verdict = Verdict(False, judge.name, "no answer")
    else:
        try:
            verdict = await judge.ajudge(sample.question, sample.answers, sample.prediction, sample.answer_range)
        except Exception as exc:  # noqa: BLE001 - one sample's judge failure must not end the evaluation
            verdict = Verdict(False, judge.name, f"judge error: {type(exc).__name__}: {exc}", error=True)
    sample.correct, sample.judge, sample.judge_detail = verdict.correct, verdict.judge, verdict.detail
    sample.judge_error = verdict.error
    return sample


def _new_sample(benchmark: str, mode: str, item: BenchItem, root: str) -> EvalSample:
    return EvalSample(benchmark=benchmark, mode=mode, item_id=item.id, question=item.question,
                      answers=item.answers, answer_range=item.answer_range, requires_search=item.requires_search,
                      image_path=str((Path(root) / item.image).resolve()))


async def _answer_turn(sample: EvalSample, gen: Generator, messages: list[dict[str, Any]],
                       image: Image.Image) -> None:
    """One model turn: generate, parse, record the prediction (or the format error)."""
    t0 = time.perf_counter()
    text = await gen.generate(messages, image)
    action = parse_turn(text)
    sample.model_turns += 1
    if action.kind == ActionKind.ANSWER:
        sample.prediction = action.answer or ""
        sample.end_reason = "give_up" if action.gives_up else "answer"
    else:
        sample.format_errors += 1
        sample.prediction = ""  # no valid <answer>: no answer, exactly as in agent mode
        sample.end_reason = "invalid" if not action.valid else f"unexpected_{action.kind.value}"
    sample.turns.append(TurnRecord(role="model", text=text, action=action.kind.value,
                                   error=action.error, latency_s=time.perf_counter() - t0))


async def run_direct(benchmark: str, root: str, item: BenchItem, gen: Generator, judge: Judge,
                     prompt_version: str = PROMPT_VERSION) -> EvalSample:
    sample = _new_sample(benchmark, "direct", item, root)
    t0 = time.perf_counter()
    with Image.open(sample.image_path) as img:
        image = img.convert("RGB")
    await _answer_turn(sample, gen, baseline_messages("direct", item.question, version=prompt_version), image)
    sample.latency_s = time.perf_counter() - t0
    return await judge_sample(sample, judge)


async def run_rag(benchmark: str, root: str, item: BenchItem, gen: Generator, judge: Judge,
                  tools: ToolClient, prompt_version: str = PROMPT_VERSION) -> EvalSample:
    sample = _new_sample(benchmark, "rag", item, root)
    t0 = time.perf_counter()
    with Image.open(sample.image_path) as img:
        image = img.convert("RGB")
    information = []
    t1 = time.perf_counter()
    img_resp, img_err = await tools.safe_image_search(image)
    text = img_resp.summary if img_resp else img_err
    sample.image_searches += 1
    sample.turns.append(TurnRecord(role="tool", action="image_search", text=text or "", error=img_err,
                                   crop_box=img_resp.crop_box if img_resp else None,
                                   latency_s=time.perf_counter() - t1))
    information.append(text or "")
    t1 = time.perf_counter()
    txt_resp, txt_err = await tools.safe_text_search(item.question)
    text = txt_resp.summary if txt_resp else txt_err
    sample.text_searches += 1
    sample.turns.append(TurnRecord(role="tool", action="text_search", query=item.question, text=text or "",
                                   error=txt_err, latency_s=time.perf_counter() - t1))
    information.append(text or "")
    await _answer_turn(sample, gen, baseline_messages("rag", item.question, information, version=prompt_version), image)
    sample.latency_s = time.perf_counter() - t0
    return await judge_sample(sample, judge)
