"""Camera detection on ONNX Runtime: an RGB frame in, SqueezeDet boxes in original-image pixels out."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from perception.camera.anchors import squeezedet_anchors
from perception.camera.boxes import Detection2D, postprocess_detections
from perception.camera.preprocess import to_network_input
from perception.runtime.segmenter import InvalidInputError
from perception.runtime.session import LoadedModel, ModelLoadError, TensorRTOptions, load_model


@dataclass
class DetectionResult:
    detections: list[Detection2D]
    image_size: tuple[int, int]  # (width, height) of the original frame
    timings_ms: dict[str, float]
    provider: str


class Detector:
    """A SqueezeDet / SqueezeDet+ ONNX model with the original post-processing. Thread-safe."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        providers: str | Sequence[str] = "auto",
        prob_threshold: float = 0.005,
        nms_threshold: float = 0.4,
        top_n: int = 64,
        intra_op_threads: int = 0,
        tensorrt: TensorRTOptions | None = None,
    ) -> None:
        self.model: LoadedModel = load_model(
            model_path, providers, intra_op_threads=intra_op_threads, tensorrt=tensorrt
        )
        meta = self.model.metadata
        if meta.get("perception.task") != "detection":
            raise ModelLoadError(f"{model_path}: not a detection model (task {meta.get('perception.task', 'unset')!r})")
        try:
            self.input_size = (int(meta["perception.input_width"]), int(meta["perception.input_height"]))
            grid_w, grid_h = json.loads(meta["perception.grid"])
            self.classes = tuple(json.loads(meta["perception.classes"]))
        except (KeyError, ValueError) as exc:
            raise ModelLoadError(f"{model_path}: model metadata lacks input size, grid or classes ({exc})") from None
        self.anchors = squeezedet_anchors(self.input_size[0], self.input_size[1], grid_w, grid_h)
        shape = self.model.session.get_inputs()[0].shape
        if list(shape[1:]) != [3, self.input_size[1], self.input_size[0]]:
            raise ModelLoadError(
                f"{model_path}: input is {shape}, metadata says 3 x {self.input_size[1]} x {self.input_size[0]}"
            )
        outputs = self.model.session.get_outputs()
        if outputs[1].shape[1] != len(self.anchors):
            raise ModelLoadError(
                f"{model_path}: {outputs[1].shape[1]} anchors in the graph, {len(self.anchors)} from its grid"
            )
        self.prob_threshold = prob_threshold
        self.nms_threshold = nms_threshold
        self.top_n = top_n
        self._lock = threading.Lock()

    @property
    def provider(self) -> str:
        return self.model.provider

    def detect(self, image: np.ndarray) -> DetectionResult:
        """Detections in an RGB uint8 (H, W, 3) frame, boxes in its own pixels."""
        t0 = time.perf_counter()
        try:
            batch = to_network_input(image, self.input_size)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        height, width = np.asarray(image).shape[:2]
        t1 = time.perf_counter()
        with self._lock:
            probs, conf, deltas = self.model.session.run(["class_probs", "confidence", "deltas"], {"image": batch})
        t2 = time.perf_counter()
        detections = postprocess_detections(
            probs[0], conf[0], deltas[0], self.anchors,
            prob_threshold=self.prob_threshold, nms_threshold=self.nms_threshold, top_n=self.top_n,
            input_size=self.input_size, original_size=(width, height), class_names=self.classes,
        )  # fmt: skip
        t3 = time.perf_counter()
        return DetectionResult(
            detections=detections,
            image_size=(width, height),
            timings_ms={"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3},
            provider=self.provider,
        )
