"""ROS sensor messages <-> numpy, pure functions (no ROS installation, no roslibpy, no rosbags).

Messages are plain mappings with the field names of the ROS message definitions, the form rosbridge
sends as JSON and :func:`perception.ros.typedefs.rosbags_to_dict` makes of a message read from a bag:

* ``uint8[]`` fields (``PointCloud2.data``, ``Image.data``, ``CompressedImage.data``) may be a base64
  string (rosbridge v2 JSON), ``bytes``/``bytearray``/``memoryview``, a numpy uint8 array (rosbags) or a
  list of ints (what rosbridge also accepts);
* a ``header.stamp`` may be ROS 1 style ``{"secs", "nsecs"}`` or ROS 2 style ``{"sec", "nanosec"}``.

Outputs built here use :class:`Stamp` objects for ``time``/``duration`` fields and ``bytes`` for
``uint8[]``; :mod:`perception.ros.results` and :mod:`perception.ros.typedefs` encode them for rosbridge
(per ROS version) or for rosbags.

Frames and units: points are float32 (N, 4) x, y, z in metres in the frame of the message's
``header.frame_id`` (for a LiDAR driver: x forward, y left, z up) and intensity in [0, 1] (see
:func:`normalise_intensity`); images are uint8 (H, W, 3) RGB. Stamps are integer seconds and
nanoseconds of the sender's clock; :meth:`Stamp.to_sec` gives float seconds for the pipeline.

Malformed messages raise :class:`MessageError` (a ``ValueError``) whose message says what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DATATYPE_NAMES",
    "IMAGE_ENCODINGS",
    "MessageError",
    "PointFieldSpec",
    "Stamp",
    "compressed_image_to_rgb",
    "header_of",
    "image_to_rgb",
    "make_header",
    "normalise_intensity",
    "pointcloud2_fields",
    "pointcloud2_to_xyzi",
    "points_to_pointcloud2",
    "read_pointcloud2_fields",
    "rgb_to_compressed_image",
    "rgb_to_image",
    "uint8_field",
]


class MessageError(ValueError):
    """A ROS message that cannot be converted; the message says which field is wrong and how."""


# --- stamps and headers ----------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Stamp:
    """A ROS ``time`` (or ``duration``): whole seconds and nanoseconds (0 <= nanosec < 1e9).

    Kept as integers so a stamp goes from an input message to the outputs unchanged (float seconds
    lose nanoseconds at Unix-epoch magnitudes).
    """

    sec: int
    nanosec: int

    def __post_init__(self) -> None:
        if not 0 <= self.nanosec < 1_000_000_000:
            raise MessageError(f"stamp nanoseconds must be in [0, 1e9), got {self.nanosec}")

    @property
    def ns(self) -> int:
        """The stamp in integer nanoseconds."""
        return self.sec * 1_000_000_000 + self.nanosec

    @classmethod
    def from_ns(cls, ns: int) -> Stamp:
        sec, nanosec = divmod(int(ns), 1_000_000_000)
        return cls(sec, nanosec)

    @classmethod
    def from_sec(cls, seconds: float) -> Stamp:
        """From float seconds, rounded to the nearest nanosecond."""
        if not math.isfinite(seconds):
            raise MessageError(f"stamp must be a finite number of seconds, got {seconds!r}")
        return cls.from_ns(round(seconds * 1e9))

    def to_sec(self) -> float:
        """Float seconds (nanoseconds are lost beyond float64 precision)."""
        return self.sec + self.nanosec * 1e-9

    def __str__(self) -> str:
        return f"{self.sec}.{self.nanosec:09d}"


def _field(msg: Any, name: str, what: str) -> Any:
    if not isinstance(msg, Mapping):
        raise MessageError(f"{what}: expected a message (mapping), got {type(msg).__name__}")
    if name not in msg:
        raise MessageError(f"{what}: missing field '{name}'")
    return msg[name]


def _int_field(msg: Mapping[str, Any], name: str, what: str, minimum: int = 0) -> int:
    value = _field(msg, name, what)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise MessageError(f"{what}.{name}: expected an integer, got {value!r}")
    if value < minimum:
        raise MessageError(f"{what}.{name}: must be >= {minimum}, got {value}")
    return int(value)


def _parse_stamp(value: Any, what: str) -> Stamp:
    if isinstance(value, Stamp):
        return value
    if not isinstance(value, Mapping):
        raise MessageError(f"{what}: expected a time, got {value!r}")
    if "sec" in value:
        sec, nanosec = value["sec"], value.get("nanosec", 0)
    elif "secs" in value:
        sec, nanosec = value["secs"], value.get("nsecs", 0)
    else:
        raise MessageError(f"{what}: expected fields sec/nanosec (ROS 2) or secs/nsecs (ROS 1), got {sorted(value)}")
    for v in (sec, nanosec):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise MessageError(f"{what}: seconds and nanoseconds must be integers, got {value!r}")
    return Stamp(int(sec), int(nanosec))


def header_of(msg: Any, what: str = "message") -> tuple[Stamp, str]:
    """(stamp, frame_id) of a stamped message (ROS 1 or ROS 2 header)."""
    header = _field(msg, "header", what)
    stamp = _parse_stamp(_field(header, "stamp", f"{what}.header"), f"{what}.header.stamp")
    frame_id = header.get("frame_id", "")
    if not isinstance(frame_id, str):
        raise MessageError(f"{what}.header.frame_id: expected a string, got {frame_id!r}")
    return stamp, frame_id


def make_header(stamp: Stamp, frame_id: str) -> dict[str, Any]:
    """A ``std_msgs/Header`` (ROS 1 ``seq`` left to its default 0)."""
    return {"stamp": stamp, "frame_id": str(frame_id)}


# --- uint8[] ---------------------------------------------------------------------------------


def uint8_field(value: Any, what: str) -> np.ndarray:
    """A ``uint8[]`` field as a read-only 1-D uint8 array (no copy where the input allows it).

    Accepts a base64 string (rosbridge), bytes-like objects, numpy arrays of uint8/int8 and lists
    of ints in [0, 255].
    """
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise MessageError(f"{what}: a string uint8[] must be base64 (rosbridge), and this is not") from None
        return np.frombuffer(raw, dtype=np.uint8)
    if isinstance(value, bytes | bytearray | memoryview):
        return np.frombuffer(value, dtype=np.uint8)
    if isinstance(value, np.ndarray):
        if value.dtype not in (np.uint8, np.int8) or value.ndim != 1:
            raise MessageError(f"{what}: expected a 1-D uint8 array, got {value.dtype} {value.shape}")
        return value.view(np.uint8)
    if isinstance(value, Sequence):
        arr = np.asarray(value)
        if arr.ndim != 1 or (arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255)):
            raise MessageError(f"{what}: expected a list of bytes (ints 0..255)")
        return arr.astype(np.uint8)
    raise MessageError(f"{what}: expected base64 text, bytes or a uint8 array, got {type(value).__name__}")


# --- PointCloud2 -----------------------------------------------------------------------------

#: ``sensor_msgs/PointField`` datatype -> numpy type code (without byte order).
_POINTFIELD_CODES: dict[int, str] = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
#: ``sensor_msgs/PointField`` datatype constants by name.
DATATYPE_NAMES: dict[int, str] = {
    1: "INT8",
    2: "UINT8",
    3: "INT16",
    4: "UINT16",
    5: "INT32",
    6: "UINT32",
    7: "FLOAT32",
    8: "FLOAT64",
}
_DATATYPE_OF_DTYPE: dict[str, int] = {code: dt for dt, code in _POINTFIELD_CODES.items()}

#: Field names tried, in order, for the intensity channel.
INTENSITY_FIELDS: tuple[str, ...] = ("intensity", "i", "reflectance", "reflectivity")


@dataclass(frozen=True)
class PointFieldSpec:
    """One ``sensor_msgs/PointField``: name, byte offset within a point, datatype (1..8), count."""

    name: str
    offset: int
    datatype: int
    count: int = 1

    @property
    def size(self) -> int:
        """Bytes of one element."""
        return int(_POINTFIELD_CODES[self.datatype][1])


def read_pointcloud2_fields(msg: Mapping[str, Any]) -> list[PointFieldSpec]:
    """The ``fields`` of a PointCloud2 message, validated (names, offsets, datatypes, counts)."""
    raw = _field(msg, "fields", "PointCloud2")
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise MessageError(f"PointCloud2.fields: expected a list of PointField, got {type(raw).__name__}")
    specs = []
    for k, f in enumerate(raw):
        what = f"PointCloud2.fields[{k}]"
        name = _field(f, "name", what)
        if not isinstance(name, str):
            raise MessageError(f"{what}.name: expected a string, got {name!r}")
        datatype = _int_field(f, "datatype", what)
        if datatype not in _POINTFIELD_CODES:
            raise MessageError(f"{what} ('{name}'): unknown datatype {datatype} (expected 1..8, INT8..FLOAT64)")
        count = f.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise MessageError(f"{what}.count: expected an integer >= 0, got {count!r}")
        specs.append(PointFieldSpec(name, _int_field(f, "offset", what), datatype, int(count)))
    return specs


def _cloud_view(msg: Mapping[str, Any], wanted: Sequence[str]) -> tuple[np.ndarray, list[PointFieldSpec]]:
    """A zero-copy (height, width) structured view of the cloud's bytes holding the ``wanted`` fields
    that exist (missing names are left out), after checking the layout against the data."""
    what = "PointCloud2"
    height = _int_field(msg, "height", what)
    width = _int_field(msg, "width", what)
    point_step = _int_field(msg, "point_step", what, minimum=1)
    row_step = _int_field(msg, "row_step", what)
    big = _field(msg, "is_bigendian", what)
    if not isinstance(big, bool | np.bool_ | int):
        raise MessageError(f"{what}.is_bigendian: expected a bool, got {big!r}")
    fields = read_pointcloud2_fields(msg)
    by_name: dict[str, PointFieldSpec] = {}
    for f in fields:
        by_name.setdefault(f.name, f)
    used = [by_name[n] for n in wanted if n in by_name]
    for f in used:  # only the first element of a field is read, so count 0 (some drivers) is let pass
        if f.offset + f.size > point_step:
            raise MessageError(
                f"{what}: field '{f.name}' ({DATATYPE_NAMES[f.datatype]} at offset {f.offset}) does not fit in "
                f"point_step {point_step} bytes; the point_step or the field layout is wrong"
            )
    if height and width and row_step < width * point_step:
        raise MessageError(
            f"{what}: row_step {row_step} is less than width * point_step = {width} * {point_step} = "
            f"{width * point_step} bytes"
        )
    data = uint8_field(_field(msg, "data", what), f"{what}.data")
    if height == 0 or width == 0:
        return np.zeros((0, 0), dtype=[(f.name, "f4") for f in used]), used
    needed = (height - 1) * row_step + width * point_step
    if data.size < needed:
        raise MessageError(
            f"{what}: data holds {data.size} bytes but height {height} x width {width} with point_step "
            f"{point_step} and row_step {row_step} need {needed}"
        )
    order = ">" if bool(big) else "<"
    try:
        dtype = np.dtype(
            {
                "names": [f.name for f in used],
                "formats": [order + _POINTFIELD_CODES[f.datatype] for f in used],
                "offsets": [f.offset for f in used],
                "itemsize": point_step,
            }
        )
        view = np.ndarray(shape=(height, width), dtype=dtype, buffer=data, offset=0, strides=(row_step, point_step))
    except (TypeError, ValueError) as exc:
        raise MessageError(f"{what}: the field layout does not describe the data ({exc})") from None
    return view, used


def normalise_intensity(values: np.ndarray, datatype: int, scale: float | str = "auto") -> np.ndarray:
    """Intensity as float32 in [0, 1] (the data contract of a KITTI scan).

    ``scale="auto"``: integer fields are divided by their type's maximum (255 for UINT8, 65535 for
    UINT16, ...); float fields are kept when no value exceeds 1 and otherwise divided by 255 (Velodyne
    drivers publish float 0..255). A number multiplies the raw values. The result is clipped to [0, 1];
    NaN becomes 0.
    """
    v = values.astype(np.float32)
    if isinstance(scale, str):
        if scale != "auto":
            raise ValueError(f"intensity scale must be 'auto' or a number, got {scale!r}")
        code = _POINTFIELD_CODES[datatype]
        if code[0] in "iu":
            v = v / np.float32(np.iinfo(np.dtype(code)).max)
        elif v.size and np.nanmax(v, initial=0.0) > 1.0:
            v = v / np.float32(255.0)
    else:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"intensity scale must be a positive number, got {scale!r}")
        v = v * np.float32(scale)
    return np.clip(np.nan_to_num(v, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0).astype(np.float32, copy=False)


def pointcloud2_to_xyzi(
    msg: Mapping[str, Any],
    *,
    intensity_fields: Sequence[str] = INTENSITY_FIELDS,
    intensity_scale: float | str = "auto",
    drop_invalid: bool = True,
) -> np.ndarray:
    """A ``sensor_msgs/PointCloud2`` of any field layout as float32 (N, 4) x, y, z, intensity.

    Handles any field offsets and datatypes (INT8..FLOAT64), ``point_step`` with padding between
    points, ``row_step`` with padding at row ends, big- or little-endian data and organised
    (height > 1) or unorganised clouds; organised clouds come out row-major. Only the x, y, z fields
    and the first of ``intensity_fields`` present are read (intensity 0 when there is none), through
    a strided numpy view: no Python loop over points.

    Args:
        msg: the message as a mapping (rosbridge JSON or :func:`~perception.ros.typedefs.rosbags_to_dict`).
        intensity_fields: field names tried for intensity, first match wins.
        intensity_scale: see :func:`normalise_intensity`.
        drop_invalid: drop points whose x, y or z is NaN or infinite (organised clouds mark missing
            returns that way); otherwise they are kept.

    Returns:
        float32 (N, 4): x, y, z in metres in the frame ``msg.header.frame_id``, intensity in [0, 1].

    Raises:
        MessageError: missing x/y/z, a field that does not fit in ``point_step``, ``row_step`` below
            ``width * point_step``, data shorter than the layout needs, bad base64, unknown datatype.
    """
    present = {f.name for f in read_pointcloud2_fields(msg)}
    inten_name = next((n for n in intensity_fields if n in present), None)
    view, used = _cloud_view(msg, ["x", "y", "z"] + ([inten_name] if inten_name else []))
    names = {f.name for f in used}
    missing = [n for n in ("x", "y", "z") if n not in names]
    if missing:
        listed = [f.name for f in read_pointcloud2_fields(msg)]
        raise MessageError(f"PointCloud2: no field {', '.join(missing)} (fields: {', '.join(listed) or 'none'})")
    flat = view.reshape(-1)
    out = np.empty((flat.shape[0], 4), dtype=np.float32)
    for col, name in enumerate(("x", "y", "z")):
        out[:, col] = flat[name]
    inten = next((f for f in used if f.name == inten_name), None)
    if inten is None:
        out[:, 3] = 0.0
    else:
        out[:, 3] = normalise_intensity(flat[inten.name], inten.datatype, intensity_scale)
    if drop_invalid:
        valid = np.isfinite(out[:, :3]).all(axis=1)
        if not valid.all():
            out = out[valid]
    return out


def pointcloud2_fields(msg: Mapping[str, Any], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Named fields of a PointCloud2 as 1-D arrays in their own dtype (native byte order), row-major.

    Raises :class:`MessageError` when a name is missing or the layout does not fit the data.
    """
    view, used = _cloud_view(msg, names)
    missing = [n for n in names if n not in {f.name for f in used}]
    if missing:
        raise MessageError(f"PointCloud2: no field {', '.join(missing)}")
    flat = view.reshape(-1)
    return {n: flat[n].astype(flat.dtype[n].newbyteorder("="), copy=True) for n in names}


