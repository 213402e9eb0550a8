"""The ``perception`` command line. Bad input ends with one ``error:`` line and exit code 2."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from perception import KITTI_SAMPLES, __version__

app = typer.Typer(
    name="perception",
    help="Streaming perception for autonomous vehicles: LiDAR segmentation and camera detection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn the errors that bad input raises into one ``error:`` line and exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, (ValueError, OSError)):
                from perception.runtime.session import ModelLoadError

                if not isinstance(exc, ModelLoadError):
                    raise
            err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        console.print(f"perception {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Streaming perception for autonomous vehicles: LiDAR segmentation and camera detection."""


@app.command()
@user_errors
def serve(
    host: Annotated[str | None, typer.Option(help="REST/WebSocket bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="REST/WebSocket port (default 8000; 0 = any free port).")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (default 50051; 0 = any free port).")] = None,
    seg_model: Annotated[str | None, typer.Option(help="SqueezeSeg ONNX model ('none' turns LiDAR off).")] = None,
    det_model: Annotated[str | None, typer.Option(help="SqueezeDet ONNX model ('none' turns camera off).")] = None,
    providers: Annotated[str | None, typer.Option(help="auto (TensorRT -> CUDA -> CPU) or a list.")] = None,
    trt_precision: Annotated[str | None, typer.Option(help="TensorRT precision: fp32, fp16 (default) or int8.")] = None,
    trt_cache_dir: Annotated[str | None, typer.Option(help="TensorRT engine cache (see `export trt`).")] = None,
    precision: Annotated[
        str | None, typer.Option(help="Model files: fp32 (default) or int8 (NAME.int8.onnx, see `quantize`).")
    ] = None,
) -> None:
    """Run the perception service: REST + WebSocket (FastAPI) and gRPC, on the shipped models.

    A live viewer of what the service processes is at http://HOST:PORT/viewer (a browser page, offline).
    Every option can also come from the environment (PERCEPTION_PORT, PERCEPTION_API_KEY, ...).
    """
    from perception.service.server import run_server
    from perception.service.settings import Settings

    options = {"host": host, "port": port, "grpc_port": grpc_port, "seg_model": seg_model, "det_model": det_model,
               "providers": providers, "trt_precision": trt_precision, "trt_cache_dir": trt_cache_dir,
               "precision": precision}  # fmt: skip
    try:
        settings = Settings(**{k: v for k, v in options.items() if v is not None})
    except Exception as exc:  # pydantic's ValidationError: one line per bad field
        raise ValueError(f"bad service settings: {exc}".replace("\n", "; ")) from None
    run_server(settings)


@app.command()
@user_errors
def project(
    scan: Annotated[Path, typer.Argument(help="Point cloud: KITTI .bin, .pcd, .ply or (N, 4) .npy.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output SqueezeSeg tensor (H, W, 6) .npy.")],
    sensor: Annotated[
        str, typer.Option(help="Built-in sensor name (see `perception info`) or a .yaml/.json spec.")
    ] = "kitti-front",
    labels: Annotated[
        Path | None, typer.Option(help="Optional per-point labels (.npy or .label, one int per point).")
    ] = None,
) -> None:
    """Project a raw scan onto a sensor's range image and write a SqueezeSeg-format tensor."""
    import numpy as np

    from perception.io import read_point_cloud, write_squeezeseg_npy
    from perception.io.labels import read_point_labels
    from perception.lidar.projection import points_to_pixels, spherical_project, to_squeezeseg_tensor
    from perception.lidar.sensors import load_sensor

    spec = load_sensor(sensor)
    points = read_point_cloud(scan)
    proj = spherical_project(points, spec)
    pixel_labels = None
    if labels is not None:
        point_labels = read_point_labels(labels, expected=len(points))
        pixel_labels = points_to_pixels(point_labels.astype(np.float32), proj)
    write_squeezeseg_npy(out, to_squeezeseg_tensor(proj, pixel_labels))
    console.print(
        f"{scan}: {proj.num_points} points, {int(proj.in_view.sum())} in view of {spec.name}, "
        f"{proj.num_pixels_filled} of {spec.height * spec.width} pixels filled, "
        f"{proj.num_invalid} invalid dropped -> {out} ({spec.height}, {spec.width}, 6)",
        highlight=False,
    )


@app.command()
@user_errors
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show the built-in sensors and the versions of the runtime libraries."""
    import numpy as np
    import onnxruntime as ort

    from perception.lidar.sensors import SENSORS

    sensors = [
        {
            "name": s.name,
            "rows": s.height,
            "columns": s.width,
            "azimuth_deg": [s.azimuth_left_deg, s.azimuth_right_deg],
            "azimuth_resolution_deg": round(s.azimuth_resolution_deg, 4),
            "vertical_fov_deg": [round(v, 3) for v in s.vertical_fov_deg],
            "max_range_m": s.max_range_m,
            "description": s.description,
        }
        for s in SENSORS.values()
    ]
    libraries = {
        "perception": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
    }
    architectures = _architecture_parameters()
    if as_json:
        print(json.dumps({"libraries": libraries, "sensors": sensors, "architectures": architectures}, indent=2))
        return
    table = Table(title="Sensors")
    for col in ("name", "rows x cols", "azimuth", "res (deg)", "vertical FOV", "range (m)"):
        table.add_column(col)
    for s in sensors:
        table.add_row(
            s["name"],
            f"{s['rows']} x {s['columns']}",
            f"{s['azimuth_deg'][0]:+g}..{s['azimuth_deg'][1]:+g}",
            f"{s['azimuth_resolution_deg']:g}",
            f"{s['vertical_fov_deg'][0]:+.1f}..{s['vertical_fov_deg'][1]:+.1f}",
            f"{s['max_range_m']:g}",
        )
    console.print(table)
    for key, value in libraries.items():
        console.print(f"{key}: {value}", highlight=False)
    if architectures:
        console.print(
            "parameters: " + ", ".join(f"{name} {count:,}" for name, count in architectures.items()), highlight=False
        )
    else:
        console.print("parameters: install the [train] extra (torch) to count them", highlight=False, markup=False)


def _architecture_parameters() -> dict[str, int]:
    """Parameter counts of the model architectures (needs torch; empty without it)."""
    try:
        from perception.training.nets.squeezedet import squeezedet, squeezedet_plus
        from perception.training.nets.squeezeseg import count_parameters, squeezeseg, squeezeseg_without_crf
    except ImportError:
        return {}
    return {
        "squeezeseg+crf": count_parameters(squeezeseg()),
        "squeezeseg": count_parameters(squeezeseg_without_crf()),
        "squeezedet": count_parameters(squeezedet()),
        "squeezedet+": count_parameters(squeezedet_plus()),
    }


@app.command()
@user_errors
def bench(
    target: Annotated[
        str,
        typer.Argument(
            help="What to measure: all, projection, seg, cluster, lidar-pipeline (or pipeline), lidar-360, "
            "ort-settings, det, sim or service."
        ),
    ] = "all",
    repeats: Annotated[int, typer.Option(min=3, help="Timed runs after warm-up.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure speed (median, p90, p99 in ms) on this machine."""
    from perception.bench import BENCHMARK_ALIASES, BENCHMARKS, run_benchmarks

    target = BENCHMARK_ALIASES.get(target, target)
    if target != "all" and target not in BENCHMARKS:
        raise ValueError(
            f"unknown benchmark {target!r}; choose all or one of {', '.join([*BENCHMARKS, *BENCHMARK_ALIASES])}"
        )
    results = run_benchmarks([target] if target != "all" else list(BENCHMARKS), repeats=repeats)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    table = Table(title=f"perception bench ({repeats} runs each)")
    for col in ("benchmark", "median ms", "p90 ms", "p99 ms", "notes"):
        table.add_column(col)
    for name, res in results["benchmarks"].items():
        table.add_row(name, f"{res['median_ms']:.2f}", f"{res['p90_ms']:.2f}", f"{res['p99_ms']:.2f}", res["notes"])
    console.print(table)
    console.print(f"machine: {results['machine']}", highlight=False)
    if "matmul_probe" in results:
        probe = results["matmul_probe"]
        console.print(f"FP32 matmul probe ({probe['size']}^2 float32, {probe['blas']}): "
                      f"{probe['gflops_per_s']:.1f} GFLOP/s", highlight=False)  # fmt: skip


