"""A bird's-eye view of a point cloud: points coloured by class, instance boxes with their ids.

The picture looks down on the LiDAR frame (x forward, y left, z up; metres): +x points up the picture and
+y to the left, so the scene appears as a driver sees it on a map with the car heading up. The ego sensor
sits at (0, 0), drawn as a small white triangle, with faint range rings every ``ring_step_m`` metres.
:class:`BevGrid` maps metres to pixels; :func:`draw_bev` renders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from perception.lidar.clustering import Box3D, Instance, fit_box
from perception.viz.draw import BACKGROUND, GRID, class_colour, font, label_box, text_size

UNKNOWN_POINT: tuple[int, int, int] = (95, 98, 104)


@dataclass(frozen=True)
class BevGrid:
    """The area a bird's-eye view shows and its scale.

    Attributes:
        x_range: (min, max) metres along x (forward); x_max is the top row.
        y_range: (min, max) metres along y (left); y_max is the leftmost column.
        resolution_m: metres per pixel.
    """

    x_range: tuple[float, float] = (-10.0, 60.0)
    y_range: tuple[float, float] = (-30.0, 30.0)
    resolution_m: float = 0.1

    def __post_init__(self) -> None:
        if self.resolution_m <= 0:
            raise ValueError(f"resolution_m must be positive, got {self.resolution_m}")
        if self.x_range[1] <= self.x_range[0] or self.y_range[1] <= self.y_range[0]:
            raise ValueError(f"empty BEV area: x {self.x_range}, y {self.y_range}")

    @property
    def width(self) -> int:
        """Picture width in pixels (the y extent)."""
        return math.ceil((self.y_range[1] - self.y_range[0]) / self.resolution_m)

    @property
    def height(self) -> int:
        """Picture height in pixels (the x extent)."""
        return math.ceil((self.x_range[1] - self.x_range[0]) / self.resolution_m)

    @classmethod
    def fit(
        cls,
        points: np.ndarray,
        x_range: tuple[float, float] = (-10.0, 60.0),
        half_width_m: tuple[float, float] = (12.0, 30.0),
        resolution_m: float = 0.1,
    ) -> BevGrid:
        """A grid over ``x_range`` whose y extent (symmetric about 0) just holds 98% of the points inside
        ``x_range``, rounded up to 5 m and kept within ``half_width_m``: no empty margins beside a street."""
        pts = np.asarray(points, dtype=np.float64)
        inside = np.isfinite(pts[:, :2]).all(axis=1) & (pts[:, 0] >= x_range[0]) & (pts[:, 0] <= x_range[1])
        spread = float(np.percentile(np.abs(pts[inside, 1]), 98)) if inside.any() else half_width_m[1]
        half = min(max(math.ceil(spread / 5.0) * 5.0, half_width_m[0]), half_width_m[1])
        return cls(x_range, (-half, half), resolution_m)

    def to_pixel(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(col, row) as float pixels of LiDAR-frame (x, y) in metres; pixel k covers [k, k + 1)."""
        col = (self.y_range[1] - np.asarray(y, dtype=np.float64)) / self.resolution_m
        row = (self.x_range[1] - np.asarray(x, dtype=np.float64)) / self.resolution_m
        return col, row


def _paint_points(canvas: np.ndarray, grid: BevGrid, xy: np.ndarray, colour: Sequence[int], size: int) -> None:
    if xy.shape[0] == 0:
        return
    col, row = grid.to_pixel(xy[:, 0], xy[:, 1])
    col, row = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
    for dr in range(size):
        for dc in range(size):
            r, c = row + dr - size // 2, col + dc - size // 2
            inside = (r >= 0) & (r < canvas.shape[0]) & (c >= 0) & (c < canvas.shape[1])
            canvas[r[inside], c[inside]] = colour


