"""What the sync and async clients share: configuration, request bodies, answers, schedules."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx

from imagegate import __version__
from imagegate.client._sse import ServerSentEvent
from imagegate.client._task import Task
from imagegate.client.errors import ImagegateError, TaskFailedError, error_from_response

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
ENDPOINT = "/v1/ai/gemini-2-5-flash-image-preview"
API_KEY_HEADER = "x-freepik-api-key"
USER_AGENT = f"imagegate-python/{__version__}"

DEFAULT_HTTP_TIMEOUT = 60.0
DEFAULT_WAIT_TIMEOUT = 300.0
# Polling starts fast (offline and cached answers take milliseconds) and backs off to a cap
# that keeps the load of many waiting clients small.
POLL_FIRST_DELAY = 0.2
POLL_FACTOR = 1.5
POLL_MAX_DELAY = 3.0
# The server sends a keep-alive comment every 15 s; a stream silent for longer is dead.
STREAM_READ_TIMEOUT = 30.0
# Answers to the events URL that mean "this server has no event stream": poll instead.
NO_EVENT_STREAM = frozenset({404, 405, 406, 501})

OnUpdate = Callable[[Task], None]


def resolve_base_url(base_url: str | None) -> str:
    return (base_url or os.environ.get("IMAGEGATE_URL") or DEFAULT_BASE_URL).rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get("IMAGEGATE_KEY") or None


def poll_delays() -> Iterator[float]:
    delay = POLL_FIRST_DELAY
    while True:
        yield delay
        delay = min(POLL_MAX_DELAY, delay * POLL_FACTOR)


def check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    raise error_from_response(response)


def _data(response: httpx.Response) -> Any:
    try:
        return response.json()["data"]
    except (ValueError, KeyError, TypeError):
        raise ImagegateError(
            f"unexpected answer from {response.request.url}: {response.text[:200]!r}",
            status_code=response.status_code,
            body=response.text,
            request_id=response.headers.get("x-request-id"),
        ) from None


def task_from(response: httpx.Response) -> Task:
    data = _data(check(response))
    if not isinstance(data, dict):
        raise ImagegateError(f"unexpected task in answer: {data!r}"[:300])
    return Task.from_json(data)


def tasks_from(response: httpx.Response) -> list[Task]:
    data = _data(check(response))
    if not isinstance(data, list):
        raise ImagegateError(f"unexpected task list in answer: {data!r}"[:300])
    return [Task.from_json(item) for item in data if isinstance(item, dict)]


def task_from_event(event: ServerSentEvent) -> Task | None:
    if event.event != "status":
        return None
    try:
        data = json.loads(event.data)
    except ValueError:
        return None
    return Task.from_json(data) if isinstance(data, dict) else None


def is_event_stream(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("text/event-stream")


def finish(task: Task) -> Task:
    if task.status == "FAILED":
        raise TaskFailedError(task)
    return task


class StatusTracker:
    """Calls `on_update` once per status, however often the same status is seen."""

    def __init__(self, on_update: OnUpdate | None) -> None:
        self.on_update = on_update
        self.last: Task | None = None

    def see(self, task: Task) -> Task:
        if self.on_update is not None and (self.last is None or self.last.status != task.status):
            self.on_update(task)
        self.last = task
        return task


class BaseClient:
    def __init__(self, api_key: str | None, base_url: str | None) -> None:
        self.api_key = resolve_api_key(api_key)
        self.base_url = resolve_base_url(base_url)
        # Whether the server has the event-stream extension; None until the first wait finds out.
        self._events_supported: bool | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _url(self, task_id: str | None = None, suffix: str = "") -> str:
        url = self.base_url + ENDPOINT
        if task_id is not None:
            url += "/" + quote(task_id, safe="") + suffix
        return url

    def _headers(self) -> dict[str, str]:
        # The key goes only to the API, never with image downloads (CDN URLs on other hosts).
        return {API_KEY_HEADER: self.api_key} if self.api_key else {}

    @staticmethod
    def _body(
        prompt: str,
        references: list[str] | None,
        webhook_url: str | None,
        aspect_ratio: str | None,
        seed: int | None,
        extras: dict[str, Any],
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": prompt}
        if references:
            body["reference_images"] = references
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        if aspect_ratio is not None:
            body["aspect_ratio"] = aspect_ratio
        if seed is not None:
            body["seed"] = seed
        body.update(extras)
        return body
