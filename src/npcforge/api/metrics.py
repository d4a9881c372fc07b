"""The API's Prometheus metrics (one registry per app) and the ASGI middleware that feeds them."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from npcforge.metrics import LATENCY_BUCKETS

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "npcforge_api_requests", "HTTP requests answered, by route template and status.",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "npcforge_api_request_duration_seconds", "Time to answer a request, by route.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.auth_failures = Counter(
            "npcforge_api_auth_failures", "Requests refused with 401, by reason.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "npcforge_api_rate_limited", "Job starts refused with 429.", registry=r
        )
        self.jobs_started = Counter(
            "npcforge_api_jobs_started", "Jobs started through the API.", registry=r
        )
        self.xml_fetch_failures = Counter(
            "npcforge_api_xml_fetch_failures",
            "Storage reads that failed (503 when transient, 502 when storage refused).",
            registry=r,
        )


def route_label(route: BaseRoute | None) -> str:
    # The template, never the raw path: ids in labels would grow the series without bound.
    if isinstance(route, Route):
        return route.path
    return "unmatched"


class MetricsMiddleware:
    """Counts and times every HTTP request by route template and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # Label lookups take a lock each time; the set of (route, method, status) is small.
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def _series_for(self, route: str, method: str, status: int) -> tuple[Counter, Histogram]:
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:
            series = (
                self.metrics.requests.labels(route, method, str(status)),
                self.metrics.latency.labels(route),
            )
            self._series[key] = series
        return series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            count, latency = self._series_for(route_label(scope.get("route")), method, status)
            count.inc()
            latency.observe(time.perf_counter() - started)
