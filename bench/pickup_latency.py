"""Pick-up latency: how soon a created task runs, finishes, and its webhook arrives.

imagegate runs as the embedded default (API and worker in one process) with the offline
engine at zero delay. The client submits tasks open-loop at a steady rate (50/s by default,
each POST sent on schedule whatever the previous one is doing), every task with a
`webhook_url` pointing at a receiver on 127.0.0.1 (uvicorn, keep-alive) that records when
each message arrives.

- POST → IN_PROGRESS and POST → COMPLETED come from the server's own timestamps in the
  database (`started_at - created_at`, `finished_at - created_at`).
- POST → webhook is the receiver's arrival time of the COMPLETED message minus the time
  the client sent the POST (same clock: one machine).

    .venv/bin/python -m bench pickup
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from tests.support.server import free_port, wait_until

from bench.processes import API_KEY, ImagegateTarget, cpu_seconds, imagegate, py_spy, task_times
from bench.report import Row, at_most

TASKS = 1000
RATE = 50.0
TARGET_STARTED_MS = 10.0
TARGET_COMPLETED_MS = 30.0
TARGET_WEBHOOK_MS = 50.0
DRAIN_SECONDS = 120.0


@dataclass
class WebhookReceiver:
    """An ASGI app on 127.0.0.1 in its own thread: (task_id, status) → arrival time."""

    port: int = field(default_factory=free_port)
    arrivals: dict[tuple[str, str], float] = field(default_factory=dict)
    duplicates: int = 0

    def __post_init__(self) -> None:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        arrived = time.time()
        payload = json.loads(body)
        key = (payload["task_id"], payload["status"])
        if key in self.arrivals:
            self.duplicates += 1
        else:
            self.arrivals[key] = arrived
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        wait_until(lambda: self.server.started, 10, message="webhook receiver")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


async def _submit(
    target: ImagegateTarget, webhook_url: str, count: int, rate: float
) -> dict[str, float]:
    """POST `count` tasks at `rate` per second; returns task id → client send time."""
    sent: dict[str, float] = {}
    failures: list[str] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one(index: int) -> None:
            body = {"prompt": f"pick-up latency task {index}", "webhook_url": webhook_url}
            at = time.time()
            response = await client.post(
                target.endpoint, json=body, headers={"x-freepik-api-key": API_KEY}
            )
            if response.status_code == 200:
                sent[response.json()["data"]["task_id"]] = at
            else:
                failures.append(f"{response.status_code} {response.text[:200]}")

        # Warm the connection pool and the server's code paths; not counted.
        await asyncio.gather(*(one(-i) for i in range(1, 9)))
        sent.clear()
        started = time.monotonic()
        pending = []
        for index in range(count):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one(index)))
        await asyncio.gather(*pending)
    if failures:
        raise RuntimeError(f"{len(failures)} POSTs failed, e.g. {failures[:3]}")
    return sent


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run(*, tasks: int = TASKS, rate: float = RATE, profile: Path | None = None) -> list[Row]:
    print(f"pick-up latency: {tasks} tasks at {rate:g}/s, each with a webhook", flush=True)
    with WebhookReceiver() as receiver, imagegate(worker=True) as target:
        cpu_before = cpu_seconds(target.pid)
        with py_spy(target.pid, profile / "pickup.txt" if profile else None, tasks / rate):
            sent = asyncio.run(_submit(target, receiver.url, tasks, rate))

        def unfinished() -> int:
            done = {row[0] for row in task_times(target.db_path) if row[4] is not None}
            hooks = {tid for tid, status in receiver.arrivals if status == "COMPLETED"}
            return len(set(sent) - (done & hooks))

        try:
            wait_until(lambda: unfinished() == 0, DRAIN_SECONDS, interval=0.2, message="tasks")
        except AssertionError:
            pass  # reported below: the figures then cover only what finished
        left = unfinished()
        times = {row[0]: row for row in task_times(target.db_path) if row[0] in sent}
        cpu_ms = 1e3 * (cpu_seconds(target.pid) - cpu_before) / len(sent)

    statuses = Counter(row[1] for row in times.values())
    to_started = [1e3 * (row[3] - row[2]) for row in times.values() if row[3] is not None]
    to_finished = [1e3 * (row[4] - row[2]) for row in times.values() if row[4] is not None]
    to_hook = [
        1e3 * (receiver.arrivals[(tid, "COMPLETED")] - at)
        for tid, at in sent.items()
        if (tid, "COMPLETED") in receiver.arrivals
    ]
    to_first_hook = [
        1e3 * (receiver.arrivals[(tid, "IN_PROGRESS")] - at)
        for tid, at in sent.items()
        if (tid, "IN_PROGRESS") in receiver.arrivals
    ]
    setup = f"{tasks} tasks POSTed at {rate:g}/s (open loop), offline engine, zero delay"
    if left:
        setup += (
            f"; {left} tasks or their webhooks NOT FINISHED {DRAIN_SECONDS:g} s after the last "
            "POST (figures cover the finished ones only)"
        )

    def within(values: list[float], ceiling: float) -> bool | None:
        return False if left else at_most(_percentile(values, 0.5), ceiling)

    rows = [
        Row(
            "pickup",
            "POST → IN_PROGRESS, p50",
            _percentile(to_started, 0.5),
            unit="ms",
            target=f"≤ {TARGET_STARTED_MS:g} ms",
            passed=within(to_started, TARGET_STARTED_MS),
            note=f"{setup}; server clock: started_at - created_at; statuses {dict(statuses)}; "
            f"server CPU {cpu_ms:.1f} ms per task (all threads)",
        ),
        Row("pickup", "POST → IN_PROGRESS, p99", _percentile(to_started, 0.99), unit="ms"),
        Row(
            "pickup",
            "POST → COMPLETED, p50",
            _percentile(to_finished, 0.5),
            unit="ms",
            target=f"≤ {TARGET_COMPLETED_MS:g} ms",
            passed=within(to_finished, TARGET_COMPLETED_MS),
        ),
        Row("pickup", "POST → COMPLETED, p99", _percentile(to_finished, 0.99), unit="ms"),
        Row(
            "pickup",
            "POST → COMPLETED webhook received, p50",
            _percentile(to_hook, 0.5),
            unit="ms",
            target=f"≤ {TARGET_WEBHOOK_MS:g} ms",
            passed=within(to_hook, TARGET_WEBHOOK_MS),
            note=f"receiver arrival - client send time; IN_PROGRESS webhook p50 "
            f"{_percentile(to_first_hook, 0.5) or 0:.1f} ms; {receiver.duplicates} duplicate "
            "deliveries",
        ),
        Row(
            "pickup",
            "POST → COMPLETED webhook received, p99",
            _percentile(to_hook, 0.99),
            unit="ms",
        ),
    ]
    return rows


if __name__ == "__main__":
    from bench.report import print_table

    print_table(run())
