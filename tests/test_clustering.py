"""Instances from labelled points: range-image DBSCAN against sklearn's, boxes against ground truth.

Run with ``pytest -s`` to see the adjusted Rand indices between the fast path and sklearn.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception.lidar import clustering
from perception.lidar.clustering import (
    DEFAULT_CLUSTER_PARAMS,
    Box3D,
    ClusterParams,
    Instance,
    cluster_instances,
    cluster_labels,
    connected_components,
    convex_hull_2d,
    fit_box,
    instance_ids_per_point,
    range_image_dbscan,
    range_image_dbscan_groups,
)
from perception.lidar.projection import spherical_project
from perception.lidar.sensors import HDL64E_KITTI_ELEVATIONS_DEG, SENSORS, SensorSpec
from perception.sim.analytic import CAR, CYCLIST, PEDESTRIAN, cast_scan, street_scene

from .conftest import kitti_sample_scans, requires_kitti_samples

FRONT = SENSORS["kitti-front"]
FULL = SENSORS["hdl64e-360"]
SEEDS = (0, 1, 2)

requires_sklearn = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None, reason="scikit-learn (the reference DBSCAN) is not installed"
)


def sklearn_labels(xyz: np.ndarray, params: ClusterParams) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=params.eps_m, min_samples=params.min_points).fit(xyz).labels_


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index; noise (-1) is one more label on both sides."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def compare_with_sklearn(points, labels, projection, name: str) -> dict[int, float]:
    """ARI per foreground class between the range-image DBSCAN and sklearn's on the same points."""
    scores = {}
    for cls, params in DEFAULT_CLUSTER_PARAMS.items():
        sel = np.flatnonzero((labels == cls) & projection.in_view)
        if sel.size == 0:
            continue
        xyz = points[sel, :3].astype(np.float64)
        fast = range_image_dbscan(
            xyz, projection.pixel_of_point[sel], projection.mask.shape, params.eps_m, params.min_points, params.window
        )
        ref = sklearn_labels(xyz, params)
        scores[cls] = ari(ref, fast)
        print(
            f"{name} class {cls}: {sel.size} points, ARI {scores[cls]:.4f}, clusters fast {fast.max() + 1}"
            f" sklearn {ref.max() + 1}, noise fast {(fast < 0).sum()} sklearn {(ref < 0).sum()}"
        )
    return scores


def load_kitti_sample(path):
    tensor = np.load(path)
    valid = tensor[..., 4] > 0
    return tensor[valid][:, :4], tensor[valid][:, 5].astype(np.int64)


def gt_car_ids(boxes) -> list[int]:
    return [k for k, box in enumerate(boxes, start=1) if box.label == CAR]


# --- agreement with sklearn -------------------------------------------------------------------


@requires_kitti_samples
@requires_sklearn
@pytest.mark.parametrize("path", kitti_sample_scans(), ids=lambda p: p.stem)
def test_same_partition_as_sklearn_on_real_kitti_scans(path):
    points, labels = load_kitti_sample(path)
    proj = spherical_project(points, FRONT)
    scores = compare_with_sklearn(points, labels, proj, path.stem)
    assert scores, "the sample has no foreground points"
    assert min(scores.values()) >= 0.99, scores


@requires_sklearn
@pytest.mark.parametrize("seed", SEEDS)
def test_same_partition_as_sklearn_on_synthetic_360_scans(seed):
    scan = cast_scan(FULL, street_scene(seed), seed=seed)
    proj = spherical_project(scan.points, FULL)
    scores = compare_with_sklearn(scan.points, scan.labels, proj, f"street seed {seed}")
    assert set(scores) == {CAR, PEDESTRIAN, CYCLIST}
    assert min(scores.values()) >= 0.99, scores


