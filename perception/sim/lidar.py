"""LiDAR simulation: one ray per range-image pixel of a :class:`~perception.lidar.sensors.SensorSpec`,
cast with open3d's ``RaycastingScene`` against a :class:`~perception.sim.world.Scene`.

Model (LiDAR frame, metres):

* rays leave the origin at each beam's elevation and each column's centre azimuth;
* the measured range is the true range plus Gaussian noise (``range_noise_m``, 2 cm for an HDL-64E);
* intensity = reflectivity x (floor + (1 - floor) x cos(incidence)) x (1 - falloff x range / max range),
  plus Gaussian noise, clipped to [0, 1]; reflectivity comes from the hit material (and its pattern:
  windows are dim, lane paint and number plates bright);
* a return is detected with probability (1 - dropout) x (1 - exp(-intensity x (ref / range)^2 / scale)):
  besides random losses, dark and far returns are lost more often; returns beyond the sensor's
  max range or nearer than ``min_range_m`` are dropped;
* each point takes the class and instance id of the object its ray hit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from perception.lidar.sensors import SensorSpec
from perception.sim.materials import apply_patterns
from perception.sim.world import Scene


@dataclass(frozen=True)
class LidarParams:
    """Noise, intensity and dropout model (see the module docstring); lengths in metres."""

    range_noise_m: float = 0.02
    intensity_noise: float = 0.02
    incidence_floor: float = 0.5
    range_falloff: float = 0.25
    dropout: float = 0.02
    snr_reference_m: float = 30.0
    snr_scale: float = 0.05
    min_range_m: float = 0.9

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> LidarParams:
        return cls(**{f.name: float(section[f.name]) for f in fields(cls) if f.name in section})


@dataclass(frozen=True)
class LidarScan:
    """A simulated sweep: ``points`` float32 (N, 4) x, y, z, intensity (LiDAR frame); ``labels`` (N,)
    class ids and ``instances`` (N,) instance ids (0 = background) as int64; ``pixels`` (N, 2) the
    (row, col) of each point's ray in the sensor's range image; ``num_rays`` rays were cast."""

    points: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    pixels: np.ndarray
    num_rays: int


def ray_directions(sensor: SensorSpec) -> np.ndarray:
    """Unit directions (H * W, 3) float64, row-major over (beam, column) of ``sensor``'s range image."""
    elev = np.radians(np.asarray(sensor.beam_elevations_deg))[:, None]
    azim = np.radians(sensor.column_azimuths_deg())[None, :]
    x, y, z = np.broadcast_arrays(np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev))
    return np.stack([x, y, z], axis=-1).reshape(-1, 3)


def lidar_rays(sensor: SensorSpec, origin: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Rays (H * W, 6) float32: origin and unit direction, one per range-image pixel."""
    d = ray_directions(sensor)
    o = np.broadcast_to(np.asarray(origin, dtype=np.float64), d.shape)
    return np.ascontiguousarray(np.concatenate([o, d], axis=1), dtype=np.float32)


def return_intensity(
    reflectivity: np.ndarray, cos_incidence: np.ndarray, range_m: np.ndarray, max_range_m: float, params: LidarParams
) -> np.ndarray:
    """Noise-free intensity in [0, 1] of returns with the given reflectivity, |cos| of the incidence
    angle and range (metres)."""
    floor = params.incidence_floor
    falloff = 1.0 - params.range_falloff * np.clip(range_m / max_range_m, 0.0, 1.0)
    return np.clip(reflectivity * (floor + (1.0 - floor) * np.abs(cos_incidence)) * falloff, 0.0, 1.0)


def detection_probability(intensity: np.ndarray, range_m: np.ndarray, params: LidarParams) -> np.ndarray:
    """Probability that a return of noise-free ``intensity`` at ``range_m`` metres is detected."""
    snr = np.asarray(intensity, dtype=np.float64) * (params.snr_reference_m / np.maximum(range_m, 1e-3)) ** 2
    return (1.0 - params.dropout) * (1.0 - np.exp(-snr / params.snr_scale))


def simulate_lidar(
    scene: Scene, sensor: SensorSpec, rng: np.random.Generator, params: LidarParams | None = None
) -> LidarScan:
    """Ray cast one sweep of ``sensor`` from the origin against ``scene`` (needs open3d).

    Random numbers are drawn for every ray, hit or not, so a scan depends only on the scene, the
    sensor, the parameters and the generator's state.
    """
    params = params or LidarParams()
    rays = lidar_rays(sensor)
    n = len(rays)
    u_drop = rng.random(n)
    range_noise = rng.standard_normal(n)
    intensity_noise = rng.standard_normal(n)

    hits = scene.cast(rays)
    t = hits.t.astype(np.float64)
    valid = hits.hit & (t >= params.min_range_m) & (t <= sensor.max_range_m)
    idx = np.flatnonzero(valid)
    dirs = rays[idx, 3:].astype(np.float64)
    r_true = t[idx]
    normals = hits.normal[idx].astype(np.float64)
    tri = hits.triangle[idx]
    tables = scene.tables()
    _, refl, _ = apply_patterns(
        tables["pattern"][tri], dirs * r_true[:, None], normals, tables["albedo"][tri],
        tables["reflectivity"][tri], tables["gloss"][tri], scene.ground_z,
    )  # fmt: skip
    cos_inc = np.einsum("ij,ij->i", normals, dirs)
    i_true = return_intensity(refl.astype(np.float64), cos_inc, r_true, sensor.max_range_m, params)
    keep = u_drop[idx] < detection_probability(i_true, r_true, params)
    idx, dirs, r_true, i_true = idx[keep], dirs[keep], r_true[keep], i_true[keep]
    r_meas = r_true + params.range_noise_m * range_noise[idx]
    intensity = np.clip(i_true + params.intensity_noise * intensity_noise[idx], 0.0, 1.0)
    points = np.concatenate([dirs * r_meas[:, None], intensity[:, None]], axis=1).astype(np.float32)
    obj = hits.object_index[idx]
    width = sensor.width
    return LidarScan(
        points=points,
        labels=tables["label"][obj],
        instances=tables["instance"][obj],
        pixels=np.stack([idx // width, idx % width], axis=1).astype(np.int64),
        num_rays=n,
    )
