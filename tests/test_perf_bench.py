"""``perception bench``: the FP32 matmul probe, model FLOPs / GFLOP/s and the INT8 vs FP32 comparison (keys only:
no wall-clock asserts)."""

from __future__ import annotations

import importlib.util
import json
import math
import mmap
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from perception import bench


def test_matmul_probe_reports_the_rate_its_own_timing_implies():
    probe = bench.matmul_probe(size=64, runs=3)
    assert probe["runs"] == 3 and probe["size"] == 64 and probe["blas"]
    assert probe["gflop_per_product"] == pytest.approx(2 * 64**3 / 1e9)
    assert probe["gflops_per_s"] == pytest.approx(2 * 64**3 / (probe["median_ms"] / 1e3) / 1e9)
    with pytest.raises(ValueError, match="size"):
        bench.matmul_probe(size=0)


def test_interleaved_timing_alternates_the_functions_and_rotates_their_order():
    calls = []
    out = bench.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 4, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then rounds a b, b a, ...
    assert out["a"]["runs"] == out["b"]["runs"] == 4


def test_interleaved_timing_pauses_untimed_after_each_call_when_asked(monkeypatch):
    events = []
    monkeypatch.setattr(bench.time, "sleep", lambda s: events.append(("sleep", s)))
    bench.time_interleaved({"a": lambda: events.append("a"), "b": lambda: events.append("b")}, 2, warmup=0,
                           settle_s=0.25)  # fmt: skip
    assert events == ["a", ("sleep", 0.25), "b", ("sleep", 0.25), "b", ("sleep", 0.25), "a", ("sleep", 0.25)]


def test_projection_alone_does_not_run_the_probe():
    out = bench.run_benchmarks(["projection"], repeats=3)
    assert "matmul_probe" not in out and out["benchmarks"]["projection"]["runs"] == 3


def test_seg_bench_reports_flops_probe_fraction_and_int8_speedup(monkeypatch):
    pytest.importorskip("torch", reason="the seg bench exports fresh models with torch ([train] extra)")
    pytest.importorskip("onnx", reason="FLOPs and INT8 need the onnx package ([train] extra)")
    monkeypatch.setattr(bench, "CALIBRATION_FRAMES", 1)
    out = bench.run_benchmarks(["seg"], repeats=3, probe_size=128, torch_eager=False)
    json.dumps(out)  # what --json prints
    probe = out["matmul_probe"]
    assert probe["size"] == 128 and probe["gflops_per_s"] > 0
    seg = out["benchmarks"]["seg"]
    assert seg["matmul_probe_gflops_per_s"] == probe["gflops_per_s"]
    assert seg["ort_without_crf_gflop"] == pytest.approx(5.811208192)  # the hand count of tests/test_perf_flops.py
    assert 5.9 < seg["ort_gflop"] < 6.2 and seg["int8_gflop"] == seg["ort_gflop"]  # + CRF; INT8 does the same work
    for prefix, ms in (("ort", seg["median_ms"]), ("ort_without_crf", seg["ort_without_crf_median_ms"])):
        rate = seg[f"{prefix}_gflop"] / (ms / 1e3)
        assert seg[f"{prefix}_achieved_gflops_per_s"] == pytest.approx(rate)
        assert seg[f"{prefix}_vs_matmul_probe_speedup"] == pytest.approx(rate / probe["gflops_per_s"])
    assert seg["int8_vs_fp32_speedup"] == pytest.approx(seg["int8_fp32_median_ms"] / seg["int8_median_ms"])
    assert seg["crf_added_to_network"] == pytest.approx(seg["median_ms"] / seg["ort_without_crf_median_ms"] - 1)
    assert "quantised now" in seg["int8_model"] and "1 analytic street scans" in seg["int8_model"]
    assert 0.5 < seg["int8_argmax_agreement"] <= 1.0
    ratios = [k for k in seg if "_vs_" in k]  # every ratio key says speedup
    assert {"ort_vs_matmul_probe_speedup", "int8_vs_fp32_speedup", "int8_vs_matmul_probe_speedup"} <= set(ratios)
    assert all(k.endswith("_speedup") for k in ratios)
    assert all(math.isfinite(seg[k]) and seg[k] > 0 for k in ratios)
    for block in ("squeezenext", "shift"):  # lighter encoder blocks, timed beside the Fire model
        assert seg[f"{block}_gflop"] < 0.75 * seg["ort_gflop"]
        fire_ms = seg["fire_alongside_median_ms"]  # the Fire model in the same alternating rounds
        assert seg[f"{block}_vs_fire_speedup"] == pytest.approx(fire_ms / seg[f"{block}_median_ms"])
        assert f"{block} blocks" in seg["notes"]
    assert "torch_eager_with_crf_median_ms" not in seg and "torch eager not timed" in seg["notes"]
    assert "GFLOP/s" in seg["notes"] and "% of matmul probe" in seg["notes"] and "INT8" in seg["notes"]


