"""Error shapes of the spec. Every error is `{"message"}` or the validation problem with
`invalid_params`; FastAPI's own `{"detail"}` never reaches a client."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagegate.tasks.service import SERVICE_UNAVAILABLE, InvalidParam, InvalidParams, Refusal

VALIDATION_MESSAGE = "Your request parameters didn't validate."

STATUS_MESSAGES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: SERVICE_UNAVAILABLE,
}


class ApiError(Exception):
    """An answer the API gives on purpose: a status and a message for the client."""

    def __init__(
        self, status_code: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers


def message_response(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status_code, headers=headers)


def invalid_params_response(params: Iterable[InvalidParam]) -> JSONResponse:
    return JSONResponse(
        {
            "message": VALIDATION_MESSAGE,
            "invalid_params": [{"name": p.name, "reason": p.reason} for p in params],
        },
        status_code=400,
    )


def _field_name(loc: Sequence[Any]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def _reason(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "json_invalid":
        return "the request body is not valid JSON"
    if kind == "missing":
        return "is required"
    if kind in ("string_type", "list_type", "dict_type", "model_attributes_type"):
        expected = {
            "string_type": "a string",
            "list_type": "an array",
            "dict_type": "an object",
        }.get(kind, "an object")
        return f"must be {expected}"
    if kind == "too_long" and error.get("ctx", {}).get("max_length") == 3:
        return "at most 3 reference images are allowed"
    return str(error.get("msg", "is not valid"))


def validation_params(exc: RequestValidationError) -> list[InvalidParam]:
    params = []
    for error in exc.errors():
        loc = error.get("loc", ())
        name = _field_name(loc)
        if error.get("type") == "json_invalid" or (len(loc) == 1 and loc[0] == "body"):
            name = "body"
            if error.get("type") not in ("json_invalid", "missing"):
                params.append(InvalidParam(name, "must be a JSON object"))
                continue
            if error.get("type") == "missing":
                params.append(InvalidParam(name, "a JSON body is required"))
                continue
        params.append(InvalidParam(name, _reason(error)))
    return params


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_params_response(validation_params(exc))

    @app.exception_handler(InvalidParams)
    async def _invalid(_request: Request, exc: InvalidParams) -> JSONResponse:
        return invalid_params_response(exc.params)

    @app.exception_handler(Refusal)
    async def _refusal(_request: Request, exc: Refusal) -> JSONResponse:
        headers = {"retry-after": str(exc.retry_after)} if exc.retry_after else None
        return message_response(exc.status_code, exc.message, headers)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return message_response(exc.status_code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) and exc.status_code != 404 else None
        message = detail or STATUS_MESSAGES.get(exc.status_code, "Error")
        if exc.status_code == 404 and isinstance(exc.detail, str) and exc.detail != "Not Found":
            message = exc.detail
        return message_response(exc.status_code, message, getattr(exc, "headers", None))
