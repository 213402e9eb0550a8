"""Time this checkout's LiDAR path against another git revision's, in alternating frames in one process.

On a shared VM whose speed drifts by 10-50 % from one minute to the next, two separate ``perception bench
pipeline`` runs cannot tell a 10 % change from noise; frames of both versions alternated in one process can.
The other revision's ``perception`` package is extracted with ``git archive`` and imported as
``perception_ref`` (its own imports rewritten). Both run the same model on the same scan: projection,
ONNX Runtime (CPU), labels back to the points, clustering with boxes. The report gives each version's frame
and stage medians, its share of the frame spent around the network, and whether the two versions' labels,
scores and instances are identical.

Usage (from the repository root)::

    python benchmarks/compare_lidar_path.py --against a466093 [--repeats 60] [--scan FILE.bin] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from perception.bench import AROUND_NETWORK_STAGES, _pipeline_scan, time_interleaved
from perception.io.kitti import read_velodyne_bin
from perception.lidar import clustering
from perception.runtime import segmenter
from perception.service.settings import DEFAULT_SEG_MODEL

REF_PACKAGE = "perception_ref"
_IMPORT = re.compile(r"^(\s*)(from|import) perception(?=[\s.])", re.MULTILINE)


def extract_revision(revision: str, dest: Path) -> Path:
    """``revision``'s ``perception`` package as ``dest/perception_ref``, its imports of itself rewritten."""
    root = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", root, "archive", "--format=tar", revision, "perception"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest / "src", filter="data")
    package = (dest / "src" / "perception").rename(dest / REF_PACKAGE)
    for source in package.rglob("*.py"):
        source.write_text(_IMPORT.sub(rf"\1\2 {REF_PACKAGE}", source.read_text(encoding="utf-8")), encoding="utf-8")
    return package


def _import_reference(dest: Path) -> tuple[ModuleType, ModuleType]:
    for name in [m for m in sys.modules if m == REF_PACKAGE or m.startswith(REF_PACKAGE + ".")]:
        del sys.modules[name]  # an earlier comparison's revision
    sys.path.insert(0, str(dest))
    from perception_ref.lidar import clustering as ref_clustering  # type: ignore[import-not-found]
    from perception_ref.runtime import segmenter as ref_segmenter  # type: ignore[import-not-found]

    return ref_segmenter, ref_clustering


def _instance_rows(instances: list[Any]) -> list[tuple[Any, ...]]:
    return [(i.class_id, i.num_points, tuple(i.point_indices), dataclasses.astuple(i.box)) for i in instances]


def compare(revision: str, model: Path, points: np.ndarray, repeats: int) -> dict[str, Any]:
    """Medians per version (``this`` checkout, ``revision``) and whether their outputs are identical."""
    with tempfile.TemporaryDirectory() as tmp:
        extract_revision(revision, Path(tmp))
        ref_segmenter, ref_clustering = _import_reference(Path(tmp))
        versions = {
            "this": (segmenter.Segmenter(model, providers="cpu"), clustering.cluster_instances),
            revision: (ref_segmenter.Segmenter(model, providers="cpu"), ref_clustering.cluster_instances),
        }
        stages: dict[str, list[dict[str, float]]] = {name: [] for name in versions}
        outputs: dict[str, tuple[np.ndarray, np.ndarray, list[tuple[Any, ...]]]] = {}

        def frame(name: str) -> None:
            seg, cluster_instances = versions[name]
            result = seg.segment(points)
            t0 = time.perf_counter()
            instances = cluster_instances(points, result.labels, result.projection, scores=result.scores)
            stages[name].append({**result.timings_ms, "clustering": (time.perf_counter() - t0) * 1e3})
            outputs[name] = (result.labels, result.scores, _instance_rows(instances))

        timed = time_interleaved({name: functools.partial(frame, name) for name in versions}, repeats)
    report: dict[str, Any] = {"against": revision, "points": int(points.shape[0]), "repeats": repeats}
    for name in versions:
        rounds = stages[name][-repeats:]
        per_stage = {key: np.array([r[key] for r in rounds]) for key in rounds[0]}
        around = np.sum([per_stage[k] for k in AROUND_NETWORK_STAGES], axis=0)
        report[name] = {
            "median_ms": timed[name]["median_ms"],
            **{f"{key}_median_ms": float(np.median(v)) for key, v in per_stage.items()},
            "around_network_median_ms": float(np.median(around)),
            "around_network_share": float(np.median(around / np.sum(list(per_stage.values()), axis=0))),
        }
    (labels, scores, instances), (ref_labels, ref_scores, ref_instances) = outputs["this"], outputs[revision]
    report["identical"] = {
        "labels": bool(np.array_equal(labels, ref_labels)),
        "scores": bool(np.array_equal(scores, ref_scores)),
        "instances": instances == ref_instances,
    }
    report["around_network_speedup"] = (
        report[revision]["around_network_median_ms"] / report["this"]["around_network_median_ms"]
    )
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="git revision to compare with (a commit, tag or branch)")
    parser.add_argument("--repeats", type=int, default=40, help="timed frames per version (default 40)")
    parser.add_argument("--scan", type=Path, help="a KITTI .bin scan (default: the committed mesh-world frame)")
    parser.add_argument("--model", type=Path, default=DEFAULT_SEG_MODEL, help="segmentation model (.onnx)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    points = read_velodyne_bin(args.scan) if args.scan else _pipeline_scan()[0]
    try:
        report = compare(args.against, args.model, points, args.repeats)
    except subprocess.CalledProcessError as exc:
        parser.exit(2, f"error: git could not give revision {args.against!r}: {(exc.stderr or b'').strip()!r}\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name in ("this", args.against):
            r = report[name]
            stage_text = ", ".join(f"{k} {r[f'{k}_median_ms']:.2f}" for k in (*AROUND_NETWORK_STAGES, "inference"))
            print(f"{name:>12}: frame {r['median_ms']:.1f} ms ({stage_text}); around the network "
                  f"{r['around_network_median_ms']:.2f} ms, {r['around_network_share'] * 100:.1f}%")  # fmt: skip
        print(f"around the network: {report['around_network_speedup']:.2f}x; identical outputs: {report['identical']}")
    return report


if __name__ == "__main__":
    main()
