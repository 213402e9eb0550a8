"""TensorRT ahead of time: build and cache engines, INT8 calibration tables, and the reduced-precision check.

What ``perception export trt`` runs, so that a vehicle computer starts with its engines already built:

* :func:`build_engines` opens each model on the TensorRT execution provider with
  :class:`~perception.runtime.session.TensorRTOptions` and runs it once (:func:`warm_up`); TensorRT writes
  the engines (and its timing cache) into the cache directory, and every later start with the same cache,
  GPU, TensorRT version and precision only loads them.
* :func:`calibrate_int8` makes the INT8 calibration table of a model from real frames (ONNX Runtime's
  MinMax calibrator, symmetric ranges; it needs the ``onnx`` package of the ``[train]`` extra) and writes it
  where the TensorRT provider looks for it.
* :func:`check_segmentation` / :func:`check_detection` run a reference (FP32 on the CPU provider) and a
  candidate (TensorRT at FP16 or INT8) on the same held-out labelled frames and compare per-class IoU
  (segmentation) and KITTI moderate AP, R40 (detection) against the labels; the check fails when a class
  drops by more than the allowed number of percentage points (:data:`MAX_DROP_PP`).

Runtime only (numpy + onnxruntime); the check imports the evaluation code, the calibration ``onnx``.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perception.io.common import atomic_write_bytes
from perception.runtime.detector import Detector
from perception.runtime.segmenter import Segmenter
from perception.runtime.session import (
    TRT_PROVIDER,
    LoadedModel,
    TensorRTOptions,
    available_providers,
    load_model,
    warm_up,
)

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

MAX_DROP_PP: dict[str, float] = {"fp32": 0.5, "fp16": 1.0, "int8": 2.0}
"""Largest allowed drop, in percentage points, of any class's IoU (segmentation) or moderate AP (detection)
from the FP32 reference to the candidate precision on held-out frames."""


class TensorRTUnavailableError(ValueError):
    """The TensorRT execution provider is missing from this onnxruntime build, or did not take the model."""


def require_tensorrt() -> None:
    """Raise :class:`TensorRTUnavailableError` unless this onnxruntime build has the TensorRT provider."""
    have = available_providers()
    if TRT_PROVIDER not in have:
        raise TensorRTUnavailableError(
            f"the TensorRT execution provider is not available in this onnxruntime build (it has "
            f"{', '.join(have)}); build engines with onnxruntime-gpu and TensorRT installed, e.g. in the GPU image "
            "(docker/Dockerfile.gpu)"
        )


@dataclass
class EngineBuild:
    """One model opened on TensorRT: how long the first run (engine build or cache load) took, what was cached."""

    model: Path
    provider: str
    precision: str
    first_run_s: float
    cache_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "provider": self.provider,
            "precision": self.precision,
            "first_run_s": round(self.first_run_s, 3),
            "cache_files": list(self.cache_files),
        }


def _cache_listing(options: TensorRTOptions) -> set[str]:
    if options.cache_dir is None or not options.cache_dir.is_dir():
        return set()
    return {str(p.relative_to(options.cache_dir)) for p in options.cache_dir.rglob("*") if p.is_file()}


def open_on_tensorrt(model_path: PathLike, options: TensorRTOptions) -> LoadedModel:
    """The model on TensorRT (CUDA, then CPU, for the nodes TensorRT does not take); raise when it would not run
    on TensorRT at all."""
    require_tensorrt()
    model = load_model(model_path, ["tensorrt", "cuda", "cpu"], tensorrt=options)
    if model.provider != TRT_PROVIDER:
        raise TensorRTUnavailableError(
            f"{model_path}: ONNX Runtime runs it on {model.provider}, not TensorRT (see the log for why)"
        )
    return model


def build_engines(model_paths: Sequence[PathLike], options: TensorRTOptions) -> list[EngineBuild]:
    """Build (or load from ``options.cache_dir``) the TensorRT engines of each model by running it once."""
    require_tensorrt()
    if options.cache_dir is None:
        raise ValueError("building engines ahead of time needs a cache directory to keep them in")
    builds = []
    for path in model_paths:
        before = _cache_listing(options)
        model = open_on_tensorrt(path, options)
        seconds = warm_up(model)
        new = sorted(_cache_listing(options) - before)
        log.info("%s: TensorRT %s ready in %.1f s; %d new cache files", Path(path).name, options.precision,
                 seconds, len(new))  # fmt: skip
        builds.append(EngineBuild(Path(path), model.provider, options.precision, seconds, new))
    return builds


# --- frames -----------------------------------------------------------------------------------------


def labelled_images(data: PathLike, split: str | None = None) -> Iterator[tuple[str, Path, Path]]:
    """(frame id, image path, label path) of a KITTI-layout directory with ``image_2/`` and ``label_2/``."""
    from perception.io.kitti import read_split_ids, sequence_ids

    root = Path(data)
    images, labels = root / "image_2", root / "label_2"
    if not images.is_dir() or not labels.is_dir():
        raise FileNotFoundError(f"{root}: needs image_2/ and label_2/ (KITTI layout)")
    ids = read_split_ids(root, split)
    if ids is None:
        ids = sequence_ids([p.name for p in labels.glob("*.txt")])
    for frame_id in ids:
        image = next((images / f"{frame_id}{ext}" for ext in (".png", ".jpg", ".jpeg")
                      if (images / f"{frame_id}{ext}").is_file()), None)  # fmt: skip
        if image is None:
            raise FileNotFoundError(f"{images}: no image for frame {frame_id}")
        yield frame_id, image, labels / f"{frame_id}.txt"


def segmentation_feeds(segmenter: Segmenter, data: PathLike, split: str | None = None) -> Iterator[dict[str, Any]]:
    """The segmentation model's inputs (range image, mask) for each labelled scan of ``data``."""
    from perception.evaluation.segmentation import iter_labelled_scans
    from perception.lidar.projection import spherical_project, validate_points

    for _, points, _, _ in iter_labelled_scans(data, split):
        projection = spherical_project(validate_points(points), segmenter.sensor)
        yield {
            "range_image": projection.image[None].astype(np.float32),
            "mask": projection.mask.reshape(1, 1, *segmenter.sensor.shape).astype(np.float32),
        }


