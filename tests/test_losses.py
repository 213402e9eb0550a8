"""SqueezeDet and SqueezeSeg losses on small hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the [train] extra (torch) is not installed")

from perception.camera.anchors import squeezedet_anchors  # noqa: E402
from perception.camera.boxes import encode_deltas  # noqa: E402
from perception.training.losses import squeezedet_loss, squeezedet_targets, squeezeseg_loss  # noqa: E402

ANCHORS = np.array([[50.0, 50.0, 20.0, 20.0], [150.0, 50.0, 40.0, 40.0]], np.float32)


def _loss(class_logits, conf_logits, deltas, targets_list):
    stack = {
        k: torch.from_numpy(np.stack([getattr(t, k) for t in targets_list]))
        for k in ("mask", "deltas", "labels", "boxes")
    }
    return squeezedet_loss(
        torch.as_tensor(class_logits, dtype=torch.float32), torch.as_tensor(conf_logits, dtype=torch.float32),
        torch.as_tensor(deltas, dtype=torch.float32), torch.from_numpy(ANCHORS),
        stack["mask"], stack["deltas"], stack["labels"], stack["boxes"],
    )  # fmt: skip


def test_targets_assign_one_anchor_per_box_with_encoded_deltas():
    gt = np.array([[42.0, 41.0, 62.0, 63.0]])
    t = squeezedet_targets(gt, np.array([2]), ANCHORS)
    assert t.mask.tolist() == [1.0, 0.0]
    assert t.labels.tolist() == [[0, 0, 1], [0, 0, 0]]
    expected = encode_deltas(np.array([[52.0, 52.0, 20.0, 22.0]]), ANCHORS[:1])[0]
    np.testing.assert_allclose(t.deltas[0], expected, rtol=1e-6)
    np.testing.assert_allclose(t.deltas[0], [0.1, 0.1, 0.0, math.log(22 / 20)], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="class ids"):
        squeezedet_targets(gt, np.array([3]), ANCHORS)


def test_squeezedet_loss_hand_computed():
    gt = np.array([[40.0, 40.0, 60.0, 60.0]])  # exactly anchor 0
    t = squeezedet_targets(gt, np.array([0]), ANCHORS)
    deltas = np.zeros((1, 2, 4), np.float32)
    deltas[0, 0, 0] = 0.1  # predicted box shifted by 2 px: IoU 18*20 / (2*400 - 360) = 360/440
    loss = _loss(np.zeros((1, 2, 3)), np.zeros((1, 2)), deltas, [t])
    # class: p = 1/3 for each class: -(log(1/3) + 2 log(2/3)) on the one positive anchor, / 1 object
    assert loss["class"].item() == pytest.approx(-(math.log(1 / 3) + 2 * math.log(2 / 3)), rel=1e-5)
    # confidence 0.5 everywhere: positive (IoU - 0.5)^2 * 75 / 1, negative (0 - 0.5)^2 * 100 / (2 - 1)
    iou = 360 / 440
    assert loss["confidence"].item() == pytest.approx((iou - 0.5) ** 2 * 75 + 0.25 * 100, rel=1e-5)
    # bbox: 5 * 0.1^2 on the positive anchor
    assert loss["bbox"].item() == pytest.approx(5 * 0.01, rel=1e-5)
    assert loss["total"].item() == pytest.approx(sum(loss[k].item() for k in ("class", "confidence", "bbox")))


def test_squeezedet_loss_is_small_for_a_perfect_prediction_and_has_gradients():
    anchors = squeezedet_anchors()
    gt = np.array([[100.0, 120.0, 180.0, 200.0], [600.0, 150.0, 640.0, 260.0]])
    t = squeezedet_targets(gt, np.array([0, 1]), anchors)
    class_logits = torch.full((1, len(anchors), 3), -20.0)
    class_logits[0, np.flatnonzero(t.mask), [0, 1]] = 20.0
    conf = torch.full((1, len(anchors)), -20.0)
    conf[0, np.flatnonzero(t.mask)] = 20.0
    deltas = torch.from_numpy(t.deltas[None]).clone().requires_grad_(True)
    stack = [torch.from_numpy(x[None]) for x in (t.mask, t.deltas, t.labels, t.boxes)]
    loss = squeezedet_loss(class_logits.requires_grad_(True), conf, deltas, torch.from_numpy(anchors), *stack)
    assert loss["total"].item() < 1e-3
    (loss["total"] + deltas.sum()).backward()
    assert deltas.grad is not None


def test_squeezeseg_loss_hand_computed():
    logits = torch.zeros(1, 4, 1, 3)
    labels = torch.tensor([[[0, 1, 2]]])
    mask = torch.tensor([[[1.0, 1.0, 0.0]]])
    # CE = log 4 everywhere; weights 1/15 and 1 on the two valid pixels, / 2 valid, x 15
    expected = 15 * math.log(4) * (1 / 15 + 1) / 2
    assert squeezeseg_loss(logits, labels, mask).item() == pytest.approx(expected, rel=1e-6)
