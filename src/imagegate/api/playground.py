"""The web playground: a static page at `/` that uses the public API from the browser."""

from __future__ import annotations

import functools
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

from imagegate.api.errors import ApiError

router = APIRouter(include_in_schema=False)

ASSETS = {
    "playground.html": "text/html; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
}
# The page keeps an API key in localStorage: no script but ours may run, and only our own
# origin may be called. Images may come from elsewhere (IMAGEGATE_PUBLIC_URL, presigned S3).
HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob: http: https:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


@functools.cache
def _asset(name: str) -> bytes:
    return (files("imagegate") / "static" / name).read_bytes()


def _response(name: str) -> Response:
    return Response(_asset(name), media_type=ASSETS[name], headers=HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])
@router.api_route("/playground", methods=["GET", "HEAD"])
async def playground_page() -> Response:
    return _response("playground.html")


@router.api_route("/playground/{name}", methods=["GET", "HEAD"])
async def playground_asset(name: str) -> Response:
    if name not in ASSETS:
        raise ApiError(404, "Not Found")
    return _response(name)
