"""Benchmarks behind ``perception bench``: warm-up, repeated runs, median / p90 / p99 in ms."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import numpy as np


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


def bench_projection(repeats: int) -> dict[str, object]:
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


def bench_seg(repeats: int) -> dict[str, object]:
    """SqueezeSeg forward at 64 x 512, batch 1: ONNX Runtime (CPU) with and without the CRF, and torch eager.

    Weights are freshly initialised (speed does not depend on them); without torch installed, only the
    shipped model in models/ is timed.
    """
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    image, mask = _sample_range_image()
    feeds = {"range_image": image, "mask": mask}
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
        res = time_function(lambda: session.run(["logits"], feeds), repeats)
        res["notes"] = f"shipped model, {session.get_providers()[0]}"
        return res

    results: dict[str, dict[str, float]] = {}
    torch_models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for crf in (True, False):
            model = build_segmentation_model(crf=crf, seed=0)
            path = export_segmentation_onnx(model, Path(tmp) / f"seg_{crf}.onnx", SENSORS["kitti-front"])
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            results[f"ort_crf={crf}"] = time_function(lambda s=session: s.run(["logits"], feeds), repeats)
            torch_models[crf] = model
    t_image, t_mask = torch.from_numpy(image), torch.from_numpy(mask)
    with torch.inference_mode():
        for crf, model in torch_models.items():
            results[f"torch_crf={crf}"] = time_function(
                lambda m=model: m(t_image, t_mask), max(3, repeats // 5), warmup=2
            )
    main = dict(results["ort_crf=True"])
    ort_crf, ort_plain = main["median_ms"], results["ort_crf=False"]["median_ms"]
    main.update(
        {
            "ort_without_crf_median_ms": ort_plain,
            "torch_eager_with_crf_median_ms": results["torch_crf=True"]["median_ms"],
            "torch_eager_without_crf_median_ms": results["torch_crf=False"]["median_ms"],
            "crf_share_of_ort_time": (ort_crf - ort_plain) / ort_crf,
            "ort_vs_torch_eager_speedup": results["torch_crf=True"]["median_ms"] / ort_crf,
            "ort_vs_torch_eager_without_crf_speedup": results["torch_crf=False"]["median_ms"] / ort_plain,
            "notes": (
                f"ORT CPU +CRF; without CRF {ort_plain:.1f} ms; torch eager "
                f"{results['torch_crf=True']['median_ms']:.1f} ms (+CRF)"
            ),
        }
    )
    return main


def bench_clustering(repeats: int) -> dict[str, object]:
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


def bench_lidar_pipeline(repeats: int) -> dict[str, object]:
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


def bench_det(repeats: int) -> dict[str, object]:
    """SqueezeDet at 1248 x 384, batch 1: ONNX Runtime (CPU) vs torch eager, and decode + NMS on its output."""
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    from perception.camera.anchors import squeezedet_anchors
    from perception.camera.boxes import postprocess_detections

    image = (np.random.default_rng(0).random((1, 3, 384, 1248)) * 255).astype(np.float32)
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
        res: dict[str, object] = dict(time_function(lambda: session.run(None, {"image": image}), repeats))
        probs, conf, deltas = session.run(None, {"image": image})
    with torch.inference_mode():
        eager = time_function(lambda: model(torch.from_numpy(image)), max(3, repeats // 5), warmup=2)
    post = time_function(
        lambda: postprocess_detections(probs[0], conf[0], deltas[0], anchors, original_size=(1242, 375)), repeats
    )
    res.update(
        {
            "torch_eager_median_ms": eager["median_ms"],
            "ort_vs_torch_eager_speedup": eager["median_ms"] / float(res["median_ms"]),  # type: ignore[arg-type]
            "decode_nms_median_ms": post["median_ms"],
            "notes": f"ORT CPU; torch eager {eager['median_ms']:.1f} ms; decode+NMS {post['median_ms']:.1f} ms",
        }
    )
    return res


BENCHMARKS: dict[str, Callable[[int], dict[str, object]]] = {
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


def run_benchmarks(names: list[str], repeats: int) -> dict[str, object]:
    return {
        "machine": machine_description(),
        "benchmarks": {name: BENCHMARKS[name](repeats) for name in names},
    }
