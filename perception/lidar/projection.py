"""Spherical projection of LiDAR point clouds onto range images, and back.

Conventions (see DESIGN.md, data contracts):

* input points are float32 ``(N, 4)``: x, y, z in metres in the LiDAR frame (x forward, y left,
  z up) and intensity in [0, 1];
* the range image is float32 ``(5, H, W)`` with channels x, y, z, intensity, range (metres);
  row 0 is the highest beam, column 0 the leftmost azimuth of the sensor's field of view;
* where several points fall on one pixel the nearest one (smallest range) is kept;
* every input point keeps its (row, col), also those that lost the pixel contest, so that labels
  can be mapped back to all points; points outside the field of view, beyond the sensor's range,
  non-finite or at the origin get (-1, -1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from perception.lidar.sensors import SensorSpec

NUM_CHANNELS = 5
CHANNELS = ("x", "y", "z", "intensity", "range")


class PointCloudError(ValueError):
    """A point cloud does not have the shape or dtype the projection needs."""


@dataclass(frozen=True)
class Projection:
    """A range image and the bookkeeping to map pixel values back to the input points.

    Attributes:
        image: float32 (5, H, W): x, y, z, intensity, range; zeros where ``mask`` is False.
        mask: bool (H, W), True where a pixel holds a point.
        flat_pixel_of_point: int64 (N,) pixel of each input point as one index into the flattened
            (H, W) image, ``row * W + col``; -1 when the point is not in the image (outside the field
            of view, out of range, or invalid).
        point_of_pixel: int64 (H, W) index of the input point that owns each pixel, -1 if empty.
        num_invalid: points dropped because a coordinate was NaN/inf or the point was at the origin.
        num_out_of_view: finite points outside the sensor's field of view or range limits.
    """

    image: np.ndarray
    mask: np.ndarray
    flat_pixel_of_point: np.ndarray
    point_of_pixel: np.ndarray
    num_invalid: int
    num_out_of_view: int

    @property
    def num_points(self) -> int:
        return int(self.flat_pixel_of_point.shape[0])

    @cached_property
    def pixel_of_point(self) -> np.ndarray:
        """int64 (N, 2) row and column of each input point, (-1, -1) when it is not in the image (read-only)."""
        return _read_only(pixels_of_flat(self.flat_pixel_of_point, self.mask.shape[1]))

    @cached_property
    def in_view(self) -> np.ndarray:
        """bool (N,), True for points that fell on a pixel, whether or not they won it (read-only)."""
        return _read_only(self.flat_pixel_of_point >= 0)

    @property
    def num_pixels_filled(self) -> int:
        return int(self.mask.sum())


def _read_only(array: np.ndarray) -> np.ndarray:
    """``array``, no longer writeable: computed once and shared by every reader of a projection."""
    array.flags.writeable = False
    return array


def pixels_of_flat(flat: np.ndarray, width: int) -> np.ndarray:
    """int64 (N, 2) (row, col) of flat pixel indices ``row * width + col`` (N,); -1 (outside) gives (-1, -1)."""
    rows, cols = np.divmod(np.asarray(flat, dtype=np.int64), width)
    cols[rows < 0] = -1
    return np.stack([rows, cols], axis=1)


def validate_points(points: np.ndarray, name: str = "points") -> np.ndarray:
    """Return ``points`` as float32 (N, 4); raise :class:`PointCloudError` on a wrong shape or dtype.

    (N, 3) clouds get a zero intensity column. Non-finite values are allowed here (the projection
    drops them with a count).
    """
    arr = np.asarray(points)
    if arr.dtype.kind not in "fiu":
        raise PointCloudError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] not in (3, 4):
        raise PointCloudError(f"{name}: expected shape (N, 4) or (N, 3), got {arr.shape}")
    if arr.shape[1] == 3:
        arr = np.concatenate([arr, np.zeros((arr.shape[0], 1), dtype=arr.dtype)], axis=1)
    return np.ascontiguousarray(arr, dtype=np.float32)


def spherical_project(points: np.ndarray, sensor: SensorSpec) -> Projection:
    """Project a point cloud (N, 4) onto the sensor's range image; the nearest point wins a pixel."""
    pts = validate_points(points)
    n = pts.shape[0]
    height, width = sensor.shape
    # a row's four "not finite" flags read as one uint32: zero when all four values are finite
    finite = (~np.isfinite(pts)).view(np.uint32)[:, 0] == 0
    # float64 work (ranges, the arctangent, the beam search) only for points that may be in view
    with np.errstate(invalid="ignore", over="ignore"):
        sector = sensor.azimuth_candidates(pts[:, 0], pts[:, 1])
    idx = np.flatnonzero(finite if sector is None else finite & sector)
    x, y, z = (pts[idx, k].astype(np.float64) for k in range(3))
    r = np.sqrt(x * x + y * y + z * z)
    at_origin = r == 0.0  # the origin lies in every sector
    num_invalid = int(n - np.count_nonzero(finite) + np.count_nonzero(at_origin))
    in_range = ~at_origin & (r >= sensor.min_range_m) & (r <= sensor.max_range_m)
    if not in_range.all():
        at = np.flatnonzero(in_range)
        idx, x, y, z, r = (np.take(a, at) for a in (idx, x, y, z, r))
    rr = sensor.rows_of_sine(z / r)
    cc = sensor.cols_of(np.degrees(np.arctan2(y, x)))
    ok = (rr >= 0) & (cc >= 0)
    kept = idx[ok]
    rr, cc, r = rr[ok], cc[ok], r[ok]
    num_out_of_view = int(n - num_invalid - kept.size)
    flat = rr * width + cc
    flat_pixel_of_point = np.full(n, -1, dtype=np.int64)
    flat_pixel_of_point[kept] = flat
    _read_only(flat_pixel_of_point)

    # nearest wins: the smallest range per pixel, then one owner among the points at that range
    nearest = np.full(height * width, np.inf)
    np.minimum.at(nearest, flat, r)
    at_nearest = r == nearest[flat]
    owner = np.full(height * width, -1, dtype=np.int64)
    owner[flat[at_nearest]] = kept[at_nearest]
    winner_pixels = np.flatnonzero(owner >= 0)
    winners = owner[winner_pixels]

    image = np.zeros((NUM_CHANNELS, height * width), dtype=np.float32)
    winner_rows = np.take(pts, winners, axis=0)  # one gather of whole rows, then a scatter per channel
    for channel in range(4):
        image[channel, winner_pixels] = winner_rows[:, channel]
    image[NUM_CHANNELS - 1, winner_pixels] = nearest[winner_pixels]
    mask = np.zeros(height * width, dtype=bool)
    mask[winner_pixels] = True

    return Projection(
        image=image.reshape(NUM_CHANNELS, height, width),
        mask=mask.reshape(height, width),
        flat_pixel_of_point=flat_pixel_of_point,
        point_of_pixel=owner.reshape(height, width),
        num_invalid=num_invalid,
        num_out_of_view=num_out_of_view,
    )


