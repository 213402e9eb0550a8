"""KITTI 2D object evaluation, checked on hand-made cases against the official devkit's rules.

Where the behaviour was checked (``cpp/evaluate_object.cpp`` of the KITTI object devkit: the 2012
version shipped in BichenWuUCB/squeezeDet ``src/dataset/kitti-eval/cpp/evaluate_object.cpp``, and the
later devkit that ignores low detections and prints AP_R40; cross-read with traveller59's
``kitti-object-eval-python`` ``eval.py``):

* ``MIN_OVERLAP = {0.7, 0.5, 0.5}`` and ``overlap > MIN_OVERLAP[current_class]`` in
  ``computeStatistics`` (strictly greater): ``test_iou_exactly_at_the_threshold_is_a_miss``;
* ``cleanData``: ground truth ignored when ``occlusion > MAX_OCCLUSION``, ``truncation >
  MAX_TRUNCATION`` or ``height < MIN_HEIGHT`` (``double height = y2 - y1``; the python port uses
  ``<=`` here, we follow the C++), "Van" for car and "Person_sitting" for pedestrian give
  ``ignored_gt = 1``; detections with ``int32_t height = fabs(y1 - y2) < MIN_HEIGHT`` give
  ``ignored_det = 1`` (later devkit; the 2012 copy in squeezeDet lacks this):
  ``test_missed_hard_only_box_changes_only_hard``, ``test_neighbour_classes_are_neither_hit_nor_miss``,
  ``test_low_detections_are_ignored_below_the_difficulty_height``;
* ``computeStatistics`` with ``compute_fp``: DontCare regions absorb unassigned detections with
  ``boxoverlap(det, dc, 0) > MIN_OVERLAP`` (criterion 0 = intersection over the detection's area),
  ``fp -= nstuff``: ``test_false_positives_in_dontcare_regions_are_not_counted``;
* ``getThresholds`` (41 recall steps, ``current_recall += 1/(N_SAMPLE_PTS - 1)``), ``eval_class``
  (``precision[i] = max_element(precision.begin() + i, ...)``), 11-point AP from ``saveStats``
  (``i += 4``, ``/ 11``) and R40 from the later devkit (``for i = 1..40: sum += vals[i]; / 40``):
  ``test_eleven_point_and_r40_on_hand_computed_curves``.
"""

from __future__ import annotations

import numpy as np
import pytest

from perception.evaluation.kitti_object import (
    average_precision,
    evaluate_kitti_2d,
    format_results,
    get_thresholds,
    kitti_2d_curves,
    load_label_dir,
)
from perception.io.kitti import KittiObject, write_label

CAR_BOX = (100.0, 100.0, 200.0, 200.0)  # 100 px high
PED_BOX = (300.0, 100.0, 350.0, 200.0)
CYC_BOX = (400.0, 100.0, 460.0, 200.0)
N_BASE = 41  # with fewer than 41 ground-truth boxes even perfect detections score below 100 (see below)


def obj(kind: str, box, *, score: float | None = None, truncated: float = 0.0, occluded: int = 0) -> KittiObject:
    return KittiObject(type=kind, truncated=truncated, occluded=occluded, bbox=tuple(box), score=score)


def base(classes=("Car", "Pedestrian", "Cyclist")):
    """41 frames, each with one easy object per class, detected exactly (scores 0.90 down to 0.50)."""
    boxes = {"Car": CAR_BOX, "Pedestrian": PED_BOX, "Cyclist": CYC_BOX}
    gt: dict[str, list[KittiObject]] = {}
    dt: dict[str, list[KittiObject]] = {}
    for i in range(N_BASE):
        fid = f"{i:06d}"
        gt[fid] = [obj(c, boxes[c]) for c in classes]
        dt[fid] = [obj(c, boxes[c], score=0.9 - 0.01 * i) for c in classes]
    return gt, dt


