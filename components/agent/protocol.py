"""The agent's tag protocol (DESIGN.md §2): tags, turn parser, canonical renderer, limits, prompts.

Why: datagen, the agent loop, GRPO rewards and evaluation must agree on what a model turn means.
This module (with :mod:`components.agent.trajectory` for the record) is the ONLY place that knows
the tags; everything else imports it. Import-only; run its tests with
``.venv/bin/python -m pytest -q tests/unit/agent``.

A model turn is ``<reason>…</reason>`` followed by exactly one action, with only whitespace around
and between them::

    <text_search>query</text_search>
    <img_search><img></img_search>                  whole input image
    <img_search>the red car on the left</img_search>  crop: referring expression
    <img_search>[12, 30.5, 200, 180]</img_search>     crop: pixel box, written in square brackets
    <answer>…</answer>                              final; give up with GIVE_UP_ANSWER

Decisions (the format reward depends on them):
- a missing or empty ``<reason>`` is INVALID (error "no <reason> before the action");
- text before ``<reason>``, between ``</reason>`` and the action, or after the action's closing
  tag is INVALID: generators stop at the closing tag (``STOP_STRINGS``), so junk means the model
  ignored the protocol;
- tags are lowercase and exact; ``<ANSWER>``/``<text-search>`` are invalid with a "write <…>" hint;
- protocol tags inside a reason or an action body are invalid ("nested tags"), and so is a model
  turn that writes ``<information>`` (only the tools write that);
- a box is a region in square brackets of exactly 4 finite numbers with x1 < x2, y1 < y2, >= 0;
  anything else in ``<img_search>`` (other than ``<img>``) is a referring expression.

Generators that drop the stop string from their output (vLLM by default) should pass the output
through :func:`with_stop_string` before :func:`parse_turn`.
"""

from __future__ import annotations

import logging
import math
import re
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

import jinja2
from pydantic import BaseModel, Field

from components.common.settings import AgentSettings

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------- parsing
_NAMES = "|".join([*ACTION_TAGS, REASON, INFORMATION])
# Anything that looks like one of our tags, in any case, with stray spaces or -/space for _.
_TAG_LIKE = re.compile(r"<\s*(/?)\s*(reason|text[_\- ]?search|ima?ge?[_\- ]?search|answer|information)\s*>",
                       re.IGNORECASE)
_EXACT = re.compile(rf"^</?({_NAMES})>$")
_IMG_LIKE = re.compile(r"<\s*/?\s*img\s*/?\s*>", re.IGNORECASE)
_WHOLE = re.compile(r"^(<img>|<img\s*/>|<img></img>)$")
_NUM = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def _invalid(error: str, reason: str = "") -> Action:
    return Action(kind=ActionKind.INVALID, reason=reason, error=error)


def with_stop_string(text: str, stop: str | None) -> str:
    """Re-append the stop string a generator stopped on (``stop``) if it is not already there."""
    if stop in STOP_STRINGS and not text.rstrip().endswith(stop):
        return text + stop
    return text


def parse_turn(text: Any) -> Action:
    """Parse one model turn into an :class:`Action`. Never raises: bad input is an invalid action.

    >>> parse_turn("<reason>Need the name.</reason><text_search>Eiffel tower architect</text_search>").query
    'Eiffel tower architect'
    >>> parse_turn("<answer>Paris</answer>").error
    'no <reason> before the action'
    """
    if not isinstance(text, str):
        return _invalid(f"a turn must be text, got {type(text).__name__}")
    try:
        return _parse(text)
    except Exception:  # the contract is "never raises": log the bug, tell the model nothing useful broke
        log.exception("parse_turn failed on %r", text[:200])
        return _invalid("unreadable turn")