def points_to_pointcloud2(
    header: Mapping[str, Any],
    columns: Mapping[str, np.ndarray],
    *,
    big_endian: bool = False,
) -> dict[str, Any]:
    """An unorganised (height 1) ``sensor_msgs/PointCloud2`` from named 1-D columns of equal length.

    Fields are laid out in the order given, packed without padding; each column's dtype picks the
    PointField datatype (int8..float64). Typical use: x, y, z, intensity as float32 (metres, [0, 1])
    plus integer label columns. ``data`` is ``bytes``.
    """
    if not columns:
        raise ValueError("a PointCloud2 needs at least one field")
    arrays = {name: np.asarray(col) for name, col in columns.items()}
    lengths = {a.shape for a in arrays.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError(f"columns must be 1-D and of equal length, got shapes {sorted(lengths)}")
    order = ">" if big_endian else "<"
    fields, formats, offset = [], [], 0
    for name, arr in arrays.items():
        code = arr.dtype.str[1:]
        if code not in _DATATYPE_OF_DTYPE:
            raise ValueError(f"column '{name}': dtype {arr.dtype} has no PointField datatype")
        fields.append({"name": name, "offset": offset, "datatype": _DATATYPE_OF_DTYPE[code], "count": 1})
        formats.append((name, order + code))
        offset += arr.dtype.itemsize
    n = next(iter(lengths))[0]
    packed = np.empty(n, dtype=np.dtype(formats))
    for name, arr in arrays.items():
        packed[name] = arr
    return {
        "header": dict(header),
        "height": 1,
        "width": int(n),
        "fields": fields,
        "is_bigendian": bool(big_endian),
        "point_step": int(offset),
        "row_step": int(offset * n),
        "data": packed.tobytes(),
        "is_dense": True,
    }


# --- images ------------------------------------------------------------------------------------

#: Raw ``sensor_msgs/Image`` encodings understood here -> channels.
IMAGE_ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}