@requires_sklearn
def test_points_that_lost_their_pixel_are_clustered_too(street_scan):
    # a 360 deg layout with a quarter of the columns: about four points a pixel
    coarse = SensorSpec(
        name="coarse",
        beam_elevations_deg=HDL64E_KITTI_ELEVATIONS_DEG,
        width=512,
        azimuth_left_deg=180.0,
        azimuth_right_deg=-180.0,
        max_range_m=120.0,
    )
    proj = spherical_project(street_scan.points, coarse)
    cars = (street_scan.labels == CAR) & proj.in_view
    owners = np.zeros(len(street_scan.points), dtype=bool)
    owners[proj.point_of_pixel[proj.mask]] = True
    assert (cars & ~owners).sum() > cars.sum() / 2  # most car points lost their pixel
    scores = compare_with_sklearn(street_scan.points, street_scan.labels, proj, "coarse 64 x 512")
    assert min(scores.values()) >= 0.99, scores
    instances = cluster_instances(street_scan.points, street_scan.labels, proj)
    clustered = instance_ids_per_point(instances, len(street_scan.points)) > 0
    assert (clustered & cars & ~owners).sum() > 0.9 * (cars & ~owners).sum()


@requires_sklearn
def test_an_object_across_the_azimuth_seam_stays_one_instance(street_scan):
    boxes = street_scene(0)
    behind = next(k for k in gt_car_ids(boxes) if boxes[k - 1].x < 0)  # the car at x = -10 m
    on_car = street_scan.instances == behind
    xy = street_scan.points[on_car, :2].mean(axis=0)
    turn = math.pi - math.atan2(xy[1], xy[0])  # rotate the scan so that the car straddles +-180 deg
    c, s = math.cos(turn), math.sin(turn)
    points = street_scan.points.copy()
    points[:, 0] = c * street_scan.points[:, 0] - s * street_scan.points[:, 1]
    points[:, 1] = s * street_scan.points[:, 0] + c * street_scan.points[:, 1]
    proj = spherical_project(points, FULL)
    cols = proj.pixel_of_point[on_car, 1]
    assert cols.min() == 0 and cols.max() == FULL.width - 1  # it really is split by the seam
    scores = compare_with_sklearn(points, street_scan.labels, proj, "rotated onto the seam")
    assert scores[CAR] >= 0.99
    ids = instance_ids_per_point(cluster_instances(points, street_scan.labels, proj), len(points))
    _, counts = np.unique(ids[on_car], return_counts=True)
    assert counts.max() >= 0.95 * on_car.sum()


@requires_sklearn
def test_both_methods_give_the_same_instances(street_scan):
    proj = spherical_project(street_scan.points, FULL)
    fast = cluster_instances(street_scan.points, street_scan.labels, proj, method="range_image")
    ref = cluster_instances(street_scan.points, street_scan.labels, proj, method="sklearn")
    n = len(street_scan.points)
    fg = street_scan.labels > 0
    score = ari(instance_ids_per_point(ref, n)[fg], instance_ids_per_point(fast, n)[fg])
    print(f"instances: fast {len(fast)}, sklearn {len(ref)}, ARI over foreground points {score:.4f}")
    assert score >= 0.99
    assert [i.class_id for i in fast] == [i.class_id for i in ref]


@requires_sklearn
@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 4),
    width=st.integers(1, 7),
    data=st.data(),
    eps=st.sampled_from([0.5, 1.5, 2.5]),
    min_points=st.integers(1, 6),
)
def test_a_window_as_large_as_the_image_is_exact_dbscan(height, width, data, eps, min_points):
    # integer coordinates: duplicates, shared pixels and ties between clusters; eps avoids distance ties
    m = data.draw(st.integers(0, 40))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    xyz = rng.integers(0, 5, (m, 3)).astype(np.float64)
    pixels = np.stack([rng.integers(0, height, m), rng.integers(0, width, m)], axis=1)
    window = (2 * height + 1, width + 1 if width % 2 == 0 else width)
    fast = range_image_dbscan(xyz, pixels, (height, width), eps, min_points, window)
    if m == 0:
        assert fast.shape == (0,)
        return
    from sklearn.cluster import DBSCAN

    # the same labels, numbering and border assignment included
    np.testing.assert_array_equal(fast, DBSCAN(eps=eps, min_samples=min_points).fit(xyz).labels_)


