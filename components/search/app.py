"""The search tool-server's FastAPI app (API: docs/design.md §5; OpenAPI at ``/openapi.json``).

    app = create_app(load_settings(), ".dmms/index")
    uvicorn.run(app, host="127.0.0.1", port=8080)        # or: dmms tools serve --index .dmms/index

Routes: ``POST /v1/text_search``, ``POST /v1/image_search`` (bearer token when ``DMMS_TOOLS__TOKEN``
is set; the settings demand one outside the tiny profile), ``GET /healthz`` (process alive),
``GET /readyz`` (index loaded, 503 before; the index version it serves), ``GET /metrics``
(Prometheus), ``POST /admin/reload`` (bearer token: re-resolve the index alias, swap in a new
version; also every ``DMMS_TOOLS__INDEX_POLL_S``). Every error is
``{"error": {"code", "message"}}``: 4xx for bad input (malformed JSON, bad base64, not an image,
too large, bad region), 401 without the token, 502/504 when an upstream fails; never 5xx for bad
input. The index is loaded in the background at start-up, so ``/healthz`` answers at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from components.common.settings import Settings, load_settings
from components.search.cache import open_cache
from components.search.errors import ToolServerError
from components.search.index import LoadedIndex, load_index, resolve_index
from components.search.metrics import Metrics
from components.search.service import SearchService
from components.search.summarise import make_summariser
from components.search.types import (
    ErrorResponse,
    ImageSearchRequest,
    ImageSearchResponse,
    TextSearchRequest,
    TextSearchResponse,
)

log = logging.getLogger(__name__)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 502, 503, 504)
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await error_response(413, "body_too_large",
                                 f"request body is {int(declared)} bytes, over the limit of {self.limit}")(
                scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                # an HTTPException: FastAPI re-raises it from its body reader (others become a 400)
                raise StarletteHTTPException(413, f"request body is over the limit of {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


def _auth_dependency(settings: Settings):  # noqa: ANN202 - a FastAPI dependency
    token = settings.tools.token.get_secret_value() if settings.tools.token else None

    async def check(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise ToolServerError("missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                                  "(DMMS_TOOLS__TOKEN)", code="unauthorized", status=401)

    return check


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ToolServerError)
    async def _tool_error(request: Request, exc: ToolServerError) -> JSONResponse:
        if exc.status >= 500:  # "not ready" is what every client polling a starting server sees: not a warning
            log.log(logging.DEBUG if exc.code == "not_ready" else logging.WARNING, "%s %s -> %d %s: %s",
                    request.method, request.url.path, exc.status, exc.code, exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "malformed_json", "request body is not valid JSON")
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                 for e in errors]
        return error_response(422, "invalid_request", "; ".join(parts)[:2000])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {413: "body_too_large", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, f"http_{exc.status_code}")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); see server logs")


def _make_backends(settings: Settings) -> tuple[Any, Any]:
    text = image = None
    if settings.tools.text_backend != "local":
        from components.search.web import make_text_backend

        text = make_text_backend(settings)
    if settings.tools.image_backend != "local":
        from components.search.web import make_image_backend

        image = make_image_backend(settings)
    return text, image


def app_from_env() -> FastAPI:
    """The app the environment's settings describe: what each worker of a multi-process
    ``dmms tools serve`` runs (``uvicorn components.search.app:app_from_env --factory``)."""
    settings = load_settings()
    return create_app(settings, settings.tools.index, serving=True)


def single_threaded_math() -> None:
    """One BLAS thread per request thread in a serving process (``create_app(serving=True)``).

    Why: a server runs many requests at once (a thread pool per worker, several workers), and each
    search's matrix products are small (a query against the window vectors of a shard, the
    verification thumbnails), so OpenBLAS's own thread team only wakes up to fight the other
    requests for the same cores: on 2 busy cores an image search of the rollout benchmark's index
    took 31 ms with 2 BLAS threads and 13 ms with one (its (2146 x 192) @ (192 x 2) product: 7.7 ms
    against 0.09 ms). Only for serving processes: an in-process
    app shares its process with callers whose numpy may want every core. FAISS queries already run
    single-threaded (``components/search/image_ann.py``).
    """
    import numpy  # noqa: F401 - loads OpenBLAS: threadpoolctl limits only the libraries already loaded
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def warm_up(index: LoadedIndex) -> None:
    """One text and one image search before a serving process reports ready, so its first requests
    do not pay for first-time work (thread start-up, pages of the memory-mapped index read in,
    first calls): a fresh worker's first crop search took 89 ms against 15-20 ms for the next ones,
    in the middle of the rollout benchmark's first burst. Nothing is cached or counted."""
    from PIL import Image

    index.text.search("warm up", 1)
    if index.image is not None and len(index.image):
        index.image.search(Image.new("RGB", (64, 48), (120, 90, 60)), 1)


