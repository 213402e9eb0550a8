"""The ``perception`` command line. Bad input ends with one ``error:`` line and exit code 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from perception import __version__

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
        except (ValueError, OSError) as exc:
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
) -> None:
    """Run the perception service: REST + WebSocket (FastAPI) and gRPC, on the shipped models.

    Every option can also come from the environment (PERCEPTION_PORT, PERCEPTION_API_KEY, ...).
    """
    from perception.service.server import run_server
    from perception.service.settings import Settings

    options = {"host": host, "port": port, "grpc_port": grpc_port, "seg_model": seg_model, "det_model": det_model,
               "providers": providers}  # fmt: skip
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
    from perception.lidar.projection import spherical_project, to_squeezeseg_tensor
    from perception.lidar.sensors import load_sensor

    spec = load_sensor(sensor)
    points = read_point_cloud(scan)
    proj = spherical_project(points, spec)
    pixel_labels = None
    if labels is not None:
        point_labels = read_point_labels(labels, expected=len(points))
        pixel_labels = np.zeros(proj.mask.shape, dtype=np.float32)
        owners = proj.point_of_pixel[proj.mask]
        pixel_labels[proj.mask] = point_labels[owners]
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
        console.print("parameters: install the [train] extra (torch) to count them", highlight=False)


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
    target: Annotated[str, typer.Argument(help="What to measure: all or projection.")] = "all",
    repeats: Annotated[int, typer.Option(min=3, help="Timed runs after warm-up.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure speed (median, p90, p99 in ms) on this machine."""
    from perception.bench import BENCHMARKS, run_benchmarks

    if target != "all" and target not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {target!r}; choose all or one of {', '.join(BENCHMARKS)}")
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


@app.command()
@user_errors
def simulate(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory (KITTI layout: velodyne/, image_2/, ...).")
    ],
    frames: Annotated[int, typer.Option(min=1, max=100000, help="Number of frames.")] = 1,
    seed: Annotated[int, typer.Option(help="Dataset seed; each frame's seed is derived from it and its index.")] = 0,
    config: Annotated[str, typer.Option(help="Scene preset (urban, highway) or a YAML/JSON scene config.")] = "urban",
    sensor: Annotated[str, typer.Option(help="Sensor name or spec file.")] = "hdl64e-360",
    camera: Annotated[bool, typer.Option("--camera/--no-camera", help="Render camera frames and 2D labels.")] = True,
    world: Annotated[
        str, typer.Option(help="mesh (open3d ray casting, [train] extra) or analytic (numpy boxes, no camera).")
    ] = "mesh",
) -> None:
    """Generate synthetic driving frames: ray-cast LiDAR scans, camera images and KITTI-format labels."""
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
            f"{frame.frame_id}: {len(frame.scan.points)} points, {len(frame.label_objects)} labelled objects, "
            f"{sum(frame.timings_ms.values()):.0f} ms",
            highlight=False,
        )

    try:
        generate_dataset(out, config, frames=frames, seed=seed, sensor=spec, camera=camera, progress=progress)
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    console.print(f"wrote {frames} frames to {out} (manifest.json regenerates any of them)", highlight=False)


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
    """Train SqueezeSeg or SqueezeDet (needs the [train] extra); Ctrl-C saves a checkpoint and stops."""
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


