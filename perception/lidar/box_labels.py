"""Point labels from KITTI 3D boxes: the SqueezeSeg paper's box-to-point protocol, numpy only.

A point inside the 3D box of a ``Car`` is car, of a ``Pedestrian`` pedestrian, of a ``Cyclist`` cyclist;
points inside the boxes of the other annotated types (``Van``, ``Truck``, ``Tram``, ``Misc``,
``Person_sitting``) and inside the image regions marked ``DontCare`` are left out of training and
scoring (label :data:`IGNORE_LABEL`); every other point is background (0, "unknown").

Frames: points are velodyne (x forward, y left, z up, metres); boxes are KITTI ``label_2`` objects in the
rectified camera frame (bottom centre, dimensions h, w, l, yaw about the camera's y axis). ``DontCare``
objects carry only a 2D box in the left colour image: a point is in such a region when its projection
through ``P2`` falls inside that box and it lies in front of the camera, so a region covers the whole
frustum behind it (ground and background included), which leaves more out than strictly needed rather
than calling an unlabelled object background.

Limits (from the labels, not the code): KITTI annotates objects only in the camera's field of view, so
score the front 90 degrees only; boxes are tight, so points on a mirror or a wheel just outside a box are
background; a box's bottom face lies on the ground, so road points under a car whose box sinks slightly
into the road are car.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from perception.io import read_velodyne_bin
from perception.io.common import MalformedFileError, atomic_write_text
from perception.io.kitti import Calibration, KittiObject, PathLike, read_calib, read_label, read_split_ids, sequence_ids
from perception.io.squeezeseg import IGNORE_LABEL, write_squeezeseg_npy
from perception.lidar.projection import points_to_pixels, spherical_project, to_squeezeseg_tensor
from perception.lidar.sensors import SensorSpec

__all__ = ["IGNORE_LABEL", "box_labels_of_frame", "point_labels_from_boxes", "write_squeezeseg_frames"]
SCORED_TYPES: dict[str, int] = {"Car": 1, "Pedestrian": 2, "Cyclist": 3}
IGNORED_TYPES: tuple[str, ...] = ("Van", "Truck", "Tram", "Misc", "Person_sitting")
DONT_CARE = "DontCare"
KITTI_IMAGE_SIZE = (1242, 376)


def points_in_box(rect_points: np.ndarray, obj: KittiObject, margin: float = 0.0) -> np.ndarray:
    """Mask (N,) of rectified-camera points (N, 3) inside ``obj``'s 3D box grown by ``margin`` metres a side."""
    h, w, length = obj.dimensions
    c, s = np.cos(obj.rotation_y), np.sin(obj.rotation_y)
    d = rect_points - np.asarray(obj.location, dtype=np.float64)
    # into the box frame: x along its length, z along its width (the inverse of the yaw about camera y)
    along = c * d[:, 0] - s * d[:, 2]
    across = s * d[:, 0] + c * d[:, 2]
    return (
        (np.abs(along) <= length / 2 + margin)
        & (np.abs(across) <= w / 2 + margin)
        & (d[:, 1] <= margin)
        & (d[:, 1] >= -h - margin)
    )


def points_in_image_box(points: np.ndarray, calib: Calibration, bbox: Sequence[float]) -> np.ndarray:
    """Mask (N,) of velodyne points whose P2 projection lies in ``bbox`` (x1, y1, x2, y2 px), in front of the camera."""
    uv, depth = calib.velo_to_image(points[:, :3])
    x1, y1, x2, y2 = bbox
    with np.errstate(invalid="ignore"):
        return (depth > 0) & (uv[:, 0] >= x1) & (uv[:, 0] <= x2) & (uv[:, 1] >= y1) & (uv[:, 1] <= y2)


def outside_camera(
    points: np.ndarray, calib: Calibration, image_size: tuple[int, int] = KITTI_IMAGE_SIZE
) -> np.ndarray:
    """Mask (N,) of velodyne points outside the left colour camera's image (KITTI labels no object there).

    ``image_size`` (width, height) px: KITTI's images are 1224-1242 x 370-376; the default is the largest.
    """
    uv, depth = calib.velo_to_image(points[:, :3])
    w, h = image_size
    with np.errstate(invalid="ignore"):
        seen = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    return ~seen


