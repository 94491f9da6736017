"""OpenAI's Images API (`POST /v1/images/generations` and `/v1/images/edits`) over our tasks.

Each request creates ordinary tasks through the same TaskService as the Freepik endpoint (so
limits, engines and accounting are shared) and waits for them, the way OpenAI answers: at
once with the images. Errors have OpenAI's shape, `{"error": {"message", "type", "param",
"code"}}`, so this router answers them itself: bodies are parsed by hand and nothing is left
for the app's `{"message"}` handlers.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagegate.api.errors import ApiError
from imagegate.api.routes import base_url_of
from imagegate.engines.aspect import GEMINI_SIZES, nearest_ratio
from imagegate.storage import BlobStorage, extension_for
from imagegate.tasks.model import Status, Task
from imagegate.tasks.service import InvalidParams, NewTask, TaskService

log = logging.getLogger("imagegate.api.openai")

router = APIRouter(tags=["openai"])

# How long one request waits for its images before answering 504 (the tasks keep running).
WAIT_SECONDS = 300.0
MAX_N = 4
MAX_IMAGES = 3
FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
_PILLOW_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_SIZE = re.compile(r"^\s*(\d{1,5})\s*x\s*(\d{1,5})\s*$")
_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)


class OpenAIError(Exception):
    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }
        return JSONResponse(body, status_code=self.status_code, headers=self.headers)


@dataclass(slots=True)
class ImageRequest:
    prompt: str
    n: int = 1
    aspect_ratio: str | None = None
    response_format: str = "b64_json"
    # The MIME type asked for with `output_format`; None keeps what the engine made.
    output_mime: str | None = None
    output_compression: int | None = None
    # Reference images for edits: base64 of uploaded files, or URLs / data URIs from JSON.
    references: list[str] = field(default_factory=list)


# --- the endpoints ----------------------------------------------------------------------------
_GENERATIONS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        "prompt": {"type": "string"},
                        "n": {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": 1},
                        "size": {"type": "string", "examples": ["1024x1024", "1536x1024", "auto"]},
                        "response_format": {"type": "string", "enum": ["url", "b64_json"]},
                        "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
                        "output_compression": {"type": "integer", "minimum": 0, "maximum": 100},
                        "model": {"type": "string", "description": "Ignored."},
                    },
                }
            }
        },
    }
}
_EDITS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image[]", "prompt"],
                    "properties": {
                        "image[]": {
                            "type": "array",
                            "maxItems": MAX_IMAGES,
                            "items": {"type": "string", "format": "binary"},
                        },
                        "prompt": {"type": "string"},
                        "n": {"type": "integer", "minimum": 1, "maximum": MAX_N},
                        "size": {"type": "string"},
                        "response_format": {"type": "string", "enum": ["url", "b64_json"]},
                        "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
                    },
                }
            }
        },
    }
}


_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_IMAGES = {
    "type": "object",
    "required": ["created", "data"],
    "properties": {
        "created": {"type": "integer"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"url": {"type": "string"}, "b64_json": {"type": "string"}},
            },
        },
        "output_format": {"type": "string", "enum": ["png", "jpeg", "webp", "gif"]},
    },
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The images",
        "content": {"application/json": {"schema": _IMAGES}},
    },
    **{
        status: {"description": why, "content": {"application/json": {"schema": _ERROR}}}
        for status, why in [
            (400, "An invalid field, or a task that ended FAILED"),
            (401, "Missing or invalid API key"),
            (500, "Internal Server Error"),
            (504, "The images were not ready in time; the tasks keep running"),
        ]
    },
}


@router.post(
    "/v1/images/generations",
    summary="OpenAI-compatible: create images from a prompt",
    description="OpenAI's Images API shape, answered when the images are ready. `Authorization: "
    "Bearer <imagegate key>`. `size` picks the nearest aspect ratio; `model` is ignored.",
    openapi_extra=_GENERATIONS_BODY,
    responses=RESPONSES,
)
async def images_generations(request: Request) -> JSONResponse:
    return await _answer(request, _parse_generation)


@router.post(
    "/v1/images/edits",
    summary="OpenAI-compatible: edit or combine images",
    description="Multipart with up to 3 files in `image[]` (or `image`) and a `prompt`; JSON "
    'with `images: [{"image_url": ...}]` also works. Masks are not supported.',
    openapi_extra=_EDITS_BODY,
    responses=RESPONSES,
)
async def images_edits(request: Request) -> JSONResponse:
    return await _answer(request, _parse_edit)


async def _answer(
    request: Request, parse: Callable[[Request], Awaitable[ImageRequest]]
) -> JSONResponse:
    try:
        owner = await _owner(request)
        wanted = await parse(request)
        return await _generate(request, owner, wanted)
    except OpenAIError as exc:
        return exc.response()
    except InvalidParams as exc:
        first = exc.params[0].name if exc.params else None
        message = "; ".join(f"{p.name}: {p.reason}" for p in exc.params)
        return OpenAIError(400, message, param=_openai_param(first)).response()
    except ApiError as exc:
        return OpenAIError(
            exc.status_code,
            exc.message,
            kind=_error_type(exc.status_code),
            code="rate_limit_exceeded" if exc.status_code == 429 else None,
            headers=exc.headers,
        ).response()
    except Exception:
        request_id = request.scope.get("state", {}).get("request_id", "-")
        log.exception("unhandled error in %s (request %s)", request.url.path, request_id)
        return OpenAIError(500, "Internal Server Error", kind="server_error").response()


async def _owner(request: Request) -> str:
    key = request.headers.get("x-freepik-api-key")
    authorization = request.headers.get("authorization")
    if not key and authorization:
        match = _BEARER.match(authorization)
        key = match.group(1) if match else None
    if not key:
        raise OpenAIError(401, "Missing API key", code="missing_api_key")
    owner = await request.app.state.keyring.owner_of(key)
    if owner is None:
        raise OpenAIError(401, "Invalid API key", code="invalid_api_key")
    return str(owner)


# --- parsing ----------------------------------------------------------------------------------
async def _parse_generation(request: Request) -> ImageRequest:
    body = await _json_body(request)
    return _image_request(body)


async def _parse_edit(request: Request) -> ImageRequest:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        body = await _json_body(request)
        wanted = _image_request(body)
        wanted.references = _json_images(body.get("images"))
    elif content_type.startswith("multipart/form-data"):
        fields, files = await _multipart(request)
        wanted = _image_request(fields)
        wanted.references = [base64.b64encode(data).decode("ascii") for data in files]
    else:
        raise OpenAIError(
            400, "Send the images as multipart/form-data (image[] files) or JSON (images)."
        )
    if not wanted.references:
        raise OpenAIError(400, "Missing required parameter: 'image'.", param="image")
    if len(wanted.references) > MAX_IMAGES:
        raise OpenAIError(
            400,
            f"{len(wanted.references)} images were sent; at most {MAX_IMAGES} are allowed.",
            param="image",
        )
    return wanted


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        raise OpenAIError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object.")
    return body


async def _multipart(request: Request) -> tuple[dict[str, Any], list[bytes]]:
    try:
        form = await request.form(max_files=MAX_IMAGES + 2, max_fields=64)
    except StarletteHTTPException as exc:
        raise OpenAIError(400, f"Could not read the multipart body: {exc.detail}") from None
    try:
        if form.get("mask") is not None:
            raise OpenAIError(
                400,
                "Masks are not supported: describe the change in the prompt instead.",
                param="mask",
            )
        files: list[bytes] = []
        for name in ("image[]", "image"):
            for item in form.getlist(name):
                if not isinstance(item, UploadFile):
                    raise OpenAIError(400, f"'{name}' must be an image file.", param="image")
                files.append(await item.read())
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        return fields, files
    finally:
        await form.close()


def _json_images(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise OpenAIError(400, "'images' must be an array.", param="images")
    urls = []
    for index, item in enumerate(value):
        url = item.get("image_url") if isinstance(item, dict) else None
        if not isinstance(url, str):
            raise OpenAIError(
                400,
                f"images[{index}] must be an object with an image_url (URL or data URI); "
                "file ids are not supported.",
                param=f"images[{index}]",
            )
        urls.append(url)
    return urls


def _image_request(body: dict[str, Any]) -> ImageRequest:
    prompt = body.get("prompt")
    if prompt is None:
        raise OpenAIError(400, "Missing required parameter: 'prompt'.", param="prompt")
    if not isinstance(prompt, str):
        raise OpenAIError(400, "'prompt' must be a string.", param="prompt")
    model = body.get("model")
    default_format = (
        # DALL·E answers with URLs unless told otherwise; GPT image models always with base64.
        "url" if isinstance(model, str) and model.startswith("dall-e") else "b64_json"
    )
    response_format = body.get("response_format") or default_format
    if response_format not in ("url", "b64_json"):
        raise OpenAIError(
            400,
            f"Invalid value: {response_format!r}. Supported values are: 'url' and 'b64_json'.",
            param="response_format",
        )
    output_format = body.get("output_format")
    if output_format is not None and output_format not in FORMATS:
        raise OpenAIError(
            400,
            f"Invalid value: {output_format!r}. Supported values are: 'png', 'jpeg' and 'webp'.",
            param="output_format",
        )
    n = _int_field(body, "n", 1, MAX_N)
    return ImageRequest(
        prompt=prompt,
        n=1 if n is None else n,
        aspect_ratio=_aspect_ratio(body.get("size")),
        response_format=response_format,
        output_mime=FORMATS[output_format] if output_format else None,
        output_compression=_int_field(body, "output_compression", 0, 100),
    )


def _int_field(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    """An optional integer field (None when absent), from JSON or multipart text."""
    value = body.get(name)
    if value is None or value == "":
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if number is None or not low <= number <= high:
        raise OpenAIError(
            400, f"'{name}' must be an integer from {low} to {high}; got {value!r}.", param=name
        )
    return number


def _aspect_ratio(size: object) -> str | None:
    """`1536x1024` -> the nearest aspect ratio the engines render ("3:2"); `auto` -> None."""
    if size is None or size == "auto":
        return None
    match = _SIZE.match(size) if isinstance(size, str) else None
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise OpenAIError(
            400,
            f"Invalid size {size!r}: use WIDTHxHEIGHT (e.g. 1024x1024, 1536x1024) or 'auto'.",
            param="size",
        )
    return nearest_ratio(f"{match.group(1)}:{match.group(2)}", list(GEMINI_SIZES))


# --- running -----------------------------------------------------------------------------------
async def _generate(request: Request, owner: str, wanted: ImageRequest) -> JSONResponse:
    service: TaskService = request.app.state.tasks
    new = NewTask(
        prompt=wanted.prompt,
        reference_images=wanted.references or None,
        webhook_url=None,
        extras={"aspect_ratio": wanted.aspect_ratio} if wanted.aspect_ratio else {},
    )
    base_url = base_url_of(request)
    request_id = request.scope.get("state", {}).get("request_id")
    created = [
        await service.create(owner, new, base_url=base_url, request_id=request_id)
        for _ in range(wanted.n)
    ]
    finished = await asyncio.gather(
        *(service.wait(owner, task.id, WAIT_SECONDS) for task in created)
    )
    done = [task for task in finished if task is not None and task.status.finished]
    if len(done) < len(created):
        ids = ", ".join(task.id for task in created)
        raise OpenAIError(
            504,
            f"The images were not ready within {WAIT_SECONDS:g} s. They are still being made "
            f"as task {ids} (GET /v1/ai/gemini-2-5-flash-image-preview/<task id>).",
            kind="server_error",
            code="timeout",
        )
    for task in done:
        if task.status is Status.FAILED:
            # Our worker already retried what was transient: this is final, not worth a retry.
            raise OpenAIError(
                400,
                task.error or "the image could not be made",
                kind="image_generation_error",
                code="image_generation_failed",
            )
    images = [(task, image) for task in done for image in task.generated][: wanted.n]
    data = [
        await _image_item(request, wanted, task, image.key, image.mime_type)
        for task, image in images
    ]
    mime = wanted.output_mime or (images[0][1].mime_type if images else "image/png")
    return JSONResponse(
        {
            "created": int(time.time()),
            "data": data,
            "output_format": "jpeg" if mime == "image/jpeg" else extension_for(mime),
        }
    )


async def _image_item(
    request: Request, wanted: ImageRequest, task: Task, key: str, mime: str
) -> dict[str, str]:
    storage: BlobStorage = request.app.state.storage
    target = wanted.output_mime or mime
    if wanted.response_format == "url" and target == mime:
        return {"url": request.app.state.presenter.image_url(task, key)}
    data = await storage.get(key)
    if data is None:
        raise OpenAIError(500, f"The image of task {task.id} is gone.", kind="server_error")
    if wanted.response_format == "b64_json":
        encoded = await asyncio.to_thread(_encoded, data, mime, target, wanted.output_compression)
        return {"b64_json": encoded}
    converted = await asyncio.to_thread(_convert, data, target, wanted.output_compression)
    # Beside the original, with the same unguessable token: `{token}-{n}.png` -> `.jpg`.
    converted_key = f"{key.rsplit('.', 1)[0]}.{extension_for(target)}"
    await storage.put(converted_key, converted, target)
    return {"url": request.app.state.presenter.image_url(task, converted_key)}


def _encoded(data: bytes, mime: str, target: str, quality: int | None) -> str:
    if target != mime:
        data = _convert(data, target, quality)
    return base64.b64encode(data).decode("ascii")


def _convert(data: bytes, target: str, quality: int | None) -> bytes:
    pillow_format = _PILLOW_FORMATS[target]
    with Image.open(io.BytesIO(data)) as opened:
        image = (
            opened.convert("RGB")
            if pillow_format == "JPEG" and opened.mode not in ("RGB", "L")
            else opened
        )
        out = io.BytesIO()
        options = {"quality": quality} if quality is not None and pillow_format != "PNG" else {}
        image.save(out, format=pillow_format, **options)
    return out.getvalue()


def _openai_param(name: str | None) -> str | None:
    """Our field names in OpenAI's terms: `reference_images[1]` is the second `image`."""
    if name is None:
        return None
    return name.replace("reference_images", "image")


def _error_type(status_code: int) -> str:
    if status_code >= 500:
        return "server_error"
    if status_code == 429:
        return "rate_limit_error"
    return "invalid_request_error"
