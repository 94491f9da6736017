"""Capacity counts: one background lookup at a time, and a figure that only errs high."""

from __future__ import annotations

import asyncio

import pytest

from imagegate.tasks.capacity import CachedCount, CountsByKey


class SlowCounter:
    """A store count that answers when told to."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()
        self.fail = False

    async def __call__(self) -> int:
        self.calls += 1
        value = self.value  # taken when the query starts, like a real snapshot
        await self.release.wait()
        if self.fail:
            raise RuntimeError("database is gone")
        return value


async def test_concurrent_callers_share_one_lookup() -> None:
    counter = SlowCounter(7)
    counter.release.clear()
    count = CachedCount(counter, max_age=1.0)
    waiting = [asyncio.create_task(count.get(100.0)) for _ in range(32)]
    await asyncio.sleep(0)
    counter.release.set()
    assert await asyncio.gather(*waiting) == [7] * 32
    assert counter.calls == 1


async def test_stale_figure_is_refreshed_in_the_background_without_waiting() -> None:
    counter = SlowCounter(5)
    count = CachedCount(counter, max_age=1.0)
    assert await count.get(100.0) == 5
    counter.value = 2
    counter.release.clear()
    # Stale: a lookup starts, but callers answer at once from the last figure.
    answers = await asyncio.wait_for(
        asyncio.gather(*(count.get(102.0) for _ in range(10))), timeout=1
    )
    assert answers == [5] * 10
    assert counter.calls == 2
    counter.release.set()
    await asyncio.sleep(0.01)
    assert await count.get(102.5) == 2
    assert counter.calls == 2  # fresh again: no new lookup


async def test_additions_while_a_lookup_runs_are_kept() -> None:
    counter = SlowCounter(10)
    count = CachedCount(counter, max_age=1.0)
    assert await count.get(0.0) == 10
    count.add()
    assert await count.get(0.5) == 11
    counter.release.clear()
    assert await count.get(2.0) == 11
    await asyncio.sleep(0)  # the lookup is running; its snapshot says 10
    count.add(2)  # accepted while the query runs: maybe in its answer, maybe not
    counter.release.set()
    await asyncio.sleep(0.01)
    # 10 from the store plus the 2 it may have missed; the 1 before the lookup is in the 10.
    assert await count.get(2.5) == 12


async def test_first_lookup_failure_reaches_the_caller_and_is_retried() -> None:
    counter = SlowCounter(3)
    counter.fail = True
    count = CachedCount(counter, max_age=1.0)
    with pytest.raises(RuntimeError, match="database is gone"):
        await count.get(0.0)
    counter.fail = False
    assert await count.get(0.1) == 3
    assert counter.calls == 2


async def test_later_lookup_failure_keeps_the_last_figure() -> None:
    counter = SlowCounter(4)
    count = CachedCount(counter, max_age=1.0)
    assert await count.get(0.0) == 4
    counter.fail = True
    assert await count.get(5.0) == 4
    await asyncio.sleep(0.01)
    assert await count.get(5.5) == 4
    assert counter.calls == 2  # the failure counts as a lookup: next try after max_age
    counter.fail = False
    counter.value = 1
    await count.get(7.0)
    await asyncio.sleep(0.01)
    assert await count.get(7.1) == 1


async def test_counts_by_key_are_separate() -> None:
    seen: list[str] = []

    async def lookup(key: str) -> int:
        seen.append(key)
        return {"a": 1, "b": 2}[key]

    counts = CountsByKey(lookup, max_age=1.0)
    assert await counts["a"].get(0.0) == 1
    assert await counts["b"].get(0.0) == 2
    counts["a"].add()
    assert await counts["a"].get(0.1) == 2
    assert await counts["b"].get(0.1) == 2
    assert seen == ["a", "b"]
