from __future__ import annotations

import numpy as np
import pytest

from perception.io import (
    Calibration,
    KittiObject,
    MalformedFileError,
    read_calib,
    read_image,
    read_label,
    read_pcd,
    read_ply,
    read_point_cloud,
    read_squeezeseg_npy,
    read_velodyne_bin,
    write_calib,
    write_image,
    write_label,
    write_pcd,
    write_ply,
    write_squeezeseg_npy,
    write_velodyne_bin,
)
from perception.io.common import atomic_write
from perception.io.kitti import box_corners_rect
from perception.io.labels import read_point_labels_and_instances, write_point_labels

from .conftest import KITTI_SAMPLES, kitti_sample_scans, requires_kitti_samples

# The calibration of KITTI object frame 000000 (training), as published with the benchmark.
KITTI_CALIB_TEXT = """P0: 7.070493000000e+02 0.000000000000e+00 6.040814000000e+02 0.000000000000e+00 0.000000000000e+00 7.070493000000e+02 1.805066000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P1: 7.070493000000e+02 0.000000000000e+00 6.040814000000e+02 -3.797842000000e+02 0.000000000000e+00 7.070493000000e+02 1.805066000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P2: 7.070493000000e+02 0.000000000000e+00 6.040814000000e+02 4.575831000000e+01 0.000000000000e+00 7.070493000000e+02 1.805066000000e+02 -3.454157000000e-01 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 4.981016000000e-03
P3: 7.070493000000e+02 0.000000000000e+00 6.040814000000e+02 -3.341081000000e+02 0.000000000000e+00 7.070493000000e+02 1.805066000000e+02 2.330660000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 3.201153000000e-03
R0_rect: 9.999128000000e-01 1.009263000000e-02 -8.511932000000e-03 -1.012729000000e-02 9.999406000000e-01 -4.037671000000e-03 8.470675000000e-03 4.123522000000e-03 9.999556000000e-01
Tr_velo_to_cam: 6.927964000000e-03 -9.999722000000e-01 -2.757829000000e-03 -2.457729000000e-02 -1.162982000000e-03 2.749836000000e-03 -9.999955000000e-01 -6.127237000000e-02 9.999753000000e-01 6.931141000000e-03 -1.143899000000e-03 -3.321029000000e-01
Tr_imu_to_velo: 9.999976000000e-01 7.553071000000e-04 -2.035826000000e-03 -8.086759000000e-01 -7.854027000000e-04 9.998898000000e-01 -1.482298000000e-02 3.195559000000e-01 2.024406000000e-03 1.482454000000e-02 9.998881000000e-01 -7.997231000000e-01
"""

KITTI_LABEL_TEXT = """Pedestrian 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01
Car 0.88 3 -0.69 0.00 192.37 402.31 374.00 1.60 1.57 3.23 -2.70 1.74 3.68 -1.29
DontCare -1 -1 -10 800.38 163.67 825.45 184.07 -1 -1 -1 -1000 -1000 -1000 -10
"""


@pytest.fixture()
def calib_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(KITTI_CALIB_TEXT)
    return path


def test_velodyne_roundtrip_and_truncation(tmp_path, street_scan):
    path = write_velodyne_bin(tmp_path / "velodyne" / "000000.bin", street_scan.points)
    np.testing.assert_array_equal(read_velodyne_bin(path), street_scan.points)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(MalformedFileError, match=r"000000\.bin.*truncated"):
        read_velodyne_bin(path)
    with pytest.raises(MalformedFileError, match="no such file"):
        read_velodyne_bin(tmp_path / "missing.bin")


def test_label_read_write_is_lossless(tmp_path):
    src = tmp_path / "label.txt"
    src.write_text(KITTI_LABEL_TEXT)
    objects = read_label(src)
    assert [o.type for o in objects] == ["Pedestrian", "Car", "DontCare"]
    car = objects[1]
    assert car.truncated == 0.88 and car.occluded == 3 and car.bbox == (0.0, 192.37, 402.31, 374.0)
    assert car.dimensions == (1.6, 1.57, 3.23) and car.location == (-2.7, 1.74, 3.68) and car.score is None
    out = write_label(tmp_path / "copy.txt", objects)
    assert read_label(out) == objects
    scored = [
        KittiObject(
            "Cyclist",
            0.1234567891,
            1,
            0.3,
            (1.5, 2.25, 30.125, 60.0),
            (1.7, 0.6, 1.8),
            (1.0, 1.6, 20.0),
            0.1,
            score=0.987654321,
        )
    ]
    assert read_label(write_label(tmp_path / "scored.txt", scored)) == scored


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Car 0 0 0 1 2 3\n", "line 1: expected 15 or 16 fields, got 7"),
        ("Car 0 0 0 1 2 3 4 1 1 1 0 0 x 0\n", "line 1"),
        ("Car 0 0 0 1 2 3 4 1 1 1 0 0 nan 0\n", "non-finite"),
        ("Car 0 0.5 0 1 2 3 4 1 1 1 0 0 1 0\n", "occluded must be an integer"),
    ],
)
def test_malformed_labels_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(line)
    with pytest.raises(MalformedFileError, match=message) as info:
        read_label(path)
    assert "bad.txt" in str(info.value)


