"""`imagegate.Client`: the blocking SDK."""

from __future__ import annotations

import builtins
import dataclasses
import time
from types import TracebackType
from typing import Any, Literal

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

_RECONNECT: Literal["reconnect"] = "reconnect"


class Client(BaseClient):
    """A client of one imagegate (or Freepik) server and key.

    `api_key` and `base_url` default to the environment variables `IMAGEGATE_KEY` and
    `IMAGEGATE_URL` (and then http://127.0.0.1:8000). `http_client` lets you bring your own
    `httpx.Client` (proxies, custom transports); it is then yours to close.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = DEFAULT_HTTP_TIMEOUT,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(api_key, base_url)
        self._owns_http = http_client is None
        self._http = (
            http_client
            if http_client is not None
            else httpx.Client(timeout=timeout, headers={"user-agent": USER_AGENT})
        )

    # --- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"cannot reach {url}: {exc or type(exc).__name__}") from exc

    # --- the API --------------------------------------------------------------------------
    def create(
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
        body = self._body(
            prompt, encode_references(references), webhook_url, aspect_ratio, seed, extras
        )
        return task_from(self._send("POST", self._url(), json=body, headers=self._headers()))

    def get(self, task_id: str) -> Task:
        return task_from(self._send("GET", self._url(task_id), headers=self._headers()))

    def list(self, page: int = 1, per_page: int = 20) -> builtins.list[Task]:
        """The key's tasks, newest first."""
        params = {"page": page, "per_page": per_page}
        return tasks_from(self._send("GET", self._url(), params=params, headers=self._headers()))

    def download(self, task: Task) -> Task:
        """The task with `images` holding the bytes behind `generated`."""
        images = [
            check(self._send("GET", url, follow_redirects=True)).content for url in task.generated
        ]
        return dataclasses.replace(task, images=images)

    def generate(
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
        task = self.create(
            prompt,
            references,
            webhook_url=webhook_url,
            aspect_ratio=aspect_ratio,
            seed=seed,
            **extras,
        )
        if not wait:
            return task
        task = self.wait(task.task_id, timeout, on_update=on_update)
        return self.download(task) if download else task

    def wait(
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
            task = self._wait_streaming(task_id, deadline, tracker)
            if task is not None:
                return finish(task)
        return finish(self._wait_polling(task_id, deadline, timeout, tracker))

    # --- waiting --------------------------------------------------------------------------
    def _wait_streaming(self, task_id: str, deadline: float, tracker: StatusTracker) -> Task | None:
        """The finished task from the event stream, or None where polling has to take over
        (no stream on this server, a dropped connection, the deadline)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            read_timeout = min(remaining, STREAM_READ_TIMEOUT)
            try:
                with self._http.stream(
                    "GET",
                    self._url(task_id, "/events"),
                    headers={**self._headers(), "accept": "text/event-stream"},
                    timeout=httpx.Timeout(10.0, read=read_timeout),
                ) as response:
                    if response.status_code != 200 or not is_event_stream(response):
                        self._no_event_stream(task_id, response, tracker)
                        return None
                    self._events_supported = True
                    outcome = self._read_stream(response, deadline, tracker)
            except httpx.TransportError:
                return None
            if outcome != _RECONNECT:
                return outcome if isinstance(outcome, Task) else None

    def _read_stream(
        self, response: httpx.Response, deadline: float, tracker: StatusTracker
    ) -> Task | Literal["reconnect"] | None:
        decoder = SSEDecoder()
        for line in response.iter_lines():
            event = decoder.feed(line)
            task = task_from_event(event) if event is not None else None
            if task is not None:
                tracker.see(task)
                if task.finished:
                    return task
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if line.startswith(":") and remaining < STREAM_READ_TIMEOUT:
                # Keep-alives would hold this stream open past the deadline: reopen it with a
                # read timeout that ends there.
                return _RECONNECT
        return None

    def _no_event_stream(
        self, task_id: str, response: httpx.Response, tracker: StatusTracker
    ) -> None:
        if response.status_code == 404:
            # Either the task does not exist (this GET raises NotFoundError) or the server
            # has no event stream.
            tracker.see(self.get(task_id))
        if response.status_code == 200 or response.status_code in NO_EVENT_STREAM:
            self._events_supported = False

    def _wait_polling(
        self, task_id: str, deadline: float, timeout: float, tracker: StatusTracker
    ) -> Task:
        delays = poll_delays()
        while True:
            hint: float | None = None
            transient: ImagegateError | None = None
            try:
                task = tracker.see(self.get(task_id))
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
                    f"task {task_id} did not finish within {timeout:g} s (last status: {status})",
                    last,
                ) from transient
            time.sleep(min(hint if hint is not None else next(delays), remaining))
