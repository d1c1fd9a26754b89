"""The turn parser (never raises) and the canonical renderer of the agent protocol."""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from components.agent.protocol.tags import (
    ACTION_TAGS,
    ANSWER,
    IMG_SEARCH,
    INFORMATION,
    REASON,
    STOP_STRINGS,
    TEXT_SEARCH,
    WHOLE_IMAGE,
    Action,
    ActionKind,
)

log = logging.getLogger(__name__)

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
