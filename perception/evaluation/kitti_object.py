"""KITTI 2D object detection evaluation: a port of the official devkit's ``evaluate_object.cpp``.

The image-plane (2D box) part of the KITTI object devkit, reproduced decision by decision; the
function names in brackets are the devkit's.

* Classes car, pedestrian, cyclist; a detection matches when its IoU with the ground truth is
  *strictly greater* than 0.7 (car) or 0.5 (pedestrian, cyclist) (``MIN_OVERLAP``,
  ``overlap > MIN_OVERLAP[current_class]`` in ``computeStatistics``). Class names compare
  case-insensitively (``strcasecmp``).
* Difficulties easy / moderate / hard: ground truth with box height ``y2 - y1 < 40 / 25 / 25`` px,
  occlusion ``> 0 / 1 / 2`` or truncation ``> 0.15 / 0.3 / 0.5`` is *ignored*: it is neither a hit
  nor a miss, but a detection on it is consumed (not a false positive). ``Van`` ground truth is
  ignored the same way for car and ``Person_sitting`` for pedestrian; other classes play no part.
  (``cleanData``)
* Detections lower than the difficulty's minimum height (``int(|y2 - y1|) < MIN_HEIGHT``) are ignored
  whatever their class: never a true or false positive, though they may consume a ground-truth box
  they overlap when no full-height detection does. (``cleanData``, ``computeStatistics``)
* An unmatched detection covering a ``DontCare`` region by more than the class's minimum overlap,
  measured as intersection over the *detection's* area (``boxoverlap(det, dc, 0)``), is not a false
  positive. (``computeStatistics``)
* Score thresholds: a first pass matches each ground-truth box, in file order, to the
  highest-scoring unassigned detection above the overlap, and collects the true-positive scores;
  ``getThresholds`` picks from them (sorted descending) up to 41 scores whose recall
  ``(i + 1) / n_gt`` best approximates 0, 1/40, ..., 1. A second pass, per threshold, ignores
  detections scoring below it, matches each ground-truth box to the unassigned detection with the
  greatest overlap, and counts TP, FP and FN. (``eval_class``, ``computeStatistics``)
* Precision at threshold ``i`` is ``TP / (TP + FP)``, then made monotone,
  ``precision[i] = max(precision[i:])``, over 41 entries (missing thresholds are 0). AP_11 is the
  mean of ``precision[0, 4, ..., 40]`` (``saveStats`` of the original 2012 devkit, the metric of the
  SqueezeDet paper), AP_R40 the mean of ``precision[1..40]`` (the benchmark's metric since 2019), both
  in percent.

Where the devkit has undefined behaviour this port makes a choice: ``0 / 0`` precision is 0, and a
class/difficulty without any valid ground-truth box has AP ``None`` (the devkit prints 0). The
devkit only evaluates classes that appear at least once among the detections; here every class is
evaluated (AP 0 when it has ground truth but no detections).

Known property of the devkit, kept: the 41 entries are filled one per picked threshold, so with fewer
than 41 ground-truth boxes (or fewer than 41 true positives) the curve is short and the AP is low even
for perfect detections, e.g. two boxes detected perfectly give AP_R40 = 2.5.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from perception.io.kitti import KittiObject, read_label, sequence_ids

PathLike = str | os.PathLike[str]
Metric = Literal["R40", "11"]

CLASSES: tuple[str, ...] = ("car", "pedestrian", "cyclist")
DIFFICULTIES: tuple[str, ...] = ("easy", "moderate", "hard")
MIN_OVERLAP: dict[str, float] = {"car": 0.7, "pedestrian": 0.5, "cyclist": 0.5}
MIN_HEIGHT: tuple[int, int, int] = (40, 25, 25)  # pixels, per difficulty
MAX_OCCLUSION: tuple[int, int, int] = (0, 1, 2)
MAX_TRUNCATION: tuple[float, float, float] = (0.15, 0.3, 0.5)
NEIGHBOUR_CLASS: dict[str, str] = {"car": "van", "pedestrian": "person_sitting"}
N_SAMPLE_PTS = 41
DONTCARE = "dontcare"
_NO_DETECTION = -10000000.0


# --- per-frame data ---------------------------------------------------------------------------


def _boxoverlap(det: np.ndarray, other: np.ndarray, *, over_detection: bool = False) -> np.ndarray:
    """(D, G) overlap of detection boxes (D, 4) with boxes (G, 4), as the devkit's ``boxoverlap``.

    IoU ``inter / (det_area + other_area - inter)``, or ``inter / det_area`` with ``over_detection``
    (criterion 0); 0 where the intersection has no positive width and height. The arithmetic follows
    the devkit's order of operations so that boundary cases (IoU exactly 0.7) compare the same way.
    """
    if det.size == 0 or other.size == 0:
        return np.zeros((len(det), len(other)))
    x1 = np.maximum(det[:, None, 0], other[None, :, 0])
    y1 = np.maximum(det[:, None, 1], other[None, :, 1])
    x2 = np.minimum(det[:, None, 2], other[None, :, 2])
    y2 = np.minimum(det[:, None, 3], other[None, :, 3])
    w = x2 - x1
    h = y2 - y1
    valid = (w > 0) & (h > 0)
    inter = w * h
    det_area = ((det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1]))[:, None]
    other_area = ((other[:, 2] - other[:, 0]) * (other[:, 3] - other[:, 1]))[None, :]
    denom = det_area if over_detection else det_area + other_area - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(valid, inter / np.where(valid, denom, 1.0), 0.0)
    return out


@dataclass(frozen=True)
class _Frame:
    gt_types: np.ndarray  # (G,) lower-case str
    gt_height: np.ndarray  # (G,) y2 - y1
    gt_truncation: np.ndarray
    gt_occlusion: np.ndarray
    det_types: np.ndarray  # (D,) lower-case str
    det_height: np.ndarray  # (D,) int(|y1 - y2|), as the devkit's int32_t
    det_scores: np.ndarray
    iou: np.ndarray  # (D, G) boxoverlap(det, gt)
    dontcare_cover: np.ndarray  # (D,) max over DontCare regions of boxoverlap(det, dc, 0); 0 if none


def _boxes(objs: Sequence[KittiObject]) -> np.ndarray:
    return np.array([o.bbox for o in objs], dtype=np.float64).reshape(-1, 4)


def _frame(gt: Sequence[KittiObject], dt: Sequence[KittiObject], frame_id: str) -> _Frame:
    for o in dt:
        if o.score is None:
            raise ValueError(f"frame {frame_id}: detection {o.type} has no score (a result line has 16 fields)")
    gt_boxes, det_boxes = _boxes(gt), _boxes(dt)
    dc = np.array([o.type.lower() == DONTCARE for o in gt], dtype=bool)
    cover = _boxoverlap(det_boxes, gt_boxes[dc], over_detection=True)
    return _Frame(
        gt_types=np.array([o.type.lower() for o in gt], dtype=object),
        gt_height=gt_boxes[:, 3] - gt_boxes[:, 1],
        gt_truncation=np.array([o.truncated for o in gt], dtype=np.float64),
        gt_occlusion=np.array([o.occluded for o in gt], dtype=np.int64),
        det_types=np.array([o.type.lower() for o in dt], dtype=object),
        det_height=np.trunc(np.abs(det_boxes[:, 1] - det_boxes[:, 3])),
        det_scores=np.array([o.score for o in dt], dtype=np.float64),
        iou=_boxoverlap(det_boxes, gt_boxes),
        dontcare_cover=cover.max(axis=1) if cover.shape[1] else np.zeros(len(dt)),
    )


def _clean(frame: _Frame, cls: str, difficulty: int) -> tuple[np.ndarray, np.ndarray]:
    """``cleanData``: ignored_gt and ignored_det (0 evaluated, 1 ignored, -1 other class)."""
    valid = np.where(frame.gt_types == cls, 1, -1)
    neighbour = NEIGHBOUR_CLASS.get(cls)
    if neighbour is not None:
        valid = np.where(frame.gt_types == neighbour, 0, valid)
    ignore = (
        (frame.gt_occlusion > MAX_OCCLUSION[difficulty])
        | (frame.gt_truncation > MAX_TRUNCATION[difficulty])
        | (frame.gt_height < MIN_HEIGHT[difficulty])
    )
    ignored_gt = np.where((valid == 1) & ~ignore, 0, np.where((valid == 0) | ((valid == 1) & ignore), 1, -1))
    ignored_det = np.where(frame.det_height < MIN_HEIGHT[difficulty], 1, np.where(frame.det_types == cls, 0, -1))
    return ignored_gt.astype(np.int64), ignored_det.astype(np.int64)


def _true_positive_scores(
    frame: _Frame, ignored_gt: np.ndarray, ignored_det: np.ndarray, min_overlap: float
) -> list[float]:
    """First pass (``computeStatistics`` with ``compute_fp = false``): the scores of true positives.

    Each ground-truth box in order takes the highest-scoring unassigned detection (first one among
    equal scores) overlapping it by more than ``min_overlap``.
    """
    scores = frame.det_scores
    usable = (ignored_det != -1) & (scores > _NO_DETECTION)
    assigned = np.zeros(len(scores), dtype=bool)
    found: list[float] = []
    for i in np.flatnonzero(ignored_gt != -1):
        cand = usable & ~assigned & (frame.iou[:, i] > min_overlap)
        if not cand.any():
            continue
        j = int(np.argmax(np.where(cand, scores, -np.inf)))
        assigned[j] = True
        if ignored_gt[i] == 0 and ignored_det[j] == 0:
            found.append(float(scores[j]))
    return found


def _counts(
    frame: _Frame, ignored_gt: np.ndarray, ignored_det: np.ndarray, min_overlap: float, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Second pass (``computeStatistics`` with ``compute_fp = true``) for every threshold at once.

    Returns TP, FP, FN, each (T,). For each threshold, detections scoring below it are ignored; each
    ground-truth box in order takes, among unassigned detections overlapping it by more than
    ``min_overlap``, the evaluated one (ignored_det 0) with the greatest overlap (first among equals),
    else the first height-ignored one (ignored_det 1).
    """
    num_t, num_d = len(thresholds), len(frame.det_scores)
    tp = np.zeros(num_t, dtype=np.int64)
    fn = np.zeros(num_t, dtype=np.int64)
    above = frame.det_scores[None, :] >= thresholds[:, None]  # not ignored_threshold
    usable = above & (ignored_det != -1)[None, :]
    evaluated = (ignored_det == 0)[None, :]
    height_ignored = (ignored_det == 1)[None, :]
    assigned = np.zeros((num_t, num_d), dtype=bool)
    rows = np.arange(num_t)
    for i in np.flatnonzero(ignored_gt != -1):
        overlap = frame.iou[:, i]
        cand = usable & ~assigned & (overlap > min_overlap)[None, :]
        cand0 = cand & evaluated
        cand1 = cand & height_ignored
        has0, has1 = cand0.any(axis=1), cand1.any(axis=1)
        j0 = np.argmax(np.where(cand0, overlap[None, :], -np.inf), axis=1) if num_d else np.zeros(num_t, int)
        j1 = np.argmax(cand1, axis=1) if num_d else np.zeros(num_t, int)
        det_idx = np.where(has0, j0, j1)
        valid = has0 | has1
        if ignored_gt[i] == 0:
            fn += ~valid
            tp += valid & has0  # the chosen detection is evaluated exactly when one was available
        assigned[rows[valid], det_idx[valid]] = True
    unmatched = usable & evaluated & ~assigned
    in_dontcare = (frame.dontcare_cover > min_overlap)[None, :]
    fp = (unmatched & ~in_dontcare).sum(axis=1)
    return tp, fp.astype(np.int64), fn


