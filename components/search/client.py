"""Client of the search tool-server, for the agent loop (teacher, policy rollouts, evaluation).

    async with ToolClient("http://127.0.0.1:8080", token="…") as tools:
        resp = await tools.text_search("eiffel tower height", top_k=5)     # TextSearchResponse
        resp, err = await tools.safe_image_search(pil_image, region="top-left")  # never raises

Timeouts on every call (``tools.client_timeout_s``: longer than the server's deadline, so the
server's 504 arrives before the client gives up); retries follow the project's one policy
(components/common/retry.py): connection failures, 429 (after its Retry-After), 502 and 503 — never
a 504 (the server's own deadline), a 500, a 4xx or a read timeout. Failures raise :class:`ToolError` with the
server's message; ``safe_*`` return ``(None, message)`` instead, so a tool failure becomes text for
the model and never kills a rollout. :func:`in_process_client` gives the same interface over the
app in this process (``httpx.ASGITransport``), with no network.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import httpx
from PIL import Image
from pydantic import BaseModel, ValidationError

from components.common import retry
from components.search.types import ImageSearchResponse, TextSearchResponse

log = logging.getLogger(__name__)
R = TypeVar("R", bound=BaseModel)


class ToolError(RuntimeError):
    """A tool call failed for good; ``status`` is the HTTP status (None for network errors)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


def encode_image(image: Image.Image | bytes) -> str:
    """PIL image (sent as PNG) or encoded image bytes → base64 text."""
    if isinstance(image, bytes | bytearray):
        return base64.b64encode(bytes(image)).decode()
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class ToolClient:
    """Async client of ``/v1/text_search`` and ``/v1/image_search``."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30.0, retries: int = 2,
                 *, backoff_s: float = 0.25, transport: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 100, pools: int = 8):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries, self.backoff_s = retries, backoff_s
        # Every connection a pool opens is kept alive (httpx keeps only 20 by default): with more
        # calls in flight than that (the agent loop runs 32 trajectories), each burst closed the
        # extra connections and the next one reconnected them, paying connect and close each time.
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # Several small pools, used in turn: httpcore's pool re-scans all its connections and queued
        # requests on every request and release (encode/httpcore#1035, open), so at 32 calls in flight
        # one pool cost 2.3-3.0 ms of CPU per request against 0.8 ms for 8 pools (a loopback server,
        # same process) — on the rollout's path, where the agent loop's CPU is the bottleneck.
        n = 1 if transport is not None else max(1, pools)
        self._pools = [httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, transport=transport,
                                         timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
                                         limits=limits) for _ in range(n)]
        self._turn = 0

    @classmethod
    def from_settings(cls, settings: Any, url: str | None = None) -> ToolClient:
        """The client the settings describe (``url`` overrides ``tools.url``)."""
        t = settings.tools
        return cls(url or t.url, t.token.get_secret_value() if t.token else None, t.client_timeout_s, t.retries)

    async def __aenter__(self) -> ToolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    def _pool(self) -> httpx.AsyncClient:
        self._turn = (self._turn + 1) % len(self._pools)
        return self._pools[self._turn]

    async def _post(self, path: str, body: dict[str, Any], model: type[R]) -> R:
        """One call under the shared retry policy (components/common/retry.py): retried only when
        the request never reached the server, or it said 429 (after its Retry-After), 502 or 503.
        Never a 504 (the server already spent its deadline on it; asking again would spend it
        again), a 500, a 4xx, or a read timeout."""

        async def once() -> R:
            try:
                resp = await self._pool().post(path, json=body)
            except httpx.TransportError as exc:
                err = ToolError(f"tool-server {path}: {type(exc).__name__}: {exc or 'no answer'}")
                if retry.is_connect_error(exc):
                    raise retry.Retryable(err) from exc
                raise err from None  # read timeout, reset mid-request: it may be working on it
            if resp.status_code >= 400:
                err = _error_of(path, resp)
                if retry.retryable_status(resp.status_code):
                    raise retry.Retryable(err, retry_after=retry.retry_after_s(resp.headers))
                raise err
            try:
                return model.model_validate(resp.json())
            except (ValueError, ValidationError) as exc:
                raise ToolError(f"tool-server {path}: unexpected answer: {exc}"[:500],
                                status=resp.status_code) from None

        return await retry.attempts(once, name=f"tool-server {path}", retries=self.retries,
                                    wait_initial=self.backoff_s)

    async def text_search(self, query: str, top_k: int = 5) -> TextSearchResponse:
        return await self._post("/v1/text_search", {"query": query, "top_k": top_k}, TextSearchResponse)

    async def image_search(self, image: Image.Image | bytes, region: str | list[float] | None = None,
                           top_k: int = 5) -> ImageSearchResponse:
        body = {"image_b64": encode_image(image), "region": region, "top_k": top_k}
        return await self._post("/v1/image_search", body, ImageSearchResponse)

    async def safe_text_search(self, query: str, top_k: int = 5) -> tuple[TextSearchResponse | None, str | None]:
        """Like :meth:`text_search`, but a failure is ``(None, message)``."""
        try:
            return await self.text_search(query, top_k), None
        except ToolError as exc:
            return None, f"text search failed: {exc}"

    async def safe_image_search(self, image: Image.Image | bytes, region: str | list[float] | None = None,
                                top_k: int = 5) -> tuple[ImageSearchResponse | None, str | None]:
        """Like :meth:`image_search`, but a failure is ``(None, message)``."""
        try:
            return await self.image_search(image, region, top_k), None
        except ToolError as exc:
            return None, f"image search failed: {exc}"


def _error_of(path: str, resp: httpx.Response) -> ToolError:
    code, message = None, resp.text[:300]
    try:
        err = resp.json()["error"]
        code, message = err.get("code"), err.get("message", message)
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return ToolError(f"tool-server {path}: HTTP {resp.status_code} ({code}): {message}",
                     status=resp.status_code, code=code)


@asynccontextmanager
async def in_process_client(app: Any, token: str | None = None, timeout_s: float = 30.0,
                            retries: int = 0) -> AsyncIterator[ToolClient]:
    """A :class:`ToolClient` that calls ``app`` in this process; runs the app's start-up and shutdown."""
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        client = ToolClient("http://tools.in-process", token, timeout_s, retries,
                            transport=httpx.ASGITransport(app=app))
        stack.push_async_callback(client.aclose)
        yield client


def served_index_tags(url: str, timeout_s: float = 10.0) -> dict[str, str]:
    """MLflow tags naming the index version the tool-server at ``url`` serves (its ``/readyz``), so
    a run records what it searched; empty when the server does not say (a web backend, an old server)."""
    try:
        resp = httpx.get(url.rstrip("/") + "/readyz", timeout=timeout_s)
        body = resp.json() if resp.status_code == 200 else {}
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("could not ask %s which index it serves: %s", url, exc)
        return {}
    tags = {"dmms.index_version": body.get("index_version"), "dmms.index_uri": body.get("index_uri")}
    return {k: str(v) for k, v in tags.items() if v}
