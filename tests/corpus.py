"""Bad and awkward inputs, built on the fly: every one must work or fail its own job clearly."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def xray_like(size: int = 256, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    _yy, xx = np.mgrid[0:size, 0:size]
    body = 120 + 60 * np.exp(-(((xx - size / 2) / (size / 3)) ** 2))
    noise = rng.normal(0, 12, (size, size))
    return Image.fromarray(np.clip(body + noise, 0, 255).astype(np.uint8))


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header declares a huge image (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    # One compressed row of zeros repeated compresses to almost nothing.
    raw = zlib.compress(b"\x00" * (width + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def exif_rotated_jpeg() -> tuple[bytes, Image.Image]:
    """A JPEG stored sideways with EXIF orientation 6 (rotate 90° CW to view), and the upright image."""
    upright = Image.new("L", (160, 320), 0)
    upright.paste(255, (0, 0, 160, 80))  # bright band at the top when upright
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera would write
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes()), upright


def corpus() -> dict[str, tuple[bytes, str | None]]:
    """name → (bytes, expected error code or None when the image must be classified)."""
    good = xray_like()
    good_jpeg = encode(good.convert("RGB"), "JPEG", quality=90)
    sixteen = Image.fromarray(np.asarray(good, dtype=np.uint16) * 257)  # mode I;16
    cmyk = good.convert("RGB").convert("CMYK")
    palette = good.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    rgba = good.convert("RGBA")
    rotated, _ = exif_rotated_jpeg()
    return {
        "good.png": (encode(good, "PNG"), None),
        "good.jpg": (good_jpeg, None),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "image_decode_failed"),
        "bomb.png": (png_bomb(), "image_too_many_pixels"),
        "text.png": (b"this is not an image, just text renamed .png\n" * 10, "not_an_image"),
        "huge.bin": (b"\xff\xd8\xff" + b"\x00" * (11 * 1024 * 1024), "input_too_large"),
        "tiny.png": (encode(Image.new("L", (1, 1), 128), "PNG"), "image_too_small"),
        "sixteen.png": (encode(sixteen, "PNG"), None),
        "cmyk.jpg": (encode(cmyk, "JPEG"), None),
        "palette.png": (encode(palette, "PNG"), None),
        "rgba.png": (encode(rgba, "PNG"), None),
        "rotated.jpg": (rotated, None),
        "empty.png": (b"", "not_an_image"),
    }
