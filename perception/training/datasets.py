"""Datasets for training: SqueezeSeg range tensors and KITTI-layout camera frames, real or synthetic.

Segmentation samples are (range_image (5, H, W) float32, mask (1, H, W) float32, labels (H, W) int64);
sources:

* a directory of SqueezeSeg ``.npy`` tensors (the public KITTI-derived set, or ``squeezeseg/`` of the
  simulator's output);
* raw KITTI velodyne scans with ``label_2`` + ``calib``: points inside a labelled 3D box take its class,
  by the SqueezeSeg paper's protocol (Car, Pedestrian, Cyclist; points in the other types' boxes and
  in DontCare regions are IGNORE_LABEL, left out of the loss);
* a KITTI-layout directory with per-point ``labels/*.label`` files (the simulator's output).

Detection samples are (image (3, 384, 1248) float32 RGB in [0, 255], boxes (M, 4) xyxy in network-input
pixels, classes (M,) int64).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

from perception.io import read_image, read_label, read_velodyne_bin
from perception.io.common import MalformedFileError
from perception.io.kitti import read_split_ids, sequence_ids
from perception.io.labels import read_point_labels
from perception.io.squeezeseg import read_squeezeseg_npy, split_squeezeseg
from perception.lidar.box_labels import box_labels_of_frame
from perception.lidar.projection import points_to_pixels, spherical_project
from perception.lidar.sensors import SENSORS, SensorSpec

PathLike = str | os.PathLike[str]

KITTI_TO_DET_CLASS = {"Car": 0, "Pedestrian": 1, "Cyclist": 2}
DET_INPUT_SIZE = (1248, 384)


def flip_range_sample(image: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Horizontal flip of a range image: reverse the azimuth axis and negate y (the scene is mirrored)."""
    image = image[:, :, ::-1].copy()
    image[1] = -image[1]
    return image, mask[:, :, ::-1].copy(), labels[:, ::-1].copy()