def get_thresholds(scores: Iterable[float], num_gt: int) -> np.ndarray:
    """``getThresholds``: up to 41 true-positive scores (descending) approximating recall 0, 1/40, ..., 1.

    Score ``v[i]`` (sorted descending) is taken when its recall ``(i + 1) / num_gt`` is at least as
    close to the current recall step as the next one's, and always for the last score; each taken
    score advances the step by 1/40 (accumulated in floating point as the devkit does).
    """
    v = sorted((float(s) for s in scores), reverse=True)
    out: list[float] = []
    current = 0.0
    n = float(num_gt)
    for i, score in enumerate(v):
        last = i == len(v) - 1
        left = (i + 1) / n
        right = left if last else (i + 2) / n
        if (right - current) < (current - left) and not last:
            continue
        out.append(score)
        current += 1.0 / (N_SAMPLE_PTS - 1.0)
    return np.asarray(out[:N_SAMPLE_PTS], dtype=np.float64)


def average_precision(precision: Sequence[float] | np.ndarray, metric: Metric = "R40") -> float:
    """AP in percent from the 41 interpolated precision values: R40 mean of [1..40], 11 mean of [0::4]."""
    p = np.asarray(precision, dtype=np.float64)
    if p.shape != (N_SAMPLE_PTS,):
        raise ValueError(f"expected {N_SAMPLE_PTS} precision values, got shape {p.shape}")
    if metric == "R40":
        return float(p[1:].sum() / 40.0 * 100.0)
    if metric == "11":
        return float(p[0::4].sum() / 11.0 * 100.0)
    raise ValueError(f"metric must be 'R40' or '11', got {metric!r}")


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionRecall:
    """Precision/recall of one class and difficulty, as the devkit computes them.

    ``thresholds`` (K <= 41,) the picked scores, descending; ``tp``, ``fp``, ``fn`` (K,) counts at each
    threshold (detections scoring >= it); ``recall`` (K,) ``tp / (tp + fn)``; ``precision`` (41,) the
    interpolated precision, entry ``i`` belonging to threshold ``i`` (0 beyond K) and plotted by the
    devkit at recall ``i / 40`` (:attr:`recall_samples`).
    """

    class_name: str
    difficulty: str
    num_gt: int
    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    recall: np.ndarray
    precision: np.ndarray

    @property
    def recall_samples(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, N_SAMPLE_PTS)

    def ap(self, metric: Metric = "R40") -> float | None:
        """AP in percent, or None when there is no ground truth to recall."""
        return None if self.num_gt == 0 else average_precision(self.precision, metric)

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.class_name,
            "difficulty": self.difficulty,
            "num_gt": self.num_gt,
            "thresholds": self.thresholds.tolist(),
            "tp": self.tp.tolist(),
            "fp": self.fp.tolist(),
            "fn": self.fn.tolist(),
            "recall": self.recall.tolist(),
            "precision": self.precision.tolist(),
            "recall_samples": self.recall_samples.tolist(),
            "ap_r40": self.ap("R40"),
            "ap_11": self.ap("11"),
        }


