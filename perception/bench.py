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
    return _stats(_timed_runs(func, repeats, warmup))


def time_interleaved(
    funcs: dict[str, Callable[[], object]], repeats: int, warmup: int = 3, settle_s: float = 0.0
) -> dict[str, dict[str, float]]:
    """Statistics of several functions timed in alternation: each round runs every function once, in an
    order that rotates from round to round. On a shared machine whose speed drifts during a run, ratios of
    these medians are far steadier than ratios of back-to-back blocks of runs.

    ``settle_s``: an untimed pause after each call, for functions whose worker threads keep spinning after
    they return (torch's OpenMP pool does) and would otherwise slow the function timed next."""
    names = list(funcs)
    for _ in range(warmup):
        for name in names:
            funcs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            funcs[name]()
            times[name].append(time.perf_counter() - start)
            if settle_s:
                time.sleep(settle_s)
    return {name: _stats(values) for name, values in times.items()}


EAGER_SETTLE_S = 0.1
"""Pause after each call when torch eager alternates with ONNX Runtime: torch's OpenMP threads spin for a while
after an op and, on 2 cores, slowed the ORT run after them by 16-25 % (ORT alongside eager 109.0 ms, alone 87.4;
with 50 ms pauses 87.6)."""


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


def _cpu_session(path: Path, options: Any = None) -> Any:
    """An ONNX Runtime CPU session with ``options``, by default the runtime's
    (:func:`perception.runtime.session.session_options`: its threads stop spinning when a run returns, so a
    session timed in alternation does not slow the next)."""
    import onnxruntime as ort

    from perception.runtime.session import session_options

    return ort.InferenceSession(
        str(path), sess_options=options or session_options(), providers=["CPUExecutionProvider"]
    )


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
    fp32_path: Path,
    run_fp32: Callable[[], object],
    run_int8: Callable[[], object],
    repeats: int,
    source: str,
    ctx: BenchContext,
) -> dict[str, Any]:
    """Time the INT8 model in alternation with the FP32 one (:func:`time_interleaved`): ``int8_median_ms``,
    ``int8_fp32_median_ms`` (FP32 in the same rounds), ``int8_vs_fp32_speedup`` (their ratio) and the
    INT8 FLOP rate.

    The INT8 model does the FP32 model's work, so its rate is the FP32 model's FLOPs over the INT8 time (an
    effective GFLOP/s, integer operations included); counting the QDQ graph itself gives the same up to
    duplicate nodes that ONNX Runtime's pre-processing merges.
    """
    timed = time_interleaved({"fp32": run_fp32, "int8": run_int8}, repeats)
    out: dict[str, Any] = {
        "int8_median_ms": timed["int8"]["median_ms"],
        "int8_p90_ms": timed["int8"]["p90_ms"],
        "int8_fp32_median_ms": timed["fp32"]["median_ms"],
        "int8_vs_fp32_speedup": timed["fp32"]["median_ms"] / timed["int8"]["median_ms"],
        "int8_model": source,
    }
    out.update(flop_fields("int8", fp32_path, timed["int8"]["median_ms"], ctx))
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


def _analytic_seg_feeds(sensor: Any, seeds: range) -> list[dict[str, np.ndarray]]:
    """SqueezeSeg inputs of analytic street scans (one per seed), projected as the Segmenter projects them."""
    from perception.sim.analytic import street_range_image

    return [dict(zip(("range_image", "mask"), street_range_image(sensor, seed), strict=True)) for seed in seeds]


def _int8_comparison(
    task: str,
    model_path: Path,
    fp32_session: Any,
    feeds: dict[str, np.ndarray],
    output: str,
    repeats: int,
    ctx: BenchContext,
    tmp: Path,
    existing: Path | None = None,
) -> dict[str, Any]:
    """INT8 vs FP32 on ONNX Runtime (CPU): an existing INT8 file, or one quantised now from ``model_path``.

    Adds ``int8_argmax_agreement``: the fraction of positions (valid pixels for seg, anchors for det) where
    the INT8 model picks the same class as the FP32 one on the bench frame (not a calibration frame).
    """

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
    session = _cpu_session(int8_path)
    out = _int8_fields(model_path, lambda: fp32_session.run([output], feeds), lambda: session.run([output], feeds),
                       repeats, source, ctx)  # fmt: skip
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
        f"; INT8 {fields['int8_median_ms']:.1f} ms ({fields['int8_vs_fp32_speedup']:.2f}x FP32 "
        f"{fields['int8_fp32_median_ms']:.1f} ms in alternating runs, "
        f"argmax agreement {fields['int8_argmax_agreement'] * 100:.1f}%)"
    )


LIGHTER_BLOCKS = ("squeezenext", "shift")


def _lighter_variants(
    task: str,
    tmp: Path,
    feeds: dict[str, np.ndarray],
    fire_session: Any,
    output: str,
    repeats: int,
    ctx: BenchContext,
) -> dict[str, float]:
    """The model of ``task`` (``seg``: SqueezeSeg + CRF, ``det``: SqueezeDet) with SqueezeNext and Shift blocks,
    timed in alternation with the Fire model (ORT CPU); ``fire_alongside_median_ms`` is the Fire model in the
    same rounds."""

    from perception.lidar.sensors import SENSORS
    from perception.training.export import (
        build_detection_model,
        build_segmentation_model,
        export_detection_onnx,
        export_segmentation_onnx,
    )

    if task not in ("seg", "det"):
        raise ValueError(f"task must be seg or det, got {task!r}")
    runs: dict[str, Callable[[], object]] = {"fire": lambda: fire_session.run([output], feeds)}
    paths = {}
    for block in LIGHTER_BLOCKS:
        if task == "seg":
            model = build_segmentation_model(crf=True, seed=0, block=block, crf_form="standard")
            paths[block] = export_segmentation_onnx(model, tmp / f"seg_{block}.onnx", SENSORS["kitti-front"])
        else:
            paths[block] = export_detection_onnx(build_detection_model(seed=0, block=block), tmp / f"det_{block}.onnx")
        session = _cpu_session(paths[block])
        runs[block] = functools.partial(session.run, [output], feeds)
    timed = time_interleaved(runs, repeats)
    fire_ms = timed["fire"]["median_ms"]
    out: dict[str, float] = {"fire_alongside_median_ms": fire_ms}
    for block in LIGHTER_BLOCKS:
        median = timed[block]["median_ms"]
        out[f"{block}_median_ms"] = median
        out[f"{block}_vs_fire_speedup"] = fire_ms / median
        out.update(flop_fields(block, paths[block], median, ctx))
    return out


