"""Deployment runtime on the CPU: execution-provider fallback and what /v1/models reports, TensorRT
provider options, warm-up at start, and `perception export trt` (engine build refused without TensorRT;
the FP32-vs-candidate accuracy check and INT8 calibration, which run on the CPU provider here).

What needs a GPU (engines actually built, FP16/INT8 drops measured) is documented in docs/deployment.md.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from perception.io import write_image, write_label
from perception.io.kitti import parse_label_line
from perception.pipeline import Pipeline
from perception.runtime import session as session_module
from perception.runtime.session import (
    TRT_PROVIDER,
    ModelLoadError,
    TensorRTOptions,
    load_model,
    warm_up,
    zero_feeds,
)
from perception.runtime.trt import AccuracyCheck, TensorRTUnavailableError, require_tensorrt
from perception.service.server import serve_in_background
from perception.service.settings import Settings

from .conftest import REPO, SAMPLE_DIR
from .test_pipeline import exported_models, models_root, synthetic_image

CPU = "CPUExecutionProvider"
HAS_TRT = TRT_PROVIDER in ort.get_available_providers()
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
cpu_only = pytest.mark.skipif(HAS_TRT or HAS_CUDA, reason="this onnxruntime build has a GPU provider")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return exported_models(models_root(tmp_path_factory))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perception.cli", *args], capture_output=True, text=True, timeout=600)


# --- provider selection -------------------------------------------------------------------------------


@cpu_only
@pytest.mark.parametrize("preference", ["tensorrt", "cuda", "tensorrt,cuda"])
def test_explicit_gpu_provider_falls_back_to_cpu_with_a_warning(models, caplog, preference):
    with caplog.at_level(logging.INFO, logger="perception.runtime.session"):
        loaded = load_model(models[0], preference)
    assert loaded.provider == CPU and loaded.providers == [CPU]
    assert loaded.requested_providers[-1] == CPU
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    text = warnings[0].getMessage()
    assert f"asked for {loaded.requested_providers[0]}" in text and f"falling back to {CPU}" in text
    assert models[0].name in text


@cpu_only
def test_auto_falls_back_quietly(models, caplog):
    """``auto`` on a CPU-only build is expected: the fallback is logged at info, not as a warning."""
    with caplog.at_level(logging.INFO, logger="perception.runtime.session"):
        loaded = load_model(models[0], "auto")
    assert loaded.provider == CPU
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"falling back to {CPU}" in caplog.text


@cpu_only
def test_models_endpoint_reports_the_provider_actually_used(models, caplog):
    settings = Settings(host="127.0.0.1", port=0, grpc_enabled=False, seg_model=models[0], det_model=models[1],
                        providers="tensorrt,cuda", trt_precision="fp16")  # fmt: skip
    # serve_in_background builds (and warms up) the pipeline from the settings
    with caplog.at_level(logging.WARNING, logger="perception.runtime.session"), serve_in_background(settings) as svc:
        assert httpx.get(f"{svc.rest_url}/readyz", timeout=30).status_code == 200
        infos = httpx.get(f"{svc.rest_url}/v1/models", timeout=30).json()["models"]
    assert {i["stage"] for i in infos} == {"camera", "lidar"}
    for info in infos:
        assert info["loaded"] is True
        assert info["providers"] == [CPU]
        assert info["requested_providers"] == [TRT_PROVIDER, "CUDAExecutionProvider", CPU]
    assert caplog.text.count(f"falling back to {CPU}") == 2


def test_tensorrt_options_reach_onnxruntime(models, tmp_path, monkeypatch, caplog):
    """With TensorRT in the build, its options go to ONNX Runtime; when the session still ends up on CPU
    (what onnxruntime-gpu does when CUDA cannot start) the provider reported is the one that runs."""
    seen: dict[str, object] = {}
    real_session = ort.InferenceSession

    def recording_session(path, sess_options=None, providers=None):
        seen["providers"] = providers
        return real_session(path, sess_options=sess_options, providers=[CPU])

    monkeypatch.setattr(session_module.ort, "get_available_providers", lambda: [TRT_PROVIDER, CPU])
    monkeypatch.setattr(session_module.ort, "InferenceSession", recording_session)
    options = TensorRTOptions(precision="fp16", cache_dir=tmp_path / "trt", workspace_mb=512)
    with caplog.at_level(logging.WARNING, logger="perception.runtime.session"):
        loaded = load_model(models[1], "tensorrt", tensorrt=options)
    (trt_name, trt_options), (cpu_name, cpu_options) = seen["providers"]  # type: ignore[misc]
    assert (trt_name, cpu_name, cpu_options) == (TRT_PROVIDER, CPU, {})
    assert trt_options == options.provider_options(models[1])
    assert trt_options["trt_fp16_enable"] == "1"
    assert trt_options["trt_engine_cache_path"] == str(tmp_path / "trt" / "fp16")
    assert trt_options["trt_max_workspace_size"] == str(512 * 1024 * 1024)
    assert loaded.provider == CPU
    assert f"asked for {TRT_PROVIDER} but ONNX Runtime runs {CPU}" in caplog.text


def test_tensorrt_options_per_precision(tmp_path):
    plain = TensorRTOptions().provider_options("m.onnx")
    assert plain["trt_fp16_enable"] == "1" and plain["trt_int8_enable"] == "0"
    assert "trt_engine_cache_enable" not in plain  # no cache directory: nothing written anywhere
    fp32 = TensorRTOptions(precision="fp32", cache_dir=tmp_path).provider_options("m.onnx")
    assert fp32["trt_fp16_enable"] == "0"
    assert fp32["trt_engine_cache_enable"] == "1" and (tmp_path / "fp32").is_dir()
    assert fp32["trt_timing_cache_enable"] == "1" and fp32["trt_timing_cache_path"] == str(tmp_path)
    no_timing = TensorRTOptions(cache_dir=tmp_path, timing_cache=False).provider_options("m.onnx")
    assert "trt_timing_cache_enable" not in no_timing
    int8 = TensorRTOptions(precision="int8", cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match=r"calibration table.*perception export trt --precision int8"):
        int8.provider_options("models/squeezedet.onnx")
    table = int8.calibration_table("models/squeezedet.onnx")
    assert table == tmp_path / "int8" / "squeezedet.calibration.flatbuffers"
    table.parent.mkdir(parents=True)
    table.write_bytes(b"table")
    options = int8.provider_options("models/squeezedet.onnx")
    assert options["trt_int8_enable"] == "1" and options["trt_fp16_enable"] == "1"
    assert options["trt_int8_calibration_table_name"] == "squeezedet.calibration.flatbuffers"
    # a QDQ model of `perception quantize` carries its scales: INT8 on, no calibration table, at any precision
    for precision in ("fp16", "int8"):
        qdq = TensorRTOptions(precision=precision, cache_dir=tmp_path).provider_options("models/squeezeseg.int8.onnx")
        assert qdq["trt_int8_enable"] == "1" and qdq["trt_fp16_enable"] == "1"
        assert "trt_int8_calibration_table_name" not in qdq
    for bad in ({"precision": "fp8"}, {"workspace_mb": 0}, {"builder_optimization_level": 6}):
        with pytest.raises(ValueError):
            TensorRTOptions(**bad)  # type: ignore[arg-type]


def test_settings_read_tensorrt_options_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPTION_TRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PERCEPTION_TRT_PRECISION", "int8")
    monkeypatch.setenv("PERCEPTION_TRT_WORKSPACE_MB", "512")
    monkeypatch.setenv("PERCEPTION_WARMUP", "false")
    settings = Settings()
    assert settings.warmup is False
    assert settings.tensorrt_options() == TensorRTOptions(precision="int8", cache_dir=tmp_path / "cache",
                                                          workspace_mb=512)  # fmt: skip
    monkeypatch.setenv("PERCEPTION_TRT_CACHE_DIR", "none")
    assert Settings().trt_cache_dir is None
    monkeypatch.setenv("PERCEPTION_TRT_PRECISION", "fp8")
    with pytest.raises(ValueError, match="trt_precision"):
        Settings()


@cpu_only
def test_engine_build_is_refused_without_tensorrt():
    with pytest.raises(TensorRTUnavailableError, match="not available in this onnxruntime build"):
        require_tensorrt()


# --- warm-up ------------------------------------------------------------------------------------------


def test_warm_up_runs_each_model_on_zeros(models):
    loaded = load_model(models[0], "cpu")
    feeds = zero_feeds(loaded.session)
    assert {k: v.shape for k, v in feeds.items()} == {"range_image": (1, 5, 64, 512), "mask": (1, 1, 64, 512)}
    assert all(v.dtype == np.float32 and not v.any() for v in feeds.values())
    assert warm_up(loaded, runs=2) >= 0
    with Pipeline(models[0], models[1], providers="cpu") as pipeline:
        assert set(pipeline.warm_up()) == {"lidar", "camera"}
        assert pipeline.ready


def test_a_model_that_cannot_run_at_warm_up_makes_its_stage_unavailable(models, monkeypatch):
    pipeline = Pipeline(models[0], models[1], providers="cpu", strict=False)
    try:

        def broken_run(*args, **kwargs):
            raise RuntimeError("CUDA failure 999: unknown error\nmore detail")

        monkeypatch.setattr(pipeline.detector.model.session, "run", broken_run)
        assert set(pipeline.warm_up()) == {"lidar"}
        assert not pipeline.ready and pipeline.detector is None and pipeline.segmenter is not None
        error = pipeline.load_errors["camera"]
        assert "warm-up run on CPUExecutionProvider failed (CUDA failure 999: unknown error)" in error
        camera = next(i for i in pipeline.models() if i.stage == "camera")
        assert camera.loaded is False and "warm-up" in (camera.error or "")
    finally:
        pipeline.close()
    strict = Pipeline(None, models[1], providers="cpu")
    try:
        monkeypatch.setattr(strict.detector.model.session, "run", broken_run)
        with pytest.raises(ModelLoadError, match="warm-up"):
            strict.warm_up()
    finally:
        strict.close()


# --- perception export trt ------------------------------------------------------------------------------


@cpu_only
def test_export_trt_without_tensorrt_is_one_error_line(models, tmp_path):
    out = run_cli("export", "trt", "--cache-dir", str(tmp_path / "trt"), "--seg-model", str(models[0]),
                  "--det-model", str(models[1]))  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the TensorRT execution provider is not available")
    assert not (tmp_path / "trt").exists()


def test_export_trt_refuses_bad_arguments(models, tmp_path):
    for args, message in (
        (["--precision", "fp8"], "--precision must be one of"),
        (["--seg-model", "none", "--det-model", "none"], "nothing to do"),
        (["--seg-model", str(tmp_path / "missing.onnx")], "no such model"),
        (["--precision", "int8", "--seg-model", str(models[0]), "--providers", "cpu"], "needs --calibration-seg"),
        (["--precision", "int8", "--seg-model", "none", "--providers", "cpu"], "needs --calibration-det"),
    ):
        argv = ["export", "trt", "--cache-dir", str(tmp_path / "trt"), "--det-model", str(models[1]), *args]
        out = run_cli(*argv)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr


def kitti_camera_dir(root):
    """Two labelled camera frames in KITTI layout (image_2/, label_2/, ImageSets/val.txt)."""
    car = "Car 0.00 0 -1.57 400.00 180.00 600.00 300.00 1.50 1.60 3.90 1.00 1.50 10.00 -1.57"
    walker = "Pedestrian 0.00 0 0.10 700.00 150.00 740.00 260.00 1.70 0.60 0.80 3.00 1.60 12.00 0.10"
    for i, lines in enumerate(([car], [car, walker])):
        write_image(root / "image_2" / f"00000{i}.png", synthetic_image(seed=i))
        write_label(root / "label_2" / f"00000{i}.txt", [parse_label_line(line) for line in lines])
    (root / "ImageSets").mkdir(parents=True)
    (root / "ImageSets" / "val.txt").write_text("000000\n000001\n")
    return root


def test_export_trt_accuracy_check_runs_end_to_end_on_the_cpu_provider(models, tmp_path):
    """The check command a GPU machine runs, with the candidate on CPU: identical results, zero drop."""
    camera = kitti_camera_dir(tmp_path / "kitti")
    out = run_cli("export", "trt", "--cache-dir", str(tmp_path / "trt"), "--seg-model", str(models[0]),
                  "--det-model", str(models[1]), "--providers", "cpu", "--check-seg", str(SAMPLE_DIR),
                  "--check-det", str(camera), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[0])
    assert "engines" not in report  # engines only on TensorRT
    checks = {c["stage"]: c for c in report["checks"]}
    assert set(checks) == {"lidar", "camera"}
    assert checks["lidar"]["metric"] == "IoU %" and checks["camera"]["metric"] == "AP % (R40, moderate)"
    assert checks["camera"]["frames"] == 2 and checks["lidar"]["frames"] == 1
    for check in checks.values():
        assert check["passed"] is True and check["max_drop_pp"] == 1.0  # the fp16 default
        assert check["reference_provider"] == check["candidate_provider"] == CPU
        assert all(d is None or abs(d) < 1e-9 for d in check["drops_pp"].values())
        assert any(d is not None for d in check["drops_pp"].values())
    assert set(checks["camera"]["reference"]) == {"car", "pedestrian", "cyclist"}


def test_labelled_images_follow_the_split(tmp_path):
    from perception.runtime.trt import labelled_images

    camera = kitti_camera_dir(tmp_path / "kitti")
    (camera / "ImageSets" / "one.txt").write_text("000001\n")
    assert [f for f, _, _ in labelled_images(camera)] == ["000000", "000001"]
    assert [(f, i.name, lab.name) for f, i, lab in labelled_images(camera, "one")] == [
        ("000001", "000001.png", "000001.txt")
    ]
    with pytest.raises(ValueError, match="no split file"):  # the split reader shared by every dataset reader
        list(labelled_images(camera, "test"))
    with pytest.raises(FileNotFoundError, match="needs image_2/ and label_2/"):
        list(labelled_images(tmp_path))


def test_accuracy_check_verdict():
    check = AccuracyCheck("camera", "AP %", CPU, TRT_PROVIDER, "int8", 10,
                          reference={"car": 80.0, "pedestrian": 50.0, "cyclist": None},
                          candidate={"car": 79.5, "pedestrian": 47.5, "cyclist": 12.0}, max_drop_pp=2.0)  # fmt: skip
    assert check.drops == {"car": 0.5, "pedestrian": 2.5, "cyclist": None}
    assert check.worst_drop == 2.5 and not check.passed
    check.max_drop_pp = 2.5
    assert check.passed
    check.candidate["pedestrian"] = 55.0  # a gain is fine
    assert check.worst_drop == 0.5 and check.to_dict()["passed"] is True


def test_int8_calibration_table_from_real_scans(models, tmp_path):
    pytest.importorskip("onnx", reason="INT8 calibration needs onnx (the [train] extra)")
    from perception.runtime.segmenter import Segmenter
    from perception.runtime.trt import calibrate_int8, segmentation_feeds

    options = TensorRTOptions(precision="int8", cache_dir=tmp_path / "trt")
    feeds = segmentation_feeds(Segmenter(models[0], providers="cpu"), SAMPLE_DIR)
    table = calibrate_int8(models[0], feeds, options, max_frames=4)
    assert table == options.calibration_table(models[0]) and table.stat().st_size > 100
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

    parsed = TrtTable.GetRootAsTrtTable(table.read_bytes(), 0)
    ranges = {parsed.Dict(i).Key().decode(): float(parsed.Dict(i).Value()) for i in range(parsed.DictLength())}
    assert "range_image" in ranges and "probs" in ranges
    assert all(np.isfinite(v) and v >= 0 for v in ranges.values())
    assert ranges["probs"] <= 1.0 + 1e-6  # softmax output
    assert list(table.parent.iterdir()) == [table]  # no temporary files left behind
    options.provider_options(models[0])  # the table is where the TensorRT provider will look


def test_export_trt_int8_tables_can_be_made_off_the_vehicle(models, tmp_path):
    """`--providers cpu` with --calibration-seg writes the table (no TensorRT needed); a later int8 run with
    the table already in the cache needs no calibration data."""
    pytest.importorskip("onnx", reason="INT8 calibration needs onnx (the [train] extra)")
    cache = tmp_path / "trt"
    common = ["export", "trt", "--cache-dir", str(cache), "--seg-model", str(models[0]), "--det-model", "none",
              "--precision", "int8", "--providers", "cpu", "--json"]  # fmt: skip
    out = run_cli(*common, "--calibration-seg", str(SAMPLE_DIR), "--calibration-frames", "2")
    assert out.returncode == 0, out.stderr
    table = cache / "int8" / f"{models[0].stem}.calibration.flatbuffers"
    assert json.loads(out.stdout)["calibration_tables"] == [str(table)]
    assert table.is_file()
    again = run_cli(*common, "--check-seg", str(SAMPLE_DIR))
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert "calibration_tables" not in report and report["checks"][0]["max_drop_pp"] == 2.0  # the int8 default


def test_latency_script_measures_with_the_service_settings(models):
    """docker/latency.py, the measurement behind docs/deployment.md's latency table, runs (CPU here)."""
    env = {**os.environ, "PERCEPTION_SEG_MODEL": str(models[0]), "PERCEPTION_DET_MODEL": str(models[1]),
           "PERCEPTION_PROVIDERS": "cpu"}  # fmt: skip
    scan = SAMPLE_DIR / "velodyne" / "000000.bin"
    out = subprocess.run([sys.executable, str(REPO / "docker" / "latency.py"), str(scan), "--runs", "2"], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["providers"] == {"lidar": CPU, "camera": CPU} and report["runs"] == 2
    for stage in ("lidar.inference", "camera.inference", "total"):
        assert report["median_ms"][stage] > 0 and report["p99_ms"][stage] >= report["median_ms"][stage]


def test_export_trt_checks_a_qdq_model_against_its_fp32_original(models, tmp_path):
    import shutil

    original = shutil.copy(models[0], tmp_path / "seg.onnx")
    qdq = shutil.copy(models[0], tmp_path / "seg.int8.onnx")  # stands in for `perception quantize` output
    out = run_cli("export", "trt", "--cache-dir", str(tmp_path / "trt"), "--seg-model", str(qdq), "--det-model",
                  "none", "--providers", "cpu", "--check-seg", str(SAMPLE_DIR), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    check = json.loads(out.stdout)["checks"][0]
    assert check["passed"] and check["stage"] == "lidar"
    assert (check["reference_model"], check["candidate_model"]) == (str(original), str(qdq))