@app.command()
@user_errors
def quantize(
    task: Annotated[str, typer.Argument(help="seg (SqueezeSeg) or det (SqueezeDet).")],
    model: Annotated[Path, typer.Option(help="The FP32 ONNX model.")],
    data: Annotated[
        Path,
        typer.Option(help="Calibration frames: labelled scans (seg, as `eval seg --data`) or KITTI layout (det)."),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="INT8 model (default: beside MODEL as NAME.int8.onnx).")
    ] = None,
    frames: Annotated[int, typer.Option(min=1, help="Calibration frames at most.")] = 32,
    split: Annotated[str | None, typer.Option(help="Calibrate on the frames of ImageSets/SPLIT.txt only.")] = None,
    crf: Annotated[str, typer.Option(help="seg: keep the recurrent CRF in fp32 (default) or quantise it (int8).")] = (
        "fp32"
    ),
    conv_only: Annotated[
        bool, typer.Option("--conv-only", help="Quantise only Conv/ConvTranspose (default: every op ORT can).")
    ] = False,
    reduce_range: Annotated[
        bool, typer.Option("--reduce-range/--full-range", help="7-bit weights: safe on x86 CPUs without VNNI.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """INT8 static quantisation (QDQ, per-channel weights) for ONNX Runtime, calibrated on real frames.

    Writes the INT8 model atomically and a model card beside it (NAME.int8.json / .md). Serve it with
    PERCEPTION_PRECISION=int8, which loads NAME.int8.onnx beside each configured model. Needs the onnx
    package (the train extra).
    """
    from perception.runtime.quantize import calibration_feeds, int8_model_path, quantize_model
    from perception.runtime.session import ModelLoadError

    if task not in ("seg", "det"):
        raise ValueError(f"task must be seg or det, got {task!r}")
    if crf not in ("fp32", "int8"):
        raise ValueError(f"--crf must be fp32 or int8, got {crf!r}")
    if not model.is_file():
        raise ValueError(f"{model}: no such model")
    if not data.is_dir():
        raise ValueError(f"{data}: no such calibration directory")
    target = out if out is not None else int8_model_path(model)
    try:
        feeds = calibration_feeds(task, model, data, split)  # type: ignore[arg-type]
        report = quantize_model(
            model, target, feeds, max_frames=frames, task=task, data=str(data) + (f" (split {split})" if split else ""),
            keep_crf_fp32=crf == "fp32", op_types=["Conv", "ConvTranspose"] if conv_only else None,
            reduce_range=reduce_range,
        )  # fmt: skip
    except ModelLoadError as exc:
        raise ValueError(str(exc)) from None
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    kept = f"; {report.crf_nodes} CRF nodes kept FP32" if report.crf_nodes else ""
    console.print(
        f"wrote {report.out} ({report.int8_bytes / 1e6:.1f} MB, FP32 {report.fp32_bytes / 1e6:.1f} MB): INT8 QDQ, "
        f"{report.qdq_tensors} quantised tensors{kept}; calibrated on {report.frames} frames of {data} in "
        f"{report.seconds:.1f} s; card {report.out.with_suffix('.json')}",
        highlight=False,
    )


@app.command()
@user_errors
def simulate(
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output directory (KITTI layout: velodyne/ ...); needed unless --stats."),
    ] = None,
    frames: Annotated[int, typer.Option(min=1, max=100000, help="Number of frames.")] = 1,
    seed: Annotated[int, typer.Option(help="Dataset seed; each frame's seed is derived from it and its index.")] = 0,
    config: Annotated[str, typer.Option(help="Scene preset (urban, highway) or a YAML/JSON scene config.")] = "urban",
    sensor: Annotated[str, typer.Option(help="Sensor name or spec file.")] = "hdl64e-360",
    camera: Annotated[bool, typer.Option("--camera/--no-camera", help="Render camera frames and 2D labels.")] = True,
    world: Annotated[
        str, typer.Option(help="mesh (open3d ray casting, the train extra) or analytic (numpy boxes, no camera).")
    ] = "mesh",
    workers: Annotated[
        int, typer.Option(min=1, max=256, help="Processes simulating frames in parallel (same output bit for bit).")
    ] = 1,
    stats: Annotated[
        Path | None,
        typer.Option(
            "--stats", help="Generate nothing: compare the squeezeseg/*.npy of this generated set with real scans."
        ),
    ] = None,
    real: Annotated[
        Path | None, typer.Option(help="With --stats: real SqueezeSeg .npy scans (default: ../shared KITTI samples).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="With --stats: print JSON.")] = False,
) -> None:
    """Generate synthetic driving frames: ray-cast LiDAR scans, camera images and KITTI-format labels.

    With --stats DIR it generates nothing and prints the statistics of an existing set (valid pixels of
    the 64 x 512 front view, class shares, range and intensity histograms) beside the real KITTI samples.
    """
    if stats is not None:
        if out is not None:
            raise ValueError("--stats describes an existing set; leave out --out")
        _print_sim_stats(stats, real, as_json)
        return
    if real is not None or as_json:
        raise ValueError("--real and --json go with --stats DIR")
    if out is None:
        raise ValueError("--out is required (or --stats DIR to describe a generated set)")
    from perception.lidar.sensors import load_sensor

    spec = load_sensor(sensor)
    if world == "analytic":
        from perception.io import write_velodyne_bin
        from perception.io.labels import write_point_labels
        from perception.sim.analytic import cast_scan, street_scene

        for k in range(frames):
            scan = cast_scan(spec, street_scene(seed + k), seed=seed + k)
            frame_id = f"{k:06d}"
            write_velodyne_bin(out / "velodyne" / f"{frame_id}.bin", scan.points)
            write_point_labels(out / "labels" / f"{frame_id}.label", scan.labels, scan.instances)
            console.print(f"{frame_id}: {len(scan.points)} points", highlight=False)
        return
    if world != "mesh":
        raise ValueError(f"--world must be mesh or analytic, got {world!r}")
    try:
        from perception.sim.dataset import generate_dataset
    except ImportError as exc:
        raise ValueError(f"the mesh world needs the [train] extra ({exc.name} is not installed)") from None

    def progress(frame) -> None:
        console.print(
            f"{frame.frame_id}: {frame.num_points} points, {len(frame.label_objects)} labelled objects, "
            f"{sum(frame.timings_ms.values()):.0f} ms",
            highlight=False,
        )

    try:
        generate_dataset(
            out, config, frames=frames, seed=seed, sensor=spec, camera=camera, progress=progress, workers=workers
        )
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    console.print(f"wrote {frames} frames to {out} (manifest.json regenerates any of them)", highlight=False)


def _print_sim_stats(generated_dir: Path, real_dir: Path | None, as_json: bool) -> None:
    """``simulate --stats``: statistics of a generated set beside the real samples (a Markdown table or JSON)."""
    from perception.sim.stats import compare_statistics, directory_statistics, format_comparison

    generated = directory_statistics(generated_dir)
    real, note = None, None
    if real_dir is not None:
        real = directory_statistics(real_dir)
    elif KITTI_SAMPLES.is_dir() and any(KITTI_SAMPLES.glob("*.npy")):
        real = directory_statistics(KITTI_SAMPLES)
    else:
        note = f"real samples not found at {KITTI_SAMPLES} (pass --real DIR); generated set only"
    if as_json:
        print(json.dumps({**compare_statistics(generated, real), "note": note}, indent=1))
        return
    names = (f"generated ({generated_dir.name})", f"real ({Path(real['dir']).name})" if real else "real")
    print(format_comparison(generated, real, names))
    if note:
        print(f"\n{note}")


DEFAULT_SEG_MODEL = Path("models/squeezeseg_kitti-front.onnx")


def read_scan_points(path: Path):
    """Points (N, 4) from a raw scan, or from the valid pixels of a SqueezeSeg (H, W, 6) tensor."""
    from perception.io import read_point_cloud, read_squeezeseg_npy
    from perception.io.squeezeseg import read_npy_array, split_squeezeseg
    from perception.lidar.projection import range_image_to_points

    if path.suffix.lower() == ".npy" and read_npy_array(path).ndim == 3:
        image, mask, _ = split_squeezeseg(read_squeezeseg_npy(path))
        return range_image_to_points(image, mask)
    return read_point_cloud(path)


@app.command()
@user_errors
def segment(
    scan: Annotated[Path, typer.Argument(help="KITTI .bin, SqueezeSeg .npy (H, W, 6), (N, 4) .npy, .pcd or .ply.")],
    model: Annotated[Path, typer.Option(help="SqueezeSeg ONNX model.")] = DEFAULT_SEG_MODEL,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write labels and instances as JSON.")] = None,
    png_out: Annotated[Path | None, typer.Option("--png", help="Write the range image coloured by class.")] = None,
    providers: Annotated[str, typer.Option(help="auto (TensorRT -> CUDA -> CPU) or a list like cuda,cpu.")] = "auto",
) -> None:
    """Label every point of a scan with SqueezeSeg (+ CRF) and group labelled points into instances."""
    import time

    from perception.io import write_image
    from perception.io.common import atomic_write_text
    from perception.lidar.clustering import cluster_instances, instance_ids_per_point
    from perception.runtime.segmenter import Segmenter
    from perception.viz.range_view import colourise_labels

    if not model.is_file():
        raise ValueError(f"{model}: no such model; export one with `perception export seg --out {model}`")
    points = read_scan_points(scan)
    segmenter = Segmenter(model, providers=providers)
    result = segmenter.segment(points)
    t0 = time.perf_counter()
    instances = cluster_instances(points, result.labels, result.projection, scores=result.scores)
    timings = {**result.timings_ms, "clustering": (time.perf_counter() - t0) * 1e3}
    counts = result.class_counts()
    console.print(
        f"{scan}: {len(points)} points, {int(result.projection.in_view.sum())} in view; "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f"; {len(instances)} instances; {result.provider}; "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()),
        highlight=False,
    )
    for inst in instances:
        b = inst.box
        console.print(
            f"  #{inst.id} {inst.class_name}: {inst.num_points} pts, centre ({b.x:.1f}, {b.y:.1f}, {b.z:.1f}) m, "
            f"{b.length:.1f} x {b.width:.1f} x {b.height:.1f} m, yaw {b.yaw:+.2f} rad, score {inst.score:.2f}",
            highlight=False,
        )
    if json_out is not None:
        doc = {
            "scan": str(scan),
            "model": str(model),
            "provider": result.provider,
            "sensor": segmenter.sensor.name,
            "num_points": len(points),
            "num_invalid": result.projection.num_invalid,
            "num_out_of_view": result.projection.num_out_of_view,
            "classes": list(result.classes),
            "class_counts": counts,
            "timings_ms": timings,
            "instances": [inst.to_dict() for inst in instances],
            "labels": result.labels.tolist(),
            "instance_ids": instance_ids_per_point(instances, len(points)).tolist(),
            "scores": [round(float(v), 4) for v in result.scores],
        }
        atomic_write_text(json_out, json.dumps(doc))
    if png_out is not None:
        write_image(png_out, colourise_labels(result.pixel_labels, result.projection.mask))


DEFAULT_DET_MODEL = Path("models/squeezedet.onnx")


@app.command()
@user_errors
def detect(
    image: Annotated[Path, typer.Argument(help="Camera frame: PNG or JPEG.")],
    model: Annotated[Path, typer.Option(help="SqueezeDet ONNX model.")] = DEFAULT_DET_MODEL,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write detections as JSON.")] = None,
    png_out: Annotated[Path | None, typer.Option("--png", help="Write the frame with boxes drawn.")] = None,
    kitti_out: Annotated[Path | None, typer.Option("--kitti", help="Write a KITTI result file (16 fields).")] = None,
    plot_threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Score threshold for printing/drawing.")
    ] = 0.4,
    providers: Annotated[str, typer.Option(help="auto (TensorRT -> CUDA -> CPU) or a list like cuda,cpu.")] = "auto",
) -> None:
    """Detect cars, pedestrians and cyclists in a camera frame with SqueezeDet."""
    from perception.io import read_image, write_image, write_label
    from perception.io.common import atomic_write_text
    from perception.runtime.detector import Detector
    from perception.viz.camera_view import draw_detections

    if not model.is_file():
        raise ValueError(f"{model}: no such model; export one with `perception export det --out {model}`")
    frame = read_image(image)
    detector = Detector(model, providers=providers)
    result = detector.detect(frame)
    shown = [d for d in result.detections if d.score >= plot_threshold]
    console.print(
        f"{image}: {frame.shape[1]} x {frame.shape[0]}; {len(result.detections)} detections, {len(shown)} with "
        f"score >= {plot_threshold}; {result.provider}; "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings_ms.items()),
        highlight=False,
    )
    for det in shown:
        console.print(
            f"  {det.class_name} {det.score:.2f} ({det.x1:.0f}, {det.y1:.0f}, {det.x2:.0f}, {det.y2:.0f})",
            highlight=False,
        )
    if json_out is not None:
        doc = {
            "image": str(image),
            "model": str(model),
            "provider": result.provider,
            "image_size": list(result.image_size),
            "timings_ms": result.timings_ms,
            "detections": [d.to_dict() for d in result.detections],
        }
        atomic_write_text(json_out, json.dumps(doc, indent=1))
    if kitti_out is not None:
        write_label(kitti_out, [d.to_kitti() for d in result.detections])
    if png_out is not None:
        write_image(png_out, draw_detections(frame, shown))


@app.command()
@user_errors
def train(
    task: Annotated[str, typer.Argument(help="seg (SqueezeSeg) or det (SqueezeDet).")],
    data: Annotated[Path, typer.Option(help="Training data: KITTI layout, simulator output or SqueezeSeg .npy dir.")],
    config: Annotated[Path | None, typer.Option(help="YAML with TrainConfig fields (CLI options win).")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (checkpoints, metrics).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/checkpoints/last.pt.")] = False,
) -> None:
    """Train SqueezeSeg or SqueezeDet (needs the train extra); Ctrl-C saves a checkpoint and stops."""
    try:
        from perception.training.train import TrainConfig
        from perception.training.train import train as run_training
    except ImportError as exc:
        raise ValueError(f"training needs the [train] extra ({exc.name} is not installed)") from None
    if task not in ("seg", "det"):
        raise ValueError(f"task must be seg or det, got {task!r}")
    overrides = {"task": task, "data": str(data), "steps": steps, "batch_size": batch_size,
                 "out": str(out) if out else None, "device": device}  # fmt: skip
    if config is not None:
        cfg = TrainConfig.from_file(config, **overrides)
    else:
        cfg = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    if out is None and config is None:
        cfg.out = f"runs/{task}"
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console) as bar:  # fmt: skip
        job = bar.add_task(f"train {task}", total=cfg.steps, info="")

        def progress(step: int, row: dict[str, float]) -> None:
            info = f"loss {row['loss_total']:.3f} lr {row['lr']:.4f} {row['frames_per_s']:.1f} frames/s"
            bar.update(job, completed=step, info=info)

        summary = run_training(cfg, resume=resume, progress=progress)
    state = "stopped by signal" if summary["interrupted_by_signal"] else "done"
    console.print(
        f"{state} at step {summary['step']}: {summary['frames_per_s']:.2f} frames/s; "
        f"checkpoints in {cfg.out}/checkpoints; last validation {summary['val_metrics']}",
        highlight=False,
    )


data_app = typer.Typer(help="Convert datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("kitti-to-squeezeseg")
@user_errors
def data_kitti_to_squeezeseg(
    data: Annotated[Path, typer.Option(help="KITTI object layout: velodyne/, label_2/, calib/.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (squeezeseg/*.npy, ImageSets/all.txt).")],
    sensor: Annotated[str, typer.Option(help="Sensor name or spec file.")] = "kitti-front",
    split: Annotated[
        str | None, typer.Option(help="Only the frames of ImageSets/SPLIT.txt, or of a .txt file of frame ids.")
    ] = None,
    outside_camera: Annotated[
        str, typer.Option(help="ignore: points the camera does not see are label -1 (KITTI labels no object "
                          "there); background: label them 0 (as the evaluation protocol scores them).")
    ] = "ignore",
) -> None:
    """KITTI object scans as SqueezeSeg .npy training frames, point labels from the 3D boxes.

    Labels: 1 car, 2 pedestrian, 3 cyclist inside those boxes, -1 (not scored) in Van, Truck, Tram, Misc,
    Person_sitting boxes and DontCare regions, 0 elsewhere. Files are written atomically.
    """
    from perception.lidar.box_labels import write_squeezeseg_frames
    from perception.lidar.sensors import load_sensor

    if outside_camera not in ("ignore", "background"):
        raise ValueError(f"--outside-camera must be ignore or background, got {outside_camera!r}")
    if not (data / "velodyne").is_dir():
        raise ValueError(f"{data}: has no velodyne/ directory (KITTI object layout)")
    spec = load_sensor(sensor)
    written = write_squeezeseg_frames(data, out, spec, split, ignore_outside_camera=outside_camera == "ignore")
    where = out / "squeezeseg"
    console.print(f"wrote {len(written)} frames ({spec.height} x {spec.width}) to {where}", highlight=False)


eval_app = typer.Typer(help="Evaluate predictions or models.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("det")
@user_errors
def eval_det(
    gt: Annotated[Path | None, typer.Option("--gt", help="Ground-truth label_2 directory (with --pred).")] = None,
    pred: Annotated[
        Path | None, typer.Option("--pred", help="Predictions: KITTI result files (16 fields) per frame.")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="KITTI layout (image_2/ + label_2/) to run --model on, instead of --gt/--pred.")
    ] = None,
    model: Annotated[Path, typer.Option(help="SqueezeDet ONNX model (with --data).")] = DEFAULT_DET_MODEL,
    split: Annotated[str | None, typer.Option(help="With --data: only the frames of ImageSets/SPLIT.txt.")] = None,
    metric: Annotated[str, typer.Option(help="R40 (the benchmark's since 2019) or 11 (older tables).")] = "R40",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    card: Annotated[str | None, typer.Option(help="With --data: record the result in the model card.")] = None,
    providers: Annotated[str, typer.Option(help="auto or a list like cuda,cpu.")] = "auto",
) -> None:
    """KITTI 2D object detection AP (official protocol) for car, pedestrian and cyclist.

    Either score result files (--gt LABEL_DIR --pred RESULT_DIR) or run a model on a dataset (--data DIR).
    """
    from perception.evaluation.kitti_object import evaluate_kitti_2d, format_results, load_label_dir

    if metric not in ("R40", "11"):
        raise ValueError(f"--metric must be R40 or 11, got {metric!r}")
    if data is not None:
        if gt is not None or pred is not None:
            raise ValueError("give either --data (and --model) or --gt and --pred, not both")
        from perception.evaluation.detection import evaluate_detector
        from perception.evaluation.model_card import add_metrics
        from perception.runtime.detector import Detector

        if not model.is_file():
            raise ValueError(f"{model}: no such model")
        if not data.is_dir():
            raise ValueError(f"{data}: not a directory")
        scores = evaluate_detector(Detector(model, providers=providers), data, split, metric)  # type: ignore[arg-type]
        results = scores.results
        if card:
            command = f"perception eval det --data {data} --model {model} --metric {metric}" + (
                f" --split {split}" if split else ""
            )
            boxes = ", ".join(f"{n} {k}" for k, n in sorted(scores.ground_truth.items()))
            add_metrics(model, card, scores.table(), command, f"{data} ({scores.frames} frames; {boxes})")
        frames = scores.frames
    else:
        if gt is None or pred is None:
            raise ValueError("give --gt LABEL_DIR and --pred RESULT_DIR, or --data DIR with --model")
        if not gt.is_dir():
            raise ValueError(f"{gt}: not a directory of KITTI label files")
        if not pred.is_dir():
            raise ValueError(f"{pred}: not a directory of KITTI result files")
        ground_truth = load_label_dir(gt)
        if not ground_truth:
            raise ValueError(f"{gt}: holds no .txt label files")
        predictions = load_label_dir(pred, frame_ids=list(ground_truth))
        results = evaluate_kitti_2d(ground_truth, predictions, metric=metric)  # type: ignore[arg-type]
        frames = len(ground_truth)
    if as_json:
        print(json.dumps({**results, "frames": frames}))
    else:
        console.print(format_results(results), highlight=False)
        console.print(f"{frames} frames", highlight=False)


@eval_app.command("seg")
@user_errors
def eval_seg(
    data: Annotated[
        Path,
        typer.Option(
            help="SqueezeSeg .npy directory, or KITTI layout: velodyne/ with labels/ (per point) or with "
            "label_2/ + calib/ (KITTI object boxes: the SqueezeSeg paper's box-to-point labels)."
        ),
    ],
    model: Annotated[Path, typer.Option(help="SqueezeSeg ONNX model.")] = DEFAULT_SEG_MODEL,
    split: Annotated[
        str | None, typer.Option(help="Only the frames of ImageSets/SPLIT.txt, or of a .txt file of frame ids.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    card: Annotated[str | None, typer.Option(help="Record the result in the model card under this name.")] = None,
    providers: Annotated[str, typer.Option(help="auto or a list like cuda,cpu.")] = "auto",
) -> None:
    """Per-class IoU, precision and recall (percent) of a segmentation model on labelled scans.

    Points in the sensor's field of view are scored (front 90 deg for kitti-front); with KITTI boxes, a
    point in a Car / Pedestrian / Cyclist box is that class, points in Van, Truck, Tram, Misc,
    Person_sitting boxes and DontCare regions are not scored, everything else is background.
    """
    from perception.evaluation.model_card import add_metrics
    from perception.evaluation.segmentation import evaluate_segmenter
    from perception.runtime.segmenter import Segmenter

    if not model.is_file():
        raise ValueError(f"{model}: no such model")
    scores = evaluate_segmenter(Segmenter(model, providers=providers), data, split)
    table = scores.per_class()
    if card:
        command = f"perception eval seg --data {data} --model {model}" + (f" --split {split}" if split else "")
        add_metrics(model, card, table, command, f"{data} ({scores.frames} scans, {scores.points} points)")
    if as_json:
        doc = {"classes": table, "frames": scores.frames, "points": scores.points, "ignored_points": scores.ignored}
        print(json.dumps(doc))
        return
    title = f"{model.name} on {data} ({scores.frames} scans, {scores.points} points scored"
    out = Table(title=title + (f", {scores.ignored} not scored)" if scores.ignored else ")"))
    for col in ("class", "IoU %", "precision %", "recall %", "points"):
        out.add_column(col)
    for name, row in table.items():
        out.add_row(name, *(f"{row[k]:.1f}" for k in ("iou", "precision", "recall")), str(row["points"]))
    console.print(out)


export_app = typer.Typer(
    help="Export trained models to ONNX (needs the train extra); build TensorRT engines (trt).", no_args_is_help=True
)
app.add_typer(export_app, name="export")


def _check_block(block: str | None) -> None:
    """A one-line error for an unknown ``--block`` (the [train] extra is installed by then)."""
    from perception.training.nets.blocks import BLOCKS

    if block is not None and block not in BLOCKS:
        raise ValueError(f"--block must be {', '.join(BLOCKS)}, got {block!r}")


@export_app.command("seg")
@user_errors
def export_seg(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .onnx file.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Trained weights: a trainer checkpoint (.pt), or a segmentation model exported by this project "
            "(.onnx; its CRF and blocks as recorded in it, e.g. to export the shipped model for another sensor). "
            "Without it: fresh weights from --seed."
        ),
    ] = None,
    sensor: Annotated[str, typer.Option(help="Sensor the model runs on (fixes H x W).")] = "kitti-front",
    crf: Annotated[bool, typer.Option("--crf/--no-crf", help="Include the recurrent CRF.")] = True,
    crf_iterations: Annotated[int, typer.Option(min=1, max=10)] = 3,
    crf_window: Annotated[str, typer.Option(help="CRF window, rows x columns, e.g. 3x5.")] = "3x5",
    opset: Annotated[int, typer.Option(min=17)] = 17,
    seed: Annotated[int, typer.Option(help="Seed for fresh weights.")] = 0,
    block: Annotated[
        str | None,
        typer.Option(help="Encoder blocks for fresh weights: fire, squeezenext or shift (default: the checkpoint's)."),
    ] = None,
) -> None:
    """Export SqueezeSeg (+ CRF) to ONNX; check torch vs ONNX Runtime on a random input and a street scan."""
    import numpy as np

    from perception.lidar.sensors import load_sensor
    from perception.sim.analytic import street_range_image

    try:
        from perception.training.export import (
            build_segmentation_model,
            export_segmentation_onnx,
            logit_agreement,
            logit_tolerance,
            write_export_card,
        )
    except ImportError as exc:
        raise ValueError(f"export needs the [train] extra ({exc.name} is not installed)") from None
    try:
        kh, kw = (int(v) for v in crf_window.lower().split("x"))
    except ValueError:
        raise ValueError(f"--crf-window must look like 3x5, got {crf_window!r}") from None
    spec = load_sensor(sensor)
    _check_block(block)
    model = build_segmentation_model(
        checkpoint, crf=crf, crf_iterations=crf_iterations, crf_window=(kh, kw), seed=seed, block=block
    )
    metadata = {"weights": str(checkpoint) if checkpoint else f"freshly initialised (seed {seed}), untrained"}
    checking = out.with_name(f".{out.stem}.checking.onnx")  # checked before it replaces anything at --out
    try:
        export_segmentation_onnx(model, checking, spec, opset=opset, metadata=metadata)
        rng = np.random.default_rng(seed)
        random_input = (
            (rng.normal(size=(1, 5, *spec.shape)) * 10).astype(np.float32),
            (rng.random((1, 1, *spec.shape)) > 0.1).astype(np.float32),
        )
        inputs = {"random": random_input, "street scan": street_range_image(spec)}
        report = []
        for name, (image, mask) in inputs.items():
            diff, scale = logit_agreement(model, checking, image, mask)
            tolerance = logit_tolerance(scale)
            report.append(f"{name} {diff:.2e} (max |logit| {scale:.1f})")
            if diff > tolerance:
                raise ValueError(f"ONNX Runtime output differs from torch by {diff:.2e} on the {name} input "
                                 f"(> {tolerance:.1e}); {out} left unchanged")  # fmt: skip
        os.replace(checking, out)
    finally:
        checking.unlink(missing_ok=True)
    arch = "SqueezeSeg" + ("" if model.block == "fire" else f" ({model.block} blocks)")
    if model.crf is not None:
        arch += f" + recurrent CRF ({model.crf.iterations} iterations, {model.crf.window[0]}x{model.crf.window[1]})"
    write_export_card(model, out, "segmentation", arch, f"range image 5 x {spec.height} x {spec.width} ({spec.name})",
                      opset, checkpoint)  # fmt: skip
    console.print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {opset}); "
        f"torch vs ONNX Runtime max |logit diff|: {'; '.join(report)}",
        highlight=False,
    )


@export_app.command("det")
@user_errors
def export_det(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .onnx file.")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="Trained weights (state dict). Without it: fresh weights from --seed.")
    ] = None,
    variant: Annotated[str, typer.Option(help="squeezedet or squeezedet+.")] = "squeezedet",
    opset: Annotated[int, typer.Option(min=17)] = 17,
    seed: Annotated[int, typer.Option(help="Seed for fresh weights.")] = 0,
    block: Annotated[
        str | None,
        typer.Option(help="Encoder blocks for fresh weights: fire, squeezenext or shift (default: the checkpoint's)."),
    ] = None,
) -> None:
    """Export SqueezeDet / SqueezeDet+ to ONNX and check torch vs ONNX Runtime on a random frame."""
    import numpy as np

    try:
        from perception.training.export import (
            build_detection_model,
            compare_detection_with_onnxruntime,
            export_detection_onnx,
            write_export_card,
        )
    except ImportError as exc:
        raise ValueError(f"export needs the [train] extra ({exc.name} is not installed)") from None
    _check_block(block)
    model = build_detection_model(variant, checkpoint, seed=seed, block=block)
    metadata = {"weights": str(checkpoint) if checkpoint else f"freshly initialised (seed {seed}), untrained"}
    path = export_detection_onnx(model, out, opset=opset, metadata=metadata)
    arch = model.variant.name + ("" if model.block == "fire" else f" ({model.block} blocks)")
    write_export_card(model, path, "detection", arch, "RGB image 3 x 384 x 1248", opset, checkpoint)
    image = (np.random.default_rng(seed).random((1, 3, 384, 1248)) * 255).astype(np.float32)
    diff = compare_detection_with_onnxruntime(model, path, image)
    console.print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {opset}); "
        f"torch vs ONNX Runtime max |diff| = {diff:.2e}",
        highlight=False,
    )
    if diff > 1e-4:
        raise ValueError(f"ONNX Runtime output differs from torch by {diff:.2e} (> 1e-4)")


DEMO_OUT = Path("out/demo")
DEMO_KITTI = KITTI_SAMPLES
DEMO_RUNS = Path("runs")


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the pictures and index.html.")] = DEMO_OUT,
    seg_model: Annotated[Path, typer.Option(help="SqueezeSeg ONNX model.")] = DEFAULT_SEG_MODEL,
    det_model: Annotated[Path, typer.Option(help="SqueezeDet ONNX model.")] = DEFAULT_DET_MODEL,
    data: Annotated[
        list[Path] | None, typer.Option(help="KITTI-layout folder (repeatable; default sim_data/sample).")
    ] = None,
    kitti_samples: Annotated[
        Path, typer.Option(help="Real KITTI samples (*.npy, *.png); skipped when absent.")
    ] = DEMO_KITTI,
    runs: Annotated[Path, typer.Option(help="Training runs (<run>/metrics.jsonl); skipped when absent.")] = DEMO_RUNS,
    docs: Annotated[Path | None, typer.Option(help="Also copy the first frame's pictures here (docs/images).")] = None,
    max_frames: Annotated[int, typer.Option(min=1, help="Frames per data folder at most.")] = 3,
    plot_threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Draw detections with this score.")] = 0.4,
    providers: Annotated[str, typer.Option(help="auto (TensorRT -> CUDA -> CPU) or a list like cuda,cpu.")] = "auto",
) -> None:
    """Run the shipped models on the bundled sample and write pictures + an HTML report (start here)."""
    from perception.viz.demo import run_demo

    def say(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    result = run_demo(
        out_dir=out, seg_model=seg_model, det_model=det_model, data=data or [Path("sim_data/sample")],
        kitti_samples=kitti_samples, runs=runs, providers=providers, plot_threshold=plot_threshold,
        max_frames=max_frames, docs_dir=docs, say=say,
    )  # fmt: skip
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    console.print(f"open {result.index} ({len(result.all_pictures)} pictures)", highlight=False, soft_wrap=True)


@export_app.command("trt")
@user_errors
def export_trt(
    cache_dir: Annotated[
        Path, typer.Option(help="Engine + timing cache directory (PERCEPTION_TRT_CACHE_DIR of serve).")
    ],
    seg_model: Annotated[str, typer.Option(help="SqueezeSeg ONNX model ('none': skip).")] = str(DEFAULT_SEG_MODEL),
    det_model: Annotated[str, typer.Option(help="SqueezeDet ONNX model ('none': skip).")] = str(DEFAULT_DET_MODEL),
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8.")] = "fp16",
    workspace_mb: Annotated[int, typer.Option(min=1, help="TensorRT builder workspace, MiB.")] = 2048,
    calibration_seg: Annotated[
        Path | None, typer.Option(help="int8: labelled scans (as eval seg --data) to calibrate SqueezeSeg on.")
    ] = None,
    calibration_det: Annotated[
        Path | None, typer.Option(help="int8: KITTI layout (image_2/) to calibrate SqueezeDet on.")
    ] = None,
    calibration_frames: Annotated[int, typer.Option(min=1, help="int8: calibration frames per model.")] = 64,
    calibration_split: Annotated[str | None, typer.Option(help="int8: calibrate on ImageSets/SPLIT.txt.")] = None,
    check_seg: Annotated[
        Path | None, typer.Option(help="Held-out labelled scans: compare per-class IoU with FP32 on the CPU.")
    ] = None,
    check_det: Annotated[
        Path | None, typer.Option(help="Held-out KITTI layout (image_2/ + label_2/): compare AP with FP32 on the CPU.")
    ] = None,
    check_split: Annotated[str | None, typer.Option(help="Check only the frames of ImageSets/SPLIT.txt.")] = None,
    max_drop: Annotated[
        float | None, typer.Option(help="Largest allowed per-class IoU/AP drop, points (default fp16 1.0, int8 2.0).")
    ] = None,
    providers: Annotated[
        str, typer.Option(help="Candidate providers; tensorrt builds engines, others only run the check.")
    ] = "tensorrt",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Build and cache TensorRT engines ahead of time, and check FP16/INT8 accuracy against FP32.

    Run it on the vehicle computer (engines are specific to GPU, TensorRT version and precision), then
    serve with the same --cache-dir and precision: starts only load the engines. INT8 needs a calibration
    table per model in the cache: --calibration-seg/--calibration-det make them from real frames (needs
    onnx, of the train extra; works with --providers cpu, so tables can be made off the vehicle).
    With --check-seg/--check-det the candidate and FP32 on the CPU run on the same held-out frames (for a
    NAME.int8.onnx model of `perception quantize`, FP32 is NAME.onnx beside it); the command fails (exit 1)
    when a class drops by more than --max-drop points.
    """
    from perception.runtime.detector import Detector
    from perception.runtime.segmenter import Segmenter
    from perception.runtime.session import PRECISIONS, QDQ_SUFFIX, TensorRTOptions, parse_provider_preference
    from perception.runtime.trt import (
        MAX_DROP_PP,
        build_engines,
        calibrate_int8,
        check_detection,
        check_segmentation,
        detection_feeds,
        require_tensorrt,
        segmentation_feeds,
    )

    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    models: dict[str, Path] = {}
    for stage, value in (("lidar", seg_model), ("camera", det_model)):
        if value.strip().lower() not in ("", "none"):
            models[stage] = Path(value)
            if not models[stage].is_file():
                raise ValueError(f"{value}: no such model")
    if not models:
        raise ValueError("nothing to do: both --seg-model and --det-model are none")
    wanted = parse_provider_preference(providers)
    on_trt = wanted[0] == "TensorrtExecutionProvider"
    if on_trt:
        require_tensorrt()
    options = TensorRTOptions(precision=precision, cache_dir=cache_dir, workspace_mb=workspace_mb)  # type: ignore[arg-type]
    report: dict[str, object] = {"precision": precision, "cache_dir": str(cache_dir), "providers": providers}
    if precision == "int8":
        sources = {"lidar": calibration_seg, "camera": calibration_det}
        for stage, path in models.items():
            table = options.calibration_table(path)
            if sources[stage] is None and not (table is not None and table.is_file()):
                flag = "--calibration-seg" if stage == "lidar" else "--calibration-det"
                raise ValueError(f"--precision int8 needs {flag} DIR to calibrate {path.name} (or a table at {table})")
        for stage, path in models.items():
            if sources[stage] is None:
                continue  # its table is already in the cache
            if stage == "lidar":
                feeds = segmentation_feeds(Segmenter(path, providers="cpu"), sources[stage], calibration_split)  # type: ignore[arg-type]
            else:
                feeds = detection_feeds(Detector(path, providers="cpu"), sources[stage], calibration_split)  # type: ignore[arg-type]
            table = calibrate_int8(path, feeds, options, calibration_frames)
            report.setdefault("calibration_tables", []).append(str(table))  # type: ignore[union-attr]
            if not as_json:
                console.print(f"{path.name}: INT8 calibration table {table}", highlight=False)
    if on_trt:
        builds = build_engines(list(models.values()), options)
        report["engines"] = [b.to_dict() for b in builds]
        for b in builds if not as_json else []:
            console.print(f"{b.model.name}: {b.provider} {b.precision} ready, first run {b.first_run_s:.1f} s, "
                          f"{len(b.cache_files)} new cache files in {cache_dir}", highlight=False)  # fmt: skip
    limit = MAX_DROP_PP[precision] if max_drop is None else max_drop
    checks = []

    def fp32_of(path: Path) -> Path:  # a QDQ model (perception quantize) is checked against its FP32 original
        original = path.with_name(path.name[: -len(QDQ_SUFFIX)] + ".onnx")
        return original if path.name.endswith(QDQ_SUFFIX) and original.is_file() else path

    if check_seg is not None and "lidar" in models:
        path = models["lidar"]
        reference = Segmenter(fp32_of(path), providers="cpu")
        candidate = Segmenter(path, providers=providers, tensorrt=options)
        checks.append(check_segmentation(reference, candidate, check_seg, check_split, precision, limit))
    if check_det is not None and "camera" in models:
        path = models["camera"]
        reference_det = Detector(fp32_of(path), providers="cpu")
        candidate_det = Detector(path, providers=providers, tensorrt=options)
        checks.append(check_detection(reference_det, candidate_det, check_det, check_split, precision, limit))
    for check in checks:
        if check.candidate_provider != wanted[0]:
            raise ValueError(f"the check asked for {wanted[0]} but the candidate ran on {check.candidate_provider}")
    report["checks"] = [c.to_dict() for c in checks]
    if as_json:
        print(json.dumps(report))
    for check in checks:
        if not as_json:
            title = (
                f"{check.stage}: {check.metric}, {check.frames} frames, {check.reference_provider} FP32 vs "
                f"{check.candidate_provider} {check.precision} (max drop {check.max_drop_pp:g})"
            )
            out = Table(title=title)
            for col in ("class", "FP32", check.precision, "drop"):
                out.add_column(col)
            for name, ref in check.reference.items():
                cand, drop = check.candidate.get(name), check.drops[name]
                out.add_row(name, *("-" if v is None else f"{v:.2f}" for v in (ref, cand, drop)))
            console.print(out)
    failed = [c for c in checks if not c.passed]
    if failed:
        for c in failed:
            err_console.print(f"error: {c.stage} {c.precision} drops {c.worst_drop:.2f} points of {c.metric}, more "
                              f"than the allowed {c.max_drop_pp:g}", markup=False, highlight=False)  # fmt: skip
        raise typer.Exit(code=1)


# --- ROS (the [ros] extra: roslibpy, rosbags; both imported only when a command runs) ------------------

ROS_OUTPUT_TOPIC_OPTIONS = "Output topic ('' turns it off)."


@app.command()
@user_errors
def ros(
    rosbridge: Annotated[str, typer.Option(help="rosbridge WebSocket URL, e.g. ws://localhost:9090.")],
    lidar_topic: Annotated[str | None, typer.Option(help="sensor_msgs/PointCloud2 topic.")] = None,
    camera_topic: Annotated[str | None, typer.Option(help="sensor_msgs/Image or CompressedImage topic.")] = None,
    camera_type: Annotated[
        str, typer.Option(help="auto (CompressedImage when the topic ends in /compressed), raw or compressed.")
    ] = "auto",
    ros_version: Annotated[int, typer.Option(help="1 or 2: message layouts and type names.")] = 2,
    type_name: Annotated[
        list[str] | None, typer.Option(help="Type name override KEY=TYPE, e.g. sensor_msgs/Image=my/Image; repeatable.")
    ] = None,
    service: Annotated[
        str | None, typer.Option(help="Run frames on the perception service (grpc://HOST:PORT or http://...).")
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="API key of the service.")] = None,
    seg_model: Annotated[Path, typer.Option(help="SqueezeSeg ONNX model (in-process).")] = DEFAULT_SEG_MODEL,
    det_model: Annotated[Path, typer.Option(help="SqueezeDet ONNX model (in-process).")] = DEFAULT_DET_MODEL,
    providers: Annotated[str, typer.Option(help="auto (TensorRT -> CUDA -> CPU) or a list like cuda,cpu.")] = "auto",
    detections_2d_topic: Annotated[str, typer.Option(help=ROS_OUTPUT_TOPIC_OPTIONS)] = "/perception/detections_2d",
    detections_3d_topic: Annotated[str, typer.Option(help=ROS_OUTPUT_TOPIC_OPTIONS)] = "/perception/detections_3d",
    points_topic: Annotated[str, typer.Option(help=ROS_OUTPUT_TOPIC_OPTIONS)] = "/perception/labelled_points",
    markers_topic: Annotated[str, typer.Option(help=ROS_OUTPUT_TOPIC_OPTIONS)] = "/perception/markers",
    lidar_frame: Annotated[str | None, typer.Option(help="Frame id of LiDAR outputs (default: the scan's).")] = None,
    camera_frame: Annotated[str | None, typer.Option(help="Frame id of camera outputs (default: the image's).")] = None,
    pair_tolerance: Annotated[float, typer.Option(help="Largest scan-image stamp gap (s).")] = 0.05,
    max_age: Annotated[float, typer.Option(help="Drop frames older than this (s since arrival).")] = 1.0,
    queue_size: Annotated[int, typer.Option(help="Frames waiting for the pipeline; the oldest is dropped.")] = 2,
    reconnect_min: Annotated[float, typer.Option(help="First reconnection delay (s).")] = 0.5,
    reconnect_max: Annotated[float, typer.Option(help="Largest reconnection delay (s).")] = 10.0,
    intensity_scale: Annotated[str, typer.Option(help="auto, or a factor that maps intensity to [0, 1].")] = "auto",
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    max_frames: Annotated[int | None, typer.Option(help="Stop after this many frames.")] = None,
    stats_every: Annotated[float, typer.Option(help="Log the counters every N seconds (0: never).")] = 30.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run perception on ROS topics through a rosbridge server (ROS 1 or ROS 2) and publish the results."""
    from perception.ros.commands import configure_logging, output_topics, run_ros

    configure_logging(log_level)
    stats = run_ros(
        rosbridge=rosbridge, lidar_topic=lidar_topic, camera_topic=camera_topic, camera_type=camera_type,
        ros_version=ros_version, type_names=type_name or [],
        topics=output_topics(detections_2d_topic, detections_3d_topic, points_topic, markers_topic),
        lidar_frame=lidar_frame, camera_frame=camera_frame, pair_tolerance=pair_tolerance, max_age=max_age,
        queue_size=queue_size, reconnect_min=reconnect_min, reconnect_max=reconnect_max,
        intensity_scale=intensity_scale,
        processor_args={"seg_model": seg_model, "det_model": det_model, "providers": providers, "service": service,
                        "api_key": api_key},
        duration=duration, max_frames=max_frames, stats_every=stats_every,
    )  # fmt: skip
    console.print(", ".join(f"{k} {v}" for k, v in stats.items()), highlight=False)


@app.command()
@user_errors
def replay(
    bag: Annotated[Path, typer.Argument(help="ROS 1 .bag file or ROS 2 bag directory (sqlite3 or MCAP).")],
    out: Annotated[Path | None, typer.Option(help="Write the results to this new bag (.bag for ROS 1).")] = None,
    lidar_topic: Annotated[str | None, typer.Option(help="PointCloud2 topic (default: the bag's only one).")] = None,
    camera_topic: Annotated[
        str | None, typer.Option(help="Image/CompressedImage topic (default: the only one).")
    ] = None,
    service: Annotated[
        str | None, typer.Option(help="Run frames on the perception service (grpc://HOST:PORT or http://...).")
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="API key of the service.")] = None,
    seg_model: Annotated[Path, typer.Option(help="SqueezeSeg ONNX model (in-process).")] = DEFAULT_SEG_MODEL,
    det_model: Annotated[Path, typer.Option(help="SqueezeDet ONNX model (in-process).")] = DEFAULT_DET_MODEL,
    providers: Annotated[str, typer.Option(help="auto (TensorRT -> CUDA -> CPU) or a list like cuda,cpu.")] = "auto",
    detections_2d_topic: Annotated[str, typer.Option(help=ROS_OUTPUT_TOPIC_OPTIONS)] = "/perception/detections_2d",
    detections_3d_topic: Annotated[str, typer.Option(help=ROS_OUTPUT_TOPIC_OPTIONS)] = "/perception/detections_3d",
    points_topic: Annotated[str, typer.Option(help=ROS_OUTPUT_TOPIC_OPTIONS)] = "/perception/labelled_points",
    markers_topic: Annotated[str, typer.Option(help=ROS_OUTPUT_TOPIC_OPTIONS)] = "/perception/markers",
    storage: Annotated[
        str | None, typer.Option(help="ROS 2 output storage: sqlite3 or mcap (default: input's).")
    ] = None,
    copy_inputs: Annotated[bool, typer.Option("--copy-inputs", help="Copy the input topics into --out.")] = False,
    pair_tolerance: Annotated[float, typer.Option(help="Largest scan-image stamp gap (s).")] = 0.05,
    lidar_frame: Annotated[str | None, typer.Option(help="Frame id of LiDAR outputs (default: the scan's).")] = None,
    camera_frame: Annotated[str | None, typer.Option(help="Frame id of camera outputs (default: the image's).")] = None,
    intensity_scale: Annotated[str, typer.Option(help="auto, or a factor that maps intensity to [0, 1].")] = "auto",
    max_frames: Annotated[int | None, typer.Option(help="Stop after this many frames.")] = None,
) -> None:
    """Run perception on the scans and images of a ROS 1 / ROS 2 bag; optionally write a bag of results."""
    from perception.ros.commands import output_topics, run_replay

    def progress(output) -> None:
        parts = [f"{len(output.result.detections)} detections"] if "detections_2d" in output.messages else []
        if output.result.labels is not None:
            parts.append(f"{len(output.result.instances)} instances")
        console.print(f"{output.pair.stamp}: " + (", ".join(parts) or "done"), highlight=False)

    report = run_replay(
        bag=bag, out=out, lidar_topic=lidar_topic, camera_topic=camera_topic,
        topics=output_topics(detections_2d_topic, detections_3d_topic, points_topic, markers_topic),
        storage=storage, copy_inputs=copy_inputs, pair_tolerance=pair_tolerance, lidar_frame=lidar_frame,
        camera_frame=camera_frame, intensity_scale=intensity_scale, max_frames=max_frames,
        processor_args={"seg_model": seg_model, "det_model": det_model, "providers": providers, "service": service,
                        "api_key": api_key},
        progress=progress,
    )  # fmt: skip
    console.print(report.summary(), highlight=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