@requires_sklearn
@settings(max_examples=80, deadline=None)
@given(
    height=st.integers(1, 8),
    width=st.integers(1, 24),
    window=st.tuples(st.sampled_from([1, 3, 5, 7, 9]), st.sampled_from([1, 3, 5, 9, 15])),
    eps=st.sampled_from([1.5, 2.5, 3.5]),
    min_points=st.integers(1, 7),
    data=st.data(),
)
def test_the_window_search_is_exact_dbscan_over_window_neighbours(height, width, window, eps, min_points, data):
    # DBSCAN on the neighbour relation "within eps in 3D and within the pixel window" (columns wrap):
    # sklearn on a precomputed distance matrix where pairs outside the window are far apart. Points
    # lie near their pixel (x ~ column, y ~ row), so neighbours reach beyond the 3 x 3 core of the
    # window; integer coordinates and eps between integers keep distances off the eps boundary.
    m = data.draw(st.integers(0, 90))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    pixels = np.stack([rng.integers(0, height, m), rng.integers(0, width, m)], axis=1)
    xyz = np.column_stack([pixels[:, 1], pixels[:, 0], np.zeros(m)]) + rng.integers(-1, 2, (m, 3))
    xyz = xyz.astype(np.float64)
    # the link search's shortcuts must not change the result: box-reach pruning off (no cluster limit), and
    # the window prefilter forced on
    pruning, prefilter = data.draw(st.sampled_from([(True, False), (False, False), (True, True)]))
    saved = clustering._REACH_MAX_CLUSTERS, clustering._LINK_SOURCES_UNFILTERED
    try:
        clustering._REACH_MAX_CLUSTERS = saved[0] if pruning else -1
        clustering._LINK_SOURCES_UNFILTERED = 0 if prefilter else saved[1]
        fast = range_image_dbscan(xyz, pixels, (height, width), eps, min_points, window)
    finally:
        clustering._REACH_MAX_CLUSTERS, clustering._LINK_SOURCES_UNFILTERED = saved
    if m == 0:
        assert fast.shape == (0,)
        return
    from sklearn.cluster import DBSCAN

    dr = np.abs(pixels[:, None, 0] - pixels[None, :, 0])
    dc = np.abs(pixels[:, None, 1] - pixels[None, :, 1])
    in_window = (dr <= window[0] // 2) & (np.minimum(dc, width - dc) <= window[1] // 2)
    dist = np.where(in_window, np.linalg.norm(xyz[:, None] - xyz[None, :], axis=-1), 1e9)
    expected = DBSCAN(eps=eps, min_samples=min_points, metric="precomputed").fit(dist).labels_
    np.testing.assert_array_equal(fast, expected)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 6),
    width=st.integers(1, 20),
    window=st.tuples(st.sampled_from([1, 3, 7]), st.sampled_from([1, 5, 15])),
    data=st.data(),
)
def test_groups_clustered_together_get_the_labels_each_gets_alone(height, width, window, data):
    m = data.draw(st.integers(0, 90))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    pixels = np.stack([rng.integers(0, height, m), rng.integers(0, width, m)], axis=1)
    xyz = (np.column_stack([pixels[:, 1], pixels[:, 0], np.zeros(m)]) + rng.integers(-1, 2, (m, 3))).astype(float)
    params = [ClusterParams(eps_m=e, min_points=k, window=window) for e, k in ((1.5, 3), (2.5, 5), (3.5, 1))]
    groups = rng.integers(0, len(params), m)
    together = range_image_dbscan_groups(xyz, pixels, groups, (height, width), params)
    for g, p in enumerate(params):  # same points, same pixels, one group at a time
        alone = range_image_dbscan(
            xyz[groups == g], pixels[groups == g], (height, width), p.eps_m, p.min_points, window
        )
        np.testing.assert_array_equal(together[groups == g], alone)


