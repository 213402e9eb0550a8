"""Message conversions checked against messages serialised by rosbags (an independent implementation).

Point data is packed point by point with :mod:`struct` (independent of the numpy code under test), put
into rosbags ``sensor_msgs/PointCloud2`` messages, serialised (ROS 1 and CDR) and deserialised by
rosbags, and then converted; the other way, our messages are serialised by rosbags and unpacked with
:mod:`struct`.
"""

from __future__ import annotations

import base64
import io
import struct

import numpy as np
import pytest
from PIL import Image

from perception.ros.messages import (
    MessageError,
    Stamp,
    compressed_image_to_rgb,
    header_of,
    image_to_rgb,
    make_header,
    normalise_intensity,
    pointcloud2_fields,
    pointcloud2_to_xyzi,
    points_to_pointcloud2,
    rgb_to_compressed_image,
    rgb_to_image,
    uint8_field,
)

rosbags = pytest.importorskip("rosbags", reason="checking against rosbags needs the [ros] extra")
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from perception.ros.typedefs import dict_to_rosbags, rosbags_to_dict  # noqa: E402

ROS1 = get_typestore(Stores.ROS1_NOETIC)
ROS2 = get_typestore(Stores.ROS2_HUMBLE)
STRUCT = {1: "b", 2: "B", 3: "h", 4: "H", 5: "i", 6: "I", 7: "f", 8: "d"}


def pack_cloud(values: dict[str, np.ndarray], layout: list[tuple[str, int, int]], point_step: int, *,
               width: int, height: int = 1, row_pad: int = 0, big: bool = False) -> tuple[bytes, int]:  # fmt: skip
    """Bytes of a cloud packed with struct, one value at a time; padding bytes are 0xAB garbage."""
    row_step = width * point_step + row_pad
    buf = bytearray(b"\xab" * (row_step * height))
    order = ">" if big else "<"
    for r in range(height):
        for c in range(width):
            k = r * width + c
            for name, offset, datatype in layout:
                struct.pack_into(order + STRUCT[datatype], buf, r * row_step + c * point_step + offset,
                                 values[name][k].item())  # fmt: skip
    return bytes(buf), row_step


def rosbags_cloud(store, data: bytes, layout, point_step: int, row_step: int, width: int, height: int, big: bool,
                  stamp=(1_700_000_000, 42), frame_id: str = "velodyne"):  # fmt: skip
    T = store.types
    header_kwargs = {"stamp": T["builtin_interfaces/msg/Time"](*stamp), "frame_id": frame_id}
    if "seq" in {n for n, _ in store.fielddefs["std_msgs/msg/Header"][1]}:
        header_kwargs["seq"] = 7
    return T["sensor_msgs/msg/PointCloud2"](
        header=T["std_msgs/msg/Header"](**header_kwargs),
        height=height,
        width=width,
        fields=[T["sensor_msgs/msg/PointField"](name=n, offset=o, datatype=d, count=1) for n, o, d in layout],
        is_bigendian=big,
        point_step=point_step,
        row_step=row_step,
        data=np.frombuffer(data, np.uint8),
        is_dense=False,
    )


def through_rosbags(store, msg, msgtype: str):
    """Serialise and deserialise with rosbags (ROS 1 wire format for noetic, CDR for ROS 2)."""
    if store is ROS1:
        return store.deserialize_ros1(store.serialize_ros1(msg, msgtype), msgtype)
    return store.deserialize_cdr(store.serialize_cdr(msg, msgtype), msgtype)


def random_values(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "x": rng.uniform(-80, 80, n),
        "y": rng.uniform(-80, 80, n),
        "z": rng.uniform(-3, 5, n),
        "intensity": rng.uniform(0, 255, n).astype(np.float32),
        "ring": rng.integers(0, 64, n).astype(np.uint16),
        "t": rng.uniform(0, 0.1, n),
    }


