"""A task as the SDK hands it out: the server's fields, plus the image bytes once downloaded."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FINISHED = frozenset({"COMPLETED", "FAILED"})


@dataclass(slots=True)
class Task:
    task_id: str
    status: str
    # Absolute URLs of the images (COMPLETED only).
    generated: list[str] = field(default_factory=list)
    # Why a FAILED task failed (an imagegate extension; the hosted API may leave it out).
    error: str | None = None
    model: str | None = None
    text: str | None = None
    # The bytes behind `generated`, in the same order, once downloaded.
    images: list[bytes] = field(default_factory=list, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Task:
        return cls(
            task_id=str(data.get("task_id", "")),
            status=str(data.get("status", "")),
            generated=[str(url) for url in data.get("generated") or []],
            error=_optional_str(data.get("error")),
            model=_optional_str(data.get("model")),
            text=_optional_str(data.get("text")),
            raw=dict(data),
        )

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def completed(self) -> bool:
        return self.status == "COMPLETED"

    def to_json(self) -> dict[str, Any]:
        """The server's task object (what GET returns inside `data`)."""
        return dict(self.raw) or {
            "task_id": self.task_id,
            "status": self.status,
            "generated": list(self.generated),
        }

    def save(self, path: str | os.PathLike[str] | None = None) -> list[Path]:
        """Write the downloaded images and return their paths.

        `path` is a file name for one image; with several, `out.png` becomes `out-1.png`,
        `out-2.png`, ... unless it holds `{n}` (`shot-{n}.png`). A name without an extension
        gets the image's own; no name at all means `<task_id>.<ext>` in the current directory.
        """
        if not self.images:
            raise ValueError(f"task {self.task_id} has no downloaded images (status {self.status})")
        paths = output_paths(path, self.images, default_stem=self.task_id)
        for target, data in zip(paths, self.images, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return paths


def image_extension(data: bytes) -> str:
    """The file extension for image bytes, from their signature."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return "bin"


def output_paths(
    path: str | os.PathLike[str] | None, images: list[bytes], *, default_stem: str
) -> list[Path]:
    """The file names `Task.save` (and the CLI) write `images` to."""
    count = len(images)
    if path is None:
        pattern = default_stem if count == 1 else f"{default_stem}-{{n}}"
    else:
        pattern = os.fspath(path)
    if "{n}" in pattern:
        names = [Path(pattern.replace("{n}", str(i))) for i in range(1, count + 1)]
    elif count == 1:
        names = [Path(pattern)]
    else:
        base = Path(pattern)
        names = [base.with_name(f"{base.stem}-{i}{base.suffix}") for i in range(1, count + 1)]
    return [
        name if name.suffix else name.with_name(f"{name.name}.{image_extension(data)}")
        for name, data in zip(names, images, strict=True)
    ]


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