def with_frame(gt, dt, gt_objs, dt_objs, fid="extra"):
    gt = {**gt, fid: list(gt_objs)}
    dt = {**dt, fid: list(dt_objs)}
    return gt, dt


# --- perfect and undefined ----------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["R40", "11"])
def test_perfect_detections_score_100_for_every_difficulty(metric):
    gt, dt = base()
    result = evaluate_kitti_2d(gt, dt, metric=metric)
    assert result["metric"] == metric
    for cls in ("car", "pedestrian", "cyclist"):
        assert result[cls] == {"easy": 100.0, "moderate": 100.0, "hard": 100.0}
    assert "car" in format_results(result) and "100.00" in format_results(result)


def test_classes_without_ground_truth_have_no_ap_and_missing_detections_score_zero():
    gt, dt = base(classes=("Car",))
    result = evaluate_kitti_2d(gt, dt)
    assert result["car"]["moderate"] == 100.0
    assert result["pedestrian"] == {"easy": None, "moderate": None, "hard": None}
    # ground truth but no detection of the class at all (the devkit would skip the class)
    assert evaluate_kitti_2d(gt, {})["car"] == {"easy": 0.0, "moderate": 0.0, "hard": 0.0}


def test_few_ground_truth_boxes_give_a_short_curve_as_in_the_devkit():
    # Two boxes detected exactly: getThresholds takes both scores, one recall step each (0 and 1/40),
    # so precision is 1 at indices 0 and 1 only: R40 = 1/40 = 2.5 %, 11-point = 1/11 = 9.09 %.
    gt, dt = base()
    gt2 = {k: gt[k] for k in list(gt)[:2]}
    assert evaluate_kitti_2d(gt2, dt)["car"]["easy"] == pytest.approx(2.5)
    assert evaluate_kitti_2d(gt2, dt, metric="11")["car"]["easy"] == pytest.approx(100 / 11)


# --- difficulties -------------------------------------------------------------------------------


def test_missed_hard_only_box_changes_only_hard():
    # A car 30 px high with occlusion 2 is hard only (easy needs >= 40 px and occlusion 0, moderate
    # occlusion <= 1). Missing it: easy and moderate stay perfect. Hard has 42 boxes and 41 true
    # positives: getThresholds takes 40 of the 41 scores (the recall (i + 1) / 42 falls one 1/40 step
    # behind around i = 31; exact arithmetic gives 40 whichever way its ties break), so precision is 1
    # at indices 0..39 and 0 at 40: R40 = 39/40 = 97.5 %, 11-point = 10/11 = 90.91 %.
    gt, dt = base(classes=("Car",))
    gt, dt = with_frame(gt, dt, [obj("Car", (600, 100, 660, 130), occluded=2)], [])
    r40 = evaluate_kitti_2d(gt, dt)["car"]
    assert r40 == {"easy": 100.0, "moderate": 100.0, "hard": pytest.approx(97.5)}
    assert evaluate_kitti_2d(gt, dt, metric="11")["car"]["hard"] == pytest.approx(1000 / 11)
    curves = kitti_2d_curves(gt, dt)["car"]
    assert (curves["easy"].num_gt, curves["moderate"].num_gt, curves["hard"].num_gt) == (41, 41, 42)
    assert len(curves["hard"].thresholds) == 40 and curves["hard"].fn[-1] == 1


def test_detection_of_a_ground_truth_outside_the_difficulty_is_neither_hit_nor_miss():
    # Occlusion 1: ignored for easy (the detection on it is consumed, not a false positive), counted
    # for moderate and hard (42 boxes, 42 true positives).
    gt, dt = base(classes=("Car",))
    gt, dt = with_frame(gt, dt, [obj("Car", CAR_BOX, occluded=1)], [obj("Car", CAR_BOX, score=0.99)])
    assert evaluate_kitti_2d(gt, dt)["car"] == {"easy": 100.0, "moderate": 100.0, "hard": 100.0}
    curves = kitti_2d_curves(gt, dt)["car"]
    assert curves["easy"].num_gt == 41 and curves["moderate"].num_gt == 42
    assert curves["easy"].fp.max() == 0 and curves["moderate"].tp[-1] == 42