# (layout, point_step, width, height, row padding, big-endian, description)
LAYOUTS = [
    ([("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7)], 16, 50, 1, 0, False, "kitti-like packed"),
    (
        [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 16, 7), ("ring", 20, 4), ("t", 24, 8)],
        32,
        40,
        1,
        0,
        False,
        "velodyne with padding after z and at the end",
    ),
    ([("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7)], 16, 30, 1, 0, True, "big-endian"),
    (
        [("intensity", 0, 7), ("ring", 4, 4), ("z", 8, 8), ("y", 16, 8), ("x", 24, 8)],
        40,
        10,
        4,
        24,
        True,
        "big-endian float64, shuffled, organised, row padding",
    ),
    ([("x", 2, 7), ("y", 6, 7), ("z", 10, 7)], 17, 25, 2, 3, False, "unaligned offsets, no intensity"),
]


@pytest.mark.parametrize("store", [ROS1, ROS2], ids=["ros1", "ros2"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=[case[-1] for case in LAYOUTS])
def test_pointcloud2_of_any_layout_matches_the_values_packed_by_struct(store, layout, rng):
    fields, point_step, width, height, row_pad, big, _ = layout
    values = random_values(width * height, rng)
    data, row_step = pack_cloud(values, fields, point_step, width=width, height=height, row_pad=row_pad, big=big)
    msg = rosbags_cloud(store, data, fields, point_step, row_step, width, height, big)
    back = rosbags_to_dict(through_rosbags(store, msg, "sensor_msgs/msg/PointCloud2"))

    points = pointcloud2_to_xyzi(back, intensity_scale=1 / 255)
    assert points.dtype == np.float32 and points.shape == (width * height, 4)
    for col, name in enumerate(("x", "y", "z")):
        np.testing.assert_array_equal(points[:, col], values[name].astype(np.float32))
    names = {f[0] for f in fields}
    expected_i = values["intensity"] / np.float32(255) if "intensity" in names else np.zeros(width * height)
    np.testing.assert_allclose(points[:, 3], expected_i, atol=1e-6)
    assert header_of(back) == (Stamp(1_700_000_000, 42), "velodyne")

    # the same message as rosbridge JSON (base64 data, ROS 1 or ROS 2 stamp) converts the same
    as_json = {
        **{k: back[k] for k in ("height", "width", "is_bigendian", "point_step", "row_step", "is_dense")},
        "header": {"stamp": {"secs": 1_700_000_000, "nsecs": 42}, "frame_id": "velodyne"},
        "fields": [{"name": n, "offset": o, "datatype": d, "count": 1} for n, o, d in fields],
        "data": base64.b64encode(data).decode(),
    }
    np.testing.assert_array_equal(pointcloud2_to_xyzi(as_json, intensity_scale=1 / 255), points)
    assert header_of(as_json) == (Stamp(1_700_000_000, 42), "velodyne")
    if "ring" in names:
        np.testing.assert_array_equal(pointcloud2_fields(back, ["ring"])["ring"], values["ring"])


def test_a_120k_point_cloud_converts_in_one_piece(rng):
    n = 120_000
    pts = rng.uniform(-50, 50, (n, 4)).astype(np.float32)
    pts[:, 3] = rng.uniform(0, 1, n)
    msg = points_to_pointcloud2(make_header(Stamp(1, 2), "lidar"), {k: pts[:, i] for i, k in enumerate("xyz")}
                                | {"intensity": pts[:, 3], "ring": np.arange(n, dtype=np.uint16)})  # fmt: skip
    back = rosbags_to_dict(through_rosbags(ROS2, dict_to_rosbags(ROS2, "sensor_msgs/PointCloud2", msg),
                                           "sensor_msgs/msg/PointCloud2"))  # fmt: skip
    np.testing.assert_array_equal(pointcloud2_to_xyzi(back), pts)


def test_our_pointcloud2_unpacks_with_struct_after_rosbags(rng):
    n = 20
    cols = {
        "x": rng.uniform(-9, 9, n).astype(np.float32),
        "y": rng.uniform(-9, 9, n).astype(np.float64),
        "label": rng.integers(0, 4, n).astype(np.uint16),
        "id": rng.integers(-5, 5, n).astype(np.int32),
    }
    for big in (False, True):
        msg = points_to_pointcloud2(make_header(Stamp(3, 4), "base"), cols, big_endian=big)
        for store in (ROS1, ROS2):
            back = through_rosbags(store, dict_to_rosbags(store, "sensor_msgs/msg/PointCloud2", msg),
                                   "sensor_msgs/msg/PointCloud2")  # fmt: skip
            assert (back.point_step, back.row_step, back.width, back.height) == (18, 18 * n, n, 1)
            assert [(f.name, f.offset, f.datatype) for f in back.fields] == [
                ("x", 0, 7), ("y", 4, 8), ("label", 12, 4), ("id", 14, 5)
            ]  # fmt: skip
            raw = back.data.tobytes()
            fmt = (">" if big else "<") + "fdHi"
            for k in range(n):
                x, y, label, ident = struct.unpack_from(fmt, raw, k * 18)
                assert (x, y, label, ident) == (cols["x"][k], cols["y"][k], cols["label"][k], cols["id"][k])
            assert back.header.stamp.sec == 3 and back.header.frame_id == "base"


def test_invalid_points_are_dropped_unless_asked_to_keep_them():
    pts = np.array([[1, 2, 3, 0.5], [np.nan, 0, 0, 0.1], [4, np.inf, 6, 0.2], [7, 8, 9, 0.3]], np.float32)
    msg = points_to_pointcloud2(make_header(Stamp(0, 0), "l"), {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2],
                                                                "intensity": pts[:, 3]})  # fmt: skip
    np.testing.assert_array_equal(pointcloud2_to_xyzi(msg), pts[[0, 3]])
    kept = pointcloud2_to_xyzi(msg, drop_invalid=False)
    assert kept.shape == (4, 4) and np.isnan(kept[1, 0])


def test_intensity_scaling():
    assert normalise_intensity(np.array([0, 255], np.uint8), 2).tolist() == [0.0, 1.0]
    np.testing.assert_allclose(normalise_intensity(np.array([0, 65535, 32768], np.uint16), 4), [0, 1, 0.50000763])
    np.testing.assert_allclose(normalise_intensity(np.array([0.0, 0.5, 1.0], np.float32), 7), [0, 0.5, 1])
    np.testing.assert_allclose(normalise_intensity(np.array([0.0, 127.5, 255.0], np.float32), 7), [0, 0.5, 1])
    np.testing.assert_allclose(normalise_intensity(np.array([10.0, 5000.0, np.nan]), 8, 0.01), [0.1, 1, 0])
    with pytest.raises(ValueError, match="positive"):
        normalise_intensity(np.zeros(2), 7, -1.0)


def good_cloud() -> dict:
    return points_to_pointcloud2(make_header(Stamp(5, 6), "l"), {k: np.arange(10, dtype=np.float32) for k in "xyz"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"point_step": 8}, "does not fit in point_step 8"),
        ({"data": b"\x00" * 100}, "data holds 100 bytes .* need 120"),
        ({"row_step": 50}, "row_step 50 is less than"),
        ({"fields": [{"name": "x", "offset": 0, "datatype": 7, "count": 1}]}, "no field y, z"),
        ({"fields": [{"name": "x", "offset": 0, "datatype": 11, "count": 1}]}, "unknown datatype 11"),
        ({"data": "not base64!"}, "base64"),
        ({"width": -1}, "width: must be >= 0"),
        ({"point_step": "12"}, "point_step: expected an integer"),
        ({"header": {"stamp": {"seconds": 1}}}, "sec/nanosec"),
        ({"header": {"stamp": {"sec": 1, "nanosec": 2_000_000_000}}}, "nanoseconds"),
    ],
)
def test_malformed_clouds_raise_a_message_error_that_says_what_is_wrong(change, message):
    msg = {**good_cloud(), **change}
    with pytest.raises(MessageError, match=message):
        header_of(msg)
        pointcloud2_to_xyzi(msg)


def test_an_empty_cloud_gives_no_points():
    msg = {**good_cloud(), "width": 0, "row_step": 0, "data": b""}
    assert pointcloud2_to_xyzi(msg).shape == (0, 4)


# --- images ------------------------------------------------------------------------------------------


def rosbags_image(store, pixels: np.ndarray, encoding: str, step: int):
    T = store.types
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    data = np.full((h, step), 0xCD, np.uint8)  # row padding is garbage
    data[:, : rows.shape[1]] = rows
    return T["sensor_msgs/msg/Image"](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](9, 8), frame_id="cam"),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=data.reshape(-1),
    )


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "rgba8", "bgra8"])
@pytest.mark.parametrize("pad", [0, 5])
def test_raw_images_of_each_encoding_come_out_rgb(encoding, pad, rng):
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    alpha = np.full((6, 7, 1), 77, np.uint8)
    pixels = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1],
        "mono8": rgb[:, :, :1],
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
    }[encoding]
    msg = rosbags_image(ROS2, np.ascontiguousarray(pixels), encoding, 7 * pixels.shape[2] + pad)
    out = image_to_rgb(rosbags_to_dict(through_rosbags(ROS2, msg, "sensor_msgs/msg/Image")))
    expected = np.repeat(rgb[:, :, :1], 3, axis=2) if encoding == "mono8" else rgb
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8 and out.flags.c_contiguous


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_our_images_round_trip_through_rosbags(encoding, rng):
    rgb = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    msg = rgb_to_image(make_header(Stamp(1, 1), "cam"), rgb, encoding)
    for store in (ROS1, ROS2):
        back = through_rosbags(store, dict_to_rosbags(store, "sensor_msgs/msg/Image", msg), "sensor_msgs/msg/Image")
        assert back.encoding == encoding and back.step == 12
        raw = back.data.reshape(5, 4, 3)
        np.testing.assert_array_equal(raw, rgb if encoding == "rgb8" else rgb[:, :, ::-1])
        np.testing.assert_array_equal(image_to_rgb(rosbags_to_dict(back)), rgb)
    mono = rgb_to_image(make_header(Stamp(1, 1), "cam"), rgb, "mono8")
    assert mono["step"] == 4 and len(mono["data"]) == 20