def image_to_rgb(msg: Mapping[str, Any]) -> np.ndarray:
    """A ``sensor_msgs/Image`` (rgb8, bgr8, mono8, rgba8, bgra8) as uint8 (H, W, 3) RGB.

    Honours ``step`` (row stride in bytes, >= width * channels; padding at row ends is skipped).
    Mono images are replicated into the three channels; alpha is dropped.

    Raises:
        MessageError: unknown encoding, empty image, ``step`` too small, data shorter than
            ``(height - 1) * step + width * channels``.
    """
    what = "Image"
    encoding = _field(msg, "encoding", what)
    if not isinstance(encoding, str) or encoding.lower() not in IMAGE_ENCODINGS:
        raise MessageError(f"{what}: unsupported encoding {encoding!r}; expected one of {', '.join(IMAGE_ENCODINGS)}")
    encoding = encoding.lower()
    channels = IMAGE_ENCODINGS[encoding]
    height = _int_field(msg, "height", what, minimum=1)
    width = _int_field(msg, "width", what, minimum=1)
    step = _int_field(msg, "step", what)
    if step < width * channels:
        raise MessageError(f"{what}: step {step} is less than width * channels = {width} * {channels}")
    data = uint8_field(_field(msg, "data", what), f"{what}.data")
    needed = (height - 1) * step + width * channels
    if data.size < needed:
        raise MessageError(
            f"{what}: data holds {data.size} bytes but a {width} x {height} {encoding} image with step "
            f"{step} needs {needed}"
        )
    view = np.ndarray(shape=(height, width, channels), dtype=np.uint8, buffer=data, strides=(step, channels, 1))
    if channels == 1:
        return np.repeat(view, 3, axis=2)
    if encoding.startswith("bgr"):
        return np.ascontiguousarray(view[:, :, 2::-1])
    return np.ascontiguousarray(view[:, :, :3])