def test_truncation_limits_are_inclusive():
    # truncation 0.15 is still easy (the devkit ignores truncation > 0.15); 0.16 is not
    gt, dt = base(classes=("Car",))
    gt_a, dt_a = with_frame(gt, dt, [obj("Car", CAR_BOX, truncated=0.15)], [])
    gt_b, dt_b = with_frame(gt, dt, [obj("Car", CAR_BOX, truncated=0.16)], [])
    assert kitti_2d_curves(gt_a, dt_a)["car"]["easy"].num_gt == 42
    assert kitti_2d_curves(gt_b, dt_b)["car"]["easy"].num_gt == 41
    assert kitti_2d_curves(gt_b, dt_b)["car"]["moderate"].num_gt == 42


def test_low_detections_are_ignored_below_the_difficulty_height():
    # A false positive 30 px high with the top score: ignored for easy (< 40 px); a false positive at
    # every threshold for moderate and hard: precision (k+1)/(k+2) at threshold k, made monotone to
    # 41/42 everywhere, so R40 = 41/42 = 97.62 %.
    gt, dt = base(classes=("Car",))
    gt, dt = with_frame(gt, dt, [], [obj("Car", (700, 100, 760, 130), score=0.99)])
    result = evaluate_kitti_2d(gt, dt)["car"]
    assert result["easy"] == 100.0
    assert result["moderate"] == pytest.approx(100 * 41 / 42)
    assert result["hard"] == pytest.approx(100 * 41 / 42)


# --- matching -----------------------------------------------------------------------------------


def test_full_height_detection_is_preferred_over_a_low_one_on_the_same_box():
    # An easy car 45 px high with two detections: one 39 px high (below the easy height: ignored, IoU
    # 0.87) and one 46 px high (IoU 0.98). computeStatistics with compute_fp takes the evaluated
    # detection (greatest overlap among ignored_det == 0) before any ignored one: a true positive, and
    # the low one is neither a true nor a false positive. (The threshold pass picks by score instead,
    # so the low detection, scoring higher, hides this hit from getThresholds: 41 scores for 42 boxes.)
    gt, dt = base(classes=("Car",))
    box = (100, 100, 200, 145)
    low, full = obj("Car", (100, 100, 200, 139), score=0.99), obj("Car", (100, 100, 200, 146), score=0.98)
    curve = kitti_2d_curves(*with_frame(gt, dt, [obj("Car", box)], [low, full]))["car"]["easy"]
    assert curve.num_gt == 42 and len(curve.thresholds) == 40
    assert (curve.tp[-1], curve.fp[-1], curve.fn[-1]) == (42, 0, 0)
    # alone, the low detection still consumes the box: no miss and no false positive
    curve = kitti_2d_curves(*with_frame(gt, dt, [obj("Car", box)], [low]))["car"]["easy"]
    assert (curve.tp[-1], curve.fp[-1], curve.fn[-1]) == (41, 0, 0)


