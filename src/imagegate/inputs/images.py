"""Checking image bytes with Pillow: known format, sane size, not a decompression bomb."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


class ImageProblem(ValueError):
    """The bytes are not an image we accept; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    mime_type: str
    width: int
    height: int


def inspect_image(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Identify and check an image without decoding its pixels.

    The pixel count is read from the header and refused before anything is decoded, so a
    few-KB file that claims 50 megapixels costs nothing. `verify()` then walks the file's
    structure (PNG chunk CRCs, JPEG markers) to catch truncated or corrupt data.
    """
    if not data:
        raise ImageProblem("is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as image:
                fmt = image.format or ""
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageProblem(
                        f"claims {width}x{height} = {width * height:,} pixels; "
                        f"the limit is {max_pixels:,} pixels"
                    )
                image.verify()
    except ImageProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses in Image.open, before we see the size; its message carries the count.
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"claims {int(claimed.group(1)):,} pixels" if claimed else "is too large"
        raise ImageProblem(f"{size}; the limit is {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise ImageProblem("is not an image in a supported format (PNG, JPEG, WebP, GIF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(f"is not a valid image: {exc}") from None
    if fmt not in FORMATS:
        raise ImageProblem(f"has format {fmt or 'unknown'}; supported are PNG, JPEG, WebP and GIF")
    if width < 1 or height < 1:
        raise ImageProblem("has no pixels")
    return ImageInfo(mime_type=FORMATS[fmt], width=width, height=height)