def range_dropout(mask: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Drop a fraction ``rate`` of valid pixels (sim-to-real: real scanners lose more returns)."""
    keep = rng.random(mask.shape) >= rate
    return (mask * keep).astype(np.float32)


class RangeImageDataset(Dataset):
    """Base for segmentation sources: subclasses give ``load(i) -> (image, mask, labels)`` numpy arrays."""

    def __init__(self, flip: bool = False, dropout: float = 0.0, seed: int = 0) -> None:
        self.flip = flip
        self.dropout = dropout
        self.seed = seed
        self.epoch = 0

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, mask, labels = self.load(index)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        if self.flip and rng.random() < 0.5:
            image, mask, labels = flip_range_sample(image, mask, labels)
        if self.dropout > 0:
            mask = range_dropout(mask, self.dropout, rng)
            image = image * mask
            labels = labels * (mask[0] > 0)
        return torch.from_numpy(image), torch.from_numpy(mask), torch.from_numpy(labels.astype(np.int64))


class SqueezeSegNpyDataset(RangeImageDataset):
    """A directory of SqueezeSeg ``.npy`` tensors (H, W, 6)."""

    def __init__(self, directory: PathLike, files: Sequence[str] | None = None, shape: tuple[int, int] = (64, 512),
                 **kwargs: object) -> None:  # fmt: skip
        super().__init__(**kwargs)  # type: ignore[arg-type]
        root = Path(directory)
        if files is None:
            self.paths = sorted(root.glob("*.npy"))
        else:
            self.paths = [root / (f if f.endswith(".npy") else f"{f}.npy") for f in files]
        if not self.paths:
            raise MalformedFileError(root, "no SqueezeSeg .npy files")
        self.shape = shape

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image, mask, labels = split_squeezeseg(read_squeezeseg_npy(self.paths[index], shape=self.shape))
        return image, mask[None].astype(np.float32), labels


@dataclass(frozen=True)
class PointAugment:
    """Augmentation of a point cloud before projection (all off by default); angles in degrees.

    * ``flip``: mirror the scene (y -> -y) with probability 0.5;
    * ``rotate_deg``: yaw about the LiDAR's z axis, uniform in +-``rotate_deg``;
    * ``scale``: all coordinates times a factor uniform in 1 +- ``scale``;
    * ``intensity_jitter``: intensity times a factor uniform in 1 +- ``intensity_jitter``, plus Gaussian
      noise of 0.02 x ``intensity_jitter``, clipped to [0, 1] (KITTI reflectance);
    * ``point_dropout``: drop a fraction of the points, uniform in [0, ``point_dropout``];
    * ``beam_dropout``: drop each beam (image row) with this probability after projection.
    """

    flip: bool = False
    rotate_deg: float = 0.0
    scale: float = 0.0
    intensity_jitter: float = 0.0
    point_dropout: float = 0.0
    beam_dropout: float = 0.0


def augment_points(
    points: np.ndarray, labels: np.ndarray, aug: PointAugment, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Augmented copies of points (N, 4) and their labels (N,) (see :class:`PointAugment`)."""
    pts = points.astype(np.float32, copy=True)
    if aug.point_dropout > 0:
        keep = rng.random(len(pts)) >= rng.uniform(0.0, aug.point_dropout)
        pts, labels = pts[keep], labels[keep]
    if aug.flip and rng.random() < 0.5:
        pts[:, 1] = -pts[:, 1]
    if aug.rotate_deg > 0:
        yaw = np.radians(rng.uniform(-aug.rotate_deg, aug.rotate_deg))
        c, s = np.float32(np.cos(yaw)), np.float32(np.sin(yaw))
        x, y = pts[:, 0].copy(), pts[:, 1].copy()
        pts[:, 0], pts[:, 1] = c * x - s * y, s * x + c * y
    if aug.scale > 0:
        pts[:, :3] *= np.float32(rng.uniform(1 - aug.scale, 1 + aug.scale))
    if aug.intensity_jitter > 0:
        factor = rng.uniform(1 - aug.intensity_jitter, 1 + aug.intensity_jitter)
        noise = rng.normal(0.0, 0.02 * aug.intensity_jitter, len(pts))
        pts[:, 3] = np.clip(pts[:, 3] * factor + noise, 0.0, 1.0)
    return pts, labels


class KittiScanDataset(RangeImageDataset):
    """KITTI-layout scans (``velodyne/*.bin``) with point labels from ``labels/*.label`` or from 3D boxes.

    Box labels follow the SqueezeSeg protocol (:func:`perception.lidar.box_labels.point_labels_from_boxes`):
    points in Van, Truck, Tram, Misc, Person_sitting boxes and DontCare regions are IGNORE_LABEL, and with
    ``ignore_outside_camera`` so are points the camera does not see (their objects are not labelled).
    Points and labels of each frame are read once and kept; ``augment`` acts on the points before the
    projection (training), the base class's ``flip``/``dropout`` are not used.
    """

    def __init__(self, root: PathLike, split: str | None = None, sensor: SensorSpec = SENSORS["kitti-front"],
                 augment: PointAugment | None = None, ignore_outside_camera: bool = True,
                 **kwargs: object) -> None:  # fmt: skip
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.root = Path(root)
        ids = read_split_ids(root, split)
        self.ids = ids if ids is not None else sequence_ids([p.name for p in (self.root / "velodyne").glob("*.bin")])
        if not self.ids:
            raise MalformedFileError(self.root / "velodyne", "no .bin scans")
        self.sensor = sensor
        self.augment = augment
        self.ignore_outside_camera = ignore_outside_camera
        self._frames: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def point_labels(self, frame_id: str, points: np.ndarray) -> np.ndarray:
        label_file = self.root / "labels" / f"{frame_id}.label"
        if label_file.is_file():
            return read_point_labels(label_file, expected=len(points))
        return box_labels_of_frame(self.root, frame_id, points, self.ignore_outside_camera)

    def points_and_labels(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._frames:
            frame_id = self.ids[index]
            points = read_velodyne_bin(self.root / "velodyne" / f"{frame_id}.bin")
            self._frames[index] = (points, self.point_labels(frame_id, points))
        return self._frames[index]

    def load(self, index: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        points, point_labels = self.points_and_labels(index)
        if rng is not None and self.augment is not None:
            points, point_labels = augment_points(points, point_labels, self.augment, rng)
        proj = spherical_project(points, self.sensor)
        labels = points_to_pixels(point_labels.astype(np.int64, copy=False), proj)
        mask = proj.mask
        image = proj.image
        if rng is not None and self.augment is not None and self.augment.beam_dropout > 0:
            rows = rng.random(mask.shape[0]) < self.augment.beam_dropout
            mask = mask & ~rows[:, None]
            image = image * mask
            labels = labels * mask
        return image, mask[None].astype(np.float32), labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.augment is not None else None
        image, mask, labels = self.load(index, rng)
        return torch.from_numpy(image), torch.from_numpy(mask), torch.from_numpy(labels)


class RepeatedDataset(Dataset):
    """A dataset seen ``times`` times per epoch (oversampling a small real set beside a large synthetic one)."""

    def __init__(self, dataset: Dataset, times: int) -> None:
        if times < 1:
            raise ValueError("times must be >= 1")
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times  # type: ignore[arg-type]

    def __getitem__(self, index: int):  # type: ignore[no-untyped-def]
        return self.dataset[index % len(self.dataset)]  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        set_epoch(self.dataset, epoch * self.times)


def set_epoch(dataset: Dataset, epoch: int) -> None:
    """Tell a dataset, or every part of a concatenation, which epoch it serves (its augmentation seed)."""
    if isinstance(dataset, RepeatedDataset):
        dataset.set_epoch(epoch)
    elif isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            set_epoch(part, epoch)
    elif isinstance(dataset, Subset):
        set_epoch(dataset.dataset, epoch)
    else:
        dataset.epoch = epoch  # type: ignore[attr-defined]


class KittiDetectionDataset(Dataset):
    """KITTI object frames (``image_2`` + ``label_2``) resized to 1248 x 384, with the papers' augmentation.

    Augmentation (training): random drift of up to ``drift`` = (150, 100) pixels in x and y (the image is
    shifted, boxes with it, and cut at the border) and a horizontal flip with probability 0.5.
    DontCare and other classes are dropped; boxes smaller than 2 px after the cut are dropped.
    """

    def __init__(self, root: PathLike, split: str | None = None, augment: bool = False,
                 drift: tuple[int, int] = (150, 100), seed: int = 0) -> None:  # fmt: skip
        self.root = Path(root)
        ids = read_split_ids(root, split)
        self.ids = ids if ids is not None else sequence_ids([p.name for p in (self.root / "image_2").glob("*.png")])
        if not self.ids:
            raise MalformedFileError(self.root / "image_2", "no .png frames")
        self.augment = augment
        self.drift = drift
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def boxes(self, frame_id: str) -> tuple[np.ndarray, np.ndarray]:
        objects = [o for o in read_label(self.root / "label_2" / f"{frame_id}.txt") if o.type in KITTI_TO_DET_CLASS]
        boxes = np.array([o.bbox for o in objects], dtype=np.float64).reshape(-1, 4)
        classes = np.array([KITTI_TO_DET_CLASS[o.type] for o in objects], dtype=np.int64)
        return boxes, classes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        frame_id = self.ids[index]
        image = read_image(self.root / "image_2" / f"{frame_id}.png")
        boxes, classes = self.boxes(frame_id)
        h, w = image.shape[:2]
        sx, sy = DET_INPUT_SIZE[0] / w, DET_INPUT_SIZE[1] / h
        resized = np.asarray(Image.fromarray(image).resize(DET_INPUT_SIZE, Image.Resampling.BILINEAR), dtype=np.float32)
        boxes = boxes * np.array([sx, sy, sx, sy])
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            resized, boxes = drift_image(resized, boxes, rng, self.drift)
            if rng.random() < 0.5:
                resized = resized[:, ::-1].copy()
                boxes = np.stack([DET_INPUT_SIZE[0] - 1 - boxes[:, 2], boxes[:, 1],
                                  DET_INPUT_SIZE[0] - 1 - boxes[:, 0], boxes[:, 3]], axis=1)  # fmt: skip
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 2) & ((boxes[:, 3] - boxes[:, 1]) >= 2)
        return (
            torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))),
            torch.from_numpy(boxes[keep].astype(np.float32)),
            torch.from_numpy(classes[keep]),
        )


