"""Persistence behind one interface (`Store`); `open_store` picks the backend from the URL."""

from __future__ import annotations

from imagegate.store.base import Presenter, Store
from imagegate.store.sql import SqlStore


def open_store(url: str, presenter: Presenter) -> Store:
    return SqlStore(url, presenter)


__all__ = ["Presenter", "SqlStore", "Store", "open_store"]
