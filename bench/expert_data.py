"""Scripted expert trajectories for the SFT benchmark and tests: small, deterministic, made with the protocol's own
render functions (the datagen step produces real ones with a teacher; these stand in for its output
in tests only, and are real Trajectory records, not canned training results).

Two kinds, half each: a colour question answered directly, and a "who built it" question that
needs one text search (the tool's reply is a rendered ``<information>`` turn) before the answer.
"""

from __future__ import annotations

import io

from PIL import Image

from components.agent.protocol import (
    Action,
    ActionKind,
    EndReason,
    Limits,
    ProtocolState,
    render_action,
    render_information,
)
from components.agent.trajectory import JudgeVerdict, Trajectory, sha256_of

COLOURS = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200), "yellow": (220, 200, 40),
           "purple": (120, 40, 160), "orange": (230, 130, 30), "white": (245, 245, 245), "black": (10, 10, 10)}
BUILDERS = ["Ada", "Bela", "Cleo", "Dario", "Elin", "Farid", "Greta", "Hugo"]


def image_bytes(colour: str, variant: int = 0) -> bytes:
    img = Image.new("RGB", (56 + 4 * variant, 56), COLOURS[colour])
    img.putpixel((variant % 56, 0), (variant * 7 % 256, 0, 0))  # distinct bytes per sample
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _turn(traj: Trajectory, state: ProtocolState, action: Action, information: str | None = None):
    raw = render_action(action)
    checked = state.check(action)
    if checked.kind == ActionKind.TEXT_SEARCH and information is not None:
        information = render_information(information, checked.kind, state)
    traj.add_turn(raw, checked, information=information,
                  tool_result=information if checked.kind == ActionKind.TEXT_SEARCH else None)


def direct(i: int, colour: str) -> tuple[Trajectory, bytes]:
    data = image_bytes(colour, i)
    traj = Trajectory.start(f"direct-{i}", "What colour is this image?", [colour], data)
    state = ProtocolState(limits=Limits())
    _turn(traj, state, Action(kind="answer", reason="I can see the colour.", answer=colour))
    traj.finish(state.end_reason() or EndReason.ANSWER)
    traj.judge = JudgeVerdict(correct=True, judge="rule")
    return traj, data


def searched(i: int, colour: str) -> tuple[Trajectory, bytes]:
    data = image_bytes(colour, i)
    builder = BUILDERS[i % len(BUILDERS)]
    traj = Trajectory.start(f"search-{i}", "Who built the tower in this image?", [builder], data)
    state = ProtocolState(limits=Limits())
    _turn(traj, state, Action(kind="text_search", reason="I need to search for the builder.",
                              query=colour + " tower builder"),
          information=f"The {colour} tower was built by {builder}.")
    _turn(traj, state, Action(kind="answer", reason="The search found the builder.", answer=builder))
    traj.finish(state.end_reason() or EndReason.ANSWER)
    traj.judge = JudgeVerdict(correct=True, judge="rule")
    return traj, data


def expert_trajectories(n: int, offset: int = 0) -> tuple[list[Trajectory], dict[str, bytes]]:
    """``n`` trajectories (alternating direct/searched) and their input images by sha256."""
    trajs, images = [], {}
    colours = list(COLOURS)
    for i in range(offset, offset + n):
        make = direct if i % 2 == 0 else searched
        traj, data = make(i, colours[(i // 2) % len(colours)])
        trajs.append(traj)
        images[sha256_of(data)] = data
    return trajs, images
