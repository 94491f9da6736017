"""Prometheus metrics. Each process keeps its own: API processes serve them at /metrics,
`imagegate worker` processes on IMAGEGATE_METRICS_PORT. Queue-wide gauges (depth, oldest
task, webhook backlog) are read from the store when /metrics is scraped, so any API process
reports the same global values."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegate.store.base import QueueStats

HTTP_REQUESTS = Counter(
    "imagegate_http_requests_total",
    "HTTP requests by route, method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "imagegate_http_request_duration_seconds",
    "HTTP request latency by route (until the response body is sent).",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TASKS_CREATED = Counter("imagegate_tasks_created_total", "Tasks accepted by the API.")
TASKS_FINISHED = Counter(
    "imagegate_tasks_finished_total",
    "Tasks that reached COMPLETED or FAILED, by engine.",
    ["status", "engine"],
)
TASKS = Gauge("imagegate_tasks", "Unfinished tasks in the whole queue, by state.", ["state"])
OLDEST_QUEUED = Gauge(
    "imagegate_oldest_queued_task_age_seconds", "Age of the oldest task waiting for a worker."
)
ENGINE_SECONDS = Histogram(
    "imagegate_engine_duration_seconds",
    "Time an engine took per generation (successful or not).",
    ["engine"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
ENGINE_ERRORS = Counter(
    "imagegate_engine_errors_total",
    "Engine errors by kind: retryable, permanent, timeout, internal.",
    ["engine", "kind"],
)
WEBHOOK_DELIVERIES = Counter(
    "imagegate_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered, retry, failed.",
    ["outcome"],
)
WEBHOOK_BACKLOG = Gauge(
    "imagegate_webhook_backlog", "Webhook messages waiting to be delivered (whole store)."
)


def update_queue_gauges(stats: QueueStats) -> None:
    TASKS.labels("queued").set(stats.queued)
    TASKS.labels("running").set(stats.running)
    OLDEST_QUEUED.set(stats.oldest_queued_age)
    WEBHOOK_BACKLOG.set(stats.webhook_backlog)


def exposition() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every request and times it, labelled by route template (never the raw path,
    which would make a label per task id)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            HTTP_REQUESTS.labels(label, scope["method"], str(status)).inc()
            HTTP_SECONDS.labels(label).observe(time.perf_counter() - started)