def _parse(text: str) -> Action:
    tags = list(_TAG_LIKE.finditer(text))
    for m in tags:
        if not _EXACT.match(m.group(0)):
            low = m.group(2).lower()
            name = TEXT_SEARCH if low.startswith("t") else IMG_SEARCH if low.startswith("im") else low
            return _invalid(f"malformed tag {m.group(0)}: write <{m.group(1)}{name}>")
    if any(m.group(2) == INFORMATION for m in tags):
        return _invalid("do not write <information>: the tools write it")
    opens = [m for m in tags if not m.group(1)]
    actions = [m for m in opens if m.group(2) in ACTION_TAGS]
    if not actions:
        return _invalid("no action tag: end the turn with <text_search>, <img_search> or <answer>")
    if len(actions) > 1:
        return _invalid("two actions in one turn: write exactly one action")
    reasons = [m for m in opens if m.group(2) == REASON]
    if not reasons or reasons[0].start() > actions[0].start():
        return _invalid("no <reason> before the action")
    if len(reasons) > 1:
        return _invalid("two <reason> blocks in one turn")
    if text[: reasons[0].start()].strip():
        return _invalid("text before <reason>")
    body_r, err, end_r = _block(text, tags, reasons[0])
    if err:
        return _invalid(err)
    reason = body_r.strip()
    if not reason:
        return _invalid("empty <reason>")
    if text[end_r: actions[0].start()].strip():
        return _invalid("text between </reason> and the action", reason)
    body_a, err, end_a = _block(text, tags, actions[0])
    if err:
        return _invalid(err, reason)
    if text[end_a:].strip():
        return _invalid("text after the action", reason)
    return _action(actions[0].group(2), body_a.strip(), reason)


def _block(text: str, tags: list[re.Match], open_m: re.Match) -> tuple[str, str | None, int]:
    """The body of the block opened by ``open_m``: (body, error, end offset after the close tag)."""
    name = open_m.group(2)
    after = [m for m in tags if m.start() >= open_m.end()]
    if not after or after[0].group(2) != name or not after[0].group(1):
        if any(m.group(2) == name and m.group(1) for m in after):
            return "", f"nested tags inside <{name}>", 0
        return "", f"unclosed <{name}>", 0
    close = after[0]
    body = text[open_m.end(): close.start()]
    if name != IMG_SEARCH and name != REASON and _IMG_LIKE.search(body):
        return "", f"nested tags: <img> belongs only in <{IMG_SEARCH}>", 0
    return body, None, close.end()


def _action(tag: str, body: str, reason: str) -> Action:
    if tag == ANSWER:
        if not body:
            return _invalid("empty answer", reason)
        return Action(kind=ActionKind.ANSWER, reason=reason, answer=body)
    if tag == TEXT_SEARCH:
        if not body:
            return _invalid("empty query", reason)
        return Action(kind=ActionKind.TEXT_SEARCH, reason=reason, query=body)
    if not body:
        return _invalid("empty image search: write <img>, a phrase, or [x1, y1, x2, y2]", reason)
    if _WHOLE.match(body):
        return Action(kind=ActionKind.IMAGE_SEARCH, reason=reason)
    if _IMG_LIKE.search(body):
        return _invalid("<img> must be alone: write <img> for the whole image, or a region", reason)
    if body.startswith("["):
        box, err = _parse_box(body)
        if err:
            return _invalid(err, reason)
        return Action(kind=ActionKind.CROP_SEARCH, reason=reason, region=box)
    return Action(kind=ActionKind.CROP_SEARCH, reason=reason, region=body)


def _parse_box(body: str) -> tuple[list[float] | None, str | None]:
    if not body.endswith("]"):
        return None, "unclosed box: write [x1, y1, x2, y2]"
    parts = [p.strip() for p in body[1:-1].split(",")]
    if not all(_NUM.match(p) for p in parts):
        return None, "a box is 4 numbers: write [x1, y1, x2, y2]"
    if len(parts) != 4:
        return None, f"a box needs 4 numbers [x1, y1, x2, y2], got {len(parts)}"
    box = [float(p) for p in parts]
    if not all(math.isfinite(v) and v >= 0 for v in box):
        return None, "box coordinates must be finite and >= 0"
    if not (box[0] < box[2] and box[1] < box[3]):
        return None, "box must have x1 < x2 and y1 < y2"
    return box, None


