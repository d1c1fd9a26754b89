"""The trajectory record of one agent run, and format scoring (docs/design.md §2).

Why: datagen writes trajectories, SFT trains on them, GRPO scores and trains on them, evaluation
reports them; one pydantic record (JSON-serialisable) keeps them compatible. Images are kept out
of the record: they are referred to by sha256 content hash (``ImageRef``), the bytes live in the
dataset. Import-only; tests: ``.venv/bin/python -m pytest -q tests/unit/agent``.

Typical use in the agent loop::

    traj = Trajectory.start("s1", question, answers, image_bytes, limits=limits)
    state = ProtocolState(limits=limits)
    action = state.check(parse_turn(raw))
    info = render_information(summary, action.kind, state) if action.kind in SEARCH_KINDS else ...
    traj.add_turn(raw, action, information=info, tool_result=summary, tool_latency_s=0.2)
    ...
    traj.finish(state.end_reason())

SFT form (decided once, see docs/facts.md): ``to_sft_messages()`` returns every message with STRING
content and no image element; the dataset row is ``{"messages": traj.to_sft_messages(),
"images": [input image]}``. TRL's ``prepare_multimodal_messages`` then puts the one image before
the first user message's text, which is exactly where ``initial_messages`` put it at rollout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field, model_validator

from components.agent.protocol import (
    PROMPT_VERSION,
    Action,
    ActionKind,
    EndReason,
    Limits,
    initial_messages,
    parse_turn,
)


def sha256_of(data: bytes) -> str:
    """Content hash naming an image in a trajectory record."""
    return hashlib.sha256(data).hexdigest()


class ImageRef(BaseModel):
    """An image of the trajectory by content hash: the input image or a searched crop."""

    sha256: str
    role: Literal["input", "crop"]
    box: list[float] | None = Field(None, description="crop: its box in input-image pixels.")
    turn: int | None = Field(None, description="crop: index of the turn that searched it.")


class Turn(BaseModel):
    """One model turn and what came back."""

    index: int
    raw: str = Field(description="The model's text, as generated (stop string restored).")
    action: Action = Field(description="The parsed action after the limits were checked.")
    information: str | None = Field(None, description="The user turn sent back (None after the answer).")
    tool_result: str | None = Field(None, description="The tool's text (summary) for a search.")
    tool_latency_s: float | None = None
    crop_box: list[float] | None = Field(None, description="Box the crop search actually used.")
    error: str | None = Field(None, description="Tool error, or the invalid action's error.")

    @property
    def well_formed(self) -> bool:
        return self.action.valid


class JudgeVerdict(BaseModel):
    correct: bool | None = None
    judge: str | None = Field(None, description="Name of the judge (rule, llm:<model>).")
    detail: str | None = Field(None, description="The judge's raw verdict text, if any.")


class Trajectory(BaseModel):
    """One agent run: conversation, turns, images by hash, tokens with their mask, verdict."""

    sample_id: str
    question: str
    answers: list[str] = Field(default_factory=list, description="Gold answers (aliases).")
    prompt_version: str = PROMPT_VERSION
    messages: list[dict[str, Any]] = Field(default_factory=list)
    images: list[ImageRef] = Field(default_factory=list)
    turns: list[Turn] = Field(default_factory=list)
    final_answer: str | None = None
    end_reason: EndReason | None = None
    prompt_ids: list[int] = Field(default_factory=list)
    completion_ids: list[int] = Field(default_factory=list)
    completion_mask: list[int] = Field(
        default_factory=list, description="1 = model token, 0 = tool/prompt token; len(completion_ids).")
    logprobs: list[float | None] | None = Field(None, description="Per completion token; None for tool tokens.")
    judge: JudgeVerdict = Field(default_factory=JudgeVerdict)

    @model_validator(mode="after")
    def _token_lengths(self) -> Trajectory:
        n = len(self.completion_ids)
        if len(self.completion_mask) != n:
            raise ValueError(f"completion_mask has {len(self.completion_mask)} entries, completion_ids {n}")
        if any(m not in (0, 1) for m in self.completion_mask):
            raise ValueError("completion_mask holds only 0 (tool/prompt token) and 1 (model token)")
        if self.logprobs is not None and len(self.logprobs) != n:
            raise ValueError(f"logprobs has {len(self.logprobs)} entries, completion_ids {n}")
        return self

    def _count(self, kind: ActionKind) -> int:
        return sum(t.action.kind == kind for t in self.turns)

    @computed_field
    @property
    def text_searches(self) -> int:
        return self._count(ActionKind.TEXT_SEARCH)

    @computed_field
    @property
    def image_searches(self) -> int:
        return self._count(ActionKind.IMAGE_SEARCH)

    @computed_field
    @property
    def crop_searches(self) -> int:
        return self._count(ActionKind.CROP_SEARCH)

    @computed_field
    @property
    def invalid_turns(self) -> int:
        return self._count(ActionKind.INVALID)

    @property
    def input_image(self) -> ImageRef | None:
        return next((i for i in self.images if i.role == "input"), None)

    @classmethod
    def start(cls, sample_id: str, question: str, answers: Sequence[str] = (), image: bytes | None = None,
              version: str = PROMPT_VERSION, limits: Limits | None = None,
              image_size: tuple[int, int] | None = None) -> Trajectory:
        """A new trajectory holding the system prompt and the first user turn (image first);
        ``image_size``: the frame the model sees the image in (stated from prompt version v2/t2 on)."""
        images = [ImageRef(sha256=sha256_of(image), role="input")] if image is not None else []
        return cls(sample_id=sample_id, question=question, answers=list(answers), prompt_version=version,
                   messages=initial_messages(question, version, limits, image_size), images=images)

    def add_turn(self, raw: str, action: Action, information: str | None = None, *,
                 tool_result: str | None = None, tool_latency_s: float | None = None,
                 crop_box: list[float] | None = None, crop_image: bytes | None = None,
                 error: str | None = None) -> Turn:
        """Record one model turn (and the user turn sent back, if any) in turns and messages."""
        turn = Turn(index=len(self.turns), raw=raw, action=action, information=information,
                    tool_result=tool_result, tool_latency_s=tool_latency_s, crop_box=crop_box,
                    error=error if error is not None else action.error)
        self.turns.append(turn)
        self.messages.append({"role": "assistant", "content": raw})
        if information is not None:
            self.messages.append({"role": "user", "content": information})
        if crop_image is not None:
            self.images.append(ImageRef(sha256=sha256_of(crop_image), role="crop", box=crop_box,
                                        turn=turn.index))
        return turn

    def finish(self, end_reason: EndReason) -> None:
        """Close the record; the final answer is the last turn's answer, if it ended in one."""
        self.end_reason = end_reason
        last = self.turns[-1].action if self.turns else None
        self.final_answer = last.answer if last is not None and last.kind == ActionKind.ANSWER else None

    def to_sft_messages(self) -> list[dict[str, str]]:
        """The conversation for TRL's SFTTrainer: string content only, image elements dropped.

        Pair it with ``images=[input image]``; only the first user message may have held an image.
        """
        out: list[dict[str, str]] = []
        first_user = next((i for i, m in enumerate(self.messages) if m["role"] == "user"), None)
        for i, message in enumerate(self.messages):
            content = message["content"]
            if isinstance(content, list):
                images = [c for c in content if c.get("type") == "image" or "image" in c]
                if images and (i != first_user or len(images) > 1):
                    raise ValueError(f"message {i} holds an image: the SFT form allows only one, "
                                     "in the first user message")
                content = "".join(c.get("text", "") for c in content if c.get("type") == "text")
            out.append({"role": message["role"], "content": content})
        return out


