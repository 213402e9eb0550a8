"""Time this checkout's LiDAR path against another git revision's, in alternating frames in one process.

On a shared VM whose speed drifts by 10-50 % from one minute to the next, two separate ``perception bench
pipeline`` runs cannot tell a 10 % change from noise; frames of both versions alternated in one process can.
The other revision's ``perception`` package is extracted with ``git archive`` and imported as
``perception_ref`` (its own imports rewritten). Both run the same model on the same scan: projection,
ONNX Runtime (CPU), labels back to the points, clustering with boxes. The report gives each version's frame
and stage medians (``this``, ``reference``), the time and share of the frame spent around the network, and
whether the two versions' labels, scores and instances are identical.

Usage (from the repository root)::

    python benchmarks/compare_lidar_path.py --against a466093 [--repeats 60] [--scan FILE.bin] [--json]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from perception.bench import AROUND_NETWORK_STAGES, _pipeline_scan, _time_lidar_paths
from perception.io.common import MalformedFileError
from perception.io.kitti import read_velodyne_bin
from perception.runtime.segmenter import InvalidInputError, Segmenter
from perception.runtime.session import ModelLoadError
from perception.service.settings import DEFAULT_SEG_MODEL

REF_PACKAGE = "perception_ref"
_IMPORT = re.compile(r"^(\s*)(from|import) perception(?=[\s.])", re.MULTILINE)


def _imports_of_perception(source: str) -> list[int]:
    """Lines of ``source`` that still import the ``perception`` package itself."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        if any(n == "perception" or n.startswith("perception.") for n in names):
            lines.append(node.lineno)
    return lines


def extract_revision(revision: str, dest: Path) -> Path:
    """``revision``'s ``perception`` package as ``dest/perception_ref``, its imports of itself rewritten.

    Raises :class:`subprocess.CalledProcessError` when git cannot give the revision, and RuntimeError when
    an import escaped the rewriting (the reference would then silently run this checkout's code)."""
    root = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", root, "archive", "--format=tar", revision, "perception"], capture_output=True, check=True
    ).stdout
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest / "src", **safe)  # type: ignore[arg-type]
    package = (dest / "src" / "perception").rename(dest / REF_PACKAGE)
    for source in package.rglob("*.py"):
        text = _IMPORT.sub(rf"\1\2 {REF_PACKAGE}", source.read_text(encoding="utf-8"))
        if left := _imports_of_perception(text):
            raise RuntimeError(f"{source.relative_to(dest)}: imports of perception not rewritten at lines {left}")
        source.write_text(text, encoding="utf-8")
    return package


def _drop_reference_modules() -> None:
    for name in [m for m in sys.modules if m == REF_PACKAGE or m.startswith(REF_PACKAGE + ".")]:
        del sys.modules[name]


@contextlib.contextmanager
def reference_package(revision: str) -> Iterator[ModuleType]:
    """``revision``'s package, importable as ``perception_ref`` while the context lasts."""
    with tempfile.TemporaryDirectory() as tmp:
        extract_revision(revision, Path(tmp))
        _drop_reference_modules()  # an earlier comparison's revision
        sys.path.insert(0, tmp)
        try:
            yield importlib.import_module(REF_PACKAGE)
        finally:
            sys.path.remove(tmp)
            _drop_reference_modules()


def _instance_rows(instances: list[Any]) -> list[tuple[Any, ...]]:
    return [(i.class_id, i.num_points, tuple(i.point_indices), dataclasses.astuple(i.box)) for i in instances]


def compare(revision: str, model: Path, points: np.ndarray, repeats: int) -> dict[str, Any]:
    """Medians per version (``this`` checkout, ``reference``: ``revision``) and whether their outputs are identical."""
    last: dict[str, tuple[Any, list[Any]]] = {}
    with reference_package(revision) as ref:
        ref_segmenter = importlib.import_module(f"{ref.__name__}.runtime.segmenter")
        ref_clustering = importlib.import_module(f"{ref.__name__}.lidar.clustering")
        segmenters = {
            "this": Segmenter(model, providers="cpu"),
            "reference": ref_segmenter.Segmenter(model, providers="cpu"),
        }
        timed = _time_lidar_paths(
            segmenters, points, repeats, cluster_fns={"reference": ref_clustering.cluster_instances}, last=last
        )
    report: dict[str, Any] = {"against": revision, "points": int(points.shape[0]), "repeats": repeats}
    for name, fields in timed.items():
        report[name] = {k: v for k, v in fields.items() if k != "stage_note"}
    (result, instances), (ref_result, ref_instances) = last["this"], last["reference"]
    report["identical"] = {
        "labels": bool(np.array_equal(result.labels, ref_result.labels)),
        "scores": bool(np.array_equal(result.scores, ref_result.scores)),
        "instances": _instance_rows(instances) == _instance_rows(ref_instances),
    }
    report["around_network_speedup"] = (
        report["reference"]["around_network_median_ms"] / report["this"]["around_network_median_ms"]
    )
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--against", required=True, help="git revision to compare with (a commit, tag or branch)")
    parser.add_argument("--repeats", type=int, default=40, help="timed frames per version (default 40)")
    parser.add_argument("--scan", type=Path, help="a KITTI .bin scan (default: the committed mesh-world frame)")
    parser.add_argument("--model", type=Path, default=DEFAULT_SEG_MODEL, help="segmentation model (.onnx)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    try:
        points = read_velodyne_bin(args.scan) if args.scan else _pipeline_scan()[0]
        report = compare(args.against, args.model, points, args.repeats)
    except (MalformedFileError, ModelLoadError, InvalidInputError) as exc:
        parser.exit(2, f"error: {exc}\n")
    except FileNotFoundError:
        parser.exit(2, "error: git is not installed (the other revision comes from git archive)\n")
    except subprocess.CalledProcessError as exc:
        reason = exc.stderr.decode(errors="replace").strip() if isinstance(exc.stderr, bytes) else exc.stderr
        parser.exit(2, f"error: git could not give revision {args.against!r}: {reason}\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name in ("this", "reference"):
            r = report[name]
            label = "this" if name == "this" else args.against
            stage_text = ", ".join(f"{k} {r[f'{k}_median_ms']:.2f}" for k in (*AROUND_NETWORK_STAGES, "inference"))
            print(f"{label:>12}: frame {r['median_ms']:.1f} ms ({stage_text}); around the network "
                  f"{r['around_network_median_ms']:.2f} ms, {r['around_network_share'] * 100:.1f}%")  # fmt: skip
        print(f"around the network: {report['around_network_speedup']:.2f}x; identical outputs: {report['identical']}")
    return report


if __name__ == "__main__":
    main()
