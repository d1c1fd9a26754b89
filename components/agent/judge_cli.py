"""``dmms judge``: audit verdicts — judge JSONL rows of (question, gold answers, prediction).

Why: a judge is a reward and a promotion score; users need to see, row by row, what it calls
correct and why, on their own answers, with the exact judge the pipeline uses.

    dmms judge --in preds.jsonl --out verdicts.jsonl --judge rule
    # each input row {"question", "answers": [...], "prediction", "answer_range"?: [lo, hi]} comes
    # back with "correct": bool, "judge": name, "detail": why ("error": true when the judge failed)

A malformed row is refused with its file and line before anything is judged; the output is
written aside and renamed, so it is complete or absent. ``--judge llm`` uses ``DMMS_JUDGE__*``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.agent.judging import JudgeConfigError, JudgeItem, ajudge_many, judge_tags, make_judge
from components.agent.llm_judge import LLMJudge


class JudgeInputError(ValueError):
    """A row of the input cannot be judged; the message names the file and line."""


class JudgeRow(BaseModel):
    """One input row; other keys are kept and written back unchanged."""

    model_config = ConfigDict(extra="allow")

    question: str
    answers: list[str] = Field(min_length=1)
    prediction: str | None = None
    answer_range: tuple[float, float] | None = None


def read_rows(path: Path) -> list[tuple[dict, JudgeItem]]:
    if not path.is_file():
        raise JudgeInputError(f"{path} does not exist")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = JudgeRow.model_validate_json(line)
        except ValidationError as exc:
            errs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
            raise JudgeInputError(f'{path}:{n}: {errs} (a row is {{"question": str, "answers": [str, ...], '
                                  f'"prediction": str}})') from None
        out.append((json.loads(line), JudgeItem(row.question, row.answers, row.prediction, row.answer_range)))
    return out


def judge_file(settings, src: Path, dst: Path, choice: str) -> dict[str, int]:
    """Judge every row of ``src`` into ``dst``; return counts (rows, correct, errors)."""
    rows = read_rows(src)
    settings.evaluate.judge = choice
    judge = make_judge(settings, "evaluate")

    async def run():
        try:
            return await ajudge_many(judge, [item for _, item in rows], settings.judge.concurrency)
        finally:
            if isinstance(judge, LLMJudge):
                await judge.aclose()

    verdicts = asyncio.run(run())
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for (row, _), v in zip(rows, verdicts, strict=True):
            extra = {"error": True} if v.error else {}
            fh.write(json.dumps({**row, "correct": v.correct, "judge": v.judge, "detail": v.detail, **extra}) + "\n")
    tmp.replace(dst)
    return {"rows": len(rows), "correct": sum(v.correct for v in verdicts), "errors": sum(v.error for v in verdicts),
            **{k: v for k, v in judge_tags(judge).items() if k == "dmms.judge.prompt_version"}}


def register(app: typer.Typer) -> None:
    @app.command("judge")
    def judge_cmd(
        src: Path = typer.Option(..., "--in", help='JSONL rows {"question", "answers": [...], "prediction"}.'),
        dst: Path = typer.Option(..., "--out", help="JSONL: the same rows with correct, judge, detail."),
        judge: str = typer.Option("rule", help="rule, or llm (the paper's judge at DMMS_JUDGE__*)."),
    ) -> None:
        """Judge predictions against gold answers with the pipeline's own judge."""
        from components.common.settings import load_settings

        if judge not in ("rule", "llm"):
            typer.echo(f"error: --judge is rule or llm, got {judge!r}", err=True)
            raise typer.Exit(2)
        try:
            counts = judge_file(load_settings(), src, dst, judge)
        except (JudgeInputError, JudgeConfigError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(json.dumps(counts))
