"""Benchmarks behind ``perception bench``: warm-up, repeated runs, median / p90 / p99 in ms.

The model benchmarks (``seg``, ``det``) also report each model's FLOPs (:mod:`perception.runtime.flops`,
2 x multiply-accumulates of Conv/ConvTranspose/MatMul/Gemm), the GFLOP/s it achieved at its median time,
and that as a fraction of the machine's FP32 matrix-multiply throughput, measured in the same run by
:func:`matmul_probe` (numpy's BLAS on square float32 matrices). The INT8 comparison quantises the model
under test on the fly (:mod:`perception.runtime.quantize`, calibrated on a few synthetic frames) unless
an INT8 file already sits beside a shipped model. Keys holding ratios end in ``_speedup``: ``a_vs_b_speedup``
is time of b / time of a (or rate of a / rate of b), so above 1 means a is faster.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MATMUL_PROBE_SIZE = 2048
"""Side of the square float32 matrices of the machine probe (2 x 2048^3 = 17.2 GFLOP per product)."""
MATMUL_PROBE_RUNS = 5
CALIBRATION_FRAMES = 8
"""Synthetic frames the on-the-fly INT8 quantisation of the bench calibrates on."""


def _stats(times_s: list[float]) -> dict[str, float]:
    ms = np.asarray(times_s) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "runs": len(ms),
    }


def time_function(func: Callable[[], object], repeats: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        func()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return _stats(times)


def blas_name() -> str:
    """The BLAS numpy calls for float32 matmul (e.g. ``scipy-openblas 0.3.31``), or ``unknown``."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # type: ignore[func-returns-value]
        return f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()
    except Exception:  # the config layout differs between numpy versions
        return "unknown"


def matmul_probe(size: int = MATMUL_PROBE_SIZE, runs: int = MATMUL_PROBE_RUNS) -> dict[str, Any]:
    """The machine's FP32 matrix-multiply throughput: median GFLOP/s of ``a @ b``, both float32 (size, size).

    One warm-up product, then ``runs`` timed ones; FLOPs per product 2 * size^3. numpy's BLAS uses all
    cores it is allowed (as ONNX Runtime does by default), so this is the ceiling the models are held to.
    """
    if size < 1 or runs < 1:
        raise ValueError(f"matmul probe needs size >= 1 and runs >= 1, got {size}, {runs}")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    res = time_function(lambda: a @ b, runs, warmup=1)
    flops = 2.0 * size**3
    res.update(
        {
            "size": size,
            "gflop_per_product": flops / 1e9,
            "gflops_per_s": flops / (res["median_ms"] / 1e3) / 1e9,
            "blas": blas_name(),
        }
    )
    return res


@dataclass
class BenchContext:
    """What one ``run_benchmarks`` call shares: the FP32 matmul probe (GFLOP/s, or None when not measured),
    and whether to time torch eager as well (slow: seconds per run on a small CPU)."""

    matmul_gflops_per_s: float | None = None
    torch_eager: bool = True


@functools.lru_cache(maxsize=16)
def _cached_flop_count(model_path: str, mtime_ns: int) -> Any:
    from perception.runtime.flops import FlopCountError, count_flops

    try:
        return count_flops(model_path)
    except FlopCountError:
        return None


def _flop_count(model_path: Path) -> Any:
    """FLOPs of an ONNX model at batch 1 (a FlopCount), or None without the onnx package."""
    return _cached_flop_count(str(model_path), model_path.stat().st_mtime_ns)


