"""Shared pieces of the agent-loop tests: the tiny model, a sample image, a counting tool wrapper.

``CountingTools`` wraps the REAL tool client (real server on loopback) and records how many calls
were in flight at once; it changes nothing about the calls.
"""

from __future__ import annotations

import io

from PIL import Image

from components.agent.loop import Sample
from tests.fixtures.toolserver import draw_image


def png(seed: int = 1, size: int = 256) -> bytes:
    buf = io.BytesIO()
    draw_image(seed, f"img{seed}", size).save(buf, format="PNG")
    return buf.getvalue()


def samples(n: int, question: str = "Which monument is this?") -> list[Sample]:
    return [Sample(id=f"s{i}", question=question, image=png(i % 3), answers=["Zorashmar"]) for i in range(n)]


def pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


class CountingTools:
    """The real ToolClient, with the number of calls in flight recorded (max_in_flight)."""

    def __init__(self, client):
        self.client, self.in_flight, self.max_in_flight, self.calls = client, 0, 0, 0

    async def _count(self, coro):
        self.in_flight += 1
        self.calls += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await coro
        finally:
            self.in_flight -= 1

    async def safe_text_search(self, *a, **kw):
        return await self._count(self.client.safe_text_search(*a, **kw))

    async def safe_image_search(self, *a, **kw):
        return await self._count(self.client.safe_image_search(*a, **kw))
