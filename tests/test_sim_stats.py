"""``perception simulate --stats``: statistics of SqueezeSeg tensors (hand-computed on hand-built tensors), the
command on a tiny generated set and on the real KITTI samples, bad input, and the ``sim`` bench's keys (no
wall-clock asserts)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from perception import bench, cli
from perception.cli import app
from perception.io import write_squeezeseg_npy
from perception.sim.stats import (
    compare_statistics,
    directory_statistics,
    format_comparison,
    squeezeseg_files,
    squeezeseg_statistics,
    total_variation,
)

from .conftest import KITTI_SAMPLES, kitti_sample_scans, requires_kitti_samples


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perception.cli", *args], capture_output=True, text=True, timeout=300)


def _tensor(pixels: list[tuple[float, float, int]], shape: tuple[int, int] = (2, 4)) -> np.ndarray:
    """A (H, W, 6) tensor whose first pixels (row-major) hold (range m, intensity, label); the rest are empty."""
    out = np.zeros((*shape, 6), dtype=np.float32)
    flat = out.reshape(-1, 6)
    for i, (rng_m, intensity, label) in enumerate(pixels):
        flat[i] = (rng_m, 0.0, 0.0, intensity, rng_m, label)
    return out


@pytest.fixture()
def hand_tensors() -> list[np.ndarray]:
    a = _tensor([(5, 0.05, 0), (15, 0.15, 1), (25, 0.25, 1), (35, 0.35, 2), (50, 0.95, 3), (130, 1.0, 0)])
    b = _tensor([(5, 0.0, 1), (70, 0.55, 0)])
    b[1, 3, 3], b[1, 3, 5] = 0.5, 3  # an empty pixel (range 0) with junk intensity and label: not counted
    return [a, b]


def test_statistics_of_hand_built_tensors(hand_tensors):
    s = squeezeseg_statistics(hand_tensors)
    assert (s["frames"], s["pixels"], s["valid_pixels"]) == (2, 16, 8)
    assert s["valid_fraction"] == 0.5
    assert (s["valid_fraction_min"], s["valid_fraction_max"]) == (0.25, 0.75)
    assert s["class_share"] == {"unknown": 3 / 8, "car": 3 / 8, "pedestrian": 1 / 8, "cyclist": 1 / 8}
    assert s["range_edges_m"] == [0, 10, 20, 30, 40, 60, 80, 120]
    # 5, 5 | 15 | 25 | 35 | 50 | 70 | 130 (beyond 120 m: counted in the last bin)
    assert s["range_histogram"] == pytest.approx(np.array([2, 1, 1, 1, 1, 1, 1]) / 8)
    assert s["range_beyond_last_edge"] == 1 / 8
    # 0.05, 0.0 | 0.15 | 0.25 | 0.35 | - | 0.55 | - | - | - | 0.95, 1.0 (1.0 falls in the closed last bin)
    assert s["intensity_histogram"] == pytest.approx(np.array([2, 1, 1, 1, 0, 1, 0, 0, 0, 2]) / 8)
    assert s["intensity_edges"] == pytest.approx(np.linspace(0, 1, 11))
    assert sum(s["range_histogram"]) == pytest.approx(1.0) and sum(s["intensity_histogram"]) == pytest.approx(1.0)
    assert sum(s["class_share"].values()) == pytest.approx(1.0)
    assert s["mean_range_m"] == pytest.approx(335 / 8)
    assert s["mean_intensity"] == pytest.approx(3.3 / 8, abs=1e-6)
    json.dumps(s)


def test_statistics_streams_a_generator_and_handles_empty_frames(hand_tensors):
    pooled = squeezeseg_statistics(iter(hand_tensors))
    assert pooled == squeezeseg_statistics(hand_tensors)
    empty = squeezeseg_statistics([np.zeros((64, 512, 6), np.float32)])
    assert empty["valid_fraction"] == 0.0 and empty["valid_pixels"] == 0 and empty["pixels"] == 64 * 512
    assert sum(empty["range_histogram"]) == 0 and sum(empty["class_share"].values()) == 0


def test_statistics_reject_bad_input(hand_tensors):
    with pytest.raises(ValueError, match="no SqueezeSeg tensors"):
        squeezeseg_statistics([])
    with pytest.raises(ValueError, match=r"tensor 1: expected a \(H, W, 6\)"):
        squeezeseg_statistics([hand_tensors[0], np.zeros((64, 512, 5), np.float32)])
    with pytest.raises(ValueError, match="labels"):
        squeezeseg_statistics([_tensor([(5, 0.1, 7)])])
    with pytest.raises(ValueError, match="increasing"):
        squeezeseg_statistics(hand_tensors, range_edges_m=(0.0, 20.0, 10.0))
    with pytest.raises(ValueError, match="intensity_bins"):
        squeezeseg_statistics(hand_tensors, intensity_bins=0)


def test_comparison_and_table(hand_tensors):
    a = squeezeseg_statistics(hand_tensors)
    b = squeezeseg_statistics(hand_tensors[:1])
    assert total_variation([0.5, 0.5], [1.0, 0.0]) == 0.5 and total_variation([1, 0], [0, 1]) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        total_variation([1.0], [0.5, 0.5])
    same = compare_statistics(a, a)["difference"]
    assert same["range_histogram_tv"] == 0.0 and same["valid_fraction_diff"] == 0.0
    diff = compare_statistics(a, b)["difference"]
    assert diff["valid_fraction_diff"] == pytest.approx(0.5 - 0.75)
    assert diff["class_share_diff"]["car"] == pytest.approx(3 / 8 - 2 / 6)
    assert compare_statistics(a, None) == {"generated": a, "real": None}
    with pytest.raises(ValueError, match="different histogram bins"):
        compare_statistics(a, squeezeseg_statistics(hand_tensors, intensity_bins=5))

    table = format_comparison(a, b, ("gen", "real"))
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:4]] == ["metric", "gen", "real"]
    assert set(lines[1]) <= set("|-:")
    valid = next(line for line in lines if line.startswith("| valid pixels "))
    assert [c.strip() for c in valid.split("|")[1:4]] == ["valid pixels", "50.0%", "75.0%"]
    assert any("range 80+ m" in line and "12.5%" in line for line in lines)
    assert "Total variation distance, gen vs real" in table
    alone = format_comparison(a, None).splitlines()
    assert [c.strip() for c in alone[0].split("|")[1:-1]] == ["metric", "generated"]
    assert "Total variation" not in "\n".join(alone)


def test_squeezeseg_files_finds_both_layouts(tmp_path, hand_tensors):
    write_squeezeseg_npy(tmp_path / "gen" / "squeezeseg" / "000001.npy", hand_tensors[1])
    write_squeezeseg_npy(tmp_path / "gen" / "squeezeseg" / "000000.npy", hand_tensors[0])
    write_squeezeseg_npy(tmp_path / "flat" / "scan.npy", hand_tensors[0])
    assert [p.name for p in squeezeseg_files(tmp_path / "gen")] == ["000000.npy", "000001.npy"]
    assert [p.name for p in squeezeseg_files(tmp_path / "flat")] == ["scan.npy"]
    assert directory_statistics(tmp_path / "gen")["valid_fraction"] == 0.5
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no SqueezeSeg \.npy tensors"):
        squeezeseg_files(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a directory"):
        squeezeseg_files(tmp_path / "missing")


@pytest.fixture(scope="module")
def tiny_generated_set(tmp_path_factory):
    """One LiDAR-only frame of the mesh world (needs open3d)."""
    pytest.importorskip("open3d", reason="the mesh world needs open3d ([train] extra)")
    from perception.sim.dataset import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("sim_stats"), "urban", frames=1, seed=0, camera=False)


def test_cli_stats_of_a_generated_set(tiny_generated_set, tmp_path, hand_tensors):
    real_dir = tmp_path / "real"
    write_squeezeseg_npy(real_dir / "a.npy", hand_tensors[0])
    res = run_cli("simulate", "--stats", str(tiny_generated_set), "--real", str(real_dir), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    gen = doc["generated"]
    assert gen["frames"] == 1 and gen["pixels"] == 64 * 512
    assert gen == {"dir": str(tiny_generated_set), **squeezeseg_statistics([np.load(
        tiny_generated_set / "squeezeseg" / "000000.npy")])}  # fmt: skip
    assert 0.5 < gen["valid_fraction"] <= 1.0
    assert doc["real"]["valid_fraction"] == 6 / 8 and doc["note"] is None
    assert 0.0 <= doc["difference"]["range_histogram_tv"] <= 1.0

    table = run_cli("simulate", "--stats", str(tiny_generated_set), "--real", str(real_dir))
    assert table.returncode == 0, table.stderr
    assert "| valid pixels " in table.stdout and "real (real)" in table.stdout
    assert f"{gen['valid_fraction'] * 100:.1f}%" in table.stdout and "75.0%" in table.stdout


def test_cli_stats_uses_the_real_samples_or_says_they_are_missing(tiny_generated_set, tmp_path, monkeypatch):
    """The default real set is ../shared's KITTI samples; where absent, only the generated set is shown."""
    runner = CliRunner()
    monkeypatch.setattr(cli, "KITTI_SAMPLES", tmp_path / "nowhere")
    res = runner.invoke(app, ["simulate", "--stats", str(tiny_generated_set), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["real"] is None and "real samples not found" in doc["note"] and "difference" not in doc
    res = runner.invoke(app, ["simulate", "--stats", str(tiny_generated_set)])
    assert res.exit_code == 0 and "real samples not found" in res.stdout and "real (" not in res.stdout


@requires_kitti_samples
def test_cli_stats_on_the_real_samples():
    res = run_cli("simulate", "--stats", str(KITTI_SAMPLES), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    real = doc["real"]
    assert real["frames"] == len(kitti_sample_scans()) == doc["generated"]["frames"]
    assert 0.84 < real["valid_fraction"] < 0.90  # README: about 28,500 of 32,768 pixels
    assert real["class_share"]["car"] > 0.01 and real["class_share"]["unknown"] > 0.5
    assert doc["difference"]["range_histogram_tv"] == 0.0 and doc["difference"]["intensity_histogram_tv"] == 0.0


def test_cli_stats_bad_input_is_one_error_line(tmp_path):
    (tmp_path / "squeezeseg").mkdir()
    (tmp_path / "velodyne.bin").write_bytes(b"")
    for args, message in (
        (("--stats", str(tmp_path)), "no SqueezeSeg .npy tensors"),
        (("--stats", str(tmp_path), "--out", str(tmp_path / "o")), "leave out --out"),
        (("--frames", "1"), "--out is required"),
    ):
        res = run_cli("simulate", *args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def test_bench_sim_keys(monkeypatch):
    pytest.importorskip("open3d", reason="the sim bench needs open3d ([train] extra)")
    monkeypatch.setattr(bench, "SIM_BENCH_FRAMES", 1)
    out = bench.run_benchmarks(["sim"], repeats=3)
    json.dumps(out)  # what --json prints
    assert "matmul_probe" not in out
    sim = out["benchmarks"]["sim"]
    assert sim["runs"] == sim["frames"] == 1 and sim["sensor"] == "hdl64e-360" and sim["threads"] >= 1
    assert sim["lidar_frames_per_s"] == pytest.approx(1e3 / sim["median_ms"])
    assert sim["lidar_frames_per_s_per_core"] == pytest.approx(sim["lidar_frames_per_s"] / sim["threads"])
    assert sim["lidar_camera_frames_per_s"] == pytest.approx(1e3 / sim["lidar_camera_median_ms"])
    ratios = [k for k in sim if "_vs_" in k]
    assert ratios == ["lidar_only_vs_with_camera_speedup"]
    assert sim["lidar_only_vs_with_camera_speedup"] == pytest.approx(sim["lidar_camera_median_ms"] / sim["median_ms"])
    assert all(math.isfinite(sim[k]) and sim[k] > 0 for k in ("median_ms", "lidar_camera_median_ms", *ratios))
    assert {"scene", "lidar", "camera", "labels", "squeezeseg", "write"} <= set(sim["lidar_camera_stage_median_ms"])
    assert "frames/s" in sim["notes"] and f"{sim['threads']} threads" in sim["notes"]


def test_bench_sim_skips_without_open3d(monkeypatch):
    monkeypatch.setitem(sys.modules, "open3d", None)  # import open3d now raises ImportError
    res = bench.bench_sim(3)
    assert res["runs"] == 0 and math.isnan(res["median_ms"]) and "skipped" in res["notes"] and "open3d" in res["notes"]