def test_calib_read_write_is_lossless_and_transforms_invert(tmp_path, calib_file):
    calib = read_calib(calib_file)
    assert calib.P2.shape == (3, 4) and calib.P2[0, 0] == 707.0493
    again = read_calib(write_calib(tmp_path / "copy.txt", calib))
    for key in ("P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo"):
        np.testing.assert_array_equal(getattr(again, key), getattr(calib, key))
    velo = np.array([[10.0, 1.0, -1.0], [25.0, -4.0, 0.5]])
    rect = calib.velo_to_rect(velo)
    # the LiDAR sits 0.33 m behind the camera: a point 10 m ahead of it is 9.67 m along the camera z axis
    assert rect[0, 2] == pytest.approx(9.67, abs=0.02)
    np.testing.assert_allclose(calib.rect_to_velo(rect), velo, atol=1e-9)
    uv, depth = calib.velo_to_image(velo)
    assert (depth > 0).all() and 0 < uv[0, 0] < 1242 and 0 < uv[0, 1] < 375


def test_calib_missing_or_bad_matrices(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("P2: 1 2 3\n")
    with pytest.raises(MalformedFileError, match=r"P2\): expected 12 values, got 3"):
        read_calib(path)
    path.write_text(KITTI_CALIB_TEXT.replace("R0_rect", "R9_rect"))
    with pytest.raises(MalformedFileError, match="missing R0_rect"):
        read_calib(path)


def test_box_corners_bottom_centre_and_size():
    obj = KittiObject("Car", dimensions=(1.5, 1.6, 4.0), location=(1.0, 1.7, 10.0), rotation_y=0.0)
    corners = box_corners_rect(obj)
    assert corners[:, 1].max() == pytest.approx(1.7) and corners[:, 1].min() == pytest.approx(0.2)
    assert np.ptp(corners[:, 0]) == pytest.approx(4.0) and np.ptp(corners[:, 2]) == pytest.approx(1.6)


@pytest.mark.parametrize("binary", [True, False])
def test_pcd_and_ply_roundtrip(tmp_path, street_scan, binary):
    pts = street_scan.points[:500]
    np.testing.assert_array_equal(read_pcd(write_pcd(tmp_path / "a.pcd", pts, binary=binary)), pts)
    np.testing.assert_array_equal(read_ply(write_ply(tmp_path / "a.ply", pts, binary=binary)), pts)


def test_pcd_with_other_layouts(tmp_path):
    # xyz + rgb packed float + padding field with count 2, intensity as uint8 'i'
    header = (
        "VERSION .7\nFIELDS x y z rgb _ i\nSIZE 4 4 4 4 1 1\nTYPE F F F F U U\nCOUNT 1 1 1 1 2 1\n"
        "WIDTH 2\nHEIGHT 1\nPOINTS 2\nDATA binary\n"
    )
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("_", "u1", (2,)), ("i", "u1")])
    rec = np.zeros(2, dtype=dtype)
    rec["x"], rec["y"], rec["z"], rec["i"] = [1, 2], [3, 4], [5, 6], [7, 8]
    path = tmp_path / "odd.pcd"
    path.write_bytes(header.encode() + rec.tobytes())
    np.testing.assert_array_equal(read_pcd(path), [[1, 3, 5, 7], [2, 4, 6, 8]])
    path.write_bytes(header.encode() + rec.tobytes()[:-5])
    with pytest.raises(MalformedFileError, match="truncated PCD"):
        read_pcd(path)
    path.write_bytes(header.replace("binary", "binary_compressed").encode())
    with pytest.raises(MalformedFileError, match="binary_compressed is not supported"):
        read_pcd(path)


def test_ply_big_endian_double_without_intensity(tmp_path):
    header = (
        "ply\nformat binary_big_endian 1.0\nelement vertex 2\nproperty double x\nproperty double y\n"
        "property double z\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n"
    )
    body = np.array([[1, 2, 3], [4, 5, 6]], dtype=">f8").tobytes()
    path = tmp_path / "be.ply"
    path.write_bytes(header.encode() + body)
    np.testing.assert_array_equal(read_ply(path), [[1, 2, 3, 0], [4, 5, 6, 0]])
    path.write_bytes(b"plx\n")
    with pytest.raises(MalformedFileError, match="not a PLY file"):
        read_ply(path)


