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


BENCHMARKS: dict[str, Callable[[int], dict[str, object]]] = {"projection": bench_projection}


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
