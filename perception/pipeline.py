"""One frame in, one :class:`PerceptionResult` out: SqueezeDet on the camera image and SqueezeSeg +
clustering on the LiDAR scan, the two stages concurrently, with per-stage timings.

Frames and units (DESIGN.md, data contracts):

* ``Frame.points``: float32 (N, 4) x, y, z in metres in the LiDAR frame (x forward, y left, z up) and
  intensity in [0, 1], the layout of a KITTI velodyne ``.bin`` file;
* ``Frame.image``: uint8 (H, W, 3) RGB; detection boxes come back in pixels of this image;
* ``Frame.timestamp``: the sensor time of the frame in seconds (any clock the caller uses; passed through);
* timings in milliseconds of wall time.

Both models are loaded once. Either may be absent: the stage that needs it is then unavailable and a frame
that needs it fails with :class:`StageUnavailableError`, whose message names the missing model. ONNX Runtime
releases the GIL while it runs, so the camera stage runs on a small thread pool while the LiDAR stage runs
on the calling thread. The pipeline is thread-safe; each model runs one frame at a time (the runtime
wrappers hold a lock around their session), so concurrent callers queue per model.

:class:`FrameQueue` is the bounded per-stream queue the streaming endpoints (WebSocket, gRPC) put between
the receiver and the pipeline, with the "drop the oldest" or "block the receiver" policy.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from perception.camera.boxes import Detection2D
from perception.lidar.clustering import Instance, cluster_instances
from perception.runtime.detector import Detector
from perception.runtime.segmenter import InvalidInputError, Segmenter
from perception.runtime.session import LoadedModel, ModelLoadError, TensorRTOptions, warm_up

log = logging.getLogger(__name__)

Stage = Literal["camera", "lidar"]
NanPolicy = Literal["error", "drop"]
StreamPolicy = Literal["drop", "block"]

__all__ = [
    "AsyncFrameQueue",
    "Frame",
    "FrameQueue",
    "InvalidInputError",
    "ModelInfo",
    "ModelLoadError",
    "PerceptionResult",
    "Pipeline",
    "QueueClosedError",
    "StageUnavailableError",
]


class StageUnavailableError(RuntimeError):
    """A frame needs a stage whose model is not loaded; the message says which model and why."""

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        super().__init__(message)


@dataclass
class Frame:
    """One synchronised sensor frame; either sensor may be missing, not both.

    Attributes:
        frame_id: the caller's id of the frame, returned unchanged.
        timestamp: sensor time in seconds, returned unchanged.
        image: uint8 (H, W, 3) RGB camera image, or None.
        points: float32 (N, 4) x, y, z (metres, LiDAR frame), intensity; or None.
    """

    frame_id: str
    timestamp: float
    image: np.ndarray | None = None
    points: np.ndarray | None = None


@dataclass
class PerceptionResult:
    """What the pipeline made of one :class:`Frame`.

    Attributes:
        frame_id, timestamp: copied from the frame (timestamp in seconds).
        detections: camera detections, boxes in pixels of the frame's image (empty without an image).
        labels: int64 (N,) class per input point (0 unknown, 1 car, 2 pedestrian, 3 cyclist), or None
            without points.
        scores: float32 (N,) probability of each point's class (0 outside the field of view), or None.
        instances: object instances with oriented 3D boxes in the LiDAR frame (metres).
        providers: ONNX Runtime execution provider per stage that ran (``camera``, ``lidar``).
        timings_ms: wall time per stage in milliseconds: ``camera.preprocess``, ``camera.inference``,
            ``camera.postprocess``, ``camera`` (whole camera stage), ``lidar.projection``,
            ``lidar.inference``, ``lidar.unprojection``, ``lidar.clustering``, ``lidar`` (whole LiDAR
            stage) and ``total`` (the frame, both stages overlapping), for the stages that ran.
        dropped_before: frames of the same stream dropped (never processed) since the previous result
            of that stream; 0 outside streams. Summed over a stream's results it is the stream's total.
        image_size: (width, height) of the image in pixels, or None.
        num_points_in_view: points that fell inside the segmentation sensor's field of view.
        classes: the segmentation model's class names, index = label.
    """

    frame_id: str
    timestamp: float
    detections: list[Detection2D] = field(default_factory=list)
    labels: np.ndarray | None = None
    scores: np.ndarray | None = None
    instances: list[Instance] = field(default_factory=list)
    providers: dict[str, str] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    dropped_before: int = 0
    image_size: tuple[int, int] | None = None
    num_points_in_view: int | None = None
    classes: tuple[str, ...] = ()

    @property
    def num_points(self) -> int | None:
        return None if self.labels is None else int(self.labels.shape[0])

    def class_counts(self) -> dict[str, int] | None:
        """Points per class name, or None without points."""
        if self.labels is None:
            return None
        counts = np.bincount(self.labels, minlength=len(self.classes))
        names = list(self.classes) + [str(i) for i in range(len(self.classes), counts.shape[0])]
        return {name: int(c) for name, c in zip(names, counts, strict=True)}

    def to_dict(self, include_labels: bool = False, include_point_indices: bool = False) -> dict[str, Any]:
        """A JSON-friendly dict (lists, str, Python numbers).

        Per-point ``labels`` (ints) and ``scores`` (floats rounded to 1e-4) are included only when
        ``include_labels`` is set (a 120k-point scan makes ~1 MB of JSON); each instance's
        ``point_indices`` only with ``include_point_indices``.
        """
        out: dict[str, Any] = {
            "frame_id": self.frame_id,
            "timestamp": float(self.timestamp),
            "image_size": list(self.image_size) if self.image_size is not None else None,
            "num_points": self.num_points,
            "num_points_in_view": self.num_points_in_view,
            "detections": [_detection_dict(d) for d in self.detections],
            "instances": [inst.to_dict(include_points=include_point_indices) for inst in self.instances],
            "class_counts": self.class_counts(),
            "providers": dict(self.providers),
            "timings_ms": {k: round(float(v), 3) for k, v in self.timings_ms.items()},
            "dropped_before": int(self.dropped_before),
        }
        if include_labels and self.labels is not None:
            out["labels"] = self.labels.tolist()
            out["scores"] = np.round(self.scores.astype(np.float64), 4).tolist() if self.scores is not None else None
        return out


def _detection_dict(det: Detection2D) -> dict[str, Any]:
    return {
        "class_id": int(det.class_id),
        "class_name": str(det.class_name),
        "score": float(det.score),
        "x1": float(det.x1),
        "y1": float(det.y1),
        "x2": float(det.x2),
        "y2": float(det.y2),
    }


@dataclass
class ModelInfo:
    """What is configured and loaded for one stage (``GET /v1/models``).

    ``input_size`` is (width, height) in pixels for the detector and (rows, columns) of the range image
    for the segmenter; ``providers`` lists the execution providers ONNX Runtime actually uses, first = runs;
    ``version`` is the ONNX ``model_version`` (None when the file sets none); ``sha256`` identifies the file;
    ``weights`` is the ``perception.weights`` metadata the exporter writes (checkpoint or "freshly initialised").
    """

    stage: str
    path: str
    loaded: bool
    error: str | None = None
    name: str = ""
    task: str | None = None
    architecture: str | None = None
    version: int | None = None
    sha256: str | None = None
    weights: str | None = None
    classes: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    requested_providers: list[str] = field(default_factory=list)
    input_size: list[int] | None = None
    sensor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list | tuple) else v) for k, v in self.__dict__.items()}


_UNSET_VERSION = 2**63 - 1  # what ONNX Runtime reports when the model sets no model_version


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_info(stage: str, path: Path, model: LoadedModel) -> ModelInfo:
    meta = model.session.get_modelmeta()
    version = int(meta.version)
    return ModelInfo(
        stage=stage,
        path=str(path),
        loaded=True,
        name=path.name,
        task=model.metadata.get("perception.task"),
        architecture=model.metadata.get("perception.architecture"),
        version=version if 0 < version < _UNSET_VERSION else None,
        sha256=_sha256(path),
        weights=model.metadata.get("perception.weights"),
        providers=list(model.providers),
        requested_providers=list(model.requested_providers),
    )


class Pipeline:
    """SqueezeDet (camera) and SqueezeSeg + clustering (LiDAR) on ONNX Runtime, loaded once.

    Args:
        seg_model_path: SqueezeSeg ONNX model, or None for no LiDAR stage.
        det_model_path: SqueezeDet ONNX model, or None for no camera stage.
        providers: ``auto`` (TensorRT -> CUDA -> CPU) or a list such as ``cuda,cpu``.
        cluster: group labelled points into instances with 3D boxes (the ``lidar.clustering`` stage).
        nan_policy: ``error`` refuses clouds with NaN/inf values (:class:`InvalidInputError`); ``drop``
            labels such points 0 with score 0.
        strict: raise :class:`ModelLoadError` when a given model cannot be loaded; otherwise record the
            error (:attr:`load_errors`, :meth:`models`) and leave that stage unavailable.
        workers: threads of the pool that runs the camera stage next to the LiDAR stage.
        intra_op_threads: ONNX Runtime threads per session (0: its default).
        tensorrt: TensorRT provider options (precision, engine cache) when TensorRT runs a model.
    """

    def __init__(
        self,
        seg_model_path: str | os.PathLike[str] | None = None,
        det_model_path: str | os.PathLike[str] | None = None,
        providers: str | Sequence[str] = "auto",
        *,
        cluster: bool = True,
        nan_policy: NanPolicy = "error",
        strict: bool = True,
        workers: int = 2,
        intra_op_threads: int = 0,
        tensorrt: TensorRTOptions | None = None,
    ) -> None:
        if nan_policy not in ("error", "drop"):
            raise ValueError(f"nan_policy must be 'error' or 'drop', got {nan_policy!r}")
        self.cluster = cluster
        self._strict = strict
        self.nan_policy: NanPolicy = nan_policy
        self.segmenter: Segmenter | None = None
        self.detector: Detector | None = None
        self.load_errors: dict[str, str] = {}
        self._infos: dict[str, ModelInfo] = {}
        self.seg_model_path = Path(seg_model_path) if seg_model_path is not None else None
        self.det_model_path = Path(det_model_path) if det_model_path is not None else None
        if self.seg_model_path is not None:
            try:
                # the pipeline checks NaN/inf itself (nan_policy); the segmenter drops origin points quietly
                self.segmenter = Segmenter(
                    self.seg_model_path, providers, nan_policy="drop", intra_op_threads=intra_op_threads,
                    tensorrt=tensorrt,
                )  # fmt: skip
                info = _model_info("lidar", self.seg_model_path, self.segmenter.model)
                info.classes = list(self.segmenter.classes)
                info.input_size = list(self.segmenter.input_shape)
                info.sensor = self.segmenter.sensor.name
                self._infos["lidar"] = info
            except ModelLoadError as exc:
                self._load_failed("lidar", self.seg_model_path, exc, strict)
        if self.det_model_path is not None:
            try:
                self.detector = Detector(
                    self.det_model_path, providers, intra_op_threads=intra_op_threads, tensorrt=tensorrt
                )
                info = _model_info("camera", self.det_model_path, self.detector.model)
                info.classes = list(self.detector.classes)
                info.input_size = list(self.detector.input_size)
                self._infos["camera"] = info
            except ModelLoadError as exc:
                self._load_failed("camera", self.det_model_path, exc, strict)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="perception-camera")
        self._closed = False

    def _load_failed(self, stage: str, path: Path, exc: ModelLoadError, strict: bool) -> None:
        if strict:
            raise exc
        log.error("%s stage unavailable: %s", stage, exc)
        self.load_errors[stage] = str(exc)
        self._infos[stage] = ModelInfo(stage=stage, path=str(path), loaded=False, error=str(exc), name=path.name)

    # --- state ---------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True when every configured model loaded (and at least one is configured)."""
        return not self.load_errors and (self.segmenter is not None or self.detector is not None)

    def available(self, stage: Stage) -> bool:
        return (self.detector if stage == "camera" else self.segmenter) is not None

    def models(self) -> list[ModelInfo]:
        """Configured models (loaded or not), camera first."""
        return [self._infos[s] for s in ("camera", "lidar") if s in self._infos]

    def require(self, stage: Stage) -> None:
        """Raise :class:`StageUnavailableError` (naming the model and why) unless ``stage`` can run."""
        if self.available(stage):
            return
        task, path = ("detection", self.det_model_path) if stage == "camera" else ("segmentation", self.seg_model_path)
        if path is None:
            raise StageUnavailableError(stage, f"the {stage} stage is not configured: no {task} model was given")
        raise StageUnavailableError(
            stage, f"the {stage} stage is unavailable: {self.load_errors.get(stage, f'{path}: not loaded')}"
        )

    def warm_up(self) -> dict[str, float]:
        """Run each loaded model once on zeros; return the seconds each stage's first run took.

        On TensorRT this builds (or loads from the engine cache) the engines, on CUDA it initialises the
        device, so the first real frame runs at full speed. A model that cannot run is treated like one
        that failed to load: its stage becomes unavailable and the error is recorded (or raised when
        ``strict``).
        """
        seconds: dict[str, float] = {}
        for stage in ("lidar", "camera"):
            runner = self.segmenter if stage == "lidar" else self.detector
            if runner is None:
                continue
            try:
                seconds[stage] = warm_up(runner.model)
            except ModelLoadError as exc:
                if stage == "lidar":
                    self.segmenter = None
                else:
                    self.detector = None
                self._load_failed(stage, runner.model.path, exc, self._strict)
        return seconds

    # --- validation ----------------------------------------------------------------------------

    def _check_points(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points)
        if pts.dtype.kind not in "fiu":
            raise InvalidInputError(f"points: expected a numeric (N, 4) array, got dtype {pts.dtype}")
        if pts.ndim != 2 or pts.shape[1] not in (3, 4):
            raise InvalidInputError(f"points: expected shape (N, 4) or (N, 3), got {pts.shape}")
        if pts.shape[0] == 0:
            raise InvalidInputError("point cloud is empty")
        if self.nan_policy == "error":
            finite = np.isfinite(pts).all(axis=1)
            if not finite.all():
                bad = int((~finite).sum())
                raise InvalidInputError(f"{bad} of {pts.shape[0]} points have NaN or infinite values")
        return pts

    # --- stages --------------------------------------------------------------------------------

    def _camera(self, image: np.ndarray) -> tuple[list[Detection2D], tuple[int, int], dict[str, float], str]:
        assert self.detector is not None
        t0 = time.perf_counter()
        res = self.detector.detect(image)
        timings = {f"camera.{k}": v for k, v in res.timings_ms.items()}
        timings["camera"] = (time.perf_counter() - t0) * 1e3
        return res.detections, res.image_size, timings, res.provider

    def _lidar(self, points: np.ndarray) -> tuple[Any, list[Instance], dict[str, float], str]:
        assert self.segmenter is not None
        t0 = time.perf_counter()
        seg = self.segmenter.segment(points)
        timings = {f"lidar.{k}": v for k, v in seg.timings_ms.items()}
        instances: list[Instance] = []
        if self.cluster:
            t1 = time.perf_counter()
            instances = cluster_instances(points, seg.labels, seg.projection, scores=seg.scores)
            timings["lidar.clustering"] = (time.perf_counter() - t1) * 1e3
        timings["lidar"] = (time.perf_counter() - t0) * 1e3
        return seg, instances, timings, seg.provider

    def run(self, frame: Frame) -> PerceptionResult:
        """Run the stages the frame has data for; camera and LiDAR concurrently when it has both.

        Raises:
            InvalidInputError: a frame with neither sensor, or bad image/points (message says what).
            StageUnavailableError: the frame needs a model that is not loaded.
        """
        if self._closed:
            raise RuntimeError("the pipeline is closed")
        if frame.image is None and frame.points is None:
            raise InvalidInputError("the frame has neither an image nor points")
        if not np.isfinite(frame.timestamp):
            raise InvalidInputError(f"timestamp must be a finite number of seconds, got {frame.timestamp!r}")
        if frame.image is not None:
            self.require("camera")
        points = None
        if frame.points is not None:
            self.require("lidar")
            points = self._check_points(frame.points)
        t0 = time.perf_counter()
        result = PerceptionResult(frame_id=str(frame.frame_id), timestamp=float(frame.timestamp))
        camera_future = None
        if frame.image is not None:
            if points is not None:
                camera_future = self._pool.submit(self._camera, frame.image)
            else:
                result.detections, result.image_size, timings, provider = self._camera(frame.image)
                result.timings_ms.update(timings)
                result.providers["camera"] = provider
        try:
            if points is not None:
                seg, result.instances, timings, provider = self._lidar(points)
                result.labels, result.scores = seg.labels, seg.scores
                result.num_points_in_view = int(seg.projection.in_view.sum())
                result.classes = tuple(seg.classes)
                result.timings_ms.update(timings)
                result.providers["lidar"] = provider
        finally:
            if camera_future is not None:
                # wait for the camera even when the LiDAR stage failed, so no work outlives the call
                cam = camera_future.result()
        if camera_future is not None:
            result.detections, result.image_size, timings, provider = cam
            result.timings_ms.update(timings)
            result.providers["camera"] = provider
        result.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return result

    def close(self) -> None:
        """Stop the thread pool (the sessions are freed with the object)."""
        self._closed = True
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- streams -------------------------------------------------------------------------------------

