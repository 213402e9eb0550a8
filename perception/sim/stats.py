"""Statistics of SqueezeSeg front-view tensors, to compare a generated set with real KITTI scans.

Pure numpy (no open3d): runs on the runtime install. A tensor is float32 (H, W, 6) with channels x, y,
z (m), intensity ([0, 1]), range (m) and label (0 unknown, 1 car, 2 pedestrian, 3 cyclist); range 0
marks an empty pixel (:mod:`perception.io.squeezeseg`).

:func:`squeezeseg_statistics` reduces any number of tensors to counts and fractions (streaming: one
tensor in memory at a time); :func:`compare_statistics` puts two such results side by side with the
total variation distance of their histograms; :func:`format_comparison` renders that as a Markdown
table (pasteable into a README).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from perception.io.squeezeseg import IGNORE_LABEL, SQUEEZESEG_CHANNELS, read_squeezeseg_npy
from perception.lidar.squeezeseg_config import CLASSES as CLASS_NAMES

PathLike = str | os.PathLike[str]

RANGE_EDGES_M = (0.0, 10.0, 20.0, 30.0, 40.0, 60.0, 80.0, 120.0)
"""Range histogram bin edges in metres; ranges beyond the last edge count in the last bin."""
INTENSITY_BINS = 10
"""Equal-width intensity bins over [0, 1]."""


def _check_tensor(tensor: np.ndarray, index: int) -> np.ndarray:
    arr = np.asarray(tensor)
    if arr.ndim != 3 or arr.shape[2] != len(SQUEEZESEG_CHANNELS):
        raise ValueError(f"tensor {index}: expected a (H, W, 6) SqueezeSeg tensor, got shape {arr.shape}")
    return arr


def squeezeseg_statistics(
    tensors: Iterable[np.ndarray],
    range_edges_m: tuple[float, ...] = RANGE_EDGES_M,
    intensity_bins: int = INTENSITY_BINS,
) -> dict[str, Any]:
    """Statistics of SqueezeSeg (H, W, 6) tensors, pooled over all of them.

    Returns a JSON-ready dict:

    * ``frames``, ``pixels`` (H x W summed over frames), ``valid_pixels`` (range > 0);
    * ``valid_fraction``: valid / all pixels; ``valid_fraction_min`` / ``_max``: over single frames;
    * ``class_share``: {class name: fraction of the labelled valid pixels with that label} (sums to 1);
      pixels labelled IGNORE_LABEL (-1, not scored: KITTI's Van, Truck, ... boxes and DontCare regions,
      from ``perception data kitti-to-squeezeseg``) are left out of it, their share of the valid pixels is
      ``not_scored_fraction``;
    * ``range_edges_m`` and ``range_histogram``: fractions of valid pixels per range bin (m); ranges
      beyond the last edge count in the last bin (their share is ``range_beyond_last_edge``);
    * ``intensity_edges`` and ``intensity_histogram``: fractions of valid pixels per intensity bin
      (``intensity_bins`` equal bins over [0, 1]; values outside are clipped into the end bins);
    * ``mean_range_m`` and ``mean_intensity`` over valid pixels.

    With no valid pixel at all, shares, histograms and means are zeros. Raises ValueError on a tensor of
    the wrong shape or with labels outside -1..3, on no tensors, on unsorted range edges or on
    ``intensity_bins`` < 1.
    """
    edges = np.asarray(range_edges_m, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"range edges must be at least two increasing values, got {range_edges_m}")
    if intensity_bins < 1:
        raise ValueError(f"intensity_bins must be >= 1, got {intensity_bins}")
    frames = pixels = valid = beyond = not_scored = 0
    class_counts = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    range_counts = np.zeros(len(edges) - 1, dtype=np.int64)
    intensity_counts = np.zeros(intensity_bins, dtype=np.int64)
    range_sum = intensity_sum = 0.0
    per_frame: list[float] = []
    for index, tensor in enumerate(tensors):
        arr = _check_tensor(tensor, index)
        mask = arr[..., 4] > 0
        n = int(np.count_nonzero(mask))
        frames += 1
        pixels += mask.size
        valid += n
        per_frame.append(n / mask.size if mask.size else 0.0)
        if n == 0:
            continue
        labels = np.rint(arr[..., 5][mask]).astype(np.int64)
        if labels.min() < IGNORE_LABEL or labels.max() >= len(CLASS_NAMES):
            raise ValueError(f"tensor {index}: labels must be 0..{len(CLASS_NAMES) - 1} or {IGNORE_LABEL}")
        scored = labels[labels != IGNORE_LABEL]
        not_scored += n - len(scored)
        class_counts += np.bincount(scored, minlength=len(CLASS_NAMES))
        rng_m = arr[..., 4][mask].astype(np.float64)
        beyond += int(np.count_nonzero(rng_m > edges[-1]))
        range_counts += np.histogram(np.clip(rng_m, edges[0], edges[-1]), bins=edges)[0]
        intensity = np.clip(arr[..., 3][mask].astype(np.float64), 0.0, 1.0)
        intensity_counts += np.histogram(intensity, bins=intensity_bins, range=(0.0, 1.0))[0]
        range_sum += float(rng_m.sum())
        intensity_sum += float(intensity.sum())
    if frames == 0:
        raise ValueError("no SqueezeSeg tensors to describe")
    denom = max(valid, 1)
    labelled = max(valid - not_scored, 1)
    return {
        "frames": frames,
        "pixels": pixels,
        "valid_pixels": valid,
        "valid_fraction": valid / pixels if pixels else 0.0,
        "valid_fraction_min": min(per_frame),
        "valid_fraction_max": max(per_frame),
        "class_share": {name: int(c) / labelled for name, c in zip(CLASS_NAMES, class_counts, strict=True)},
        "not_scored_fraction": not_scored / denom,
        "range_edges_m": [float(e) for e in edges],
        "range_histogram": [int(c) / denom for c in range_counts],
        "range_beyond_last_edge": beyond / denom,
        "intensity_edges": [float(e) for e in np.linspace(0.0, 1.0, intensity_bins + 1)],
        "intensity_histogram": [int(c) / denom for c in intensity_counts],
        "mean_range_m": range_sum / denom,
        "mean_intensity": intensity_sum / denom,
    }


def squeezeseg_files(directory: PathLike) -> list[Path]:
    """The SqueezeSeg ``.npy`` files of a directory, sorted: ``DIR/squeezeseg/*.npy`` (a generated set in
    the KITTI layout) or else ``DIR/*.npy`` (e.g. the real samples). Raises ValueError when there are none."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    files = sorted((root / "squeezeseg").glob("*.npy")) or sorted(root.glob("*.npy"))
    if not files:
        raise ValueError(f"{root}: no SqueezeSeg .npy tensors (looked in {root / 'squeezeseg'} and {root})")
    return files


def directory_statistics(directory: PathLike) -> dict[str, Any]:
    """:func:`squeezeseg_statistics` of every tensor :func:`squeezeseg_files` finds, read one at a time with
    checks (:func:`~perception.io.squeezeseg.read_squeezeseg_npy`); adds ``dir``."""
    files = squeezeseg_files(directory)
    stats = squeezeseg_statistics(read_squeezeseg_npy(f) for f in files)
    return {"dir": str(directory), **stats}


def total_variation(p: Iterable[float], q: Iterable[float]) -> float:
    """Total variation distance between two histograms of fractions: half the L1 distance, in [0, 1]."""
    a, b = np.asarray(list(p), dtype=np.float64), np.asarray(list(q), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"histograms differ in length: {a.shape} vs {b.shape}")
    return float(0.5 * np.abs(a - b).sum())


def compare_statistics(generated: Mapping[str, Any], real: Mapping[str, Any] | None) -> dict[str, Any]:
    """Both statistics side by side, plus (with ``real``) the differences: ``valid_fraction_diff``
    (generated - real), per-class share differences and the total variation distance of the range and
    intensity histograms (0 identical, 1 disjoint). ``real`` None: only the generated set."""
    out: dict[str, Any] = {"generated": dict(generated), "real": dict(real) if real is not None else None}
    if real is None:
        return out
    same_range = list(generated["range_edges_m"]) == list(real["range_edges_m"])
    if not same_range or list(generated["intensity_edges"]) != list(real["intensity_edges"]):
        raise ValueError("the two statistics use different histogram bins")
    out["difference"] = {
        "valid_fraction_diff": generated["valid_fraction"] - real["valid_fraction"],
        "class_share_diff": {k: generated["class_share"][k] - real["class_share"][k] for k in CLASS_NAMES},
        "range_histogram_tv": total_variation(generated["range_histogram"], real["range_histogram"]),
        "intensity_histogram_tv": total_variation(generated["intensity_histogram"], real["intensity_histogram"]),
    }
    return out


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _edge(value: float) -> str:
    return f"{value:g}"


def comparison_rows(generated: Mapping[str, Any], real: Mapping[str, Any] | None) -> list[tuple[str, ...]]:
    """Table rows (metric, generated[, real]) as strings: frames, valid fraction, class shares of valid
    pixels, the range and intensity histograms (percent of valid pixels; the last range bin holds
    everything beyond its lower edge) and the mean range (m) and intensity."""
    stats = [generated] if real is None else [generated, real]

    def row(label: str, fmt: Any, get: Any) -> tuple[str, ...]:
        return (label, *(fmt(get(s)) for s in stats))

    rows = [
        row("frames", str, lambda s: s["frames"]),
        row("valid pixels", _pct, lambda s: s["valid_fraction"]),
        row("valid pixels, frame min-max", lambda v: f"{_pct(v[0])}-{_pct(v[1])}",
            lambda s: (s["valid_fraction_min"], s["valid_fraction_max"])),
    ]  # fmt: skip
    for name in CLASS_NAMES:
        rows.append(row(f"{name} share", _pct, lambda s, n=name: s["class_share"][n]))
    edges = generated["range_edges_m"]
    for i in range(len(edges) - 1):
        upper = "+" if i == len(edges) - 2 else f"-{_edge(edges[i + 1])}"
        label = f"range {_edge(edges[i])}{upper} m"
        rows.append(row(label, _pct, lambda s, i=i: s["range_histogram"][i]))
    rows.append(row("mean range", lambda v: f"{v:.1f} m", lambda s: s["mean_range_m"]))
    iedges = generated["intensity_edges"]
    for i in range(len(iedges) - 1):
        label = f"intensity {iedges[i]:.1f}-{iedges[i + 1]:.1f}"
        rows.append(row(label, _pct, lambda s, i=i: s["intensity_histogram"][i]))
    rows.append(row("mean intensity", lambda v: f"{v:.3f}", lambda s: s["mean_intensity"]))
    return rows


def format_comparison(
    generated: Mapping[str, Any], real: Mapping[str, Any] | None, names: tuple[str, str] = ("generated", "real")
) -> str:
    """A Markdown table of :func:`comparison_rows` (columns: metric, ``names[0]``[, ``names[1]``]); shares
    and histogram bins are percentages of valid pixels. With ``real``, a line below the table gives the
    total variation distance of the two range and intensity histograms (0 identical, 1 disjoint)."""
    header = ("metric", names[0]) if real is None else ("metric", *names)
    rows = comparison_rows(generated, real)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    lines = [line(header), sep, *(line(r) for r in rows)]
    if real is not None:
        diff = compare_statistics(generated, real)["difference"]
        lines += ["", f"Total variation distance, {names[0]} vs {names[1]}: range histogram "
                  f"{diff['range_histogram_tv']:.3f}, intensity histogram {diff['intensity_histogram_tv']:.3f} "
                  "(0 identical, 1 disjoint)."]  # fmt: skip
    return "\n".join(lines)