def _eval_class(frames: Sequence[_Frame], cls: str, difficulty: int) -> PrecisionRecall:
    """``eval_class`` for one class and difficulty."""
    min_overlap = MIN_OVERLAP[cls]
    cleaned = [_clean(f, cls, difficulty) for f in frames]
    num_gt = int(sum(int((ig == 0).sum()) for ig, _ in cleaned))
    scores: list[float] = []
    for f, (ig, idet) in zip(frames, cleaned, strict=True):
        if (ig == 0).any():
            scores.extend(_true_positive_scores(f, ig, idet, min_overlap))
    thresholds = get_thresholds(scores, num_gt) if num_gt else np.zeros(0)
    k = len(thresholds)
    tp = np.zeros(k, dtype=np.int64)
    fp = np.zeros(k, dtype=np.int64)
    fn = np.zeros(k, dtype=np.int64)
    if k:
        for f, (ig, idet) in zip(frames, cleaned, strict=True):
            if not ((ig != -1).any() or (idet == 0).any()):
                continue
            t, p, n = _counts(f, ig, idet, min_overlap, thresholds)
            tp += t
            fp += p
            fn += n
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        raw = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    precision = np.zeros(N_SAMPLE_PTS)
    precision[:k] = raw
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # precision[i] = max(precision[i:])
    return PrecisionRecall(
        class_name=cls,
        difficulty=DIFFICULTIES[difficulty],
        num_gt=num_gt,
        thresholds=thresholds,
        tp=tp,
        fp=fp,
        fn=fn,
        recall=recall.astype(np.float64),
        precision=precision,
    )


