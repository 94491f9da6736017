"""The worker: claims tasks (with leases), runs the engine, stores outputs, records results.

One asyncio task per running task, up to `concurrency`. New tasks wake the claim loop at
once (an in-process event, or the store's notifications across processes); a slow
fallback poll picks up expired leases and delayed retries.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable

from imagegate.engines.base import Engine, EngineError, EngineRequest, EngineResult
from imagegate.inputs.references import ReferenceProblem, load_reference
from imagegate.logs import request_id_var, task_id_var
from imagegate.metrics import ENGINE_ERRORS, ENGINE_SECONDS, TASKS_FINISHED
from imagegate.net import make_client
from imagegate.settings import Settings
from imagegate.storage import BlobStorage, extension_for
from imagegate.store import Store
from imagegate.tasks.model import GeneratedImage, Task
from imagegate.worker.loop import WakeableLoop

log = logging.getLogger("imagegate.worker")


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def backoff_delay(attempt: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter, so retried tasks don't arrive in lockstep."""
    return random.uniform(0, min(cap, base * 2 ** max(0, attempt - 1)))


class Worker:
    def __init__(
        self,
        store: Store,
        storage: BlobStorage,
        engine: Engine,
        settings: Settings,
        *,
        worker_id: str | None = None,
        on_change: Callable[[str], None] = lambda _task_id: None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.engine = engine
        self.settings = settings
        self.worker_id = worker_id or make_worker_id()
        # Called after every status change, so the webhook dispatcher looks at the outbox now.
        self.on_change = on_change
        self.concurrency = settings.worker_concurrency or engine.concurrency
        self._loop = WakeableLoop(self._claim, settings.poll_interval_seconds, "claiming tasks")
        self._running: dict[str, asyncio.Task[None]] = {}
        # One pooled client for reference-image fetches of every task this worker runs.
        self.http = make_client()

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._loop.start()

    def notify(self) -> None:
        """A task was created: claim it now rather than at the next poll."""
        self._loop.wake()

    async def stop(self, grace: float) -> None:
        """Stop claiming, let running tasks finish for `grace` seconds, give the rest back."""
        await self._loop.stop()
        running = list(self._running.values())
        if running:
            log.info("draining %d running task(s) for up to %.0f s", len(running), grace)
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self.http.aclose()

    # --- claiming ------------------------------------------------------------------------
    async def _claim(self) -> None:
        while (free := self.concurrency - len(self._running)) > 0 and not self._loop.stopping:
            claimed = await self.store.claim_tasks(
                self.worker_id, self.settings.lease_seconds, free
            )
            for task in claimed:
                self.on_change(task.id)
                runner = asyncio.create_task(self._run(task), name=f"task-{task.id}")
                self._running[task.id] = runner
                runner.add_done_callback(functools.partial(self._finished, task.id))
            if len(claimed) < free:
                return

    def _finished(self, task_id: str, _runner: asyncio.Task[None]) -> None:
        self._running.pop(task_id, None)
        self._loop.wake()  # a slot is free

    # --- running one task -----------------------------------------------------------------
    async def _run(self, task: Task) -> None:
        # Each runner is its own asyncio task (its own context): these tag this task's logs.
        request_id_var.set(task.request_id)
        task_id_var.set(task.id)
        log.debug(
            "task %s attempt %d started",
            task.id,
            task.attempts,
            extra={"task_id": task.id, "request_id": task.request_id},
        )
        if task.attempts > self.settings.max_attempts:
            await self._fail(
                task,
                f"gave up after {self.settings.max_attempts} attempts; last error: {task.error or 'unknown'}",
            )
            return
        heartbeat = asyncio.create_task(self._heartbeat(task.id, asyncio.current_task()))
        try:
            await self._attempt(task)
        except asyncio.CancelledError:
            if self._loop.stopping:
                # Shutdown: hand the task back without counting this attempt.
                await asyncio.shield(self.store.release_task(task.id, self.worker_id))
                log.info("task %s released for another worker", task.id)
            raise
        finally:
            heartbeat.cancel()

    async def _attempt(self, task: Task) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.task_timeout_seconds):
                images = [
                    await load_reference(
                        spec,
                        index,
                        self.storage,
                        max_bytes=self.settings.max_reference_bytes,
                        max_pixels=self.settings.max_image_pixels,
                        fetch_timeout=self.settings.fetch_timeout_seconds,
                        allow_private=self.settings.allow_private_urls,
                        client=self.http,
                    )
                    for index, spec in enumerate(task.references)
                ]
                request = EngineRequest(
                    prompt=task.prompt,
                    images=images,
                    aspect_ratio=task.options.get("aspect_ratio"),
                    seed=task.options.get("seed"),
                    options=dict(task.options.get("extras", {})),
                )
                result = await self._generate(request)
                if not result.images:
                    raise EngineError("the engine returned no image")
                generated = await self._store_outputs(task, result)
        except ReferenceProblem as exc:
            await self._fail(task, str(exc))
            return
        except EngineError as exc:
            ENGINE_ERRORS.labels(
                self.engine.name, "retryable" if exc.retryable else "permanent"
            ).inc()
            if exc.retryable:
                await self._retry(task, exc.message, exc.retry_after)
            else:
                await self._fail(task, exc.message)
            return
        except TimeoutError:
            ENGINE_ERRORS.labels(self.engine.name, "timeout").inc()
            await self._retry(
                task,
                f"the attempt ran past its deadline of {self.settings.task_timeout_seconds:g} s",
                None,
            )
            return
        except Exception as exc:
            log.exception("task %s: unexpected error", task.id)
            ENGINE_ERRORS.labels(self.engine.name, "internal").inc()
            await self._retry(task, f"internal error: {type(exc).__name__}: {exc}", None)
            return
        completed = await self.store.complete_task(
            task.id,
            self.worker_id,
            generated,
            engine=self.engine.name,
            model=result.model,
            text=result.text,
        )
        self.on_change(task.id)
        if completed:
            TASKS_FINISHED.labels("COMPLETED", self.engine.name).inc()
        elapsed = time.monotonic() - started
        if completed:
            log.info(
                "task %s completed in %.2f s with %d image(s)", task.id, elapsed, len(generated)
            )
        else:
            log.warning(
                "task %s finished after its lease was taken over; result discarded", task.id
            )

    async def _generate(self, request: EngineRequest) -> EngineResult:
        started = time.perf_counter()
        try:
            return await self.engine.generate(request)
        finally:
            ENGINE_SECONDS.labels(self.engine.name).observe(time.perf_counter() - started)

    async def _store_outputs(self, task: Task, result: EngineResult) -> list[GeneratedImage]:
        token = task.options.get("output_token") or uuid.uuid4().hex
        generated = [
            GeneratedImage(
                key=f"outputs/{task.id}/{token}-{index}.{extension_for(image.mime_type)}",
                mime_type=image.mime_type,
            )
            for index, image in enumerate(result.images, start=1)
        ]
        await asyncio.gather(
            *(
                self.storage.put(item.key, image.data, image.mime_type)
                for item, image in zip(generated, result.images, strict=True)
            )
        )
        return generated

    async def _fail(self, task: Task, reason: str) -> None:
        log.info("task %s failed: %s", task.id, reason)
        if await self.store.fail_task(task.id, self.worker_id, reason):
            TASKS_FINISHED.labels("FAILED", self.engine.name).inc()
        self.on_change(task.id)

    async def _retry(self, task: Task, reason: str, retry_after: float | None) -> None:
        if task.attempts >= self.settings.max_attempts:
            await self._fail(task, f"gave up after {task.attempts} attempts; last error: {reason}")
            return
        delay = retry_after if retry_after is not None else backoff_delay(task.attempts)
        log.info(
            "task %s attempt %d failed (%s); retrying in %.1f s",
            task.id,
            task.attempts,
            reason,
            delay,
        )
        await self.store.retry_task(task.id, self.worker_id, reason, delay)

    async def _heartbeat(self, task_id: str, runner: asyncio.Task[None] | None) -> None:
        interval = max(0.05, self.settings.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self.store.renew_lease(
                    task_id, self.worker_id, self.settings.lease_seconds
                )
            except Exception:
                log.exception("renewing the lease of task %s failed", task_id)
                continue
            if not held:
                log.warning("task %s: lease lost to another worker; stopping this attempt", task_id)
                if runner is not None:
                    runner.cancel()
                return
