"""Reference images as the API takes them: base64 for local data, URLs passed through."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, Union

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

# A path to an image file, its bytes, a PIL image, or an http(s)/data: URL (sent as is).
Reference: TypeAlias = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, "PILImage"]

_URL_PREFIXES = ("http://", "https://", "data:")


def encode_reference(reference: Reference | Any) -> str:
    """The string the API's `reference_images` takes for one reference."""
    if isinstance(reference, str):
        if reference.startswith(_URL_PREFIXES):
            return reference
        return _encode_file(Path(reference))
    if isinstance(reference, os.PathLike):
        return _encode_file(Path(os.fspath(reference)))
    if isinstance(reference, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(reference)).decode("ascii")
    if type(reference).__module__.startswith("PIL."):
        return base64.b64encode(_pil_to_png(reference)).decode("ascii")
    raise TypeError(
        "a reference must be a file path, bytes, a PIL image or an http(s) URL, "
        f"not {type(reference).__name__}"
    )


def encode_references(references: list[Any] | tuple[Any, ...] | None) -> list[str] | None:
    if references is None:
        return None
    return [encode_reference(item) for item in references]


def _encode_file(path: Path) -> str:
    if not path.is_file():
        shown = str(path) if len(str(path)) <= 120 else str(path)[:117] + "..."
        raise FileNotFoundError(
            f"reference image {shown!r} is not a file (pass image data as bytes, "
            "and URLs with their http(s):// or data: prefix)"
        )
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _pil_to_png(image: Any) -> bytes:
    # PNG keeps every pixel; modes PNG cannot hold (CMYK, YCbCr, ...) become RGB first.
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