def flop_fields(prefix: str, model_path: Path, median_ms: float, ctx: BenchContext) -> dict[str, Any]:
    """``{prefix}_gflop`` (of ``model_path``), ``{prefix}_achieved_gflops_per_s`` at ``median_ms`` and
    ``{prefix}_vs_matmul_probe_speedup`` (achieved / probe GFLOP/s: the fraction of the machine's FP32
    matmul rate the model reaches)."""
    count = _flop_count(model_path)
    if count is None:
        return {}
    achieved = count.total / (median_ms / 1e3) / 1e9
    out: dict[str, Any] = {f"{prefix}_gflop": count.gflops, f"{prefix}_achieved_gflops_per_s": achieved}
    if ctx.matmul_gflops_per_s:
        out[f"{prefix}_vs_matmul_probe_speedup"] = achieved / ctx.matmul_gflops_per_s
    return out


def _flop_note(fields: dict[str, Any], prefix: str, label: str = "") -> str:
    if f"{prefix}_gflop" not in fields:
        return ""
    rate = fields[f"{prefix}_achieved_gflops_per_s"]
    note = f"; {label + ' ' if label else ''}{fields[f'{prefix}_gflop']:.2f} GFLOP at {rate:.1f} GFLOP/s"
    ratio = fields.get(f"{prefix}_vs_matmul_probe_speedup")
    return note + (f" ({ratio * 100:.0f}% of matmul probe)" if ratio is not None else "")


def _int8_fields(
    fp32_ms: float,
    fp32_path: Path,
    run_int8: Callable[[], object],
    repeats: int,
    source: str,
    ctx: BenchContext,
) -> dict[str, Any]:
    """Time the INT8 model; ``int8_median_ms``, ``int8_vs_fp32_speedup`` (FP32 ms / INT8 ms) and its FLOP rate.

    The INT8 model does the FP32 model's work, so its rate is the FP32 model's FLOPs over the INT8 time (an
    effective GFLOP/s, integer operations included); counting the QDQ graph itself gives the same up to
    duplicate nodes that ONNX Runtime's pre-processing merges.
    """
    timed = time_function(run_int8, repeats)
    out: dict[str, Any] = {
        "int8_median_ms": timed["median_ms"],
        "int8_p90_ms": timed["p90_ms"],
        "int8_vs_fp32_speedup": fp32_ms / timed["median_ms"],
        "int8_model": source,
    }
    out.update(flop_fields("int8", fp32_path, timed["median_ms"], ctx))
    return out


def _can_quantize() -> str | None:
    """None when on-the-fly INT8 quantisation can run here, else why not."""
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization  # noqa: F401
    except ImportError as exc:
        return f"INT8 skipped: quantisation needs the onnx package ({exc.name} missing)"
    return None


def bench_projection(repeats: int, ctx: BenchContext | None = None) -> dict[str, object]:
    """Project a 120k-point HDL-64E 360 deg scan (ray cast street scene) onto both HDL-64E layouts."""
    from perception.lidar.projection import spherical_project
    from perception.lidar.sensors import SENSORS
    from perception.sim.analytic import cast_scan, street_scene

    full = SENSORS["hdl64e-360"]
    scan = cast_scan(full, street_scene(0), seed=0, dropout=0.0).points
    res = time_function(lambda: spherical_project(scan, full), repeats)
    front = time_function(lambda: spherical_project(scan, SENSORS["kitti-front"]), repeats)
    res["notes"] = f"{len(scan)} points -> 64 x 2048"
    res["front_view_median_ms"] = front["median_ms"]
    res["points"] = len(scan)
    return res


def _sample_range_image() -> tuple[np.ndarray, np.ndarray]:
    from perception.lidar.projection import spherical_project
    from perception.lidar.sensors import SENSORS
    from perception.sim.analytic import cast_scan, street_scene

    scan = cast_scan(SENSORS["hdl64e-360"], street_scene(0), seed=0).points
    proj = spherical_project(scan, SENSORS["kitti-front"])
    return proj.image[None], proj.mask[None, None].astype(np.float32)