@requires_sklearn
def test_hundreds_of_points_on_one_pixel_are_exact_and_cost_only_their_pairs():
    from sklearn.cluster import DBSCAN

    from perception.lidar.clustering import _pad_pixels

    rng = np.random.default_rng(3)
    shape, window, eps, min_points = (16, 64), (7, 15), 0.6, 5
    pixels = np.stack([rng.integers(0, 16, 1300), rng.integers(0, 64, 1300)], axis=1)
    pixels[:300] = [8, 63]  # one pixel on the seam holds 300 points
    xyz = rng.normal(0.0, 2.0, (1300, 3))
    xyz[:300] = rng.normal(0.0, 0.3, (300, 3))
    fast = range_image_dbscan(xyz, pixels, shape, eps, min_points, window)
    dr = np.abs(pixels[:, None, 0] - pixels[None, :, 0])
    dc = np.abs(pixels[:, None, 1] - pixels[None, :, 1])
    in_window = (dr <= 3) & (np.minimum(dc, 64 - dc) <= 7)
    dist = np.where(in_window, np.linalg.norm(xyz[:, None] - xyz[None, :], axis=-1), 1e9)
    np.testing.assert_array_equal(fast, DBSCAN(eps=eps, min_samples=min_points, metric="precomputed").fit(dist).labels_)
    # the padded image holds one entry per pixel whatever the number of points on a pixel
    order = np.argsort(pixels[:, 0] * 64 + pixels[:, 1], kind="stable")
    grid = _pad_pixels(pixels[order, 0], pixels[order, 1], 64, 3, 7)
    assert grid.index.size == grid.count.size == (16 + 6) * (64 + 14)


def test_groups_need_one_window_and_valid_indices():
    xyz, pixels = np.zeros((2, 3)), np.zeros((2, 2), dtype=np.int64)
    one, other = ClusterParams(eps_m=1.0, min_points=1), ClusterParams(eps_m=1.0, min_points=1, window=(3, 3))
    with pytest.raises(ValueError, match="one window"):
        range_image_dbscan_groups(xyz, pixels, np.array([0, 1]), (4, 4), [one, other])
    with pytest.raises(ValueError, match="indexing"):
        range_image_dbscan_groups(xyz, pixels, np.array([0, 2]), (4, 4), [one, one])


# --- against the synthetic ground truth -------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_instances_match_the_ground_truth_objects(seed):
    boxes = street_scene(seed)
    scan = cast_scan(FULL, boxes, seed=seed)
    proj = spherical_project(scan.points, FULL)
    instances = cluster_instances(scan.points, scan.labels, proj)
    ids = instance_ids_per_point(instances, len(scan.points))
    assert [inst.id for inst in instances] == list(range(1, len(instances) + 1))

    for inst in instances:  # no instance mixes objects or classes
        owners, counts = np.unique(scan.instances[inst.point_indices], return_counts=True)
        assert owners[np.argmax(counts)] > 0 and counts.max() >= 0.99 * inst.num_points
        assert (scan.labels[inst.point_indices] == inst.class_id).all()

    checked_boxes = 0
    for k, box in enumerate(boxes, start=1):
        on_object = scan.instances == k
        if box.label == 0 or on_object.sum() <= 50:
            continue
        found, counts = np.unique(ids[on_object], return_counts=True)
        inst_id = found[np.argmax(counts)]
        assert inst_id > 0 and counts.max() >= 0.75 * on_object.sum(), (k, dict(zip(found, counts, strict=True)))
        inst = instances[inst_id - 1]
        assert inst.class_id == box.label
        if box.label != CAR:
            continue
        # a box can only be as good as what the sensor saw: check cars whose points span the
        # ground-truth length and width (an L of two faces), not those seen from one face only
        c, s = math.cos(box.yaw), math.sin(box.yaw)
        rel = scan.points[inst.point_indices, :2] - [box.x, box.y]
        along, across = rel @ [c, s], rel @ [-s, c]
        if np.ptp(along) < 0.9 * box.length or np.ptp(across) < 0.9 * box.width:
            continue
        checked_boxes += 1
        fitted = inst.box
        dyaw = (fitted.yaw - box.yaw + math.pi / 2) % math.pi - math.pi / 2
        print(
            f"seed {seed} car {k}: {inst.num_points} points, centre off by "
            f"{math.hypot(fitted.x - box.x, fitted.y - box.y):.2f} m, yaw {math.degrees(dyaw):+.1f} deg, "
            f"length {fitted.length - box.length:+.2f} m, width {fitted.width - box.width:+.2f} m"
        )
        assert math.hypot(fitted.x - box.x, fitted.y - box.y) <= 0.5
        assert abs(math.degrees(dyaw)) <= 10.0
        assert abs(fitted.length - box.length) <= 0.5 and abs(fitted.width - box.width) <= 0.5
        assert fitted.z - fitted.height / 2 == pytest.approx(-1.73, abs=0.1)  # stands on the ground
    assert checked_boxes >= 3


