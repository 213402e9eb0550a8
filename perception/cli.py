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
    if as_json:
        print(json.dumps({"libraries": libraries, "sensors": sensors}, indent=2))
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
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (KITTI layout: velodyne/, ...).")],
    frames: Annotated[int, typer.Option(min=1, max=100000, help="Number of scans.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the first frame; frame k uses seed + k.")] = 0,
    sensor: Annotated[str, typer.Option(help="Sensor name or spec file.")] = "hdl64e-360",
) -> None:
    """Ray cast street scans (analytic ground + boxes) into velodyne/*.bin with per-point labels."""
    from perception.io import write_velodyne_bin
    from perception.io.labels import write_point_labels
    from perception.lidar.sensors import load_sensor
    from perception.sim.analytic import cast_scan, street_scene

    spec = load_sensor(sensor)
    for k in range(frames):
        scan = cast_scan(spec, street_scene(seed + k), seed=seed + k)
        frame_id = f"{k:06d}"
        write_velodyne_bin(out / "velodyne" / f"{frame_id}.bin", scan.points)
        write_point_labels(out / "labels" / f"{frame_id}.label", scan.labels, scan.instances)
        console.print(f"{frame_id}: {len(scan.points)} points", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