def labels_to_points(pixel_labels: np.ndarray, projection: Projection, outside: float = 0) -> np.ndarray:
    """Per-point values (N,) of per-pixel values (H, W): labels, or any other image (scores).

    Every point gets the value of the pixel it fell on, including points that lost the pixel to a
    nearer one; points not in the image get ``outside`` (0, unknown, by default). The result has the
    image's dtype.
    """
    labels = np.asarray(pixel_labels)
    if labels.shape != projection.mask.shape:
        raise ValueError(f"pixel labels have shape {labels.shape}, the projection {projection.mask.shape}")
    # one lookup for every point: the flat index -1 of the points outside reads the appended last entry
    table = np.empty(labels.size + 1, dtype=labels.dtype)
    table[:-1] = labels.ravel()
    table[-1] = outside
    return np.take(table, projection.flat_pixel_of_point)


def points_to_pixels(point_values: np.ndarray, projection: Projection, empty: float = 0) -> np.ndarray:
    """Per-pixel values (H, W) of per-point values (N,): each filled pixel takes its winning point's value.

    The inverse of :func:`labels_to_points` on the winning points; empty pixels get ``empty``. The result
    has the values' dtype.
    """
    values = np.asarray(point_values)
    if values.shape != (projection.num_points,):
        raise ValueError(f"{values.shape[0] if values.ndim else 0} values for {projection.num_points} points")
    out = np.full(projection.mask.shape, empty, dtype=values.dtype)
    out[projection.mask] = values[projection.point_of_pixel[projection.mask]]
    return out


def range_image_to_points(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Points (M, 4) x, y, z, intensity of the filled pixels of a (C>=4, H, W) range image, row-major.

    Without a mask, pixels with a positive range (channel 4) or, for 4-channel images, a non-zero
    xyz count as filled.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[0] < 4:
        raise ValueError(f"range image must be (C>=4, H, W), got {img.shape}")
    if mask is None:
        mask = img[4] > 0 if img.shape[0] > 4 else np.any(img[:3] != 0, axis=0)
    return np.ascontiguousarray(img[:4, mask].T, dtype=np.float32)


def to_squeezeseg_tensor(projection: Projection, pixel_labels: np.ndarray | None = None) -> np.ndarray:
    """The SqueezeSeg ``.npy`` layout: float32 (H, W, 6) with x, y, z, intensity, range, label."""
    labels = np.zeros(projection.mask.shape, dtype=np.float32) if pixel_labels is None else pixel_labels
    if labels.shape != projection.mask.shape:
        raise ValueError(f"pixel labels have shape {labels.shape}, the projection {projection.mask.shape}")
    out = np.concatenate([projection.image, np.where(projection.mask, labels, 0).astype(np.float32)[None]], axis=0)
    return np.ascontiguousarray(out.transpose(1, 2, 0), dtype=np.float32)
