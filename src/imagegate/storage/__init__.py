"""Blob storage behind one interface; `open_storage` picks the backend from the URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from imagegate.storage.base import BlobStorage, content_type_for, extension_for
from imagegate.storage.local import LocalStorage


def open_storage(url: str) -> BlobStorage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.path)))
    if not parsed.scheme:
        return LocalStorage(Path(url))
    raise ValueError(
        f"IMAGEGATE_STORAGE_URL: unsupported scheme {parsed.scheme!r} (use file:// or s3://)"
    )


__all__ = ["BlobStorage", "LocalStorage", "content_type_for", "extension_for", "open_storage"]
