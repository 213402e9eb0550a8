"""Segmentation metrics (per-class IoU, precision, recall over valid pixels or points), numpy only.

IoU_c = TP_c / (TP_c + FP_c + FN_c), precision_c = TP_c / (TP_c + FP_c), recall_c = TP_c / (TP_c + FN_c),
summed over all frames before dividing (as SqueezeSeg's evaluation does); NaN where undefined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception.lidar.squeezeseg_config import CLASSES


@dataclass
class SegmentationMetrics:
    classes: tuple[str, ...]
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @staticmethod
    def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(b > 0, a / np.maximum(b, 1), np.nan)

    @property
    def iou(self) -> np.ndarray:
        return self._ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def precision(self) -> np.ndarray:
        return self._ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> np.ndarray:
        return self._ratio(self.tp, self.tp + self.fn)

    def flat(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, name in enumerate(self.classes):
            out[f"iou_{name}"] = float(self.iou[i])
            out[f"precision_{name}"] = float(self.precision[i])
            out[f"recall_{name}"] = float(self.recall[i])
        return out


def segmentation_metrics(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, classes: tuple[str, ...] = CLASSES
) -> SegmentationMetrics:
    """Counts over every valid element of integer label arrays of equal shape."""
    p = np.asarray(pred).ravel()
    g = np.asarray(gt).ravel()
    if p.shape != g.shape:
        raise ValueError(f"prediction and ground truth differ in size: {p.shape} vs {g.shape}")
    if valid is not None:
        v = np.asarray(valid, dtype=bool).ravel()
        p, g = p[v], g[v]
    k = len(classes)
    confusion = np.bincount(g.astype(np.int64) * k + p.astype(np.int64), minlength=k * k).reshape(k, k)
    tp = np.diag(confusion).astype(np.int64)
    return SegmentationMetrics(classes, tp, confusion.sum(0) - tp, confusion.sum(1) - tp)
