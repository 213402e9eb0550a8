"""Range images coloured by class, as an operator looks at them.

A range image is (H, W) with row 0 the highest beam and column 0 the leftmost azimuth (+45 deg in the
KITTI front view; DESIGN.md, data contracts). Rows are repeated ``row_scale`` times in the pictures
because range images are much wider than tall (64 x 512).
"""

from __future__ import annotations

import numpy as np

from perception.lidar.projection import Projection, points_to_pixels
from perception.viz.draw import CAPTION_HEIGHT, CLASS_NAMES, PANEL_GAP, caption, class_colour, class_legend, hstack

# unknown (grey), car (blue), pedestrian (red), cyclist (yellow); empty pixels black
CLASS_COLOURS = np.array([class_colour(name) for name in CLASS_NAMES], dtype=np.uint8)


def colourise_labels(pixel_labels: np.ndarray, mask: np.ndarray, row_scale: int = 4) -> np.ndarray:
    """uint8 RGB (H * row_scale, W, 3): each pixel's class colour, black where the mask is False.

    Rows are repeated ``row_scale`` times because range images are much wider than tall (64 x 512).
    """
    labels = np.asarray(pixel_labels)
    if labels.shape != np.asarray(mask).shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and mask {np.asarray(mask).shape} must be the same (H, W)")
    if row_scale < 1:
        raise ValueError(f"row_scale must be >= 1, got {row_scale}")
    palette = np.concatenate([CLASS_COLOURS, np.zeros((1, 3), np.uint8)])
    index = np.where(mask, np.clip(labels, 0, len(CLASS_COLOURS) - 1), len(CLASS_COLOURS))
    return np.repeat(palette[index], row_scale, axis=0)


def pixel_labels_of_points(point_labels: np.ndarray, projection: Projection) -> np.ndarray:
    """int64 (H, W): the label of the point that owns each pixel (the nearest one), 0 on empty pixels.

    ``point_labels`` is (N,) per input point of the cloud ``projection`` was made from.
    """
    return points_to_pixels(np.asarray(point_labels).astype(np.int64, copy=False), projection)


def agreement(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of filled pixels (``mask``) where the two label images agree (0 when none is filled)."""
    m = np.asarray(mask, dtype=bool)
    total = int(m.sum())
    return float((np.asarray(pred)[m] == np.asarray(truth)[m]).sum() / total) if total else 0.0


def class_iou(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float | None]:
    """Per-class IoU (0..1) of two label images over the filled pixels; None for a class absent from both."""
    m = np.asarray(mask, dtype=bool)
    p, t = np.asarray(pred)[m], np.asarray(truth)[m]
    out: dict[str, float | None] = {}
    for k, name in enumerate(CLASS_NAMES[1:], start=1):
        union = int(((p == k) | (t == k)).sum())
        out[name] = float(((p == k) & (t == k)).sum() / union) if union else None
    return out


def range_comparison(
    pred_labels: np.ndarray,
    truth_labels: np.ndarray | None,
    mask: np.ndarray,
    row_scale: int = 4,
    titles: tuple[str, str] = ("prediction", "ground truth"),
) -> np.ndarray:
    """The range image coloured by predicted label and by ground truth, side by side, with a class legend.

    Layout (pixels): each panel is (H * row_scale, W) under a caption bar of
    :data:`~perception.viz.draw.CAPTION_HEIGHT`; the prediction starts at column 0, the ground truth at
    column W + :data:`~perception.viz.draw.PANEL_GAP`; so range pixel (r, c) of panel k is drawn at rows
    ``CAPTION_HEIGHT + r * row_scale`` .. ``+ row_scale - 1`` and column ``k * (W + PANEL_GAP) + c``. The
    legend strip is at the bottom. Without ``truth_labels`` only the prediction panel is drawn. The
    prediction's caption reports the pixel agreement and per-class IoU against the ground truth.
    """
    pred_title = titles[0]
    if truth_labels is not None:
        ious = class_iou(pred_labels, truth_labels, mask)
        scores = ", ".join(f"{n} {v * 100:.0f}" for n, v in ious.items() if v is not None)
        pred_title += f" (agreement {agreement(pred_labels, truth_labels, mask) * 100:.1f}%; IoU % {scores})"
    panels = [caption(colourise_labels(pred_labels, mask, row_scale), pred_title)]
    if truth_labels is not None:
        panels.append(caption(colourise_labels(truth_labels, mask, row_scale), titles[1]))
    top = hstack(panels)
    return np.concatenate([top, class_legend(top.shape[1])], axis=0)


def range_panel_origin(panel: int, width: int) -> tuple[int, int]:
    """(row, col) in a :func:`range_comparison` picture of range pixel (0, 0) of ``panel`` (0 prediction, 1 truth)."""
    return CAPTION_HEIGHT, panel * (width + PANEL_GAP)
