"""The loop behind claiming tasks and webhook messages: run a step now, whenever woken, and
every `interval` seconds as a fallback, until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("imagegate.worker")


class WakeableLoop:
    def __init__(self, step: Callable[[], Awaitable[None]], interval: float, name: str) -> None:
        self.step = step
        self.interval = interval
        self.name = name
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Finish the step in progress, if any, and run no more."""
        self._stopping.set()
        self._wake.set()
        if self._task:
            await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self.step()
            except Exception:
                log.exception("%s failed; trying again", self.name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
