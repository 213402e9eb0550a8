"""The ``perception`` command as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from perception import __version__
from perception.io import read_squeezeseg_npy, read_velodyne_bin, write_velodyne_bin
from perception.io.labels import read_point_labels_and_instances
from perception.lidar.sensors import SENSORS
from perception.sim.analytic import cast_scan, street_scene

from .conftest import SAMPLE_DIR


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perception.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_subcommands_and_version():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in ("project", "info", "bench", "simulate"):
        assert name in out.stdout
    ver = run_cli("--version")
    assert ver.returncode == 0 and ver.stdout.strip() == f"perception {__version__}"


def test_project_writes_squeezeseg_tensor_with_labels(tmp_path):
    scan = SAMPLE_DIR / "velodyne" / "000000.bin"
    labels = SAMPLE_DIR / "labels" / "000000.label"
    out = tmp_path / "x.npy"
    res = run_cli("project", str(scan), "--labels", str(labels), "--out", str(out))
    assert res.returncode == 0, res.stderr
    tensor = read_squeezeseg_npy(out, shape=(64, 512))
    valid = tensor[..., 4] > 0
    assert valid.sum() > 25000
    classes = np.bincount(tensor[..., 5][valid].astype(int), minlength=4)
    assert classes[1] > 1000 and classes[2] > 0  # cars and pedestrians in front of the sensor
    assert "pixels filled" in res.stdout


def test_project_to_a_user_sensor_file(tmp_path):
    spec = tmp_path / "lidar.json"
    spec.write_text(
        json.dumps(
            {"name": "mine", "beams": 32, "fov_up_deg": 10, "fov_down_deg": -30, "width": 256, "max_range_m": 100}
        )
    )
    res = run_cli(
        "project", str(SAMPLE_DIR / "velodyne" / "000000.bin"), "--sensor", str(spec), "--out", str(tmp_path / "y.npy")
    )
    assert res.returncode == 0, res.stderr
    assert np.load(tmp_path / "y.npy").shape == (32, 256, 6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["project", "missing.bin", "--out", "o.npy"], "missing.bin: no such file"),
        (["project", "scan.txt", "--out", "o.npy"], "unknown point cloud format .txt"),
        (["project", "trunc.bin", "--out", "o.npy"], "truncated velodyne scan"),
        (["project", "ok.bin", "--out", "o.npy", "--sensor", "hdl-99"], "unknown sensor 'hdl-99'"),
        (["project", "ok.bin", "--out", "o.npy", "--labels", "few.label"], "labels for a scan of 10 points"),
        (["bench", "warp-drive"], "unknown benchmark"),
    ],
)
def test_bad_input_gives_one_error_line(tmp_path, args, message):
    (tmp_path / "scan.txt").write_text("1 2 3")
    (tmp_path / "trunc.bin").write_bytes(b"\0" * 20)
    write_velodyne_bin(tmp_path / "ok.bin", np.ones((10, 4), np.float32))
    (tmp_path / "few.label").write_bytes(b"\0" * 8)
    res = subprocess.run(
        [sys.executable, "-m", "perception.cli", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_simulate_matches_committed_sample(tmp_path):
    res = run_cli("simulate", "--world", "analytic", "--out", str(tmp_path), "--frames", "1", "--seed", "0")
    assert res.returncode == 0, res.stderr
    fresh = read_velodyne_bin(tmp_path / "velodyne" / "000000.bin")
    committed = read_velodyne_bin(SAMPLE_DIR / "velodyne" / "000000.bin")
    assert fresh.shape == committed.shape
    np.testing.assert_allclose(fresh, committed, atol=1e-4)
    classes, instances = read_point_labels_and_instances(SAMPLE_DIR / "labels" / "000000.label")
    assert len(classes) == len(committed) and set(np.unique(classes)) == {0, 1, 2, 3}
    assert len(np.unique(instances[instances > 0])) >= 8


def test_sample_scan_labels_match_geometry():
    """Points labelled car in the committed sample lie inside the scene's car boxes."""
    scan = cast_scan(SENSORS["hdl64e-360"], street_scene(0), seed=0)
    cars = [b for b in street_scene(0) if b.label == 1]
    pts = scan.points[scan.labels == 1]
    inside = np.zeros(len(pts), bool)
    for b in cars:
        c, s = np.cos(b.yaw), np.sin(b.yaw)
        dx, dy = pts[:, 0] - b.x, pts[:, 1] - b.y
        lx, ly = c * dx + s * dy, -s * dx + c * dy
        inside |= (np.abs(lx) <= b.length / 2 + 0.1) & (np.abs(ly) <= b.width / 2 + 0.1)
    assert inside.all()


def test_info_json_lists_sensors():
    res = run_cli("info", "--json")
    assert res.returncode == 0
    data = json.loads(res.stdout)
    assert {s["name"] for s in data["sensors"]} == set(SENSORS)
    assert "CPUExecutionProvider" in data["libraries"]["onnxruntime_providers"]


def test_bench_projection_json():
    res = run_cli("bench", "projection", "--repeats", "3", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    proj = data["benchmarks"]["projection"]
    assert proj["runs"] == 3 and proj["median_ms"] > 0 and proj["points"] > 100_000


def test_bench_pipeline_is_the_lidar_pipeline():
    res = run_cli("bench", "pipeline", "--repeats", "3", "--json")
    assert res.returncode == 0, res.stderr
    assert list(json.loads(res.stdout)["benchmarks"]) == ["lidar-pipeline"]


@pytest.mark.parametrize("command", ["segment", "detect"])
def test_corrupt_model_is_one_error_line(tmp_path, command):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    target = SAMPLE_DIR / "velodyne" / "000000.bin"
    if command == "detect":
        from perception.io.images import write_image

        target = write_image(tmp_path / "frame.png", np.zeros((375, 1242, 3), np.uint8))
    res = run_cli(command, str(target), "--model", str(bad))
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error:") and "bad.onnx" in res.stderr