def rgb_to_image(header: Mapping[str, Any], rgb: np.ndarray, encoding: str = "rgb8") -> dict[str, Any]:
    """A ``sensor_msgs/Image`` from uint8 (H, W, 3) RGB in ``rgb8``, ``bgr8`` or ``mono8`` (luma)."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {arr.dtype} {arr.shape}")
    if encoding == "rgb8":
        pixels = arr
    elif encoding == "bgr8":
        pixels = arr[:, :, ::-1]
    elif encoding == "mono8":
        luma = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        pixels = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
    else:
        raise ValueError(f"encoding must be rgb8, bgr8 or mono8, got {encoding!r}")
    pixels = np.ascontiguousarray(pixels)
    return {
        "header": dict(header),
        "height": int(arr.shape[0]),
        "width": int(arr.shape[1]),
        "encoding": encoding,
        "is_bigendian": 0,
        "step": int(arr.shape[1] * pixels.shape[2]),
        "data": pixels.tobytes(),
    }


_COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


def compressed_image_to_rgb(msg: Mapping[str, Any]) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` holding JPEG or PNG as uint8 (H, W, 3) RGB.

    ``format`` is what image_transport writes (``jpeg``, ``png``, ``rgb8; jpeg compressed bgr8``, ...);
    an empty format is accepted when the bytes are JPEG or PNG. Other formats (``compressedDepth``,
    video codecs) are refused. Grayscale JPEG/PNG is replicated into three channels.
    """
    from perception.io.images import decode_image

    what = "CompressedImage"
    fmt = _field(msg, "format", what)
    if not isinstance(fmt, str):
        raise MessageError(f"{what}.format: expected a string, got {fmt!r}")
    lowered = fmt.lower()
    if "compresseddepth" in lowered or (lowered and not any(k in lowered for k in _COMPRESSED_FORMATS)):
        raise MessageError(f"{what}: unsupported format {fmt!r}; expected jpeg or png")
    data = uint8_field(_field(msg, "data", what), f"{what}.data")
    head = data[:8].tobytes()
    if not (head.startswith(b"\xff\xd8\xff") or head == b"\x89PNG\r\n\x1a\n"):
        raise MessageError(f"{what}: data ({data.size} bytes, format {fmt!r}) is neither JPEG nor PNG")
    try:
        return decode_image(data.tobytes(), source=f"{what}({fmt or 'no format'})", allow_grayscale=True)
    except ValueError as exc:
        raise MessageError(str(exc)) from None


def rgb_to_compressed_image(
    header: Mapping[str, Any], rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90
) -> dict[str, Any]:
    """A ``sensor_msgs/CompressedImage`` (``jpeg`` or ``png``) from uint8 (H, W, 3) RGB."""
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {arr.dtype} {arr.shape}")
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"format must be jpeg or png, got {fmt!r}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG" if fmt == "jpeg" else "PNG", quality=quality)
    return {"header": dict(header), "format": fmt, "data": buf.getvalue()}
