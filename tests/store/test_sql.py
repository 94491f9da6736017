"""The store's queue semantics, on SQLite and (where reachable) PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from imagegate.store.sql import SqlStore
from imagegate.tasks.model import GeneratedImage, Status, Task
from tests.store.conftest import new_task


async def test_claim_takes_oldest_first_and_marks_in_progress(store: SqlStore) -> None:
    first, second = new_task(), new_task()
    await store.create_task(first)
    await asyncio.sleep(0.001)
    await store.create_task(second)
    claimed = await store.claim_task("w1", 30)
    assert claimed is not None and claimed.id == first.id
    assert claimed.status is Status.IN_PROGRESS
    assert claimed.attempts == 1
    assert claimed.lease_owner == "w1"
    again = await store.claim_task("w2", 30)
    assert again is not None and again.id == second.id
    assert await store.claim_task("w3", 30) is None


async def test_concurrent_claims_never_hand_out_a_task_twice(store: SqlStore) -> None:
    for _ in range(20):
        await store.create_task(new_task())
    results = await asyncio.gather(*(store.claim_task(f"w{i}", 30) for i in range(30)))
    ids = [t.id for t in results if t is not None]
    assert len(ids) == 20
    assert len(set(ids)) == 20


async def _claim_within(store: SqlStore, worker: str, deadline: float) -> Task | None:
    end = asyncio.get_running_loop().time() + deadline
    while asyncio.get_running_loop().time() < end:
        task = await store.claim_task(worker, 30)
        if task is not None:
            return task
        await asyncio.sleep(0.05)
    return None


async def test_expired_lease_returns_the_task_with_the_attempt_counted(store: SqlStore) -> None:
    await store.create_task(task := new_task())
    assert (await store.claim_task("dead", 1.0)) is not None
    assert await store.claim_task("w2", 30) is None  # lease still held
    # The dead worker never renews: once the lease runs out the task is claimable again.
    reclaimed = await _claim_within(store, "w2", deadline=5.0)
    assert reclaimed is not None and reclaimed.id == task.id
    assert reclaimed.attempts == 2
    assert reclaimed.error and "lease expired" in reclaimed.error


async def test_only_the_lease_holder_can_finish(store: SqlStore) -> None:
    await store.create_task(task := new_task())
    await store.claim_task("dead", 0.05)
    await asyncio.sleep(0.1)
    await store.claim_task("alive", 30)
    image = GeneratedImage("outputs/x/y-1.png", "image/png")
    assert not await store.complete_task(
        task.id, "dead", [image], engine="offline", model=None, text=None
    )
    assert await store.complete_task(
        task.id, "alive", [image], engine="offline", model="m", text=None
    )
    assert not await store.complete_task(
        task.id, "alive", [image], engine="offline", model="m", text=None
    )
    done = await store.get_task(task.id)
    assert done is not None and done.status is Status.COMPLETED
    assert done.generated == [image]
    assert done.available_at is None


async def test_renew_keeps_the_lease(store: SqlStore) -> None:
    await store.create_task(task := new_task())
    await store.claim_task("w1", 1.0)
    for _ in range(3):
        # Renewed well inside the lease, three times: past the first lease, still held.
        await asyncio.sleep(0.4)
        assert await store.renew_lease(task.id, "w1", 1.0)
    assert await store.claim_task("w2", 30) is None
    assert not await store.renew_lease(task.id, "w2", 1.0)


async def test_retry_later_and_release(store: SqlStore) -> None:
    await store.create_task(task := new_task())
    await store.claim_task("w1", 30)
    assert await store.retry_task(task.id, "w1", "overloaded", delay=1.0)
    assert await store.claim_task("w1", 30) is None  # not before its retry time
    retried = await _claim_within(store, "w1", deadline=5.0)
    assert retried is not None and retried.attempts == 2 and retried.error == "overloaded"
    assert await store.release_task(task.id, "w1")
    released = await store.claim_task("w2", 30)
    assert released is not None and released.attempts == 2  # a release does not count


async def test_owner_scoping_and_newest_first(store: SqlStore) -> None:
    mine = [new_task("me") for _ in range(3)]
    for task in mine:
        await store.create_task(task)
    await store.create_task(other := new_task("you"))
    assert await store.get_task(other.id, "me") is None
    listed = await store.list_tasks("me", 0, 10)
    assert [t.id for t in listed] == [t.id for t in reversed(mine)]
    assert [t.id for t in await store.list_tasks("me", 1, 1)] == [mine[1].id]


async def test_status_changes_write_webhook_messages_in_order(store: SqlStore) -> None:
    await store.create_task(task := new_task(webhook_url="http://127.0.0.1:9/hook"))
    await store.create_task(new_task())  # no webhook: no messages
    await store.claim_task("w1", 30)
    await store.claim_task("w1", 30)
    await store.fail_task(task.id, "w1", "nope")
    first = await store.claim_webhooks("d1", 30, 10)
    # The FAILED message waits until the IN_PROGRESS one is settled.
    assert [m.status for m in first] == ["IN_PROGRESS"]
    assert json.loads(first[0].payload)["status"] == "IN_PROGRESS"
    await store.record_webhook_attempt(
        first[0].id,
        "d1",
        task_id=first[0].task_id,
        attempt=first[0].attempts,
        status_code=200,
        error=None,
        duration_ms=1.0,
        next_attempt_at=None,
        state="delivered",
    )
    second = await store.claim_webhooks("d1", 30, 10)
    assert [m.status for m in second] == ["FAILED"]
    history = await store.webhook_history(task.id, task.owner)
    assert [h.state for h in history] == ["delivered", "pending"]
    assert history[0].history[0]["status_code"] == 200
    assert await store.webhook_history(task.id, "someone-else") == []


async def test_queue_stats(store: SqlStore) -> None:
    for _ in range(3):
        await store.create_task(new_task())
    await store.claim_task("w1", 30)
    stats = await store.queue_stats()
    assert stats.queued == 2 and stats.running == 1
    assert stats.oldest_queued_age >= 0


async def test_concurrent_writes_commit_together_and_a_failing_one_stays_alone(
    store: SqlStore,
) -> None:
    from imagegate.store.base import Idempotency, IdempotencyKeyTaken

    batch = [new_task() for _ in range(60)]
    twin = new_task()
    outcomes = await asyncio.gather(
        *(
            store.create_task(t, Idempotency("same-key", "h", t.id))
            if i in (10, 11)
            else store.create_task(t)
            for i, t in enumerate([*batch, twin])
        ),
        return_exceptions=True,
    )
    taken = [o for o in outcomes if isinstance(o, IdempotencyKeyTaken)]
    assert len(taken) == 1  # the second use of the key, and only it, failed
    assert all(o is None for o in outcomes if not isinstance(o, IdempotencyKeyTaken))
    if store._writer is not None:  # SQLite: the 61 writes shared a few commits
        assert store._writer.commits < 20, store._writer.commits
    failed_index = outcomes.index(taken[0])
    everyone = [*batch, twin]
    for i, task in enumerate(everyone):
        found = await store.get_task(task.id)
        assert (found is None) == (i == failed_index), i


async def test_a_write_failing_halfway_leaves_nothing_written(store: SqlStore) -> None:
    from sqlalchemy import Connection, update

    from imagegate.store.schema import tasks as tasks_table

    await store.create_task(victim := new_task())

    def half_then_boom_in(conn: Connection) -> None:
        conn.execute(
            update(tasks_table).where(tasks_table.c.id == victim.id).values(prompt="half-written")
        )
        raise RuntimeError("boom")

    async def half_then_boom() -> None:
        await store._write(half_then_boom_in)

    others = [new_task() for _ in range(5)]
    outcomes = await asyncio.gather(
        half_then_boom(), *(store.create_task(t) for t in others), return_exceptions=True
    )
    assert isinstance(outcomes[0], RuntimeError)
    found = await store.get_task(victim.id)
    assert found is not None and found.prompt == "a prompt"
    # Writes that shared the failed batch failed with it, or landed in a batch of their own:
    # either way each caller was told the truth.
    for task, outcome in zip(others, outcomes[1:], strict=True):
        assert (await store.get_task(task.id) is not None) == (outcome is None)


async def test_claim_many_at_once_takes_expired_leases_first(store: SqlStore) -> None:
    await store.create_task(stranded := new_task())
    await store.claim_task("dead", 0.05)
    fresh = [new_task() for _ in range(4)]
    for task in fresh:
        await store.create_task(task)
    await asyncio.sleep(0.1)
    claimed = await store.claim_tasks("w1", 30, 3)
    assert [t.id for t in claimed] == [stranded.id, fresh[0].id, fresh[1].id]
    assert claimed[0].attempts == 2 and claimed[1].attempts == 1
    rest = await store.claim_tasks("w2", 30, 10)
    assert [t.id for t in rest] == [fresh[2].id, fresh[3].id]
    assert await store.claim_tasks("w3", 30, 10) == []


async def test_concurrent_creates_share_inserts_and_all_land(store: SqlStore) -> None:
    batch = [new_task(owner=f"o{i % 3}") for i in range(200)]
    await asyncio.gather(*(store.create_task(t) for t in batch))
    for owner in ("o0", "o1", "o2"):
        listed = await store.list_tasks(owner, 0, 1000)
        assert {t.id for t in listed} == {t.id for t in batch if t.owner == owner}
    if store._writer is not None:  # SQLite: the 200 rows went in a handful of executemany batches
        assert store._writer.commits < 20, store._writer.commits


async def test_finishing_follows_the_state_machine(store: SqlStore) -> None:
    image = GeneratedImage("outputs/x/y-1.png", "image/png")
    await store.create_task(waiting := new_task())
    # COMPLETED only follows IN_PROGRESS; a queued task can only be failed (e.g. purged input).
    assert not await store.complete_task(
        waiting.id, None, [image], engine="offline", model=None, text=None
    )  # type: ignore[arg-type]
    assert await store.fail_task(waiting.id, None, "refused")
    assert not await store.fail_task(waiting.id, None, "again")  # FAILED is final
    found = await store.get_task(waiting.id)
    assert found is not None and found.status is Status.FAILED and found.error == "refused"


async def test_in_memory_sqlite_is_refused_with_a_reason() -> None:
    # Each connection would get a database of its own: writes would vanish from reads.
    from tests.store.conftest import presenter

    with pytest.raises(ValueError, match="in-memory databases are not supported"):
        await SqlStore("sqlite:///:memory:", presenter).start()


async def test_writes_after_close_are_refused_not_lost(tmp_path: Path) -> None:
    from tests.store.conftest import presenter

    store = SqlStore(f"sqlite:///{tmp_path / 'closed.db'}", presenter)
    await store.start()
    await store.create_task(kept := new_task())
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.create_task(new_task())
    reopened = SqlStore(f"sqlite:///{tmp_path / 'closed.db'}", presenter)
    await reopened.start()
    assert await reopened.get_task(kept.id) is not None
    await reopened.close()
