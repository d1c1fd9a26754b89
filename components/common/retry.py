"""The one retry policy of every network call in deepmmsearch (stamina, on tenacity).

Why one policy: a retry is only safe when it cannot double work somebody already did, and only
useful when the failure is transient. Seven hand-written loops had seven answers to that (some
retried read timeouts and 500s, one ignored Retry-After, the judge multiplied its retries with the
chat client's). Now every caller — the tool-server client, the chat client (teacher, judge,
summariser), the web search backends, the page fetcher, the image publisher, the Kubernetes calls of
the GRPO step — runs its attempts through :func:`attempts` / :func:`attempts_sync`, and this module
alone decides:

* **retried**: the request never reached the server (connection refused, DNS failure, connect
  timeout, no free connection in the pool), and the answers **429** (after its ``Retry-After``,
  capped at :data:`MAX_RETRY_AFTER_S`), **502** and **503** (a proxy or a restarting server);
* **never retried**: a **504** (a deadline was already spent on the request — our own tool-server
  answers 504 when its per-request deadline passes; asking again would spend it again), a **500**
  (a bug does not go away), any other 4xx, and a **read timeout** (the server may still be working
  on it);
* **backoff**: exponential from ``wait_initial`` (doubling), jitter up to ``wait_initial``, capped at
  :data:`WAIT_MAX_S`; ``wait_initial=0`` retries at once (tests). ``timeout`` bounds the whole
  loop (no new attempt starts after it).

Each retry is logged (one line: what, why, retry number, wait) and counted in Prometheus as
``stamina_retries_total{callable=<name>}`` on the default registry, which the tool-server's
``/metrics`` exposes.

How a caller uses it: inside an attempt, turn a retryable outcome into :class:`Retryable` carrying
the caller's own error (:func:`retryable_status` / :func:`is_connect_error` say which), raise
anything else as is; :func:`attempts` re-raises the caller's error when the attempts run out::

    async def once() -> httpx.Response:
        try:
            resp = await http.post(path, json=body)
        except httpx.TransportError as exc:
            if is_connect_error(exc):
                raise Retryable(MyError(f"{path}: {exc}")) from exc
            raise MyError(f"{path}: {exc}") from exc          # read timeout: not retried
        if retryable_status(resp.status_code):
            raise Retryable(MyError(f"HTTP {resp.status_code}"), retry_after=retry_after_s(resp.headers))
        return resp

    resp = await attempts(once, name="tool-server /v1/text_search", retries=2)
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx
import stamina
from stamina.instrumentation import PrometheusOnRetryHook, RetryDetails, set_on_retry_hooks

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUS = frozenset({429, 502, 503})  # overloaded, bad gateway, restarting; never 504 or 500
MAX_RETRY_AFTER_S = 30.0
WAIT_MAX_S = 8.0

_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, ConnectionRefusedError, socket.gaierror)
try:  # the kubernetes client and the minio SDK speak urllib3
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

    _CONNECT_ERRORS += (NewConnectionError, ConnectTimeoutError, NameResolutionError)
except ImportError:  # pragma: no cover - urllib3 comes with requests, kubernetes and minio
    pass


class Retryable(Exception):
    """A transient failure of one attempt: ``error`` is what the caller raises if it is the last one;
    ``retry_after`` the seconds the server asked us to wait (429), if it said."""

    def __init__(self, error: BaseException, retry_after: float | None = None):
        super().__init__(str(error))
        self.error, self.retry_after = error, retry_after


def retryable_status(status: int) -> bool:
    """True for the HTTP statuses a retry can help with: 429, 502, 503."""
    return status in RETRY_STATUS


def is_connect_error(exc: BaseException) -> bool:
    """True when the request cannot have reached the server (so a retry cannot double its work).

    urllib3 wraps connection failures in ``MaxRetryError`` (its ``reason`` is the real one)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException) and reason is not exc and is_connect_error(reason):
        return True
    return isinstance(exc, _CONNECT_ERRORS)


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds form), capped; None without one."""
    if not headers:
        return None
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S) if value is not None else None
    except ValueError:
        return None


def _backoff(exc: Exception) -> bool | float:
    """stamina's hook: retry only :class:`Retryable`, after its Retry-After when it has one."""
    if not isinstance(exc, Retryable):
        return False
    return exc.retry_after if exc.retry_after is not None else True


def _log_retry(details: RetryDetails) -> None:
    cause = details.caused_by
    why = cause.error if isinstance(cause, Retryable) else cause
    log.warning("%s: %s; retry %d in %.2fs", details.name, why, details.retry_num, details.wait_for)


set_on_retry_hooks([PrometheusOnRetryHook, _log_retry])


def _context(name: str, retries: int, wait_initial: float, timeout: float | None) -> Any:
    ctx = stamina.retry_context(
        on=_backoff, attempts=retries + 1, timeout=dt.timedelta(seconds=timeout) if timeout else None,
        wait_initial=wait_initial, wait_max=max(WAIT_MAX_S, wait_initial), wait_jitter=wait_initial,
        wait_exp_base=2)
    return ctx.with_name(name, (), {})  # the name in the retry log and the Prometheus label


async def attempts(once: Callable[[], Awaitable[T]], *, name: str, retries: int,
                   wait_initial: float = 0.25, timeout: float | None = None) -> T:
    """``await once()``, retried per the policy at most ``retries`` times; when the attempts run out
    the caller's own error (``Retryable.error``) is raised, and every other exception at once."""
    try:
        async for attempt in _context(name, retries, wait_initial, timeout):
            with attempt:
                return await once()
    except Retryable as exc:
        raise exc.error from None
    raise AssertionError("unreachable: stamina re-raises the last failure")


def attempts_sync(once: Callable[[], T], *, name: str, retries: int, wait_initial: float = 0.25,
                  timeout: float | None = None) -> T:
    """:func:`attempts` for blocking code (the Kubernetes client)."""
    try:
        for attempt in _context(name, retries, wait_initial, timeout):
            with attempt:
                return once()
    except Retryable as exc:
        raise exc.error from None
    raise AssertionError("unreachable: stamina re-raises the last failure")
