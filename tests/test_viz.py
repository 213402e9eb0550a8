"""Renderers fed with known arrays: pixels where boxes, labels, points and lines must be (and not elsewhere)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from perception.camera.boxes import Detection2D
from perception.evaluation.kitti_object import PrecisionRecall
from perception.io.kitti import KittiObject
from perception.lidar.clustering import Box3D, Instance
from perception.lidar.projection import spherical_project
from perception.lidar.sensors import SENSORS
from perception.viz.bev_view import UNKNOWN_POINT, BevGrid, draw_bev, footprint_pixels, instances_from_labels
from perception.viz.camera_view import DETECTION_COLOURS, draw_detections, label_font_size
from perception.viz.draw import BACKGROUND, CAPTION_HEIGHT, PANEL_GAP, caption, class_colour, hstack
from perception.viz.plots import (
    DIFFICULTY_COLOURS,
    Chart,
    draw_pr_curves,
    draw_training_curves,
    nice_ticks,
    read_training_log,
)
from perception.viz.range_view import (
    CLASS_COLOURS,
    colourise_labels,
    pixel_labels_of_points,
    range_comparison,
    range_panel_origin,
)
from perception.viz.report import Figure, Section, Table, render_html

GREY = (50, 50, 50)
CAR = DETECTION_COLOURS["car"]
PED = DETECTION_COLOURS["pedestrian"]


def grey_frame(height: int = 200, width: int = 320) -> np.ndarray:
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = GREY
    return frame


def colour_at(image: np.ndarray, row: int, col: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in image[row, col])


def mask_of(image: np.ndarray, colour: tuple[int, int, int], region: tuple[slice, slice] | None = None) -> np.ndarray:
    patch = image if region is None else image[region]
    return np.all(patch == np.array(colour, np.uint8), axis=-1)


# --- camera --------------------------------------------------------------------------------------


def test_detection_outline_and_label_are_drawn_where_the_box_is_and_nowhere_else():
    frame = grey_frame()
    det = Detection2D(1, "car", 0.87, 40.3, 60.7, 140.2, 160.4)
    out = draw_detections(frame, [det])
    assert out.shape == frame.shape and np.all(frame == GREY), "the input frame must stay untouched"
    # 2-px outline from the rounded corners inwards: columns 40, 41 on the left, rows 160, 159 at the bottom
    for row in (70, 110, 150):
        assert colour_at(out, row, 40) == CAR and colour_at(out, row, 41) == CAR
        assert colour_at(out, row, 140) == CAR and colour_at(out, row, 139) == CAR
        assert colour_at(out, row, 39) == GREY and colour_at(out, row, 43) == GREY
    for col in (50, 90, 130):
        assert colour_at(out, 160, col) == CAR and colour_at(out, 159, col) == CAR
        assert colour_at(out, 161, col) == GREY and colour_at(out, 157, col) == GREY
    assert np.all(out[64:157, 43:137] == GREY), "the inside of the box must stay untouched"
    # the "car 0.87" tag: car-coloured rectangle just above the top-left corner, with dark text in it
    tag = (slice(40, 60), slice(40, 120))
    assert mask_of(out, CAR, tag).sum() > 200
    assert (out[tag].max(axis=-1) < 60).sum() > 15, "no text pixels in the label"
    assert np.all(out[:38] == GREY) and np.all(out[:, :40] == GREY) and np.all(out[:, 141:] == GREY)


def test_labels_go_inside_a_box_at_the_top_edge_and_the_best_score_is_drawn_on_top():
    frame = grey_frame()
    low = Detection2D(2, "pedestrian", 0.30, 100, 2, 200, 150)
    high = Detection2D(1, "car", 0.90, 100, 2, 180, 150)  # shares the left edge with ``low``
    out = draw_detections(frame, [high, low])
    assert colour_at(out, 100, 100) == CAR, "the higher score must be drawn last"
    assert colour_at(out, 100, 200) == PED, "the pedestrian's right edge is not covered"
    assert colour_at(out, 0, 150) == GREY, "no room above: the tag goes inside the box"
    assert mask_of(out, CAR, (slice(4, 4 + label_font_size(200) + 3), slice(102, 130))).sum() > 50


def test_ground_truth_boxes_are_thin_white_outlines_under_the_detections():
    frame = grey_frame()
    gt = [KittiObject("Car", bbox=(20.0, 30.0, 90.0, 100.0)), KittiObject("DontCare", bbox=(200.0, 30.0, 240.0, 60.0))]
    out = draw_detections(frame, [], ground_truth=gt)
    assert colour_at(out, 60, 20) == (255, 255, 255) and colour_at(out, 60, 21) == GREY
    assert colour_at(out, 30, 50) == (255, 255, 255) and colour_at(out, 100, 50) == (255, 255, 255)
    assert colour_at(out, 45, 200) == (150, 150, 150)
    with pytest.raises(ValueError, match="RGB"):
        draw_detections(np.zeros((10, 10), np.uint8), [])


# --- range view ----------------------------------------------------------------------------------


def test_colourise_labels_paints_each_pixel_with_its_class_and_empty_pixels_black():
    labels = np.array([[0, 1, 2, 3]], np.int64)
    mask = np.array([[True, True, True, False]])
    out = colourise_labels(labels, mask, row_scale=3)
    assert out.shape == (3, 4, 3)
    for c in range(3):
        assert np.all(out[:, c] == CLASS_COLOURS[labels[0, c]])
    assert np.all(out[:, 3] == 0)
    with pytest.raises(ValueError):
        colourise_labels(labels, mask[:, :2])


def test_range_comparison_puts_prediction_and_ground_truth_side_by_side():
    h, w, scale = 8, 200, 4
    mask = np.ones((h, w), bool)
    mask[0, 0] = False
    pred = np.zeros((h, w), np.int64)
    truth = np.zeros((h, w), np.int64)
    pred[2:4, 10:20] = 1  # car predicted
    truth[2:4, 10:15] = 1  # only half of it really is a car
    truth[5, 30] = 2  # a pedestrian the model missed
    out = range_comparison(pred, truth, mask, row_scale=scale)
    legend_height = CAPTION_HEIGHT
    assert out.shape == (CAPTION_HEIGHT + h * scale + legend_height, 2 * w + PANEL_GAP, 3)
    (r0, c0), (r1, c1) = range_panel_origin(0, w), range_panel_origin(1, w)
    assert c1 == w + PANEL_GAP

    def panel_pixel(origin: tuple[int, int], r: int, c: int) -> tuple[int, int, int]:
        return colour_at(out, origin[0] + r * scale + scale // 2, origin[1] + c)

    assert panel_pixel((r0, c0), 3, 18) == class_colour("car")
    assert panel_pixel((r1, c1), 3, 18) == class_colour("unknown")
    assert panel_pixel((r1, c1), 3, 12) == class_colour("car")
    assert panel_pixel((r1, c1), 5, 30) == class_colour("pedestrian")
    assert panel_pixel((r0, c0), 5, 30) == class_colour("unknown")
    assert panel_pixel((r0, c0), 0, 0) == (0, 0, 0) and panel_pixel((r1, c1), 0, 0) == (0, 0, 0)
    legend = out[-legend_height:]
    for name in ("unknown", "car", "pedestrian", "cyclist"):
        assert mask_of(legend, class_colour(name)).sum() >= 25, f"no {name} swatch in the legend"
    only_pred = range_comparison(pred, None, mask, row_scale=scale)
    assert only_pred.shape[1] == w


def test_pixel_labels_of_points_take_the_label_of_the_point_that_owns_the_pixel():
    sensor = SENSORS["kitti-front"]
    points = np.array([[10.0, 0.0, -1.0, 0.5], [20.0, 0.0, -4.0, 0.5], [5.0, 3.0, -1.5, 0.2], [-5.0, 0.0, 0.0, 0.1]],
                      np.float32)  # fmt: skip
    labels = np.array([1, 2, 3, 1])
    proj = spherical_project(points, sensor)
    px = pixel_labels_of_points(labels, proj)
    assert px.shape == sensor.shape
    for i in range(3):
        r, c = proj.pixel_of_point[i]
        assert r >= 0 and px[r, c] == labels[i]
    assert proj.pixel_of_point[3, 0] == -1, "a point behind the sensor is outside the front view"
    assert int((px > 0).sum()) == 3
    with pytest.raises(ValueError):
        pixel_labels_of_points(labels[:2], proj)


# --- bird's-eye view ------------------------------------------------------------------------------


def test_bev_grid_maps_forward_to_up_and_left_to_left():
    grid = BevGrid((-10.0, 60.0), (-30.0, 30.0), 0.1)
    assert (grid.width, grid.height) == (600, 700)
    col, row = grid.to_pixel(0.0, 0.0)
    assert (float(col), float(row)) == pytest.approx((300.0, 600.0))
    col, row = grid.to_pixel(60.0, 30.0)
    assert (float(col), float(row)) == pytest.approx((0.0, 0.0))
    col, row = grid.to_pixel(10.0, -5.0)
    assert (float(col), float(row)) == pytest.approx((350.0, 500.0))
    with pytest.raises(ValueError):
        BevGrid(resolution_m=0)


def test_bev_grid_fits_the_width_of_the_scene():
    rng = np.random.default_rng(3)
    street = np.column_stack([rng.uniform(0, 60, 1000), rng.uniform(-13, 13, 1000), np.zeros(1000)])
    grid = BevGrid.fit(np.concatenate([street, [[100.0, 80.0, 0.0]]]))  # a far point outside x_range is ignored
    assert grid.y_range == (-15.0, 15.0) and grid.x_range == (-10.0, 60.0) and grid.width == 300
    assert BevGrid.fit(street[:, :3] * [1, 0.1, 1]).y_range == (-12.0, 12.0), "never narrower than 12 m"
    assert BevGrid.fit(street * [1, 10, 1]).y_range == (-30.0, 30.0), "never wider than 30 m"


def test_bev_draws_points_by_class_and_instance_boxes_with_ids():
    grid = BevGrid((-10.0, 60.0), (-30.0, 30.0), 0.1)
    points = np.array([[20.05, 0.05, 0.0], [40.05, 10.05, 0.0], [-50.0, 0.0, 0.0], [np.nan, 0.0, 0.0]])
    labels = np.array([1, 0, 2, 3])
    box = Box3D(x=30.0, y=-10.0, z=0.0, length=4.0, width=2.0, height=1.5, yaw=0.0)
    inst = Instance(7, 1, 5, np.arange(5), np.array([30.0, -10.0, 0.0]), box, 0.9)
    out = draw_bev(points, labels, [inst], grid, point_size=2, ring_step_m=0)
    assert out.shape == (700, 600, 3)
    # the car point (20.05, 0.05) lands on column floor(299.5) = 299, row floor(399.5) = 399, drawn 2 x 2
    assert colour_at(out, 399, 299) == class_colour("car") and colour_at(out, 398, 298) == class_colour("car")
    assert colour_at(out, 399, 300) == BACKGROUND
    assert colour_at(out, 199, 199) == UNKNOWN_POINT and colour_at(out, 198, 198) == BACKGROUND
    assert mask_of(out, class_colour("pedestrian")).sum() == 0, "the point 50 m behind is outside the view"
    assert mask_of(out, class_colour("cyclist")).sum() == 0, "the NaN point is skipped"
    # the footprint: front edge at x = 32 m (row 280) from y = -9 (col 390) to y = -11 (col 410)
    corners = footprint_pixels(box, grid)
    assert corners[:, 1].min() == pytest.approx(280.0) and corners[:, 0].max() == pytest.approx(410.0)
    assert colour_at(out, 280, 400) == class_colour("car") and colour_at(out, 320, 400) == class_colour("car")
    assert colour_at(out, 300, 390) == class_colour("car") and colour_at(out, 300, 400) == BACKGROUND
    # the "#7 car" tag sits above the footprint's top-left corner
    tag = (slice(258, 280), slice(388, 440))
    assert mask_of(out, class_colour("car"), tag).sum() > 150 and (out[tag].max(axis=-1) < 40).sum() > 10
    # the ego sensor: white triangle at the origin
    assert colour_at(out, 600, 300) == (255, 255, 255)


def test_ground_truth_instances_get_boxes_fitted_to_their_points():
    rng = np.random.default_rng(0)
    car = np.column_stack([rng.uniform(18, 22, 200), rng.uniform(-1, 1, 200), rng.uniform(-1.5, 0, 200)])
    ped = np.column_stack([rng.uniform(9.8, 10.2, 50), rng.uniform(4.8, 5.2, 50), rng.uniform(-1.7, 0, 50)])
    ground = np.column_stack([rng.uniform(0, 40, 100), rng.uniform(-10, 10, 100), np.full(100, -1.7)])
    points = np.concatenate([car, ped, ground])
    classes = np.concatenate([np.full(200, 1), np.full(50, 2), np.zeros(100, int)])
    ids = np.concatenate([np.full(200, 4), np.full(50, 9), np.zeros(100, int)])
    instances = instances_from_labels(points, classes, ids)
    assert [(i.id, i.class_name, i.num_points) for i in instances] == [(4, "car", 200), (9, "pedestrian", 50)]
    car_box = instances[0].box
    assert (car_box.x, car_box.y) == pytest.approx((20.0, 0.0), abs=0.1)
    assert car_box.length == pytest.approx(4.0, abs=0.1) and car_box.width == pytest.approx(2.0, abs=0.1)


# --- charts ----------------------------------------------------------------------------------------


def test_chart_draws_lines_exactly_where_to_pixel_says_and_breaks_them_at_nan():
    chart = Chart((0.0, 10.0), (0.0, 1.0), 300, 200)
    colour = (255, 0, 255)
    chart.line([0, 2, 4, 6, 8, 10], [0.5, 0.5, np.nan, 0.5, 0.5, 0.5], "series", colour=colour)
    out = chart.render()
    left, top, right, bottom = chart.plot_box
    col, row = (float(v) for v in chart.to_pixel(1.0, 0.5))
    assert (col, row) == pytest.approx((left + 0.1 * (right - left), (top + bottom) / 2))
    column = mask_of(out[:, round(col)][:, None], colour)[:, 0]
    assert column[round(row) - 1 : round(row) + 2].any(), "the line must pass through to_pixel(1, 0.5)"
    assert column.sum() <= 4, "and only there in that column"
    gap_col = round(float(chart.to_pixel(4.0, 0.5)[0]))
    assert not mask_of(out[:, gap_col][:, None], colour).any(), "a NaN breaks the line"
    assert mask_of(out[:, round(float(chart.to_pixel(7.0, 0.5)[0]))][:, None], colour).any()


def test_chart_log_axis_and_nice_ticks():
    chart = Chart((0.0, 1.0), (1.0, 100.0), log_y=True)
    _, top, _, bottom = chart.plot_box
    assert float(chart.to_pixel(0.0, 10.0)[1]) == pytest.approx((top + bottom) / 2)
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0.0, 3000.0) == [0.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0]
    assert nice_ticks(-1.0, 4.0) == [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    assert nice_ticks(0.0, 0.012) == [0.0, 0.002, 0.004, 0.006, 0.008, 0.01, 0.012]
    with pytest.raises(ValueError):
        Chart((0.0, 1.0), (0.0, 1.0), log_y=True)


def _pr(difficulty: str, precision: np.ndarray, num_gt: int = 10) -> PrecisionRecall:
    return PrecisionRecall("car", difficulty, num_gt, np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0),
                           precision)  # fmt: skip


def test_pr_curves_plot_precision_at_the_devkits_recall_samples():
    diagonal = np.linspace(1.0, 0.0, 41)
    curves = {
        "car": {"moderate": _pr("moderate", diagonal)},
        "pedestrian": {"easy": _pr("easy", np.zeros(41), num_gt=0)},
    }
    out = draw_pr_curves(curves, width=380, height=300)
    assert out.shape == (300, 2 * 380 + PANEL_GAP, 3)
    chart = Chart((0.0, 1.0), (0.0, 1.0), 380, 300)  # the same geometry the function uses per class
    moderate = DIFFICULTY_COLOURS["moderate"]
    for recall in (0.25, 0.5, 0.75):
        col, row = (round(float(v)) for v in chart.to_pixel(recall, 1.0 - recall))
        assert mask_of(out, moderate, (slice(row - 1, row + 2), slice(col - 1, col + 2))).any(), recall
    second = out[:, 380 + PANEL_GAP :]
    assert not any(mask_of(second, c).any() for c in DIFFICULTY_COLOURS.values()), "no ground truth: no line"


def test_training_log_reader_survives_resumes_broken_lines_and_nan(tmp_path):
    rows = [
        {"step": 1, "lr": 0.001, "loss_total": 5.0},
        {"step": 10, "lr": 0.002, "loss_total": 4.0},
        {"step": 10, "lr": 0.002, "loss_total": 3.5},  # a resumed run logs step 10 again: the last one wins
        {"step": 10, "val_iou_car": 0.3, "val_iou_unknown": 0.9, "val_precision_cyclist": float("nan")},
    ]
    text = (
        "\n".join(json.dumps(r) for r in rows[:2])
        + '\n{"step": 20, "lr": 0.00\n'
        + "\n".join(json.dumps(r) for r in rows[2:])
    )
    (tmp_path / "metrics.jsonl").write_text(text + "\n")
    log = read_training_log(tmp_path)
    assert log["loss_total"] == [(1, 5.0), (10, 3.5)]
    assert log["lr"] == [(1, 0.001), (10, 0.002)]
    assert math.isnan(log["val_precision_cyclist"][0][1])
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    (csv_dir / "metrics.csv").write_text("step,key,value\n1,loss_total,2.5\n2,loss_total,2.0\n2,epoch,0\n")
    assert read_training_log(csv_dir)["loss_total"] == [(1, 2.5), (2, 2.0)]
    with pytest.raises(FileNotFoundError):
        read_training_log(tmp_path / "nothing")


def test_training_curves_have_a_panel_per_kind_of_series():
    log = {
        "loss_total": [(s, 10.0 / s) for s in range(1, 101)],
        "lr": [(s, 0.01) for s in range(1, 101)],
        "val_iou_car": [(50, 0.2), (100, 0.4)],
        "val_iou_unknown": [(50, 0.9), (100, 0.9)],
    }
    out = draw_training_curves(log, "seg", width=400, height=300)
    assert out.shape == (300, 3 * 400 + 2 * PANEL_GAP, 3)
    only_loss = draw_training_curves({"loss_total": log["loss_total"]}, width=400, height=300)
    assert only_loss.shape == (300, 400, 3)
    # one series per chart gets the first series colour; the loss line spans the plot area
    first = Chart().line([0], [0])._series[0].colour
    assert mask_of(only_loss, first).sum() > 300
    with pytest.raises(ValueError):
        draw_training_curves({"epoch": [(1, 0.0)]})


# --- composition and report ---------------------------------------------------------------------


def test_caption_and_hstack_place_images_where_documented():
    a = np.full((10, 20, 3), 200, np.uint8)
    b = np.full((5, 7, 3), 100, np.uint8)
    out = hstack([a, b])
    assert out.shape == (10, 20 + PANEL_GAP + 7, 3)
    assert np.all(out[:10, :20] == 200) and np.all(out[:5, 20 + PANEL_GAP :] == 100)
    assert np.all(out[5:, 20 + PANEL_GAP :] == BACKGROUND) and np.all(out[:, 20 : 20 + PANEL_GAP] == BACKGROUND)
    captioned = caption(a, "hello")
    assert captioned.shape == (10 + CAPTION_HEIGHT, 20, 3) and np.all(captioned[CAPTION_HEIGHT:] == 200)


def test_report_links_pictures_relatively_and_escapes_text():
    sections = [
        Section(
            "frame <1>",
            figures=[Figure("a b.png", "range & view", "x < y")],
            tables=[Table(["k", "ms"], [["total", "12.5"]])],
            notes=['note "quoted"'],
        ),
        Section("second"),
    ]
    doc = render_html("demo", sections, intro="<script>")
    assert '<img src="a b.png"' in doc and '<a href="a b.png">' in doc
    assert "frame &lt;1&gt;" in doc and "range &amp; view" in doc and "&lt;script&gt;" in doc
    assert '<td class="num">12.5</td>' in doc and "<script>" not in doc
    assert "http://" not in doc and "https://" not in doc
