"""``openai`` generator: any OpenAI-compatible chat endpoint with images (a vLLM server, a hosted teacher).

Why: datagen's teacher and evaluation of served models speak the OpenAI chat API. Each request
becomes one ``/chat/completions`` call through the shared :class:`ChatClient` (timeouts, retries
with backoff), all requests of a batch concurrently (bounded), so a vLLM server batches them
itself. The conversation's ``{"type": "image"}`` part becomes an inline ``image_url`` part
(:func:`image_part`); the protocol's stop strings are sent as ``stop``. Servers drop the stop
string from the text, so it is restored (the closing tag of the action the turn left open).

Token ids: the server returns none. The generator returns text only; when the loop is given a
local ``processor`` (``AgentLoop(..., processor=p)``) it fills the token fields by tokenising each
turn's text (so the ids are a re-tokenisation, and logprobs are absent); without one, the record's
token fields stay empty.

    gen = OpenAIGenerator(settings.teacher)
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from components.agent.generators.base import GenOutput, GenRequest
from components.agent.protocol import ACTION_TAGS
from components.common.llm import ChatClient, LLMError, image_part
from components.common.settings import LLMEndpointSettings

_OPEN = re.compile(r"<(" + "|".join(ACTION_TAGS) + r")>")


def restore_stop(text: str, finish_reason: str | None, stops: tuple[str, ...]) -> tuple[str, str | None]:
    """``text`` with the stop string the server dropped put back: the close of the last action
    tag left open, when the server says it stopped (``finish_reason == "stop"``)."""
    opened = list(_OPEN.finditer(text))
    if finish_reason != "stop" or not opened:
        return text, None
    close = f"</{opened[-1].group(1)}>"
    if close in stops and close not in text[opened[-1].end():]:
        return text + close, close
    return text, None


def to_openai_messages(messages: list[dict[str, Any]], images: list[Any]) -> list[dict[str, Any]]:
    """Our chat messages with each ``{"type": "image"}`` part replaced by the next image, inline."""
    pending = iter(images)
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    img = next(pending, None)
                    if img is None:
                        raise ValueError("the conversation has more image parts than images")
                    parts.append(image_part(img))
                else:
                    parts.append({"type": "text", "text": part.get("text", "")})
            content = parts
        out.append({"role": m["role"], "content": content})
    return out


class OpenAIGenerator:
    name = "openai"
    lockstep = False
    processor = None

    def __init__(self, endpoint: LLMEndpointSettings, *, concurrency: int = 16, transport: Any = None):
        self.client = ChatClient(endpoint, transport=transport)
        self._sem = asyncio.Semaphore(concurrency)

    async def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, req: GenRequest) -> GenOutput:
        if req.messages is None:
            raise ValueError("the openai generator needs the chat messages of the request")
        messages = to_openai_messages(req.messages, req.images)
        async with self._sem:
            try:
                result = await self.client.complete(messages, max_tokens=req.max_new_tokens,
                                                    temperature=req.temperature, stop=list(req.stop) or None)
            except LLMError as exc:
                return GenOutput(text="", stop_reason="error", error=str(exc))
        text, stop = restore_stop(result.text, result.finish_reason, req.stop)
        reason = "length" if result.finish_reason == "length" else "stop_string" if stop else "eos"
        return GenOutput(text=text, stop_reason=reason, stop=stop)

    async def aclose(self) -> None:
        await self.client.aclose()
