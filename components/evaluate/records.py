"""What an evaluation keeps per sample: the record that metrics, the report and MLflow read.

Why a record of our own: direct and RAG baselines have no agent trajectory, yet the table, the
tool-use statistics and the HTML report must treat all three modes alike. Each mode turns what it
did into an :class:`EvalSample` (the agent mode converts the loop's trajectory). Import-only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TurnRecord(BaseModel):
    """One turn: a model turn (its text and parsed action) or a tool turn (the result it returned)."""

    role: Literal["model", "tool"]
    text: str = Field(description="Model output, or the tool's <information> text.")
    action: str | None = Field(None, description="Parsed action kind (text_search, answer, invalid, ...).")
    query: str | None = Field(None, description="Text query, or the crop region as text.")
    error: str | None = Field(None, description="Invalid turn or failed tool call: what went wrong.")
    crop_box: list[float] | None = Field(None, description="Image search: the box that was searched.")
    latency_s: float = 0.0


class EvalSample(BaseModel):
    """One benchmark item answered in one mode, and the judge's verdict on it."""

    benchmark: str
    mode: str
    item_id: str
    question: str
    answers: list[str]
    answer_range: tuple[float, float] | None = Field(None, description="Accepted numeric range (InfoSeek).")
    requires_search: bool | None = Field(None, description="The item's label: needs a search to be answered.")
    image_path: str = Field(description="Absolute path of the input image.")
    prediction: str = Field("", description="The final answer the protocol parser extracted; '' = no answer.")
    correct: bool = False
    judge: str = ""
    judge_detail: str = ""
    judge_error: bool = Field(False, description="The judge failed on this sample (scored INCORRECT).")
    turns: list[TurnRecord] = Field(default_factory=list)
    model_turns: int = 0
    text_searches: int = 0
    image_searches: int = 0
    crop_searches: int = 0
    format_errors: int = Field(0, description="Invalid model turns (protocol violations).")
    end_reason: str = ""
    latency_s: float = 0.0
    error: str | None = None

    @property
    def searches(self) -> int:
        return self.text_searches + self.image_searches + self.crop_searches
