"""Run a SqueezeDet ONNX model over a KITTI-layout directory and score it with the KITTI 2D protocol."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perception.evaluation.kitti_object import Metric, PathLike, evaluate_kitti_2d, load_label_dir
from perception.io.common import MalformedFileError
from perception.io.images import read_image
from perception.io.kitti import KittiObject, read_split_ids, sequence_ids
from perception.runtime.detector import Detector

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class DetectionScores:
    """KITTI AP (percent) per class and difficulty, with what it was measured on."""

    results: dict[str, Any]
    frames: int
    ground_truth: dict[str, int]  # boxes per KITTI type in label_2 (all difficulties)

    def table(self) -> dict[str, Any]:
        """A JSON-friendly summary for model cards and ``--json``."""
        return {**self.results, "frames": self.frames, "ground_truth_boxes": self.ground_truth}


def _image_path(image_dir: Path, frame_id: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        path = image_dir / f"{frame_id}{suffix}"
        if path.is_file():
            return path
    raise MalformedFileError(image_dir, f"no image for frame {frame_id}")


def predict_directory(detector: Detector, data: PathLike, split: str | None = None) -> dict[str, list[KittiObject]]:
    """Detections (as KITTI result objects) for every frame of ``data/image_2`` (or of ImageSets/SPLIT.txt)."""
    root = Path(data)
    image_dir = root / "image_2"
    if not image_dir.is_dir():
        raise MalformedFileError(root, "has no image_2/ directory")
    ids = read_split_ids(root, split)
    if ids is None:
        ids = sequence_ids([p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES])
    out: dict[str, list[KittiObject]] = {}
    for fid in ids:
        result = detector.detect(read_image(_image_path(image_dir, fid)))
        out[fid] = [d.to_kitti() for d in result.detections]
    return out


def evaluate_detector(
    detector: Detector, data: PathLike, split: str | None = None, metric: Metric = "R40"
) -> DetectionScores:
    """KITTI 2D AP of a detector on a directory with ``image_2/`` and ``label_2/`` (KITTI or simulator layout)."""
    root = Path(data)
    if not (root / "label_2").is_dir():
        raise MalformedFileError(root, "has no label_2/ directory")
    predictions = predict_directory(detector, root, split)
    if not predictions:
        raise MalformedFileError(root, "no frames to evaluate")
    ground_truth = load_label_dir(root / "label_2", frame_ids=list(predictions))
    counts: dict[str, int] = {}
    for objects in ground_truth.values():
        for obj in objects:
            counts[obj.type] = counts.get(obj.type, 0) + 1
    return DetectionScores(evaluate_kitti_2d(ground_truth, predictions, metric=metric), len(predictions), counts)
