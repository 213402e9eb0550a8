"""``perception demo`` as a new user runs it: models with fresh weights, the committed sample scan plus a camera
frame with labels, pictures checked at the pixels where ground truth must be drawn."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from perception.io import read_image, read_squeezeseg_npy, read_velodyne_bin, write_image
from perception.io.kitti import KittiObject, write_label
from perception.io.labels import read_point_labels
from perception.lidar.projection import spherical_project
from perception.lidar.sensors import SENSORS
from perception.viz.demo import run_demo
from perception.viz.draw import CAPTION_HEIGHT, class_colour
from perception.viz.range_view import range_panel_origin

from .conftest import KITTI_SAMPLES, SAMPLE_DIR, requires_kitti_samples
from .test_pipeline import synthetic_image
from .test_viewer import models_dir, viewer_models

GT_CAR = (414.0, 187.0, 574.0, 267.0)  # the red box of synthetic_image(), as a labelled car


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perception.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return viewer_models(models_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """The committed sample scan with a labelled camera frame beside it (KITTI layout)."""
    root = tmp_path_factory.mktemp("demo-data") / "scene"
    for sub, name in (("velodyne", "000000.bin"), ("labels", "000000.label")):
        (root / sub).mkdir(parents=True)
        shutil.copyfile(SAMPLE_DIR / sub / name, root / sub / name)
    write_image(root / "image_2" / "000000.png", synthetic_image(seed=4))
    write_label(
        root / "label_2" / "000000.txt",
        [KittiObject("Car", bbox=GT_CAR), KittiObject("DontCare", bbox=(10, 10, 40, 30))],
    )
    return root


def test_the_demo_without_models_says_which_one_is_missing_in_one_line(tmp_path):
    missing = tmp_path / "nothing.onnx"
    res = run_cli("demo", "--out", str(tmp_path / "out"), "--seg-model", str(missing))
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0], res.stderr
    assert "no such model" in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "out" / "index.html").exists()


def test_the_demo_writes_pictures_and_a_report_that_links_them(models, scene, tmp_path):
    runs = tmp_path / "runs" / "seg"
    runs.mkdir(parents=True)
    rows = [{"step": s, "lr": 0.01, "loss_total": 5.0 / s} for s in range(1, 40)] + [{"step": 39, "val_iou_car": 0.4}]
    (runs / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out, docs = tmp_path / "out", tmp_path / "docs"
    res = run_cli("demo", "--out", str(out), "--seg-model", str(models[0]), "--det-model", str(models[1]),
                  "--data", str(scene), "--kitti-samples", str(tmp_path / "absent"), "--runs", str(tmp_path / "runs"),
                  "--docs", str(docs), "--providers", "cpu", "--plot-threshold", "1")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"open {out / 'index.html'}" in res.stdout and "no real KITTI samples" in res.stdout

    html = (out / "index.html").read_text()
    linked = set(re.findall(r'<img src="([^"]+)"', html))
    written = {p.name for p in out.glob("*.png")}
    assert linked == written == {"scene_000000_camera.png", "scene_000000_range.png", "scene_000000_bev.png",
                                 "pr_curves.png", "training_seg.png"}  # fmt: skip
    assert "KITTI 2D AP R40" in html and "squeezedet.onnx" in html and "lidar.inference" in html

    # camera: the labelled car's white outline where label_2 puts it, under a caption bar
    camera = read_image(out / "scene_000000_camera.png")
    frame = synthetic_image(seed=4)
    assert camera.shape == (375 + CAPTION_HEIGHT, 1242, 3)
    x1, y1, x2, y2 = (int(v) for v in GT_CAR)
    white = np.array([255, 255, 255])
    for row, col in ((y1, 500), (y2, 500), (230, x1), (230, x2)):
        assert np.array_equal(camera[CAPTION_HEIGHT + row, col], white), (row, col)
    assert np.array_equal(camera[CAPTION_HEIGHT + 230, 500], frame[230, 500]), "inside the box: the frame itself"
    assert np.array_equal(camera[CAPTION_HEIGHT + 20, 10], [150, 150, 150]), "DontCare in grey"

    # range view: the ground-truth panel shows the sample's labels at the pixels their points own
    range_img = read_image(out / "scene_000000_range.png")
    points = read_velodyne_bin(SAMPLE_DIR / "velodyne" / "000000.bin")
    labels = read_point_labels(SAMPLE_DIR / "labels" / "000000.label")
    proj = spherical_project(points, SENSORS["kitti-front"])
    owner = proj.point_of_pixel
    row0, col0 = range_panel_origin(1, owner.shape[1])
    row0 += CAPTION_HEIGHT  # the demo's title bar above the comparison
    for cls in (1, 2):
        rows, cols = np.nonzero((owner >= 0) & (labels[np.maximum(owner, 0)] == cls))
        assert rows.size, f"the sample has no class {cls} pixels"
        for r, c in list(zip(rows, cols, strict=True))[:: max(1, rows.size // 20)]:
            assert tuple(range_img[row0 + 4 * r + 1, col0 + c]) == class_colour(cls), (cls, r, c)
    empty_r, empty_c = np.argwhere(owner < 0)[0]
    assert tuple(range_img[row0 + 4 * empty_r + 1, col0 + empty_c]) == (0, 0, 0)

    # bird's-eye view: prediction | ground truth; the ground truth has the sample's cars and their boxes
    bev = read_image(out / "scene_000000_bev.png")
    right = bev[:, bev.shape[1] // 2 :]
    assert np.all(right == class_colour("car"), axis=-1).sum() > 500

    for name in ("demo_camera.png", "demo_range.png", "demo_bev.png", "demo_pr_curves.png"):
        source = {"demo_pr_curves.png": "pr_curves.png"}.get(name, f"scene_000000_{name.removeprefix('demo_')}")
        assert (docs / name).read_bytes() == (out / source).read_bytes(), name


@requires_kitti_samples
def test_the_demo_on_the_real_kitti_samples_draws_their_labels(models, tmp_path):
    said: list[str] = []
    result = run_demo(tmp_path, models[0], models[1], data=[], kitti_samples=KITTI_SAMPLES, runs=None,
                      providers="cpu", say=said.append)  # fmt: skip
    scans = sorted(KITTI_SAMPLES.glob("*.npy"))
    names = {p.name for p in result.all_pictures}
    for scan in scans:
        assert {f"kitti_{scan.stem}_range.png", f"kitti_{scan.stem}_bev.png"} <= names
    assert "kitti_kitti_image_sample_camera.png" in names and len(said) == len(names)
    tensor = read_squeezeseg_npy(scans[0])
    picture = read_image(tmp_path / f"kitti_{scans[0].stem}_range.png")
    row0, col0 = range_panel_origin(1, tensor.shape[1])
    r, c = np.argwhere((tensor[..., 4] > 0) & (tensor[..., 5] == 1))[0]
    assert tuple(picture[CAPTION_HEIGHT + row0 + 4 * r, col0 + c]) == class_colour("car")
    assert any("no frame has camera labels" in n for n in result.notes)