def test_iou_exactly_at_the_threshold_is_a_miss():
    gt, dt = base(classes=("Car", "Pedestrian"))
    # car: box 100 x 100, detection 100 x 70 inside it: IoU 7000 / 10000 = 0.7 exactly -> not > 0.7
    at = with_frame(gt, dt, [obj("Car", CAR_BOX)], [obj("Car", (100, 100, 200, 170), score=0.99)])
    curve = kitti_2d_curves(*at)["car"]["easy"]
    assert (curve.tp[-1], curve.fp[-1], curve.fn[-1]) == (41, 1, 1)
    # 100 x 71: IoU 0.71 -> a hit
    above = with_frame(gt, dt, [obj("Car", CAR_BOX)], [obj("Car", (100, 100, 200, 171), score=0.99)])
    curve = kitti_2d_curves(*above)["car"]["easy"]
    assert (curve.tp[-1], curve.fp[-1], curve.fn[-1]) == (42, 0, 0)
    # pedestrian: 50 x 100 box, 50 x 50 detection: IoU exactly 0.5 -> a miss; 50 x 51 -> a hit
    at = with_frame(gt, dt, [obj("Pedestrian", PED_BOX)], [obj("Pedestrian", (300, 100, 350, 150), score=0.99)])
    curve = kitti_2d_curves(*at)["pedestrian"]["easy"]
    assert (curve.tp[-1], curve.fp[-1], curve.fn[-1]) == (41, 1, 1)
    above = with_frame(gt, dt, [obj("Pedestrian", PED_BOX)], [obj("Pedestrian", (300, 100, 350, 151), score=0.99)])
    curve = kitti_2d_curves(*above)["pedestrian"]["easy"]
    assert (curve.tp[-1], curve.fp[-1], curve.fn[-1]) == (42, 0, 0)


def test_neighbour_classes_are_neither_hit_nor_miss():
    gt, dt = base(classes=("Car", "Pedestrian"))
    # a Van detected as Car (not a false positive), a Van nobody detected (not a miss), a detection
    # labelled Van (not evaluated for car), a Person_sitting detected as Pedestrian
    gt2, dt2 = with_frame(
        gt,
        dt,
        [obj("Van", CAR_BOX), obj("Van", (500, 100, 600, 200)), obj("Person_sitting", PED_BOX)],
        [
            obj("Car", CAR_BOX, score=0.99),
            obj("Van", (800, 100, 900, 200), score=0.99),
            obj("Pedestrian", PED_BOX, score=0.99),
        ],
    )
    result = evaluate_kitti_2d(gt2, dt2)
    assert result["car"] == {"easy": 100.0, "moderate": 100.0, "hard": 100.0}
    assert result["pedestrian"] == {"easy": 100.0, "moderate": 100.0, "hard": 100.0}
    curve = kitti_2d_curves(gt2, dt2)["car"]["easy"]
    assert curve.num_gt == 41 and curve.fp.max() == 0 and (curve.tp[-1], curve.fn[-1]) == (41, 0)
    # a Truck is not a neighbour of Car: a Car detection on it is a false positive (R40 41/42)
    gt3, dt3 = with_frame(gt, dt, [obj("Truck", CAR_BOX)], [obj("Car", CAR_BOX, score=0.99)])
    assert evaluate_kitti_2d(gt3, dt3)["car"]["easy"] == pytest.approx(100 * 41 / 42)


def test_false_positives_in_dontcare_regions_are_not_counted():
    gt, dt = base(classes=("Car", "Pedestrian"))
    dontcare = obj("DontCare", (400, 50, 800, 250))
    inside = obj("Car", (500, 100, 560, 160), score=0.99)  # IoU with the region 0.045, but fully inside
    ok = with_frame(gt, dt, [dontcare], [inside])
    assert evaluate_kitti_2d(*ok)["car"] == {"easy": 100.0, "moderate": 100.0, "hard": 100.0}
    # without the region it is a false positive at every threshold: R40 = 41/42
    no_region = with_frame(gt, dt, [], [inside])
    assert evaluate_kitti_2d(*no_region)["car"]["easy"] == pytest.approx(100 * 41 / 42)
    # 60 % of the detection's area inside: enough for pedestrian (> 0.5), not for car (> 0.7)
    partial_car = obj("Car", (740, 100, 840, 200), score=0.99)
    partial_ped = obj("Pedestrian", (740, 100, 840, 200), score=0.99)
    both = with_frame(gt, dt, [dontcare], [partial_car, partial_ped])
    result = evaluate_kitti_2d(*both)
    assert result["car"]["easy"] == pytest.approx(100 * 41 / 42)
    assert result["pedestrian"]["easy"] == 100.0