eval_app = typer.Typer(help="Evaluate predictions or models.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("det")
@user_errors
def eval_det(
    gt: Annotated[Path, typer.Option("--gt", help="Ground-truth label_2 directory.")],
    pred: Annotated[Path, typer.Option("--pred", help="Predictions: KITTI result files (16 fields) per frame.")],
    metric: Annotated[str, typer.Option(help="R40 (the benchmark's since 2019) or 11 (older tables).")] = "R40",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """KITTI 2D object detection AP (official protocol) for car, pedestrian and cyclist."""
    from perception.evaluation.kitti_object import evaluate_kitti_2d, format_results, load_label_dir

    if metric not in ("R40", "11"):
        raise ValueError(f"--metric must be R40 or 11, got {metric!r}")
    if not gt.is_dir():
        raise ValueError(f"{gt}: not a directory of KITTI label files")
    if not pred.is_dir():
        raise ValueError(f"{pred}: not a directory of KITTI result files")
    ground_truth = load_label_dir(gt)
    if not ground_truth:
        raise ValueError(f"{gt}: holds no .txt label files")
    predictions = load_label_dir(pred, frame_ids=list(ground_truth))
    results = evaluate_kitti_2d(ground_truth, predictions, metric=metric)  # type: ignore[arg-type]
    if as_json:
        print(json.dumps(results))
    else:
        console.print(format_results(results), highlight=False)
        console.print(f"{len(ground_truth)} frames", highlight=False)


@eval_app.command("seg")
@user_errors
def eval_seg(
    data: Annotated[Path, typer.Option(help="SqueezeSeg .npy directory, or KITTI layout with velodyne/ + labels/.")],
    model: Annotated[Path, typer.Option(help="SqueezeSeg ONNX model.")] = DEFAULT_SEG_MODEL,
    split: Annotated[str | None, typer.Option(help="Evaluate only the frames of ImageSets/SPLIT.txt.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    card: Annotated[str | None, typer.Option(help="Record the result in the model card under this name.")] = None,
    providers: Annotated[str, typer.Option(help="auto or a list like cuda,cpu.")] = "auto",
) -> None:
    """Per-class IoU, precision and recall (percent) of a segmentation model on labelled scans."""
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
        print(json.dumps({"classes": table, "frames": scores.frames, "points": scores.points}))
        return
    out = Table(title=f"{model.name} on {data} ({scores.frames} scans, {scores.points} points)")
    for col in ("class", "IoU %", "precision %", "recall %", "points"):
        out.add_column(col)
    for name, row in table.items():
        out.add_row(name, *(f"{row[k]:.1f}" for k in ("iou", "precision", "recall")), str(row["points"]))
    console.print(out)


export_app = typer.Typer(help="Export trained models to ONNX (needs the [train] extra).", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("seg")
@user_errors
def export_seg(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .onnx file.")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="Trained weights (state dict). Without it: fresh weights from --seed.")
    ] = None,
    sensor: Annotated[str, typer.Option(help="Sensor the model runs on (fixes H x W).")] = "kitti-front",
    crf: Annotated[bool, typer.Option("--crf/--no-crf", help="Include the recurrent CRF.")] = True,
    crf_iterations: Annotated[int, typer.Option(min=1, max=10)] = 3,
    crf_window: Annotated[str, typer.Option(help="CRF window, rows x columns, e.g. 3x5.")] = "3x5",
    opset: Annotated[int, typer.Option(min=17)] = 17,
    seed: Annotated[int, typer.Option(help="Seed for fresh weights.")] = 0,
) -> None:
    """Export SqueezeSeg (+ CRF) to ONNX and check torch vs ONNX Runtime on a random input."""
    import numpy as np

    from perception.lidar.sensors import load_sensor

    try:
        from perception.training.export import (
            build_segmentation_model,
            compare_with_onnxruntime,
            export_segmentation_onnx,
            write_export_card,
        )
    except ImportError as exc:
        raise ValueError(f"export needs the [train] extra ({exc.name} is not installed)") from None
    try:
        kh, kw = (int(v) for v in crf_window.lower().split("x"))
    except ValueError:
        raise ValueError(f"--crf-window must look like 3x5, got {crf_window!r}") from None
    spec = load_sensor(sensor)
    model = build_segmentation_model(checkpoint, crf=crf, crf_iterations=crf_iterations, crf_window=(kh, kw), seed=seed)
    metadata = {"weights": str(checkpoint) if checkpoint else f"freshly initialised (seed {seed}), untrained"}
    path = export_segmentation_onnx(model, out, spec, opset=opset, metadata=metadata)
    arch = "SqueezeSeg" + (f" + recurrent CRF ({crf_iterations} iterations, {kh}x{kw})" if crf else "")
    write_export_card(model, path, "segmentation", arch, f"range image 5 x {spec.height} x {spec.width} ({spec.name})",
                      opset, checkpoint)  # fmt: skip
    rng = np.random.default_rng(seed)
    image = (rng.normal(size=(1, 5, *spec.shape)) * 10).astype(np.float32)
    mask = (rng.random((1, 1, *spec.shape)) > 0.1).astype(np.float32)
    diff = compare_with_onnxruntime(model, path, image, mask)
    console.print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {opset}); "
        f"torch vs ONNX Runtime max |logit diff| = {diff:.2e}",
        highlight=False,
    )
    if diff > 1e-4:
        raise ValueError(f"ONNX Runtime output differs from torch by {diff:.2e} (> 1e-4)")


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
    model = build_detection_model(variant, checkpoint, seed=seed)
    metadata = {"weights": str(checkpoint) if checkpoint else f"freshly initialised (seed {seed}), untrained"}
    path = export_detection_onnx(model, out, opset=opset, metadata=metadata)
    write_export_card(model, path, "detection", model.variant.name, "RGB image 3 x 384 x 1248", opset, checkpoint)
    image = (np.random.default_rng(seed).random((1, 3, 384, 1248)) * 255).astype(np.float32)
    diff = compare_detection_with_onnxruntime(model, path, image)
    console.print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {opset}); "
        f"torch vs ONNX Runtime max |diff| = {diff:.2e}",
        highlight=False,
    )
    if diff > 1e-4:
        raise ValueError(f"ONNX Runtime output differs from torch by {diff:.2e} (> 1e-4)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
