"""Scale-out under fire: 2 API processes and 3 workers on one PostgreSQL, workers kill -9'd
at random and restarted; every task completes exactly once and no lease outlives its worker."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import ENDPOINT, KEY_A
from tests.support.postgres import PostgresUnavailable, create_database, drop_database
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess, wait_until

TASKS = 300
LEASE = 2.0
SLACK = 1.5  # a reclaim happens at the next poll after expiry; allow that and some noise


@pytest.fixture
def database_url() -> Iterator[str]:
    try:
        url = create_database()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    yield url
    drop_database(url)


async def _overdue_leases(url: str, dead_pids: set[int]) -> list[tuple[str, str, float]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT id, lease_owner, available_at FROM tasks WHERE lease_owner IS NOT NULL AND available_at < $1",
            time.time() - SLACK,
        )
    finally:
        await conn.close()
    overdue = []
    for row in rows:
        pid = int(row["lease_owner"].split(":")[1])
        if pid in dead_pids:
            overdue.append((row["id"], row["lease_owner"], time.time() - row["available_at"]))
    return overdue


def test_chaos_kill_9_workers(tmp_path: Path, database_url: str) -> None:
    env = {
        "IMAGEGATE_DATABASE_URL": database_url,
        "IMAGEGATE_API_KEYS": KEY_A,
        "IMAGEGATE_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "IMAGEGATE_OFFLINE_DELAY_MS": "300",
        "IMAGEGATE_LEASE_SECONDS": str(LEASE),
        "IMAGEGATE_POLL_INTERVAL_SECONDS": "0.5",
        "IMAGEGATE_WORKER_CONCURRENCY": "8",
        "IMAGEGATE_MAX_ATTEMPTS": "20",
        "IMAGEGATE_WEBHOOK_RETRY_DELAYS": "0.5,0.5,0.5,1,1,1,1,1,1,1",
    }
    data_dir = tmp_path / "shared"  # one blob directory, as S3 would be
    apis = [ServerProcess(data_dir, env, args=["--no-worker"]).start() for _ in range(2)]
    workers = [ServerProcess(data_dir, env, command="worker").start() for _ in range(3)]
    dead_pids: set[int] = set()
    rng = random.Random(7)

    with Receiver() as receiver:
        try:
            clients = [
                httpx.Client(base_url=a.url, headers={"x-freepik-api-key": KEY_A}) for a in apis
            ]
            ids = []
            for i in range(TASKS):
                response = clients[i % 2].post(
                    ENDPOINT, json={"prompt": f"chaos {i}", "webhook_url": receiver.url}
                )
                assert response.status_code == 200, response.text
                ids.append(response.json()["data"]["task_id"])
                if i % 50 == 25:  # kill a worker now and then while submitting
                    victim = rng.randrange(len(workers))
                    assert workers[victim].proc is not None
                    dead_pids.add(workers[victim].proc.pid)
                    workers[victim].kill()
                    workers[victim] = ServerProcess(data_dir, env, command="worker").start()
                    assert not asyncio.run(_overdue_leases(database_url, dead_pids))

            def all_done() -> bool:
                overdue = asyncio.run(_overdue_leases(database_url, dead_pids))
                assert not overdue, f"leases held by dead workers past expiry: {overdue}"
                # Keep killing for a while during processing too.
                if rng.random() < 0.15:
                    victim = rng.randrange(len(workers))
                    assert workers[victim].proc is not None
                    dead_pids.add(workers[victim].proc.pid)
                    workers[victim].kill()
                    workers[victim] = ServerProcess(data_dir, env, command="worker").start()
                listed = (
                    clients[0].get(ENDPOINT, params={"per_page": 100, "page": 1}).json()["data"]
                )
                del listed
                statuses = Counter(
                    clients[j % 2].get(f"{ENDPOINT}/{tid}").json()["data"]["status"]
                    for j, tid in enumerate(ids)
                )
                return statuses["COMPLETED"] == TASKS

            wait_until(all_done, 180, interval=0.5, message="all tasks COMPLETED")
            assert len(dead_pids) >= 6

            # Exactly one COMPLETED webhook per task once duplicates (same webhook-id) are dropped.
            def completed_hooks() -> dict[str, set[str]]:
                seen: dict[str, set[str]] = defaultdict(set)
                for r in list(receiver.received):
                    body = json.loads(r.body)
                    if body["status"] == "COMPLETED":
                        seen[body["task_id"]].add(r.headers["webhook-id"])
                return seen

            wait_until(
                lambda: len(completed_hooks()) == TASKS, 60, message="a COMPLETED webhook per task"
            )
            assert all(len(v) == 1 for v in completed_hooks().values())

            # Outputs written once: one file per task, and one "completed" record per task across
            # every worker's log (a result computed after a lease was lost is discarded, not recorded).
            outputs = list((data_dir / "blobs" / "outputs").glob("*/*"))
            per_task = Counter(p.parent.name for p in outputs if not p.name.startswith(".tmp"))
            assert set(per_task) == set(ids)
            assert set(per_task.values()) == {1}
            completions: Counter[str] = Counter()
            for log in data_dir.glob("worker-*.log"):
                completions.update(re.findall(r"task ([0-9a-f-]{36}) completed", log.read_text()))
            # No task was recorded COMPLETED twice. A worker killed right after its commit may
            # not have logged its line, so a few may be missing, never more than the kills.
            assert set(completions.values()) == {1}
            assert set(completions) <= set(ids)
            assert len(ids) - len(completions) <= len(dead_pids)
        finally:
            for proc in apis + workers:
                proc.stop()