# --- AP ------------------------------------------------------------------------------------------


def test_eleven_point_and_r40_on_hand_computed_curves():
    # (a) 41 cars, 20 found (scores 0.90 .. 0.71), no false positive. getThresholds takes all 20 scores
    # (recall (i + 1)/41 stays ahead of i/40), precision is 1 at indices 0..19 and 0 at 20..40:
    #   R40 = 19/40 = 47.5 %;  11-point = indices 0, 4, 8, 12, 16 -> 5/11 = 45.45 %.
    gt, dt = base(classes=("Car",))
    dt_a = {fid: (objs if i < 20 else []) for i, (fid, objs) in enumerate(dt.items())}
    assert evaluate_kitti_2d(gt, dt_a)["car"]["easy"] == pytest.approx(47.5)
    assert evaluate_kitti_2d(gt, dt_a, metric="11")["car"]["easy"] == pytest.approx(500 / 11)
    # (b) 41 cars all found, scores s_k = 0.90 - 0.01 k, plus one false positive scoring 0.695
    # (between s_20 = 0.70 and s_21 = 0.69). The 41 thresholds are s_0 .. s_40; at s_k there are k + 1
    # true positives and, for k >= 21, one false positive: precision 1 for k <= 20, (k+1)/(k+2) after,
    # made monotone (max over the rest) to 41/42 for k >= 21.
    #   R40 = (20 * 1 + 20 * 41/42) / 40 = 98.81 %;  11-point = (6 * 1 + 5 * 41/42) / 11 = 98.92 %.
    gt_b, dt_b = with_frame(gt, dt, [], [obj("Car", (700, 100, 800, 200), score=0.695)])
    assert evaluate_kitti_2d(gt_b, dt_b)["car"]["easy"] == pytest.approx(100 * (20 + 20 * 41 / 42) / 40)
    assert evaluate_kitti_2d(gt_b, dt_b, metric="11")["car"]["easy"] == pytest.approx(100 * (6 + 5 * 41 / 42) / 11)
    curve = kitti_2d_curves(gt_b, dt_b)["car"]["easy"]
    np.testing.assert_allclose(curve.precision, [1.0] * 21 + [41 / 42] * 20)
    np.testing.assert_allclose(curve.recall, (np.arange(41) + 1) / 41)
    assert curve.ap("R40") == pytest.approx(100 * (20 + 20 * 41 / 42) / 40)
    as_dict = curve.to_dict()
    assert len(as_dict["precision"]) == len(as_dict["recall_samples"]) == 41


def test_get_thresholds_and_average_precision_helpers():
    assert get_thresholds([0.1, 0.9, 0.5], 3).tolist() == [0.9, 0.5, 0.1]
    # many more true positives than steps: at most 41 thresholds, first and last always kept
    t = get_thresholds(np.linspace(1, 0, 400), 400)
    assert len(t) == 41 and t[0] == 1.0 and t[-1] == 0.0
    assert average_precision(np.ones(41), "R40") == 100.0
    assert average_precision(np.r_[1.0, np.zeros(40)], "11") == pytest.approx(100 / 11)
    with pytest.raises(ValueError):
        average_precision(np.ones(40))
    with pytest.raises(ValueError):
        evaluate_kitti_2d({}, {}, metric="AP")  # type: ignore[arg-type]


def test_detections_need_a_score():
    gt, _ = base(classes=("Car",))
    with pytest.raises(ValueError, match="score"):
        evaluate_kitti_2d(gt, {"000000": [obj("Car", CAR_BOX)]})


# --- files ---------------------------------------------------------------------------------------


