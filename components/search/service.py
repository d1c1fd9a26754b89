"""The search service behind the HTTP app: backends, limits, cache layers and summaries in one place.

Why separate from the app: the routes only parse and render; this class does the work, so the
in-process client, tests and benchmarks drive exactly what the server runs.

- LOCAL backends: the reverse-image index runs in a thread pool so the event loop stays
  responsive; the tantivy text index (a search with snippets ~0.3 ms, stored pages ~20 us each)
  runs on the event loop, where it costs less than a thread hop. ``DMMS_TOOLS__SIMULATED_LATENCY_MS``
  is added to both to model web latency in benchmarks (0 by default), slept outside the backend's
  semaphore (a network wait uses no thread).
- WEB backends and the summariser are upstream calls: a per-backend semaphore, failures → 502,
  counted in ``/metrics``; they retry per the project's one policy (components/common/retry.py).
- ONE DEADLINE per request (``DMMS_TOOLS__DEADLINE_S``), everything included — search, page
  fetches, grounding, summary and their retries — past it a 504 ``upstream_timeout`` naming what it
  was still waiting for. Clients wait longer (``tools.client_timeout_s``) and never retry a 504, so
  a slow request is worked on once.
- Cache layers (MMSearch-R1): ``text`` query → results, ``image`` image hash + region → results,
  ``summary`` (pages, query) → summary; concurrent identical requests are computed once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, TypeVar

from PIL import Image

from components.common.settings import Settings
from components.search.cache import Cache, CachedCompute, cache_key
from components.search.errors import BadRequest, ToolServerError, UpstreamError, UpstreamTimeout
from components.search.grounding import GroundingError, crop_region, needs_grounder

# imported with the service, not on the first crop search: its imports (httpx, ...) took ~85 ms with
# the event loop stopped, in every worker, in the middle of the rollout benchmark's first burst
from components.search.grounding_service import GroundingUnavailable
from components.search.imaging import decode_b64, open_image, to_png
from components.search.index import LoadedIndex
from components.search.metrics import Metrics
from components.search.types import (
    ImageHit,
    ImageSearchResponse,
    TextHit,
    TextSearchResponse,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
_cut_short: ContextVar[list[str]] = ContextVar("cut_short")  # upstreams a request's deadline cancelled


class SearchService:
    """Text and image search with caching and summaries; build with :meth:`create`."""

    def __init__(self, settings: Settings, index: LoadedIndex | None, cache: Cache, metrics: Metrics,
                 summariser: Any, text_backend: Any | None = None, image_backend: Any | None = None):
        self.settings, self.index, self.metrics = settings, index, metrics
        self.cache = cache
        self.cc = CachedCompute(cache, metrics)
        self.summariser = summariser
        self.text_backend, self.image_backend = text_backend, image_backend
        self.text_name = f"text_{settings.tools.text_backend}"
        self.image_name = f"image_{settings.tools.image_backend}"
        n = settings.tools.backend_concurrency
        self._sems = {name: asyncio.Semaphore(n)
                      for name in (self.text_name, self.image_name, "summariser", "grounding", "page_fetch")}
        self._image_lane = ThreadPoolExecutor(settings.tools.image_search_threads, thread_name_prefix="image-search")

    @property
    def ready(self) -> bool:
        local_text = self.settings.tools.text_backend == "local"
        return self.index is not None or not local_text

    async def aclose(self) -> None:
        for part in (self.summariser, self.text_backend, self.image_backend, self.cache):
            close = getattr(part, "aclose", None)
            if close is not None:
                await close()
        self._image_lane.shutdown(wait=False)

    # ---- running backends ----------------------------------------------------------------------
    async def _local(self, backend: str, fn: Callable[..., T], *args: Any, inline: bool = False) -> T:
        """``fn(*args)`` of a local index under the backend's semaphore: in a thread, or ``inline`` on
        the event loop for work shorter than a thread hop costs (a text search: see ``_text_hits``)."""
        # The simulated latency stands for a web API's network wait, which holds no CPU and no
        # thread: it is slept BEFORE taking the semaphore, which bounds the index work queued on the
        # thread pool. Slept inside it, 17+ concurrent requests on one worker (tools.backend_concurrency
        # 16) waited a whole extra latency each (bench/rollout.py: 32 trajectories, 2 workers).
        if self.settings.tools.simulated_latency_ms:
            await asyncio.sleep(self.settings.tools.simulated_latency_ms / 1000)
        async with self._sems[backend]:
            self.metrics.backend_calls.labels(backend).inc()
            if inline:
                return fn(*args)
            return await asyncio.to_thread(fn, *args)

    async def _upstream(self, backend: str, call: Callable[[], Awaitable[T]]) -> T:
        """An upstream call under the backend's semaphore; failures → 502 (the backends retry per the
        shared policy on their own), and the request's deadline (:meth:`_deadline`) → 504."""
        async with self._sems[backend]:
            self.metrics.backend_calls.labels(backend).inc()
            try:
                return await call()
            except asyncio.CancelledError:  # the request's deadline (or the client went away)
                self.metrics.backend_errors.labels(backend, "timeout").inc()
                _cut_short.get([]).append(backend)
                raise
            except (BadRequest, ToolServerError):
                self.metrics.backend_errors.labels(backend, "error").inc()
                raise
            except Exception as exc:
                self.metrics.backend_errors.labels(backend, "error").inc()
                raise UpstreamError(f"{backend} failed: {type(exc).__name__}: {exc}") from None

    async def _deadline(self, work: Callable[[], Awaitable[T]]) -> T:
        """``work()`` within ``tools.deadline_s``, everything included; past it a 504 naming what it
        was waiting for. Clients wait longer than this (``tools.client_timeout_s``) and never retry it."""
        deadline_s = self.settings.tools.deadline_s
        cut: list[str] = []
        token = _cut_short.set(cut)
        try:
            async with asyncio.timeout(deadline_s):
                return await work()
        except TimeoutError:
            what = ", ".join(sorted(set(cut))) or "the local index"
            raise UpstreamTimeout(f"the request did not finish within its {deadline_s:g}s deadline "
                                  f"(DMMS_TOOLS__DEADLINE_S; still waiting for {what})") from None
        finally:
            _cut_short.reset(token)

    # ---- text ----------------------------------------------------------------------------------
    def _version(self, index: LoadedIndex | None) -> str:
        """Part of every local-backend cache key: a reloaded index never answers from the old one's cache."""
        return index.version if index is not None else "-"

    async def _text_hits(self, query: str, top_k: int, index: LoadedIndex | None) -> list[TextHit]:
        if self.text_backend is None:
            if index is None:
                raise ToolServerError("no index loaded", code="not_ready", status=503)
            # inline: a tantivy search with its snippets takes ~0.3 ms, mostly Python (the snippets),
            # so a thread adds no parallelism, only hops and GIL hand-offs with the event loop
            # (up to the 5 ms switch interval each): under 32 concurrent requests the thread pool's
            # share of the tool-server's CPU was ~20 % and its latency tail 2-3x the median
            # (python -m bench.search_text)
            return await self._local(self.text_name, index.text.search, query, top_k, inline=True)
        # web backends retry per the shared policy on their own (tools.web_max_retries)
        return await self._upstream(self.text_name, lambda: self.text_backend.search(query, top_k))

    async def text_search(self, query: str, top_k: int) -> TextSearchResponse:
        """Hits, page texts and their summary for ``query``, within the request deadline."""
        return await self._deadline(lambda: self._text_search(query, top_k))

    async def _text_search(self, query: str, top_k: int) -> TextSearchResponse:
        query = " ".join(query.split())
        if not query:
            raise BadRequest("query is blank: send the words to search for", code="bad_query")

        index = self.index  # one version for the whole request, whatever a reload swaps in meanwhile

        async def compute() -> str:
            return json.dumps([h.model_dump() for h in await self._text_hits(query, top_k, index)])

        version = self._version(index) if self.text_backend is None else "web"
        key = cache_key("text", self.text_name, version, query.lower(), top_k)
        raw, hit_cached = await self.cc.get_or_compute("text", key, compute)
        hits = [TextHit(**h) for h in json.loads(raw)]
        pages = await self._pages(hits, web=self.text_backend is not None, index=index)
        summary, sum_cached = await self._summary(
            "text", query, hits, pages, lambda: self.summariser.summarise_text(query, hits, pages))
        return TextSearchResponse(results=hits, summary=summary, cached=hit_cached and sum_cached)

    async def _pages(self, hits: list[TextHit] | list[ImageHit], web: bool,
                     index: LoadedIndex | None = None) -> list[str]:
        """Page text of each hit: the stored document (local corpus) or the fetched page (web, cached
        in the ``page`` layer); the snippet when neither is available."""
        if web:
            return list(await asyncio.gather(*(self._web_page(h) for h in hits)))
        if index is None:
            return [h.snippet for h in hits]
        docs = [index.text.get(h.doc_id) for h in hits]  # ~20 us each: inline, as the search
        return [(d or {}).get("text") or h.snippet for d, h in zip(docs, hits, strict=True)]

    async def _web_page(self, hit: TextHit | ImageHit) -> str:
        if not hit.url.startswith(("http://", "https://")):
            return hit.snippet
        t = self.settings.tools

        async def fetch() -> str:
            from components.search.fetch import fetch_page

            page = await fetch_page(hit.url, timeout_s=t.web_timeout_s, max_retries=t.web_max_retries)
            return page.text

        try:
            text, _ = await self.cc.get_or_compute(
                "page", cache_key("page", hit.url), lambda: self._upstream("page_fetch", fetch))
        except ToolServerError as exc:  # a page we cannot read still has its snippet
            log.info("page %s not used: %s", hit.url, exc.message)
            return hit.snippet
        return text or hit.snippet

    async def _summary(self, kind: str, query: str, hits: list[Any], pages: list[str],
                       make: Callable[[], Awaitable[str]]) -> tuple[str, bool]:
        digest = [(h.doc_id, hashlib.sha256(p.encode()).hexdigest()[:16]) for h, p in zip(hits, pages, strict=True)]
        key = cache_key("summary", kind, self.summariser.name, query.lower(), digest)
        if self.summariser.name == "extractive":
            return await self.cc.get_or_compute("summary", key, make)
        return await self.cc.get_or_compute(
            "summary", key, lambda: self._upstream("summariser", make))

    # ---- image ---------------------------------------------------------------------------------
    async def image_search(self, image_b64: str, region: str | list[float] | None,
                           top_k: int) -> ImageSearchResponse:
        """Visually similar images (of ``region`` when given) and their summary, within the deadline."""
        return await self._deadline(lambda: self._image_search(image_b64, region, top_k))

    async def _image_search(self, image_b64: str, region: str | list[float] | None,
                            top_k: int) -> ImageSearchResponse:
        tools = self.settings.tools
        data = decode_b64(image_b64, tools.max_image_bytes)
        index = self.index  # one version for the whole request

        async def compute() -> str:
            if self.image_backend is None and self.grounder is None and index is not None and index.image:
                hits, box, note = await self._on_image_lane(data, region, top_k, index)
                return json.dumps({"hits": [h.model_dump() for h in hits], "crop_box": box, "note": note})
            image = await asyncio.to_thread(open_image, data, tools.max_image_pixels)
            crop, box, note = image, None, None
            if region is not None:
                crop, box, note = await self._crop(image, region)
            hits = await self._image_hits(crop, top_k, index)
            return json.dumps({"hits": [h.model_dump() for h in hits], "crop_box": box, "note": note})

        norm_region = region.strip().lower() if isinstance(region, str) else region
        version = self._version(index) if self.image_backend is None else "web"
        key = cache_key("image", self.image_name, version, hashlib.sha256(data).hexdigest(), norm_region, top_k)
        raw, hit_cached = await self.cc.get_or_compute("image", key, compute)
        stored = json.loads(raw)
        hits = [ImageHit(**h) for h in stored["hits"]]
        pages = await self._pages(hits, web=self.image_backend is not None, index=index)
        summary, sum_cached = await self._summary(
            "image", "", hits, pages, lambda: self.summariser.summarise_image(hits, pages))
        note = stored.get("note")
        return ImageSearchResponse(results=hits, summary=f"{note} {summary}" if note else summary,
                                   crop_box=stored["crop_box"], cached=hit_cached and sum_cached, note=note)

    async def _crop(self, image: Image.Image, region: str | list[float]
                    ) -> tuple[Image.Image, list[int] | None, str | None]:
        """(crop, its box, None); a referring expression nobody can locate — no grounding model or
        service, or the service failing — is searched as the whole image: (image, None, a note)."""
        async with self._sems["grounding"]:
            try:
                crop, box = await asyncio.to_thread(crop_region, image, region, self.grounder)
            except GroundingUnavailable as exc:
                log.warning("crop search of %r: %s; searching the whole image", region, exc)
                self.metrics.backend_errors.labels("grounding", "error").inc()
                return image, None, _whole_image_note(region, "the grounding service is unavailable")
            except GroundingError as exc:
                if self.grounder is None and needs_grounder(region):
                    return image, None, _whole_image_note(region, "no grounding model is configured")
                raise BadRequest(str(exc), code="bad_region", status=422) from None
        return crop, [int(v) for v in box], None

    grounder: Any = None  # a referring-expression grounder (GroundingDINO) when configured

    async def _on_image_lane(self, data: bytes, region: str | list[float] | None, top_k: int,
                             index: LoadedIndex) -> tuple[list[ImageHit], list[int] | None, str | None]:
        """A local image search (no grounding model to call) in ONE hop to the image lane
        (``tools.image_search_threads``), start to finish. Why: in four hops on the shared thread
        pool a burst of searches advanced stage by stage, GIL-interleaved, and all 15 of a worker's
        share of the rollout benchmark's first burst finished together ~0.2 s after their (simulated)
        web wait; run to completion in arrival order, the first answers leave first."""
        if self.settings.tools.simulated_latency_ms:  # as in _local: a network wait holds no lane
            await asyncio.sleep(self.settings.tools.simulated_latency_ms / 1000)
        async with self._sems[self.image_name]:
            self.metrics.backend_calls.labels(self.image_name).inc()
            return await asyncio.get_running_loop().run_in_executor(
                self._image_lane, self._image_work, data, region, top_k, index)

    def _image_work(self, data: bytes, region: str | list[float] | None, top_k: int,
                    index: LoadedIndex) -> tuple[list[ImageHit], list[int] | None, str | None]:
        """(image lane) decode, crop (a box or a spatial phrase; a referring expression is searched as
        the whole image with a note, as :meth:`_crop` does without a grounder), search, hit rows."""
        image = open_image(data, self.settings.tools.max_image_pixels)
        crop, box, note = image, None, None
        if region is not None:
            try:
                crop, ibox = crop_region(image, region, None)
                box = [int(v) for v in ibox]
            except GroundingError as exc:
                if not needs_grounder(region):
                    raise BadRequest(str(exc), code="bad_region", status=422) from None
                note = _whole_image_note(region, "no grounding model is configured")
        return self._image_hit_rows(index.image.search(crop, top_k), index), box, note

    async def _image_hits(self, image: Image.Image, top_k: int, index: LoadedIndex | None) -> list[ImageHit]:
        if self.image_backend is not None:
            png = await asyncio.to_thread(to_png, image)
            return await self._upstream(self.image_name, lambda: self.image_backend.search_image(png, top_k))
        if index is None or index.image is None:
            raise BadRequest("this index has no images: image search needs a corpus with images.jsonl",
                             code="no_image_index", status=409)
        pairs = await self._local(self.image_name, index.image.search, image, top_k)
        return await asyncio.to_thread(self._image_hit_rows, pairs, index)

    def _image_hit_rows(self, pairs: list[tuple[str, float]], index: LoadedIndex) -> list[ImageHit]:
        out = []
        for image_id, score in pairs:
            row = index.images.get(image_id, {})
            doc = index.text.get(row.get("doc_id", "")) or {}
            out.append(ImageHit(
                image_id=image_id, doc_id=row.get("doc_id", ""),
                title=doc.get("title") or row.get("title") or "", url=doc.get("url", ""),
                snippet=row.get("caption") or row.get("title") or "", score=float(score)))
        return out


def _whole_image_note(region: Any, why: str) -> str:
    return (f"Could not locate {region!r} in the image ({why}), so the whole image was searched instead; "
            "a box [x1, y1, x2, y2] or a spatial phrase such as 'top-left' crops without a model.")
