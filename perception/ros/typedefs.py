"""Message types for bags (rosbags): vision_msgs definitions and dict <-> rosbags message conversion.

rosbags ships the standard message types (sensor_msgs, std_msgs, geometry_msgs, visualization_msgs)
for each ROS distribution but not vision_msgs, so the definitions are registered here, transcribed from
the ros-perception/vision_msgs package:

* ROS 1 (noetic, vision_msgs 0.0.x): Detection2D(Array), Detection3D(Array), ObjectHypothesisWithPose
  (``int64 id``, ``float64 score``, pose), BoundingBox2D (``geometry_msgs/Pose2D center``), BoundingBox3D;
* ROS 2 (humble and later, vision_msgs 4.x): the same plus ObjectHypothesis (``string class_id``,
  ``float64 score``), Point2D and Pose2D of vision_msgs, and the ``string id`` of detections.

rosbags is imported inside the functions: this module loads without the ``[ros]`` extra.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from perception.ros.messages import Stamp

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

VISION_MSGS_ROS1: dict[str, str] = {
    "vision_msgs/msg/ObjectHypothesisWithPose": "int64 id\nfloat64 score\ngeometry_msgs/PoseWithCovariance pose\n",
    "vision_msgs/msg/BoundingBox2D": "geometry_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/BoundingBox3D": "geometry_msgs/Pose center\ngeometry_msgs/Vector3 size\n",
    "vision_msgs/msg/Detection2D": (
        "Header header\nObjectHypothesisWithPose[] results\nBoundingBox2D bbox\nsensor_msgs/Image source_img\n"
    ),
    "vision_msgs/msg/Detection2DArray": "Header header\nDetection2D[] detections\n",
    "vision_msgs/msg/Detection3D": (
        "Header header\nObjectHypothesisWithPose[] results\nBoundingBox3D bbox\nsensor_msgs/PointCloud2 source_cloud\n"
    ),
    "vision_msgs/msg/Detection3DArray": "Header header\nDetection3D[] detections\n",
}

VISION_MSGS_ROS2: dict[str, str] = {
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": "ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n",
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/BoundingBox3D": "geometry_msgs/Pose center\ngeometry_msgs/Vector3 size\n",
    "vision_msgs/msg/Detection2D": (
        "std_msgs/Header header\nObjectHypothesisWithPose[] results\nBoundingBox2D bbox\nstring id\n"
    ),
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nDetection2D[] detections\n",
    "vision_msgs/msg/Detection3D": (
        "std_msgs/Header header\nObjectHypothesisWithPose[] results\nBoundingBox3D bbox\nstring id\n"
    ),
    "vision_msgs/msg/Detection3DArray": "std_msgs/Header header\nDetection3D[] detections\n",
}


def register_vision_msgs(typestore: Typestore, version: int) -> Typestore:
    """Add the vision_msgs types of ROS ``version`` (1 or 2) to ``typestore`` (kept where present)."""
    from rosbags.typesys import get_types_from_msg

    definitions = VISION_MSGS_ROS1 if version == 1 else VISION_MSGS_ROS2
    types: dict[str, Any] = {}
    for name, text in definitions.items():
        if name not in typestore.fielddefs:
            types.update(get_types_from_msg(text, name))
    typestore.register(types)
    return typestore


def output_typestore(version: int) -> Typestore:
    """A typestore for writing results: ROS 1 noetic or ROS 2 humble, plus vision_msgs."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC if version == 1 else Stores.ROS2_HUMBLE)
    return register_vision_msgs(store, version)


def normalise_type_name(name: str) -> str:
    """``pkg/Type`` or ``pkg/msg/Type`` -> ``pkg/msg/Type`` (rosbags' spelling)."""
    parts = name.strip("/").split("/")
    if len(parts) == 2:
        return f"{parts[0]}/msg/{parts[1]}"
    return "/".join(parts)


# --- rosbags message <-> dict ------------------------------------------------------------------


