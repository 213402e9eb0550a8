"""Line charts without matplotlib: KITTI precision/recall curves and training curves (numpy + Pillow).

:class:`Chart` is a small x-y plot: axes with "nice" ticks, grid, lines, legend. Its :meth:`Chart.to_pixel`
is the exact mapping the lines are drawn with, so tests can check pixels where a line must be.
:func:`draw_pr_curves` plots :func:`perception.evaluation.kitti_object.kitti_2d_curves` (precision at the
devkit's 41 recall samples, one chart per class, one line per difficulty, AP in the legend);
:func:`read_training_log` reads a run directory's ``metrics.jsonl`` (or ``metrics.csv``) as written by
``perception train`` and :func:`draw_training_curves` plots losses, learning rate and validation scores.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from perception.viz.draw import BACKGROUND, FOREGROUND, GRID, RGB, font, hstack, text_size

if TYPE_CHECKING:
    from perception.evaluation.kitti_object import PrecisionRecall

# distinguishable line colours on the dark background
SERIES_COLOURS: tuple[RGB, ...] = (
    (80, 200, 120),
    (255, 170, 50),
    (90, 160, 255),
    (240, 80, 160),
    (180, 140, 255),
    (120, 220, 230),
    (230, 230, 90),
    (255, 110, 90),
)
DIFFICULTY_COLOURS: dict[str, RGB] = {"easy": (80, 200, 120), "moderate": (255, 170, 50), "hard": (240, 80, 160)}


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Tick values in [lo, hi] at the step of 1, 2 or 5 x 10^k nearest to (hi - lo) / ``target``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, target)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10)), key=lambda st: abs(math.log(st / raw)))
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _fmt_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}"
    return f"{value:g}"


@dataclass
class _Series:
    xs: np.ndarray
    ys: np.ndarray
    colour: RGB
    label: str
    width: int


@dataclass
class Chart:
    """An x-y line chart ``width`` x ``height`` pixels; the plot area is inside the margins.

    ``x_range``/``y_range`` are the data limits at the plot area's edges; with ``log_y`` the y axis is
    logarithmic (base 10, limits must be positive).
    """

    x_range: tuple[float, float] = (0.0, 1.0)
    y_range: tuple[float, float] = (0.0, 1.0)
    width: int = 420
    height: int = 300
    title: str = ""
    x_label: str = ""
    y_label: str = ""
    log_y: bool = False
    margin_left: int = 54
    margin_right: int = 12
    margin_top: int = 26
    margin_bottom: int = 38
    _series: list[_Series] = field(default_factory=list, repr=False)
    _notes: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.x_range[1] <= self.x_range[0]:
            raise ValueError(f"empty x range {self.x_range}")
        if self.y_range[1] <= self.y_range[0]:
            raise ValueError(f"empty y range {self.y_range}")
        if self.log_y and self.y_range[0] <= 0:
            raise ValueError(f"a log y axis needs positive limits, got {self.y_range}")

    @property
    def plot_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) pixel bounds of the plot area (inclusive)."""
        return (
            self.margin_left,
            self.margin_top,
            self.width - self.margin_right - 1,
            self.height - self.margin_bottom - 1,
        )

    def _y_unit(self, y: np.ndarray) -> np.ndarray:
        lo, hi = self.y_range
        if self.log_y:
            with np.errstate(divide="ignore", invalid="ignore"):
                return (np.log10(y) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        return (y - lo) / (hi - lo)

    def to_pixel(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(col, row) float pixels of data (x, y): x_range spans the plot box left to right, y_range bottom to top."""
        left, top, right, bottom = self.plot_box
        xs = np.asarray(x, dtype=np.float64)
        ys = np.asarray(y, dtype=np.float64)
        col = left + (xs - self.x_range[0]) / (self.x_range[1] - self.x_range[0]) * (right - left)
        row = bottom - self._y_unit(ys) * (bottom - top)
        return col, row

    def line(self, xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray, label: str = "",
             colour: RGB | None = None, width: int = 2) -> Chart:  # fmt: skip
        """Add a polyline (non-finite points break it); colour defaults to the next of :data:`SERIES_COLOURS`."""
        x = np.asarray(xs, dtype=np.float64).ravel()
        y = np.asarray(ys, dtype=np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError(f"xs {x.shape} and ys {y.shape} differ")
        colour = colour or SERIES_COLOURS[len(self._series) % len(SERIES_COLOURS)]
        self._series.append(_Series(x, y, colour, label, width))
        return self

    def note(self, text: str) -> Chart:
        """A line of text in the middle of the plot area (e.g. "no data")."""
        self._notes.append(text)
        return self

    def render(self) -> np.ndarray:
        """uint8 RGB (height, width, 3)."""
        image = Image.new("RGB", (self.width, self.height), BACKGROUND)
        draw = ImageDraw.Draw(image)
        left, top, right, bottom = self.plot_box
        small = font(11)
        for tx in nice_ticks(*self.x_range):
            col = float(self.to_pixel(tx, self.y_range[0])[0])
            draw.line([(col, top), (col, bottom)], fill=GRID)
            text = _fmt_tick(tx)
            draw.text((col - text_size(draw, text, 11)[0] / 2, bottom + 4), text, fill=FOREGROUND, font=small)
        for ty in self._y_ticks():
            row = float(self.to_pixel(self.x_range[0], ty)[1])
            draw.line([(left, row), (right, row)], fill=GRID)
            text = _fmt_tick(ty)
            w, h = text_size(draw, text, 11)
            draw.text((left - w - 5, row - h / 2 - 1), text, fill=FOREGROUND, font=small)
        draw.rectangle((left, top, right, bottom), outline=(120, 124, 132))
        if self.title:
            draw.text((left, 5), self.title, fill=FOREGROUND, font=font(13))
        if self.x_label:
            w, _ = text_size(draw, self.x_label, 12)
            draw.text(((left + right - w) / 2, self.height - 17), self.x_label, fill=FOREGROUND, font=font(12))
        if self.y_label:
            w, h = text_size(draw, self.y_label, 12)
            label = Image.new("RGB", (w + 2, h + 2), BACKGROUND)
            ImageDraw.Draw(label).text((1, 0), self.y_label, fill=FOREGROUND, font=font(12))
            rotated = label.rotate(90, expand=True)
            image.paste(rotated, (2, int((top + bottom - rotated.height) / 2)))
        for series in self._series:
            col, row = self.to_pixel(series.xs, series.ys)
            ok = np.isfinite(col) & np.isfinite(row)
            if self.log_y:
                ok &= series.ys > 0
            run: list[tuple[float, float]] = []
            for c, r, good in zip(col, row, ok, strict=True):
                if good:
                    run.append((float(np.clip(c, left, right)), float(np.clip(r, top, bottom))))
                    continue
                self._polyline(draw, run, series)
                run = []
            self._polyline(draw, run, series)
        self._legend(draw)
        for k, text in enumerate(self._notes):
            w, h = text_size(draw, text, 13)
            draw.text(((left + right - w) / 2, (top + bottom) / 2 - h + k * (h + 4)), text, fill=FOREGROUND,
                      font=font(13))  # fmt: skip
        return np.asarray(image)

    @staticmethod
    def _polyline(draw: ImageDraw.ImageDraw, run: list[tuple[float, float]], series: _Series) -> None:
        if len(run) == 1:
            c, r = run[0]
            draw.ellipse((c - 2, r - 2, c + 2, r + 2), fill=series.colour)
        elif run:
            draw.line(run, fill=series.colour, width=series.width, joint="curve")

    def _y_ticks(self) -> list[float]:
        lo, hi = self.y_range
        if not self.log_y:
            return nice_ticks(lo, hi)
        ticks = [10.0**k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
        ticks = [t for t in ticks if lo <= t <= hi]
        return ticks or [lo, hi]

    def _legend(self, draw: ImageDraw.ImageDraw) -> None:
        labelled = [s for s in self._series if s.label]
        if not labelled:
            return
        _, top, right, _ = self.plot_box
        width = max(text_size(draw, s.label, 11)[0] for s in labelled) + 28
        line_h = 15
        x0, y0 = right - width - 4, top + 4
        draw.rectangle((x0, y0, right - 4, y0 + line_h * len(labelled) + 4), fill=BACKGROUND, outline=GRID)
        for k, s in enumerate(labelled):
            y = y0 + 4 + k * line_h + line_h / 2 - 1
            draw.line([(x0 + 4, y), (x0 + 18, y)], fill=s.colour, width=3)
            draw.text((x0 + 22, y - 7), s.label, fill=FOREGROUND, font=font(11))


# --- KITTI precision / recall ----------------------------------------------------------------------


def draw_pr_curves(
    curves: Mapping[str, Mapping[str, PrecisionRecall]], metric: str = "R40", width: int = 380, height: int = 300
) -> np.ndarray:
    """Precision against recall per class (one chart each, side by side), one line per difficulty.

    ``curves[class][difficulty]`` as :func:`~perception.evaluation.kitti_object.kitti_2d_curves` returns
    it: precision (41,) at recall i / 40, the devkit's interpolated curve. Each legend entry gives the AP
    in percent (``metric`` "R40" or "11"); a class with no ground truth says so instead of a line.
    """
    charts = []
    for cls, per_difficulty in curves.items():
        chart = Chart((0.0, 1.0), (0.0, 1.0), width, height, title=f"{cls}: precision / recall ({metric})",
                      x_label="recall", y_label="precision")  # fmt: skip
        any_gt = False
        for difficulty, pr in per_difficulty.items():
            ap = pr.ap(metric)  # type: ignore[arg-type]
            if ap is None:
                continue
            any_gt = True
            chart.line(pr.recall_samples, pr.precision, f"{difficulty} AP {ap:.1f}",
                       DIFFICULTY_COLOURS.get(difficulty))  # fmt: skip
        if not any_gt:
            chart.note("no ground truth")
        charts.append(chart.render())
    if not charts:
        raise ValueError("no classes to plot")
    return hstack(charts)


# --- training logs ---------------------------------------------------------------------------------


TrainingLog = dict[str, list[tuple[int, float]]]


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def read_training_log(run_dir: str | os.PathLike[str]) -> TrainingLog:
    """Metric series of a training run: ``{key: [(step, value), ...]}`` sorted by step.

    Reads ``metrics.jsonl`` (one JSON object per line with ``step``), else ``metrics.csv`` (rows
    ``step,key,value``). A resumed run logs some steps twice: the last value of a step wins. Lines that
    do not parse (a run killed mid-write) and non-numeric values are skipped; NaN values are kept (they
    break the plotted line). Raises :class:`FileNotFoundError` when the directory has neither file.
    """
    root = Path(run_dir)
    values: dict[str, dict[int, float]] = {}

    def add(step: object, key: str, value: object) -> None:
        s, v = _number(step), _number(value)
        if s is None or v is None or key == "step" or not math.isfinite(s):
            return
        values.setdefault(key, {})[int(s)] = v

    jsonl, csv_path = root / "metrics.jsonl", root / "metrics.csv"
    if jsonl.is_file():
        for line in jsonl.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "step" in row:
                for key, value in row.items():
                    add(row["step"], str(key), value)
    elif csv_path.is_file():
        with csv_path.open(newline="", encoding="utf-8", errors="replace") as handle:
            for row in csv.reader(handle):
                if len(row) == 3 and row[0] != "step":
                    add(row[0], row[1], row[2])
    else:
        raise FileNotFoundError(f"{root}: no metrics.jsonl or metrics.csv (written by `perception train`)")
    return {key: sorted(series.items()) for key, series in sorted(values.items())}


def _range(values: np.ndarray, log: bool) -> tuple[float, float]:
    finite = values[np.isfinite(values) & ((values > 0) if log else True)]
    if finite.size == 0:
        return (0.1, 1.0) if log else (0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    if log:
        return 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi) + 1e-9)
    if hi == lo:
        if lo >= 0:
            return 0.0, (hi * 1.1 if hi > 0 else 1.0)
        return lo * 1.1, (0.0 if hi < 0 else 1.0)
    pad = (hi - lo) * 0.05
    return (0.0 if lo >= 0 and lo - pad < 0 else lo - pad), hi + pad


def _series_chart(log: TrainingLog, keys: Sequence[str], title: str, y_label: str, log_y: bool | None,
                  width: int, height: int) -> np.ndarray:  # fmt: skip
    steps = np.array([s for k in keys for s, _ in log[k]], dtype=np.float64)
    vals = np.array([v for k in keys for _, v in log[k]], dtype=np.float64)
    finite = vals[np.isfinite(vals)]
    if log_y is None:  # losses spanning more than 30x read better on a log axis
        log_y = bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > 30)
    x_lo, x_hi = float(steps.min()), float(steps.max())
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    chart = Chart((x_lo, x_hi), _range(vals, log_y), width, height, title=title, x_label="step", y_label=y_label,
                  log_y=log_y)  # fmt: skip
    for key in keys:
        xs, ys = zip(*log[key], strict=True)
        chart.line(xs, ys, key)
    return chart.render()


def draw_training_curves(log: TrainingLog, title: str = "", width: int = 420, height: int = 300) -> np.ndarray:
    """Losses (``loss_*``), learning rate (``lr``) and validation scores (``val_iou_*`` of the object
    classes, ``val_ap_*_moderate``), one chart each, side by side; charts without data are left out.

    Raises :class:`ValueError` when the log has none of these series.
    """
    panels = []
    losses = [k for k in log if k.startswith("loss_")]
    if losses:
        panels.append(_series_chart(log, losses, f"{title} loss".strip(), "loss", None, width, height))
    if "lr" in log:
        panels.append(_series_chart(log, ["lr"], f"{title} learning rate".strip(), "lr", False, width, height))
    val = [k for k in log if k.startswith("val_iou_") and not k.endswith("_unknown")]
    val += [k for k in log if k.startswith("val_ap_") and k.endswith("_moderate")]
    val = [k for k in val if any(math.isfinite(v) for _, v in log[k])]
    if val:
        label = "IoU" if val[0].startswith("val_iou_") else "AP %"
        panels.append(_series_chart(log, val, f"{title} validation".strip(), label, False, width, height))
    if not panels:
        raise ValueError("the training log has no loss, lr or validation series")
    return hstack(panels)
