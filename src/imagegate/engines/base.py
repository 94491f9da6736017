"""The engine interface. An engine knows nothing of HTTP, tasks or storage: it takes a prompt
and decoded images and returns images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class InputImage:
    """A reference image, already fetched and checked: real bytes of a known format."""

    data: bytes
    mime_type: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class EngineRequest:
    prompt: str
    images: list[InputImage] = field(default_factory=list)
    # Normalised "W:H" (see engines.aspect.parse_aspect_ratio), or None for the engine's default.
    aspect_ratio: str | None = None
    seed: int | None = None
    # Extension fields the client sent that an engine may honour (resolution, steps, ...).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutputImage:
    data: bytes
    mime_type: str


@dataclass(slots=True)
class EngineResult:
    images: list[OutputImage]
    model: str | None = None
    # What the model said besides its images (Gemini's commentary), kept on the task.
    text: str | None = None


class EngineError(Exception):
    """A generation that did not produce images.

    `retryable` errors (rate limits, overload, timeouts) give the task another attempt;
    the others end it FAILED with `message`, which users read: say what happened and,
    where possible, what to change.
    """

    def __init__(
        self, message: str, *, retryable: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class Engine(Protocol):
    name: str
    # How many tasks a worker process should run at once with this engine (IMAGEGATE_WORKER_CONCURRENCY
    # overrides): hundreds for a remote API, one per device for a local model.
    concurrency: int

    async def start(self) -> None:
        """Load models, open clients. Called once per worker process before any task."""
        ...

    async def close(self) -> None: ...

    async def generate(self, request: EngineRequest) -> EngineResult:
        """Make images, or raise EngineError. Must not block the event loop."""
        ...

    def describe(self) -> str:
        """One line for the start-up log: which engine, which model, where."""
        ...
