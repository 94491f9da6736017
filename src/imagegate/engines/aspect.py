"""Aspect ratios: the hosted API's names (`widescreen_16_9`) and plain `16:9`."""

from __future__ import annotations

import math
import re

_NAMED = re.compile(r"^[a-z_]*?_?(\d{1,2})_(\d{1,2})$")
_PLAIN = re.compile(r"^(\d{1,2})\s*[:x/]\s*(\d{1,2})$")

# Gemini 2.5 Flash Image's ratios and the sizes it renders them at; also the offline
# engine's sizes, so both engines answer the same request with the same shape.
GEMINI_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}


def parse_aspect_ratio(value: object) -> str | None:
    """`widescreen_16_9`, `16:9`, `16x9` -> "16:9"; anything else -> None."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    match = _PLAIN.match(text) or _NAMED.match(text)
    if not match:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    if width == 0 or height == 0:
        return None
    return f"{width}:{height}"


def ratio_value(ratio: str) -> float:
    width, height = ratio.split(":")
    return int(width) / int(height)


def nearest_ratio(ratio: str, supported: list[str]) -> str:
    """The supported ratio closest to `ratio` (distance in log space, so 2:1 and 1:2 are symmetric)."""
    target = math.log(ratio_value(ratio))
    return min(supported, key=lambda r: abs(math.log(ratio_value(r)) - target))


def size_for(ratio: str | None, *, area: int = 1024 * 1024, multiple: int = 16) -> tuple[int, int]:
    """Width and height for a ratio: Gemini's own sizes where it has one, else ~`area` pixels."""
    if ratio is None:
        ratio = "1:1"
    if ratio in GEMINI_SIZES and area == 1024 * 1024:
        return GEMINI_SIZES[ratio]
    value = ratio_value(ratio)
    width = math.sqrt(area * value)
    height = width / value
    return (
        max(multiple, round(width / multiple) * multiple),
        max(multiple, round(height / multiple) * multiple),
    )
