"""`imagegate.AsyncClient`: the asyncio SDK, method for method the same as `Client`."""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import time
from types import TracebackType
from typing import Any

import httpx

from imagegate.client._base import (
    DEFAULT_HTTP_TIMEOUT,
    DEFAULT_WAIT_TIMEOUT,
    NO_EVENT_STREAM,
    STREAM_READ_TIMEOUT,
    USER_AGENT,
    BaseClient,
    OnUpdate,
    StatusTracker,
    check,
    finish,
    is_event_stream,
    poll_delays,
    task_from,
    task_from_event,
    tasks_from,
)
from imagegate.client._references import Reference, encode_references
from imagegate.client._sse import SSEDecoder
from imagegate.client._task import Task
from imagegate.client.errors import (
    APIConnectionError,
    ImagegateError,
    RateLimitError,
    ServerError,
    WaitTimeout,
)


class AsyncClient(BaseClient):
    """The asyncio twin of `imagegate.Client`; see there for the arguments."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = DEFAULT_HTTP_TIMEOUT,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(api_key, base_url)
        self._owns_http = http_client is None
        self._http = (
            http_client
            if http_client is not None
            else httpx.AsyncClient(timeout=timeout, headers={"user-agent": USER_AGENT})
        )

    # --- lifecycle ------------------------------------------------------------------------
    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"cannot reach {url}: {exc or type(exc).__name__}") from exc

    # --- the API --------------------------------------------------------------------------
    async def create(
        self,
        prompt: str,
        references: builtins.list[Reference] | None = None,
        *,
        webhook_url: str | None = None,
        aspect_ratio: str | None = None,
        seed: int | None = None,
        **extras: Any,
    ) -> Task:
        """Create a task and return it at once (status CREATED)."""
        # Reading files and base64-encoding megabytes would stall the event loop.
        encoded = await asyncio.to_thread(encode_references, references) if references else None
        body = self._body(prompt, encoded, webhook_url, aspect_ratio, seed, extras)
        return task_from(await self._send("POST", self._url(), json=body, headers=self._headers()))

    async def get(self, task_id: str) -> Task:
        return task_from(await self._send("GET", self._url(task_id), headers=self._headers()))

    async def list(self, page: int = 1, per_page: int = 20) -> builtins.list[Task]:
        """The key's tasks, newest first."""
        params = {"page": page, "per_page": per_page}
        return tasks_from(
            await self._send("GET", self._url(), params=params, headers=self._headers())
        )

    async def download(self, task: Task) -> Task:
        """The task with `images` holding the bytes behind `generated`."""
        responses = await asyncio.gather(
            *(self._send("GET", url, follow_redirects=True) for url in task.generated)
        )
        return dataclasses.replace(task, images=[check(r).content for r in responses])

    async def generate(
        self,
        prompt: str,
        references: builtins.list[Reference] | None = None,
        *,
        webhook_url: str | None = None,
        aspect_ratio: str | None = None,
        seed: int | None = None,
        wait: bool = True,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
        download: bool = True,
        on_update: OnUpdate | None = None,
        **extras: Any,
    ) -> Task:
        """Create a task and, with `wait`, wait for it and download its images.

        Raises `TaskFailedError` when the task ends FAILED and `WaitTimeout` when it is not
        finished after `timeout` seconds.
        """
        task = await self.create(
            prompt,
            references,
            webhook_url=webhook_url,
            aspect_ratio=aspect_ratio,
            seed=seed,
            **extras,
        )
        if not wait:
            return task
        task = await self.wait(task.task_id, timeout, on_update=on_update)
        return await self.download(task) if download else task

    async def wait(
        self,
        task_id: str,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
        *,
        on_update: OnUpdate | None = None,
    ) -> Task:
        """The task once COMPLETED. `on_update` is called with the task at each status seen.

        Follows the server's event stream where it has one (imagegate does), else polls with
        backoff. Raises `TaskFailedError` (FAILED) or `WaitTimeout` (not finished in time).
        """
        deadline = time.monotonic() + timeout
        tracker = StatusTracker(on_update)
        if self._events_supported is not False:
            task = await self._wait_streaming(task_id, deadline, tracker)
            if task is not None:
                return finish(task)
        return finish(await self._wait_polling(task_id, deadline, timeout, tracker))

    # --- waiting --------------------------------------------------------------------------
    async def _wait_streaming(
        self, task_id: str, deadline: float, tracker: StatusTracker
    ) -> Task | None:
        """The finished task from the event stream, or None where polling has to take over
        (no stream on this server, a dropped connection, the deadline)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            async with (
                asyncio.timeout(remaining),
                self._http.stream(
                    "GET",
                    self._url(task_id, "/events"),
                    headers={**self._headers(), "accept": "text/event-stream"},
                    timeout=httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT),
                ) as response,
            ):
                if response.status_code != 200 or not is_event_stream(response):
                    await self._no_event_stream(task_id, response, tracker)
                    return None
                self._events_supported = True
                decoder = SSEDecoder()
                async for line in response.aiter_lines():
                    event = decoder.feed(line)
                    task = task_from_event(event) if event is not None else None
                    if task is not None:
                        tracker.see(task)
                        if task.finished:
                            return task
        except (TimeoutError, httpx.TransportError):
            return None
        return None

    async def _no_event_stream(
        self, task_id: str, response: httpx.Response, tracker: StatusTracker
    ) -> None:
        if response.status_code == 404:
            # Either the task does not exist (this GET raises NotFoundError) or the server
            # has no event stream.
            tracker.see(await self.get(task_id))
        if response.status_code == 200 or response.status_code in NO_EVENT_STREAM:
            self._events_supported = False

    async def _wait_polling(
        self, task_id: str, deadline: float, waited: float, tracker: StatusTracker
    ) -> Task:
        delays = poll_delays()
        while True:
            hint: float | None = None
            transient: ImagegateError | None = None
            try:
                task = tracker.see(await self.get(task_id))
                if task.finished:
                    return task
            except RateLimitError as exc:
                hint, transient = exc.retry_after, exc
            except (APIConnectionError, ServerError) as exc:
                if isinstance(exc, ServerError) and exc.status_code not in (502, 503, 504):
                    raise
                transient = exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                last = tracker.last
                status = last.status if last else "unknown"
                raise WaitTimeout(
                    f"task {task_id} did not finish within {waited:g} s (last status: {status})",
                    last,
                ) from transient
            await asyncio.sleep(min(hint if hint is not None else next(delays), remaining))