def drift_image(
    image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, drift: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Shift the image by a random (dx, dy) within ``drift`` (zeros fill), boxes with it, cut to the frame."""
    h, w = image.shape[:2]
    dx = int(rng.integers(-drift[0], drift[0] + 1))
    dy = int(rng.integers(-drift[1], drift[1] + 1))
    out = np.zeros_like(image)
    src_x, dst_x = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    src_y, dst_y = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    out[dst_y, dst_x] = image[src_y, src_x]
    shifted = boxes + np.array([dx, dy, dx, dy])
    shifted[:, [0, 2]] = np.clip(shifted[:, [0, 2]], 0, w - 1)
    shifted[:, [1, 3]] = np.clip(shifted[:, [1, 3]], 0, h - 1)
    return out, shifted


def mix_datasets(real: Dataset, synthetic: Dataset, synthetic_ratio: float, seed: int = 0) -> Dataset:
    """Real and synthetic samples mixed so that about ``synthetic_ratio`` of the result is synthetic.

    Keeps all real samples and draws synthetic ones (without replacement as far as they go) to reach the
    ratio; ratio 1.0 gives the synthetic set alone, 0.0 the real set alone.
    """
    if not 0.0 <= synthetic_ratio <= 1.0:
        raise ValueError("synthetic_ratio must lie in [0, 1]")
    if synthetic_ratio == 0.0:
        return real
    if synthetic_ratio == 1.0:
        return synthetic
    n_real = len(real)  # type: ignore[arg-type]
    n_syn = min(len(synthetic), round(n_real * synthetic_ratio / (1 - synthetic_ratio)))  # type: ignore[arg-type]
    picks = np.random.default_rng(seed).permutation(len(synthetic))[:n_syn]  # type: ignore[arg-type]
    return ConcatDataset([real, Subset(synthetic, picks.tolist())])


def collate_detection(batch: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Stack images; keep the per-image box and class tensors as lists."""
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch], [b[2] for b in batch]