def draw_bev(
    points: np.ndarray,
    labels: np.ndarray | None = None,
    instances: Sequence[Instance] = (),
    grid: BevGrid | None = None,
    point_size: int = 2,
    ring_step_m: float = 10.0,
    title: str | None = None,
) -> np.ndarray:
    """uint8 RGB (grid.height, grid.width, 3): the cloud from above with each instance's box and ``#id class``.

    Args:
        points: (N, 3+) x, y, z in metres, LiDAR frame.
        labels: (N,) class per point (0 unknown, 1 car, 2 pedestrian, 3 cyclist); None: all unknown.
        instances: objects whose oriented :class:`~perception.lidar.clustering.Box3D` footprints are
            outlined (2 px, class colour), labelled ``#id class`` on a tag at the footprint's top-left.
        grid: the area and scale (default 70 x 60 m at 0.1 m per pixel, 10 m behind to 60 m ahead).
        point_size: side of each point's square in pixels; unknown points are drawn 1 px and first, so
            objects stay visible on top.
        ring_step_m: spacing of the range rings around the sensor (0: none).
        title: drawn in the top-left corner.
    """
    grid = grid or BevGrid()
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be (N, 3+), got {pts.shape}")
    lab = np.zeros(pts.shape[0], np.int64) if labels is None else np.asarray(labels).astype(np.int64, copy=False)
    if lab.shape != (pts.shape[0],):
        raise ValueError(f"labels must be ({pts.shape[0]},), got {lab.shape}")
    finite = np.isfinite(pts[:, :2]).all(axis=1)
    canvas = np.empty((grid.height, grid.width, 3), np.uint8)
    canvas[:] = BACKGROUND
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    if ring_step_m > 0:
        cx, cy = (float(v) for v in grid.to_pixel(0.0, 0.0))
        far = math.hypot(max(abs(v) for v in grid.x_range), max(abs(v) for v in grid.y_range))
        for k in range(1, int(far // ring_step_m) + 1):
            r = k * ring_step_m / grid.resolution_m
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=GRID, width=1)
            draw.text((cx + 3, cy - r + 1), f"{k * ring_step_m:g} m", fill=GRID, font=font(11))
    canvas = np.array(image)
    _paint_points(canvas, grid, pts[finite & (lab <= 0), :2], UNKNOWN_POINT, 1)
    for k in sorted(int(v) for v in np.unique(lab[lab > 0])):
        _paint_points(canvas, grid, pts[finite & (lab == k), :2], class_colour(k), point_size)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    cx, cy = (float(v) for v in grid.to_pixel(0.0, 0.0))
    draw.polygon([(cx, cy - 9), (cx - 5, cy + 5), (cx + 5, cy + 5)], fill=(255, 255, 255))
    for inst in instances:
        _draw_box(draw, grid, inst.box, class_colour(inst.class_name), f"#{inst.id} {inst.class_name}")
    if title:
        label_box(draw, (4, 4), title, BACKGROUND, 13, text_fill=(235, 235, 235))
    return np.asarray(image)


def footprint_pixels(box: Box3D, grid: BevGrid) -> np.ndarray:
    """(4, 2) float (col, row) pixels of the box's bottom corners, counter-clockwise from front-left."""
    corners = box.corners()[:4]
    col, row = grid.to_pixel(corners[:, 0], corners[:, 1])
    return np.column_stack([col, row])


def _draw_box(draw: ImageDraw.ImageDraw, grid: BevGrid, box: Box3D, colour: tuple[int, int, int], text: str) -> None:
    corners = footprint_pixels(box, grid)
    polygon = [(float(c), float(r)) for c, r in corners]
    draw.line([*polygon, polygon[0]], fill=colour, width=2, joint="curve")
    height = text_size(draw, text, 12)[1] + 3
    left, top = float(corners[:, 0].min()), float(corners[:, 1].min())
    label_box(draw, (left, max(0.0, top - height - 2)), text, colour, 12)


def instances_from_labels(points: np.ndarray, classes: np.ndarray, instance_ids: np.ndarray) -> list[Instance]:
    """Ground-truth instances (boxes fitted to each labelled object's points) from per-point class and id.

    ``classes`` and ``instance_ids`` are (N,) as a SemanticKITTI-style ``.label`` file holds them; points
    with id 0 or class 0 belong to no instance. Instances are numbered by their id in the file, each box
    fitted with :func:`~perception.lidar.clustering.fit_box` (the one the pipeline's clustering uses).
    """
    pts = np.asarray(points, dtype=np.float64)
    cls = np.asarray(classes).astype(np.int64, copy=False)
    ids = np.asarray(instance_ids).astype(np.int64, copy=False)
    if not (cls.shape == ids.shape == (pts.shape[0],)):
        raise ValueError(f"classes {cls.shape} and instance_ids {ids.shape} must be ({pts.shape[0]},)")
    out: list[Instance] = []
    valid = (ids > 0) & (cls > 0) & np.isfinite(pts[:, :3]).all(axis=1)
    for inst_id in np.unique(ids[valid]):
        idx = np.flatnonzero(valid & (ids == inst_id))
        if idx.shape[0] < 3:
            continue
        xyz = pts[idx, :3]
        class_id = int(np.bincount(cls[idx]).argmax())
        out.append(Instance(int(inst_id), class_id, int(idx.shape[0]), idx, xyz.mean(axis=0), fit_box(xyz)))
    return out