@pytest.mark.parametrize("fmt", ["png", "jpeg", "rgb8; jpeg compressed bgr8", ""])
def test_compressed_images_decode_to_rgb(fmt, rng):
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:8] = (200, 30, 40)
    rgb[8:] = (10, 180, 90)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
    T = ROS1.types
    msg = T["sensor_msgs/msg/CompressedImage"](
        header=T["std_msgs/msg/Header"](seq=0, stamp=T["builtin_interfaces/msg/Time"](1, 0), frame_id="cam"),
        format=fmt,
        data=np.frombuffer(buf.getvalue(), np.uint8),
    )
    out = compressed_image_to_rgb(rosbags_to_dict(through_rosbags(ROS1, msg, "sensor_msgs/msg/CompressedImage")))
    assert out.shape == (16, 24, 3)
    error = np.abs(out.astype(int) - rgb)
    if fmt == "png":
        assert error.max() == 0
    else:  # JPEG: lossy, worst at the colour edge between rows 7 and 8 (chroma subsampling)
        assert error[:5].max() <= 12 and error[-5:].max() <= 12 and error.mean() < 6


def test_our_compressed_images_decode_back(rng):
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    msg = rgb_to_compressed_image(make_header(Stamp(0, 1), "cam"), rgb, "png")
    back = through_rosbags(ROS2, dict_to_rosbags(ROS2, "sensor_msgs/msg/CompressedImage", msg),
                           "sensor_msgs/msg/CompressedImage")  # fmt: skip
    assert back.format == "png"
    np.testing.assert_array_equal(compressed_image_to_rgb(rosbags_to_dict(back)), rgb)
    jpeg = rgb_to_compressed_image(make_header(Stamp(0, 1), "cam"), rgb, "jpeg")
    assert jpeg["data"][:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        ({"encoding": "yuv422", "height": 2, "width": 2, "step": 4, "data": b"\0" * 8}, "unsupported encoding"),
        ({"encoding": "16UC1", "height": 2, "width": 2, "step": 4, "data": b"\0" * 8}, "unsupported encoding"),
        ({"encoding": "rgb8", "height": 2, "width": 2, "step": 5, "data": b"\0" * 12}, "step 5 is less than"),
        ({"encoding": "rgb8", "height": 2, "width": 2, "step": 6, "data": b"\0" * 11}, "11 bytes .* needs 12"),
        ({"encoding": "rgb8", "height": 0, "width": 2, "step": 6, "data": b""}, "height: must be >= 1"),
        ({"encoding": "rgb8", "height": 1, "width": 1, "step": 3}, "missing field 'data'"),
    ],
)
def test_malformed_images_raise_a_message_error(msg, message):
    with pytest.raises(MessageError, match=message):
        image_to_rgb(msg)


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        ({"format": "h264", "data": b"\xff\xd8\xff\xe0"}, "unsupported format"),
        ({"format": "16UC1; compressedDepth png", "data": b"\x89PNG\r\n\x1a\n"}, "unsupported format"),
        ({"format": "jpeg", "data": b"hello world"}, "neither JPEG nor PNG"),
        ({"format": "png", "data": b"\x89PNG\r\n\x1a\n" + b"\0" * 20}, "corrupt|truncated|not a PNG"),
    ],
)
def test_malformed_compressed_images_raise_a_message_error(msg, message):
    with pytest.raises(MessageError, match=message):
        compressed_image_to_rgb(msg)


def test_uint8_fields_in_every_form():
    expected = [0, 1, 254, 255]
    for value in (base64.b64encode(bytes(expected)).decode(), bytes(expected), bytearray(expected), expected,
                  np.array(expected, np.uint8)):  # fmt: skip
        assert uint8_field(value, "data").tolist() == expected
    for bad, message in (([0, 256], "0..255"), (np.zeros(3, np.float32), "uint8 array"), (3.5, "base64 text")):
        with pytest.raises(MessageError, match=message):
            uint8_field(bad, "data")


def test_stamps_keep_nanoseconds():
    stamp = Stamp(1_700_000_000, 123_456_789)
    assert Stamp.from_ns(stamp.ns) == stamp and str(stamp) == "1700000000.123456789"
    assert Stamp.from_sec(1.5) == Stamp(1, 500_000_000)
    assert abs(stamp.to_sec() - 1_700_000_000.123456789) < 1e-6
    with pytest.raises(MessageError):
        Stamp(0, -1)
