"""Wire formats of the service: pydantic models of the JSON bodies, and the binary payload codecs.

Binary payloads (REST bodies, WebSocket envelopes and gRPC fields use the same bytes):

* points: little-endian float32, 4 values per point (x, y, z in metres in the LiDAR frame, intensity),
  i.e. the content of a KITTI velodyne ``.bin`` file; the length must be a multiple of 16 bytes;
* images: an encoded PNG or JPEG file (``encoded``), or raw ``rgb8``: uint8 R, G, B per pixel, row-major
  from the top-left pixel, ``width * height * 3`` bytes.

WebSocket frame envelope (one binary message per frame, see :mod:`perception.service.app`)::

    uint32 little-endian  header length L
    L bytes               header, UTF-8 JSON (:class:`StreamFrameHeader`)
    image.size bytes      image payload (when the header has ``image``)
    points.size bytes     points payload (when the header has ``points``)
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from perception.camera.preprocess import MAX_SIDE
from perception.io import MalformedFileError, decode_image, read_point_cloud
from perception.runtime.segmenter import InvalidInputError

POINT_BYTES = 16  # 4 x float32
POINT_FILE_SUFFIXES = (".bin", ".pcd", ".ply", ".npy")
ImageEncoding = Literal["encoded", "png", "jpeg", "rgb8"]


# --- JSON bodies ---------------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: one human-readable line."""

    error: str = Field(description="What is wrong, e.g. 'points: 100 bytes is not a multiple of 16'.")


class DetectionOut(BaseModel):
    """A camera detection; box corners in pixels of the submitted image (x right, y down)."""

    class_id: int
    class_name: str
    score: float = Field(description="max over classes of P(class) x confidence, in [0, 1].")
    x1: float
    y1: float
    x2: float
    y2: float


class Box3DOut(BaseModel):
    """Oriented 3D box in the LiDAR frame: centre x, y, z (m), size length, width, height (m), yaw (rad about +z)."""

    center: list[float]
    size: list[float]
    yaw: float


class InstanceOut(BaseModel):
    """One LiDAR object: a cluster of points of one class with its box (LiDAR frame, metres)."""

    id: int
    class_id: int
    class_name: str
    num_points: int
    centroid: list[float]
    box: Box3DOut
    score: float = Field(description="Mean per-point class probability.")
    point_indices: list[int] | None = Field(None, description="Indices into the submitted points, when asked.")


class _ResultBase(BaseModel):
    frame_id: str
    timestamp: float = Field(description="Sensor time of the frame in seconds (as sent, or receive time).")
    providers: dict[str, str] = Field(description="ONNX Runtime execution provider per stage that ran.")
    timings_ms: dict[str, float] = Field(description="Wall time per stage in milliseconds, with 'total'.")
    dropped_before: int = Field(0, description="Stream frames dropped since the previous result (streams only).")


class DetectResponse(_ResultBase):
    image_size: list[int] = Field(description="(width, height) of the submitted image in pixels.")
    detections: list[DetectionOut]


class SegmentResponse(_ResultBase):
    num_points: int
    num_points_in_view: int
    class_counts: dict[str, int]
    instances: list[InstanceOut]
    labels: list[int] | None = Field(None, description="Class per point (include_labels=true).")
    scores: list[float] | None = Field(None, description="Probability of each point's class (include_labels=true).")


class PerceiveResponse(_ResultBase):
    image_size: list[int] | None = None
    detections: list[DetectionOut] = Field(default_factory=list)
    num_points: int | None = None
    num_points_in_view: int | None = None
    class_counts: dict[str, int] | None = None
    instances: list[InstanceOut] = Field(default_factory=list)
    labels: list[int] | None = None
    scores: list[float] | None = None


class ModelOut(BaseModel):
    """A configured model. ``input_size``: (width, height) px for detection, (rows, cols) for segmentation."""

    stage: str
    path: str
    loaded: bool
    error: str | None = None
    name: str
    task: str | None = None
    architecture: str | None = None
    version: int | None = None
    sha256: str | None = None
    weights: str | None = None
    classes: list[str] = Field(default_factory=list)
    providers: list[str] = Field(default_factory=list, description="Providers in use; the first one runs.")
    requested_providers: list[str] = Field(default_factory=list)
    input_size: list[int] | None = None
    sensor: str | None = None


class ModelsResponse(BaseModel):
    models: list[ModelOut]


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    ready: bool
    stages: dict[str, bool] = Field(description="Configured stage -> model loaded.")
    errors: dict[str, str] = Field(default_factory=dict)


# --- WebSocket messages --------------------------------------------------------------------------


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    encoding: ImageEncoding = "encoded"
    width: int | None = Field(None, ge=1, le=MAX_SIDE, description="Pixels; required for rgb8.")
    height: int | None = Field(None, ge=1, le=MAX_SIDE, description="Pixels; required for rgb8.")
    size: int = Field(ge=0, description="Bytes of the image payload in the envelope.")


class PointsPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["float32"] = "float32"
    size: int = Field(ge=0, description="Bytes of the points payload (N x 16).")


class StreamFrameHeader(BaseModel):
    """The JSON header of a WebSocket frame envelope."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["frame"] = "frame"
    frame_id: str | None = Field(None, max_length=256, description="Default: the frame's sequence number.")
    timestamp: float | None = Field(None, description="Sensor time, seconds; default: receive time.")
    include_labels: bool = False
    image: ImagePart | None = None
    points: PointsPart | None = None


class StreamResult(PerceiveResponse):
    type: Literal["result"] = "result"


class StreamError(BaseModel):
    type: Literal["error"] = "error"
    frame_id: str | None = None
    error: str


class StreamEnd(BaseModel):
    """Sent after the client's ``{"type": "end"}`` once every queued frame is answered."""

    type: Literal["end"] = "end"
    received: int
    processed: int
    dropped: int
    errors: int