def freeze_long_lived() -> None:
    """Move everything alive now out of the garbage collector's sight (a serving process, after
    its index is loaded). Why: the modules, the app and the index live as long as the process, yet
    every full collection walked them again — 70-134 ms with the event loop stopped, once every
    few seconds under load (python -m bench.search_text: the requests in flight then all waited).
    Called again after a reload, after collecting what the old index left in cycles."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def create_app(settings: Settings, index_dir: str | Path | None = None, *,
               index: LoadedIndex | None = None, serving: bool = False) -> FastAPI:
    """The app serving ``index_dir`` (loaded at start-up) or an already loaded ``index``.

    ``serving``: this process only serves (``dmms tools serve``): one BLAS thread
    (:func:`single_threaded_math`) and long-lived objects frozen out of the collector
    (:func:`freeze_long_lived`) once the index is loaded; not for apps inside other processes."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        t = settings.tools
        app.state.serving = serving
        if serving:
            single_threaded_math()
        cache = open_cache(t.cache_url, ttl_s=t.cache_ttl_s, max_entries=t.cache_max_entries,
                           prefix=t.cache_prefix)
        text_backend, image_backend = _make_backends(settings)
        service = SearchService(settings, index, cache, metrics, make_summariser(settings),
                                text_backend, image_backend)
        from components.search.grounding import make_grounder

        service.grounder = await asyncio.to_thread(make_grounder, settings)
        app.state.service = service
        app.state.index_source = str(index_dir) if index is None and index_dir is not None else None
        app.state.reload_lock = asyncio.Lock()
        tasks = []
        if app.state.index_source is not None:
            tasks.append(asyncio.create_task(_load(service, app.state.index_source, settings, serving)))
        elif serving:
            freeze_long_lived()
            if t.index_poll_s > 0:  # follow the alias: a rebuilt index is served without a restart
                tasks.append(asyncio.create_task(_poll(app, settings, t.index_poll_s)))
        try:
            yield
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await service.aclose()

    app = FastAPI(title="deepmmsearch tool-server", version="1", lifespan=lifespan,
                  description=__doc__.split("\n\n")[0])
    app.state.metrics = metrics
    app.add_middleware(BodyLimitMiddleware, limit=settings.tools.max_body_bytes)
    _install_error_handlers(app)
    _install_metrics_middleware(app, metrics)
    _install_routes(app, settings, metrics)
    return app


async def _load(service: SearchService, index_dir: str, settings: Settings, serving: bool = False) -> None:
    try:
        loaded = await asyncio.to_thread(load_index, index_dir, settings)
    except Exception:
        log.exception("could not load the index %s; /readyz stays 503", index_dir)
        return
    if serving:
        try:
            await asyncio.to_thread(warm_up, loaded)
        except Exception:  # a warm-up must never keep a loaded index from being served
            log.exception("warming up %s failed; serving it cold", index_dir)
        freeze_long_lived()  # before /readyz says ready: the one full collection pauses no request
    service.index = loaded


