"""Camera images as uint8 (H, W, 3) RGB arrays (the API boundary's contract)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from perception.io.common import MalformedFileError, atomic_write, read_bytes

PathLike = str | os.PathLike[str]

MAX_IMAGE_PIXELS = 8192 * 8192


COLOUR_MODES = {"RGB", "RGBA", "P", "CMYK", "YCbCr"}


def decode_image(data: bytes, source: PathLike = "<bytes>", allow_grayscale: bool = False) -> np.ndarray:
    """PNG/JPEG bytes to uint8 RGB (H, W, 3).

    8-bit colour images (RGB, RGBA without its alpha, palette) are accepted. Grayscale images are
    refused unless ``allow_grayscale`` (the camera models were trained on colour), and 16-bit or float
    images are refused: their scaling to 8 bits is the caller's decision, not ours.
    """
    if not data:
        raise MalformedFileError(source, "empty file (0 bytes), not an image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width == 0 or img.height == 0:
                raise MalformedFileError(source, f"image of {img.width} x {img.height} pixels is empty")
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise MalformedFileError(source, f"image of {img.width} x {img.height} pixels is too large")
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise MalformedFileError(source, f"{img.mode} image (16-bit or float): convert it to 8-bit RGB first")
            if img.mode not in COLOUR_MODES and not (allow_grayscale and img.mode in ("L", "LA", "1")):
                raise MalformedFileError(
                    source, f"grayscale image (mode {img.mode}); the camera models need colour RGB"
                )
            rgb = img.convert("RGB")
            rgb.load()
    except UnidentifiedImageError:
        raise MalformedFileError(source, "not a PNG or JPEG image") from None
    except Image.DecompressionBombError as exc:
        raise MalformedFileError(source, f"image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, MalformedFileError):
            raise
        raise MalformedFileError(source, f"truncated or corrupt image ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


def read_image(path: PathLike) -> np.ndarray:
    return decode_image(read_bytes(path), path)


def write_image(path: PathLike, image: np.ndarray) -> Path:
    """Write uint8 (H, W, 3) RGB as PNG or JPEG (by suffix), atomically."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    suffix = Path(path).suffix.lower()
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(suffix)
    if fmt is None:
        raise ValueError(f"unknown image format {suffix!r}; use .png or .jpg")
    return atomic_write(path, lambda handle: Image.fromarray(arr).save(handle, format=fmt))
