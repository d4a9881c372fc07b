"""The API's Prometheus metrics (one registry per app), and the ASGI middleware that feeds them
and writes one access log line per request."""

from __future__ import annotations

import logging
import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from npcforge.metrics import LATENCY_BUCKETS

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A caller's X-Request-Id is kept when it looks like an id; anything else gets a fresh one.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")

access_log = logging.getLogger("npcforge.api.access")


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


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            return bytes(value).decode("ascii")
    return uuid.uuid4().hex


class MetricsMiddleware:
    """Counts and times every HTTP request by route template and status, and logs it: method,
    route template, status, duration and request id (also sent back as `X-Request-Id`) --
    never a header or query value, so never a token."""

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
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode("ascii")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            took = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            route = route_label(scope.get("route"))
            count, latency = self._series_for(route, method, status)
            count.inc()
            latency.observe(took)
            access_log.log(
                logging.WARNING if status >= 500 else logging.INFO,
                "request",
                extra={"method": method, "path": route, "status": status,
                       "duration_ms": round(took * 1000, 1), "request_id": request_id},
            )  # fmt: skip
