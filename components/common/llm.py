"""The one OpenAI-compatible chat client: summariser, teachers, judge and generators share it.

Why one: every LLM call in the system (a vLLM server in the cluster, a hosted teacher such as
Gemini or GPT through an OpenAI-compatible gateway) needs the same things done right once —
a timeout on every request, retries under the project's one policy (components/common/retry.py:
connection failures, 429, 502, 503; never a read timeout, a 500, a 504 or another 4xx), images as data URLs, the key as a bearer token that is
never logged, and an error that says which endpoint failed and why.

    client = ChatClient(settings.judge)
    result = await client.complete([{"role": "user", "content": "Say hi"}], max_tokens=8)
    result.text

An ``httpx`` transport can be passed in (tests use ``httpx.ASGITransport`` or a real server on
loopback).
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

from components.common import retry
from components.common.settings import LLMEndpointSettings

log = logging.getLogger(__name__)

class LLMError(RuntimeError):
    """A chat request failed for good (after retries, or a non-retryable answer)."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class ChatResult:
    """One completion: the text, why it stopped, token usage and (when asked) token logprobs."""

    text: str
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    logprobs: list[float] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def image_part(image: Any, fmt: str = "PNG") -> dict[str, Any]:
    """An OpenAI ``image_url`` content part holding ``image`` (PIL image or encoded bytes) inline."""
    if isinstance(image, bytes | bytearray):
        data = bytes(image)
        mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
    else:
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        data, mime = buf.getvalue(), f"image/{fmt.lower()}"
    return {
        "type": "image_url",
        "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"},
    }


class ChatClient:
    """Async client of ``POST {base_url}/chat/completions``."""

    def __init__(
        self,
        endpoint: LLMEndpointSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_s: float = 0.5,
    ):
        if not endpoint.configured:
            raise LLMError("chat endpoint not configured: set its base_url (e.g. DMMS_JUDGE__BASE_URL)")
        self.endpoint = endpoint
        self.backoff_s = backoff_s
        headers = {"Content-Type": "application/json"}
        if endpoint.api_key is not None:
            headers["Authorization"] = f"Bearer {endpoint.api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            base_url=endpoint.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(endpoint.timeout_s, connect=min(10.0, endpoint.timeout_s)),
            transport=transport,
        )

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: list[str] | None = None,
        logprobs: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> ChatResult:
        """One chat completion, retried on transient failures; raises :class:`LLMError`."""
        body: dict[str, Any] = {
            "model": self.endpoint.model,
            "messages": messages,
            "max_tokens": max_tokens or self.endpoint.max_tokens,
            "temperature": self.endpoint.temperature if temperature is None else temperature,
        }
        if stop:
            body["stop"] = stop
        if logprobs:
            body["logprobs"] = True
        if extra:
            body.update(extra)
        data = await self._post_with_retries("/chat/completions", body)
        return _parse_completion(data, self.endpoint.base_url or "")

    async def _post_with_retries(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST under the shared retry policy (components/common/retry.py): at most ``max_retries``
        retries of connection failures, 429 (after its Retry-After), 502 and 503; a read timeout, a
        500 or a 504 fails at once (the server may have spent the whole generation on it)."""
        where = f"{self.endpoint.base_url}{path}"
        tries = self.endpoint.max_retries + 1
        gave_up = f" (gave up after {tries} attempts)" if tries > 1 else ""

        async def once() -> dict[str, Any]:
            try:
                resp = await self._client.post(path, json=body)
            except httpx.TransportError as exc:
                if retry.is_connect_error(exc):
                    raise retry.Retryable(LLMError(f"{where}: {type(exc).__name__}: {exc}{gave_up}")) from exc
                raise LLMError(f"{where}: {type(exc).__name__}: {exc}") from None
            if resp.status_code >= 400:
                message = f"{where}: HTTP {resp.status_code}: {resp.text[:300]}"
                if retry.retryable_status(resp.status_code):
                    raise retry.Retryable(LLMError(message + gave_up, status=resp.status_code),
                                          retry_after=retry.retry_after_s(resp.headers))
                raise LLMError(message, status=resp.status_code)
            try:
                return resp.json()
            except ValueError:
                raise LLMError(f"{where}: answer is not JSON ({resp.text[:200]!r})") from None

        return await retry.attempts(once, name=f"chat {where}", retries=self.endpoint.max_retries,
                                    wait_initial=self.backoff_s)


def _parse_completion(data: dict[str, Any], where: str) -> ChatResult:
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise LLMError(f"{where}: unexpected completion shape: {str(data)[:300]}") from None
    lps = None
    content_lps = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    if content_lps:
        lps = [float(t.get("logprob", 0.0)) for t in content_lps]
    return ChatResult(
        text=text,
        finish_reason=choice.get("finish_reason"),
        usage={k: int(v) for k, v in (data.get("usage") or {}).items() if isinstance(v, int)},
        logprobs=lps,
        raw=data,
    )
