"""The three endpoints of the contract, and the image files their URLs point at."""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from imagegate.api.auth import API_KEY_HEADER, require_owner
from imagegate.api.body import read_json
from imagegate.api.errors import ApiError
from imagegate.api.schemas import (
    ERROR_RESPONSES,
    NOT_FOUND_RESPONSE,
    TOO_LARGE_RESPONSE,
    CreateTaskRequest,
    TaskEnvelope,
    TaskListEnvelope,
)
from imagegate.storage import content_type_for
from imagegate.store.base import DeliveryRecord
from imagegate.tasks.model import Task
from imagegate.tasks.presenter import FILES_PATH
from imagegate.tasks.service import InvalidParam, InvalidParams, NewTask, TaskService

ENDPOINT = "/v1/ai/gemini-2-5-flash-image-preview"
MAX_PER_PAGE = 100
SSE_KEEPALIVE_SECONDS = 15.0
SSE_MAX_SECONDS = 3600.0
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_OUTPUT_KEY = re.compile(r"^outputs/[0-9a-f-]{36}/[A-Za-z0-9_-]{8,64}-\d{1,3}\.(png|jpg|webp|gif)$")

router = APIRouter()
Owner = Annotated[str, Depends(require_owner)]


def _service(request: Request) -> TaskService:
    service: TaskService = request.app.state.tasks
    return service


def base_url_of(request: Request) -> str:
    """`request.base_url` without the trailing slash, as task URLs are built from it."""
    scope = request.scope
    host = None
    for name, value in scope["headers"]:
        if name == b"host":
            host = value
            break
    return _remembered_base_url(
        scope["scheme"],
        host,
        scope.get("server"),
        scope.get("app_root_path", scope.get("root_path", "")),
    )


@functools.lru_cache(maxsize=256)
def _remembered_base_url(
    scheme: str, host: bytes | None, server: tuple[str, int] | None, root_path: str
) -> str:
    # Starlette's request.base_url, remembered: building a URL object costs more than the
    # rest of a POST's routing (the inputs are few: one per host name a server answers to).
    scope: dict[str, Any] = {
        "type": "http",
        "scheme": scheme,
        "server": server,
        "path": "/",
        "root_path": root_path,
        "query_string": b"",
        "headers": [(b"host", host)] if host is not None else [],
    }
    return str(Request(scope).base_url).rstrip("/")


@router.post(
    ENDPOINT,
    summary="Image generation and editing using Gemini 2.5 Flash",
    description="Create a task from a prompt and up to 3 reference images. The task is stored before "
    "this answers; poll GET with its `task_id`, or pass `webhook_url` to be notified.",
    responses={
        200: {"model": TaskEnvelope, "description": "OK - the task was created"},
        **ERROR_RESPONSES,
        **TOO_LARGE_RESPONSE,
    },
    tags=["gemini-2-5-flash-image-preview"],
    # The body is read by hand (see api/body.py); this documents it as FastAPI would.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/CreateTaskRequest"}}
            },
        }
    },
)
async def create_task(request: Request, owner: Owner) -> JSONResponse:
    # Documents the operation; requests are served by `create_task_route` below, which runs
    # the same code without FastAPI's per-route machinery.
    return await _create(request, owner)