def test_point_cloud_dispatch(tmp_path, street_scan):
    pts = street_scan.points[:100]
    np.save(tmp_path / "a.npy", pts[:, :3])
    assert read_point_cloud(tmp_path / "a.npy").shape == (100, 4)
    with pytest.raises(MalformedFileError, match=r"unknown point cloud format \.xyz"):
        read_point_cloud(tmp_path / "a.xyz")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}]), allow_pickle=True)
    with pytest.raises(MalformedFileError, match=r"obj\.npy"):
        read_point_cloud(tmp_path / "obj.npy")


def test_point_labels_roundtrip(tmp_path, street_scan):
    path = write_point_labels(tmp_path / "a.label", street_scan.labels, street_scan.instances)
    classes, instances = read_point_labels_and_instances(path, expected=len(street_scan.labels))
    np.testing.assert_array_equal(classes, street_scan.labels)
    np.testing.assert_array_equal(instances, street_scan.instances)
    with pytest.raises(MalformedFileError, match="labels for a scan of 5 points"):
        read_point_labels_and_instances(path, expected=5)


@requires_kitti_samples
def test_squeezeseg_npy_reads_real_samples_and_roundtrips(tmp_path):
    tensor = read_squeezeseg_npy(kitti_sample_scans()[0], shape=(64, 512))
    assert tensor.shape == (64, 512, 6)
    out = write_squeezeseg_npy(tmp_path / "x.npy", tensor)
    np.testing.assert_array_equal(read_squeezeseg_npy(out), tensor)


def test_squeezeseg_npy_rejects_bad_tensors(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.zeros((64, 512, 5), np.float32))
    with pytest.raises(MalformedFileError, match=r"\(H, W, 6\)"):
        read_squeezeseg_npy(path)
    bad = np.zeros((64, 512, 6), np.float32)
    bad[0, 0, 0] = np.nan
    np.save(path, bad)
    with pytest.raises(MalformedFileError, match="NaN"):
        read_squeezeseg_npy(path)
    bad[0, 0, 0] = 0
    bad[0, 0, 5] = 7
    np.save(path, bad)
    with pytest.raises(MalformedFileError, match="labels"):
        read_squeezeseg_npy(path)
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(MalformedFileError, match="not a readable"):
        read_squeezeseg_npy(path)


def test_images_roundtrip_and_corrupt(tmp_path):
    img = (np.arange(375 * 1242 * 3) % 251).astype(np.uint8).reshape(375, 1242, 3)
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "a.png", img)), img)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(MalformedFileError, match=r"cut\.png"):
        read_image(tmp_path / "cut.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(MalformedFileError, match="not a PNG or JPEG"):
        read_image(tmp_path / "text.png")


@requires_kitti_samples
def test_reads_real_kitti_image():
    img = read_image(KITTI_SAMPLES / "kitti_image_sample.png")
    assert img.dtype == np.uint8 and img.shape == (375, 1242, 3)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def explode(handle):
        handle.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(path, explode)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_default_calibration_is_identity():
    calib = Calibration()
    np.testing.assert_array_equal(calib.velo_to_rect(np.array([[1.0, 2.0, 3.0]])), [[1.0, 2.0, 3.0]])


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: b"", "empty file"),
        (lambda: b"not an image at all", "not a PNG or JPEG"),
        (lambda: _png_bytes(np.zeros((20, 30), np.uint16) + 1000), "16-bit"),
        (lambda: _png_bytes(np.zeros((20, 30), np.uint8)), "grayscale"),
    ],
)
def test_bad_images_are_refused_clearly(make, message):
    from perception.io import decode_image

    with pytest.raises(MalformedFileError, match=message):
        decode_image(make(), "frame.png")


def test_huge_image_dimensions_are_refused_before_decoding():
    import struct
    import zlib

    from perception.io import decode_image

    # a valid PNG header claiming 100000 x 100000 pixels (the pixel data is never read)
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
    with pytest.raises(MalformedFileError, match="too large"):
        decode_image(png + chunk(b"IEND", b""), "huge.png")


def test_grayscale_allowed_on_request_and_rgba_loses_alpha():
    from perception.io import decode_image

    grey = decode_image(_png_bytes(np.full((4, 5), 7, np.uint8)), allow_grayscale=True)
    assert grey.shape == (4, 5, 3) and (grey == 7).all()
    rgba = decode_image(_png_bytes(np.full((4, 5, 4), 9, np.uint8)))
    assert rgba.shape == (4, 5, 3)
