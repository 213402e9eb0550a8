"""Perception results as ROS messages, for ROS 1 or ROS 2, pure functions.

Four outputs per frame (DESIGN.md data contracts; type names per :class:`RosDialect`):

* ``detections_2d``: ``vision_msgs/Detection2DArray``, the camera detections, boxes as centre and size
  in pixels of the input image, with the camera message's stamp and frame id;
* ``detections_3d``: ``vision_msgs/Detection3DArray``, the LiDAR instances, oriented boxes (centre in
  metres, orientation a rotation of ``yaw`` about +z, size = length, width, height in metres) in the
  LiDAR message's frame, with its stamp;
* ``labelled_points``: ``sensor_msgs/PointCloud2`` with fields x, y, z, intensity (float32; metres,
  [0, 1]), label (uint16: 0 unknown, 1 car, 2 pedestrian, 3 cyclist) and instance (uint16: the
  instance id, 0 for none); the points the pipeline saw (invalid points of the input dropped);
* ``markers``: ``visualization_msgs/MarkerArray`` for RViz: a DELETEALL marker (clears the previous
  frame's boxes), then per instance a translucent CUBE (namespace ``<ns>/boxes``) and a TEXT label
  (``<ns>/labels``), coloured by class.

The two vision_msgs generations differ:

* ROS 1 (vision_msgs 0.0.x, noetic): ``ObjectHypothesisWithPose`` has ``int64 id`` and ``score``;
  ``BoundingBox2D.center`` is a ``geometry_msgs/Pose2D`` (x, y, theta). The id is the class id of
  DESIGN.md's labels for both 2D and 3D (1 car, 2 pedestrian, 3 cyclist).
* ROS 2 (vision_msgs 4.x, humble and later): ``hypothesis.class_id`` is the class name (``car``) and
  ``hypothesis.score`` the score; ``BoundingBox2D.center`` is ``vision_msgs/Pose2D`` (``position.x``,
  ``position.y``, ``theta``); ``Detection2D.id``/``Detection3D.id`` carry the detection index and
  the instance id as strings.

Messages are built as plain dicts with :class:`~perception.ros.messages.Stamp` for times and bytes for
``uint8[]``; :func:`to_rosbridge` turns one into rosbridge v2 JSON for a ROS version, and
:func:`perception.ros.typedefs.dict_to_rosbags` into a rosbags message for a bag.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from perception.camera.boxes import Detection2D
from perception.lidar.clustering import CLASS_NAMES, Box3D, Instance, instance_ids_per_point
from perception.pipeline import PerceptionResult
from perception.ros.messages import Stamp, make_header, points_to_pointcloud2

RosVersion = Literal[1, 2]

#: The output names (keys of :func:`result_messages` and of the topic configuration).
OUTPUTS: tuple[str, ...] = ("detections_2d", "detections_3d", "labelled_points", "markers")

#: Message type of each input/output, by ROS 1 name (the key used for overrides).
POINTCLOUD2 = "sensor_msgs/PointCloud2"
IMAGE = "sensor_msgs/Image"
COMPRESSED_IMAGE = "sensor_msgs/CompressedImage"
DETECTION2D_ARRAY = "vision_msgs/Detection2DArray"
DETECTION3D_ARRAY = "vision_msgs/Detection3DArray"
MARKER_ARRAY = "visualization_msgs/MarkerArray"
OUTPUT_TYPES: dict[str, str] = {
    "detections_2d": DETECTION2D_ARRAY,
    "detections_3d": DETECTION3D_ARRAY,
    "labelled_points": POINTCLOUD2,
    "markers": MARKER_ARRAY,
}

#: Class name -> DESIGN.md label id (the ids ROS 1 hypotheses carry).
LABEL_IDS: dict[str, int] = {name: cid for cid, name in CLASS_NAMES.items()}

#: RGB in [0, 1] per label id for the RViz markers.
CLASS_COLOURS: dict[int, tuple[float, float, float]] = {
    1: (0.15, 0.55, 1.0),
    2: (1.0, 0.25, 0.2),
    3: (0.2, 0.85, 0.3),
}
_OTHER_COLOUR = (0.8, 0.8, 0.8)

# visualization_msgs/Marker constants (the same in ROS 1 and ROS 2)
MARKER_CUBE, MARKER_TEXT = 1, 9
MARKER_ADD, MARKER_DELETEALL = 0, 3


@dataclass(frozen=True)
class RosDialect:
    """ROS 1 or ROS 2 message layouts and type names.

    Args:
        version: 1 (``pkg/Type`` names, stamps as ``secs``/``nsecs``, vision_msgs 0.0.x) or 2
            (``pkg/msg/Type``, ``sec``/``nanosec``, vision_msgs 4.x).
        type_overrides: replacement type names by ROS 1 name, e.g.
            ``{"sensor_msgs/PointCloud2": "sensor_msgs/msg/PointCloud2"}``; names only, the field
            layout still follows ``version``.
    """

    version: RosVersion = 2
    type_overrides: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.version not in (1, 2):
            raise ValueError(f"ROS version must be 1 or 2, got {self.version!r}")

    def type_name(self, ros1_name: str) -> str:
        """The type name to use on the wire for a type given by its ROS 1 name."""
        if ros1_name in self.type_overrides:
            return self.type_overrides[ros1_name]
        if self.version == 1:
            return ros1_name
        package, name = ros1_name.split("/")
        return f"{package}/msg/{name}"


def parse_type_overrides(items: Sequence[str]) -> dict[str, str]:
    """``KEY=TYPE`` strings (KEY a ROS 1 type name such as ``vision_msgs/Detection2DArray``) to a dict."""
    out = {}
    known = {POINTCLOUD2, IMAGE, COMPRESSED_IMAGE, DETECTION2D_ARRAY, DETECTION3D_ARRAY, MARKER_ARRAY}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ValueError(f"type override {item!r}: expected KEY=TYPE, e.g. {DETECTION2D_ARRAY}=my_msgs/Det2DArray")
        if key not in known:
            raise ValueError(f"type override {item!r}: unknown key {key!r}; keys are {', '.join(sorted(known))}")
        out[key] = value
    return out


# --- rosbridge encoding ----------------------------------------------------------------------


def to_rosbridge(value: Any, version: RosVersion) -> Any:
    """A message dict as rosbridge v2 JSON values: ``uint8[]`` (bytes) as base64 text, times as
    ``{"secs", "nsecs"}`` (ROS 1) or ``{"sec", "nanosec"}`` (ROS 2), numpy values as Python numbers."""
    if isinstance(value, Stamp):
        if version == 1:
            return {"secs": value.sec, "nsecs": value.nanosec}
        return {"sec": value.sec, "nanosec": value.nanosec}
    if isinstance(value, Mapping):
        return {str(k): to_rosbridge(v, version) for k, v in value.items()}
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8:
            return base64.b64encode(value.tobytes()).decode("ascii")
        return value.tolist()
    if isinstance(value, list | tuple):
        return [to_rosbridge(v, version) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- building blocks ---------------------------------------------------------------------------


def _point(x: float, y: float, z: float) -> dict[str, float]:
    return {"x": float(x), "y": float(y), "z": float(z)}


def yaw_quaternion(yaw: float) -> dict[str, float]:
    """``geometry_msgs/Quaternion`` of a rotation by ``yaw`` radians about +z."""
    return {"x": 0.0, "y": 0.0, "z": math.sin(yaw / 2.0), "w": math.cos(yaw / 2.0)}


def _box_pose(box: Box3D) -> dict[str, Any]:
    return {"position": _point(box.x, box.y, box.z), "orientation": yaw_quaternion(box.yaw)}


def _hypothesis(class_name: str, class_id: int, score: float, pose: dict[str, Any], version: RosVersion) -> dict:
    pose_cov = {"pose": pose}  # covariance left to its default (zeros)
    if version == 1:
        return {"id": int(LABEL_IDS.get(class_name, class_id)), "score": float(score), "pose": pose_cov}
    return {"hypothesis": {"class_id": str(class_name), "score": float(score)}, "pose": pose_cov}


def detection2d_array(detections: Sequence[Detection2D], header: Mapping[str, Any], version: RosVersion) -> dict:
    """``vision_msgs/Detection2DArray``: one Detection2D per camera detection (pixels of the input image)."""
    out = []
    for k, det in enumerate(detections):
        cx, cy = (det.x1 + det.x2) / 2.0, (det.y1 + det.y2) / 2.0
        w, h = det.x2 - det.x1, det.y2 - det.y1
        centre_pose = {"position": _point(cx, cy, 0.0), "orientation": yaw_quaternion(0.0)}
        item: dict[str, Any] = {
            "header": dict(header),
            "results": [_hypothesis(det.class_name, det.class_id, det.score, centre_pose, version)],
        }
        if version == 1:
            item["bbox"] = {
                "center": {"x": float(cx), "y": float(cy), "theta": 0.0},
                "size_x": float(w),
                "size_y": float(h),
            }
        else:
            item["bbox"] = {
                "center": {"position": {"x": float(cx), "y": float(cy)}, "theta": 0.0},
                "size_x": float(w),
                "size_y": float(h),
            }
            item["id"] = str(k)
        out.append(item)
    return {"header": dict(header), "detections": out}


def detection3d_array(instances: Sequence[Instance], header: Mapping[str, Any], version: RosVersion) -> dict:
    """``vision_msgs/Detection3DArray``: one Detection3D per instance, oriented box in the LiDAR frame."""
    out = []
    for inst in instances:
        box = inst.box
        item: dict[str, Any] = {
            "header": dict(header),
            "results": [_hypothesis(inst.class_name, inst.class_id, inst.score, _box_pose(box), version)],
            "bbox": {"center": _box_pose(box), "size": _point(box.length, box.width, box.height)},
        }
        if version == 2:
            item["id"] = str(inst.id)
        out.append(item)
    return {"header": dict(header), "detections": out}


def labelled_pointcloud2(
    header: Mapping[str, Any], points: np.ndarray, labels: np.ndarray, instance_ids: np.ndarray
) -> dict:
    """``sensor_msgs/PointCloud2`` x, y, z, intensity (float32), label, instance (uint16), unorganised."""
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be (N, 3) or (N, 4), got {pts.shape}")
    n = pts.shape[0]
    if labels.shape != (n,) or instance_ids.shape != (n,):
        raise ValueError(f"labels {labels.shape} and instance ids {instance_ids.shape} must be ({n},)")
    intensity = pts[:, 3] if pts.shape[1] > 3 else np.zeros(n, np.float32)
    return points_to_pointcloud2(
        header,
        {
            "x": pts[:, 0],
            "y": pts[:, 1],
            "z": pts[:, 2],
            "intensity": intensity,
            "label": np.clip(labels, 0, 65535).astype(np.uint16),
            "instance": np.clip(instance_ids, 0, 65535).astype(np.uint16),
        },
    )


def marker_array(
    instances: Sequence[Instance],
    header: Mapping[str, Any],
    namespace: str = "perception",
    lifetime: Stamp | None = None,
) -> dict:
    """``visualization_msgs/MarkerArray``: DELETEALL, then a CUBE and a TEXT marker per instance.

    ``lifetime`` 0 keeps markers until the next frame's DELETEALL. The layout is the same for ROS 1
    and ROS 2 (fields ROS 2 added are left to their defaults).
    """
    lifetime = lifetime if lifetime is not None else Stamp(0, 0)
    markers: list[dict[str, Any]] = [
        {"header": dict(header), "ns": namespace, "id": 0, "type": MARKER_CUBE, "action": MARKER_DELETEALL}
    ]
    for inst in instances:
        box = inst.box
        r, g, b = CLASS_COLOURS.get(inst.class_id, _OTHER_COLOUR)
        markers.append(
            {
                "header": dict(header),
                "ns": f"{namespace}/boxes",
                "id": int(inst.id),
                "type": MARKER_CUBE,
                "action": MARKER_ADD,
                "pose": _box_pose(box),
                "scale": _point(max(box.length, 0.05), max(box.width, 0.05), max(box.height, 0.05)),
                "color": {"r": r, "g": g, "b": b, "a": 0.45},
                "lifetime": lifetime,
                "frame_locked": False,
            }
        )
        markers.append(
            {
                "header": dict(header),
                "ns": f"{namespace}/labels",
                "id": int(inst.id),
                "type": MARKER_TEXT,
                "action": MARKER_ADD,
                "pose": {
                    "position": _point(box.x, box.y, box.z + box.height / 2.0 + 0.4),
                    "orientation": yaw_quaternion(0.0),
                },
                "scale": _point(0.0, 0.0, 0.6),
                "color": {"r": r, "g": g, "b": b, "a": 1.0},
                "lifetime": lifetime,
                "frame_locked": False,
                "text": f"{inst.class_name} #{inst.id} {inst.score:.2f}",
            }
        )
    return {"markers": markers}


def result_messages(
    result: PerceptionResult,
    *,
    version: RosVersion,
    points: np.ndarray | None = None,
    lidar_header: tuple[Stamp, str] | None = None,
    camera_header: tuple[Stamp, str] | None = None,
    outputs: Sequence[str] = OUTPUTS,
    marker_namespace: str = "perception",
) -> dict[str, dict[str, Any]]:
    """The output messages of one frame, by output name (see :data:`OUTPUTS`).

    Camera outputs are made when ``camera_header`` is given, LiDAR outputs when ``lidar_header`` and
    ``points`` (the (N, 4) cloud the pipeline saw, metres) are; ``result.labels`` is None for an empty
    cloud, which gives an empty labelled cloud and no instances. Headers are (stamp, frame id) of the
    input messages, or what the caller wants instead.
    """
    unknown = set(outputs) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"unknown outputs {sorted(unknown)}; known: {', '.join(OUTPUTS)}")
    out: dict[str, dict[str, Any]] = {}
    if camera_header is not None and "detections_2d" in outputs:
        out["detections_2d"] = detection2d_array(result.detections, make_header(*camera_header), version)
    if lidar_header is not None and points is not None:
        header = make_header(*lidar_header)
        if "detections_3d" in outputs:
            out["detections_3d"] = detection3d_array(result.instances, header, version)
        if "labelled_points" in outputs:
            n = points.shape[0]
            labels = result.labels if result.labels is not None else np.zeros(n, np.int64)
            if labels.shape != (n,):
                raise ValueError(f"the result has {labels.shape[0]} labels for {n} points")
            ids = instance_ids_per_point(result.instances, n)
            out["labelled_points"] = labelled_pointcloud2(header, points, labels, ids)
        if "markers" in outputs:
            out["markers"] = marker_array(result.instances, header, namespace=marker_namespace)
    return out


# --- results of the remote service -------------------------------------------------------------


def result_from_service(doc: Mapping[str, Any]) -> PerceptionResult:
    """A :class:`PerceptionResult` from the service's JSON/gRPC result dict (``perception.client``).

    Instances need ``point_indices`` (ask with ``include_point_indices``) for the labelled cloud's
    instance ids; per-point ``labels``/``scores`` come from ``include_labels``.
    """
    detections = [
        Detection2D(
            class_id=int(d["class_id"]),
            class_name=str(d["class_name"]),
            score=float(d["score"]),
            x1=float(d["x1"]),
            y1=float(d["y1"]),
            x2=float(d["x2"]),
            y2=float(d["y2"]),
        )
        for d in doc.get("detections", [])
    ]
    instances = []
    for i in doc.get("instances", []):
        centre, size = i["box"]["center"], i["box"]["size"]
        indices = np.asarray(i.get("point_indices", []), dtype=np.int64)
        instances.append(
            Instance(
                id=int(i["id"]),
                class_id=int(i["class_id"]),
                num_points=int(i["num_points"]),
                point_indices=indices,
                centroid=np.asarray(i["centroid"], dtype=np.float64),
                box=Box3D(*(float(v) for v in centre), *(float(v) for v in size), float(i["box"]["yaw"])),
                score=float(i.get("score", 1.0)),
            )
        )
    labels = doc.get("labels")
    scores = doc.get("scores")
    size = doc.get("image_size")
    return PerceptionResult(
        frame_id=str(doc.get("frame_id", "")),
        timestamp=float(doc.get("timestamp", 0.0)),
        detections=detections,
        labels=None if labels is None else np.asarray(labels, dtype=np.int64),
        scores=None if scores is None else np.asarray(scores, dtype=np.float32),
        instances=instances,
        providers=dict(doc.get("providers", {})),
        timings_ms={k: float(v) for k, v in doc.get("timings_ms", {}).items()},
        image_size=None if size is None else (int(size[0]), int(size[1])),
        num_points_in_view=doc.get("num_points_in_view"),
    )
