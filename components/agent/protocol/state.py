"""The protocol's limits and the per-trajectory state that enforces them on each parsed turn."""

from __future__ import annotations

from pydantic import BaseModel, Field

from components.agent.protocol.tags import IMAGE_KINDS, SEARCH_KINDS, Action, ActionKind, EndReason
from components.common.settings import AgentSettings


class Limits(BaseModel):
    """The paper's limits: image search once, up to 10 tool calls, fewer than 10 turns."""

    max_tool_calls: int = 10
    max_image_searches: int = 1
    max_turns: int = 10
    max_invalid_turns: int = 3

    @classmethod
    def from_settings(cls, agent: AgentSettings) -> Limits:
        return cls(max_tool_calls=agent.max_tool_calls, max_image_searches=agent.max_image_searches,
                   max_turns=agent.max_turns, max_invalid_turns=agent.max_invalid_turns)


class ProtocolState(BaseModel):
    """Counts of one trajectory; :meth:`check` enforces the limits on each parsed turn.

    Whole-image and crop searches both use THE image search. A search over the tool-call limit is
    refused and ends the trajectory (``end_reason`` → max_tool_calls): the reminder before it said
    "answer now". A second image search is refused and the model may go on.
    """

    limits: Limits = Field(default_factory=Limits)
    turns: int = 0
    invalid_turns: int = 0
    text_searches: int = 0
    image_searches: int = 0
    crop_searches: int = 0
    over_call_limit: bool = False
    final: Action | None = None

    @property
    def tool_calls(self) -> int:
        return self.text_searches + self.image_searches + self.crop_searches

    @property
    def can_image_search(self) -> bool:
        return self.image_searches + self.crop_searches < self.limits.max_image_searches

    @property
    def calls_left(self) -> int:
        return max(0, self.limits.max_tool_calls - self.tool_calls)

    @property
    def turns_left(self) -> int:
        return max(0, self.limits.max_turns - self.turns)

    def check(self, action: Action) -> Action:
        """Count one model turn; return it, or an invalid action if it breaks a limit."""
        self.turns += 1
        if action.kind in SEARCH_KINDS:
            if self.calls_left == 0:
                self.over_call_limit = True
                action = _refuse(action, f"tool-call limit ({self.limits.max_tool_calls}) reached: answer now")
            elif action.kind in IMAGE_KINDS and not self.can_image_search:
                action = _refuse(action, "image search already used: the image may be searched only once")
        if action.kind == ActionKind.TEXT_SEARCH:
            self.text_searches += 1
        elif action.kind == ActionKind.IMAGE_SEARCH:
            self.image_searches += 1
        elif action.kind == ActionKind.CROP_SEARCH:
            self.crop_searches += 1
        elif action.kind == ActionKind.ANSWER:
            self.final = action
        else:
            self.invalid_turns += 1
        return action

    def refund(self, action: Action) -> None:
        """Give back the search ``action`` used when it failed (the tool-server refused the region,
        or the call failed): a failed image or crop search leaves THE image search unused."""
        if action.kind == ActionKind.IMAGE_SEARCH and self.image_searches:
            self.image_searches -= 1
        elif action.kind == ActionKind.CROP_SEARCH and self.crop_searches:
            self.crop_searches -= 1

    def end_reason(self) -> EndReason | None:
        """Why the trajectory must end now, or None to go on."""
        if self.final is not None:
            return EndReason.GIVE_UP if self.final.gives_up else EndReason.ANSWER
        if self.over_call_limit:
            return EndReason.MAX_TOOL_CALLS
        if self.invalid_turns >= self.limits.max_invalid_turns:
            return EndReason.INVALID_LIMIT
        if self.turns >= self.limits.max_turns:
            return EndReason.MAX_TURNS
        return None


def _refuse(action: Action, error: str) -> Action:
    return action.model_copy(update={"kind": ActionKind.INVALID, "error": error, "refused_kind": action.kind})
