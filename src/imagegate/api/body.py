"""Reading JSON bodies without keeping copies of them.

Starlette's `request.body()` joins the chunks into a second buffer and caches it for the
whole request; with 16 MB of base64 references that is two needless copies. Here the body is
read into one buffer sized from Content-Length, parsed, and dropped before any work starts.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from imagegate.tasks.service import InvalidParam, InvalidParams


async def read_json(request: Request) -> Any:
    declared = request.headers.get("content-length", "")
    buffer = bytearray(int(declared)) if declared.isdigit() else bytearray()
    filled = 0
    async for chunk in request.stream():
        end = filled + len(chunk)
        if end <= len(buffer):
            buffer[filled:end] = chunk
        else:
            # More than declared (or no Content-Length): grow. The size limit is enforced
            # by BodySizeLimitMiddleware before this point.
            del buffer[filled:]
            buffer += chunk
        filled = end
    del buffer[filled:]
    if not buffer.strip():
        raise InvalidParams([InvalidParam("body", "a JSON body is required")])
    try:
        return json.loads(buffer)
    except (ValueError, UnicodeDecodeError):
        raise InvalidParams([InvalidParam("body", "the request body is not valid JSON")]) from None
