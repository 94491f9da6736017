"""Typed errors of the SDK: each carries the server's message, the HTTP status and the body."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from imagegate.client._task import Task


@dataclass(frozen=True, slots=True)
class InvalidParam:
    """One field the server refused, and why."""

    name: str
    reason: str


class ImagegateError(Exception):
    """Base class of every error the SDK raises."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body
        # The server's x-request-id: quote it when asking an operator what happened.
        self.request_id = request_id

    def __str__(self) -> str:
        return self.message


class APIConnectionError(ImagegateError):
    """The server could not be reached, or the connection broke before an answer."""


class AuthenticationError(ImagegateError):
    """401: the key is missing or unknown."""


class ValidationError(ImagegateError):
    """400: the request was refused; `invalid_params` names each field and the reason."""

    def __init__(
        self,
        message: str,
        *,
        invalid_params: list[InvalidParam],
        status_code: int | None = 400,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, body=body, request_id=request_id)
        self.invalid_params = invalid_params

    def __str__(self) -> str:
        if not self.invalid_params:
            return self.message
        details = "; ".join(f"{p.name}: {p.reason}" for p in self.invalid_params)
        return f"{self.message} {details}"


class NotFoundError(ImagegateError):
    """404: no such task for this key (or an image URL that has expired)."""


class RateLimitError(ImagegateError):
    """429: too many requests; `retry_after` is the server's hint in seconds, when it gave one."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None,
        status_code: int | None = 429,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, body=body, request_id=request_id)
        self.retry_after = retry_after


class ServerError(ImagegateError):
    """5xx: the server failed or is unavailable."""


class TaskFailedError(ImagegateError):
    """The task ended FAILED; `task` is the task as the server reported it."""

    def __init__(self, task: Task) -> None:
        super().__init__(task.error or "the task failed")
        self.task = task


class WaitTimeout(ImagegateError, TimeoutError):
    """The task did not finish in time; `task` is how it stood at the last look (it keeps
    running on the server: wait again or poll it later)."""

    def __init__(self, message: str, task: Task | None) -> None:
        super().__init__(message)
        self.task = task


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(response: httpx.Response) -> ImagegateError:
    """The typed error for a non-2xx answer, with the server's own message."""
    status = response.status_code
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text
    message = _message(body) or response.reason_phrase or f"HTTP {status}"
    request_id = response.headers.get("x-request-id")
    common: dict[str, Any] = {"status_code": status, "body": body, "request_id": request_id}
    if status == 400 or status == 422:
        params = []
        if isinstance(body, dict) and isinstance(body.get("invalid_params"), list):
            params = [
                InvalidParam(str(p.get("name", "")), str(p.get("reason", "")))
                for p in body["invalid_params"]
                if isinstance(p, dict)
            ]
        return ValidationError(message, invalid_params=params, **common)
    if status == 401:
        return AuthenticationError(message, **common)
    if status == 404:
        return NotFoundError(message, **common)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return RateLimitError(message, retry_after=retry_after, **common)
    if status >= 500:
        return ServerError(message, **common)
    return ImagegateError(message, **common)


def _message(body: Any) -> str | None:
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
        # Proxies and OpenAI-style servers nest it.
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return None