# --- boxes ------------------------------------------------------------------------------------


def rectangle_outline(center, length, width, yaw, faces=(0, 1, 2, 3), spacing=0.05, noise=0.0, seed=0):
    """Points on the faces of an upright box: 0 front, 1 left, 2 back, 3 right; z in 0..1.5 m."""
    rng = np.random.default_rng(seed)
    hl, hw = length / 2, width / 2
    corners = {0: (hl, -hw), 1: (hl, hw), 2: (-hl, hw), 3: (-hl, -hw)}  # face k: corner k to corner k + 1
    local = []
    for face in faces:
        a, b = np.array(corners[face]), np.array(corners[(face + 1) % 4])
        t = np.linspace(0.0, 1.0, int(np.linalg.norm(b - a) / spacing) + 1)[:, None]
        for z in np.linspace(0.0, 1.5, 6):
            local.append(np.column_stack([a + t * (b - a), np.full(len(t), z)]))
    pts = np.concatenate(local)
    pts[:, :2] += rng.normal(0.0, noise, (len(pts), 2)) if noise else 0.0
    c, s = math.cos(yaw), math.sin(yaw)
    xy = pts[:, :2] @ np.array([[c, s], [-s, c]])
    return np.column_stack([xy + center[:2], pts[:, 2] + center[2]])


@pytest.mark.parametrize("criterion", ["closeness", "min_area"])
@pytest.mark.parametrize("yaw", [0.0, 0.6, -1.2, 1.5, 2.0, -2.9])
def test_box_of_a_rotated_rectangle(criterion, yaw):
    pts = rectangle_outline(np.array([12.0, -4.0, -1.7]), 4.2, 1.7, yaw)
    box = fit_box(pts, criterion)
    expected_yaw = (yaw + math.pi / 2) % math.pi - math.pi / 2  # folded into [-pi/2, pi/2)
    assert -math.pi / 2 <= box.yaw < math.pi / 2
    assert box.yaw == pytest.approx(expected_yaw, abs=math.radians(0.1))
    assert (box.length, box.width, box.height) == pytest.approx((4.2, 1.7, 1.5), abs=0.01)
    assert (box.x, box.y, box.z) == pytest.approx((12.0, -4.0, -0.95), abs=0.01)
    corners = box.corners()
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners.mean(axis=0), box.center, atol=1e-9)


