"""The agent's tag protocol (docs/design.md §2): tags, turn parser, canonical renderer, limits, prompts.

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

The package: :mod:`.tags` (tags, kinds, the Action record), :mod:`.parser` (parse and render one
turn), :mod:`.state` (limits and their enforcement), :mod:`.prompts` (the versioned templates).
Import from the package: ``from components.agent.protocol import parse_turn``.
"""

from components.agent.protocol.parser import *  # noqa: F403
from components.agent.protocol.parser import _invalid  # noqa: F401
from components.agent.protocol.prompts import *  # noqa: F403
from components.agent.protocol.state import *  # noqa: F403
from components.agent.protocol.tags import *  # noqa: F403
