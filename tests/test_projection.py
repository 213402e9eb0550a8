from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from perception.lidar.projection import (
    PointCloudError,
    labels_to_points,
    range_image_to_points,
    spherical_project,
    to_squeezeseg_tensor,
)
from perception.lidar.sensors import SENSORS

from .conftest import kitti_sample_scans, requires_kitti_samples

FRONT = SENSORS["kitti-front"]
FULL = SENSORS["hdl64e-360"]


@requires_kitti_samples
@pytest.mark.parametrize("path", kitti_sample_scans(), ids=lambda p: p.stem)
def test_projection_reproduces_the_squeezeseg_layout_on_real_scans(path):
    tensor = np.load(path)
    valid = tensor[..., 4] > 0
    rows, cols = np.nonzero(valid)
    points = tensor[valid][:, :4]
    proj = spherical_project(points, FRONT)
    same_pixel = (proj.pixel_of_point[:, 0] == rows) & (proj.pixel_of_point[:, 1] == cols)
    agreement = same_pixel.mean()
    print(f"{path.name}: {agreement:.1%} of {len(points)} points on the same (row, col)")
    assert agreement >= 0.90
    inside = proj.in_view
    assert inside.mean() >= 0.998
    assert (proj.pixel_of_point[inside, 1] == cols[inside]).mean() >= 0.999
    # a kept pixel holds exactly the point's own values
    owned = proj.point_of_pixel[proj.mask]
    np.testing.assert_array_equal(proj.image[:4, proj.mask].T, points[owned])


def test_every_point_of_a_full_sweep_keeps_its_xyz(street_scan):
    proj = spherical_project(street_scan.points, FULL)
    assert proj.in_view.all()
    back = proj.image[:, proj.mask]
    owners = proj.point_of_pixel[proj.mask]
    np.testing.assert_array_equal(back[:4].T, street_scan.points[owners])
    np.testing.assert_allclose(back[4], np.linalg.norm(street_scan.points[owners, :3], axis=1), rtol=1e-6)
    # a ray-cast sweep has one return per pixel, so unprojection gives back every point
    assert proj.num_pixels_filled == len(street_scan.points)
    recovered = range_image_to_points(proj.image, proj.mask)
    np.testing.assert_array_equal(np.sort(recovered, axis=0), np.sort(street_scan.points, axis=0))


def test_labels_go_back_to_every_point_including_pixel_losers(street_scan):
    proj = spherical_project(street_scan.points, FULL)
    pixel_labels = np.zeros(proj.mask.shape, dtype=np.int64)
    pixel_labels[proj.mask] = street_scan.labels[proj.point_of_pixel[proj.mask]]
    np.testing.assert_array_equal(labels_to_points(pixel_labels, proj), street_scan.labels)

    # a farther duplicate of each point loses its pixel but still gets the pixel's label
    farther = street_scan.points.copy()
    farther[:, :3] *= 1.001
    doubled = np.concatenate([street_scan.points, farther])
    proj2 = spherical_project(doubled, FULL)
    assert proj2.num_pixels_filled == len(street_scan.points)
    assert (proj2.point_of_pixel[proj2.mask] < len(street_scan.points)).all()
    pixel_labels2 = np.zeros(proj2.mask.shape, dtype=np.int64)
    pixel_labels2[proj2.mask] = street_scan.labels[proj2.point_of_pixel[proj2.mask]]
    out = labels_to_points(pixel_labels2, proj2)
    np.testing.assert_array_equal(out, np.concatenate([street_scan.labels, street_scan.labels]))


def test_any_pixel_image_goes_back_to_the_points_with_its_dtype():
    pts = np.array([[10.0, 0.0, -0.01, 0.1], [np.nan, 0, 0, 0], [-10.0, 0.0, 0.0, 0.0], [20.0, 0.0, -0.02, 0.0]])
    proj = spherical_project(pts.astype(np.float32), FRONT)
    scores = np.arange(proj.mask.size, dtype=np.float32).reshape(proj.mask.shape) / 7.0
    out = labels_to_points(scores, proj, outside=-0.5)
    (r0, c0), (r3, c3) = proj.pixel_of_point[0], proj.pixel_of_point[3]
    assert out.dtype == np.float32
    assert out.tolist() == [scores[r0, c0], -0.5, -0.5, scores[r3, c3]]
    with pytest.raises(ValueError, match="shape"):
        labels_to_points(scores[:, :-1], proj)
    marks = np.zeros(proj.mask.shape, dtype=np.uint8)
    marks[r0, c0] = 7  # points 0 and 3 share this pixel (one azimuth and elevation)
    assert (r0, c0) == (r3, c3)
    assert labels_to_points(marks, proj, outside=9).tolist() == [7, 9, 9, 7]
    assert labels_to_points(marks > 0, proj).tolist() == [True, False, False, True]
    # the bookkeeping a projection shares with every reader cannot be changed through it
    for shared in (proj.in_view, proj.pixel_of_point, proj.flat_pixel_of_point):
        with pytest.raises(ValueError, match="read-only"):
            shared[0] = 0


def test_nearest_point_wins_the_pixel():
    near = [10.0, 0.0, -0.01, 0.1]
    far = [20.0, 0.0, -0.02, 0.9]
    proj = spherical_project(np.array([far, near], dtype=np.float32), FRONT)
    assert proj.num_pixels_filled == 1
    r, c = proj.pixel_of_point[1]
    assert tuple(proj.pixel_of_point[0]) == (r, c)
    assert proj.point_of_pixel[r, c] == 1
    assert proj.image[3, r, c] == pytest.approx(0.1)


