"""How a task looks to its owner: the GET body inside `data`, and the webhook payload."""

from __future__ import annotations

from typing import Any

from imagegate.storage import BlobStorage
from imagegate.tasks.model import Status, Task

FILES_PATH = "/v1/files/"


class TaskPresenter:
    def __init__(self, storage: BlobStorage, public_url: str | None) -> None:
        self.storage = storage
        self.public_url = public_url.rstrip("/") if public_url else None

    def image_url(self, task: Task, key: str) -> str:
        direct = self.storage.public_url(key)
        if direct:
            return direct
        base = self.public_url or str(task.options.get("base_url", "")).rstrip("/")
        return f"{base}{FILES_PATH}{key}"

    def __call__(self, task: Task) -> dict[str, Any]:
        body: dict[str, Any] = {
            "task_id": task.id,
            "status": task.status.value,
            "generated": [self.image_url(task, g.key) for g in task.generated]
            if task.status is Status.COMPLETED
            else [],
        }
        if task.status is Status.FAILED:
            body["error"] = task.error or "the task failed"
        if task.model:
            body["model"] = task.model
        if task.text:
            body["text"] = task.text
        return body