def rosbags_to_dict(msg: Any) -> Any:
    """A rosbags message as nested dicts (the form :mod:`perception.ros.messages` reads).

    Numeric arrays stay numpy arrays (a PointCloud2's ``data`` is not copied); times become
    ``{"sec", "nanosec"}`` dicts like every other nested message.
    """
    if dataclasses.is_dataclass(msg) and not isinstance(msg, type):
        return {
            f.name: rosbags_to_dict(getattr(msg, f.name))
            for f in dataclasses.fields(msg)
            if not f.name.startswith("__")
        }
    if isinstance(msg, list | tuple):
        return [rosbags_to_dict(v) for v in msg]
    return msg


_NUMPY_BASE: dict[str, Any] = {
    "bool": np.bool_,
    "byte": np.uint8,
    "char": np.uint8,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
    "float32": np.float32,
    "float64": np.float64,
}


def _base_value(kind: str, value: Any, where: str) -> Any:
    if kind in ("string", "wstring"):
        return "" if value is None else str(value)
    if value is None:
        return False if kind == "bool" else (0.0 if kind.startswith("float") else 0)
    if kind == "bool":
        return bool(value)
    if kind.startswith("float"):
        return float(value)
    if kind in _NUMPY_BASE:
        return int(value)
    raise TypeError(f"{where}: unsupported base type {kind}")


def dict_to_rosbags(typestore: Typestore, msgtype: str, value: Mapping[str, Any] | None) -> Any:
    """A rosbags message of ``msgtype`` from a message dict; fields the dict lacks get their defaults.

    Accepts what :mod:`perception.ros.results` and :mod:`perception.ros.messages` build: :class:`Stamp`
    for times and durations, ``bytes`` or numpy arrays for ``uint8[]``, lists or arrays for other
    sequences. Keys that are not fields of the type raise ``KeyError`` (the dict was built for the other
    ROS version).
    """
    from rosbags.typesys.base import Nodetype

    msgtype = normalise_type_name(msgtype)
    cls = typestore.types[msgtype]
    _, fields = typestore.fielddefs[msgtype]
    if isinstance(value, Stamp):
        value = {"sec": value.sec, "nanosec": value.nanosec}
    value = dict(value or {})
    names = {name for name, _ in fields}
    extra = set(value) - names
    if extra:
        raise KeyError(f"{msgtype} has no field {', '.join(sorted(extra))}")
    kwargs: dict[str, Any] = {}
    for name, (node, detail) in fields:
        where = f"{msgtype}.{name}"
        item = value.get(name)
        if node == Nodetype.NAME:
            kwargs[name] = dict_to_rosbags(typestore, detail, item)
        elif node == Nodetype.BASE:
            kwargs[name] = _base_value(detail[0], item, where)
        elif node in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            (sub_node, sub_detail), length = detail
            if sub_node == Nodetype.NAME:
                items = list(item or [])
                if node == Nodetype.ARRAY:
                    items += [None] * (length - len(items))
                kwargs[name] = [dict_to_rosbags(typestore, sub_detail, v) for v in items]
            else:
                kind = sub_detail[0]
                if kind in ("string", "wstring"):
                    strings = [str(v) for v in (item or [])]
                    if node == Nodetype.ARRAY:
                        strings += [""] * (length - len(strings))
                    kwargs[name] = strings
                    continue
                dtype = _NUMPY_BASE[kind]
                if item is None:
                    arr = np.zeros(length if node == Nodetype.ARRAY else 0, dtype=dtype)
                elif isinstance(item, bytes | bytearray | memoryview):
                    arr = np.frombuffer(bytes(item), dtype=np.uint8).astype(dtype, copy=False)
                else:
                    arr = np.asarray(item, dtype=dtype)
                if node == Nodetype.ARRAY and arr.shape != (length,):
                    raise ValueError(f"{where}: expected {length} values, got {arr.shape}")
                kwargs[name] = arr
        else:  # pragma: no cover - rosbags has no other field kinds for message fields
            raise TypeError(f"{where}: unsupported field kind {node}")
    return cls(**kwargs)