def test_an_existing_int8_file_is_compared_as_it_is(tmp_path):
    """The shipped-model path of the bench: an INT8 file beside the model is timed and compared, not remade."""
    onnx = pytest.importorskip("onnx", reason="quantisation needs the onnx package ([train] extra)")
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from perception.runtime.quantize import int8_model_path, quantize_model

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Transpose", ["y"], ["class_probs"], perm=[0, 2, 3, 1])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("class_probs", TensorProto.FLOAT, [1, 16, 16, 8])],
        [weights],
    )  # fmt: skip
    model = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    feeds = {"image": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)}
    quantize_model(model, int8_model_path(model), [feeds], max_frames=1, write_card=False)
    before = int8_model_path(model).stat().st_mtime_ns
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ctx = bench.BenchContext(matmul_gflops_per_s=10.0)
    fields = bench._int8_comparison("det", model, session, feeds, "class_probs", 3, ctx, tmp_path,
                                    existing=int8_model_path(model))  # fmt: skip
    assert int8_model_path(model).stat().st_mtime_ns == before
    assert fields["int8_model"] == str(int8_model_path(model))
    assert fields["int8_vs_fp32_speedup"] == pytest.approx(fields["int8_fp32_median_ms"] / fields["int8_median_ms"])
    assert fields["int8_gflop"] == pytest.approx(2 * 8 * 16 * 16 * 3 * 9 / 1e9)
    assert fields["int8_vs_matmul_probe_speedup"] == pytest.approx(fields["int8_achieved_gflops_per_s"] / 10.0)
    assert 0.8 < fields["int8_argmax_agreement"] <= 1.0


def test_lighter_squeezedet_backbones_are_timed_beside_the_fire_one(tmp_path):
    pytest.importorskip("torch", reason="the lighter variants are exported with torch ([train] extra)")
    pytest.importorskip("onnx", reason="FLOPs need the onnx package ([train] extra)")
    import onnxruntime as ort

    from perception.training.export import build_detection_model, export_detection_onnx

    fire = export_detection_onnx(build_detection_model(seed=0), tmp_path / "fire.onnx")
    session = ort.InferenceSession(str(fire), providers=["CPUExecutionProvider"])
    ctx = bench.BenchContext(matmul_gflops_per_s=10.0)
    fire_gflop = bench.flop_fields("ort", fire, 1.0, ctx)["ort_gflop"]
    fields = bench._lighter_variants("det", tmp_path, {"image": bench._random_frame(0)}, session, "class_probs", 3,
                                     ctx)  # fmt: skip
    for block in bench.LIGHTER_BLOCKS:
        assert fields[f"{block}_gflop"] < fire_gflop
        assert fields[f"{block}_vs_fire_speedup"] == pytest.approx(
            fields["fire_alongside_median_ms"] / fields[f"{block}_median_ms"]
        )
        assert f"{block} blocks" in bench._lighter_note(fields)


