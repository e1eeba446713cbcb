"""Request counters and latency histograms (Prometheus)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()
REQUESTS = Counter("clipfit_http_requests_total", "HTTP requests", ["method", "route", "status"],
                   registry=REGISTRY)
LATENCY = Histogram("clipfit_http_request_seconds", "HTTP request latency", ["method", "route"],
                    registry=REGISTRY)


class MetricsMiddleware:
    """A plain ASGI middleware (not ``BaseHTTPMiddleware``: that one wraps ``receive`` in a
    task group per request, which costs time and hides a client's disconnect from the
    routes)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless a response starts

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - start)
