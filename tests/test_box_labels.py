"""Point labels from KITTI 3D boxes (the SqueezeSeg protocol), and real-scan evaluation in that layout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from perception.io import Calibration, KittiObject, write_calib, write_label, write_velodyne_bin
from perception.io.common import MalformedFileError
from perception.lidar.box_labels import IGNORE_LABEL, point_labels_from_boxes, points_in_box

REPO = Path(__file__).resolve().parents[1]
SEG_MODEL = REPO / "models" / "squeezeseg_kitti-front.onnx"


def camera_calib() -> Calibration:
    """LiDAR (x forward, y left, z up) -> camera (x right, y down, z forward); a 700 px pinhole at (620, 187)."""
    calib = Calibration()
    calib.Tr_velo_to_cam = np.array([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0]])
    calib.P2 = np.array([[700.0, 0, 620, 0], [0, 700, 187, 0], [0, 0, 1, 0]])
    return calib


def box(kind: str, forward: float, left: float, *, h: float = 1.5, w: float = 1.6, length: float = 4.0,
        yaw: float = 0.0, bbox=(0.0, 0.0, 0.0, 0.0)) -> KittiObject:  # fmt: skip
    """A KITTI object whose bottom centre lies on the ground (z = -1.7 m) at (forward, left) in the LiDAR frame."""
    return KittiObject(kind, bbox=bbox, dimensions=(h, w, length), location=(-left, 1.7, forward), rotation_y=yaw)


def points(*xyz: tuple[float, float, float]) -> np.ndarray:
    return np.array([[x, y, z, 0.5] for x, y, z in xyz], dtype=np.float32)


def test_points_inside_a_car_box_are_car_and_the_rest_background():
    # rotation_y 0: the box's length runs along camera x, i.e. across the LiDAR's forward axis
    scan = points(
        (10.0, 0.0, -1.0),  # centre of the box
        (10.0, 1.9, -1.0),  # 1.9 m left: inside the half length 2.0
        (10.0, 2.1, -1.0),  # outside the half length
        (10.7, 0.0, -1.0),  # 0.7 m forward: inside the half width 0.8
        (10.9, 0.0, -1.0),  # outside the half width
        (10.0, 0.0, -1.75),  # below the box's bottom face
        (10.0, 0.0, -0.25),  # just under its top (bottom -1.7 + h 1.5 = -0.2)
        (10.0, 0.0, -0.15),  # above its top
        (30.0, 5.0, 0.0),  # elsewhere
    )
    labels = point_labels_from_boxes(scan, [box("Car", 10.0, 0.0)], camera_calib())
    assert labels.tolist() == [1, 1, 0, 1, 0, 0, 1, 0, 0]


def test_a_rotated_box_turns_its_length_along_the_lidar_forward_axis():
    scan = points((11.9, 0.0, -1.0), (10.0, 1.9, -1.0), (10.0, 0.7, -1.0))
    calib = camera_calib()
    assert point_labels_from_boxes(scan, [box("Pedestrian", 10.0, 0.0)], calib).tolist() == [0, 2, 2]
    turned = point_labels_from_boxes(scan, [box("Pedestrian", 10.0, 0.0, yaw=math.pi / 2)], calib)
    assert turned.tolist() == [2, 0, 2]
    # 30 deg: the point at (1.9 along, -0.7 across) in the turned box's frame is outside the unturned box
    yaw = math.radians(30)
    c, s = math.cos(yaw), math.sin(yaw)
    camera_dx, camera_dz = c * 1.9 + s * -0.7, -s * 1.9 + c * -0.7  # the box's yaw about camera y
    rect = calib.velo_to_rect(points((10.0 + camera_dz, -camera_dx, -1.0)))
    assert points_in_box(rect, box("Car", 10.0, 0.0, yaw=yaw)).tolist() == [True]
    assert points_in_box(rect, box("Car", 10.0, 0.0)).tolist() == [False]


def test_unscored_types_and_dontcare_regions_are_ignored_but_a_scored_box_wins():
    calib = camera_calib()
    scan = points(
        (10.0, 0.0, -1.0),  # in the Van box
        (20.0, 6.0, -1.0),  # in the Cyclist box
        (40.0, 0.0, -1.0),  # behind the DontCare region (projects to u = 620, v = 204.5)
        (40.0, 0.0, -1.5),  # in a Car box that the same region covers
        (40.0, -8.0, -1.0),  # beside the region (u = 760)
        (-5.0, 0.0, -1.0),  # behind the camera: never in an image region
    )
    objects = [
        box("Van", 10.0, 0.0),
        box("Cyclist", 20.0, 6.0, w=0.6, length=1.8, h=1.7),
        KittiObject("DontCare", bbox=(600.0, 180.0, 640.0, 230.0)),
        box("Car", 40.0, 0.0, h=0.4),
    ]
    labels = point_labels_from_boxes(scan, objects, calib)
    assert labels.tolist() == [IGNORE_LABEL, 3, IGNORE_LABEL, 1, 0, 0]
    for kind in ("Truck", "Tram", "Misc", "Person_sitting"):
        assert point_labels_from_boxes(scan[:1], [box(kind, 10.0, 0.0)], calib).tolist() == [IGNORE_LABEL]
    with pytest.raises(ValueError, match="unknown KITTI object type 'Bus'"):
        point_labels_from_boxes(scan, [box("Bus", 10.0, 0.0)], calib)


def write_frame(root: Path, frame_id: str, scan: np.ndarray, objects: list[KittiObject]) -> None:
    write_velodyne_bin(root / "velodyne" / f"{frame_id}.bin", scan)
    write_label(root / "label_2" / f"{frame_id}.txt", objects)
    write_calib(root / "calib" / f"{frame_id}.txt", camera_calib())


def test_eval_seg_on_the_kitti_object_layout_counts_scored_points_in_view(tmp_path):
    from perception.evaluation.segmentation import evaluate_segmenter
    from perception.runtime.segmenter import Segmenter

    rng = np.random.default_rng(0)
    # a car and a van ahead, background scattered in front, points behind the sensor (out of the front view)
    car = rng.uniform([9.3, -1.9, -1.6], [10.7, 1.9, -0.3], (300, 3))
    van = rng.uniform([19.3, -1.9, -1.6], [20.7, 1.9, -0.3], (200, 3))
    ground = np.column_stack([rng.uniform(5, 40, 500), rng.uniform(-3, 3, 500), np.full(500, -1.72)])
    behind = rng.uniform([-20, -5, -1.5], [-5, 5, 0], (100, 3))
    xyz = np.concatenate([car, van, ground, behind])
    scan = np.column_stack([xyz, np.full(len(xyz), 0.3)]).astype(np.float32)
    write_frame(tmp_path, "000000", scan, [box("Car", 10.0, 0.0), box("Van", 20.0, 0.0)])
    scores = evaluate_segmenter(Segmenter(SEG_MODEL, providers="cpu"), tmp_path)
    rows = scores.confusion.sum(1)
    assert scores.frames == 1
    assert (rows[1], scores.ignored) == (300, 200)
    assert scores.points == 300 + 500 == rows.sum()
    assert rows[2] == rows[3] == 0


def test_eval_seg_errors_name_the_file(tmp_path):
    from perception.evaluation.segmentation import iter_labelled_scans

    scan = points((10.0, 0.0, -1.0))
    write_frame(tmp_path, "000000", scan, [box("Car", 10.0, 0.0)])
    (tmp_path / "label_2" / "000000.txt").write_text("Car 0 0 0 1 2 3\n")
    with pytest.raises(MalformedFileError, match=r"label_2/000000.txt.*line 1: expected 15 or 16 fields"):
        list(iter_labelled_scans(tmp_path))
    write_label(tmp_path / "label_2" / "000000.txt", [box("Lorry", 10.0, 0.0)])
    with pytest.raises(MalformedFileError, match=r"label_2/000000.txt.*unknown KITTI object type 'Lorry'"):
        list(iter_labelled_scans(tmp_path))
    write_label(tmp_path / "label_2" / "000000.txt", [box("Car", 10.0, 0.0)])
    (tmp_path / "calib" / "000000.txt").unlink()
    with pytest.raises(MalformedFileError, match=r"calib/000000.txt"):
        list(iter_labelled_scans(tmp_path))
    (tmp_path / "velodyne" / "000000.bin").write_bytes(b"\0" * 20)
    with pytest.raises(MalformedFileError, match=r"velodyne/000000.bin.*16-byte points"):
        list(iter_labelled_scans(tmp_path))
    empty = tmp_path / "no_labels"
    (empty / "velodyne").mkdir(parents=True)
    with pytest.raises(MalformedFileError, match="label_2/ boxes with calib/"):
        list(iter_labelled_scans(empty))


def run_cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "perception.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_converts_kitti_object_scans_and_evaluates_them(tmp_path):
    import json

    scan = points((10.0, 0.0, -1.0), (10.0, 1.0, -1.0), (20.0, 0.0, -1.0), (30.0, 3.0, -1.0))
    write_frame(tmp_path / "kitti", "000007", scan, [box("Car", 10.0, 0.0), box("Van", 20.0, 0.0)])
    res = run_cli("data", "kitti-to-squeezeseg", "--data", str(tmp_path / "kitti"), "--out", str(tmp_path / "npy"),
                  "--outside-camera", "background")  # fmt: skip
    assert res.returncode == 0, res.stderr
    from perception.io import read_squeezeseg_npy

    tensor = read_squeezeseg_npy(tmp_path / "npy" / "squeezeseg" / "000007.npy", shape=(64, 512))
    labels = tensor[..., 5][tensor[..., 4] > 0]
    assert sorted(labels.tolist()) == [IGNORE_LABEL, 0, 1, 1]
    for data in (tmp_path / "kitti", tmp_path / "npy"):
        res = run_cli("eval", "seg", "--data", str(data), "--json")
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert (doc["points"], doc["ignored_points"], doc["classes"]["car"]["points"]) == (3, 1, 2)
    bad = run_cli("data", "kitti-to-squeezeseg", "--data", str(tmp_path), "--out", str(tmp_path / "x"))
    assert bad.returncode != 0 and "has no velodyne/" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "kitti" / "calib" / "000007.txt").write_text("P2: 1 2 3\n")
    bad = run_cli("eval", "seg", "--data", str(tmp_path / "kitti"))
    assert bad.returncode != 0 and "calib/000007.txt" in bad.stderr and "Traceback" not in bad.stderr


KITTI_OBJECT_DEV = REPO.parent / "shared" / "data" / "kitti_object_dev"


@pytest.mark.skipif(
    not (KITTI_OBJECT_DEV / "velodyne").is_dir(), reason=f"{KITTI_OBJECT_DEV} not found (dev workspace only)"
)
def test_real_kitti_object_scans_have_box_labels_in_the_front_view():
    from perception.evaluation.segmentation import iter_labelled_scans
    from perception.lidar.projection import spherical_project
    from perception.lidar.sensors import SENSORS

    frame_id, scan, labels, _ = next(iter_labelled_scans(KITTI_OBJECT_DEV))
    in_view = spherical_project(scan, SENSORS["kitti-front"]).in_view
    # frame 000000 holds one pedestrian and nothing else
    assert frame_id == "000000" and (labels[in_view] == 2).sum() > 50 and set(np.unique(labels)) == {0, 2}
    scans = iter_labelled_scans(KITTI_OBJECT_DEV)
    next(scans)
    # frame 000003: a car and two DontCare regions
    frame_id, scan, labels, _ = next(scans)
    assert frame_id == "000003" and set(np.unique(labels)) == {IGNORE_LABEL, 0, 1} and (labels == 1).sum() > 200
    val = REPO / "configs" / "splits" / "kitti_object_dev_val.txt"
    train = REPO / "configs" / "splits" / "kitti_object_dev_train.txt"
    val_ids = [i for i, *_ in iter_labelled_scans(KITTI_OBJECT_DEV, str(val))]
    assert len(val_ids) == 10 and not set(val_ids) & set(train.read_text().split())