async def reload_index(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """Re-resolve the index alias; load and swap in a new version (requests in flight finish on the
    one they started with: each takes its own reference). One reload at a time."""
    service: SearchService = app.state.service
    source = app.state.index_source
    if source is None:
        raise ToolServerError("this server was given a loaded index, not an index location: nothing to reload",
                              code="no_index_source", status=409)
    async with app.state.reload_lock:
        uri, version = await asyncio.to_thread(resolve_index, source, settings)
        current = service.index.version if service.index else None
        if version == current:
            return {"reloaded": False, "version": version, "uri": uri}
        fresh = await asyncio.to_thread(load_index, source, settings)
        service.index = fresh  # one reference assignment: atomic for every request that starts after it
        log.info("index reloaded: %s -> %s (%s)", current, fresh.version, fresh.uri)
        if getattr(app.state, "serving", False):
            freeze_long_lived()
        return {"reloaded": True, "version": fresh.version, "uri": fresh.uri, "previous": current}


async def _poll(app: FastAPI, settings: Settings, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        if app.state.service.index is None:
            continue  # the first load is still running
        try:
            await reload_index(app, settings)
        except Exception:  # a broken new version must not take the served one down
            log.exception("index poll: could not reload %s; still serving the loaded version",
                          app.state.index_source)


def _install_metrics_middleware(app: FastAPI, metrics: Metrics) -> None:
    app.add_middleware(MetricsMiddleware, metrics=metrics)


class MetricsMiddleware:
    """Count every request and time it, by route and status (``/metrics``).

    A plain ASGI middleware, not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs
    each request through a task group and memory streams, a noticeable share of a text search's
    CPU under load (python -m bench.search_text). A request that raised counts as 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")  # set by the router as it routes
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)


def _service(request: Request) -> SearchService:
    service: SearchService | None = getattr(request.app.state, "service", None)
    if service is None or not service.ready:
        raise ToolServerError("the index is still loading or failed to load: see /readyz and the logs",
                              code="not_ready", status=503)
    return service


Svc = Annotated[SearchService, Depends(_service)]


def _install_routes(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    auth = [Depends(_auth_dependency(settings))]

    @app.post("/v1/text_search", response_model=TextSearchResponse, responses=ERRORS, dependencies=auth)
    async def text_search(body: TextSearchRequest, service: Svc) -> TextSearchResponse:
        """Search the text backend; results and a summary focused on the query."""
        return await service.text_search(body.query, body.top_k)

    @app.post("/v1/image_search", response_model=ImageSearchResponse, responses=ERRORS, dependencies=auth)
    async def image_search(body: ImageSearchRequest, service: Svc) -> ImageSearchResponse:
        """Search with the image, or the crop ``region`` of it; results, summary and the crop box."""
        return await service.image_search(body.image_b64, body.region, body.top_k)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz(request: Request) -> dict[str, Any]:
        service: SearchService | None = getattr(request.app.state, "service", None)
        if service is None or not service.ready:
            raise ToolServerError("index not loaded yet", code="not_ready", status=503)
        manifest = service.index.manifest if service.index else {}
        return {"status": "ready", "docs": manifest.get("docs"), "images": manifest.get("images"),
                "summariser": service.summariser.name,
                "index_version": service.index.version if service.index else None,
                "index_uri": service.index.uri if service.index else None}

    @app.post("/admin/reload", responses=ERRORS, dependencies=auth)
    async def admin_reload(request: Request) -> dict[str, Any]:
        """Re-resolve the index alias and serve its version (zero failed requests while swapping)."""
        return await reload_index(request.app, settings)

    @app.get("/metrics")
    async def prometheus() -> Response:
        """This app's metrics, then the process-wide ones (retries of the shared retry policy:
        ``stamina_retries_total``; process and GC); with several workers (PROMETHEUS_MULTIPROC_DIR,
        set by ``dmms tools serve``) the sum over all of them."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(metrics.registry) + generate_latest(REGISTRY),
                        media_type=CONTENT_TYPE_LATEST)
