"""Reference images: raw base64, data URIs and http(s) URLs.

At POST, base64 items are decoded and checked, URLs only for syntax. In the worker, stored
blobs are read back and URLs are fetched through the outbound guard and checked the same way.
"""

from __future__ import annotations

import asyncio
import binascii
import re
from dataclasses import dataclass

from imagegate.engines.base import InputImage
from imagegate.inputs.images import ImageProblem, inspect_image
from imagegate.net import (
    GuardedClient,
    OutboundError,
    fetch_image_bytes,
    redact_url,
    validate_url_syntax,
)
from imagegate.storage import BlobStorage
from imagegate.tasks.model import ReferenceSpec

_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I
)
_WHITESPACE = re.compile(r"\s+")
_WHITESPACE_CHARS = " \n\r\t\f\v"


class ReferenceProblem(ValueError):
    """A reference image we cannot use. `field` names it the way clients wrote it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DecodedReference:
    data: bytes
    mime_type: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class UrlReference:
    url: str


ParsedReference = DecodedReference | UrlReference


def field_name(index: int) -> str:
    return f"reference_images[{index}]"


def _decode_base64(text: str, field: str, max_bytes: int) -> bytes:
    # Megabytes of base64 per item: every pass over the text counts. Whitespace is rare, so
    # test for it before paying for a regex substitution (a copy of the whole string).
    compact = _WHITESPACE.sub("", text) if any(c in text for c in _WHITESPACE_CHARS) else text
    # Refuse oversized items from their length, before spending memory on decoding them.
    if len(compact) * 3 // 4 > max_bytes + 3:
        raise ReferenceProblem(field, f"decodes to more than the limit of {max_bytes:,} bytes")
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    if len(compact) % 4:
        compact += "=" * (-len(compact) % 4)
    try:
        # strict_mode: any character outside the alphabet is an error, as b64decode's
        # validate=True, without its regex pass and bytes copy.
        data = binascii.a2b_base64(compact, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ReferenceProblem(
            field, "is neither valid base64, a data: URI, nor an http(s) URL"
        ) from None
    if len(data) > max_bytes:
        raise ReferenceProblem(field, f"decodes to more than the limit of {max_bytes:,} bytes")
    return data


def parse_reference(
    item: object, index: int, *, max_bytes: int, max_pixels: int
) -> ParsedReference:
    """Classify and check one item of `reference_images` (CPU-bound for base64: use a thread)."""
    field = field_name(index)
    if not isinstance(item, str):
        raise ReferenceProblem(
            field, "must be a string: base64 image data, a data: URI or an http(s) URL"
        )
    text = item.strip()
    if not text:
        raise ReferenceProblem(field, "is empty")
    lowered = text[:10].lower()
    if lowered.startswith(("http://", "https://")):
        reason = validate_url_syntax(text)
        if reason:
            raise ReferenceProblem(field, reason)
        return UrlReference(text)
    if lowered.startswith("data:"):
        match = _DATA_URI.match(text)
        if not match or not match.group("b64"):
            raise ReferenceProblem(field, "data: URIs must look like data:image/png;base64,<data>")
        mime = (match.group("mime") or "").lower()
        if mime and not mime.startswith("image/"):
            raise ReferenceProblem(field, f"data: URI has type {mime}; an image type is required")
        payload = text[match.end() :]
    elif "://" in text[:16]:
        raise ReferenceProblem(field, "URLs must use http or https")
    else:
        payload = text
    data = _decode_base64(payload, field, max_bytes)
    try:
        info = inspect_image(data, max_pixels=max_pixels)
    except ImageProblem as exc:
        raise ReferenceProblem(field, str(exc)) from None
    return DecodedReference(
        data=data, mime_type=info.mime_type, width=info.width, height=info.height
    )


async def load_reference(
    spec: ReferenceSpec,
    index: int,
    storage: BlobStorage,
    *,
    max_bytes: int,
    max_pixels: int,
    fetch_timeout: float,
    allow_private: bool,
    client: GuardedClient | None = None,
) -> InputImage:
    """Bring one reference of a task into memory, checked, for an engine."""
    field = field_name(index)
    if spec.kind == "blob":
        data = await storage.get(spec.value)
        if data is None:
            raise ReferenceProblem(
                field, "the stored copy of this image is missing from blob storage"
            )
    else:
        try:
            fetched = await fetch_image_bytes(
                spec.value,
                max_bytes=max_bytes,
                timeout=fetch_timeout,
                allow_private=allow_private,
                client=client,
            )
        except OutboundError as exc:
            raise ReferenceProblem(
                field, f"could not fetch {redact_url(spec.value)}: {exc.reason}"
            ) from None
        data = fetched.data
    try:
        info = await asyncio.to_thread(inspect_image, data, max_pixels=max_pixels)
    except ImageProblem as exc:
        raise ReferenceProblem(field, str(exc)) from None
    return InputImage(data=data, mime_type=info.mime_type, width=info.width, height=info.height)