def test_load_label_dir_and_missing_result_files(tmp_path):
    gt, dt = base(classes=("Car",))
    (tmp_path / "label_2").mkdir()
    (tmp_path / "results").mkdir()
    for fid, objs in gt.items():
        write_label(tmp_path / "label_2" / f"{fid}.txt", [*objs, obj("DontCare", (0, 0, 10, 10))])
    # no result file for the last frame: no detections there
    for fid, objs in list(dt.items())[:-1]:
        write_label(tmp_path / "results" / f"{fid}.txt", objs)
    loaded_gt = load_label_dir(tmp_path / "label_2")
    assert list(loaded_gt) == sorted(gt) and len(loaded_gt["000000"]) == 2
    loaded_dt = load_label_dir(tmp_path / "results", frame_ids=loaded_gt)
    assert loaded_dt[f"{N_BASE - 1:06d}"] == [] and loaded_dt["000000"][0].score == pytest.approx(0.9)
    # 40 of 41 found, no false positive: 40 thresholds, R40 = 39/40
    assert evaluate_kitti_2d(loaded_gt, loaded_dt)["car"]["easy"] == pytest.approx(97.5)
    with pytest.raises(NotADirectoryError):
        load_label_dir(tmp_path / "nope")


# --- cross-check against a literal, loop-by-loop transliteration of the devkit -------------------


def _overlap(a, b, criterion=-1):
    """``boxoverlap`` of evaluate_object.cpp, line by line."""
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    w, h = x2 - x1, y2 - y1
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    a_area = (a[2] - a[0]) * (a[3] - a[1])
    b_area = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (a_area + b_area - inter) if criterion == -1 else inter / a_area


def _reference_class(gt, dt, cls, difficulty):
    """``eval_class`` with ``cleanData`` and ``computeStatistics`` as scalar loops; returns precision (41,)."""
    min_ov = {"car": 0.7, "pedestrian": 0.5, "cyclist": 0.5}[cls]
    no_det = -10000000.0
    frames = []
    n_gt = 0
    for fid, g in gt.items():
        d = dt.get(fid, [])
        ig_gt, ig_det = [], []
        for o in g:
            t = o.type.lower()
            valid = 1 if t == cls else 0 if (cls, t) in (("pedestrian", "person_sitting"), ("car", "van")) else -1
            ignore = (
                o.occluded > (0, 1, 2)[difficulty]
                or o.truncated > (0.15, 0.3, 0.5)[difficulty]
                or (o.bbox[3] - o.bbox[1]) < (40, 25, 25)[difficulty]
            )
            if valid == 1 and not ignore:
                ig_gt.append(0)
                n_gt += 1
            else:
                ig_gt.append(1 if valid == 0 or (ignore and valid == 1) else -1)
        for o in d:
            height = int(abs(o.bbox[1] - o.bbox[3]))
            ig_det.append(1 if height < (40, 25, 25)[difficulty] else 0 if o.type.lower() == cls else -1)
        dc = [o for o in g if o.type.lower() == "dontcare"]
        frames.append((g, d, dc, ig_gt, ig_det))

    def stats(g, d, dc, ig_gt, ig_det, compute_fp, thresh=0.0):
        tp = fp = fn = 0
        v = []
        assigned = [False] * len(d)
        ignored_threshold = [compute_fp and o.score < thresh for o in d]
        for i in range(len(g)):
            if ig_gt[i] == -1:
                continue
            det_idx, valid, max_ov, aid = -1, no_det, 0.0, False
            for j in range(len(d)):
                if ig_det[j] == -1 or assigned[j] or ignored_threshold[j]:
                    continue
                ov = _overlap(d[j].bbox, g[i].bbox)
                if not compute_fp and ov > min_ov and d[j].score > valid:
                    det_idx, valid = j, d[j].score
                elif compute_fp and ov > min_ov and (ov > max_ov or aid) and ig_det[j] == 0:
                    max_ov, det_idx, valid, aid = ov, j, 1, False
                elif compute_fp and ov > min_ov and valid == no_det and ig_det[j] == 1:
                    det_idx, valid, aid = j, 1, True
            if valid == no_det and ig_gt[i] == 0:
                fn += 1
            elif valid != no_det and (ig_gt[i] == 1 or ig_det[det_idx] == 1):
                assigned[det_idx] = True
            elif valid != no_det:
                tp += 1
                v.append(d[det_idx].score)
                assigned[det_idx] = True
        if compute_fp:
            for j in range(len(d)):
                if not (assigned[j] or ig_det[j] == -1 or ig_det[j] == 1 or ignored_threshold[j]):
                    fp += 1
            nstuff = 0
            for region in dc:
                for j in range(len(d)):
                    if assigned[j] or ig_det[j] in (-1, 1) or ignored_threshold[j]:
                        continue
                    if _overlap(d[j].bbox, region.bbox, 0) > min_ov:
                        assigned[j] = True
                        nstuff += 1
            fp -= nstuff
        return tp, fp, fn, v

    scores = [s for f in frames for s in stats(*f, compute_fp=False)[3]]
    thresholds = get_thresholds(scores, n_gt) if n_gt else []
    precision = [0.0] * 41
    for t, thresh in enumerate(thresholds):
        tp = fp = 0
        for f in frames:
            a, b, _, _ = stats(*f, compute_fp=True, thresh=thresh)
            tp, fp = tp + a, fp + b
        precision[t] = tp / (tp + fp) if tp + fp else 0.0
    return [max(precision[i:]) for i in range(41)], n_gt


