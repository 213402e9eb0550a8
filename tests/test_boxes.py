"""SqueezeDet anchors, box coding, IoU, NMS, post-processing and anchor assignment (pure numpy).

The anchor layout was checked against ``set_anchors`` in ``src/config/kitti_squeezeDet_config.py`` of
the public squeezeDet repository (BichenWuUCB/squeezeDet): it builds (H, W, B, 4) by reshaping and
transposing repeated ``arange`` rows, then flattens; ``test_anchor_order_matches_the_original_reshape``
rebuilds it that way. ``safe_exp`` is the original ``util.safe_exp`` (slope ``e**t * (x - t + 1)``
above ``t = 1``); ``filter_prediction`` (``nn_skeleton.py``) keeps the top N then runs NMS per class.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception.camera.anchors import ANCHOR_SHAPES, squeezedet_anchors
from perception.camera.boxes import (
    Detection2D,
    assign_anchors,
    batched_nms,
    clip_boxes,
    cxcywh_to_xyxy,
    decode_deltas,
    encode_deltas,
    iou_matrix,
    nms,
    postprocess_detections,
    safe_exp,
    split_convdet,
    xyxy_to_cxcywh,
)

ANCHORS = squeezedet_anchors()


# --- anchors ----------------------------------------------------------------------------------


def test_anchor_count_dtype_and_first_centre():
    assert ANCHORS.shape == (24 * 78 * 9, 4) == (16848, 4)
    assert ANCHORS.dtype == np.float32
    np.testing.assert_allclose(ANCHORS[0, :2], [1248 / 79, 384 / 25], rtol=1e-6)
    np.testing.assert_allclose(ANCHORS[-1, :2], [78 * 1248 / 79, 24 * 384 / 25], rtol=1e-6)


def test_anchor_shapes_cycle_within_each_cell():
    shapes = np.asarray(ANCHOR_SHAPES, dtype=np.float32)
    np.testing.assert_array_equal(ANCHORS[:, 2:].reshape(-1, 9, 2), np.broadcast_to(shapes, (24 * 78, 9, 2)))
    assert ANCHOR_SHAPES[0] == (36.0, 37.0) and ANCHOR_SHAPES[-1] == (72.0, 43.0)
    # the nine anchors of a cell share its centre
    centres = ANCHORS[:, :2].reshape(-1, 9, 2)
    assert np.all(centres == centres[:, :1])


@pytest.mark.parametrize(("i", "j", "k"), [(0, 0, 0), (1, 0, 3), (0, 1, 8), (77, 23, 4), (40, 12, 7)])
def test_anchor_index_is_cell_major_row_by_row(i, j, k):
    a = ANCHORS[(j * 78 + i) * 9 + k]
    np.testing.assert_allclose(a, [(i + 1) * 1248 / 79, (j + 1) * 384 / 25, *ANCHOR_SHAPES[k]], rtol=1e-6)


def test_anchor_order_matches_the_original_reshape():
    """Rebuild the anchors the way the original ``set_anchors`` does (repeat, reshape, transpose)."""
    H, W, B = 24, 78, 9
    shapes = np.reshape([np.array(ANCHOR_SHAPES)] * H * W, (H, W, B, 2))
    cx_rows = np.array([np.arange(1, W + 1) * 1248.0 / (W + 1)] * H * B)
    cx = np.reshape(np.transpose(np.reshape(cx_rows, (B, H, W)), (1, 2, 0)), (H, W, B, 1))
    cy_rows = np.array([np.arange(1, H + 1) * 384.0 / (H + 1)] * W * B)
    cy = np.reshape(np.transpose(np.reshape(cy_rows, (B, W, H)), (2, 1, 0)), (H, W, B, 1))
    reference = np.reshape(np.concatenate((cx, cy, shapes), axis=3), (-1, 4))
    np.testing.assert_allclose(ANCHORS, reference, rtol=1e-6)


# --- formats and coding -----------------------------------------------------------------------


def test_format_round_trip():
    xyxy = np.array([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 1.0]])
    cxcywh = xyxy_to_cxcywh(xyxy)
    np.testing.assert_array_equal(cxcywh, [[30.0, 50.0, 40.0, 60.0], [0.5, 0.5, 1.0, 1.0]])
    np.testing.assert_array_equal(cxcywh_to_xyxy(cxcywh), xyxy)


box_st = st.tuples(
    st.floats(-500, 2000), st.floats(-500, 1000), st.floats(2, 600), st.floats(2, 400)
)  # cx, cy, w, h in pixels


@settings(max_examples=200, deadline=None)
@given(gt=box_st, anchor_index=st.integers(0, len(ANCHORS) - 1))
def test_encode_decode_round_trip(gt, anchor_index):
    anchor = ANCHORS[anchor_index].astype(np.float64)
    g = np.array(gt)
    deltas = encode_deltas(g, anchor)
    # safe_exp equals exp only up to 1: the round trip holds for boxes up to e times the anchor size
    if deltas[2] <= 1.0 and deltas[3] <= 1.0:
        np.testing.assert_allclose(decode_deltas(deltas, anchor), g, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(deltas[0], (g[0] - anchor[0]) / anchor[2])
    np.testing.assert_allclose(deltas[3], math.log(g[3] / anchor[3]))


def test_encode_decode_vectorised_over_all_anchors(rng):
    deltas = rng.uniform(-1.0, 1.0, size=(len(ANCHORS), 4))
    boxes = decode_deltas(deltas, ANCHORS.astype(np.float64))
    np.testing.assert_allclose(encode_deltas(boxes, ANCHORS.astype(np.float64)), deltas, atol=1e-12)


def test_safe_exp_is_exp_up_to_one_then_its_tangent():
    x = np.array([-30.0, -1.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(safe_exp(x), np.exp(x))
    big = np.array([1.0 + 1e-9, 2.0, 10.0, 1e6])
    np.testing.assert_allclose(safe_exp(big), math.e * big)
    # continuous at the threshold, increasing, finite where exp overflows
    assert safe_exp(np.array([1.0 - 1e-12]))[0] == pytest.approx(safe_exp(np.array([1.0 + 1e-12]))[0])
    xs = np.linspace(-5, 5, 1001)
    assert np.all(np.diff(safe_exp(xs)) > 0)
    with np.errstate(over="raise"):
        assert np.isfinite(safe_exp(np.array([1000.0]))).all()
    # a custom threshold uses the slope e**t, as the original
    np.testing.assert_allclose(safe_exp(np.array([3.0]), threshold=2.0), [math.exp(2.0) * 2.0])


def test_decode_uses_safe_exp_for_large_log_sizes():
    anchor = np.array([100.0, 100.0, 10.0, 20.0])
    box = decode_deltas(np.array([0.5, -0.25, 3.0, 0.0]), anchor)
    np.testing.assert_allclose(box, [105.0, 95.0, 10.0 * math.e * 3.0, 20.0])


def test_clip_boxes_to_zero_based_pixels():
    boxes = np.array([[-5.0, -1.0, 2000.0, 500.0], [10.0, 10.0, 20.0, 20.0], [1300.0, 400.0, 1400.0, 450.0]])
    clipped = clip_boxes(boxes, 1248, 384)
    np.testing.assert_array_equal(
        clipped, [[0.0, 0.0, 1247.0, 383.0], [10.0, 10.0, 20.0, 20.0], [1247.0, 383.0, 1247.0, 383.0]]
    )
    np.testing.assert_array_equal(boxes[0], [-5.0, -1.0, 2000.0, 500.0])  # input untouched


# --- IoU and NMS ------------------------------------------------------------------------------


def test_iou_known_values():
    a = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 2.0, 2.0]])
    b = np.array(
        [
            [0.0, 0.0, 10.0, 10.0],  # identical
            [5.0, 0.0, 15.0, 10.0],  # half overlap: 50 / 150
            [10.0, 10.0, 20.0, 20.0],  # corner touch: 0
            [2.0, 2.0, 4.0, 4.0],  # disjoint
            [0.0, 0.0, 5.0, 5.0],  # contained: 25 / 100
            [3.0, 3.0, 3.0, 8.0],  # degenerate (zero width)
        ]
    )
    expected = np.array(
        [
            [1.0, 1 / 3, 0.0, 4 / 100, 0.25, 0.0],
            [4 / 100, 0.0, 0.0, 0.0, 4 / 25, 0.0],
        ]
    )
    np.testing.assert_allclose(iou_matrix(a, b), expected)
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)


def test_nms_known_case():
    boxes = np.array(
        [
            [0.0, 0.0, 10.0, 10.0],  # 0: score .9, kept
            [1.0, 0.0, 11.0, 10.0],  # 1: IoU 90/110 with 0, suppressed
            [5.0, 0.0, 15.0, 10.0],  # 2: IoU 1/3 with 0 (< .4), kept
            [20.0, 20.0, 30.0, 30.0],  # 3: alone, kept
            [6.0, 0.0, 16.0, 10.0],  # 4: IoU 40/160 with 0 but 90/110 with 2, suppressed
        ]
    )
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.6])
    keep = nms(boxes, scores, 0.4)
    np.testing.assert_array_equal(keep, [0, 2, 3])
    assert keep.dtype == np.int64
    # suppression needs IoU strictly above the threshold: 1/3 at threshold 1/3 is kept
    pair = boxes[[0, 2]]
    np.testing.assert_array_equal(nms(pair, np.array([0.9, 0.7]), iou_matrix(pair[:1], pair[1:])[0, 0]), [0, 1])
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.4).size == 0


def test_nms_is_greedy_a_suppressed_box_does_not_suppress():
    # 1 overlaps 0 (suppressed); 2 overlaps 1 but not 0: greedy NMS keeps 2
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [4.0, 0.0, 14.0, 10.0], [8.0, 0.0, 18.0, 10.0]])
    np.testing.assert_array_equal(nms(boxes, np.array([0.9, 0.8, 0.7]), 0.4), [0, 2])


def test_per_class_nms_keeps_overlapping_boxes_of_different_classes():
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [0.5, 0.0, 10.5, 10.0], [1.0, 0.0, 11.0, 10.0]])
    scores = np.array([0.6, 0.9, 0.8])
    classes = np.array([0, 1, 0])
    np.testing.assert_array_equal(batched_nms(boxes, scores, classes, 0.4), [1, 2])
    np.testing.assert_array_equal(batched_nms(boxes, scores, np.zeros(3, int), 0.4), [1])


# --- ConvDet output and post-processing -------------------------------------------------------


def _planted_outputs(planted: list[tuple[int, int, np.ndarray]], conf: float = 0.9):
    """Network outputs with boxes planted at anchors: [(anchor index, class, cxcywh box in input px)]."""
    n = len(ANCHORS)
    class_probs = np.full((n, 3), 1 / 3)
    confidence = np.full(n, 1e-4)
    deltas = np.zeros((n, 4))
    for aidx, cls, box in planted:
        class_probs[aidx] = 0.05
        class_probs[aidx, cls] = 0.9
        confidence[aidx] = conf
        deltas[aidx] = encode_deltas(box, ANCHORS[aidx].astype(np.float64))
    return class_probs, confidence, deltas


def test_postprocess_recovers_planted_boxes_scaled_to_the_original_image():
    car = np.array([300.0, 200.0, 120.0, 60.0])  # cxcywh in the 1248 x 384 input
    ped = np.array([800.0, 180.0, 40.0, 100.0])
    a_car = int(assign_anchors(cxcywh_to_xyxy(car)[None], ANCHORS)[0])
    a_ped = int(assign_anchors(cxcywh_to_xyxy(ped)[None], ANCHORS)[0])
    probs, conf, deltas = _planted_outputs([(a_car, 0, car), (a_ped, 1, ped)])
    conf[a_ped] = 0.8  # scores 0.9 * 0.9 = 0.81 (car) and 0.9 * 0.8 = 0.72 (pedestrian)
    # a duplicate of the car one cell to the right, slightly shifted and less confident: NMS drops it
    dup = a_car + 9
    probs[dup] = [0.9, 0.05, 0.05]
    conf[dup] = 0.5
    deltas[dup] = encode_deltas(car + np.array([2.0, 0.0, 0.0, 0.0]), ANCHORS[dup].astype(np.float64))

    dets = postprocess_detections(probs, conf, deltas, ANCHORS, original_size=(1242, 375))
    assert [d.class_name for d in dets] == ["car", "pedestrian"]
    assert [d.class_id for d in dets] == [0, 1]
    np.testing.assert_allclose([d.score for d in dets], [0.81, 0.72])
    sx, sy = 1242 / 1248, 375 / 384
    for det, box in zip(dets, [car, ped], strict=True):
        x1, y1, x2, y2 = cxcywh_to_xyxy(box)
        np.testing.assert_allclose(det.box, [x1 * sx, y1 * sy, x2 * sx, y2 * sy], rtol=1e-9)
    d = dets[0].to_dict()
    assert d["class_name"] == "car" and set(d) == {"class_id", "class_name", "score", "x1", "y1", "x2", "y2"}
    kitti = dets[1].to_kitti()
    assert kitti.type == "Pedestrian" and kitti.score == pytest.approx(0.72) and kitti.bbox == dets[1].box


def test_postprocess_clips_to_the_image_and_drops_low_scores():
    edge = np.array([1240.0, 380.0, 100.0, 60.0])  # runs past the bottom-right corner
    aidx = int(np.argmin(np.sum((ANCHORS[:, :2] - edge[:2]) ** 2, axis=1)))
    probs, conf, deltas = _planted_outputs([(aidx, 2, edge)])
    dets = postprocess_detections(probs, conf, deltas, ANCHORS, original_size=(1242, 375))
    assert len(dets) == 1 and dets[0].class_name == "cyclist"
    assert dets[0].x2 == 1241.0 and dets[0].y2 == 374.0
    # the background anchors (score 1e-4 / 3) fall below the probability threshold
    assert postprocess_detections(probs, conf, deltas, ANCHORS, prob_threshold=0.9) == []


def test_postprocess_top_n_and_input_frame_default():
    rng = np.random.default_rng(0)
    n = len(ANCHORS)
    probs = rng.dirichlet(np.ones(3), size=n)
    conf = rng.uniform(0, 1, n)
    deltas = rng.normal(0, 0.1, size=(n, 4))
    dets = postprocess_detections(probs, conf, deltas, ANCHORS, top_n=10, nms_threshold=1.0)
    assert len(dets) == 10  # NMS at threshold 1 suppresses nothing
    joint = (probs * conf[:, None]).max(axis=1)
    np.testing.assert_allclose(sorted((d.score for d in dets), reverse=True), np.sort(joint)[::-1][:10])
    assert all(0 <= d.x1 <= d.x2 <= 1247 and 0 <= d.y1 <= d.y2 <= 383 for d in dets)
    assert all(isinstance(d, Detection2D) for d in dets)


def test_split_convdet_follows_the_channel_layout():
    h, w = 2, 3
    raw = np.zeros((h, w, 72))
    # cell (row 1, col 2), anchor 4: class 2 logit high, confidence logit 0, deltas 1..4
    raw[1, 2, 3 * 4 + 2] = 10.0
    raw[1, 2, 27 + 4] = 0.0
    raw[1, 2, 36 + 4 * 4 : 36 + 4 * 4 + 4] = [1.0, 2.0, 3.0, 4.0]
    probs, conf, deltas = split_convdet(raw)
    row = (1 * w + 2) * 9 + 4
    assert probs.shape == (h * w * 9, 3) and conf.shape == (h * w * 9,) and deltas.shape == (h * w * 9, 4)
    assert np.argmax(probs[row]) == 2 and probs[row, 2] > 0.99
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert conf[row] == pytest.approx(0.5)
    np.testing.assert_array_equal(deltas[row], [1.0, 2.0, 3.0, 4.0])
    # channels-first (ONNX/PyTorch) with a batch axis gives the same
    for got, want in zip(
        split_convdet(np.moveaxis(raw, -1, 0)[None], channels_last=False), (probs, conf, deltas), strict=True
    ):
        np.testing.assert_array_equal(got, want)


# --- anchor assignment ------------------------------------------------------------------------


def test_assign_anchors_picks_the_best_iou_anchor_and_stays_unique():
    gt = cxcywh_to_xyxy(np.array([[300.0, 200.0, 115.0, 59.0]] * 3))  # three identical boxes
    idx = assign_anchors(gt, ANCHORS)
    assert len(set(idx.tolist())) == 3
    ious = iou_matrix(gt[:1], cxcywh_to_xyxy(ANCHORS))[0]
    assert idx[0] == int(np.argmax(ious))
    assert ious[idx[1]] == np.sort(ious)[-2] and ious[idx[2]] == np.sort(ious)[-3]


def test_assign_anchors_ties_and_zero_iou_go_to_the_nearest_free_anchor():
    anchors = np.array(
        [
            [5.0, 5.0, 20.0, 10.0],  # 0: contains the box, IoU 100/200 = 0.5, distance 10**2
            [5.0, 2.5, 10.0, 5.0],  # 1: inside the box, IoU 50/100 = 0.5, distance 2.5**2 + 5**2
            [500.0, 500.0, 10.0, 10.0],  # 2: far away
            [60.0, 5.0, 10.0, 10.0],  # 3: no overlap, nearer than 2
        ]
    )
    box = np.array([[0.0, 0.0, 10.0, 10.0]])  # cxcywh (5, 5, 10, 10)
    ious = iou_matrix(box, cxcywh_to_xyxy(anchors))[0]
    assert ious[0] == ious[1] == 0.5
    # equal IoU: the nearer anchor 1 wins (a plain argmax would take 0)
    np.testing.assert_array_equal(assign_anchors(box, anchors), [1])
    # the same box three times: 1, then 0, then no overlapping anchor is free -> nearest free (3)
    np.testing.assert_array_equal(assign_anchors(np.repeat(box, 3, axis=0), anchors), [1, 0, 3])
    # a box overlapping nothing goes to the nearest anchor
    far = np.array([[395.0, 495.0, 405.0, 505.0]])
    np.testing.assert_array_equal(assign_anchors(far, anchors), [2])
    with pytest.raises(ValueError):
        assign_anchors(np.repeat(box, 5, axis=0), anchors)
    assert assign_anchors(np.zeros((0, 4)), anchors).shape == (0,)