def detection_feeds(detector: Detector, data: PathLike, split: str | None = None) -> Iterator[dict[str, Any]]:
    """The detection model's input for each image of ``data`` (KITTI layout)."""
    from perception.camera.preprocess import to_network_input
    from perception.io import read_image

    for _, image, _ in labelled_images(data, split):
        yield {"image": to_network_input(read_image(image), detector.input_size)}


# --- INT8 calibration -------------------------------------------------------------------------------


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over a bounded iterator of feeds."""

    def __init__(self, feeds: Iterable[dict[str, Any]], limit: int) -> None:
        self._iter = iter(feeds)
        self._left = limit
        self.count = 0

    def get_next(self) -> dict[str, Any] | None:
        if self._left <= 0:
            return None
        feed = next(self._iter, None)
        if feed is not None:
            self._left -= 1
            self.count += 1
        return feed


def calibrate_int8(
    model_path: PathLike, feeds: Iterable[dict[str, Any]], options: TensorRTOptions, max_frames: int = 64
) -> Path:
    """Write the INT8 calibration table of ``model_path`` from up to ``max_frames`` real inputs.

    ONNX Runtime's MinMax calibrator (symmetric ranges) runs on the CPU provider over every tensor of the
    graph; the table goes to ``options.calibration_table(model_path)``, where the TensorRT provider reads
    it with ``precision="int8"``. Needs the ``onnx`` package (``[train]`` extra).
    """
    try:
        from onnxruntime.quantization import CalibrationMethod, create_calibrator, write_calibration_table
    except ImportError as exc:
        raise ValueError(f"INT8 calibration needs the onnx package of the [train] extra ({exc.name} is missing)") \
            from None  # fmt: skip
    target = options.calibration_table(model_path)
    if target is None:
        raise ValueError("INT8 calibration needs a cache directory to write the table into")
    with tempfile.TemporaryDirectory(prefix="perception-calib-") as tmp:
        calibrator = create_calibrator(
            Path(model_path),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax,
            providers=["CPUExecutionProvider"],
            extra_options={"symmetric": True},
        )
        reader = _Reader(feeds, max_frames)
        calibrator.collect_data(reader)
        if reader.count == 0:
            raise ValueError(f"{model_path}: no calibration frames")
        write_calibration_table(calibrator.compute_data(), dir=tmp)
        table = (Path(tmp) / "calibration.flatbuffers").read_bytes()
    atomic_write_bytes(target, table)
    log.info("%s: INT8 calibration table from %d frames -> %s", Path(model_path).name, reader.count, target)
    return target


# --- the reduced-precision check --------------------------------------------------------------------


@dataclass
class AccuracyCheck:
    """Per-class metric (percent) of the FP32 reference and of the candidate on the same labelled frames."""

    stage: str
    metric: str
    reference_provider: str
    candidate_provider: str
    precision: str
    frames: int
    reference: dict[str, float | None]
    candidate: dict[str, float | None]
    max_drop_pp: float
    reference_model: str = ""
    candidate_model: str = ""

    @property
    def drops(self) -> dict[str, float | None]:
        """Reference minus candidate per class, percentage points (None where the metric is undefined)."""
        out: dict[str, float | None] = {}
        for name, ref in self.reference.items():
            cand = self.candidate.get(name)
            ok = ref is not None and cand is not None and math.isfinite(ref) and math.isfinite(cand)
            out[name] = (ref - cand) if ok else None  # type: ignore[operator]
        return out

    @property
    def worst_drop(self) -> float | None:
        values = [d for d in self.drops.values() if d is not None]
        return max(values) if values else None

    @property
    def passed(self) -> bool:
        worst = self.worst_drop
        return worst is None or worst <= self.max_drop_pp + 1e-9

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "metric": self.metric,
            "precision": self.precision,
            "reference_provider": self.reference_provider,
            "candidate_provider": self.candidate_provider,
            "reference_model": self.reference_model,
            "candidate_model": self.candidate_model,
            "frames": self.frames,
            "reference": self.reference,
            "candidate": self.candidate,
            "drops_pp": self.drops,
            "max_drop_pp": self.max_drop_pp,
            "passed": self.passed,
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def check_segmentation(
    reference: Segmenter, candidate: Segmenter, data: PathLike, split: str | None, precision: str, max_drop_pp: float
) -> AccuracyCheck:
    """Per-class IoU (percent, points in view) of both segmenters on the labelled scans of ``data``."""
    from perception.evaluation.segmentation import evaluate_segmenter

    ref, cand = evaluate_segmenter(reference, data, split), evaluate_segmenter(candidate, data, split)
    return AccuracyCheck(
        stage="lidar",
        metric="IoU %",
        reference_provider=reference.provider,
        candidate_provider=candidate.provider,
        precision=precision,
        frames=ref.frames,
        reference={k: _finite(v["iou"]) for k, v in ref.per_class().items()},
        candidate={k: _finite(v["iou"]) for k, v in cand.per_class().items()},
        max_drop_pp=max_drop_pp,
        reference_model=str(reference.model.path),
        candidate_model=str(candidate.model.path),
    )


def check_detection(
    reference: Detector, candidate: Detector, data: PathLike, split: str | None, precision: str, max_drop_pp: float
) -> AccuracyCheck:
    """KITTI 2D AP (R40, moderate, percent) per class of both detectors on the labelled images of ``data``."""
    from perception.evaluation.kitti_object import evaluate_kitti_2d
    from perception.io import read_image
    from perception.io.kitti import read_label

    gt: dict[str, list[Any]] = {}
    found: dict[str, dict[str, list[Any]]] = {"reference": {}, "candidate": {}}
    for frame_id, image_path, label_path in labelled_images(data, split):
        image = read_image(image_path)
        gt[frame_id] = read_label(label_path)
        for name, detector in (("reference", reference), ("candidate", candidate)):
            found[name][frame_id] = [d.to_kitti() for d in detector.detect(image).detections]
    if not gt:
        raise FileNotFoundError(f"{data}: no labelled images")
    ap = {name: evaluate_kitti_2d(gt, dt) for name, dt in found.items()}
    classes = [k for k in ap["reference"] if k != "metric"]
    return AccuracyCheck(
        stage="camera",
        metric="AP % (R40, moderate)",
        reference_provider=reference.provider,
        candidate_provider=candidate.provider,
        precision=precision,
        frames=len(gt),
        reference={c: _finite(ap["reference"][c]["moderate"]) for c in classes},
        candidate={c: _finite(ap["candidate"][c]["moderate"]) for c in classes},
        max_drop_pp=max_drop_pp,
        reference_model=str(reference.model.path),
        candidate_model=str(candidate.model.path),
    )


__all__ = [
    "MAX_DROP_PP",
    "AccuracyCheck",
    "EngineBuild",
    "TensorRTUnavailableError",
    "build_engines",
    "calibrate_int8",
    "check_detection",
    "check_segmentation",
    "detection_feeds",
    "labelled_images",
    "open_on_tensorrt",
    "require_tensorrt",
    "segmentation_feeds",
]
