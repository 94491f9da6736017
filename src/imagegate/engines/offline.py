"""The offline engine: deterministic pictures drawn from the prompt and the references.

For development, demos without keys, and tests. Same prompt, references and ratio give the
same bytes; the prompt's words and the reference images are visible in the picture, and a
banner says it came from the offline engine, so nobody mistakes it for a real generation.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import textwrap

from PIL import Image, ImageDraw, ImageFont

from imagegate.engines.aspect import size_for
from imagegate.engines.base import EngineRequest, EngineResult, InputImage, OutputImage
from imagegate.settings import Settings

BANNER = "imagegate offline engine - not a real generation"


def _palette(digest: bytes) -> list[tuple[int, int, int]]:
    return [(digest[i], digest[i + 1], digest[i + 2]) for i in range(0, 30, 3)]


def _contrast(color: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (20, 20, 20) if luminance > 140 else (240, 240, 240)


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Parsing the font costs more than drawing with it: once per size, not per picture.
    return ImageFont.load_default(size=size)


def render(
    prompt: str, references: list[InputImage], size: tuple[int, int], seed: int | None
) -> bytes:
    """Draw the picture and encode it as PNG. CPU-bound: call it from a thread."""
    hasher = hashlib.sha256(prompt.encode())
    for ref in references:
        hasher.update(hashlib.sha256(ref.data).digest())
    hasher.update(f"{size[0]}x{size[1]}:{seed}".encode())
    digest = hasher.digest()
    colors = _palette(digest)
    width, height = size

    # Without references the picture has a dozen flat colours: a palette image draws and
    # encodes several times faster than RGB, which matters for pick-up latency. References
    # bring photos in, which need RGB.
    image = Image.new("RGB" if references else "P", size, colors[0])
    draw = ImageDraw.Draw(image)
    # A few flat shapes placed by the digest: distinct per prompt, and flat areas keep PNG
    # encoding fast, which matters for pick-up latency benchmarks.
    for i in range(6):
        x = digest[i + 10] * width // 256
        y = digest[i + 16] * height // 256
        radius = (digest[i + 22] % 96 + 64) * min(width, height) // 512
        box = (x - radius, y - radius, x + radius, y + radius)
        if i % 2:
            draw.ellipse(box, fill=colors[1 + i % 9])
        else:
            draw.rectangle(box, fill=colors[1 + i % 9])

    # The references, as thumbnails along the bottom.
    thumb_side = min(width, height) // 4
    for index, ref in enumerate(references):
        with Image.open(io.BytesIO(ref.data)) as source:
            source.draft("RGB", (thumb_side, thumb_side))
            thumb = source.convert("RGB")
            thumb.thumbnail((thumb_side, thumb_side))
        left = 24 + index * (thumb_side + 16)
        top = height - thumb_side - 64
        draw.rectangle(
            (left - 4, top - 4, left + thumb.width + 3, top + thumb.height + 3),
            fill=(255, 255, 255),
        )
        image.paste(thumb, (left, top))

    # The prompt's words, wrapped, on a panel so they are readable on any background.
    font_size = max(16, min(width, height) // 22)
    font = _font(font_size)
    chars_per_line = max(10, int(width / (font_size * 0.55)))
    lines = textwrap.wrap(prompt, chars_per_line)[:8] or [""]
    line_height = int(font_size * 1.25)
    panel_height = line_height * len(lines) + 24
    draw.rectangle((0, 0, width, panel_height), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((16, 12 + i * line_height), line, fill=(255, 255, 255), font=font)

    small = _font(max(12, font_size // 2))
    draw.rectangle((0, height - 32, width, height), fill=_contrast(colors[0]))
    draw.text((12, height - 26), BANNER, fill=colors[0], font=small)

    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


class OfflineEngine:
    name = "offline"

    def __init__(self, delay_ms: int = 0, concurrency: int = 16) -> None:
        self.delay_ms = delay_ms
        self.concurrency = concurrency

    @classmethod
    def from_settings(cls, settings: Settings) -> OfflineEngine:
        # With a delay the engine mostly waits, so many tasks can wait side by side.
        return cls(
            delay_ms=settings.offline_delay_ms, concurrency=64 if settings.offline_delay_ms else 16
        )

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        delay = f", {self.delay_ms} ms delay" if self.delay_ms else ""
        return f"offline (deterministic test pictures, no model{delay})"

    async def generate(self, request: EngineRequest) -> EngineResult:
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        size = size_for(request.aspect_ratio)
        data = await asyncio.to_thread(render, request.prompt, request.images, size, request.seed)
        return EngineResult(images=[OutputImage(data=data, mime_type="image/png")], model="offline")
