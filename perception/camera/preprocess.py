"""Camera frames to detector input: validated uint8 RGB, resized to the network's 1248 x 384."""

from __future__ import annotations

import numpy as np
from PIL import Image

from perception.camera.anchors import INPUT_HEIGHT, INPUT_WIDTH

MAX_SIDE = 8192


def validate_image(image: np.ndarray) -> np.ndarray:
    """The image as contiguous uint8 (H, W, 3) RGB; ValueError naming what is wrong otherwise."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got dtype {arr.dtype}")
    h, w = arr.shape[:2]
    if not (16 <= h <= MAX_SIDE and 16 <= w <= MAX_SIDE):
        raise ValueError(f"image of {w} x {h} pixels is outside 16..{MAX_SIDE} per side")
    return np.ascontiguousarray(arr)


def to_network_input(image: np.ndarray, size: tuple[int, int] = (INPUT_WIDTH, INPUT_HEIGHT)) -> np.ndarray:
    """float32 (1, 3, H_in, W_in) RGB in [0, 255], resized bilinearly to ``size`` = (width, height)."""
    rgb = validate_image(image)
    if rgb.shape[1] != size[0] or rgb.shape[0] != size[1]:
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)
