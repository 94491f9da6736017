"""Persistence behind one interface (`Store`); `open_store` picks the backend from the URL."""

from __future__ import annotations

from imagegate.settings import Settings
from imagegate.storage import BlobStorage
from imagegate.store.base import Presenter, Store
from imagegate.store.sql import SqlStore
from imagegate.tasks.presenter import TaskPresenter


def open_store(url: str, presenter: Presenter) -> Store:
    return SqlStore(url, presenter)


async def start_store(settings: Settings, storage: BlobStorage) -> tuple[TaskPresenter, Store]:
    """The store of these settings, migrated and ready, with the presenter its webhook
    payloads are rendered by (image URLs depend on the storage)."""
    presenter = TaskPresenter(storage, settings.public_url)
    store = open_store(settings.resolved_database_url, presenter)
    await store.start()
    return presenter, store


__all__ = ["Presenter", "SqlStore", "Store", "open_store", "start_store"]