@pytest.mark.parametrize("yaw", [0.3, -0.8, 1.3])
def test_box_of_an_l_shape_of_two_faces(yaw):
    # what LiDAR sees of a car: its back and right side, with 2 cm noise; the minimum-area
    # rectangle is ambiguous here (a right-triangle hull), the closeness criterion is not
    pts = rectangle_outline(np.array([8.0, 3.0, -1.0]), 4.5, 1.8, yaw, faces=(2, 3), noise=0.02)
    box = fit_box(pts)
    dyaw = (box.yaw - yaw + math.pi / 2) % math.pi - math.pi / 2
    assert abs(math.degrees(dyaw)) < 1.0
    assert (box.length, box.width) == pytest.approx((4.5, 1.8), abs=0.1)
    assert (box.x, box.y) == pytest.approx((8.0, 3.0), abs=0.1)


def test_degenerate_boxes():
    one = fit_box(np.array([[1.0, 2.0, 3.0]]))
    assert (one.x, one.y, one.z, one.length, one.width, one.height, one.yaw) == (1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0)
    line = np.column_stack([np.linspace(0, 3, 10), np.linspace(0, 3, 10), np.zeros(10)])
    for criterion in ("closeness", "min_area"):
        box = fit_box(line, criterion)
        assert box.yaw == pytest.approx(math.pi / 4, abs=1e-3)
        assert box.length == pytest.approx(3 * math.sqrt(2), abs=1e-3)
        assert box.width == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="shape"):
        fit_box(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="criterion"):
        fit_box(line, "biggest")  # type: ignore[arg-type]


def test_convex_hull_encloses_every_point(rng):
    for n in (3, 10, 200):
        pts = rng.normal(size=(n, 2)) * [3.0, 1.0]
        hull = convex_hull_2d(pts)
        assert 3 <= len(hull) <= n
        edges = np.roll(hull, -1, axis=0) - hull
        cross = edges[:, None, 0] * (pts[None, :, 1] - hull[:, None, 1]) - edges[:, None, 1] * (
            pts[None, :, 0] - hull[:, None, 0]
        )
        assert (cross >= -1e-9).all() or (cross <= 1e-9).all()  # every point on one side of every edge
        assert all((pts == v).all(axis=1).any() for v in hull)  # vertices are input points
    assert convex_hull_2d(np.ones((5, 2))).shape == (1, 2)
    assert len(convex_hull_2d(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))) == 2


