"""Prometheus metrics: every metric facedex exports, defined once.

Each service process exposes its own at ``GET /metrics`` (facedex.http);
services refresh gauges that are cheaper to read on demand than to track
(queue depth, index sizes) in hooks run just before a scrape.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_SECONDS = Histogram(
    "facedex_http_request_duration_seconds",
    "HTTP request latency by service, route template and status.",
    ["service", "method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MATCH_ROUTE = Counter("facedex_match_route_total", "Matching requests by the route that answered.", ["route", "fallback"])
BRUTEFORCE_SCANS = Counter(
    "facedex_bruteforce_scans_total", "Unfiltered brute-force searches by the rows scanned (fp16 copy or fp32).", ["scan"]
)
CACHED_LIST_BYTES = Gauge("facedex_bruteforce_cache_bytes", "Bytes of list matrices held by the brute-force Matcher.")
INDEX_FACES = Gauge("facedex_index_faces", "Faces in each loaded index.", ["list_id"])
INDEX_REFRESH_LAG = Gauge("facedex_index_refresh_lag_changes", "List changes not yet applied to the loaded index.", ["list_id"])
INDEXED_SERVED = Counter("facedex_indexed_requests_total", "Matching requests answered by this Indexed Matcher.")
INDEXED_HEAD_CHECKS = Counter(
    "facedex_indexed_head_checks_total",
    "Batches by how their freshness was known: 'announced' (the heads announced in Redis were already in the index) "
    "or 'read' (the list's head read from the Faces DB beside the search).",
    ["how"],
)
EXTRACTION_SECONDS = Histogram(
    "facedex_extraction_seconds", "Decoding, detection and descriptors of one image.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BATCH_REQUESTS = Histogram(
    "facedex_bruteforce_batch_requests", "Requests answered by one exact search (cross-request batching).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
LOOP_UP = Gauge("facedex_loop_up", "1 while a supervised background loop works, 0 while it fails or stalls.", ["service", "loop"])
LOOP_RESTARTS = Counter("facedex_loop_restarts_total", "Restarts of a supervised background loop.", ["service", "loop"])
MATCH_HOP_SECONDS = Histogram(
    "facedex_match_hop_seconds",
    "Time of each hop of a match (facedex.timing: parse, refs, proxy, route, queue, fresh, search, rescore, reply, "
    "total) by the route that answered; observed by the API.",
    ["hop", "route"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
TASK_QUEUE_DEPTH = Gauge("facedex_task_queue_depth", "Index-build tasks waiting in the queue.")

ScrapeHook = Callable[[], Awaitable[None]]


class MetricsMiddleware:
    """Time every request, labelled by the route template (not the raw path: ids would explode the series)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

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
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            if path != "/metrics":
                REQUEST_SECONDS.labels(self.service, scope["method"], path, str(status)).observe(time.perf_counter() - started)


async def render(hooks: list[ScrapeHook]) -> tuple[bytes, str]:
    for hook in hooks:
        await hook()
    return generate_latest(), CONTENT_TYPE_LATEST
