"""SqueezeSeg ``.npy`` range tensors: float32 (H, W, 6) with x, y, z, intensity, range, label.

The public SqueezeSeg data (KITTI-derived, 64 x 512) uses this layout; range 0 marks an empty pixel
and labels are 0 unknown, 1 car, 2 pedestrian, 3 cyclist. This project also writes -1 (``IGNORE_LABEL``)
for points left out of training and scoring (``perception data kitti-to-squeezeseg``: points in Van,
Truck, Tram, Misc, Person_sitting boxes and DontCare regions).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from perception.io.common import MalformedFileError, atomic_write

PathLike = str | os.PathLike[str]

SQUEEZESEG_CHANNELS = ("x", "y", "z", "intensity", "range", "label")
NUM_CLASSES = 4
IGNORE_LABEL = -1


def read_npy_array(path: PathLike) -> np.ndarray:
    """A ``.npy`` array, never unpickling objects; errors name the file."""
    try:
        return np.load(Path(path), allow_pickle=False)
    except FileNotFoundError:
        raise MalformedFileError(path, "no such file") from None
    except (ValueError, EOFError, OSError) as exc:
        raise MalformedFileError(path, f"not a readable .npy array ({exc})") from None


def read_squeezeseg_npy(path: PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A SqueezeSeg tensor (H, W, 6) float32, checked for shape, finiteness and label values."""
    arr = read_npy_array(path)
    if arr.ndim != 3 or arr.shape[2] != len(SQUEEZESEG_CHANNELS):
        raise MalformedFileError(path, f"expected a (H, W, 6) SqueezeSeg tensor, got shape {arr.shape}")
    if shape is not None and arr.shape[:2] != tuple(shape):
        raise MalformedFileError(path, f"expected {shape[0]} x {shape[1]} pixels, got {arr.shape[0]} x {arr.shape[1]}")
    if arr.dtype.kind != "f":
        raise MalformedFileError(path, f"expected float values, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise MalformedFileError(path, "holds NaN or infinite values")
    labels = arr[..., 5]
    if np.any((labels != np.round(labels)) | (labels < IGNORE_LABEL) | (labels >= NUM_CLASSES)):
        raise MalformedFileError(path, f"labels must be integers 0..{NUM_CLASSES - 1} or {IGNORE_LABEL} (not scored)")
    if np.any(arr[..., 4] < 0):
        raise MalformedFileError(path, "negative range values")
    return arr


def write_squeezeseg_npy(path: PathLike, tensor: np.ndarray) -> Path:
    arr = np.asarray(tensor)
    if arr.ndim != 3 or arr.shape[2] != len(SQUEEZESEG_CHANNELS):
        raise ValueError(f"expected a (H, W, 6) SqueezeSeg tensor, got shape {arr.shape}")
    return atomic_write(path, lambda handle: np.save(handle, arr.astype(np.float32), allow_pickle=False))


def split_squeezeseg(tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (5, H, W) float32, mask (H, W) bool, labels (H, W) int64) of a SqueezeSeg tensor."""
    image = np.ascontiguousarray(tensor[..., :5].transpose(2, 0, 1), dtype=np.float32)
    mask = tensor[..., 4] > 0
    labels = tensor[..., 5].astype(np.int64)
    return image, mask, labels