def test_ort_settings_compares_each_choice_with_the_projects_options_on_both_shipped_models():
    from perception.service.settings import DEFAULT_DET_MODEL, DEFAULT_SEG_MODEL

    if not (DEFAULT_SEG_MODEL.is_file() and DEFAULT_DET_MODEL.is_file()):
        pytest.skip("needs the shipped models (run from the repository root)")
    res = bench.run_benchmarks(["ort-settings"], repeats=3)["benchmarks"]["ort-settings"]
    json.dumps(res)
    assert res["median_ms"] == res["seg_default_median_ms"] and res["runs"] == 3
    for task in ("seg", "det"):
        for key, note in bench.ORT_SETTING_NOTES.items():
            ratio = res[f"{task}_default_median_ms"] / res[f"{task}_{key}_median_ms"]
            assert res[f"{task}_{key}_vs_default_speedup"] == pytest.approx(ratio)
            assert f"{note} {ratio:.2f}x" in res["notes"]
    timed = [key for key in bench.ORT_SETTING_NOTES if f"seg_{key}_median_ms" in res]
    assert {"opt_basic", "threads_1", "no_spinning", "no_arena", "io_binding"} <= set(timed)


def test_each_ort_setting_changes_one_thing_of_the_projects_session_options():
    import onnxruntime as ort

    from perception.runtime.session import session_options

    opts = bench._ort_setting_options()
    default = opts.pop("default")
    level = ort.GraphOptimizationLevel
    assert default.graph_optimization_level == level.ORT_ENABLE_ALL and default.enable_cpu_mem_arena
    assert default.get_session_config_entry("session.force_spinning_stop") == "1"  # spins only within a run
    assert default.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL and default.intra_op_num_threads == 0
    assert opts["opt_basic"].graph_optimization_level == level.ORT_ENABLE_BASIC
    assert opts["opt_disabled"].graph_optimization_level == level.ORT_DISABLE_ALL
    assert opts["threads_1"].intra_op_num_threads == 1
    assert opts["no_arena"].enable_cpu_mem_arena is False
    assert opts["parallel_inter_op"].execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert set(opts) <= set(bench.ORT_SETTING_NOTES)  # every setting has its note
    assert opts["no_spinning"].get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(2).intra_op_num_threads == 2
    for key in ("session.intra_op.allow_spinning", "session.force_spinning_stop"):  # onnxruntime's default
        with pytest.raises(Exception, match="spinning"):
            session_options(spinning="on").get_session_config_entry(key)
    with pytest.raises(ValueError, match="spinning must be one of"):
        session_options(spinning="sometimes")  # type: ignore[arg-type]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts page faults by getrusage on Linux")
def test_the_page_fault_counter_sees_fresh_memory_being_touched():
    # a fresh anonymous mapping (malloc could hand out memory this process already holds), every page touched:
    # 16384 pages of 4 KiB, or at least 32 huge pages
    fresh = mmap.mmap(-1, 64 << 20)
    before = bench._minor_page_faults()
    np.frombuffer(fresh, dtype=np.uint8)[::4096] = 1
    assert bench._minor_page_faults() - before >= 32
    fresh.close()


def test_lidar_pipeline_reports_its_stages_and_the_share_around_the_network():
    res = bench.run_benchmarks(["lidar-pipeline"], repeats=3)["benchmarks"]["lidar-pipeline"]
    json.dumps(res)
    stages = [res[f"{k}_median_ms"] for k in ("projection", "inference", "unprojection", "clustering")]
    assert all(ms > 0 for ms in stages) and res["runs"] == 3
    assert 0 < res["around_network_share"] < 1 and res["instances"] > 0
    assert res["minor_page_faults_per_frame"] >= 0 and "minor page faults per frame" in res["notes"]
    if bench.SAMPLE_MESH_SCAN.is_file():  # the committed mesh-world frame, labelled by the shipped model
        assert str(bench.SAMPLE_MESH_SCAN) in res["notes"] and "shipped model" in res["notes"]


