"""Tags, action kinds, end reasons and the parsed :class:`Action` of the agent protocol."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

REASON, TEXT_SEARCH, IMG_SEARCH, ANSWER, INFORMATION = (
    "reason", "text_search", "img_search", "answer", "information")
ACTION_TAGS = (TEXT_SEARCH, IMG_SEARCH, ANSWER)
WHOLE_IMAGE = "<img>"
GIVE_UP_ANSWER = "Unable to answer due to lack of relevant information"
STOP_STRINGS = tuple(f"</{t}>" for t in ACTION_TAGS)
INFO_OPEN, INFO_CLOSE = f"<{INFORMATION}>", f"</{INFORMATION}>"
# Every tag string of the protocol (e.g. to add them as single tokens to a tokenizer).
PROTOCOL_TAGS = (*(f"<{c}{n}>" for n in (REASON, *ACTION_TAGS, INFORMATION) for c in ("", "/")),
                 WHOLE_IMAGE, "</img>")


class ActionKind(StrEnum):
    TEXT_SEARCH = "text_search"
    IMAGE_SEARCH = "image_search"  # the whole input image
    CROP_SEARCH = "crop_search"  # a region: phrase or box
    ANSWER = "answer"
    INVALID = "invalid"


SEARCH_KINDS = frozenset({ActionKind.TEXT_SEARCH, ActionKind.IMAGE_SEARCH, ActionKind.CROP_SEARCH})
IMAGE_KINDS = frozenset({ActionKind.IMAGE_SEARCH, ActionKind.CROP_SEARCH})


class EndReason(StrEnum):
    ANSWER = "answer"
    GIVE_UP = "give_up"
    MAX_TURNS = "max_turns"
    MAX_TOOL_CALLS = "max_tool_calls"
    INVALID_LIMIT = "invalid_limit"
    TOOL_ERROR = "tool_error"
    GENERATION_ERROR = "generation_error"


class Action(BaseModel):
    """One parsed model turn. For ``invalid``, ``error`` is a short message the model will read."""

    kind: ActionKind
    reason: str = ""
    query: str | None = Field(None, description="text_search: the query.")
    region: str | list[float] | None = Field(
        None, description="crop_search: a referring expression, or a box [x1, y1, x2, y2].")
    answer: str | None = Field(None, description="answer: the final answer.")
    error: str | None = Field(None, description="invalid: what was wrong, for the model to read.")
    refused_kind: ActionKind | None = Field(
        None, description="invalid by a limit: the kind that was refused (its fields are kept).")

    @property
    def valid(self) -> bool:
        return self.kind != ActionKind.INVALID

    @property
    def box(self) -> list[float] | None:
        return self.region if isinstance(self.region, list) else None

    @property
    def gives_up(self) -> bool:
        given = (self.answer or "").strip().rstrip(".").casefold()
        return self.kind == ActionKind.ANSWER and given == GIVE_UP_ANSWER.casefold()
