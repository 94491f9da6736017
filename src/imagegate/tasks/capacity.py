"""Counts behind the capacity limits, looked up in the background instead of on every POST.

The queue bound and the per-key cap on unfinished tasks need counts only the store knows.
Asking the store on every POST costs a query per request; asking it "at most once a second"
from inside the request still stalls every request that arrives while the count is being taken
(and each of them starts its own count). A `CachedCount` asks once, in the background, while
requests go on with the last answer plus what this process accepted since. Tasks finishing in
between are not subtracted, so between lookups the figure can only be too high: a limit is
never passed because of the cache.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class CachedCount:
    def __init__(self, lookup: Callable[[], Awaitable[int]], max_age: float) -> None:
        self._lookup = lookup
        self._max_age = max_age
        self._stored = 0  # what the store said at the last lookup
        self._added = 0  # accepted here since that lookup started
        self._looked_up_at = -math.inf
        self._refresh: asyncio.Task[None] | None = None
        self._known = False

    async def get(self, now: float) -> int:
        """The count as of `now` (a monotonic time): never lower than the truth, apart from
        what other processes added since the last lookup."""
        refresh = self._refresh
        if now - self._looked_up_at > self._max_age and (refresh is None or refresh.done()):
            refresh = self._refresh = asyncio.create_task(self._look_up(now))
            refresh.add_done_callback(_retrieve)
        if not self._known:
            # Nothing to go on yet: the first callers wait for the one lookup in flight.
            assert refresh is not None
            await asyncio.shield(refresh)
        return self._stored + self._added

    def add(self, n: int = 1) -> None:
        self._added += n

    async def _look_up(self, now: float) -> None:
        added_before = self._added
        try:
            count = await self._lookup()
        except Exception:
            if not self._known:
                raise
            # Keep going on the last answer (still over-counting); try again after max_age.
            log.warning("could not refresh a capacity count; using the last one", exc_info=True)
            self._looked_up_at = now
            return
        # What was accepted while the lookup ran may or may not be in `count`: keep it, so the
        # figure errs high.
        self._stored = count
        self._added -= added_before
        self._known = True
        self._looked_up_at = now


def _retrieve(task: asyncio.Task[None]) -> None:
    # Failures reach the callers that awaited the lookup; nobody else has to see them.
    if not task.cancelled():
        task.exception()


class CountsByKey:
    """One `CachedCount` per key, for a lookup that takes the key."""

    MAX_KEYS = 10_000

    def __init__(self, lookup: Callable[[str], Awaitable[int]], max_age: float) -> None:
        self._lookup = lookup
        self._max_age = max_age
        self._counts: dict[str, CachedCount] = {}

    def __getitem__(self, key: str) -> CachedCount:
        count = self._counts.get(key)
        if count is None:
            if len(self._counts) >= self.MAX_KEYS:
                self._counts.clear()
            count = self._counts[key] = CachedCount(lambda: self._lookup(key), self._max_age)
        return count