# --- binary payloads -----------------------------------------------------------------------------


def points_from_bytes(data: bytes | bytearray | memoryview, what: str = "points") -> np.ndarray:
    """float32 (N, 4) from packed little-endian float32 x, y, z, intensity (KITTI ``.bin`` content)."""
    size = len(data)
    if size == 0:
        raise InvalidInputError(f"{what}: point cloud is empty (0 bytes)")
    if size % POINT_BYTES:
        raise InvalidInputError(
            f"{what}: {size} bytes is not a multiple of {POINT_BYTES} (float32 x, y, z, intensity per point)"
        )
    return np.frombuffer(data, dtype="<f4").reshape(-1, 4)


def points_to_bytes(points: np.ndarray) -> bytes:
    """The packed little-endian float32 (N, 4) payload of a point cloud ((N, 3) gets intensity 0)."""
    arr = np.asarray(points)
    if arr.ndim != 2 or arr.shape[1] not in (3, 4):
        raise ValueError(f"points must be (N, 4) or (N, 3), got {arr.shape}")
    if arr.shape[1] == 3:
        arr = np.concatenate([arr, np.zeros((arr.shape[0], 1), arr.dtype)], axis=1)
    return np.ascontiguousarray(arr, dtype="<f4").tobytes()


def points_from_file_bytes(data: bytes, suffix: str, what: str = "points") -> np.ndarray:
    """A point cloud file's content (``.bin``, ``.pcd``, ``.ply`` or ``.npy``) as float32 (N, 4).

    Parsed with :func:`perception.io.read_point_cloud` through a private temporary file; ``.npy`` never
    unpickles.
    """
    suffix = suffix.lower()
    if suffix == ".bin":
        return points_from_bytes(data, what)
    if suffix not in POINT_FILE_SUFFIXES:
        raise InvalidInputError(f"{what}: unknown point cloud format {suffix or '(none)'}; use .bin, .pcd, .ply, .npy")
    if not data:
        raise InvalidInputError(f"{what}: point cloud is empty (0 bytes)")
    with tempfile.TemporaryDirectory(prefix="perception-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return read_point_cloud(path)
        except MalformedFileError as exc:
            raise InvalidInputError(f"{what}: {exc.problem}") from None


def image_from_bytes(
    data: bytes | bytearray | memoryview,
    encoding: str = "encoded",
    width: int | None = None,
    height: int | None = None,
    what: str = "image",
) -> np.ndarray:
    """uint8 (H, W, 3) RGB from PNG/JPEG bytes (``encoded``, ``png``, ``jpeg``) or raw ``rgb8`` of width x height."""
    if len(data) == 0:
        raise InvalidInputError(f"{what}: empty (0 bytes)")
    if encoding == "rgb8":
        if not width or not height:
            raise InvalidInputError(f"{what}: raw rgb8 needs width and height")
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise InvalidInputError(f"{what}: {width} x {height} pixels is outside 1..{MAX_SIDE} per side")
        expected = width * height * 3
        if len(data) != expected:
            raise InvalidInputError(
                f"{what}: raw rgb8 of {width} x {height} needs {expected} bytes (width x height x 3), got {len(data)}"
            )
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
    if encoding not in ("encoded", "png", "jpeg"):
        raise InvalidInputError(f"{what}: unknown encoding {encoding!r}; use encoded (PNG/JPEG) or rgb8")
    try:
        return decode_image(bytes(data), source=what)
    except MalformedFileError as exc:
        raise InvalidInputError(f"{what}: {exc.problem}") from None


def pack_frame_envelope(header: dict[str, Any], image: bytes | None = None, points: bytes | None = None) -> bytes:
    """One WebSocket binary message: length-prefixed JSON header, then the image and points payloads.

    ``header`` holds ``frame_id``, ``timestamp``, ``include_labels`` and, for the image, ``encoding``/
    ``width``/``height`` under ``image``; the ``size`` fields are filled in here.
    """
    head = dict(header)
    head.setdefault("type", "frame")
    if image is not None:
        head["image"] = {**head.get("image", {}), "size": len(image)}
    else:
        head.pop("image", None)
    if points is not None:
        head["points"] = {**head.get("points", {}), "size": len(points)}
    else:
        head.pop("points", None)
    raw = json.dumps(head, separators=(",", ":")).encode("utf-8")
    return b"".join([struct.pack("<I", len(raw)), raw, image or b"", points or b""])


def unpack_frame_envelope(message: bytes) -> tuple[StreamFrameHeader, memoryview | None, memoryview | None]:
    """(header, image payload, points payload) of an envelope; :class:`InvalidInputError` when malformed."""
    view = memoryview(message)
    if len(view) < 4:
        raise InvalidInputError("envelope: shorter than its 4-byte header length")
    (head_len,) = struct.unpack_from("<I", view, 0)
    if 4 + head_len > len(view):
        raise InvalidInputError(f"envelope: header length {head_len} runs past the message ({len(view)} bytes)")
    try:
        header = StreamFrameHeader.model_validate_json(bytes(view[4 : 4 + head_len]))
    except ValidationError as exc:
        raise InvalidInputError(f"envelope: bad header ({_first_error(exc)})") from None
    offset = 4 + head_len
    need = (header.image.size if header.image else 0) + (header.points.size if header.points else 0)
    if offset + need != len(view):
        raise InvalidInputError(
            f"envelope: header announces {need} payload bytes, the message has {len(view) - offset}"
        )
    image = points = None
    if header.image is not None:
        image = view[offset : offset + header.image.size]
        offset += header.image.size
    if header.points is not None:
        points = view[offset : offset + header.points.size]
    return header, image, points


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid"))
