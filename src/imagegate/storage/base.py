"""The blob storage interface: references and outputs, by key."""

from __future__ import annotations

import mimetypes
from typing import Protocol

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def extension_for(mime_type: str) -> str:
    return EXTENSIONS.get(mime_type) or (mimetypes.guess_extension(mime_type) or ".bin").lstrip(".")


def content_type_for(key: str) -> str:
    guessed, _ = mimetypes.guess_type(key)
    return guessed or "application/octet-stream"


class BlobStorage(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None: ...
    async def get(self, key: str) -> bytes | None: ...
    async def delete_prefix(self, prefix: str) -> None: ...
    async def ping(self) -> None: ...
    def public_url(self, key: str) -> str | None:
        """A URL clients can fetch directly (e.g. presigned S3), or None to serve through the API."""
        ...
