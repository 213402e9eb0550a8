"""Evaluate a segmentation model (ONNX, runtime only) on labelled scans: per-class IoU, precision, recall.

Sources: a directory of SqueezeSeg ``.npy`` tensors (metrics over valid pixels, the paper's protocol),
or a KITTI-layout directory with ``velodyne/*.bin`` and either per-point ``labels/*.label`` or the KITTI
object benchmark's ``label_2/`` 3D boxes with ``calib/`` (point labels by the SqueezeSeg paper's
box-to-point protocol, :mod:`perception.lidar.box_labels`); metrics over every point in the sensor's
field of view. Points labelled :data:`~perception.lidar.box_labels.IGNORE_LABEL` (in Van, Truck, Tram,
Misc, Person_sitting boxes and DontCare regions) are not scored. A simulator output directory holds
both ``.npy`` and ``labels/``; ``.npy`` is used when present.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perception.io import read_squeezeseg_npy, read_velodyne_bin
from perception.io.common import MalformedFileError
from perception.io.kitti import read_split_ids, sequence_ids
from perception.io.labels import read_point_labels
from perception.io.squeezeseg import split_squeezeseg
from perception.lidar.box_labels import IGNORE_LABEL, box_labels_of_frame
from perception.lidar.projection import range_image_to_points
from perception.lidar.squeezeseg_config import CLASSES
from perception.runtime.segmenter import Segmenter

PathLike = str | os.PathLike[str]


@dataclass
class SegmentationScores:
    """Confusion counts over all frames and the derived per-class ratios (NaN where undefined)."""

    confusion: np.ndarray  # (C, C): rows ground truth, columns prediction
    frames: int
    points: int  # scored points: in view and not labelled IGNORE_LABEL
    ignored: int = 0  # points in view left out of the score (IGNORE_LABEL)

    def _ratio(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / np.maximum(den, 1), np.nan)

    def per_class(self) -> dict[str, dict[str, float]]:
        tp = np.diag(self.confusion).astype(np.float64)
        fp = self.confusion.sum(0) - tp
        fn = self.confusion.sum(1) - tp
        iou, prec, rec = self._ratio(tp, tp + fp + fn), self._ratio(tp, tp + fp), self._ratio(tp, tp + fn)
        return {
            name: {
                "iou": float(iou[i]) * 100,
                "precision": float(prec[i]) * 100,
                "recall": float(rec[i]) * 100,
                "points": int(self.confusion[i].sum()),
            }
            for i, name in enumerate(CLASSES)
        }


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int = len(CLASSES)) -> np.ndarray:
    """(C, C) counts, rows ground truth, columns prediction; ground truth IGNORE_LABEL is left out."""
    p = np.asarray(pred, dtype=np.int64).ravel()
    g = np.asarray(gt, dtype=np.int64).ravel()
    scored = g != IGNORE_LABEL
    p, g = p[scored], g[scored]
    return np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iter_labelled_scans(data: PathLike, split: str | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray, bool]]:
    """(frame id, points (N, 4), labels (N,), from_npy) for each labelled scan of a directory.

    Labels are class ids, or IGNORE_LABEL for points left out of the score.
    """
    root = Path(data)
    ids = read_split_ids(root, split)
    npy_dir = root / "squeezeseg" if (root / "squeezeseg").is_dir() else root
    npy_files = sorted(npy_dir.glob("*.npy"))
    if npy_files:
        wanted = set(ids) if ids is not None else None
        for path in npy_files:
            if wanted is None or path.stem in wanted:
                image, mask, labels = split_squeezeseg(read_squeezeseg_npy(path))
                yield path.stem, range_image_to_points(image, mask), labels[mask], True
        return
    velodyne = root / "velodyne"
    if not velodyne.is_dir():
        raise MalformedFileError(
            root, "holds neither SqueezeSeg .npy files nor velodyne/ with labels/ or with label_2/ and calib/"
        )
    from_boxes = not (root / "labels").is_dir()
    if from_boxes and not ((root / "label_2").is_dir() and (root / "calib").is_dir()):
        raise MalformedFileError(root, "velodyne/ needs per-point labels/ or KITTI label_2/ boxes with calib/")
    for frame_id in ids if ids is not None else sequence_ids([p.name for p in velodyne.glob("*.bin")]):
        points = read_velodyne_bin(velodyne / f"{frame_id}.bin")
        if from_boxes:
            labels = box_labels_of_frame(root, frame_id, points)
        else:
            labels = read_point_labels(root / "labels" / f"{frame_id}.label", expected=len(points))
        yield frame_id, points, labels, False


def evaluate_segmenter(segmenter: Segmenter, data: PathLike, split: str | None = None) -> SegmentationScores:
    """Run the model on every labelled scan and accumulate the confusion over points in view."""
    confusion = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    frames = ignored = 0
    for _, cloud, labels, _ in iter_labelled_scans(data, split):
        result = segmenter.segment(cloud)
        inside = result.projection.in_view
        confusion += confusion_matrix(result.labels[inside], labels[inside])
        frames += 1
        ignored += int((labels[inside] == IGNORE_LABEL).sum())
    if frames == 0:
        raise MalformedFileError(data, "no labelled scans to evaluate")
    return SegmentationScores(confusion, frames, int(confusion.sum()), ignored)
