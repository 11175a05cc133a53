"""Cheap, safe checks of an uploaded image, shared by the producer and the worker.

Only the header is read here: the byte size, the format, the declared dimensions. A decompression
bomb (a small file declaring a huge image) is refused before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from onnxq.errors import ImageDecodeError, ImageTooManyPixels, ImageTooSmall, InputTooLarge, NotAnImage

# Our own pixel limit is checked against the header before decoding; Pillow's own guard stays on
# as a second line, set well above ours.
Image.MAX_IMAGE_PIXELS = 1_000_000_000


def image_limits() -> dict[str, int]:
    """The configured input limits, as keyword arguments for `open_checked` and friends."""
    from onnxq.settings import get_settings

    settings = get_settings()
    return {
        "max_bytes": settings.max_image_bytes,
        "max_pixels": settings.max_image_pixels,
        "min_side_px": settings.min_image_side_px,
    }


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an accepted image says."""

    format: str
    width: int
    height: int
    mode: str
    byte_size: int


def open_checked(data: bytes, *, max_bytes: int, max_pixels: int, min_side_px: int) -> Image.Image:
    """Open `data` lazily (header only) after checking size, format and declared dimensions."""
    if len(data) > max_bytes:
        raise InputTooLarge(
            f"The image is {len(data) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB. "
            "Send a smaller or more compressed image."
        )
    if not data:
        raise NotAnImage("The file is empty; send a PNG, JPEG or other image file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise NotAnImage(
                "The file is not an image format onnxq can read; send a PNG, JPEG, BMP, TIFF or WebP file."
            ) from exc
        raise ImageTooManyPixels(f"The image declares too many pixels ({exc}).") from exc
    except Exception as exc:  # Pillow raises assorted errors for corrupt headers
        raise ImageDecodeError(f"The image header is corrupt and cannot be read ({type(exc).__name__}).") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooManyPixels(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}. "
            "Downscale it before sending."
        )
    if min(width, height) < min_side_px:
        raise ImageTooSmall(
            f"The image is {width}x{height}; each side needs at least {min_side_px} pixels to classify."
        )
    return image


def inspect_image(data: bytes, *, max_bytes: int, max_pixels: int, min_side_px: int) -> ImageInfo:
    """Validate an upload cheaply (no full decode) and describe it."""
    image = open_checked(data, max_bytes=max_bytes, max_pixels=max_pixels, min_side_px=min_side_px)
    return ImageInfo(
        format=image.format or "unknown",
        width=image.size[0],
        height=image.size[1],
        mode=image.mode,
        byte_size=len(data),
    )