def _frames(gt: Mapping[str, Sequence[KittiObject]], dt: Mapping[str, Sequence[KittiObject]]) -> list[_Frame]:
    return [_frame(gt[fid], dt.get(fid, ()), fid) for fid in gt]


def kitti_2d_curves(
    gt: Mapping[str, Sequence[KittiObject]],
    dt: Mapping[str, Sequence[KittiObject]],
    classes: Sequence[str] = CLASSES,
) -> dict[str, dict[str, PrecisionRecall]]:
    """Precision/recall data per class and difficulty (``curves[class][difficulty]``), for plots.

    ``gt`` maps frame ids to ground-truth objects (``label_2``), ``dt`` frame ids to detections (with
    scores). The frames evaluated are those of ``gt``; a frame missing from ``dt`` has no detections,
    and frames only in ``dt`` are not evaluated (the devkit reads only its image set).
    """
    for cls in classes:
        if cls not in MIN_OVERLAP:
            raise ValueError(f"unknown class {cls!r}; expected one of {CLASSES}")
    frames = _frames(gt, dt)
    return {cls: {DIFFICULTIES[d]: _eval_class(frames, cls, d) for d in range(3)} for cls in classes}


def evaluate_kitti_2d(
    gt: Mapping[str, Sequence[KittiObject]],
    dt: Mapping[str, Sequence[KittiObject]],
    metric: Metric = "R40",
) -> dict[str, Any]:
    """KITTI 2D AP in percent: ``{"car": {"easy": AP, "moderate": AP, "hard": AP}, ..., "metric": metric}``.

    ``metric`` "R40" (mean of 40 recall points, the benchmark since 2019) or "11" (11-point, the
    original 2012 devkit and the SqueezeDet paper). An AP is None where the class has no valid
    ground-truth box at that difficulty. See :func:`kitti_2d_curves` for the inputs.
    """
    if metric not in ("R40", "11"):
        raise ValueError(f"metric must be 'R40' or '11', got {metric!r}")
    curves = kitti_2d_curves(gt, dt)
    out: dict[str, Any] = {cls: {diff: pr.ap(metric) for diff, pr in per.items()} for cls, per in curves.items()}
    out["metric"] = metric
    return out


