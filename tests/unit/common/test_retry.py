"""The one retry policy (components/common/retry.py): what it retries, what it never retries, and
that every caller in the code base goes through it (no hand-written retry loop is left)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from kubernetes import client as k8s
from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError

from components.common import retry
from components.grpo.rollout_pods import RolloutError, _retrying

ROOT = Path(__file__).resolve().parents[3]


def _req() -> httpx.Request:
    return httpx.Request("GET", "http://h/x")


@pytest.mark.parametrize("status,retried", [(429, True), (502, True), (503, True), (500, False), (504, False),
                                            (400, False), (404, False), (408, False)])
def test_statuses(status, retried):
    assert retry.retryable_status(status) is retried


def test_connect_errors_are_retryable_and_read_timeouts_are_not():
    assert retry.is_connect_error(httpx.ConnectError("refused", request=_req()))
    assert retry.is_connect_error(httpx.ConnectTimeout("slow connect", request=_req()))
    assert retry.is_connect_error(ConnectionRefusedError())
    wrapped = MaxRetryError(None, "/x", reason=NewConnectionError(None, "refused"))  # how urllib3 says it
    assert retry.is_connect_error(wrapped)
    assert not retry.is_connect_error(httpx.ReadTimeout("slow answer", request=_req()))
    assert not retry.is_connect_error(httpx.RemoteProtocolError("reset mid-answer", request=_req()))
    assert not retry.is_connect_error(MaxRetryError(None, "/x", reason=ReadTimeoutError(None, "/x", "slow")))


def test_retry_after_is_honoured_and_capped():
    assert retry.retry_after_s({"retry-after": "2"}) == 2.0
    assert retry.retry_after_s({"Retry-After": "3600"}) == retry.MAX_RETRY_AFTER_S
    assert retry.retry_after_s({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}) is None  # date form: backoff
    assert retry.retry_after_s(None) is None
    assert retry._backoff(retry.Retryable(ValueError("x"), retry_after=2.0)) == 2.0  # stamina waits that long
    assert retry._backoff(retry.Retryable(ValueError("x"))) is True  # exponential backoff
    assert retry._backoff(ValueError("x")) is False  # only Retryable is ever retried


async def test_attempts_are_bounded_and_the_callers_error_comes_out():
    calls = []

    async def flaky():
        calls.append(1)
        raise retry.Retryable(KeyError("still busy"))

    with pytest.raises(KeyError, match="still busy"):
        await retry.attempts(flaky, name="t", retries=2, wait_initial=0)
    assert len(calls) == 3

    async def broken():
        calls.append(2)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        await retry.attempts(broken, name="t", retries=5, wait_initial=0)
    assert calls.count(2) == 1  # not retryable: raised at once

    seq = iter([retry.Retryable(OSError("busy")), "ok"])

    async def recovers():
        item = next(seq)
        if isinstance(item, Exception):
            raise item
        return item

    assert await retry.attempts(recovers, name="t", retries=1, wait_initial=0) == "ok"


def test_kubernetes_calls_follow_the_policy():
    seen = []

    def api(status):
        def call():
            seen.append(status)
            raise k8s.ApiException(status=status, reason="x")
        return call

    for status, tries in [(503, 3), (429, 3), (500, 1), (504, 1), (409, 1)]:
        seen.clear()
        with pytest.raises(k8s.ApiException):
            _retrying("create Deployment d", api(status), retries=2, backoff_s=0)
        assert len(seen) == tries, status

    seen.clear()

    def unreachable():
        seen.append("x")
        raise MaxRetryError(None, "/apis", reason=NewConnectionError(None, "refused"))

    with pytest.raises(RolloutError, match="unreachable"):
        _retrying("read Deployment d", unreachable, retries=2, backoff_s=0)
    assert len(seen) == 3


def test_no_hand_written_retry_loop_is_left():
    """Every retry goes through components/common/retry.py: no module sleeps between attempts of
    its own (``for attempt in range(...)`` with a sleep) any more."""
    offenders = []
    for path in (ROOT / "components").rglob("*.py"):
        text = path.read_text()
        if re.search(r"for attempt in range\(", text) and re.search(r"(asyncio\.sleep|time\.sleep)\(", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"hand-written retry loops: {offenders}"