T = TypeVar("T")


class QueueClosedError(Exception):
    """:meth:`FrameQueue.put` on a closed queue."""


class FrameQueue(Generic[T]):
    """A thread-safe bounded FIFO between a stream's receiver and the pipeline.

    ``policy="drop"``: :meth:`put` never waits; when the queue is full the *oldest* queued item is
    dropped, so the pipeline always works on the freshest frames and the newest frame is never dropped.
    ``policy="block"``: :meth:`put` waits for room (back-pressure on the sender).

    :meth:`get` returns ``(item, dropped_before)``: the number of items dropped since the previous
    ``get``, i.e. between the previous delivered item and this one (items are dropped oldest first, so
    every dropped item lies between those two). After :meth:`close`, ``put`` raises :class:`QueueClosedError`
    and ``get`` drains what is queued, then returns None.
    """

    def __init__(self, maxsize: int, policy: StreamPolicy = "drop") -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        if policy not in ("drop", "block"):
            raise ValueError(f"policy must be 'drop' or 'block', got {policy!r}")
        self.maxsize = maxsize
        self.policy: StreamPolicy = policy
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._dropped_pending = 0
        self.received = 0
        self.dropped = 0

    def put(self, item: T) -> int:
        """Queue ``item``; return how many older items this put dropped (0 or 1)."""
        with self._cond:
            if self._closed:
                raise QueueClosedError("the stream is closed")
            dropped = 0
            if self.policy == "block":
                while len(self._items) >= self.maxsize and not self._closed:
                    self._cond.wait()
                if self._closed:
                    raise QueueClosedError("the stream is closed")
            elif len(self._items) >= self.maxsize:
                self._items.popleft()
                dropped = 1
                self._dropped_pending += 1
                self.dropped += 1
            self._items.append(item)
            self.received += 1
            self._cond.notify_all()
            return dropped

    def get(self, timeout: float | None = None) -> tuple[T, int] | None:
        """The oldest item and the drops before it; None once closed and empty (or on timeout)."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            item = self._items.popleft()
            dropped, self._dropped_pending = self._dropped_pending, 0
            self._cond.notify_all()
            return item, dropped

    def close(self) -> None:
        """No more puts; queued items are still delivered by :meth:`get`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class AsyncFrameQueue(Generic[T]):
    """:class:`FrameQueue` for one asyncio event loop (the WebSocket endpoint): same policies and counts.

    Not thread-safe: use it from the coroutines of one event loop only.
    """

    def __init__(self, maxsize: int, policy: StreamPolicy = "drop") -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        if policy not in ("drop", "block"):
            raise ValueError(f"policy must be 'drop' or 'block', got {policy!r}")
        self.maxsize = maxsize
        self.policy: StreamPolicy = policy
        self._items: collections.deque[T] = collections.deque()
        self._cond = asyncio.Condition()
        self._closed = False
        self._dropped_pending = 0
        self.received = 0
        self.dropped = 0

    async def put(self, item: T) -> int:
        """Queue ``item`` (waiting for room under "block"); return how many older items it dropped."""
        async with self._cond:
            if self._closed:
                raise QueueClosedError("the stream is closed")
            dropped = 0
            if self.policy == "block":
                await self._cond.wait_for(lambda: len(self._items) < self.maxsize or self._closed)
                if self._closed:
                    raise QueueClosedError("the stream is closed")
            elif len(self._items) >= self.maxsize:
                self._items.popleft()
                dropped = 1
                self._dropped_pending += 1
                self.dropped += 1
            self._items.append(item)
            self.received += 1
            self._cond.notify_all()
            return dropped

    async def get(self) -> tuple[T, int] | None:
        """The oldest item and the drops before it; None once closed and empty."""
        async with self._cond:
            await self._cond.wait_for(lambda: bool(self._items) or self._closed)
            if not self._items:
                return None
            item = self._items.popleft()
            dropped, self._dropped_pending = self._dropped_pending, 0
            self._cond.notify_all()
            return item, dropped

    async def close(self) -> None:
        async with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)