def test_invalid_points_are_dropped_with_a_count():
    pts = np.array(
        [[np.nan, 0, 0, 0], [np.inf, 1, 0, 0], [0, 0, 0, 0.5], [5, 0, -0.5, 0.2], [0, 0, 0, np.nan]],
        dtype=np.float32,
    )
    proj = spherical_project(pts, FRONT)
    assert proj.num_invalid == 4
    assert proj.num_pixels_filled == 1
    assert proj.pixel_of_point[:3].tolist() == [[-1, -1]] * 3


def test_out_of_view_and_out_of_range():
    pts = np.array([[-5, 0, -0.5, 0], [0, 5, -0.5, 0], [500, 0, -20, 0], [5, 0, 5, 0]], dtype=np.float32)
    proj = spherical_project(pts, FRONT)
    assert proj.num_out_of_view == 4 and proj.num_pixels_filled == 0 and proj.num_invalid == 0


def test_xyz_only_clouds_get_zero_intensity():
    proj = spherical_project(np.array([[5, 0, -0.5]], dtype=np.float64), FRONT)
    assert proj.image[3][proj.mask].tolist() == [0.0]


@pytest.mark.parametrize("bad", [np.zeros((5, 5)), np.zeros(4), np.array([["a", "b", "c", "d"]])])
def test_wrong_shapes_and_dtypes_raise(bad):
    with pytest.raises(PointCloudError):
        spherical_project(bad, FRONT)


def test_squeezeseg_tensor_layout(street_scan):
    proj = spherical_project(street_scan.points, FRONT)
    labels = np.full(proj.mask.shape, 2.0, dtype=np.float32)
    tensor = to_squeezeseg_tensor(proj, labels)
    assert tensor.shape == (64, 512, 6) and tensor.dtype == np.float32
    assert (tensor[..., 5][~proj.mask] == 0).all() and (tensor[..., 5][proj.mask] == 2).all()
    np.testing.assert_array_equal(tensor[..., 4] > 0, proj.mask)


def test_two_million_points():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-60, 60, size=(2_000_000, 4)).astype(np.float32)
    pts[:, 2] = rng.uniform(-3, 1, size=len(pts))
    proj = spherical_project(pts, FULL)
    assert proj.pixel_of_point.shape == (2_000_000, 2)
    assert proj.num_pixels_filled <= 64 * 2048
    owners = proj.point_of_pixel[proj.mask]
    owner_range = proj.image[4][proj.mask]
    # no point on a pixel is nearer than the one kept there
    flat = proj.pixel_of_point[:, 0] * 2048 + proj.pixel_of_point[:, 1]
    inside = proj.in_view
    nearest = np.full(64 * 2048, np.inf)
    np.minimum.at(nearest, flat[inside], np.linalg.norm(pts[inside, :3].astype(np.float64), axis=1))
    np.testing.assert_allclose(owner_range, nearest[proj.mask.ravel()], rtol=1e-6)
    assert len(np.unique(owners)) == len(owners)


finite = st.floats(-80, 80, allow_nan=False, width=32)
any_float = st.floats(width=32, allow_nan=True, allow_infinity=True)


@settings(max_examples=60, deadline=None)
@given(
    pts=st.one_of(
        arrays(np.float32, st.tuples(st.integers(0, 300), st.just(4)), elements=finite),
        arrays(np.float32, st.tuples(st.integers(0, 50), st.just(4)), elements=any_float),
    ),
    sensor=st.sampled_from(sorted(SENSORS)),
)
def test_projection_invariants_on_random_clouds(pts, sensor):
    spec = SENSORS[sensor]
    proj = spherical_project(pts, spec)
    n = len(pts)
    assert proj.image.shape == (5, *spec.shape) and proj.mask.shape == spec.shape
    assert proj.pixel_of_point.shape == (n, 2)
    assert proj.num_invalid + proj.num_out_of_view + int(proj.in_view.sum()) == n
    rows, cols = proj.pixel_of_point.T
    assert ((rows == -1) == (cols == -1)).all()
    np.testing.assert_array_equal(proj.flat_pixel_of_point, np.where(rows >= 0, rows * spec.width + cols, -1))
    assert ((rows >= -1) & (rows < spec.height) & (cols >= -1) & (cols < spec.width)).all()
    owners = proj.point_of_pixel[proj.mask]
    assert (proj.point_of_pixel[~proj.mask] == -1).all()
    assert len(np.unique(owners)) == len(owners)
    np.testing.assert_array_equal(proj.pixel_of_point[owners], np.argwhere(proj.mask))
    np.testing.assert_array_equal(proj.image[:4, proj.mask].T, pts[owners])
    assert np.isfinite(proj.image).all()
    assert (proj.image[:, ~proj.mask] == 0).all()
    # every in-view point sits on a filled pixel whose owner is no farther than itself
    inside = proj.in_view
    if inside.any():
        r, c = proj.pixel_of_point[inside].T
        assert proj.mask[r, c].all()
        own_range = np.linalg.norm(pts[inside, :3].astype(np.float64), axis=1)
        assert (proj.image[4, r, c] <= own_range * (1 + 1e-6) + 1e-6).all()


def test_empty_and_all_nan_and_single_point():
    empty = spherical_project(np.zeros((0, 4), np.float32), FRONT)
    assert empty.num_pixels_filled == 0 and empty.pixel_of_point.shape == (0, 2)
    nan = spherical_project(np.full((1000, 4), np.nan, np.float32), FRONT)
    assert nan.num_invalid == 1000 and nan.num_pixels_filled == 0
    single = spherical_project(np.array([[10, 1, -1, 0.3]], np.float32), FRONT)
    assert single.num_pixels_filled == 1
    assert labels_to_points(np.ones(FRONT.shape, int), single).tolist() == [1]
