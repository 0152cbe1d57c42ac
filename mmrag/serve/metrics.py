"""Prometheus metrics: request counts and latencies per route, batch sizes, sessions.

Each app gets its own :class:`prometheus_client.CollectorRegistry` (several apps in one process,
as in the tests, must not share counters). Routes are labelled by their path template
(``/images/{image_id}``), never by the raw URL, so label cardinality stays bounded.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ServeMetrics", "MetricsMiddleware", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mmrag_http_requests", "HTTP requests by route and status code",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("mmrag_http_request_duration_seconds", "HTTP request latency by route",
                                 ["method", "route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("mmrag_http_requests_in_flight", "HTTP requests being served",
                               registry=self.registry)
        self.batch_size = Histogram("mmrag_batch_size", "Items per micro-batch", ["batcher"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.batch_wait = Histogram("mmrag_batch_queue_seconds", "Time the oldest item of a batch waited",
                                    ["batcher"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_run = Histogram("mmrag_batch_run_seconds", "Time to run one micro-batch", ["batcher"],
                                   buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.chat_sessions = Gauge("mmrag_chat_sessions", "Open chat-retrieval sessions", registry=self.registry)

    def observe_batch(self, batcher: str, size: int, wait_s: float, run_s: float) -> None:
        self.batch_size.labels(batcher).observe(size)
        self.batch_wait.labels(batcher).observe(wait_s)
        self.batch_run.labels(batcher).observe(run_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): times every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or ("static" if scope["path"].startswith("/static/") else "unmatched")
            method = scope.get("method", "")
            self.metrics.requests.labels(method, label, str(status)).inc()
            self.metrics.latency.labels(method, label).observe(time.perf_counter() - start)