class _CreateTask:
    """The create route as a bare ASGI endpoint (an object, so Starlette does not wrap it)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        scope["route"] = create_task_route  # the metrics label, as FastAPI's routes set it
        owner = await require_owner(request, request.headers.get(API_KEY_HEADER))
        response = await _create(request, owner)
        await response(scope, receive, send)


# The create route as a plain Starlette route, ahead of FastAPI's: the POST every client makes
# most is answered without dependency solving, the included-router layers and per-route
# exception wrappers (a third of its CPU). Errors still go through the app's exception
# handlers, so every answer is the same as the documented route's.
create_task_route = Route(ENDPOINT, _CreateTask(), methods=["POST"], include_in_schema=False)


async def _create(request: Request, owner: str) -> JSONResponse:
    payload = await read_json(request)
    try:
        body = CreateTaskRequest.model_validate(payload)
    except ValidationError as exc:
        # Same answer as FastAPI's own body validation would give, through the same handler.
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None
    del payload
    extras: dict[str, Any] = dict(body.model_extra or {})
    if body.aspect_ratio is not None:
        extras["aspect_ratio"] = body.aspect_ratio
    if body.seed is not None:
        extras["seed"] = body.seed
    new = NewTask(
        prompt=body.prompt,
        reference_images=body.reference_images,
        webhook_url=body.webhook_url,
        extras=extras,
    )
    service = _service(request)
    wait = _prefer_wait(request.headers.get("prefer"))
    task = await service.create(
        owner,
        new,
        base_url=base_url_of(request),
        request_id=request.scope["state"].get("request_id"),
        idempotency_key=_idempotency_key(request),
    )
    headers = {}
    if wait:
        # Like Replicate's `Prefer: wait=N`: hold the answer until the task finishes or N
        # seconds pass, then answer with the task as it stands.
        task = await service.wait(owner, task.id, wait) or task
        headers["preference-applied"] = f"wait={wait:g}"
    return JSONResponse({"data": request.app.state.presenter(task)}, headers=headers)


MAX_PREFER_WAIT = 60.0
_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait(?:=(\d+(?:\.\d+)?))?(?:$|[;,\s])")


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > 255:
        raise InvalidParams([InvalidParam("Idempotency-Key", "must be 1 to 255 characters")])
    return key


def _prefer_wait(header: str | None) -> float:
    """Seconds asked for by `Prefer: wait=N` (plain `wait` means the maximum), else 0."""
    if not header:
        return 0.0
    match = _PREFER_WAIT.search(header)
    if not match:
        return 0.0
    return min(MAX_PREFER_WAIT, float(match.group(1))) if match.group(1) else MAX_PREFER_WAIT


def delivery_json(record: DeliveryRecord) -> dict[str, Any]:
    return {
        "webhook_id": record.id,
        "status": record.status,
        "url": record.url,
        "state": record.state,
        "attempts": record.attempts,
        "next_attempt_at": record.next_attempt_at,
        "last_status_code": record.last_status_code,
        "last_error": record.last_error,
        "created_at": record.created_at,
        "history": record.history,
    }


def _page_param(
    name: str, value: int | None, default: int, maximum: int | None = None
) -> tuple[int, InvalidParam | None]:
    if value is None:
        return default, None
    if value < 1:
        return default, InvalidParam(name, f"Parameter '{name}' must be greater than 0")
    if maximum is not None and value > maximum:
        return default, InvalidParam(
            name, f"Parameter '{name}' must be less than or equal to {maximum}"
        )
    return value, None


@router.get(
    ENDPOINT,
    summary="List tasks",
    description="The caller's tasks, newest first.",
    responses={
        200: {"model": TaskListEnvelope, "description": "OK - the caller's tasks"},
        **ERROR_RESPONSES,
    },
    tags=["gemini-2-5-flash-image-preview"],
)
async def list_tasks(
    request: Request,
    owner: Owner,
    page: Annotated[int | None, Query(description="Page number, from 1.", examples=[1])] = None,
    per_page: Annotated[
        int | None, Query(description="Tasks per page, 1 to 100 (default 20).", examples=[20])
    ] = None,
) -> JSONResponse:
    page_value, page_problem = _page_param("page", page, 1)
    per_page_value, per_page_problem = _page_param("per_page", per_page, 20, MAX_PER_PAGE)
    problems = [p for p in (page_problem, per_page_problem) if p]
    if problems:
        raise InvalidParams(problems)
    tasks = await _service(request).list(owner, page_value, per_page_value)
    present = request.app.state.presenter
    return JSONResponse({"data": [present(t) for t in tasks]})


@router.get(
    ENDPOINT + "/{task_id}",
    summary="Get the status of one task",
    responses={
        200: {
            "model": TaskEnvelope,
            "description": "OK - the task exists and its status is returned",
        },
        **NOT_FOUND_RESPONSE,
        **ERROR_RESPONSES,
    },
    tags=["gemini-2-5-flash-image-preview"],
)
async def get_task(task_id: str, request: Request, owner: Owner) -> JSONResponse:
    task = await _service(request).get(owner, task_id) if _UUID.match(task_id) else None
    if task is None:
        # Someone else's task is as absent as a task that never existed.
        raise ApiError(404, "Not Found")
    return JSONResponse({"data": request.app.state.presenter(task)})


@router.get(
    ENDPOINT + "/{task_id}/events",
    summary="Extension: live status as server-sent events",
    description="A `text/event-stream` with one `status` event carrying the task object now and "
    "at every status change, until the task is COMPLETED or FAILED. A comment line is sent every "
    "15 s as a keep-alive.",
    responses={
        200: {"content": {"text/event-stream": {}}},
        **NOT_FOUND_RESPONSE,
        **ERROR_RESPONSES,
    },
    tags=["gemini-2-5-flash-image-preview"],
)
async def task_events(task_id: str, request: Request, owner: Owner) -> StreamingResponse:
    service = _service(request)
    if not _UUID.match(task_id) or await service.get(owner, task_id) is None:
        raise ApiError(404, "Not Found")
    present = request.app.state.presenter

    async def stream() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[Task | None] = asyncio.Queue()

        async def produce() -> None:
            try:
                async for task in service.watch(owner, task_id, timeout=SSE_MAX_SECONDS):
                    await queue.put(task)
            finally:
                await queue.put(None)

        producer = asyncio.create_task(produce())
        try:
            while True:
                try:
                    async with asyncio.timeout(SSE_KEEPALIVE_SECONDS):
                        task = await queue.get()
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if task is None:
                    return
                yield b"event: status\ndata: " + json.dumps(present(task)).encode() + b"\n\n"
        finally:
            producer.cancel()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


@router.get(
    ENDPOINT + "/{task_id}/webhooks",
    summary="Extension: webhook deliveries of one task",
    description="Every webhook message of the task (one per status change), with each delivery "
    "attempt: when, the receiver's HTTP status or the error, and when the next attempt is due.",
    responses={**NOT_FOUND_RESPONSE, **ERROR_RESPONSES},
    tags=["webhooks"],
)
async def get_task_webhooks(task_id: str, request: Request, owner: Owner) -> JSONResponse:
    records = (
        await _service(request).webhook_history(owner, task_id) if _UUID.match(task_id) else None
    )
    if records is None:
        raise ApiError(404, "Not Found")
    return JSONResponse({"data": [delivery_json(r) for r in records]})


@router.api_route(
    FILES_PATH + "{key:path}",
    methods=["GET", "HEAD"],
    summary="A generated image",
    description="The bytes of a generated image. The URL itself is the credential: it carries a "
    "random token and is only ever listed to the task's owner.",
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        **NOT_FOUND_RESPONSE,
    },
    tags=["files"],
)
async def get_file(key: str, request: Request) -> Response:
    if not _OUTPUT_KEY.match(key):
        raise ApiError(404, "Not Found")
    data = await request.app.state.storage.get(key)
    if data is None:
        raise ApiError(404, "Not Found")
    headers = {"cache-control": "private, max-age=86400", "x-content-type-options": "nosniff"}
    if request.method == "HEAD":
        headers["content-length"] = str(len(data))
        return Response(status_code=200, media_type=content_type_for(key), headers=headers)
    return Response(content=data, media_type=content_type_for(key), headers=headers)
