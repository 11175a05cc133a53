"""Image bytes → the float32 NCHW tensor a model wants, as its `model.toml` says.

Runs in the worker threads, so decoding overlaps with `session.run` in the batcher thread.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from onnxq.errors import ImageDecodeError
from onnxq.images import open_checked
from workers.modelconfig import InputSpec

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def to_mode(image: Image.Image, color_mode: str) -> Image.Image:
    """Convert any Pillow mode (palette, alpha, CMYK, 16-bit, float) to "L" or "RGB"."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "F":
        # Pillow's own I;16 → L conversion clips at 255; scale the real range down instead.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become black, as an unexposed film would be.
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert(color_mode) if image.mode != color_mode else image


def decode(data: bytes, spec: InputSpec, *, max_bytes: int, max_pixels: int, min_side_px: int) -> Image.Image:
    """Decode, upright (EXIF orientation), convert and resize to the model's input size."""
    image = open_checked(data, max_bytes=max_bytes, max_pixels=max_pixels, min_side_px=min_side_px)
    try:
        if image.format == "JPEG":
            # Let libjpeg decode at a reduced scale (and straight to grey when the model wants L):
            # several times faster for large photos. Square request: EXIF may rotate it.
            side = max(spec.width, spec.height)
            image.draft(spec.color_mode, (side, side))
        image.load()
        image = ImageOps.exif_transpose(image)
        image = to_mode(image, spec.color_mode)
        if image.size != (spec.width, spec.height):
            image = image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(
            f"The image could not be decoded ({type(exc).__name__}: {str(exc)[:120]}); it may be truncated or corrupt."
        ) from exc
    return image


def to_tensor(image: Image.Image, spec: InputSpec) -> NDArray[np.float32]:
    """A decoded image → CHW float32, scaled to [0, 1] then normalised by mean and std."""
    array = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
    if array.ndim == 2:
        array = array[:, :, None]
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = np.float32(1) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((array - mean) * inv_std).transpose(2, 0, 1))


def preprocess(
    data: bytes, spec: InputSpec, *, max_bytes: int, max_pixels: int, min_side_px: int
) -> NDArray[np.float32]:
    """Image bytes → one CHW float32 tensor for `spec`."""
    image = decode(data, spec, max_bytes=max_bytes, max_pixels=max_pixels, min_side_px=min_side_px)
    return to_tensor(image, spec)