def load_label_dir(directory: PathLike, frame_ids: Iterable[str] | None = None) -> dict[str, list[KittiObject]]:
    """KITTI label or result files of a directory, by frame id (file stem).

    Without ``frame_ids``, every ``*.txt`` file, ordered as :func:`perception.io.kitti.sequence_ids`.
    With ``frame_ids``, those frames, and a missing file reads as no objects (a result directory
    holds no file for a frame without detections).
    """
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    if frame_ids is None:
        ids = sequence_ids([p.name for p in root.glob("*.txt") if p.is_file()])
        return {fid: read_label(root / f"{fid}.txt") for fid in ids}
    out: dict[str, list[KittiObject]] = {}
    for fid in frame_ids:
        path = root / f"{fid}.txt"
        out[fid] = read_label(path) if path.is_file() else []
    return out


def format_results(results: Mapping[str, Any]) -> str:
    """A small text table of :func:`evaluate_kitti_2d`'s result (AP in percent, "-" where undefined)."""

    def cell(v: float | None) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    lines = [f"KITTI 2D AP ({results.get('metric', '?')})  easy / moderate / hard"]
    for cls in CLASSES:
        if cls in results:
            row = results[cls]
            lines.append(f"  {cls:<10} " + " / ".join(cell(row.get(d)) for d in DIFFICULTIES))
    return "\n".join(lines)
