"""Pure ASGI middleware: a request id on every response, and the request body size limit."""

from __future__ import annotations

import json
import logging
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegate import ids
from imagegate.logs import request_id_var

log = logging.getLogger("imagegate.api")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware:
    """Takes a sane incoming `x-request-id` or makes one; stores it in scope state; echoes it.

    Also the last line of defence: an unhandled exception is logged with the request id and
    answered with the spec's JSON 500 here, without re-raising, so the server keeps the
    client's connection open instead of resetting it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _SAFE_ID.match(candidate):
                    request_id = candidate
                break
        if not request_id:
            request_id = "req_" + ids.token_hex(10)
        scope.setdefault("state", {})["request_id"] = request_id
        request_id_var.set(request_id)
        header = (b"x-request-id", request_id.encode())

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                if not any(h[0] == b"x-request-id" for h in headers):
                    headers.append(header)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception(
                "unhandled error in %s %s (request %s)", scope["method"], scope["path"], request_id
            )
            if started:
                raise
            await send_json(send, 500, b'{"message":"Internal Server Error"}', [header])


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer from middleware, before (or instead of) the app."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


OPENAI_PREFIX = "/v1/images/"


def error_body(path: str, status: int, message: str) -> bytes:
    """An error in the shape the route's clients expect: OpenAI's under /v1/images/, the
    spec's `{"message"}` everywhere else. For refusals made before any route runs."""
    if path.startswith(OPENAI_PREFIX):
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        return json.dumps(
            {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
        ).encode()
    return json.dumps({"message": message}).encode()


class BodySizeLimitMiddleware:
    """413 before reading a body whose Content-Length is over the limit, or as soon as a
    streamed body passes it, so a huge upload costs no more than the limit in memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, scope: Scope, send: Send) -> None:
        body = error_body(
            scope["path"],
            413,
            f"Request body is larger than the limit of {self.max_bytes:,} bytes (IMAGEGATE_MAX_BODY_BYTES)",
        )
        await send_json(send, 413, body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._reject(scope, send)
                    return
                break
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(scope, send)
        except Exception:
            if too_large and not started:
                await self._reject(scope, send)
                return
            raise


class _BodyTooLarge(Exception):
    pass