def turn_valid(turn: Turn | Action | str) -> bool:
    """Whether one turn is well formed (a raw text is parsed first).

    >>> turn_valid("<reason>I know it.</reason><answer>Paris</answer>")
    True
    >>> turn_valid("<answer>Paris</answer>")
    False
    """
    if isinstance(turn, str):
        turn = parse_turn(turn)
    action = turn.action if isinstance(turn, Turn) else turn
    return action.valid


def format_score(turns: Trajectory | Sequence[Turn | Action | str]) -> float:
    """Format reward in [0, 1]: the fraction of well-formed turns, or 0.0 unless the last turn is a
    well-formed answer. Turns refused by a limit (a second image search) count as ill-formed.

    >>> ok = "<reason>Need facts.</reason><text_search>Eiffel tower architect</text_search>"
    >>> done = "<reason>Found it.</reason><answer>Gustave Eiffel</answer>"
    >>> format_score([ok, done])
    1.0
    >>> format_score([ok, "I think it is Eiffel", done])
    0.6666666666666666
    >>> format_score([ok, ok])
    0.0
    >>> format_score([])
    0.0
    """
    items = turns.turns if isinstance(turns, Trajectory) else list(turns)
    if not items:
        return 0.0
    actions = [parse_turn(t) if isinstance(t, str) else t.action if isinstance(t, Turn) else t for t in items]
    if actions[-1].kind != ActionKind.ANSWER:
        return 0.0
    return sum(a.valid for a in actions) / len(actions)