def _random_scene(rng, n_frames):
    types = ["Car", "Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "DontCare"]
    gt, dt = {}, {}
    for f in range(n_frames):
        objs = []
        for _ in range(rng.integers(0, 7)):
            x1, y1 = rng.uniform(0, 1000), rng.uniform(0, 300)
            w, h = rng.uniform(10, 200), rng.uniform(15, 120)
            objs.append(
                obj(
                    str(rng.choice(types)),
                    (x1, y1, x1 + w, y1 + h),
                    truncated=float(rng.choice([0.0, 0.1, 0.15, 0.3, 0.45, 0.8])),
                    occluded=int(rng.integers(0, 4)),
                )
            )
        dets = []
        for o in objs:  # noisy copies, some relabelled, some missing
            if o.type == "DontCare" or rng.uniform() < 0.2:
                continue
            jitter = rng.normal(0, 0.04, 4) * (o.bbox[2] - o.bbox[0] + o.bbox[3] - o.bbox[1]) / 2
            box = tuple(float(v) for v in np.array(o.bbox) + jitter)
            kind = o.type if rng.uniform() < 0.8 else str(rng.choice(["Car", "Pedestrian", "Cyclist"]))
            dets.append(
                obj(
                    kind,
                    (min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])),
                    score=float(rng.uniform()),
                )
            )
        for _ in range(rng.integers(0, 4)):  # clutter
            x1, y1 = rng.uniform(0, 1000), rng.uniform(0, 300)
            kind = str(rng.choice(["Car", "Pedestrian", "Cyclist"]))
            dets.append(
                obj(kind, (x1, y1, x1 + rng.uniform(10, 150), y1 + rng.uniform(10, 120)), score=float(rng.uniform()))
            )
        gt[f"{f:06d}"] = objs
        if rng.uniform() < 0.9:
            dt[f"{f:06d}"] = dets
    return gt, dt


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_evaluation_matches_a_literal_devkit_transliteration(seed):
    rng = np.random.default_rng(seed)
    gt, dt = _random_scene(rng, 150)
    curves = kitti_2d_curves(gt, dt)
    for cls in ("car", "pedestrian", "cyclist"):
        for d, diff in enumerate(("easy", "moderate", "hard")):
            precision, n_gt = _reference_class(gt, dt, cls, d)
            assert curves[cls][diff].num_gt == n_gt
            np.testing.assert_array_equal(curves[cls][diff].precision, precision, err_msg=f"{cls} {diff}")
