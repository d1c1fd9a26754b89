"""Web search backends of the tool-server: SearXNG, Brave, Serper (text) and SerpApi Google Lens (image).

Why: on a real deployment the agent searches the live web (docs/design.md §1); these backends map each
vendor's JSON onto our :class:`TextHit` / :class:`ImageHit` so the server does not care which is
configured (``tools.text_backend``, ``tools.image_backend``). Every call has a timeout
(``tools.web_timeout_s``) and at most ``tools.web_max_retries`` retries under the project's one
policy (components/common/retry.py: connection failures, 429 after its Retry-After, 502, 503; never a
read timeout, a 500 or a 504, which may already have been billed); keys are ``SecretStr`` and are
redacted from httpx's request log. Failures raise :class:`WebSearchError` with the backend and the
cause.

Request/response mapping (fields we send and read; everything else is ignored):

* **SearXNG** (self-hosted, ``json`` must be in ``search.formats``):
  ``GET {searxng_url}/search?q=<query>&format=json&pageno=1`` →
  ``{"results": [{"url", "title", "content", "score"?}]}`` →
  ``TextHit(doc_id=url, title, url, snippet=content, score=score or 1/rank)``.
* **Brave Search API**: ``GET https://api.search.brave.com/res/v1/web/search?q=<query>&count=<k>``
  with headers ``X-Subscription-Token: <key>``, ``Accept: application/json`` →
  ``{"web": {"results": [{"title", "url", "description"}]}}`` →
  ``TextHit(doc_id=url, title, url, snippet=description, score=1/rank)``.
* **Serper (Google)**: ``POST https://google.serper.dev/search`` with header ``X-API-KEY: <key>`` and
  body ``{"q": <query>, "num": <k>}`` → ``{"organic": [{"title", "link", "snippet", "position"}]}`` →
  ``TextHit(doc_id=link, title, url=link, snippet, score=1/position)``.
* **SerpApi Google Lens** (reverse image): ``GET https://serpapi.com/search.json?engine=google_lens
  &url=<public image URL>&api_key=<key>`` → ``{"visual_matches": [{"position", "title", "link",
  "source", "thumbnail", "image"?}]}`` → ``ImageHit(image_id=image or thumbnail or link,
  doc_id=link, title, url=link, snippet=source, score=1/position)``. Lens fetches the image from a
  URL, so the query bytes are first made reachable by an :class:`ImagePublisher`: the default
  :class:`HttpPutPublisher` PUTs them to ``{tools.image_publish_url}/<sha256>.jpg`` (a store the
  tool-server may write and the internet may read, e.g. a bucket prefix with a lifecycle rule) and
  sends that URL.

The real APIs cannot be reached from the test machines: ``tests/unit/search/test_web.py`` runs each
backend against a local HTTP server on loopback that speaks the same JSON (``tools.web_api_url`` /
``tools.image_api_url`` point there).
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any, Protocol

import httpx
from pydantic import SecretStr

from components.common import retry
from components.search.types import ImageHit, TextHit

log = logging.getLogger(__name__)

BRAVE_URL = "https://api.search.brave.com/res/v1/web/search"
SERPER_URL = "https://google.serper.dev/search"
SERPAPI_URL = "https://serpapi.com/search.json"
_KEY_IN_URL = re.compile(r"(api_key=)[^&\s\"]+")


class WebSearchError(RuntimeError):
    """A web backend failed after its retries; the message names the backend and the cause."""


class _RedactKeys(logging.Filter):
    """httpx logs every request URL at INFO; SerpApi takes its key in the query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_KEY_IN_URL.sub(r"\1***", str(a)) if "api_key=" in str(a) else a
                                for a in record.args)
        return True


logging.getLogger("httpx").addFilter(_RedactKeys())