# --- graph helpers ----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 30), data=st.data())
def test_connected_components_give_the_smallest_index_of_each_component(n, data):
    edges = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=40))
    ei = np.array([e[0] for e in edges], dtype=np.int64)
    ej = np.array([e[1] for e in edges], dtype=np.int64)
    got = connected_components(n, ei, ej)
    parent = list(range(n))  # reference: plain union-find

    def find(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for a, b in edges:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    expected = [min(i for i in range(n) if find(i) == find(j)) for j in range(n)]
    assert got.tolist() == expected


# --- edge cases and contracts -----------------------------------------------------------------


def cluster(points, labels, sensor=FRONT, **kwargs):
    return cluster_instances(points, labels, spherical_project(points, sensor), **kwargs)


def test_nothing_to_cluster_gives_no_instances():
    empty = np.zeros((0, 4), dtype=np.float32)
    assert cluster(empty, np.zeros(0, dtype=np.int64)) == []
    pts = np.array([[10.0, 0.0, -1.0, 0.5], [10.0, 0.1, -1.0, 0.5]], dtype=np.float32)
    assert cluster(pts, np.zeros(2, dtype=np.int64)) == []  # background only
    assert cluster(pts[:1], np.ones(1, dtype=np.int64)) == []  # one point is noise
    # scattered points, each farther than eps from all others: all noise
    far = np.array([[10.0 + 2 * k, (-1) ** k * 2.0, -1.0, 0.5] for k in range(20)], dtype=np.float32)
    for method in ("range_image", "sklearn") if importlib.util.find_spec("sklearn") else ("range_image",):
        assert cluster(far, np.full(20, CAR), method=method) == []
    # points outside the field of view are not clustered
    behind = np.array([[-10.0, 0.05 * k, -1.0, 0.5] for k in range(20)], dtype=np.float32)
    assert cluster(behind, np.full(20, CAR)) == []
    assert cluster(behind, np.full(20, CAR), sensor=FULL)  # but they are with a 360 deg sensor


def test_a_single_point_instance_when_allowed():
    pts = np.array([[10.0, 1.0, -1.0, 0.5]], dtype=np.float32)
    params = {PEDESTRIAN: ClusterParams(eps_m=0.5, min_points=1, min_instance_points=1)}
    (inst,) = cluster(pts, np.array([PEDESTRIAN]), params=params)
    assert (inst.id, inst.class_id, inst.num_points, inst.score) == (1, PEDESTRIAN, 1, 1.0)
    assert inst.point_indices.tolist() == [0]
    assert (inst.box.length, inst.box.width, inst.box.height) == (0.0, 0.0, 0.0)
    np.testing.assert_allclose(inst.centroid, [10.0, 1.0, -1.0])


def test_instances_ids_scores_and_json(street_scan):
    n = len(street_scan.points)
    scores = np.linspace(0.0, 1.0, n)
    proj = spherical_project(street_scan.points, FULL)
    instances = cluster_instances(street_scan.points, street_scan.labels, proj, scores=scores)
    assert {i.class_id for i in instances} == {CAR, PEDESTRIAN, CYCLIST}
    assert [i.class_id for i in instances] == sorted(i.class_id for i in instances)
    ids = instance_ids_per_point(instances, n)
    assert ids.dtype == np.int64 and ids.shape == (n,)
    for inst in instances:
        assert isinstance(inst, Instance) and isinstance(inst.box, Box3D)
        assert inst.point_indices.dtype == np.int64
        assert (np.diff(inst.point_indices) > 0).all()
        assert (ids[inst.point_indices] == inst.id).all()
        assert inst.num_points == len(inst.point_indices) >= DEFAULT_CLUSTER_PARAMS[inst.class_id].min_instance_points
        assert inst.score == pytest.approx(scores[inst.point_indices].mean())
        assert inst.box.length >= inst.box.width >= 0
        np.testing.assert_allclose(inst.centroid, street_scan.points[inst.point_indices, :3].mean(axis=0), atol=1e-5)
    assert (ids > 0).sum() == sum(i.num_points for i in instances)
    doc = instances[0].to_dict()
    assert "point_indices" not in doc
    assert json.loads(json.dumps(doc)) == doc
    assert set(doc) == {"id", "class_id", "class_name", "num_points", "centroid", "box", "score"}
    assert doc["class_name"] == "car" and len(doc["box"]["center"]) == 3 and len(doc["box"]["size"]) == 3
    full = instances[0].to_dict(include_points=True)
    assert full["point_indices"] == instances[0].point_indices.tolist()
    json.dumps(full)
    assert instance_ids_per_point([], 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="outside"):
        instance_ids_per_point(instances, 10)


def test_params_select_the_classes(street_scan):
    proj = spherical_project(street_scan.points, FULL)
    only_people = {PEDESTRIAN: DEFAULT_CLUSTER_PARAMS[PEDESTRIAN]}
    instances = cluster_instances(street_scan.points, street_scan.labels, proj, params=only_people)
    assert instances and {i.class_id for i in instances} == {PEDESTRIAN}
    big = {CAR: dataclasses.replace(DEFAULT_CLUSTER_PARAMS[CAR], min_instance_points=10**6)}
    assert cluster_instances(street_scan.points, street_scan.labels, proj, params=big) == []


def test_classes_with_their_own_windows_cluster_as_they_would_alone(street_scan):
    proj = spherical_project(street_scan.points, FULL)
    params = {
        CAR: DEFAULT_CLUSTER_PARAMS[CAR],
        PEDESTRIAN: dataclasses.replace(DEFAULT_CLUSTER_PARAMS[PEDESTRIAN], window=(5, 11)),
        CYCLIST: DEFAULT_CLUSTER_PARAMS[CYCLIST],
    }
    together = cluster_instances(street_scan.points, street_scan.labels, proj, params=params)
    alone = [
        inst
        for cls in sorted(params)
        for inst in cluster_instances(street_scan.points, street_scan.labels, proj, params={cls: params[cls]})
    ]
    assert len(together) == len(alone) and {i.class_id for i in together} == {CAR, PEDESTRIAN, CYCLIST}
    for a, b in zip(together, alone, strict=True):
        assert a.class_id == b.class_id and a.box == b.box
        np.testing.assert_array_equal(a.point_indices, b.point_indices)


def test_cluster_labels_is_the_dbscan_step_of_cluster_instances(street_scan):
    proj = spherical_project(street_scan.points, FULL)
    labels = cluster_labels(street_scan.points, street_scan.labels, proj)
    assert set(labels) == set(DEFAULT_CLUSTER_PARAMS)
    instances = cluster_instances(street_scan.points, street_scan.labels, proj)
    for inst in instances:
        sel, cluster = labels[inst.class_id]
        members = sel[cluster == cluster[np.searchsorted(sel, inst.point_indices[0])]]
        np.testing.assert_array_equal(members, inst.point_indices)
    with pytest.raises(ValueError, match="method"):
        cluster_labels(street_scan.points, street_scan.labels, proj, method="kmeans")  # type: ignore[arg-type]


def test_bad_inputs_raise_value_errors():
    pts = np.array([[10.0, 0.0, -1.0, 0.5], [10.0, 0.1, -1.0, 0.5]], dtype=np.float32)
    labels = np.ones(2, dtype=np.int64)
    proj = spherical_project(pts, FRONT)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        cluster_instances(np.zeros((2, 5), dtype=np.float32), labels, proj)
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        cluster_instances(pts, np.ones(3, dtype=np.int64), proj)
    with pytest.raises(ValueError, match=r"labels must have shape"):
        cluster_instances(pts, np.ones((2, 1), dtype=np.int64), proj)
    with pytest.raises(ValueError, match="integer class ids"):
        cluster_instances(pts, np.array([0.5, 1.0]), proj)
    with pytest.raises(ValueError, match="projection was made from 1 points"):
        cluster_instances(pts, labels, spherical_project(pts[:1], FRONT))
    with pytest.raises(ValueError, match=r"scores must have shape \(2,\)"):
        cluster_instances(pts, labels, proj, scores=np.ones(5))
    with pytest.raises(ValueError, match="method must be one of"):
        cluster_instances(pts, labels, proj, method="kmeans")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="background"):
        cluster_instances(pts, labels, proj, params={0: DEFAULT_CLUSTER_PARAMS[CAR]})
    with pytest.raises(ValueError, match="ClusterParams"):
        cluster_instances(pts, labels, proj, params={1: {"eps_m": 0.5}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="odd"):
        ClusterParams(eps_m=0.5, min_points=3, window=(4, 11))
    with pytest.raises(ValueError, match="eps_m"):
        ClusterParams(eps_m=-1.0, min_points=3)
    with pytest.raises(ValueError, match="min_points"):
        ClusterParams(eps_m=0.5, min_points=0)
    with pytest.raises(ValueError, match=r"xyz must have shape \(M, 3\)"):
        range_image_dbscan(np.zeros((3, 2)), np.zeros((3, 2), dtype=np.int64), (4, 4), 0.5, 2)
    with pytest.raises(ValueError, match="inside the 4 x 4 image"):
        range_image_dbscan(np.zeros((1, 3)), np.array([[-1, -1]]), (4, 4), 0.5, 2)
    # the labels of the KITTI .npy files are float32 whole numbers: accepted
    assert cluster_instances(pts, labels.astype(np.float32), proj) == []


def test_the_runtime_module_imports_neither_sklearn_nor_scipy_nor_open3d():
    code = (
        "import sys\n"
        "import perception.lidar.clustering\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy', 'open3d', 'torch'))\n"
        "print(','.join(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""
