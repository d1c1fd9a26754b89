"""The one interface every generator backend of the agent loop implements, and the batcher.

Why: the agent loop (components/agent/loop.py) must not care whether a turn comes from a
transformers model in this process, an OpenAI-compatible server or TRL's vLLM client. A backend
takes a BATCH of :class:`GenRequest` and returns one :class:`GenOutput` per request, in order::

    outputs = await generator.generate([GenRequest(prompt_ids=ids, images=[img], messages=msgs,
                                                   max_new_tokens=256, stop=STOP_STRINGS)])

A request carries both forms of the conversation: token ids (+ the processor's image tensors)
for backends with a tokenizer, chat messages for chat endpoints. :class:`Batcher` collects the
requests of every trajectory that is waiting to generate and calls the backend once per batch.
Import-only; tests: ``.venv/bin/python -m pytest -q tests/unit/agent/test_generators.py``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

log = logging.getLogger(__name__)

StopReason = Literal["stop_string", "eos", "length", "error"]


@dataclass
class GenRequest:
    """One model turn to generate."""

    prompt_ids: list[int] | None = None
    images: list[Any] = field(default_factory=list)  # PIL images of the conversation (the input image)
    messages: list[dict[str, Any]] | None = None  # chat form; {"type": "image"} parts take images in order
    mm_inputs: dict[str, Any] | None = None  # processor tensors of the images (pixel_values, image_grid_thw)
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    temperature: float = 1.0
    top_p: float = 1.0

    def sampling_key(self) -> tuple:
        """Requests with the same key can share one batched backend call."""
        return (self.max_new_tokens, tuple(self.stop), self.temperature, self.top_p)


@dataclass
class GenOutput:
    """One generated turn: its text, and its token ids and logprobs when the backend has them."""

    text: str
    token_ids: list[int] | None = None  # as generated, end-of-turn token included if generated
    logprobs: list[float] | None = None  # one per token id
    stop_reason: StopReason = "eos"
    stop: str | None = None  # the stop string matched, if any
    error: str | None = None


@runtime_checkable
class Generator(Protocol):
    """What the loop needs from a backend. ``tokenizer`` is None for backends without one (then
    the loop keeps no token ids unless a processor is given)."""

    name: str
    processor: Any | None
    lockstep: bool  # True: every rank must call generate the same number of times (TRL vLLM)

    async def generate(self, requests: list[GenRequest]) -> list[GenOutput]: ...

    async def aclose(self) -> None: ...


class Batcher:
    """Collects generation requests from many trajectories and sends them to the backend in batches.

    ``submit`` enqueues a request and awaits its output. A single worker task waits for the first
    request, then lets the event loop settle (yields until no new request arrived for
    ``settle_rounds`` iterations, so every trajectory that is ready can enqueue) and, with
    ``window_s`` > 0, keeps collecting while requests still arrive — never longer than ``window_s``
    in all (past it, after ``settle_rounds`` iterations, even while requests keep arriving): the
    trajectories whose tool calls return a moment later join this batch instead of each starting
    a batch of one (tool latencies differ, so after the first round they return one by one). It
    then calls the backend once with up to ``max_batch`` requests. Tool calls keep running
    meanwhile: backends that block (local) run their work in a thread. ``batch_sizes`` records
    every call's size (the bench's histogram).
    """

    def __init__(self, generator: Generator, max_batch: int = 64, settle_rounds: int = 3, window_s: float = 0.0):
        self.generator, self.max_batch, self.settle_rounds = generator, max_batch, settle_rounds
        self.window_s = window_s
        self.batch_sizes: list[int] = []
        self._queue: list[tuple[GenRequest, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None

    async def submit(self, request: GenRequest) -> GenOutput:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((request, fut))
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run())
        return await fut

    async def _settle(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s  # the whole collection, settling included
        quiet, seen, rounds = 0, -1, 0
        while quiet < self.settle_rounds and len(self._queue) < self.max_batch:
            await asyncio.sleep(0)
            rounds += 1
            quiet = quiet + 1 if len(self._queue) == seen else 0
            seen = len(self._queue)
            if rounds >= self.settle_rounds and loop.time() >= deadline:
                # a request on every iteration is a stream (tool results parsed one after another),
                # not one burst: waiting for a quiet iteration held the first ones until the last
                # arrived (bench/rollout.py: 30 trajectories held ~170 ms behind the slowest image search)
                break
        if self.window_s <= 0:
            return
        # the window: wait in short slices while the batch still grows, never past window_s
        step = self.window_s / 4
        while len(self._queue) < self.max_batch and loop.time() < deadline:
            before = len(self._queue)
            await asyncio.sleep(min(step, max(0.0, deadline - loop.time())))
            if len(self._queue) == before and before > 1:
                break  # nothing came during a slice: the rest are busy with tools for longer

    async def _run(self) -> None:
        while self._queue:
            await self._settle()
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            await self._call(batch)
            await asyncio.sleep(0)
        self._wake.clear()

    async def _call(self, batch: list[tuple[GenRequest, asyncio.Future]]) -> None:
        self.batch_sizes.append(len(batch))
        try:
            outputs = await self.generator.generate([r for r, _ in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"{self.generator.name} returned {len(outputs)} outputs for {len(batch)} requests")
        except Exception as exc:  # one failed call fails its batch, as outputs with an error
            log.warning("generation with %s failed for a batch of %d: %s", self.generator.name, len(batch), exc)
            outputs = [GenOutput(text="", stop_reason="error", error=f"{type(exc).__name__}: {exc}")
                       for _ in batch]
        for (_, fut), out in zip(batch, outputs, strict=True):
            if not fut.done():
                fut.set_result(out)

    async def aclose(self) -> None:
        if self._worker is not None and not self._worker.done():
            await self._worker


def find_stop(text: str, stops: tuple[str, ...] | list[str]) -> tuple[int, str] | None:
    """The earliest stop string in ``text``: (index just after it, the stop), or None."""
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best[0]):
            best = (i + len(s), s)
    return best


class LockstepBatcher(Batcher):
    """A batcher for backends whose generate is a collective over all training ranks (TRL's vLLM).

    Every rank must call ``generate`` the same number of times, so the worker runs ROUNDS for the
    whole rollout: each round waits until this rank has a request or is finished, agrees with the
    other ranks (``generator.all_gather``) whether anyone still needs generation, and if so calls the
    backend (with an empty batch when this rank has nothing). The loop calls :meth:`finish` when all
    of this rank's trajectories have ended; the worker returns once every rank has finished.
    """

    def __init__(self, generator: Generator, max_batch: int = 1 << 30, settle_rounds: int = 3, window_s: float = 0.0):
        super().__init__(generator, max_batch, settle_rounds, window_s)
        self._finished = False

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._rounds())

    async def submit(self, request: GenRequest) -> GenOutput:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((request, fut))
        self._wake.set()
        self.start()
        return await fut

    def finish(self) -> None:
        self._finished = True
        self._wake.set()

    async def _rounds(self) -> None:
        while True:
            while not self._queue and not self._finished:
                self._wake.clear()
                await self._wake.wait()
            await self._settle()
            flags = await self.generator.all_gather(bool(self._queue))  # type: ignore[attr-defined]
            if not any(flags):
                if self._finished:
                    return
                continue
            batch, self._queue = self._queue, []
            await self._call(batch)

    async def _call(self, batch: list[tuple[GenRequest, asyncio.Future]]) -> None:
        if batch:
            await super()._call(batch)
            return
        await self.generator.generate([])  # join the collective with nothing to generate
