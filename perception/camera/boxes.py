"""Box coding, IoU, NMS and SqueezeDet post-processing, pure numpy and vectorised.

Conventions:

* pixel coordinates, x to the right and y down, origin at the top-left pixel; a pixel index is a
  zero-based coordinate, so a box clipped to an image of width ``W`` has ``0 <= x <= W - 1`` (the
  original SqueezeDet clips the same way, and KITTI labels use the same convention);
* ``xyxy`` boxes are (x1, y1, x2, y2), corners, ``x1 <= x2`` and ``y1 <= y2``; ``cxcywh`` boxes are
  (centre x, centre y, width, height); width is ``x2 - x1`` (no "+1": areas and IoU are those of
  continuous rectangles, as the original's ``batch_iou`` and the KITTI devkit compute them);
* anchors are ``cxcywh`` in the network input frame (1248 x 384 for KITTI, see
  :mod:`perception.camera.anchors`).

Box deltas follow the SqueezeDet paper and decoder: ``dx = (gx - ax) / aw``, ``dy = (gy - ay) / ah``,
``dw = ln(gw / aw)``, ``dh = ln(gh / ah)``; decoding replaces ``exp`` above 1 by its tangent line
(:func:`safe_exp`). Note: the original training data layer (``imdb.read_batch``) divides ``dx``, ``dy``
by the *ground-truth* width and height while its decoder multiplies by the *anchor* width and height;
we use the anchor size on both sides so that encoding and decoding are inverses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from perception.camera.anchors import INPUT_HEIGHT, INPUT_WIDTH
from perception.io.kitti import KittiObject

#: Detection classes, in the order of the ConvDet class channels.
CLASS_NAMES: tuple[str, ...] = ("car", "pedestrian", "cyclist")

#: KITTI ``label_2`` type of each detection class.
KITTI_TYPES: dict[str, str] = {"car": "Car", "pedestrian": "Pedestrian", "cyclist": "Cyclist"}

#: ``safe_exp`` switches from exp to its tangent at this value (``mc.EXP_THRESH`` of the original).
EXP_THRESHOLD = 1.0


def _as_float(a: Any) -> np.ndarray:
    arr = np.asarray(a)
    return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)


def _check_boxes(a: np.ndarray, name: str) -> None:
    if a.ndim < 1 or a.shape[-1] != 4:
        raise ValueError(f"{name} must have a last axis of 4, got shape {a.shape}")


# --- formats ----------------------------------------------------------------------------------


def xyxy_to_cxcywh(boxes: Any) -> np.ndarray:
    """(..., 4) corner boxes (x1, y1, x2, y2) to (cx, cy, w, h), same units (pixels)."""
    b = _as_float(boxes)
    _check_boxes(b, "boxes")
    x1, y1, x2, y2 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(boxes: Any) -> np.ndarray:
    """(..., 4) centre boxes (cx, cy, w, h) to corners (x1, y1, x2, y2), same units (pixels)."""
    b = _as_float(boxes)
    _check_boxes(b, "boxes")
    cx, cy, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


# --- delta coding -----------------------------------------------------------------------------


def safe_exp(x: Any, threshold: float = EXP_THRESHOLD) -> np.ndarray:
    """``exp(x)`` for ``x <= threshold``, its tangent ``e**threshold * (x - threshold + 1)`` above.

    As the original's ``util.safe_exp``: with the default threshold 1 this is ``e * x`` for ``x > 1``.
    It is continuous and increasing, and keeps decoded sizes finite for wild network outputs.
    """
    arr = _as_float(x)
    slope = math.exp(threshold)
    return np.where(arr > threshold, slope * (arr - threshold + 1.0), np.exp(np.minimum(arr, threshold)))


def encode_deltas(gt_cxcywh: Any, anchors: Any) -> np.ndarray:
    """Regression targets (..., 4) = (dx, dy, dw, dh) of boxes relative to anchors (both cxcywh, pixels).

    ``dx = (gx - ax) / aw``, ``dy = (gy - ay) / ah``, ``dw = ln(gw / aw)``, ``dh = ln(gh / ah)``
    (dimensionless). Shapes broadcast; widths and heights must be positive.
    """
    g = _as_float(gt_cxcywh)
    a = _as_float(anchors)
    _check_boxes(g, "gt_cxcywh")
    _check_boxes(a, "anchors")
    return np.stack(
        [
            (g[..., 0] - a[..., 0]) / a[..., 2],
            (g[..., 1] - a[..., 1]) / a[..., 3],
            np.log(g[..., 2] / a[..., 2]),
            np.log(g[..., 3] / a[..., 3]),
        ],
        axis=-1,
    )


def decode_deltas(deltas: Any, anchors: Any, exp_threshold: float = EXP_THRESHOLD) -> np.ndarray:
    """Boxes (..., 4) cxcywh in pixels from deltas (dx, dy, dw, dh) and anchors (cxcywh, pixels).

    ``cx = ax + dx * aw``, ``cy = ay + dy * ah``, ``w = aw * safe_exp(dw)``, ``h = ah * safe_exp(dh)``;
    the inverse of :func:`encode_deltas` wherever ``dw, dh <= exp_threshold``.
    """
    d = _as_float(deltas)
    a = _as_float(anchors)
    _check_boxes(d, "deltas")
    _check_boxes(a, "anchors")
    return np.stack(
        [
            a[..., 0] + d[..., 0] * a[..., 2],
            a[..., 1] + d[..., 1] * a[..., 3],
            a[..., 2] * safe_exp(d[..., 2], exp_threshold),
            a[..., 3] * safe_exp(d[..., 3], exp_threshold),
        ],
        axis=-1,
    )


def clip_boxes(boxes_xyxy: Any, width: float, height: float) -> np.ndarray:
    """Corner boxes clipped to an image of ``width`` x ``height`` pixels: x in [0, W-1], y in [0, H-1].

    Zero-based pixel coordinates, as the original SqueezeDet's ``trimming`` step. A box entirely
    outside the image collapses to a degenerate box on the border.
    """
    b = _as_float(boxes_xyxy)
    _check_boxes(b, "boxes_xyxy")
    out = b.copy()
    out[..., 0::2] = np.clip(b[..., 0::2], 0.0, width - 1.0)
    out[..., 1::2] = np.clip(b[..., 1::2], 0.0, height - 1.0)
    return out


# --- overlap and suppression ------------------------------------------------------------------


def iou_matrix(a_xyxy: Any, b_xyxy: Any) -> np.ndarray:
    """Intersection over union (N, M) of corner boxes ``a`` (N, 4) and ``b`` (M, 4).

    Areas of continuous rectangles (``(x2 - x1) * (y2 - y1)``); pairs without a positive-area
    intersection, degenerate boxes included, have IoU 0.
    """
    a = _as_float(a_xyxy).reshape(-1, 4)
    b = _as_float(b_xyxy).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def nms(boxes_xyxy: Any, scores: Any, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices (int64) of the kept boxes, highest score first.

    The highest-scoring remaining box is kept and every remaining box whose IoU with it is strictly
    greater than ``iou_threshold`` is dropped (the original's ``ov > threshold``); ties in score keep
    the lower index first. Unlike the original ``util.nms``, a box that has been suppressed does not
    suppress others (standard greedy NMS).
    """
    b = _as_float(boxes_xyxy).reshape(-1, 4)
    s = _as_float(scores).reshape(-1)
    if len(b) != len(s):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    order = np.argsort(-s, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        if not rest.size:
            break
        ious = iou_matrix(b[best : best + 1], b[rest])[0]
        order = rest[ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes_xyxy: Any, scores: Any, class_ids: Any, iou_threshold: float) -> np.ndarray:
    """Per-class NMS: boxes of different classes never suppress each other.

    Returns kept indices (int64) sorted by descending score (ties: lower index first).
    """
    b = _as_float(boxes_xyxy).reshape(-1, 4)
    s = _as_float(scores).reshape(-1)
    c = np.asarray(class_ids).reshape(-1)
    if not (len(b) == len(s) == len(c)):
        raise ValueError(f"{len(b)} boxes, {len(s)} scores and {len(c)} class ids")
    kept = [np.flatnonzero(c == cls)[nms(b[c == cls], s[c == cls], iou_threshold)] for cls in np.unique(c)]
    if not kept:
        return np.zeros(0, dtype=np.int64)
    idx = np.concatenate(kept)
    return idx[np.lexsort((idx, -s[idx]))].astype(np.int64)


# --- anchor assignment ------------------------------------------------------------------------


def assign_anchors(gt_xyxy: Any, anchors: Any) -> np.ndarray:
    """The anchor (index into ``anchors``) responsible for each ground-truth box: (M,) int64, unique.

    ``gt_xyxy`` (M, 4) corner boxes and ``anchors`` (A, 4) cxcywh, both in the network input frame
    (pixels). In the order of the ground-truth boxes, as the original data layer
    (``imdb.read_batch``): the free anchor with the highest IoU, provided that IoU is > 0; when no free
    anchor overlaps the box (its best IoU is 0, or all overlapping anchors are already taken), the
    free anchor nearest in squared distance over (cx, cy, w, h). Ties in IoU go to the anchor nearest in
    that distance (the original's order among equal IoUs is whatever ``np.argsort`` gives), remaining
    ties to the lower index.
    """
    g = _as_float(gt_xyxy).reshape(-1, 4)
    a = _as_float(anchors).reshape(-1, 4)
    if len(g) > len(a):
        raise ValueError(f"cannot give {len(g)} boxes one anchor each with only {len(a)} anchors")
    anchors_xyxy = cxcywh_to_xyxy(a)
    ious = iou_matrix(g, anchors_xyxy)
    dists = np.sum((xyxy_to_cxcywh(g)[:, None, :] - a[None, :, :]) ** 2, axis=-1)
    taken = np.zeros(len(a), dtype=bool)
    out = np.empty(len(g), dtype=np.int64)
    for m in range(len(g)):
        iou = np.where(taken, -np.inf, ious[m])
        best = iou.max()
        # a positive IoU: the best free anchors; none: every free anchor, nearest wins
        candidates = np.flatnonzero(iou == best) if best > 0 else np.flatnonzero(~taken)
        pick = int(candidates[np.argmin(dists[m, candidates])])
        taken[pick] = True
        out[m] = pick
    return out


# --- network output ---------------------------------------------------------------------------


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def split_convdet(
    output: Any, *, channels_last: bool = True, num_classes: int = 3, anchors_per_cell: int = 9
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split one ConvDet output map into (class_probs (A, C), confidence (A,), deltas (A, 4)).

    ``output`` is (H, W, K) when ``channels_last`` (the original TensorFlow layout) or (K, H, W)
    (PyTorch/ONNX), K = anchors_per_cell * (num_classes + 1 + 4), a leading batch axis of 1 allowed.
    Channels: ``[0 : B*C]`` class logits anchor-major (anchor k at ``C*k .. C*k + C - 1``, softmax),
    ``[B*C : B*C + B]`` one confidence logit per anchor (sigmoid), then 4 deltas per anchor
    (anchor k at ``B*C + B + 4*k``). Rows follow :func:`perception.camera.anchors.squeezedet_anchors`.
    """
    out = _as_float(output)
    if out.ndim == 4 and out.shape[0] == 1:
        out = out[0]
    if out.ndim != 3:
        raise ValueError(f"expected a (H, W, K) or (K, H, W) map, got shape {out.shape}")
    if not channels_last:
        out = np.moveaxis(out, 0, -1)
    b, c = anchors_per_cell, num_classes
    if out.shape[-1] != b * (c + 5):
        raise ValueError(f"expected {b * (c + 5)} channels, got {out.shape[-1]}")
    h, w = out.shape[:2]
    n = h * w * b
    class_probs = _softmax(out[..., : b * c].reshape(n, c), axis=-1)
    confidence = _sigmoid(out[..., b * c : b * c + b].reshape(n))
    deltas = out[..., b * c + b :].reshape(n, 4)
    return class_probs, confidence, deltas


# --- detections -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection2D:
    """One detected object: class, score in [0, 1] and corner box in pixels of the original image."""

    class_id: int
    class_name: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_kitti(self) -> KittiObject:
        """As a KITTI result line (16 fields, 3D fields left at the devkit's "unknown" values)."""
        kitti_type = KITTI_TYPES.get(self.class_name, self.class_name.capitalize())
        return KittiObject(type=kitti_type, bbox=self.box, score=self.score)


def postprocess_detections(
    class_probs: Any,
    confidence: Any,
    deltas: Any,
    anchors: Any,
    *,
    prob_threshold: float = 0.005,
    nms_threshold: float = 0.4,
    top_n: int = 64,
    input_size: tuple[int, int] = (INPUT_WIDTH, INPUT_HEIGHT),
    original_size: tuple[int, int] | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
) -> list[Detection2D]:
    """Detections of one image from per-anchor network outputs, as the original ``filter_prediction``.

    ``class_probs`` (A, C) class probabilities (after softmax), ``confidence`` (A,) objectness in
    [0, 1], ``deltas`` (A, 4) and ``anchors`` (A, 4) cxcywh in the input frame. ``input_size`` and
    ``original_size`` are (width, height) in pixels; ``original_size`` defaults to the input size.

    1. score = max over classes of P(class) * confidence, class = the argmax;
    2. boxes decoded in the input frame and clipped to it (x in [0, W-1], y in [0, H-1]);
    3. when ``0 < top_n < A``, the ``top_n`` highest scores (ties: lower anchor index first); otherwise
       the anchors with score > ``prob_threshold`` (both as the original);
    4. NMS per class (IoU > ``nms_threshold`` suppresses);
    5. scores <= ``prob_threshold`` dropped (the original skips this when it takes the top N);
    6. boxes scaled to the original image and clipped to it.

    Returned sorted by descending score.
    """
    probs = _as_float(class_probs)
    conf = _as_float(confidence).reshape(-1)
    d = _as_float(deltas)
    a = _as_float(anchors)
    if probs.ndim != 2:
        raise ValueError(f"class_probs must be (A, C), got {probs.shape}")
    num = probs.shape[0]
    if conf.shape != (num,) or d.shape != (num, 4) or a.shape != (num, 4):
        raise ValueError(
            f"inconsistent shapes: class_probs {probs.shape}, confidence {conf.shape}, "
            f"deltas {d.shape}, anchors {a.shape}"
        )
    if probs.shape[1] != len(class_names):
        raise ValueError(f"{probs.shape[1]} classes but {len(class_names)} class names")
    in_w, in_h = input_size
    out_w, out_h = original_size if original_size is not None else input_size

    joint = probs * conf[:, None]
    cls = np.argmax(joint, axis=1)
    score = joint[np.arange(num), cls]

    top = 0 < top_n < num
    idx = np.argsort(-score, kind="stable")[:top_n] if top else np.flatnonzero(score > prob_threshold)
    boxes = clip_boxes(cxcywh_to_xyxy(decode_deltas(d[idx], a[idx])), in_w, in_h)
    cls, score = cls[idx], score[idx]

    keep = batched_nms(boxes, score, cls, nms_threshold)
    keep = keep[score[keep] > prob_threshold]
    boxes, cls, score = boxes[keep], cls[keep], score[keep]

    scale = np.array([out_w / in_w, out_h / in_h, out_w / in_w, out_h / in_h])
    boxes = clip_boxes(boxes * scale, out_w, out_h)
    return [
        Detection2D(
            class_id=int(c),
            class_name=class_names[int(c)],
            score=float(s),
            x1=float(bx[0]),
            y1=float(bx[1]),
            x2=float(bx[2]),
            y2=float(bx[3]),
        )
        for c, s, bx in zip(cls, score, boxes, strict=True)
    ]
