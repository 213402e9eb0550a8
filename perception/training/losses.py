"""Losses of SqueezeSeg and SqueezeDet, with the original coefficients.

SqueezeDet (``nn_skeleton._add_loss_graph`` of the public squeezeDet repository), with N the number of
ground-truth objects in the batch and A the anchors per image:

* class:      sum over positive anchors and classes of ``-(y log p + (1 - y) log(1 - p))`` x 1.0, / N
* confidence: mean over images of sum over anchors of ``(IoU - conf)^2`` weighted
  ``75 / N`` on positive anchors and ``100 / (A - N)`` on the others (IoU of the decoded predicted box
  with the anchor's ground truth, no gradient through it; 0 on non-positive anchors)
* bbox:       sum over positive anchors of ``5.0 * (delta - target)^2``, / N

SqueezeSeg: ``15 * sum(CE * mask * w[label]) / sum(mask)`` with ``w = [1/15, 1, 10, 10]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from perception.camera.boxes import assign_anchors, encode_deltas, xyxy_to_cxcywh
from perception.lidar import squeezeseg_config as seg_cfg

LOSS_COEF_CLASS = 1.0
LOSS_COEF_CONF_POS = 75.0
LOSS_COEF_CONF_NEG = 100.0
LOSS_COEF_BBOX = 5.0
EPSILON = 1e-16
EXP_THRESHOLD = 1.0


@dataclass
class DetectionTargets:
    """Per-anchor training targets of one image (numpy): mask (A,), deltas (A, 4), one-hot labels (A, C),
    ground-truth boxes (A, 4) cxcywh (zeros off the positive anchors)."""

    mask: np.ndarray
    deltas: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray


def squeezedet_targets(
    gt_xyxy: np.ndarray, gt_classes: np.ndarray, anchors: np.ndarray, num_classes: int = 3
) -> DetectionTargets:
    """Targets for ground-truth boxes (M, 4) in input-frame pixels and their class ids (M,)."""
    gt = np.asarray(gt_xyxy, dtype=np.float64).reshape(-1, 4)
    classes = np.asarray(gt_classes, dtype=np.int64).reshape(-1)
    if len(gt) != len(classes):
        raise ValueError(f"{len(gt)} boxes but {len(classes)} class ids")
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"class ids must lie in 0..{num_classes - 1}")
    n = len(anchors)
    mask = np.zeros(n, np.float32)
    deltas = np.zeros((n, 4), np.float32)
    labels = np.zeros((n, num_classes), np.float32)
    boxes = np.zeros((n, 4), np.float32)
    if len(gt):
        idx = assign_anchors(gt, anchors)
        cxcywh = xyxy_to_cxcywh(gt)
        mask[idx] = 1.0
        deltas[idx] = encode_deltas(cxcywh, anchors[idx])
        labels[idx, classes] = 1.0
        boxes[idx] = cxcywh
    return DetectionTargets(mask, deltas, labels, boxes)


def _safe_exp(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > EXP_THRESHOLD, np.e * (x - EXP_THRESHOLD + 1.0), torch.exp(x.clamp(max=EXP_THRESHOLD)))


def _iou_cxcywh(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a_lo, a_hi = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b_lo, b_hi = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    overlap = (torch.minimum(a_hi, b_hi) - torch.maximum(a_lo, b_lo)).clamp(min=0)
    iw, ih = overlap[..., 0], overlap[..., 1]
    inter = iw * ih
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return inter / union.clamp(min=EPSILON)


def squeezedet_loss(
    class_logits: torch.Tensor,
    confidence_logits: torch.Tensor,
    deltas: torch.Tensor,
    anchors: torch.Tensor,
    mask: torch.Tensor,
    target_deltas: torch.Tensor,
    labels: torch.Tensor,
    target_boxes: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """SqueezeDet loss terms and their sum.

    Shapes: class_logits (B, A, C), confidence_logits (B, A), deltas (B, A, 4), anchors (A, 4) cxcywh;
    targets stacked from :func:`squeezedet_targets`: mask (B, A), target_deltas (B, A, 4),
    labels (B, A, C), target_boxes (B, A, 4).
    """
    num_anchors = class_logits.shape[1]
    num_objects = mask.sum().clamp(min=1.0)
    probs = torch.softmax(class_logits, dim=-1)
    conf = torch.sigmoid(confidence_logits)

    class_loss = (
        (labels * -torch.log(probs + EPSILON) + (1 - labels) * -torch.log(1 - probs + EPSILON))
        * mask.unsqueeze(-1)
        * LOSS_COEF_CLASS
    ).sum() / num_objects

    with torch.no_grad():
        pred_boxes = torch.stack(
            [
                anchors[:, 0] + deltas[..., 0] * anchors[:, 2],
                anchors[:, 1] + deltas[..., 1] * anchors[:, 3],
                anchors[:, 2] * _safe_exp(deltas[..., 2]),
                anchors[:, 3] * _safe_exp(deltas[..., 3]),
            ],
            dim=-1,
        )
        ious = _iou_cxcywh(pred_boxes, target_boxes) * mask
    # as in the original, negatives are weighted by the anchors of one image minus the objects of the batch
    conf_weights = mask * LOSS_COEF_CONF_POS / num_objects + (1 - mask) * LOSS_COEF_CONF_NEG / (
        num_anchors - mask.sum()
    ).clamp(min=1.0)
    conf_loss = (((ious - conf) ** 2) * conf_weights).sum(dim=1).mean()

    bbox_loss = (LOSS_COEF_BBOX * (mask.unsqueeze(-1) * (deltas - target_deltas)) ** 2).sum() / num_objects
    return {
        "class": class_loss,
        "confidence": conf_loss,
        "bbox": bbox_loss,
        "total": class_loss + conf_loss + bbox_loss,
    }


def squeezeseg_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    class_weights: tuple[float, ...] = seg_cfg.CLASS_LOSS_WEIGHTS,
    coef: float = seg_cfg.CLS_LOSS_COEF,
    focal_gamma: float = 0.0,
) -> torch.Tensor:
    """``coef * sum(CE * mask * w[label]) / sum(mask)``; logits (B, C, H, W), labels (B, H, W) int, mask (B, H, W).

    Pixels labelled IGNORE_LABEL (-1) count as masked out. ``focal_gamma`` > 0 scales each pixel's CE by
    ``(1 - p_true)^gamma`` (focal loss, as SqueezeSegV2), which lowers the weight of easy pixels.
    """
    scored = labels >= 0
    safe = labels.clamp(min=0)
    weights = torch.tensor(class_weights, dtype=logits.dtype, device=logits.device)[safe]
    ce = F.cross_entropy(logits, safe, reduction="none")
    if focal_gamma > 0:
        ce = ce * (1 - torch.exp(-ce)).pow(focal_gamma)
    m = mask.to(logits.dtype) * scored.to(logits.dtype)
    return coef * (ce * m * weights).sum() / m.sum().clamp(min=1.0)
