"""Creating and reading tasks: the business rules between the HTTP layer and the store."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from imagegate import ids
from imagegate.engines.aspect import parse_aspect_ratio
from imagegate.inputs.references import (
    DecodedReference,
    ParsedReference,
    ReferenceProblem,
    parse_reference,
)
from imagegate.metrics import TASKS_CREATED
from imagegate.net import OutboundError, check_url, validate_url_syntax
from imagegate.settings import Settings
from imagegate.storage import BlobStorage, extension_for
from imagegate.store import Store
from imagegate.store.base import DeliveryRecord, Idempotency, IdempotencyKeyTaken
from imagegate.tasks.capacity import CachedCount, CountsByKey
from imagegate.tasks.events import TaskEvents
from imagegate.tasks.model import ReferenceSpec, Status, Task

MAX_REFERENCES = 3
MAX_LIST_OFFSET = 2**62
SERVICE_UNAVAILABLE = "Service Unavailable. Please try again later."
# The queue depth and unfinished counts are looked up in the background at most this often
# (tasks/capacity.py); POSTs in between use the last figure plus what they added.
QUEUE_CHECK_SECONDS = 1.0
# Extension fields we keep for engines; anything else a client sends is ignored.
KEPT_EXTRAS = (
    "resolution",
    "num_images",
    "negative_prompt",
    "guidance_scale",
    "steps",
    "model",
    "filter_nsfw",
)


@dataclass(frozen=True, slots=True)
class InvalidParam:
    name: str
    reason: str


class InvalidParams(Exception):
    """The request is well-formed JSON but some fields are not acceptable."""

    def __init__(self, params: list[InvalidParam]) -> None:
        super().__init__("; ".join(f"{p.name}: {p.reason}" for p in params))
        self.params = params


class Refusal(Exception):
    """The request is fine but cannot be taken now (limits, a reused Idempotency-Key)."""

    def __init__(self, status_code: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class NewTask:
    prompt: str
    reference_images: list[Any] | None
    webhook_url: str | None
    extras: dict[str, Any]


class TaskService:
    def __init__(
        self,
        store: Store,
        storage: BlobStorage,
        settings: Settings,
        on_created: Callable[[], None] = lambda: None,
        events: TaskEvents | None = None,
    ) -> None:
        self.events = events or TaskEvents()
        self.store = store
        self._queued = CachedCount(self._count_queued, QUEUE_CHECK_SECONDS)
        self._unfinished = CountsByKey(store.count_unfinished, QUEUE_CHECK_SECONDS)
        self.storage = storage
        self.settings = settings
        self.on_created = on_created

    def _check_fields(self, new: NewTask) -> list[InvalidParam]:
        problems: list[InvalidParam] = []
        if not new.prompt.strip():
            problems.append(InvalidParam("prompt", "must not be empty"))
        elif len(new.prompt) > self.settings.max_prompt_chars:
            problems.append(
                InvalidParam(
                    "prompt",
                    f"is {len(new.prompt):,} characters; the limit is {self.settings.max_prompt_chars:,}",
                )
            )
        if new.reference_images is not None and len(new.reference_images) > MAX_REFERENCES:
            problems.append(
                InvalidParam(
                    "reference_images",
                    f"has {len(new.reference_images)} items; at most {MAX_REFERENCES} are allowed",
                )
            )
        if new.webhook_url is not None:
            reason = validate_url_syntax(new.webhook_url)
            if reason:
                problems.append(InvalidParam("webhook_url", reason))
        return problems

    async def _store_references(self, task_id: str, items: list[Any]) -> list[ReferenceSpec]:
        """Check every reference; store the decoded ones as blobs of the new task.

        One at a time, each decoded image freed once stored: a request with three 4 MB
        references never holds all three decoded at once. Every bad item is reported, and
        nothing stays stored when one is bad.
        """
        specs: list[ReferenceSpec] = []
        problems: list[InvalidParam] = []
        for index, item in enumerate(items):
            try:
                if isinstance(item, str) and len(item) > 4096:
                    # Decoding megabytes of base64 and checking images is CPU work: off the loop.
                    ref = await asyncio.to_thread(self._parse_reference, item, index)
                else:
                    ref = self._parse_reference(item, index)
            except ReferenceProblem as exc:
                problems.append(InvalidParam(exc.field, exc.reason))
                continue
            if problems:
                continue  # the request fails anyway: check the rest, store nothing more
            if isinstance(ref, DecodedReference):
                key = f"references/{task_id}/{index}.{extension_for(ref.mime_type)}"
                await self.storage.put(key, ref.data, ref.mime_type)
                specs.append(ReferenceSpec(kind="blob", value=key, mime_type=ref.mime_type))
            else:
                specs.append(ReferenceSpec(kind="url", value=ref.url))
            del ref
        if problems:
            if any(spec.kind == "blob" for spec in specs):
                await self.storage.delete_prefix(f"references/{task_id}")
            raise InvalidParams(problems)
        return specs

    def _parse_reference(self, item: object, index: int) -> ParsedReference:
        return parse_reference(
            item,
            index,
            max_bytes=self.settings.max_reference_bytes,
            max_pixels=self.settings.max_image_pixels,
        )

    def _fingerprint(self, new: NewTask) -> str:
        canonical = json.dumps(
            [new.prompt, new.reference_images, new.webhook_url, new.extras],
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    async def _replay(self, owner: str, key: str, fingerprint: str) -> Task | None:
        since = time.time() - self.settings.idempotency_hours * 3600
        found = await self.store.find_idempotent(owner, key, since)
        if found is None:
            return None
        if found.body_hash != fingerprint:
            raise Refusal(
                409,
                f"Idempotency-Key {key!r} was already used with a different request body; "
                "use a new key for a new request.",
            )
        return await self.store.get_task(found.task_id, owner)

    async def _count_queued(self) -> int:
        return (await self.store.queue_stats()).queued

    async def _check_capacity(self, owner: str) -> None:
        now = time.monotonic()
        if await self._queued.get(now) >= self.settings.max_queue_depth:
            raise Refusal(503, SERVICE_UNAVAILABLE, retry_after=5)
        unfinished = await self._unfinished[owner].get(now)
        if unfinished >= self.settings.max_unfinished_tasks_per_key:
            raise Refusal(
                429,
                f"This key has {unfinished} unfinished tasks; the limit is "
                f"{self.settings.max_unfinished_tasks_per_key}. Wait for some to finish.",
                retry_after=5,
            )

    async def create(
        self,
        owner: str,
        new: NewTask,
        *,
        base_url: str,
        request_id: str | None,
        idempotency_key: str | None = None,
    ) -> Task:
        problems = self._check_fields(new)
        if new.webhook_url and not problems:
            try:
                # Checked now so the client hears about a private or unresolvable receiver at
                # once; the dispatcher checks again at every delivery (DNS can change).
                await check_url(
                    new.webhook_url, allow_private=self.settings.allow_private_urls, subject="URL"
                )
            except OutboundError as exc:
                problems.append(InvalidParam("webhook_url", exc.reason))
        if problems:
            raise InvalidParams(problems)
        idempotency: Idempotency | None = None
        fingerprint = ""
        if idempotency_key:
            fingerprint = self._fingerprint(new)
            replayed = await self._replay(owner, idempotency_key, fingerprint)
            if replayed is not None:
                return replayed
        # Refusals for capacity come before the costly part (decoding references).
        await self._check_capacity(owner)

        task_id = str(ids.uuid4())
        references = await self._store_references(task_id, new.reference_images or [])
        now = time.time()
        task = Task(
            id=task_id,
            owner=owner,
            status=Status.CREATED,
            prompt=new.prompt,
            references=references,
            options=self._options(new.extras, base_url),
            webhook_url=new.webhook_url,
            created_at=now,
            updated_at=now,
            request_id=request_id,
        )
        if idempotency_key:
            idempotency = Idempotency(idempotency_key, fingerprint, task_id)
        try:
            await self.store.create_task(task, idempotency)
        except IdempotencyKeyTaken:
            # A concurrent request with the same key won the race: answer as it would.
            await self.storage.delete_prefix(f"references/{task_id}")
            replayed = await self._replay(owner, str(idempotency_key), fingerprint)
            if replayed is None:
                raise
            return replayed
        TASKS_CREATED.inc()
        self._queued.add()
        self._unfinished[owner].add()
        self.on_created()
        return task

    @staticmethod
    def _options(extras: dict[str, Any], base_url: str) -> dict[str, Any]:
        options: dict[str, Any] = {
            "base_url": base_url,
            # Output keys carry this token, so image URLs are unguessable yet the same on every
            # attempt: a retried task overwrites its own files instead of leaving copies.
            "output_token": ids.token_urlsafe(24),
        }
        raw_ratio = extras.get("aspect_ratio")
        if raw_ratio is not None:
            options["aspect_ratio"] = parse_aspect_ratio(raw_ratio)
            options["aspect_ratio_requested"] = str(raw_ratio)[:64]
        seed = extras.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            options["seed"] = seed
        kept = {
            k: v
            for k, v in extras.items()
            if k in KEPT_EXTRAS and isinstance(v, str | int | float | bool) and len(str(v)) <= 1000
        }
        if kept:
            options["extras"] = kept
        return options

    async def get(self, owner: str, task_id: str) -> Task | None:
        return await self.store.get_task(task_id, owner)

    async def watch(
        self, owner: str, task_id: str, *, timeout: float, poll_interval: float = 0.5
    ) -> AsyncIterator[Task]:
        """Yield the task now and again at every status change, until it finishes or
        `timeout` passes. Wakes on in-process events; polls the store as a fallback for
        changes made by other processes."""
        deadline = time.monotonic() + timeout
        last: Status | None = None
        with self.events.subscribe(task_id) as changed:
            while True:
                changed.clear()
                task = await self.store.get_task(task_id, owner)
                if task is None:
                    return
                if task.status is not last:
                    last = task.status
                    yield task
                if task.status.finished:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(poll_interval, remaining)):
                        await changed.wait()

    async def wait(self, owner: str, task_id: str, timeout: float) -> Task | None:
        """The task once finished, or as it stands after `timeout` seconds."""
        latest: Task | None = None
        async for task in self.watch(owner, task_id, timeout=timeout):
            latest = task
        return (
            latest
            if latest is None or latest.status.finished
            else await self.store.get_task(task_id, owner)
        )

    async def webhook_history(self, owner: str, task_id: str) -> list[DeliveryRecord] | None:
        if await self.store.get_task(task_id, owner) is None:
            return None
        return await self.store.webhook_history(task_id, owner)

    async def list(self, owner: str, page: int, per_page: int) -> list[Task]:
        offset = (page - 1) * per_page
        if offset > MAX_LIST_OFFSET:
            return []  # past the end of any list (and of the databases' integers)
        return await self.store.list_tasks(owner, offset, per_page)
