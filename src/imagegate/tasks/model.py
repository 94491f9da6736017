"""The Task record and its state machine."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(enum.StrEnum):
    CREATED = "CREATED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def finished(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED)


# Which status may follow which. Nothing ever goes backwards: a task retried after a
# lease expiry or a transient error stays IN_PROGRESS while it waits for its next attempt.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.CREATED: frozenset({Status.IN_PROGRESS, Status.FAILED}),
    Status.IN_PROGRESS: frozenset({Status.IN_PROGRESS, Status.COMPLETED, Status.FAILED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
}


def can_move(old: Status, new: Status) -> bool:
    return new in TRANSITIONS[old]


def statuses_before(new: Status) -> list[Status]:
    """The statuses a task may be in to move to `new`."""
    return [old for old in Status if can_move(old, new)]


@dataclass(frozen=True, slots=True)
class ReferenceSpec:
    """One reference image as the task keeps it: a blob we stored at POST, or a URL to fetch."""

    kind: str  # "blob" | "url"
    value: str  # blob key or URL
    mime_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "mime_type": self.mime_type}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReferenceSpec:
        return cls(kind=data["kind"], value=data["value"], mime_type=data.get("mime_type"))


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """An output image as the task keeps it: where its bytes live and what they are."""

    key: str
    mime_type: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "mime_type": self.mime_type}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GeneratedImage:
        return cls(key=data["key"], mime_type=data["mime_type"])


@dataclass(slots=True)
class Task:
    id: str
    owner: str
    status: Status
    prompt: str
    references: list[ReferenceSpec]
    options: dict[str, Any]
    webhook_url: str | None
    created_at: float
    updated_at: float
    generated: list[GeneratedImage] = field(default_factory=list)
    error: str | None = None
    engine: str | None = None
    model: str | None = None
    text: str | None = None
    attempts: int = 0
    request_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    lease_owner: str | None = None
    available_at: float | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    created_at: float
    revoked_at: float | None = None
