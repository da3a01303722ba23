"""Prometheus metrics of the rerank server, in a registry of its own (one per app).

Exposed at ``GET /metrics``: requests by endpoint and status, request latency, documents and
tokens scored (counters, plus documents/s over the last minute), queue depth, requests in the
running batch, and batch sizes and durations.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RATE_WINDOW_S = 60.0


class ServeMetrics:
    """The server's metrics; also the batcher's :class:`~lbnl.serve.batcher.BatchObserver`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        r = self.registry
        Info("lbnl_model", "the served model", registry=r).info({"name": model_name})
        self.requests = Counter("lbnl_http_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("lbnl_http_request_duration_seconds", "time from request to response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.documents = Counter("lbnl_documents", "documents scored", registry=r)
        self.tokens = Counter("lbnl_tokens", "query and document tokens scored, after truncation", registry=r)
        self.documents_per_second = Gauge("lbnl_documents_per_second",
                                          f"documents scored per second over the last {RATE_WINDOW_S:g} s",
                                          registry=r)
        self.documents_per_second.set_function(self._documents_rate)
        self.queue_depth = Gauge("lbnl_queue_depth", "requests waiting for the model", registry=r)
        self.running = Gauge("lbnl_running_requests", "requests in the batch being computed", registry=r)
        self.batch_requests = Histogram("lbnl_batch_requests", "requests per model batch",
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_seconds = Histogram("lbnl_batch_duration_seconds", "time of one batch on the worker",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()
        self._start = time.monotonic()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def scored(self, documents: int, tokens: int) -> None:
        """Record one successful request."""
        self.documents.inc(documents)
        self.tokens.inc(tokens)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, documents))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def _documents_rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            total = sum(n for _, n in self._recent)
        return total / max(1e-9, min(RATE_WINDOW_S, now - self._start))

    def queue_changed(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def batch_started(self, requests: int, cost: int) -> None:
        self.running.set(requests)
        self.batch_requests.observe(requests)

    def batch_finished(self, requests: int, seconds: float) -> None:
        self.running.set(0)
        self.batch_seconds.observe(seconds)


class MetricsMiddleware:
    """Count every HTTP request by endpoint and status and time it (unknown paths count as ``other``)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, endpoints: Iterable[str]):
        self.app = app
        self.metrics = metrics
        self.endpoints = frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
