"""Per-point label files.

``.label`` follows SemanticKITTI: one little-endian uint32 per point, the class in the lower 16 bits
and the instance id in the upper 16 bits. ``.npy`` holds an integer (N,) class array.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from perception.io.common import MalformedFileError, atomic_write_bytes, read_bytes
from perception.io.squeezeseg import read_npy_array

PathLike = str | os.PathLike[str]


def read_point_labels_and_instances(path: PathLike, expected: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(classes (N,), instances (N,)) as int64; ``expected`` checks the count against the scan."""
    suffix = Path(path).suffix.lower()
    if suffix == ".label":
        data = read_bytes(path)
        if len(data) % 4:
            raise MalformedFileError(path, f"truncated label file: {len(data)} bytes is not a multiple of 4")
        raw = np.frombuffer(data, dtype="<u4")
        classes, instances = (raw & 0xFFFF).astype(np.int64), (raw >> 16).astype(np.int64)
    elif suffix == ".npy":
        arr = read_npy_array(path)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise MalformedFileError(path, f"expected an integer (N,) label array, got {arr.dtype} {arr.shape}")
        classes, instances = arr.astype(np.int64), np.zeros(arr.shape[0], dtype=np.int64)
    else:
        raise MalformedFileError(path, f"unknown label format {suffix or '(no suffix)'}; use .label or .npy")
    if expected is not None and classes.shape[0] != expected:
        raise MalformedFileError(path, f"{classes.shape[0]} labels for a scan of {expected} points")
    return classes, instances


def read_point_labels(path: PathLike, expected: int | None = None) -> np.ndarray:
    return read_point_labels_and_instances(path, expected)[0]


def write_point_labels(path: PathLike, classes: np.ndarray, instances: np.ndarray | None = None) -> Path:
    """Write a SemanticKITTI-style ``.label`` file, atomically."""
    cls = np.asarray(classes, dtype=np.int64)
    inst = np.zeros_like(cls) if instances is None else np.asarray(instances, dtype=np.int64)
    if cls.ndim != 1 or inst.shape != cls.shape:
        raise ValueError(f"classes and instances must be equal (N,) arrays, got {cls.shape} and {inst.shape}")
    if cls.size and (cls.min() < 0 or cls.max() > 0xFFFF or inst.min() < 0 or inst.max() > 0xFFFF):
        raise ValueError("classes and instance ids must lie in 0..65535")
    raw = (cls.astype(np.uint32) & 0xFFFF) | (inst.astype(np.uint32) << 16)
    return atomic_write_bytes(path, raw.astype("<u4").tobytes())
