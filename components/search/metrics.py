"""Prometheus metrics of the tool-server, one registry per app.

Why a registry per app and not the global one: tests and benchmarks run several apps in one process,
and each ``/metrics`` must count only its own traffic. Scraped at ``GET /metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    """Request counts/latency per route, cache hits/misses per layer, backend calls and errors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "dmms_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "dmms_request_seconds", "HTTP request latency by route.", ["route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.cache_hits = Counter("dmms_cache_hits", "Cache hits by layer.", ["layer"], registry=r)
        self.cache_misses = Counter("dmms_cache_misses", "Cache misses by layer.", ["layer"], registry=r)
        self.cache_errors = Counter(
            "dmms_cache_errors", "Cache backend failures (served uncached).", ["layer"], registry=r
        )
        self.shared = Counter(
            "dmms_singleflight_shared", "Requests that awaited an identical in-flight computation.",
            ["layer"], registry=r,
        )
        self.backend_calls = Counter(
            "dmms_backend_calls", "Computations run by a backend.", ["backend"], registry=r
        )
        self.backend_errors = Counter(
            "dmms_backend_errors", "Failed backend calls by backend and kind.", ["backend", "kind"],
            registry=r,
        )