class _Backend:
    """Shared HTTP plumbing: one pooled client, timeouts, retries under the shared policy."""

    name = "web"

    def __init__(self, timeout_s: float = 15.0, max_retries: int = 2, backoff_s: float = 0.5,
                 client: httpx.AsyncClient | None = None) -> None:
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self._client = client

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def _call(self, method: str, url: str, **kw: Any) -> Any:
        """The JSON body of a 2xx answer, under the shared retry policy (components/common/retry.py:
        connection failures, 429 after its Retry-After, 502, 503); then :class:`WebSearchError`."""
        tries = self.max_retries + 1

        async def once() -> Any:
            try:
                resp = await self.client.request(method, url, timeout=self.timeout_s, **kw)
            except httpx.TimeoutException as exc:
                if retry.is_connect_error(exc):
                    raise retry.Retryable(WebSearchError(
                        f"{self.name}: could not connect within {self.timeout_s}s after {tries} attempts")) from exc
                raise WebSearchError(f"{self.name}: timed out after {self.timeout_s}s (not retried: the "
                                     "API may still be answering it, and a retry may be billed)") from None
            except httpx.TransportError as exc:
                err = WebSearchError(f"{self.name}: connection failed ({type(exc).__name__})")
                if retry.is_connect_error(exc):
                    raise retry.Retryable(WebSearchError(f"{err} after {tries} attempts")) from exc
                raise err from None
            if retry.retryable_status(resp.status_code):
                raise retry.Retryable(WebSearchError(f"{self.name}: HTTP {resp.status_code} after {tries} attempts"),
                                      retry_after=retry.retry_after_s(resp.headers))
            if resp.status_code >= 400:
                hint = " (check the API key and settings)" if resp.status_code < 500 else ""
                raise WebSearchError(f"{self.name}: HTTP {resp.status_code}{hint}: {resp.text[:200]}")
            try:
                return resp.json()
            except ValueError:
                raise WebSearchError(f"{self.name}: answer is not JSON: {resp.text[:200]!r}") from None

        return await retry.attempts(once, name=f"web {self.name}", retries=self.max_retries,
                                    wait_initial=self.backoff_s)


def _score(item: dict[str, Any], rank: int) -> float:
    pos = item.get("position")
    return 1.0 / float(pos) if isinstance(pos, int | float) and pos > 0 else 1.0 / rank


