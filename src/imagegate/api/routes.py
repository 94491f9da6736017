"""The three endpoints of the contract, and the image files their URLs point at."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from imagegate.api.auth import require_owner
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
from imagegate.tasks.presenter import FILES_PATH
from imagegate.tasks.service import InvalidParam, InvalidParams, NewTask, TaskService

ENDPOINT = "/v1/ai/gemini-2-5-flash-image-preview"
MAX_PER_PAGE = 100
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_OUTPUT_KEY = re.compile(r"^outputs/[0-9a-f-]{36}/[A-Za-z0-9_-]{8,64}-\d{1,3}\.(png|jpg|webp|gif)$")

router = APIRouter()
Owner = Annotated[str, Depends(require_owner)]


def _service(request: Request) -> TaskService:
    service: TaskService = request.app.state.tasks
    return service


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


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
)
async def create_task(body: CreateTaskRequest, request: Request, owner: Owner) -> JSONResponse:
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
    task = await service.create(
        owner, new, base_url=_base_url(request), request_id=request.scope["state"].get("request_id")
    )
    return JSONResponse({"data": request.app.state.presenter(task)})


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