def test_the_360_bench_exports_the_shipped_weights_for_the_full_sweep_and_compares_int8(monkeypatch):
    pytest.importorskip("torch", reason="exporting for the 64 x 2048 sweep needs torch ([train] extra)")
    pytest.importorskip("onnx", reason="INT8 needs the onnx package ([train] extra)")
    monkeypatch.setattr(bench, "CALIBRATION_FRAMES", 1)
    res = bench.run_benchmarks(["lidar-360"], repeats=3)["benchmarks"]["lidar-360"]
    json.dumps(res)
    assert "64 x 2048" in res["notes"] and "10 Hz" in res["notes"]
    assert res["int8_vs_fp32_speedup"] == pytest.approx(res["median_ms"] / res["int8_median_ms"])
    assert 0.5 < res["int8_label_agreement"] <= 1.0
    assert res["meets_10hz_p99"] == (min(res["p99_ms"], res["int8_p99_ms"]) < 100.0)
    assert res["inference_median_ms"] > 0 and res["int8_inference_median_ms"] > 0


def _compare_script() -> tuple[Any, Path]:
    repo = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("compares git revisions: needs git and a checkout")
    spec = importlib.util.spec_from_file_location("compare_lidar_path", repo / "benchmarks" / "compare_lidar_path.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, repo


def test_compare_lidar_path_runs_a_revision_beside_this_checkout(capsys):
    script, repo = _compare_script()
    report = script.main(["--against", "HEAD", "--repeats", "2", "--json"])
    assert json.loads(capsys.readouterr().out) == report
    assert report["against"] == "HEAD"
    for name in ("this", "reference"):
        stages = [report[name][f"{k}_median_ms"] for k in ("projection", "inference", "unprojection", "clustering")]
        assert all(ms > 0 for ms in stages) and 0 < report[name]["around_network_share"] < 1
    assert report["around_network_speedup"] > 0
    changed = subprocess.run(["git", "status", "--porcelain", "perception"], cwd=repo, capture_output=True, text=True)
    if changed.stdout == "":  # the committed package against itself: the same labels, scores and instances
        assert report["identical"] == {"labels": True, "scores": True, "instances": True}


def test_the_reference_package_runs_its_own_code(tmp_path):
    script, _ = _compare_script()
    package = script.extract_revision("HEAD", tmp_path)
    assert (package / "lidar" / "clustering.py").is_file()
    assert not any(script._imports_of_perception(p.read_text()) for p in package.rglob("*.py"))
    imports = "import perception.bench\nfrom perception import cli\nfrom . import x\nimport perceptionist"
    assert script._imports_of_perception(imports) == [1, 2]
    with script.reference_package("HEAD") as ref:
        segmenter_module = importlib.import_module("perception_ref.runtime.segmenter")
        assert ref.__name__ == "perception_ref"
        assert segmenter_module.spherical_project.__module__ == "perception_ref.lidar.projection"
        loaded = [m for name, m in sys.modules.items() if name.startswith("perception_ref.")]
        assert loaded and all(Path(m.__file__).is_relative_to(Path(ref.__file__).parent) for m in loaded if m.__file__)
    assert "perception_ref" not in sys.modules


def test_compare_lidar_path_refuses_an_unknown_revision(capsys):
    script, _ = _compare_script()
    with pytest.raises(SystemExit) as exc:
        script.main(["--against", "no-such-revision-xyz", "--repeats", "1"])
    assert exc.value.code == 2 and "no-such-revision-xyz" in capsys.readouterr().err


def test_compare_lidar_path_refuses_bad_files_in_one_line(tmp_path, capsys):
    script, _ = _compare_script()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"abc")
    for args, expected in ((["--scan", str(bad)], "whole number of 16-byte points"),
                           (["--model", str(bad)], "not a loadable ONNX model")):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            script.main(["--against", "HEAD", "--repeats", "1", *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error: ") and expected in err and err.count("\n") == 1