def _analytic_seg_feeds(sensor: Any, seeds: range) -> list[dict[str, np.ndarray]]:
    """SqueezeSeg inputs of analytic street scans (one per seed), projected as the Segmenter projects them."""
    from perception.lidar.projection import spherical_project, validate_points
    from perception.lidar.sensors import SENSORS
    from perception.sim.analytic import cast_scan, street_scene

    feeds = []
    for seed in seeds:
        scan = cast_scan(SENSORS["hdl64e-360"], street_scene(seed), seed=seed)
        proj = spherical_project(validate_points(scan.points), sensor)
        feeds.append({"range_image": proj.image[None], "mask": proj.mask[None, None].astype(np.float32)})
    return feeds


def _int8_comparison(
    task: str,
    model_path: Path,
    fp32_session: Any,
    feeds: dict[str, np.ndarray],
    output: str,
    fp32_ms: float,
    repeats: int,
    ctx: BenchContext,
    tmp: Path,
    existing: Path | None = None,
) -> dict[str, Any]:
    """INT8 vs FP32 on ONNX Runtime (CPU): an existing INT8 file, or one quantised now from ``model_path``.

    Adds ``int8_argmax_agreement``: the fraction of positions (valid pixels for seg, anchors for det) where
    the INT8 model picks the same class as the FP32 one on the bench frame (not a calibration frame).
    """
    import onnxruntime as ort

    from perception.runtime.quantize import argmax_agreement, int8_model_path, quantize_model

    if existing is not None and existing.is_file():
        int8_path, source = existing, str(existing)
    else:
        reason = _can_quantize()
        if reason is not None:
            return {"int8_note": reason}
        seeds = range(1, 1 + CALIBRATION_FRAMES)
        if task == "seg":
            from perception.lidar.sensors import SENSORS

            calibration = _analytic_seg_feeds(SENSORS["kitti-front"], seeds)
            data = f"{len(calibration)} analytic street scans (seeds 1..{len(calibration)})"
        else:
            calibration = [{"image": _random_frame(seed)} for seed in seeds]
            data = f"{len(calibration)} random frames (speed only)"
        int8_path = int8_model_path(tmp / model_path.name)
        quantize_model(model_path, int8_path, calibration, max_frames=len(calibration), task=task, data=data,
                       write_card=False)  # fmt: skip
        source = f"quantised now from the model under test, calibrated on {data}"
    session = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    out = _int8_fields(fp32_ms, model_path, lambda: session.run([output], feeds), repeats, source, ctx)
    reference = fp32_session.run([output], feeds)[0]
    candidate = session.run([output], feeds)[0]
    if task == "seg":
        out["int8_argmax_agreement"] = argmax_agreement(reference, candidate, axis=1, where=feeds["mask"][:, 0] > 0)
    else:
        out["int8_argmax_agreement"] = argmax_agreement(reference, candidate, axis=-1)
    return out


def _int8_note(fields: dict[str, Any]) -> str:
    if "int8_vs_fp32_speedup" not in fields:
        return f"; {fields['int8_note']}" if "int8_note" in fields else ""
    return (
        f"; INT8 {fields['int8_median_ms']:.1f} ms ({fields['int8_vs_fp32_speedup']:.2f}x FP32, "
        f"argmax agreement {fields['int8_argmax_agreement'] * 100:.1f}%)"
    )


