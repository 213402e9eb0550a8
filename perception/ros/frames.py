"""One paired frame -> decoded inputs -> pipeline -> result messages; shared by the bridge and bag replay.

:func:`process_pair` never raises for bad input: a malformed message is reported as a ``malformed``
problem and left out of the frame (a scan and an image whose scan is malformed still runs camera-only),
and a processor error (bad frame, missing model, service down) as a ``failed`` problem. The caller
counts and logs the problems and publishes or writes the messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from perception.pipeline import Frame, PerceptionResult
from perception.ros.messages import MessageError, compressed_image_to_rgb, image_to_rgb, pointcloud2_to_xyzi
from perception.ros.results import OUTPUTS, RosVersion, result_messages
from perception.ros.sync import FramePair, Incoming

Processor = Callable[[Frame], PerceptionResult]


@dataclass(frozen=True)
class FrameOptions:
    """How frames become messages.

    Attributes:
        version: ROS 1 or 2 message layouts.
        outputs: the outputs to build (see :data:`perception.ros.results.OUTPUTS`).
        lidar_frame, camera_frame: frame ids for the outputs instead of the inputs' ones (None: keep).
        intensity_scale: ``auto`` or a factor (see :func:`perception.ros.messages.normalise_intensity`).
        marker_namespace: namespace prefix of the RViz markers.
    """

    version: RosVersion = 2
    outputs: tuple[str, ...] = OUTPUTS
    lidar_frame: str | None = None
    camera_frame: str | None = None
    intensity_scale: float | str = "auto"
    marker_namespace: str = "perception"


@dataclass
class FrameOutput:
    """What one frame gave: the pair it came from, the pipeline's result and the output messages."""

    pair: FramePair
    result: PerceptionResult
    messages: dict[str, dict[str, Any]]


class FrameProblem(NamedTuple):
    """``kind`` is ``malformed`` (an input message) or ``failed`` (the processor); ``message`` says why."""

    kind: Literal["malformed", "failed"]
    message: str
    source: str = ""  # "lidar" or "camera" for a malformed input


def decode_input(item: Incoming, intensity_scale: float | str = "auto") -> np.ndarray:
    """A scan as float32 (N, 4) or an image (raw or compressed, told apart by its fields) as uint8 RGB.

    Raises :class:`~perception.ros.messages.MessageError` for a malformed message.
    """
    if item.kind == "lidar":
        return pointcloud2_to_xyzi(item.message, intensity_scale=intensity_scale)
    if isinstance(item.message, Mapping) and "format" in item.message and "encoding" not in item.message:
        return compressed_image_to_rgb(item.message)
    return image_to_rgb(item.message)


def process_pair(
    pair: FramePair, processor: Processor, options: FrameOptions
) -> tuple[FrameOutput | None, list[FrameProblem]]:
    """Decode the pair's messages, run the processor, build the output messages.

    Returns (output or None when nothing could run, problems met). A scan whose points are all
    invalid gives empty LiDAR outputs without running the processor.
    """
    problems: list[FrameProblem] = []
    decoded: dict[str, np.ndarray | None] = {"lidar": None, "camera": None}
    for item in (pair.lidar, pair.camera):
        if item is None:
            continue
        try:
            decoded[item.kind] = decode_input(item, options.intensity_scale)
        except MessageError as exc:
            problems.append(
                FrameProblem("malformed", f"skipped a malformed message (stamp {item.stamp}): {exc}", item.kind)
            )
    points, image = decoded["lidar"], decoded["camera"]
    if points is None and image is None:
        return None, problems
    lead = pair.lidar if points is not None else pair.camera
    assert lead is not None
    frame = Frame(
        frame_id=str(lead.stamp),
        timestamp=lead.stamp.to_sec(),
        image=image,
        points=points if points is not None and len(points) else None,
    )
    try:
        if frame.image is None and frame.points is None:
            result = PerceptionResult(frame_id=frame.frame_id, timestamp=frame.timestamp)  # an empty scan
        else:
            result = processor(frame)
    except Exception as exc:  # whatever a frame or the service does, the caller goes on
        problems.append(FrameProblem("failed", f"frame {lead.stamp} failed: {type(exc).__name__}: {exc}"))
        return None, problems
    lidar_header = camera_header = None
    if points is not None and pair.lidar is not None:
        lidar_header = (pair.lidar.stamp, options.lidar_frame or pair.lidar.frame_id)
    if image is not None and pair.camera is not None:
        camera_header = (pair.camera.stamp, options.camera_frame or pair.camera.frame_id)
    try:
        messages = result_messages(
            result,
            version=options.version,
            points=points,
            lidar_header=lidar_header,
            camera_header=camera_header,
            outputs=options.outputs,
            marker_namespace=options.marker_namespace,
        )
    except ValueError as exc:
        problems.append(FrameProblem("failed", f"frame {lead.stamp}: cannot build the result messages: {exc}"))
        return None, problems
    return FrameOutput(pair, result, messages), problems