def _lighter_note(fields: dict[str, Any]) -> str:
    return "".join(
        f"; {b} blocks {fields[f'{b}_median_ms']:.1f} ms ({fields[f'{b}_vs_fire_speedup']:.2f}x)"
        for b in LIGHTER_BLOCKS
        if f"{b}_median_ms" in fields
    )


def bench_seg(repeats: int, ctx: BenchContext | None = None) -> dict[str, object]:
    """SqueezeSeg forward at 64 x 512, batch 1: ONNX Runtime (CPU) with and without the CRF, torch eager,
    FLOPs and GFLOP/s, and INT8 vs FP32 (CRF kept FP32, see :mod:`perception.runtime.quantize`).

    Weights are freshly initialised (speed does not depend on them); without torch installed, only the
    shipped model in models/ is timed (and its INT8 sibling, when present).
    """
    import tempfile

    from perception.runtime.quantize import int8_model_path

    ctx = ctx or BenchContext()
    from perception.sim.analytic import street_range_image

    image, mask = street_range_image()
    feeds = {"range_image": image, "mask": mask}
    probe = {"matmul_probe_gflops_per_s": ctx.matmul_gflops_per_s} if ctx.matmul_gflops_per_s else {}
    try:
        import torch

        from perception.lidar.sensors import SENSORS
        from perception.training.export import build_segmentation_model, export_segmentation_onnx
    except ImportError:
        from perception.service.settings import DEFAULT_SEG_MODEL

        shipped = DEFAULT_SEG_MODEL
        if not shipped.is_file():
            return {"median_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "runs": 0,
                    "notes": "skipped: needs torch ([train]) or a shipped model"}  # fmt: skip
        session = _cpu_session(shipped)
        res: dict[str, Any] = dict(time_function(lambda: session.run(["logits"], feeds), repeats))
        res.update(probe)
        res.update(flop_fields("ort", shipped, res["median_ms"], ctx))
        with tempfile.TemporaryDirectory() as tmp:
            res.update(_int8_comparison("seg", shipped, session, feeds, "logits", repeats, ctx,
                                        Path(tmp), existing=int8_model_path(shipped)))  # fmt: skip
        res["notes"] = f"shipped model, {session.get_providers()[0]}" + _flop_note(res, "ort") + _int8_note(res)
        return res

    results: dict[str, dict[str, float]] = {}
    torch_models = {}
    flops: dict[str, Any] = {}
    int8: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sessions, paths = {}, {}
        for crf in (True, False):
            model = build_segmentation_model(crf=crf, seed=0)
            paths[crf] = export_segmentation_onnx(model, Path(tmp) / f"seg_{crf}.onnx", SENSORS["kitti-front"])
            sessions[crf] = _cpu_session(paths[crf])
            torch_models[crf] = model
        # with and without the CRF in alternating runs: their ratio is the CRF's cost
        timed_pair = time_interleaved(
            {f"ort_crf={crf}": (lambda s=session: s.run(["logits"], feeds)) for crf, session in sessions.items()},
            repeats,
        )
        for crf in (True, False):
            results[f"ort_crf={crf}"] = timed_pair[f"ort_crf={crf}"]
            flops.update(flop_fields("ort" if crf else "ort_without_crf", paths[crf],
                                     results[f"ort_crf={crf}"]["median_ms"], ctx))  # fmt: skip
        int8 = _int8_comparison("seg", paths[True], sessions[True], feeds, "logits", repeats, ctx, Path(tmp))
        lighter = _lighter_variants("seg", Path(tmp), feeds, sessions[True], "logits", repeats, ctx)
    main: dict[str, Any] = dict(results["ort_crf=True"])
    ort_crf, ort_plain = main["median_ms"], results["ort_crf=False"]["median_ms"]
    main.update(
        {
            "ort_without_crf_median_ms": ort_plain,
            "crf_share_of_ort_time": (ort_crf - ort_plain) / ort_crf,
            "crf_added_to_network": (ort_crf - ort_plain) / ort_plain,
        }
    )
    eager_note = "torch eager not timed"
    if ctx.torch_eager:
        t_image, t_mask = torch.from_numpy(image), torch.from_numpy(mask)
        runs: dict[str, Callable[[], object]] = {}
        for crf, model in torch_models.items():
            runs[f"torch_crf={crf}"] = functools.partial(model, t_image, t_mask)
            runs[f"ort_crf={crf}"] = functools.partial(sessions[crf].run, ["logits"], feeds)
        with torch.inference_mode():  # eager and ORT in alternation: their ratio from the same rounds
            paired = time_interleaved(runs, max(3, repeats // 5), warmup=2, settle_s=EAGER_SETTLE_S)
        eager_crf, eager_plain = paired["torch_crf=True"]["median_ms"], paired["torch_crf=False"]["median_ms"]
        main.update(
            {
                "torch_eager_with_crf_median_ms": eager_crf,
                "torch_eager_without_crf_median_ms": eager_plain,
                "ort_alongside_torch_eager_median_ms": paired["ort_crf=True"]["median_ms"],
                "ort_vs_torch_eager_speedup": eager_crf / paired["ort_crf=True"]["median_ms"],
                "ort_vs_torch_eager_without_crf_speedup": eager_plain / paired["ort_crf=False"]["median_ms"],
            }
        )
        eager_note = f"torch eager {eager_crf:.1f} ms (+CRF)"
    main.update({**probe, **flops, **int8, **lighter})
    main["notes"] = (
        f"ORT CPU +CRF; without CRF {ort_plain:.1f} ms in alternating runs "
        f"(CRF +{main['crf_added_to_network'] * 100:.0f}%); {eager_note}{_lighter_note(main)}"
        + _flop_note(main, "ort", "+CRF")
        + _flop_note(main, "ort_without_crf", "without CRF")
        + _int8_note(main)
    )
    return main


def bench_clustering(repeats: int, ctx: BenchContext | None = None) -> dict[str, object]:
    """DBSCAN of a labelled 360 deg HDL-64E scan (ray cast street scene): range-image fast path vs sklearn."""
    from perception.lidar.clustering import cluster_instances, cluster_labels
    from perception.lidar.projection import spherical_project
    from perception.lidar.sensors import SENSORS
    from perception.sim.analytic import cast_scan, street_scene

    full = SENSORS["hdl64e-360"]
    scan = cast_scan(full, street_scene(0), seed=0)
    proj = spherical_project(scan.points, full)

    def fast() -> None:
        cluster_labels(scan.points, scan.labels, proj)

    def reference() -> None:
        cluster_labels(scan.points, scan.labels, proj, method="sklearn")

    res: dict[str, object] = dict(time_function(fast, repeats))
    instances = time_function(lambda: cluster_instances(scan.points, scan.labels, proj), repeats)
    res["points"] = len(scan.points)
    res["foreground_points"] = int(sum(sel.size for sel, _ in cluster_labels(scan.points, scan.labels, proj).values()))
    res["instances_median_ms"] = instances["median_ms"]
    try:
        reference()
    except ImportError:
        res["notes"] = "range-image DBSCAN only (install scikit-learn for the reference timing)"
        return res
    # the ratio from alternating runs (the reference is slow, so fewer rounds)
    pair = time_interleaved({"fast": fast, "sklearn": reference}, max(3, min(repeats, 10)), warmup=1)
    res["sklearn_median_ms"] = pair["sklearn"]["median_ms"]
    res["fast_alongside_sklearn_median_ms"] = pair["fast"]["median_ms"]
    res["speedup_vs_sklearn"] = pair["sklearn"]["median_ms"] / pair["fast"]["median_ms"]
    res["notes"] = (
        f"{res['foreground_points']} fg of {len(scan.points)} pts; sklearn {pair['sklearn']['median_ms']:.1f} ms vs "
        f"{pair['fast']['median_ms']:.1f} ms in alternating runs ({res['speedup_vs_sklearn']:.1f}x); with boxes "
        f"{instances['median_ms']:.1f} ms"
    )
    return res


SAMPLE_MESH_SCAN = Path("sim_data/sample_mesh/velodyne/000000.bin")
AROUND_NETWORK_STAGES = ("projection", "unprojection", "clustering")


def _pipeline_scan() -> tuple[np.ndarray, str]:
    """A 360 deg HDL-64E scan: the committed mesh-world frame (the world the shipped segmenter was trained
    on, so its labels and hence the clustering work are realistic), else an analytic street scan."""
    from perception.lidar.sensors import SENSORS
    from perception.sim.analytic import cast_scan, street_scene

    if SAMPLE_MESH_SCAN.is_file():
        from perception.io.kitti import read_velodyne_bin

        return read_velodyne_bin(SAMPLE_MESH_SCAN), str(SAMPLE_MESH_SCAN)
    return cast_scan(SENSORS["hdl64e-360"], street_scene(0), seed=0).points, "analytic street scan (seed 0)"


def _minor_page_faults() -> float:
    """Minor page faults of this process so far (all its threads); NaN where getrusage is missing (Windows).

    Fresh memory that the allocator has to map costs a fault per page: the count per frame shows whether
    the arrays a frame allocates come from memory the process already holds."""
    try:
        import resource
    except ImportError:
        return float("nan")
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def _time_lidar_paths(
    segmenters: dict[str, Any],
    points: np.ndarray,
    repeats: int,
    cluster_fns: dict[str, Callable[..., list[Any]]] | None = None,
    last: dict[str, tuple[Any, list[Any]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each :class:`~perception.runtime.segmenter.Segmenter` (projection, ONNX Runtime, labels back) then
    clustering with boxes, per frame, in alternating runs; stage medians and the time and share of the frame
    spent around the network (``around_network_median_ms``, ``around_network_share``).

    ``cluster_fns``: a clustering function other than :func:`~perception.lidar.clustering.cluster_instances`
    for some of the segmenters (same arguments); ``last``, when given, receives each one's last segmentation
    result and instances."""
    from perception.lidar.clustering import cluster_instances

    stages: dict[str, dict[str, list[float]]] = {name: {} for name in segmenters}
    instances: dict[str, list[int]] = {name: [] for name in segmenters}
    faults: dict[str, list[float]] = {name: [] for name in segmenters}

    def frame(name: str, segmenter: Any) -> None:
        cluster = (cluster_fns or {}).get(name, cluster_instances)
        faults_before = _minor_page_faults()
        result = segmenter.segment(points)
        t0 = time.perf_counter()
        found = cluster(points, result.labels, result.projection, scores=result.scores)
        clustering_ms = (time.perf_counter() - t0) * 1e3
        faults[name].append(_minor_page_faults() - faults_before)
        instances[name].append(len(found))
        if last is not None:
            last[name] = (result, found)
        for key, value in {**result.timings_ms, "clustering": clustering_ms}.items():
            stages[name].setdefault(key, []).append(value)

    timed = time_interleaved(
        {name: functools.partial(frame, name, segmenter) for name, segmenter in segmenters.items()}, repeats
    )
    out: dict[str, dict[str, Any]] = {}
    for name in segmenters:
        res: dict[str, Any] = dict(timed[name])
        per_stage = {k: np.asarray(v[-repeats:]) for k, v in stages[name].items()}  # the timed rounds
        totals = np.sum(list(per_stage.values()), axis=0)
        around = np.sum([per_stage[k] for k in AROUND_NETWORK_STAGES], axis=0)
        for key, values in per_stage.items():
            res[f"{key}_median_ms"] = float(np.median(values))
        res["around_network_median_ms"] = float(np.median(around))
        res["around_network_share"] = float(np.median(around / totals))
        res["minor_page_faults_per_frame"] = float(np.mean(faults[name][-repeats:]))
        res["instances"] = int(np.median(instances[name]))
        res["stage_note"] = ", ".join(f"{k} {np.median(v):.1f}" for k, v in per_stage.items())
        out[name] = res
    return out


def _seg_model_for(sensor_name: str, tmp: Path) -> tuple[Path | None, str]:
    """The shipped segmenter for ``sensor_name`` (kitti-front: the file itself; another sensor: its weights
    exported again for that sensor, which needs the train extra), else a fresh untrained export."""
    from perception.lidar.sensors import SENSORS
    from perception.service.settings import DEFAULT_SEG_MODEL

    if sensor_name == "kitti-front" and DEFAULT_SEG_MODEL.is_file():
        return DEFAULT_SEG_MODEL, "shipped model"
    try:
        from perception.training.export import build_segmentation_model, export_segmentation_onnx
    except ImportError:
        return None, "needs torch ([train]) to export the model for this sensor"
    if DEFAULT_SEG_MODEL.is_file():
        model, note = build_segmentation_model(DEFAULT_SEG_MODEL), "shipped weights exported for this sensor"
    else:
        model, note = build_segmentation_model(seed=0, crf_form="standard"), "fresh (untrained) weights"
    return export_segmentation_onnx(model, tmp / f"seg_{sensor_name}.onnx", SENSORS[sensor_name]), note


def bench_lidar_pipeline(repeats: int, ctx: BenchContext | None = None) -> dict[str, object]:
    """Scan -> instances end to end on the 64 x 512 front view: projection, SqueezeSeg + CRF (ONNX Runtime,
    CPU), labels back to the points, clustering with boxes."""
    import tempfile

    points, scan_note = _pipeline_scan()
    with tempfile.TemporaryDirectory() as tmp:
        model_path, note = _seg_model_for("kitti-front", Path(tmp))
        if model_path is None:
            return {"median_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "runs": 0,
                    "notes": f"skipped: {note}"}  # fmt: skip
        from perception.runtime.segmenter import Segmenter

        res = _time_lidar_paths({"fp32": Segmenter(model_path, providers="cpu")}, points, repeats)["fp32"]
    res["notes"] = (
        f"{len(points)} pts ({scan_note}), kitti-front, {note}, {res['instances']} instances; {res.pop('stage_note')};"
        f" around the network {res['around_network_share'] * 100:.0f}%;"
        f" {res['minor_page_faults_per_frame']:.1f} minor page faults per frame"
    )
    return res


def bench_lidar_360(repeats: int, ctx: BenchContext | None = None) -> dict[str, object]:
    """A full 360 deg HDL-64E sweep (64 x 2048) through the whole LiDAR path, FP32 and INT8 (ONNX Runtime CPU).

    The shipped segmenter's weights exported for the full sweep (SqueezeSeg is fully convolutional), INT8
    quantised now (calibrated on analytic street scans); ``int8_label_agreement`` is the share of the
    scan's points that get the FP32 label. ``p99_ms`` of each against the 100 ms of a 10 Hz sensor.
    """
    import tempfile

    from perception.lidar.sensors import SENSORS

    points, scan_note = _pipeline_scan()
    with tempfile.TemporaryDirectory() as tmp:
        model_path, note = _seg_model_for("hdl64e-360", Path(tmp))
        if model_path is None or (reason := _can_quantize()) is not None:
            return {"median_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "runs": 0,
                    "notes": f"skipped: {note if model_path is None else reason}"}  # fmt: skip
        from perception.runtime.quantize import int8_model_path, quantize_model
        from perception.runtime.segmenter import Segmenter

        seeds = range(1, 1 + CALIBRATION_FRAMES)
        int8_path = quantize_model(model_path, int8_model_path(model_path), _analytic_seg_feeds(SENSORS["hdl64e-360"],
                                   seeds), max_frames=len(seeds), task="seg", write_card=False).out  # fmt: skip
        segmenters = {"fp32": Segmenter(model_path, providers="cpu"), "int8": Segmenter(int8_path, providers="cpu")}
        both = _time_lidar_paths(segmenters, points, repeats)
        res, int8 = both["fp32"], both["int8"]
        fp32_result = segmenters["fp32"].segment(points)
        in_view = fp32_result.projection.in_view
        fp32_labels = fp32_result.labels[in_view]
        int8_labels = segmenters["int8"].segment(points).labels[in_view]
    res.update({f"int8_{k}": v for k, v in int8.items() if k != "stage_note"})
    res["int8_vs_fp32_speedup"] = res["median_ms"] / int8["median_ms"]
    res["int8_label_agreement"] = float(np.mean(fp32_labels == int8_labels))
    res["meets_10hz_p99"] = bool(min(res["p99_ms"], int8["p99_ms"]) < 100.0)
    res["notes"] = (
        f"{len(points)} pts ({scan_note}), 64 x 2048, {note}; FP32 p99 {res['p99_ms']:.0f} ms "
        f"({res.pop('stage_note')}); INT8 {int8['median_ms']:.0f} ms median, p99 {int8['p99_ms']:.0f} ms "
        f"({res['int8_vs_fp32_speedup']:.2f}x, {res['int8_label_agreement'] * 100:.1f}% same labels); "
        f"10 Hz (p99 < 100 ms): {'met' if res['meets_10hz_p99'] else 'not met'}"
    )
    return res


def _random_frame(seed: int) -> np.ndarray:
    """A (1, 3, 384, 1248) float32 frame of uniform noise in [0, 255]: SqueezeDet's input, speed only."""
    return (np.random.default_rng(seed).random((1, 3, 384, 1248)) * 255).astype(np.float32)


def bench_det(repeats: int, ctx: BenchContext | None = None) -> dict[str, object]:
    """SqueezeDet at 1248 x 384, batch 1: ONNX Runtime (CPU) vs torch eager, decode + NMS on its output,
    FLOPs and GFLOP/s, INT8 vs FP32 (calibrated on random frames: a speed comparison), and the backbone
    with SqueezeNext and Shift blocks beside the Fire one."""
    import tempfile

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
        session = _cpu_session(path)
        res: dict[str, Any] = dict(time_function(lambda: session.run(None, {"image": image}), repeats))
        probs, conf, deltas = session.run(None, {"image": image})
        res.update(flop_fields("ort", path, res["median_ms"], ctx))
        res.update(_int8_comparison("det", path, session, {"image": image}, "class_probs", repeats,
                                    ctx, Path(tmp)))  # fmt: skip
        res.update(_lighter_variants("det", Path(tmp), {"image": image}, session, "class_probs", repeats, ctx))
    eager_note = "torch eager not timed"
    if ctx.torch_eager:
        with torch.inference_mode():  # eager and ORT in alternation: their ratio from the same rounds
            paired = time_interleaved(
                {"eager": lambda: model(torch.from_numpy(image)), "ort": lambda: session.run(None, {"image": image})},
                max(3, repeats // 5),
                warmup=2,
                settle_s=EAGER_SETTLE_S,
            )
        eager = paired["eager"]
        res["torch_eager_median_ms"] = eager["median_ms"]
        res["ort_alongside_torch_eager_median_ms"] = paired["ort"]["median_ms"]
        res["ort_vs_torch_eager_speedup"] = eager["median_ms"] / paired["ort"]["median_ms"]
        eager_note = f"torch eager {eager['median_ms']:.1f} ms"
    post = time_function(
        lambda: postprocess_detections(probs[0], conf[0], deltas[0], anchors, original_size=(1242, 375)), repeats
    )
    if ctx.matmul_gflops_per_s:
        res["matmul_probe_gflops_per_s"] = ctx.matmul_gflops_per_s
    res["decode_nms_median_ms"] = post["median_ms"]
    res["notes"] = (
        f"ORT CPU; {eager_note}; decode+NMS {post['median_ms']:.1f} ms{_lighter_note(res)}"
        + _flop_note(res, "ort")
        + _int8_note(res)
    )
    return res


SIM_BENCH_FRAMES = 5
"""Frames the ``sim`` bench times per configuration (fewer when ``repeats`` is lower), after one warm-up frame."""
SIM_BENCH_SEED = 0


def _threads_available() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the logical CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _time_generator(out_dir: Path, frames: int, camera: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Per-frame wall time of ``generate_dataset`` (simulate + write, between successive progress calls; stats
    in ms) and the median of each stage's ``timings_ms`` (ms)."""
    from perception.sim.dataset import generate_dataset

    times: list[float] = []
    stages: dict[str, list[float]] = {}
    last = time.perf_counter()

    def progress(frame: Any) -> None:
        nonlocal last
        now = time.perf_counter()
        times.append(now - last)
        last = now
        for key, value in frame.timings_ms.items():
            stages.setdefault(key, []).append(value)

    generate_dataset(out_dir, "urban", frames=frames, seed=SIM_BENCH_SEED, sensor="hdl64e-360", camera=camera,
                     progress=progress, nthreads=0)  # fmt: skip
    return _stats(times), {key: float(np.median(values)) for key, values in stages.items()}


def bench_sim(repeats: int, ctx: BenchContext | None = None) -> dict[str, object]:
    """The mesh-world generator (``perception simulate``): frames per second at HDL-64E 360 deg (64 x 2048 rays),
    LiDAR only and LiDAR + camera (1242 x 375 render, 2D labels), urban preset, fixed seed, every file written
    to a temporary directory; ``min(repeats, SIM_BENCH_FRAMES)`` frames each after one warm-up frame.

    ``median_ms`` is the LiDAR-only frame; ``lidar_frames_per_s_per_core`` divides its rate by the CPUs the
    process may use (``threads``): open3d ray casts on all of them (``nthreads=0``). Needs open3d.
    """
    import tempfile

    try:
        import open3d  # noqa: F401
    except ImportError:
        return {"median_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "runs": 0,
                "notes": "skipped: the mesh world needs open3d (the [train] extra)"}  # fmt: skip
    frames = max(1, min(repeats, SIM_BENCH_FRAMES))
    threads = _threads_available()
    with tempfile.TemporaryDirectory() as tmp:
        _time_generator(Path(tmp) / "warmup", 1, camera=True)  # open3d start-up, first scene build
        lidar, lidar_stages = _time_generator(Path(tmp) / "lidar", frames, camera=False)
        both, both_stages = _time_generator(Path(tmp) / "camera", frames, camera=True)
    res: dict[str, Any] = dict(lidar)
    lidar_fps = 1e3 / lidar["median_ms"]
    both_fps = 1e3 / both["median_ms"]
    res.update(
        {
            "frames": frames,
            "seed": SIM_BENCH_SEED,
            "sensor": "hdl64e-360",
            "config": "urban",
            "threads": threads,
            "lidar_frames_per_s": lidar_fps,
            "lidar_frames_per_s_per_core": lidar_fps / threads,
            "lidar_camera_median_ms": both["median_ms"],
            "lidar_camera_p90_ms": both["p90_ms"],
            "lidar_camera_frames_per_s": both_fps,
            "lidar_only_vs_with_camera_speedup": both["median_ms"] / lidar["median_ms"],
            "lidar_stage_median_ms": lidar_stages,
            "lidar_camera_stage_median_ms": both_stages,
        }
    )
    res["notes"] = (
        f"HDL-64E 360, urban, {frames} frames: LiDAR {lidar_fps:.2f} frames/s ({lidar_fps / threads:.2f} per core, "
        f"{threads} threads); + camera {both_fps:.2f} frames/s ({both['median_ms']:.0f} ms)"
    )
    return res


# --- service load ---------------------------------------------------------------------------------

SERVICE_DURATION_S = 20.0
"""Measured seconds of the ``service`` load phase (after :data:`SERVICE_WARMUP_S` of the same load)."""
SERVICE_WARMUP_S = 5.0
SERVICE_WS_CLIENTS = 2
SERVICE_GRPC_CLIENTS = 2


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _overhead_fields(name: str, times_s: list[float], inprocess_ms: float) -> dict[str, float]:
    """``{name}_median_ms``, ``{name}_p99_ms``, ``{name}_overhead_pct`` (vs in-process median) and
    ``inprocess_vs_{name}_speedup`` (protocol median / in-process median)."""
    stats = _stats(times_s)
    return {
        f"{name}_median_ms": stats["median_ms"],
        f"{name}_p99_ms": stats["p99_ms"],
        f"{name}_overhead_pct": (stats["median_ms"] - inprocess_ms) / inprocess_ms * 100.0,
        f"inprocess_vs_{name}_speedup": stats["median_ms"] / inprocess_ms,
    }


class _LoadRecorder:
    """Latencies (seconds) and errors of the load clients; only frames sent after ``measure_from`` count."""

    def __init__(self, measure_from: float) -> None:
        import threading

        self.measure_from = measure_from
        self.latencies: dict[str, list[float]] = {"websocket": [], "grpc": []}
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def record(self, protocol: str, sent: float, latency_s: float, error: str | None) -> None:
        with self._lock:
            if error is not None:
                self.errors.append(f"{protocol}: {error}")
            elif sent >= self.measure_from:
                self.latencies[protocol].append(latency_s)


def _ws_load_client(ws_url: str, message: bytes, stop_at: float, recorder: _LoadRecorder) -> None:
    """One WebSocket client, one frame in flight: send, wait for its answer, repeat until ``stop_at``."""
    import json

    from websockets.sync.client import connect

    try:
        with connect(f"{ws_url}/v1/stream", max_size=None, compression=None) as ws:
            while (sent := time.perf_counter()) < stop_at:
                ws.send(message)
                answer = json.loads(ws.recv())
                error = answer.get("error") if answer.get("type") != "result" else None
                recorder.record("websocket", sent, time.perf_counter() - sent, error)
            ws.send(json.dumps({"type": "end"}))
            for text in ws:
                if json.loads(text).get("type") == "end":
                    break
    except Exception as exc:  # a broken stream is an error of the run, not of the benchmark code
        recorder.record("websocket", 0.0, 0.0, f"{type(exc).__name__}: {exc}")


def _grpc_load_client(target: str, request: Any, stop_at: float, recorder: _LoadRecorder) -> None:
    """One gRPC ``Stream`` client, one frame in flight: send, wait for its answer, repeat until ``stop_at``."""
    import queue

    from perception.client import GrpcClient

    outbox: queue.Queue[Any] = queue.Queue()

    def requests() -> Any:
        while (item := outbox.get()) is not None:
            yield item

    try:
        with GrpcClient(target) as client:
            responses = client.stub.Stream(requests())
            try:
                while (sent := time.perf_counter()) < stop_at:
                    outbox.put(request)
                    answer = next(responses)
                    error = answer.error if answer.WhichOneof("outcome") != "result" else None
                    recorder.record("grpc", sent, time.perf_counter() - sent, error)
            finally:
                outbox.put(None)  # half-close: the server ends the call once every frame is answered
            for _ in responses:
                pass
    except Exception as exc:
        recorder.record("grpc", 0.0, 0.0, f"{type(exc).__name__}: {exc}")


def service_load(
    seg_model: Path | None,
    det_model: Path | None,
    frame: Any,
    repeats: int = 20,
    duration_s: float = SERVICE_DURATION_S,
    warmup_s: float = SERVICE_WARMUP_S,
    ws_clients: int = SERVICE_WS_CLIENTS,
    grpc_clients: int = SERVICE_GRPC_CLIENTS,
    providers: str = "cpu",
    warmup_runs: int = 3,
) -> dict[str, Any]:
    """The service under load, in this process (:func:`perception.service.server.serve_in_background`).

    1. Overhead: ``repeats`` runs each, one at a time, of ``frame`` (a :class:`perception.pipeline.Frame`)
       in-process (``Pipeline.run``), over gRPC unary ``Perceive``, a WebSocket ``/v1/stream`` and REST
       ``POST /v1/perceive``, after ``warmup_runs`` warm-up runs; ``*_overhead_pct`` is each protocol's median
       latency over the in-process median, minus 1, in percent.
    2. Load: ``ws_clients`` WebSocket and ``grpc_clients`` gRPC ``Stream`` clients, each keeping one frame
       in flight, for ``warmup_s`` and then ``duration_s`` measured seconds (policy ``block``: nothing is
       dropped). Latency p50/p90/p99 (all clients and per protocol), throughput in frames/s, error answers
       and broken streams (``errors``, which should be 0), and the process RSS after warm-up and at the
       end (``rss_growth_pct``; server and clients share the process, so the clients' buffers count too).
    """
    import threading

    from perception.client import GrpcClient, RestClient, encode_stream_frame
    from perception.pipeline import Pipeline
    from perception.service.server import serve_in_background
    from perception.service.settings import Settings

    settings = Settings(
        host="127.0.0.1",
        port=0,
        grpc_port=0,
        providers=providers,
        seg_model=seg_model,
        det_model=det_model,
        stream_policy="block",
        stream_queue_size=1,
        warmup=False,
        log_level="warning",
    )
    pipeline = Pipeline(seg_model, det_model, providers)
    warm = warmup_runs
    try:
        inprocess = time_function(lambda: pipeline.run(frame), repeats, warmup=warm)
        inproc_ms = inprocess["median_ms"]
        out: dict[str, Any] = {"inprocess_median_ms": inproc_ms, "inprocess_p99_ms": inprocess["p99_ms"]}
        message = encode_stream_frame(frame)
        with serve_in_background(settings, pipeline) as svc:
            assert svc.grpc_target is not None
            with GrpcClient(svc.grpc_target) as grpc_client:
                request = grpc_client.perceive_request(frame.image, frame.points, frame.frame_id, frame.timestamp)

                def unary() -> None:
                    response = grpc_client.stub.Perceive(request, timeout=grpc_client.timeout)
                    if not response.frame_id:
                        raise RuntimeError("gRPC Perceive answered without a frame id")

                out.update(_overhead_fields("grpc", _timed_runs(unary, repeats, warm), inproc_ms))
            from websockets.sync.client import connect

            with connect(f"{svc.ws_url}/v1/stream", max_size=None, compression=None) as ws:

                def streamed() -> None:
                    ws.send(message)
                    if '"type":"result"' not in str(ws.recv()):
                        raise RuntimeError("the WebSocket stream answered with an error")

                out.update(_overhead_fields("ws", _timed_runs(streamed, repeats, warm), inproc_ms))
            with RestClient(svc.rest_url) as rest:
                rest_times = _timed_runs(lambda: rest.perceive(frame.image, frame.points), repeats, warm)
                out.update(_overhead_fields("rest", rest_times, inproc_ms))

            start = time.perf_counter()
            measure_from = start + warmup_s
            stop_at = measure_from + duration_s
            recorder = _LoadRecorder(measure_from)
            threads = [
                threading.Thread(target=_ws_load_client, args=(svc.ws_url, message, stop_at, recorder), daemon=True)
                for _ in range(ws_clients)
            ] + [
                threading.Thread(target=_grpc_load_client, args=(svc.grpc_target, request, stop_at, recorder),
                                 daemon=True)
                for _ in range(grpc_clients)
            ]  # fmt: skip
            for thread in threads:
                thread.start()
            time.sleep(max(0.0, measure_from - time.perf_counter()))
            rss_start = _rss_bytes()
            for thread in threads:
                thread.join()
            measured_s = time.perf_counter() - measure_from
            rss_end = _rss_bytes()
    finally:
        pipeline.close()
    every = recorder.latencies["websocket"] + recorder.latencies["grpc"]
    load = _stats(every) if every else {"median_ms": float("nan"), "p90_ms": float("nan"),
                                         "p99_ms": float("nan"), "runs": 0}  # fmt: skip
    out.update(load)
    for protocol, times in recorder.latencies.items():
        if times:
            stats = _stats(times)
            out[f"load_{protocol}_p50_ms"], out[f"load_{protocol}_p99_ms"] = stats["median_ms"], stats["p99_ms"]
        out[f"load_{protocol}_frames"] = len(times)
    out.update(
        {
            "p50_ms": load["median_ms"],
            "throughput_fps": len(every) / measured_s,
            "measured_s": measured_s,
            "ws_clients": ws_clients,
            "grpc_clients": grpc_clients,
            "errors": len(recorder.errors),
            "error_samples": recorder.errors[:3],
            "rss_after_warmup_mb": rss_start / 2**20,
            "rss_end_mb": rss_end / 2**20,
            "rss_growth_pct": (rss_end - rss_start) / rss_start * 100.0,
        }
    )
    return out


def _timed_runs(func: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        func()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return times


def _service_models(tmp: Path) -> tuple[Path, Path, str] | None:
    """(seg, det, note): the shipped models in models/, else fresh untrained exports (None without torch)."""
    from perception.service.settings import DEFAULT_DET_MODEL, DEFAULT_SEG_MODEL

    if DEFAULT_SEG_MODEL.is_file() and DEFAULT_DET_MODEL.is_file():
        return DEFAULT_SEG_MODEL, DEFAULT_DET_MODEL, "shipped models"
    try:
        from perception.lidar.sensors import SENSORS
        from perception.training.export import (
            build_detection_model,
            build_segmentation_model,
            export_detection_onnx,
            export_segmentation_onnx,
        )
    except ImportError:
        return None
    seg = export_segmentation_onnx(build_segmentation_model(seed=0), tmp / "squeezeseg.onnx", SENSORS["kitti-front"])
    det = export_detection_onnx(build_detection_model("squeezedet", seed=0), tmp / "squeezedet.onnx")
    return seg, det, "fresh untrained exports (no shipped models in models/)"


def service_frame() -> Any:
    """The frame of the service bench: a 360 deg HDL-64E street scan (~120k points) and a KITTI-sized image."""
    from perception.lidar.sensors import SENSORS
    from perception.pipeline import Frame
    from perception.sim.analytic import cast_scan, street_scene

    scan = cast_scan(SENSORS["hdl64e-360"], street_scene(0), seed=0)
    rng = np.random.default_rng(0)
    image = np.zeros((375, 1242, 3), np.uint8)
    image[:187] = (135, 180, 230)
    image[187:] = (90, 90, 95)
    image[187:267, 414:574] = (200, 30, 30)
    image = np.clip(image + rng.integers(0, 8, image.shape), 0, 255).astype(np.uint8)
    return Frame("bench", 0.0, image=image, points=scan.points)


def bench_service(repeats: int, ctx: BenchContext | None = None) -> dict[str, object]:
    """The REST/WebSocket + gRPC service in this process under concurrent streaming clients
    (:func:`service_load`): latency, throughput, errors, memory growth, and the protocols' overhead over
    the in-process pipeline on the same frame (camera + 120k-point LiDAR scan, CPU)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        models = _service_models(Path(tmp))
        if models is None:
            return {"median_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "runs": 0,
                    "notes": "skipped: needs torch ([train]) or shipped models in models/"}  # fmt: skip
        seg, det, note = models
        frame = service_frame()
        res = service_load(seg, det, frame, repeats=max(3, min(repeats, 30)))
    res["models"] = note
    res["frame"] = f"image 1242 x 375 + {len(frame.points)} points"
    res["notes"] = (
        f"{res['ws_clients']} WS + {res['grpc_clients']} gRPC stream clients, {res['measured_s']:.0f} s: "
        f"{res['throughput_fps']:.2f} frames/s, {res['errors']} errors, RSS {res['rss_growth_pct']:+.1f}%; "
        f"in-process {res['inprocess_median_ms']:.0f} ms, overhead gRPC {res['grpc_overhead_pct']:+.1f}%, "
        f"WS {res['ws_overhead_pct']:+.1f}%, REST {res['rest_overhead_pct']:+.1f}%; {note}"
    )
    return res


def _ort_setting_options() -> dict[str, Any]:
    """Session options to compare: the project's (``default``, :func:`perception.runtime.session.session_options`)
    and each with one choice changed.

    Not among them: threads that keep spinning after a run (``spinning="on"``), which would slow whichever
    session the alternation runs next; their cost in the LiDAR path (numpy work between runs) is measured in
    :func:`perception.runtime.session.load_model`'s docstring."""
    import onnxruntime as ort

    from perception.runtime.session import session_options

    def changed(**attrs: Any) -> Any:
        options = session_options()
        for name, value in attrs.items():
            setattr(options, name, value)
        return options

    parallel = changed(execution_mode=ort.ExecutionMode.ORT_PARALLEL, inter_op_num_threads=2)
    parallel.add_session_config_entry("session.inter_op.allow_spinning", "0")  # as the intra-op threads
    level = ort.GraphOptimizationLevel
    layout = getattr(level, "ORT_ENABLE_LAYOUT", None)  # onnxruntime >= 1.22
    return {
        "default": session_options(),
        **({"opt_layout": changed(graph_optimization_level=layout)} if layout is not None else {}),
        "opt_extended": changed(graph_optimization_level=level.ORT_ENABLE_EXTENDED),
        "opt_basic": changed(graph_optimization_level=level.ORT_ENABLE_BASIC),
        "opt_disabled": changed(graph_optimization_level=level.ORT_DISABLE_ALL),
        "threads_1": session_options(intra_op_threads=1),
        "no_spinning": session_options(spinning="off"),
        "no_arena": changed(enable_cpu_mem_arena=False),
        "parallel_inter_op": parallel,
    }


ORT_SETTING_NOTES = {
    "opt_layout": "graph optimisations up to layout (no NCHWc-specific ones)",
    "opt_extended": "extended graph optimisations (no layout change)",
    "opt_basic": "basic graph optimisations",
    "opt_disabled": "no graph optimisation",
    "threads_1": "1 intra-op thread",
    "no_spinning": "intra-op threads never spin",
    "no_arena": "no CPU memory arena",
    "parallel_inter_op": "parallel executor, 2 inter-op threads",
    "io_binding": "I/O binding to preallocated outputs",
}


def _time_ort_settings(model_path: Path, feeds: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    """One model under each of :func:`_ort_setting_options` and with I/O binding (default options, inputs
    and preallocated outputs bound once), in alternating runs that fetch every output. Returns
    ``{key}_median_ms``, ``{key}_vs_default_speedup`` (default time / that time: above 1, the
    alternative is faster) and the default's ``default_p90_ms`` / ``default_p99_ms``."""
    import onnxruntime as ort

    sessions = {key: _cpu_session(model_path, options) for key, options in _ort_setting_options().items()}
    runs: dict[str, Callable[[], object]] = {
        key: functools.partial(session.run, None, feeds) for key, session in sessions.items()
    }
    bound = sessions["default"]
    binding = bound.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    # the output buffers live as long as the runs (older onnxruntime bindings keep no reference to them)
    buffers = [np.empty_like(value) for value in bound.run(None, feeds)]
    for meta, buffer in zip(bound.get_outputs(), buffers, strict=True):
        binding.bind_ortvalue_output(meta.name, ort.OrtValue.ortvalue_from_numpy(buffer))

    def run_bound() -> list[np.ndarray]:
        bound.run_with_iobinding(binding)
        return buffers

    runs["io_binding"] = run_bound
    timed = time_interleaved(runs, repeats)
    default = timed["default"]["median_ms"]
    out: dict[str, float] = {}
    out["default_p90_ms"], out["default_p99_ms"] = timed["default"]["p90_ms"], timed["default"]["p99_ms"]
    for key, stats in timed.items():
        out[f"{key}_median_ms"] = stats["median_ms"]
        if key != "default":
            out[f"{key}_vs_default_speedup"] = default / stats["median_ms"]
    return out


def bench_ort_settings(repeats: int, ctx: BenchContext | None = None) -> dict[str, object]:
    """ONNX Runtime's settings on the shipped models (CPU): graph optimisation levels, intra-op threads and
    their spinning, the CPU memory arena, the parallel executor and I/O binding, each against the project's
    choice (``default``) in alternating runs. Keys ``seg_*`` (SqueezeSeg + CRF, 64 x 512, street scan)
    and ``det_*`` (SqueezeDet, 1248 x 384, noise frame); ``median_ms`` is the segmenter's default (the
    detector's without a shipped segmenter). Holds one session per setting of a model at a time."""
    from perception.service.settings import DEFAULT_DET_MODEL, DEFAULT_SEG_MODEL
    from perception.sim.analytic import street_range_image

    image, mask = street_range_image()
    models = {"seg": (DEFAULT_SEG_MODEL, {"range_image": image, "mask": mask}),
              "det": (DEFAULT_DET_MODEL, {"image": _random_frame(0)})}  # fmt: skip
    res: dict[str, Any] = {}
    notes = []
    for task, (path, feeds) in models.items():
        if not path.is_file():
            notes.append(f"{task}: no shipped model at {path}")
            continue
        fields = _time_ort_settings(path, feeds, repeats)
        res.update({f"{task}_{key}": value for key, value in fields.items()})
        timed = [k for k in ORT_SETTING_NOTES if f"{k}_vs_default_speedup" in fields]
        faster = [k for k in timed if fields[f"{k}_vs_default_speedup"] > 1.0]
        notes.append(
            f"{task} default {fields['default_median_ms']:.1f} ms; "
            + ", ".join(f"{ORT_SETTING_NOTES[k]} {fields[f'{k}_vs_default_speedup']:.2f}x" for k in timed)
            + f" (above 1: faster than default: {', '.join(faster) or 'none'})"
        )
    main = next((task for task in models if f"{task}_default_median_ms" in res), None)
    if main is None:
        return {"median_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "runs": 0,
                "notes": "skipped: " + "; ".join(notes)}  # fmt: skip
    res.update({k: res[f"{main}_default_{k}"] for k in ("median_ms", "p90_ms", "p99_ms")})
    res["runs"] = repeats
    res["notes"] = "; ".join(notes)
    return res


BENCHMARKS: dict[str, Callable[[int, BenchContext], dict[str, object]]] = {
    "det": bench_det,
    "projection": bench_projection,
    "seg": bench_seg,
    "cluster": bench_clustering,
    "lidar-pipeline": bench_lidar_pipeline,
    "lidar-360": bench_lidar_360,
    "ort-settings": bench_ort_settings,
    "sim": bench_sim,
    "service": bench_service,
}
BENCHMARK_ALIASES: dict[str, str] = {"pipeline": "lidar-pipeline"}
"""Other names that ``perception bench`` accepts for a benchmark."""


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
