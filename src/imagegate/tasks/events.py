"""In-process notifications of task changes, for waiters (SSE streams, `Prefer: wait`, the
OpenAI-compatible endpoints). Other processes' changes arrive through the store's own
notifications where it has them (PostgreSQL LISTEN/NOTIFY) or a slow poll."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class TaskEvents:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def publish(self, task_id: str) -> None:
        for event in self._waiters.get(task_id, ()):
            event.set()

    @contextmanager
    def subscribe(self, task_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters.setdefault(task_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[task_id]