class SearxngBackend(_Backend):
    name = "searxng"

    def __init__(self, base_url: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.base_url = base_url.rstrip("/")

    async def search(self, query: str, top_k: int) -> list[TextHit]:
        data = await self._call("GET", f"{self.base_url}/search",
                                params={"q": query, "format": "json", "pageno": 1})
        hits = []
        for rank, r in enumerate(data.get("results", [])[:top_k], 1):
            score = r.get("score")
            hits.append(TextHit(doc_id=r["url"], title=r.get("title", ""), url=r["url"],
                                snippet=r.get("content") or "",
                                score=float(score) if isinstance(score, int | float) else 1.0 / rank))
        return hits


class BraveBackend(_Backend):
    name = "brave"

    def __init__(self, api_key: SecretStr, url: str = BRAVE_URL, **kw: Any) -> None:
        super().__init__(**kw)
        self.api_key, self.url = api_key, url

    async def search(self, query: str, top_k: int) -> list[TextHit]:
        data = await self._call("GET", self.url, params={"q": query, "count": min(top_k, 20)},
                                headers={"X-Subscription-Token": self.api_key.get_secret_value(),
                                         "Accept": "application/json"})
        results = (data.get("web") or {}).get("results", [])
        return [TextHit(doc_id=r["url"], title=r.get("title", ""), url=r["url"],
                        snippet=r.get("description") or "", score=1.0 / rank)
                for rank, r in enumerate(results[:top_k], 1)]


class SerperBackend(_Backend):
    name = "serper"

    def __init__(self, api_key: SecretStr, url: str = SERPER_URL, **kw: Any) -> None:
        super().__init__(**kw)
        self.api_key, self.url = api_key, url

    async def search(self, query: str, top_k: int) -> list[TextHit]:
        data = await self._call("POST", self.url, json={"q": query, "num": top_k},
                                headers={"X-API-KEY": self.api_key.get_secret_value()})
        return [TextHit(doc_id=r["link"], title=r.get("title", ""), url=r["link"],
                        snippet=r.get("snippet") or "", score=_score(r, rank))
                for rank, r in enumerate(data.get("organic", [])[:top_k], 1)]


class ImagePublisher(Protocol):
    """Makes query-image bytes reachable at a public URL and returns that URL."""

    async def publish(self, image_bytes: bytes) -> str: ...


class HttpPutPublisher(_Backend):
    """PUTs the bytes to ``{base_url}/<sha256>.jpg`` (content-addressed, so repeats are idempotent)."""

    name = "image-publish"

    def __init__(self, base_url: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.base_url = base_url.rstrip("/")

    async def publish(self, image_bytes: bytes) -> str:
        url = f"{self.base_url}/{hashlib.sha256(image_bytes).hexdigest()}.jpg"

        def failed(cause: str) -> WebSearchError:
            return WebSearchError(f"image-publish: PUT {url} failed ({cause}); check tools.image_publish_url")

        async def once() -> str:
            try:
                resp = await self.client.put(url, content=image_bytes, timeout=self.timeout_s,
                                             headers={"Content-Type": "image/jpeg"})
            except httpx.TransportError as exc:
                if retry.is_connect_error(exc):
                    raise retry.Retryable(failed(type(exc).__name__)) from exc
                raise failed(type(exc).__name__) from None
            if resp.status_code < 300:
                return url
            if retry.retryable_status(resp.status_code):
                raise retry.Retryable(failed(f"HTTP {resp.status_code}"), retry.retry_after_s(resp.headers))
            raise failed(f"HTTP {resp.status_code}")

        return await retry.attempts(once, name="web image-publish", retries=self.max_retries,
                                    wait_initial=self.backoff_s)


class SerpApiLensBackend(_Backend):
    name = "serpapi_lens"

    def __init__(self, api_key: SecretStr, publisher: ImagePublisher, url: str = SERPAPI_URL,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.api_key, self.publisher, self.url = api_key, publisher, url

    async def search_image(self, image_bytes: bytes, top_k: int) -> list[ImageHit]:
        public_url = await self.publisher.publish(image_bytes)
        data = await self._call("GET", self.url, params={
            "engine": "google_lens", "url": public_url, "api_key": self.api_key.get_secret_value()})
        if "error" in data and not data.get("visual_matches"):
            raise WebSearchError(f"{self.name}: {data['error']}")
        hits = []
        for rank, m in enumerate(data.get("visual_matches", [])[:top_k], 1):
            link = m.get("link", "")
            hits.append(ImageHit(image_id=m.get("image") or m.get("thumbnail") or link, doc_id=link,
                                 title=m.get("title", ""), url=link, snippet=m.get("source") or "",
                                 score=_score(m, rank)))
        return hits


def _common(settings: Any) -> dict[str, Any]:
    t = settings.tools
    return {"timeout_s": t.web_timeout_s, "max_retries": t.web_max_retries}


def make_text_backend(settings: Any) -> SearxngBackend | BraveBackend | SerperBackend | None:
    """The web text backend ``tools.text_backend`` names, or ``None`` for ``local``."""
    t = settings.tools
    if t.text_backend == "searxng":
        return SearxngBackend(t.searxng_url, **_common(settings))
    if t.text_backend == "brave":
        return BraveBackend(t.web_api_key, url=t.web_api_url or BRAVE_URL, **_common(settings))
    if t.text_backend == "serper":
        return SerperBackend(t.web_api_key, url=t.web_api_url or SERPER_URL, **_common(settings))
    return None


def make_image_backend(settings: Any) -> SerpApiLensBackend | None:
    """The reverse-image backend ``tools.image_backend`` names, or ``None`` for ``local``."""
    t = settings.tools
    if t.image_backend == "serpapi_lens":
        publisher = HttpPutPublisher(t.image_publish_url, **_common(settings))
        return SerpApiLensBackend(t.image_api_key, publisher, url=t.image_api_url or SERPAPI_URL,
                                  **_common(settings))
    return None
