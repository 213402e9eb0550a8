"""A small analytic LiDAR scene: a ground plane and oriented boxes, ray cast in pure numpy.

It makes the bundled sample scan (``sim_data/sample``) and test clouds with known labels without
open3d. The full synthetic world (meshes, camera, KITTI writers) lives beside it in ``perception.sim``.
Frames: LiDAR frame, x forward, y left, z up, metres; the sensor sits at the origin, the ground at
``z = -ground_height_m`` (1.73 m on KITTI's car).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception.lidar.sensors import SensorSpec

UNKNOWN, CAR, PEDESTRIAN, CYCLIST = 0, 1, 2, 3


@dataclass(frozen=True)
class Box:
    """An oriented box standing on the ground: centre (x, y) in metres, size l x w x h, yaw about z (rad)."""

    x: float
    y: float
    length: float
    width: float
    height: float
    yaw: float = 0.0
    label: int = UNKNOWN
    reflectivity: float = 0.5
    base_z: float | None = None


@dataclass(frozen=True)
class ScanResult:
    """Points (N, 4) float32, their class label (N,) and instance id (N,; 0 = none)."""

    points: np.ndarray
    labels: np.ndarray
    instances: np.ndarray


def ray_directions(sensor: SensorSpec) -> np.ndarray:
    """Unit ray directions (H * W, 3), one per range-image pixel, row-major."""
    elev = np.radians(np.asarray(sensor.beam_elevations_deg))[:, None]
    azim = np.radians(sensor.column_azimuths_deg())[None, :]
    x, y, z = np.broadcast_arrays(np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev))
    d = np.stack([x, y, z], axis=-1)
    return d.reshape(-1, 3)


def _hit_box(dirs: np.ndarray, box: Box, ground_z: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance along each ray to the box (inf if missed) and the hit face's normal."""
    c, s = np.cos(box.yaw), np.sin(box.yaw)
    base = ground_z if box.base_z is None else box.base_z
    centre = np.array([box.x, box.y, base + box.height / 2])
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    origin_local = rot.T @ (-centre)
    d_local = dirs @ rot
    half = np.array([box.length, box.width, box.height]) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - origin_local) / d_local
        t2 = (half - origin_local) / d_local
    t_near = np.nanmax(np.minimum(t1, t2), axis=1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=1)
    hit = (t_near <= t_far) & (t_near > 0)
    dist = np.where(hit, t_near, np.inf)
    axis = np.nanargmax(np.minimum(t1, t2), axis=1)
    normal_local = np.zeros_like(d_local)
    normal_local[np.arange(len(dirs)), axis] = -np.sign(d_local[np.arange(len(dirs)), axis])
    return dist, normal_local @ rot.T


def cast_scan(
    sensor: SensorSpec,
    boxes: list[Box],
    seed: int = 0,
    ground_height_m: float = 1.73,
    range_noise_m: float = 0.02,
    dropout: float = 0.05,
) -> ScanResult:
    """Ray cast one sweep of ``sensor`` against the ground and ``boxes``.

    Intensity follows reflectivity x |cos(incidence)| with a mild fall-off in range, clipped to
    [0, 1]; each return's range gets Gaussian noise of ``range_noise_m``; a fraction ``dropout`` of
    returns is lost at random.
    """
    rng = np.random.default_rng(seed)
    dirs = ray_directions(sensor)
    ground_z = -ground_height_m
    with np.errstate(divide="ignore"):
        t_ground = np.where(dirs[:, 2] < 0, ground_z / dirs[:, 2], np.inf)
    dist = t_ground.copy()
    normal = np.tile([0.0, 0.0, 1.0], (len(dirs), 1))
    reflect = np.full(len(dirs), 0.3)
    label = np.zeros(len(dirs), dtype=np.int64)
    instance = np.zeros(len(dirs), dtype=np.int64)
    for k, box in enumerate(boxes, start=1):
        d, n = _hit_box(dirs, box, ground_z)
        closer = d < dist
        dist[closer] = d[closer]
        normal[closer] = n[closer]
        reflect[closer] = box.reflectivity
        label[closer] = box.label
        instance[closer] = k if box.label != UNKNOWN else 0
    keep = np.isfinite(dist) & (dist >= sensor.min_range_m) & (dist <= sensor.max_range_m)
    keep &= rng.random(len(dirs)) >= dropout
    r = dist[keep] + rng.normal(0.0, range_noise_m, keep.sum())
    xyz = dirs[keep] * r[:, None]
    cos_inc = np.abs(np.einsum("ij,ij->i", normal[keep], dirs[keep]))
    intensity = np.clip(reflect[keep] * cos_inc * (1.0 - 0.3 * r / sensor.max_range_m), 0.0, 1.0)
    points = np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32)
    return ScanResult(points=points, labels=label[keep], instances=instance[keep])


def street_scene(seed: int = 0) -> list[Box]:
    """A street: buildings on both sides, parked and driving cars, pedestrians on the pavement, a cyclist."""
    rng = np.random.default_rng(seed)
    boxes = [
        Box(x=30.0, y=14.0, length=60.0, width=8.0, height=9.0, reflectivity=0.6),
        Box(x=30.0, y=-14.0, length=60.0, width=8.0, height=12.0, reflectivity=0.6),
        Box(x=-25.0, y=15.0, length=30.0, width=8.0, height=7.0, reflectivity=0.6),
    ]
    for x in (8.0, 15.5, 23.0, 34.0):
        boxes.append(
            Box(
                x=x + rng.uniform(-1, 1),
                y=-6.0 + rng.uniform(-0.3, 0.3),
                length=rng.uniform(3.8, 4.8),
                width=rng.uniform(1.6, 1.9),
                height=rng.uniform(1.4, 1.7),
                yaw=rng.uniform(-0.05, 0.05),
                label=CAR,
                reflectivity=0.8,
            )
        )
    for x, y in ((12.0, 2.0), (26.0, -1.8), (-10.0, 1.8)):
        boxes.append(
            Box(x=x, y=y, length=4.4, width=1.8, height=1.5, yaw=rng.uniform(-0.1, 0.1), label=CAR, reflectivity=0.8)
        )
    for x, y in ((10.0, 7.0), (18.0, 7.5), (20.0, -8.3)):
        boxes.append(
            Box(x=x, y=y, length=0.5, width=0.6, height=rng.uniform(1.6, 1.9), label=PEDESTRIAN, reflectivity=0.4)
        )
    boxes.append(Box(x=16.0, y=4.0, length=1.8, width=0.6, height=1.7, yaw=0.05, label=CYCLIST, reflectivity=0.5))
    return boxes


def street_range_image(sensor: SensorSpec | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """SqueezeSeg's inputs for the analytic street scene ``seed``, as a Segmenter prepares them.

    The scene is cast with the 360 deg HDL-64E and projected onto ``sensor`` (default: the KITTI front
    view): (range image float32 (1, 5, H, W), mask float32 (1, 1, H, W)). A realistic, deterministic input
    for export checks and benchmarks.
    """
    from perception.lidar.projection import spherical_project
    from perception.lidar.sensors import SENSORS

    scan = cast_scan(SENSORS["hdl64e-360"], street_scene(seed), seed=seed).points
    proj = spherical_project(scan, sensor or SENSORS["kitti-front"])
    return proj.image[None], proj.mask[None, None].astype(np.float32)
