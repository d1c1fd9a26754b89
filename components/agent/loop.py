"""The agent loop: one async state machine per trajectory, many at once, generation batched.

Why: datagen (a teacher runs the tools), GRPO (the policy runs them, thousands of times a step) and
evaluation all run this loop. Tool calls wait on the web; a loop that runs one trajectory at a
time leaves the generator idle, so trajectories run concurrently (bounded by
``settings.agent.concurrency``), tool calls overlap each other and generation, and every
trajectory that waits to generate joins ONE batched backend call (:class:`Batcher`).

States of a trajectory (verl's tool agent loop as the model; one method per state)::

    GENERATING ──parse + limits──> CALLING_TOOL ──<information> user turn──> GENERATING …
        └──> TERMINATED (answer, give-up, max turns, max tool calls, too many invalid turns,
                         tool error, generation error)

Invalid turns get the protocol's invalid ``<information>`` (they count against the format score).
A failed search is told to the model as ``<information>`` too (it may rephrase or answer);
``LoopConfig.max_tool_failures`` failures in a row end the trajectory with ``tool_error``.
Every trajectory ends in a :class:`Trajectory` record with token ids, mask and logprobs when the
generator has a tokenizer (:mod:`components.agent.tokens`), and crops kept by sha256 in
``LoopResult.images`` (the input image and the crops the tool-server searched).

    loop = AgentLoop.from_settings(generator, tools, settings)
    result = await loop.run([Sample(id="q1", question="Who built this?", answers=["X"], image=png_bytes)])

CLI: ``dmms agent run --model PATH|URL --vqa PATH --out PATH``. Tests: tests/unit/agent/test_loop*.py.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from components.agent.frame import Frame, parse_box, stated_size
from components.agent.generators.base import Batcher, Generator, GenRequest, LockstepBatcher
from components.agent.protocol import (
    PROMPT_VERSION,
    STOP_STRINGS,
    Action,
    ActionKind,
    EndReason,
    Limits,
    ProtocolState,
    parse_turn,
    render_information,
    render_invalid,
    with_stop_string,
)
from components.agent.tokens import PromptEncoder, TokenConversation
from components.agent.trajectory import Trajectory, sha256_of

log = logging.getLogger(__name__)


class State(StrEnum):
    GENERATING = "generating"
    CALLING_TOOL = "calling_tool"
    TERMINATED = "terminated"


@dataclass
class Sample:
    """One question about one image (the image as encoded bytes)."""

    id: str
    question: str
    image: bytes
    answers: list[str] = field(default_factory=list)


@dataclass
class LoopConfig:
    limits: Limits = field(default_factory=Limits)
    prompt_version: str = PROMPT_VERSION
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 5  # tool results per search
    concurrency: int = 32
    # how long a generation batch may wait for more trajectories (tool calls returning): agent.batch_window_ms
    batch_window_s: float = 0.005
    progress: bool = True
    # the processor's pixel budget when the generator has no processor (components/agent/frame.py)
    max_pixels: int = 64 * 28 * 28
    # A failed search is reported to the model as <information> (it may rephrase, or answer);
    # this many failures IN A ROW end the trajectory with ``tool_error`` (a dead or misconfigured
    # tool-server should not burn the whole call budget).
    max_tool_failures: int = 2


@dataclass
class LoopResult:
    trajectories: list[Trajectory]
    images: dict[str, bytes]  # sha256 -> bytes: input images and crops
    batch_sizes: list[int]


def crop_png(image: Image.Image, box: list[float]) -> bytes:
    """The PNG bytes of ``box`` (input-image pixels, clamped to the image) cut from ``image``."""
    w, h = image.size
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(w, max(x1 + 1, round(box[2]))), min(h, max(y1 + 1, round(box[3])))
    buf = io.BytesIO()
    image.crop((x1, y1, x2, y2)).save(buf, format="PNG")
    return buf.getvalue()


def _result_text(resp: Any) -> str:
    if resp.summary and resp.summary.strip():
        return resp.summary
    lines = [f"- {r.title}: {r.snippet}" for r in resp.results]
    return "\n".join(lines) if lines else "No results."


class Rollout:
    """The state machine of ONE trajectory."""

    def __init__(self, loop: AgentLoop, sample: Sample):
        self.loop, self.sample, self.cfg = loop, sample, loop.config
        key = sha256_of(sample.image)
        self.pil = loop.decoded(key, sample.image)
        frame = Frame.for_model(self.pil.size, loop.processor, self.cfg.max_pixels)
        self.traj = Trajectory.start(sample.id, sample.question, sample.answers, sample.image,
                                     version=self.cfg.prompt_version, limits=self.cfg.limits,
                                     image_size=frame.size)
        # boxes are in the frame only where the prompt version states it (v2/t2); v1/t1: original pixels
        self.frame = frame if stated_size(self.traj.messages[1]["content"][1]["text"]) else None
        loop.images[key] = sample.image
        self.protocol = ProtocolState(limits=self.cfg.limits)
        processor = loop.processor
        self.conv = (TokenConversation.start(processor, self.traj.messages, [self.pil], loop.prompts, key)
                     if processor is not None else None)
        self.state = State.GENERATING
        self.pending: tuple[str, Action] | None = None
        self.tool_failures = 0  # consecutive

    async def run(self) -> Trajectory:
        handlers = {State.GENERATING: self.generating, State.CALLING_TOOL: self.calling_tool}
        while self.state != State.TERMINATED:
            await handlers[self.state]()
        return self.traj

    # ---- states ------------------------------------------------------------------------------
    async def generating(self) -> None:
        req = GenRequest(prompt_ids=self.conv.ids if self.conv else None, images=[self.pil],
                         messages=[dict(m) for m in self.traj.messages],
                         mm_inputs=self.conv.mm_inputs if self.conv else None,
                         max_new_tokens=self.cfg.max_new_tokens, stop=STOP_STRINGS,
                         temperature=self.cfg.temperature, top_p=self.cfg.top_p)
        out = await self.loop.batcher.submit(req)
        if out.error is not None:
            log.warning("trajectory %s: generation failed: %s", self.sample.id, out.error)
            self._terminate(EndReason.GENERATION_ERROR)
            return
        raw = with_stop_string(out.text, out.stop)
        if self.conv is not None:
            ids = out.token_ids if out.token_ids is not None else self.conv.encode(raw)
            self.conv.add_model(ids, out.logprobs if out.token_ids is not None else None)
        action = self.protocol.check(parse_turn(raw))
        end = self.protocol.end_reason()
        if action.kind == ActionKind.INVALID and end is None:
            self._record(raw, action, render_invalid(action, self.protocol, self.cfg.prompt_version))
        elif end is not None:  # answer, give-up, or a limit: no tool call can help any more
            self._record(raw, action, None)
            self._terminate(end)
        else:
            self.pending = (raw, action)
            self.state = State.CALLING_TOOL

    async def calling_tool(self) -> None:
        raw, action = self.pending  # type: ignore[misc]
        self.pending = None
        tools, top_k = self.loop.tools, self.cfg.top_k
        started = time.perf_counter()
        if action.kind == ActionKind.TEXT_SEARCH:
            resp, err = await tools.safe_text_search(action.query, top_k)
        else:
            region = action.region if action.kind == ActionKind.CROP_SEARCH else None
            box = parse_box(region) if self.frame is not None else None
            if box is not None:  # the model's frame -> the original image's pixels, where the server crops
                region = [round(v, 1) for v in self.frame.to_pixels(box)]
            resp, err = await tools.safe_image_search(self.sample.image, region, top_k)
        latency = time.perf_counter() - started
        if err is not None:
            self.tool_failures += 1
            log.warning("trajectory %s: %s (%d in a row)", self.sample.id, err, self.tool_failures)
            if self.tool_failures >= self.cfg.max_tool_failures:
                self._record(raw, action, None, tool_latency_s=latency, error=err)
                self._terminate(EndReason.TOOL_ERROR)
                return
            message = f"The search failed: {err}"
            if action.kind in (ActionKind.IMAGE_SEARCH, ActionKind.CROP_SEARCH):
                self.protocol.refund(action)  # a failed image search does not use up THE image search
                message += " The image search was not used up: you may search the image again."
            info = render_information(message, action.kind, self.protocol, self.cfg.prompt_version)
            self._record(raw, action, info, tool_latency_s=latency, error=err)
            self.state = State.GENERATING
            return
        self.tool_failures = 0
        text = _result_text(resp)
        crop_box = getattr(resp, "crop_box", None)
        crop = crop_png(self.pil, crop_box) if crop_box else None
        if crop is not None:
            self.loop.images[sha256_of(crop)] = crop
        info = render_information(text, action.kind, self.protocol, self.cfg.prompt_version)
        self._record(raw, action, info, tool_result=text, tool_latency_s=latency,
                     crop_box=crop_box, crop_image=crop)
        self.state = State.GENERATING

    def _record(self, raw: str, action: Action, information: str | None, **kw: Any) -> None:
        """Add the model turn (and the user turn sent back) to the tokens and the record."""
        if self.conv is not None:
            if information is not None:
                self.conv.add_user(self.traj.messages, raw, information)
            else:
                self.conv.close(self.traj.messages, raw)
        self.traj.add_turn(raw, action, information, **kw)

    def _terminate(self, reason: EndReason) -> None:
        self.traj.finish(reason)
        if self.conv is not None:
            self.traj.prompt_ids = list(self.conv.prompt_ids)
            self.traj.completion_ids = list(self.conv.completion_ids)
            self.traj.completion_mask = list(self.conv.mask)
            self.traj.logprobs = list(self.conv.logprobs) if self.conv.has_logprobs else None
        self.state = State.TERMINATED


class AgentLoop:
    """Runs many trajectories concurrently over one generator and one tool client."""

    def __init__(self, generator: Generator, tools: Any, config: LoopConfig | None = None,
                 processor: Any | None = None):
        self.generator, self.tools = generator, tools
        self.config = config or LoopConfig()
        self.processor = processor if processor is not None else getattr(generator, "processor", None)
        self.images: dict[str, bytes] = {}
        self.batcher: Batcher = Batcher(generator)
        # per run: the G generations of a prompt share its image, decoded and prepared once
        self.prompts = PromptEncoder(self.processor) if self.processor is not None else None
        self._decoded: dict[str, Image.Image] = {}

    def decoded(self, key: str, image: bytes) -> Image.Image:
        """The RGB image of ``image`` bytes (sha256 ``key``), decoded once per run; read-only."""
        pil = self._decoded.get(key)
        if pil is None:
            pil = self._decoded[key] = Image.open(io.BytesIO(image)).convert("RGB")
        return pil

    @classmethod
    def from_settings(cls, generator: Generator, tools: Any, settings: Any, **overrides: Any) -> AgentLoop:
        a, m = settings.agent, settings.model
        config = LoopConfig(limits=Limits.from_settings(a), prompt_version=a.prompt_version,
                            max_new_tokens=m.max_new_tokens, temperature=m.temperature,
                            top_k=settings.tools.top_k, concurrency=a.concurrency,
                            batch_window_s=a.batch_window_ms / 1000, max_pixels=m.max_pixels)
        for key, value in overrides.items():
            setattr(config, key, value)
        return cls(generator, tools, config)

    async def run(self, samples: list[Sample],
                  on_finish: Callable[[Trajectory, dict[str, bytes]], None] | None = None) -> LoopResult:
        """Run every sample to its end; trajectories come back in the order of ``samples``.

        ``on_finish(trajectory, images)`` is called as each trajectory ends (datagen's journal keeps
        it there, so a crash loses nothing that finished); ``images`` maps sha256 to bytes."""
        lockstep = getattr(self.generator, "lockstep", False)
        window = self.config.batch_window_s
        self.batcher = (LockstepBatcher(self.generator, window_s=window) if lockstep
                        else Batcher(self.generator, max_batch=self.config.concurrency, window_s=window))
        if lockstep:
            self.batcher.start()
        sem = asyncio.Semaphore(self.config.concurrency)
        bar = tqdm(total=len(samples), desc="trajectories", unit="traj", disable=not self.config.progress)

        async def one(sample: Sample) -> Trajectory:
            async with sem:
                traj = await Rollout(self, sample).run()
            if on_finish is not None:
                on_finish(traj, self.images)
            bar.update(1)
            return traj

        self._decoded.clear()
        if self.processor is not None:
            self.prompts = PromptEncoder(self.processor)
        try:
            trajectories = await asyncio.gather(*(one(s) for s in samples))
        finally:
            self._decoded.clear()
            if lockstep:
                self.batcher.finish()
            await self.batcher.aclose()
            bar.close()
        return LoopResult(list(trajectories), dict(self.images), list(self.batcher.batch_sizes))
