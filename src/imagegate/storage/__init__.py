"""Blob storage behind one interface; `open_storage` picks the backend from the URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from imagegate.settings import Settings
from imagegate.storage.base import BlobStorage, content_type_for, extension_for
from imagegate.storage.local import LocalStorage
from imagegate.storage.s3 import S3Storage


def open_storage(url: str, *, presign: bool = False, presign_seconds: int = 3600) -> BlobStorage:
    """`presign` and `presign_seconds` apply to s3:// only: local blobs are served by the API."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        return S3Storage.from_url(url, presign=presign, presign_seconds=presign_seconds)
    if not parsed.scheme:
        return LocalStorage(Path(url))
    raise ValueError(
        f"IMAGEGATE_STORAGE_URL: unsupported scheme {parsed.scheme!r} (use file:// or s3://)"
    )


def storage_from_settings(settings: Settings) -> BlobStorage:
    return open_storage(
        settings.resolved_storage_url,
        presign=settings.storage_presign,
        presign_seconds=settings.storage_presign_seconds,
    )


__all__ = [
    "BlobStorage",
    "LocalStorage",
    "S3Storage",
    "content_type_for",
    "extension_for",
    "open_storage",
    "storage_from_settings",
]
