"""The protocol's versioned prompt templates (``components/agent/prompts/<version>/``), rendered."""

from __future__ import annotations

import logging
from functools import cache
from importlib import resources
from typing import Any

import jinja2

from components.agent.protocol.parser import _TAG_LIKE
from components.agent.protocol.state import Limits, ProtocolState
from components.agent.protocol.tags import (
    GIVE_UP_ANSWER,
    IMAGE_KINDS,
    INFO_CLOSE,
    INFO_OPEN,
    Action,
    ActionKind,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- prompts
PROMPT_VERSION = "v2"  # v2 states the image frame (components/agent/frame.py); v1 is kept for old runs
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


def render_initial_user(question: str, version: str = PROMPT_VERSION, limits: Limits | None = None,
                        image_size: tuple[int, int] | None = None) -> str:
    """The text of the first user turn (the image goes before it as its own content element).

    ``image_size`` is the (width, height) the model sees the image at (:mod:`components.agent.frame`);
    versions from v2/t2 on state it, so the model's crop boxes are in that frame."""
    return _render(version, "initial.txt", question=question.strip(), limits=limits or Limits(),
                   image_size=tuple(image_size) if image_size else None)


def initial_messages(question: str, version: str = PROMPT_VERSION, limits: Limits | None = None,
                     image_size: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """System + first user turn in the chat form Qwen2.5-VL's template wants (image first)."""
    user = render_initial_user(question, version, limits, image_size)
    return [{"role": "system", "content": render_system_prompt(version, limits)},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]}]


BASELINE_MODES = ("direct", "rag")


def baseline_messages(mode: str, question: str, information: list[str] = (),
                      version: str = PROMPT_VERSION) -> list[dict[str, Any]]:
    """The paper's no-agent baselines in chat form (image first): ``direct`` (no tools: answer from
    the image) and ``rag`` (the given search results in ``<information>`` blocks, then answer), from
    the same prompt version as the agent (``baseline_<mode>.txt``, ``baseline_user.txt``), so a model
    trained on one version meets its own wording in every mode. Tool text is defused."""
    if mode not in BASELINE_MODES:
        raise ValueError(f"unknown baseline mode {mode!r}: use one of {', '.join(BASELINE_MODES)}")
    user = _render(version, "baseline_user.txt", question=question.strip(),
                   information=[defuse(b) for b in information])
    return [{"role": "system", "content": _render(version, f"baseline_{mode}.txt")},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]}]


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