def point_labels_from_boxes(
    points: np.ndarray, objects: Sequence[KittiObject], calib: Calibration, margin: float = 0.0
) -> np.ndarray:
    """Class per velodyne point (N,) int64: 1 car, 2 pedestrian, 3 cyclist, 0 background, -1 not scored.

    A point in a scored box takes that box's class even where an ignored box or a DontCare region
    overlaps it; where two scored boxes overlap, the later object in the file wins. Unknown object types
    are an error (a typo in a label file must not turn an object into background).
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be (N, 3+), got shape {pts.shape}")
    labels = np.zeros(len(pts), dtype=np.int64)
    if not len(pts):
        return labels
    rect = calib.velo_to_rect(pts[:, :3])
    ignored = np.zeros(len(pts), dtype=bool)
    for obj in objects:
        if obj.type == DONT_CARE:
            ignored |= points_in_image_box(pts, calib, obj.bbox)
        elif obj.type in IGNORED_TYPES:
            ignored |= points_in_box(rect, obj, margin)
        elif obj.type not in SCORED_TYPES:
            raise ValueError(f"unknown KITTI object type {obj.type!r}")
    labels[ignored] = IGNORE_LABEL
    for obj in objects:
        if obj.type in SCORED_TYPES:
            labels[points_in_box(rect, obj, margin)] = SCORED_TYPES[obj.type]
    return labels


def box_labels_of_frame(
    root: PathLike, frame_id: str, points: np.ndarray, ignore_outside_camera: bool = False
) -> np.ndarray:
    """Point labels of a KITTI object frame from ``label_2/<id>.txt`` and ``calib/<id>.txt`` (errors name the file).

    ``ignore_outside_camera``: points outside the camera's image are IGNORE_LABEL too (for training: the
    objects there are not labelled; the evaluation protocol scores the whole front 90 deg instead).
    """
    base = Path(root)
    label_path = base / "label_2" / f"{frame_id}.txt"
    objects = read_label(label_path)
    calib = read_calib(base / "calib" / f"{frame_id}.txt")
    try:
        labels = point_labels_from_boxes(points, objects, calib)
    except ValueError as exc:
        raise MalformedFileError(label_path, str(exc)) from None
    if ignore_outside_camera:
        labels[outside_camera(points, calib)] = IGNORE_LABEL
    return labels


def write_squeezeseg_frames(
    root: PathLike,
    out: PathLike,
    sensor: SensorSpec,
    split: str | None = None,
    ignore_outside_camera: bool = True,
) -> list[Path]:
    """KITTI object scans (``velodyne/``, ``label_2/``, ``calib/``) as SqueezeSeg ``.npy`` training frames.

    Writes ``out/squeezeseg/<id>.npy`` (H, W, 6) per frame, labels from the boxes (IGNORE_LABEL kept as -1,
    and for points the camera does not see with ``ignore_outside_camera``), and ``out/ImageSets/all.txt``;
    every file atomically. A pixel takes the label of the point that won it (the nearest). Returns the
    written tensors' paths.
    """
    base = Path(root)
    ids = read_split_ids(base, split)
    if ids is None:
        ids = sequence_ids([p.name for p in (base / "velodyne").glob("*.bin")])
    if not ids:
        raise MalformedFileError(base / "velodyne", "no .bin scans")
    target = Path(out)
    written = []
    for frame_id in ids:
        points = read_velodyne_bin(base / "velodyne" / f"{frame_id}.bin")
        point_labels = box_labels_of_frame(base, frame_id, points, ignore_outside_camera)
        proj = spherical_project(points, sensor)
        tensor = to_squeezeseg_tensor(proj, points_to_pixels(point_labels.astype(np.float32), proj))
        written.append(write_squeezeseg_npy(target / "squeezeseg" / f"{frame_id}.npy", tensor))
    atomic_write_text(target / "ImageSets" / "all.txt", "".join(f"{i}\n" for i in ids))
    return written
