"""KITTI object-benchmark files: velodyne scans, ``label_2`` objects and ``calib`` matrices.

Coordinate frames:

* velodyne (LiDAR): x forward, y left, z up, metres;
* reference camera (cam0, unrectified): x right, y down, z forward; ``Tr_velo_to_cam`` maps velodyne
  points into it;
* rectified camera: ``R0_rect`` applied to the reference camera; label locations are in this frame;
* image (left colour camera, ``image_2``): pixels, obtained with the 3x4 projection ``P2`` from
  rectified camera coordinates.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perception.io.common import (
    MalformedFileError,
    atomic_write_bytes,
    atomic_write_text,
    read_bytes,
    read_text,
)

PathLike = str | os.PathLike[str]

KITTI_OBJECT_TYPES = (
    "Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare",
)  # fmt: skip


# --- velodyne ---------------------------------------------------------------------------------


def read_velodyne_bin(path: PathLike) -> np.ndarray:
    """A KITTI velodyne scan: float32 (N, 4) x, y, z (metres, LiDAR frame), reflectance in [0, 1]."""
    data = read_bytes(path)
    if len(data) % 16:
        raise MalformedFileError(
            path, f"truncated velodyne scan: {len(data)} bytes is not a whole number of 16-byte points"
        )
    return np.frombuffer(data, dtype="<f4").reshape(-1, 4).copy()


def write_velodyne_bin(path: PathLike, points: np.ndarray) -> Path:
    """Write (N, 4) points as little-endian float32, atomically."""
    arr = np.asarray(points)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"velodyne points must be (N, 4), got {arr.shape}")
    return atomic_write_bytes(path, np.ascontiguousarray(arr, dtype="<f4").tobytes())


# --- labels -----------------------------------------------------------------------------------


@dataclass
class KittiObject:
    """One line of a KITTI ``label_2`` file.

    ``bbox`` is (x1, y1, x2, y2) in image pixels; ``dimensions`` (h, w, l) in metres; ``location``
    (x, y, z) the bottom centre of the 3D box in rectified camera coordinates; ``rotation_y`` the yaw
    about the camera's y axis in radians; ``score`` only in result files (16th field).
    """

    type: str
    truncated: float = 0.0
    occluded: int = 0
    alpha: float = -10.0
    bbox: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    dimensions: tuple[float, float, float] = (-1.0, -1.0, -1.0)
    location: tuple[float, float, float] = (-1000.0, -1000.0, -1000.0)
    rotation_y: float = -10.0
    score: float | None = None

    @property
    def height_px(self) -> float:
        return self.bbox[3] - self.bbox[1]

    def to_line(self) -> str:
        """The label line; floats are written in their shortest exact form so reading back is lossless."""
        values: list[float] = [
            self.truncated, float(self.occluded), self.alpha, *self.bbox, *self.dimensions,
            *self.location, self.rotation_y,
        ]  # fmt: skip
        if self.score is not None:
            values.append(self.score)
        parts = [self.type] + [_fmt(v) if i != 1 else str(int(v)) for i, v in enumerate(values)]
        return " ".join(parts)


def _fmt(value: float) -> str:
    return repr(float(value))


def parse_label_line(line: str, path: PathLike = "<label>", lineno: int = 1) -> KittiObject:
    fields = line.split()
    if len(fields) not in (15, 16):
        raise MalformedFileError(path, f"line {lineno}: expected 15 or 16 fields, got {len(fields)}")
    try:
        nums = [float(f) for f in fields[1:]]
    except ValueError as exc:
        raise MalformedFileError(path, f"line {lineno}: {exc}") from None
    if not all(math.isfinite(v) for v in nums):
        raise MalformedFileError(path, f"line {lineno}: non-finite value")
    if nums[1] != int(nums[1]):
        raise MalformedFileError(path, f"line {lineno}: occluded must be an integer, got {fields[2]}")
    return KittiObject(
        type=fields[0],
        truncated=nums[0],
        occluded=int(nums[1]),
        alpha=nums[2],
        bbox=(nums[3], nums[4], nums[5], nums[6]),
        dimensions=(nums[7], nums[8], nums[9]),
        location=(nums[10], nums[11], nums[12]),
        rotation_y=nums[13],
        score=nums[14] if len(nums) == 15 else None,
    )


def read_label(path: PathLike) -> list[KittiObject]:
    """All objects of a KITTI label (or result) file; blank lines are skipped."""
    text = read_text(path)
    return [parse_label_line(line, path, i) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def write_label(path: PathLike, objects: Iterable[KittiObject]) -> Path:
    lines = [obj.to_line() for obj in objects]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


# --- calibration ------------------------------------------------------------------------------


CALIB_SHAPES: dict[str, tuple[int, int]] = {
    "P0": (3, 4), "P1": (3, 4), "P2": (3, 4), "P3": (3, 4), "R0_rect": (3, 3),
    "Tr_velo_to_cam": (3, 4), "Tr_imu_to_velo": (3, 4),
}  # fmt: skip


def _eye34() -> np.ndarray:
    return np.eye(3, 4)


@dataclass
class Calibration:
    """Matrices of a KITTI ``calib`` file (float64).

    ``P0``-``P3`` are 3x4 projections of rectified camera coordinates to each camera's pixels,
    ``R0_rect`` the 3x3 rectifying rotation, ``Tr_velo_to_cam`` and ``Tr_imu_to_velo`` 3x4 rigid
    transforms.
    """

    P0: np.ndarray = field(default_factory=_eye34)
    P1: np.ndarray = field(default_factory=_eye34)
    P2: np.ndarray = field(default_factory=_eye34)
    P3: np.ndarray = field(default_factory=_eye34)
    R0_rect: np.ndarray = field(default_factory=lambda: np.eye(3))
    Tr_velo_to_cam: np.ndarray = field(default_factory=_eye34)
    Tr_imu_to_velo: np.ndarray = field(default_factory=_eye34)

    def velo_to_rect(self, points: np.ndarray) -> np.ndarray:
        """(N, 3+) velodyne points to (N, 3) rectified camera coordinates."""
        xyz1 = _homogeneous(np.asarray(points, dtype=np.float64)[:, :3])
        return (self.R0_rect @ (self.Tr_velo_to_cam @ xyz1.T)).T

    def rect_to_velo(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) rectified camera coordinates to (N, 3) velodyne points."""
        ref = np.linalg.solve(self.R0_rect, np.asarray(points, dtype=np.float64)[:, :3].T)
        rot, trans = self.Tr_velo_to_cam[:, :3], self.Tr_velo_to_cam[:, 3:]
        return np.linalg.solve(rot, ref - trans).T

    def rect_to_image(self, points: np.ndarray, camera: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (N, 2) of rectified camera points, and their depth (N,) along the camera's z axis."""
        proj = getattr(self, f"P{camera}")
        uvw = (proj @ _homogeneous(np.asarray(points, dtype=np.float64)[:, :3]).T).T
        depth = uvw[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = uvw[:, :2] / depth[:, None]
        return uv, depth

    def velo_to_image(self, points: np.ndarray, camera: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (N, 2) and depths (N,) of velodyne points in camera ``camera``'s image."""
        return self.rect_to_image(self.velo_to_rect(points), camera)

    def to_text(self) -> str:
        lines = []
        for key in CALIB_SHAPES:
            values = np.asarray(getattr(self, key), dtype=np.float64).ravel()
            lines.append(f"{key}: " + " ".join(_fmt(v) for v in values))
        return "\n".join(lines) + "\n"


def _homogeneous(xyz: np.ndarray) -> np.ndarray:
    return np.concatenate([xyz, np.ones((xyz.shape[0], 1))], axis=1)


_CALIB_ALIASES = {"R_rect": "R0_rect", "Tr_velo_cam": "Tr_velo_to_cam", "Tr_imu_velo": "Tr_imu_to_velo"}
_REQUIRED_CALIB = ("P2", "R0_rect", "Tr_velo_to_cam")


def read_calib(path: PathLike) -> Calibration:
    """A KITTI object calibration file; P2, R0_rect and Tr_velo_to_cam are required."""
    text = read_text(path)
    found: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        if not sep:
            raise MalformedFileError(path, f"line {lineno}: expected 'NAME: values'")
        key = _CALIB_ALIASES.get(key.strip(), key.strip())
        if key not in CALIB_SHAPES:
            continue
        try:
            values = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError as exc:
            raise MalformedFileError(path, f"line {lineno} ({key}): {exc}") from None
        shape = CALIB_SHAPES[key]
        if values.size != shape[0] * shape[1]:
            raise MalformedFileError(
                path, f"line {lineno} ({key}): expected {shape[0] * shape[1]} values, got {values.size}"
            )
        if not np.all(np.isfinite(values)):
            raise MalformedFileError(path, f"line {lineno} ({key}): non-finite value")
        found[key] = values.reshape(shape)
    missing = [k for k in _REQUIRED_CALIB if k not in found]
    if missing:
        raise MalformedFileError(path, f"missing {', '.join(missing)}")
    return Calibration(**found)


def write_calib(path: PathLike, calib: Calibration) -> Path:
    return atomic_write_text(path, calib.to_text())


def kitti_frame_paths(root: PathLike, frame_id: str) -> dict[str, Path]:
    """The files of one frame in a KITTI object layout (``velodyne/``, ``image_2/``, ...)."""
    base = Path(root)
    return {
        "velodyne": base / "velodyne" / f"{frame_id}.bin",
        "image": base / "image_2" / f"{frame_id}.png",
        "label": base / "label_2" / f"{frame_id}.txt",
        "calib": base / "calib" / f"{frame_id}.txt",
    }


def box_corners_rect(obj: KittiObject) -> np.ndarray:
    """The 8 corners (8, 3) of an object's 3D box in rectified camera coordinates."""
    h, w, length = obj.dimensions
    x = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * length / 2
    y = np.array([0, 0, 0, 0, -1, -1, -1, -1]) * h
    z = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
    c, s = math.cos(obj.rotation_y), math.sin(obj.rotation_y)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return (rot @ np.stack([x, y, z])).T + np.asarray(obj.location)


def sequence_ids(names: Sequence[str]) -> list[str]:
    """Frame ids (stems) sorted as KITTI does: numerically when all are numbers."""
    stems = [Path(n).stem for n in names]
    return sorted(stems, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))


def read_split_ids(root: PathLike, split: str | None) -> list[str] | None:
    """Frame ids of a split: ``root/ImageSets/<split>.txt``, or ``split`` itself when it names a ``.txt`` file.

    A path lets a split of a directory that is not yours to write into (``../shared/data``) live elsewhere,
    e.g. ``configs/splits/kitti_object_dev_val.txt``. None when no split is asked for.
    """
    if split is None:
        return None
    given = Path(split)
    path = given if given.suffix == ".txt" else Path(root) / "ImageSets" / f"{split}.txt"
    if not path.is_file():
        raise MalformedFileError(path, f"no split file for {split!r}")
    ids = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not ids:
        raise MalformedFileError(path, "the split lists no frames")
    return ids