# ---------------------------------------------------------------- rendering
def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def render_action(action: Action) -> str:
    """The canonical text of a valid action; ``parse_turn(render_action(a)) == a``.

    Raises ValueError for an invalid action or one whose fields would not parse back (e.g. a
    query that contains a protocol tag, or a phrase that starts with "[").

    >>> render_action(Action(kind="crop_search", reason="Look at the logo.", region=[10, 20, 110, 90.5]))
    '<reason>Look at the logo.</reason>\\n<img_search>[10, 20, 110, 90.5]</img_search>'
    """
    if action.kind == ActionKind.INVALID:
        raise ValueError(f"cannot render an invalid action ({action.error})")
    if action.kind == ActionKind.TEXT_SEARCH:
        tag, body = TEXT_SEARCH, action.query or ""
    elif action.kind == ActionKind.ANSWER:
        tag, body = ANSWER, action.answer or ""
    elif action.kind == ActionKind.IMAGE_SEARCH:
        tag, body = IMG_SEARCH, WHOLE_IMAGE
    elif isinstance(action.region, list):
        tag, body = IMG_SEARCH, "[" + ", ".join(_num(v) for v in action.region) + "]"
    else:
        tag, body = IMG_SEARCH, action.region or ""
    text = f"<{REASON}>{action.reason}</{REASON}>\n<{tag}>{body}</{tag}>"
    back = parse_turn(text)
    if back != action.model_copy(update={"refused_kind": None}):
        raise ValueError(f"action does not survive the protocol: {back.error or back}")
    return text


# ---------------------------------------------------------------- limits
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


# ---------------------------------------------------------------- prompts
PROMPT_VERSION = "v1"
_PROMPTS = resources.files("components.agent.prompts")


def _load(name: str) -> str:
    path = _PROMPTS.joinpath(*name.split("/"))
    if not path.is_file():
        versions = sorted(p.name for p in _PROMPTS.iterdir() if p.is_dir() and not p.name.startswith("_"))
        raise ValueError(f"prompt template {name!r} not found (versions: {', '.join(versions)}); "
                         f"set DMMS_AGENT__PROMPT_VERSION to one of them")
    return path.read_text(encoding="utf-8")


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FunctionLoader(_load), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, autoescape=False,
                              keep_trailing_newline=False)


def _render(version: str, name: str, **values: Any) -> str:
    values.update(give_up=GIVE_UP_ANSWER, version=version)
    return _env().get_template(f"{version}/{name}").render(**values).strip()


def render_system_prompt(version: str = PROMPT_VERSION, limits: Limits | None = None) -> str:
    """The system prompt: the protocol, the tools and the limits."""
    return _render(version, "system.txt", limits=limits or Limits())


def render_initial_user(question: str, version: str = PROMPT_VERSION, limits: Limits | None = None) -> str:
    """The text of the first user turn (the image goes before it as its own content element)."""
    return _render(version, "initial.txt", question=question.strip(), limits=limits or Limits())


def initial_messages(question: str, version: str = PROMPT_VERSION,
                     limits: Limits | None = None) -> list[dict[str, Any]]:
    """System + first user turn in the chat form Qwen2.5-VL's template wants (image first)."""
    return [{"role": "system", "content": render_system_prompt(version, limits)},
            {"role": "user", "content": [{"type": "image"},
                                         {"type": "text", "text": render_initial_user(question, version, limits)}]}]


def _information(body: str) -> str:
    return f"{INFO_OPEN}\n{body.strip()}\n{INFO_CLOSE}"


def defuse(tool_text: str) -> str:
    """Tool text with every protocol tag made inert (``<answer>`` → ``&lt;answer>``), so a web page
    cannot close the ``<information>`` block or forge a turn."""
    return _TAG_LIKE.sub(lambda m: m.group(0).replace("<", "&lt;", 1), tool_text)


def render_information(result_text: str, after: ActionKind, state: ProtocolState,
                       version: str = PROMPT_VERSION) -> str:
    """The user turn after a search: ``<information>`` then the stage reminder of what may come next."""
    name = "after_image_search.txt" if after in IMAGE_KINDS else "after_text_search.txt"
    reminder = _render(version, name, state=state)
    return f"{_information(defuse(result_text))}\n\n{reminder}"


def render_invalid(action: Action, state: ProtocolState, version: str = PROMPT_VERSION) -> str:
    """The user turn after an invalid turn: what was wrong, and what the model may do now."""
    body = _render(version, "invalid.txt", error=action.error or "invalid turn", state=state)
    return f"{_information(body)}\n\n{_render(version, 'options.txt', state=state)}"