def bench_seg(repeats: int, ctx: BenchContext | None = None) -> dict[str, object]:
    """SqueezeSeg forward at 64 x 512, batch 1: ONNX Runtime (CPU) with and without the CRF, torch eager,
    FLOPs and GFLOP/s, and INT8 vs FP32 (CRF kept FP32, see :mod:`perception.runtime.quantize`).

    Weights are freshly initialised (speed does not depend on them); without torch installed, only the
    shipped model in models/ is timed (and its INT8 sibling, when present).
    """
    import tempfile

    import onnxruntime as ort

    from perception.runtime.quantize import int8_model_path

    ctx = ctx or BenchContext()
    image, mask = _sample_range_image()
    feeds = {"range_image": image, "mask": mask}
    probe = {"matmul_probe_gflops_per_s": ctx.matmul_gflops_per_s} if ctx.matmul_gflops_per_s else {}
    try:
        import torch

        from perception.lidar.sensors import SENSORS
        from perception.training.export import build_segmentation_model, export_segmentation_onnx
    except ImportError:
        shipped = Path("models/squeezeseg_kitti-front.onnx")
        if not shipped.is_file():
            return {"median_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "runs": 0,
                    "notes": "skipped: needs torch ([train]) or a shipped model"}  # fmt: skip
        session = ort.InferenceSession(str(shipped), providers=["CPUExecutionProvider"])
        res: dict[str, Any] = dict(time_function(lambda: session.run(["logits"], feeds), repeats))
        res.update(probe)
        res.update(flop_fields("ort", shipped, res["median_ms"], ctx))
        with tempfile.TemporaryDirectory() as tmp:
            res.update(_int8_comparison("seg", shipped, session, feeds, "logits", res["median_ms"], repeats, ctx,
                                        Path(tmp), existing=int8_model_path(shipped)))  # fmt: skip
        res["notes"] = f"shipped model, {session.get_providers()[0]}" + _flop_note(res, "ort") + _int8_note(res)
        return res

    results: dict[str, dict[str, float]] = {}
    torch_models = {}
    flops: dict[str, Any] = {}
    int8: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for crf in (True, False):
            model = build_segmentation_model(crf=crf, seed=0)
            path = export_segmentation_onnx(model, Path(tmp) / f"seg_{crf}.onnx", SENSORS["kitti-front"])
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            timed = time_function(lambda s=session: s.run(["logits"], feeds), repeats)
            results[f"ort_crf={crf}"] = timed
            torch_models[crf] = model
            flops.update(flop_fields("ort" if crf else "ort_without_crf", path, timed["median_ms"], ctx))
            if crf:
                int8 = _int8_comparison("seg", path, session, feeds, "logits", timed["median_ms"], repeats, ctx,
                                        Path(tmp))  # fmt: skip
    main: dict[str, Any] = dict(results["ort_crf=True"])
    ort_crf, ort_plain = main["median_ms"], results["ort_crf=False"]["median_ms"]
    main.update({"ort_without_crf_median_ms": ort_plain, "crf_share_of_ort_time": (ort_crf - ort_plain) / ort_crf})
    eager_note = "torch eager not timed"
    if ctx.torch_eager:
        t_image, t_mask = torch.from_numpy(image), torch.from_numpy(mask)
        with torch.inference_mode():
            for crf, model in torch_models.items():
                results[f"torch_crf={crf}"] = time_function(
                    lambda m=model: m(t_image, t_mask), max(3, repeats // 5), warmup=2
                )
        eager_crf, eager_plain = results["torch_crf=True"]["median_ms"], results["torch_crf=False"]["median_ms"]
        main.update(
            {
                "torch_eager_with_crf_median_ms": eager_crf,
                "torch_eager_without_crf_median_ms": eager_plain,
                "ort_vs_torch_eager_speedup": eager_crf / ort_crf,
                "ort_vs_torch_eager_without_crf_speedup": eager_plain / ort_plain,
            }
        )
        eager_note = f"torch eager {eager_crf:.1f} ms (+CRF)"
    main.update({**probe, **flops, **int8})
    main["notes"] = (
        f"ORT CPU +CRF; without CRF {ort_plain:.1f} ms; {eager_note}"
        + _flop_note(main, "ort", "+CRF")
        + _flop_note(main, "ort_without_crf", "without CRF")
        + _int8_note(main)
    )
    return main


def bench_clustering(repeats: int, ctx: BenchContext | None = None) -> dict[str, object]:
    """DBSCAN of a labelled 360 deg HDL-64E scan (ray cast street scene): range-image fast path vs sklearn."""
    from perception.lidar.clustering import (
        DEFAULT_CLUSTER_PARAMS,
        cluster_instances,
        range_image_dbscan,
        sklearn_dbscan,
    )
    from perception.lidar.projection import spherical_project
    from perception.lidar.sensors import SENSORS
    from perception.sim.analytic import cast_scan, street_scene

    full = SENSORS["hdl64e-360"]
    scan = cast_scan(full, street_scene(0), seed=0)
    proj = spherical_project(scan.points, full)
    per_class = []
    for cls, params in DEFAULT_CLUSTER_PARAMS.items():
        sel = (scan.labels == cls) & proj.in_view
        per_class.append((scan.points[sel, :3].astype(np.float64), proj.pixel_of_point[sel], params))

    def fast() -> None:
        for xyz, pixels, p in per_class:
            range_image_dbscan(xyz, pixels, proj.mask.shape, p.eps_m, p.min_points, p.window)

    def reference() -> None:
        for xyz, _, p in per_class:
            sklearn_dbscan(xyz, p.eps_m, p.min_points)

    res: dict[str, object] = dict(time_function(fast, repeats))
    instances = time_function(lambda: cluster_instances(scan.points, scan.labels, proj), repeats)
    res["points"] = len(scan.points)
    res["foreground_points"] = int(sum(len(xyz) for xyz, _, _ in per_class))
    res["instances_median_ms"] = instances["median_ms"]
    try:
        ref = time_function(reference, max(3, min(repeats, 10)), warmup=1)
    except ImportError:
        res["notes"] = "range-image DBSCAN only (install scikit-learn for the reference timing)"
        return res
    res["sklearn_median_ms"] = ref["median_ms"]
    res["speedup_vs_sklearn"] = ref["median_ms"] / float(res["median_ms"])  # type: ignore[arg-type]
    res["notes"] = (
        f"{res['foreground_points']} fg of {len(scan.points)} pts; sklearn {ref['median_ms']:.1f} ms "
        f"({res['speedup_vs_sklearn']:.1f}x); with boxes {instances['median_ms']:.1f} ms"
    )
    return res


def bench_lidar_pipeline(repeats: int, ctx: BenchContext | None = None) -> dict[str, object]:
    """Scan -> instances end to end: projection, SqueezeSeg + CRF (ONNX Runtime, CPU), labels back, clustering."""
    import tempfile
    from pathlib import Path

    from perception.lidar.clustering import cluster_instances
    from perception.lidar.sensors import SENSORS
    from perception.runtime.segmenter import Segmenter
    from perception.sim.analytic import cast_scan, street_scene

    scan = cast_scan(SENSORS["hdl64e-360"], street_scene(0), seed=0)
    shipped = Path("models/squeezeseg_kitti-front.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        if shipped.is_file():
            model_path, note = shipped, "shipped model"
        else:
            try:
                from perception.training.export import build_segmentation_model, export_segmentation_onnx
            except ImportError:
                return {"median_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "runs": 0,
                        "notes": "skipped: needs torch ([train]) or a shipped model"}  # fmt: skip
            model_path = export_segmentation_onnx(
                build_segmentation_model(seed=0), Path(tmp) / "seg.onnx", SENSORS["kitti-front"]
            )
            note = "fresh (untrained) weights"
        segmenter = Segmenter(model_path, providers="cpu")
        stages: dict[str, list[float]] = {}

        def run() -> None:
            result = segmenter.segment(scan.points)
            t0 = time.perf_counter()
            cluster_instances(scan.points, result.labels, result.projection, scores=result.scores)
            for key, value in {**result.timings_ms, "clustering": (time.perf_counter() - t0) * 1e3}.items():
                stages.setdefault(key, []).append(value)

        res: dict[str, object] = dict(time_function(run, repeats))
    for key, values in stages.items():
        res[f"{key}_median_ms"] = float(np.median(values))
    res["notes"] = f"{len(scan.points)} pts, kitti-front, {note}, " + ", ".join(
        f"{k} {np.median(v):.1f}" for k, v in stages.items()
    )
    return res


def _random_frame(seed: int) -> np.ndarray:
    """A (1, 3, 384, 1248) float32 frame of uniform noise in [0, 255]: SqueezeDet's input, speed only."""
    return (np.random.default_rng(seed).random((1, 3, 384, 1248)) * 255).astype(np.float32)


def bench_det(repeats: int, ctx: BenchContext | None = None) -> dict[str, object]:
    """SqueezeDet at 1248 x 384, batch 1: ONNX Runtime (CPU) vs torch eager, decode + NMS on its output,
    FLOPs and GFLOP/s, and INT8 vs FP32 (calibrated on random frames: a speed comparison)."""
    import tempfile

    import onnxruntime as ort

    from perception.camera.anchors import squeezedet_anchors
    from perception.camera.boxes import postprocess_detections

    ctx = ctx or BenchContext()
    image = _random_frame(0)
    anchors = squeezedet_anchors()
    try:
        import torch

        from perception.training.export import build_detection_model, export_detection_onnx
    except ImportError:
        return {"median_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "runs": 0,
                "notes": "skipped: needs torch ([train])"}  # fmt: skip
    model = build_detection_model("squeezedet", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_detection_onnx(model, Path(tmp) / "det.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        res: dict[str, Any] = dict(time_function(lambda: session.run(None, {"image": image}), repeats))
        probs, conf, deltas = session.run(None, {"image": image})
        res.update(flop_fields("ort", path, res["median_ms"], ctx))
        res.update(_int8_comparison("det", path, session, {"image": image}, "class_probs", res["median_ms"], repeats,
                                    ctx, Path(tmp)))  # fmt: skip
    eager_note = "torch eager not timed"
    if ctx.torch_eager:
        with torch.inference_mode():
            eager = time_function(lambda: model(torch.from_numpy(image)), max(3, repeats // 5), warmup=2)
        res["torch_eager_median_ms"] = eager["median_ms"]
        res["ort_vs_torch_eager_speedup"] = eager["median_ms"] / float(res["median_ms"])
        eager_note = f"torch eager {eager['median_ms']:.1f} ms"
    post = time_function(
        lambda: postprocess_detections(probs[0], conf[0], deltas[0], anchors, original_size=(1242, 375)), repeats
    )
    if ctx.matmul_gflops_per_s:
        res["matmul_probe_gflops_per_s"] = ctx.matmul_gflops_per_s
    res["decode_nms_median_ms"] = post["median_ms"]
    res["notes"] = (
        f"ORT CPU; {eager_note}; decode+NMS {post['median_ms']:.1f} ms" + _flop_note(res, "ort") + _int8_note(res)
    )
    return res


BENCHMARKS: dict[str, Callable[[int, BenchContext], dict[str, object]]] = {
    "det": bench_det,
    "projection": bench_projection,
    "seg": bench_seg,
    "cluster": bench_clustering,
    "lidar-pipeline": bench_lidar_pipeline,
}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}"


NEEDS_MATMUL_PROBE = ("seg", "det")


def run_benchmarks(
    names: list[str], repeats: int, probe_size: int = MATMUL_PROBE_SIZE, torch_eager: bool = True
) -> dict[str, object]:
    """Run the named benchmarks; the FP32 matmul probe (``probe_size`` square) runs first when a model
    benchmark is among them. ``torch_eager=False`` skips the (slow) torch eager comparisons."""
    ctx = BenchContext(torch_eager=torch_eager)
    out: dict[str, object] = {"machine": machine_description()}
    if any(name in NEEDS_MATMUL_PROBE for name in names):
        probe = matmul_probe(probe_size)
        ctx.matmul_gflops_per_s = probe["gflops_per_s"]
        out["matmul_probe"] = probe
    out["benchmarks"] = {name: BENCHMARKS[name](repeats, ctx) for name in names}
    return out
