"""LiDAR sensor specifications for spherical projection.

A :class:`SensorSpec` describes how a spinning LiDAR's returns map onto a range image:

* rows are beams, ordered from the highest elevation (row 0) to the lowest;
* columns are azimuth bins, column 0 starting at ``azimuth_left_deg`` and running clockwise seen
  from above (towards negative azimuth, i.e. from the vehicle's left to its right);
* azimuth is ``atan2(y, x)`` in the LiDAR frame (x forward, y left, z up), in degrees;
* elevation is ``atan2(z, hypot(x, y))`` in degrees.

Built-in sensors are listed in :data:`SENSORS`; users can load their own from YAML or JSON with
:func:`load_sensor`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# widening of the cheap azimuth pre-filter (SensorSpec.azimuth_candidates) beyond the field of view
_SECTOR_MARGIN_DEG = 0.5

# Per-beam elevations (degrees, row 0 = top) of the Velodyne HDL-64E as the SqueezeSeg KITTI data
# lays them out, measured as the per-row median elevation of the two real scans in
# shared/data/kitti_samples (rows agree within 0.05 deg between the two scans).
HDL64E_KITTI_ELEVATIONS_DEG: tuple[float, ...] = (
    2.296, 1.931, 1.661, 1.212, 0.924, 0.520, 0.260, -0.094, -0.426, -0.831, -1.135, -1.490, -1.835,
    -2.145, -2.449, -2.779, -3.058, -3.418, -3.679, -4.030, -4.323, -4.633, -4.954, -5.270, -5.608,
    -5.921, -6.216, -6.473, -6.833, -7.174, -7.403, -7.768, -8.377, -8.891, -9.353, -9.738, -10.197,
    -10.794, -11.290, -11.710, -12.162, -12.584, -13.108, -13.626, -14.196, -14.629, -15.126, -15.479,
    -16.091, -16.613, -17.170, -17.616, -18.126, -18.528, -18.982, -19.524, -20.035, -20.627, -21.108,
    -21.507, -21.954, -22.586, -23.110, -23.592,
)  # fmt: skip

# Velodyne VLP-32C (Ultra Puck) laser elevations from the manufacturer's manual, sorted top to bottom.
VLP32C_ELEVATIONS_DEG: tuple[float, ...] = (
    15.0, 10.333, 7.0, 4.667, 3.333, 2.333, 1.667, 1.333, 1.0, 0.667, 0.333, 0.0, -0.333, -0.667, -1.0,
    -1.333, -1.667, -2.0, -2.333, -2.667, -3.0, -3.333, -3.667, -4.0, -4.667, -5.333, -6.148, -7.254,
    -8.843, -11.31, -15.639, -25.0,
)  # fmt: skip


class SensorSpecError(ValueError):
    """A sensor specification is inconsistent or cannot be read."""


@dataclass(frozen=True)
class SensorSpec:
    """Geometry of a spinning LiDAR's range image.

    Attributes:
        name: identifier used on the command line (``--sensor``).
        beam_elevations_deg: elevation of each row in degrees, strictly decreasing (row 0 on top).
        width: number of azimuth columns.
        azimuth_left_deg: azimuth (degrees) of the left edge of column 0.
        azimuth_right_deg: azimuth (degrees) of the right edge of the last column; smaller than
            ``azimuth_left_deg``. A span of 360 degrees is a full sweep that wraps around.
        max_range_m: returns farther than this (metres) are out of view.
        min_range_m: returns nearer than this (metres) are out of view (self-hits on the vehicle).
        description: free text.
    """

    name: str
    beam_elevations_deg: tuple[float, ...]
    width: int
    azimuth_left_deg: float
    azimuth_right_deg: float
    max_range_m: float
    min_range_m: float = 0.0
    description: str = ""
    _row_edges: np.ndarray = field(init=False, repr=False, compare=False)
    _neg_sin_row_edges: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        elev = np.asarray(self.beam_elevations_deg, dtype=np.float64)
        if elev.ndim != 1 or elev.size < 1:
            raise SensorSpecError(f"sensor {self.name!r}: beam_elevations_deg must be a non-empty list")
        if not np.all(np.isfinite(elev)):
            raise SensorSpecError(f"sensor {self.name!r}: beam elevations must be finite")
        if elev.size > 1 and not np.all(np.diff(elev) < 0):
            raise SensorSpecError(
                f"sensor {self.name!r}: beam elevations must be strictly decreasing (row 0 is the top beam)"
            )
        if not (isinstance(self.width, int) and self.width > 0):
            raise SensorSpecError(f"sensor {self.name!r}: width must be a positive integer, got {self.width!r}")
        span = self.azimuth_left_deg - self.azimuth_right_deg
        if not (0.0 < span <= 360.0):
            raise SensorSpecError(
                f"sensor {self.name!r}: azimuth_left_deg must exceed azimuth_right_deg by at most 360 deg"
            )
        if not (0.0 <= self.min_range_m < self.max_range_m and math.isfinite(self.max_range_m)):
            raise SensorSpecError(f"sensor {self.name!r}: need 0 <= min_range_m < max_range_m < inf")
        object.__setattr__(self, "beam_elevations_deg", tuple(float(e) for e in elev))
        edges = _row_edges(elev)
        object.__setattr__(self, "_row_edges", edges)
        object.__setattr__(self, "_neg_sin_row_edges", -np.sin(np.radians(edges)))

    @property
    def height(self) -> int:
        """Number of rows (beams)."""
        return len(self.beam_elevations_deg)

    @property
    def shape(self) -> tuple[int, int]:
        """Range image size (height, width)."""
        return self.height, self.width

    @property
    def azimuth_span_deg(self) -> float:
        return self.azimuth_left_deg - self.azimuth_right_deg

    @property
    def azimuth_resolution_deg(self) -> float:
        """Width of one column in degrees."""
        return self.azimuth_span_deg / self.width

    @property
    def is_full_sweep(self) -> bool:
        return math.isclose(self.azimuth_span_deg, 360.0)

    @property
    def vertical_fov_deg(self) -> tuple[float, float]:
        """(top, bottom) edges of the vertical field of view in degrees, half a beam gap outside the outer beams."""
        return float(self._row_edges[0]), float(self._row_edges[-1])

    def rows_of(self, elevation_deg: np.ndarray) -> np.ndarray:
        """Row of the nearest beam for each elevation (degrees); -1 outside the vertical field of view."""
        return self.rows_of_sine(np.sin(np.radians(np.asarray(elevation_deg, dtype=np.float64))))

    def rows_of_sine(self, sin_elevation: np.ndarray) -> np.ndarray:
        """Like :meth:`rows_of`, from ``sin(elevation) = z / range`` (saves the arctangent per point)."""
        # the negated edge sines increase: -s_edge[r] <= -s < -s_edge[r + 1] falls on row r
        rows = np.searchsorted(self._neg_sin_row_edges, -np.asarray(sin_elevation), side="right") - 1
        return np.where(rows < self.height, rows, -1)

    def cols_of(self, azimuth_deg: np.ndarray) -> np.ndarray:
        """Column of each azimuth (degrees, any turn: -100 and 260 are the same); -1 outside the horizontal
        field of view."""
        behind_left = self.azimuth_left_deg - np.asarray(azimuth_deg, dtype=np.float64)
        if self.is_full_sweep:
            offset = np.mod(behind_left / self.azimuth_span_deg, 1.0)
        else:  # a field of view across +-180 deg (a rear sensor: left 270, right 190) wraps as well
            offset = np.mod(behind_left, 360.0) / self.azimuth_span_deg
        cols = np.floor(offset * self.width).astype(np.int64)
        if self.is_full_sweep:
            return np.minimum(cols, self.width - 1)
        return np.where((cols >= 0) & (cols < self.width), cols, -1)

    def azimuth_candidates(self, x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        """bool mask of the points (x, y in metres, LiDAR frame) that may be in the horizontal field of view.

        A cheap superset (two half-plane tests, no arctangent) of the points :meth:`cols_of` puts
        on a column: the field of view widened by half a degree on each side. ``None`` when the
        widened field of view spans 180 degrees or more (no longer an intersection of two half-planes).
        """
        left = math.radians(self.azimuth_left_deg + _SECTOR_MARGIN_DEG)
        right = math.radians(self.azimuth_right_deg - _SECTOR_MARGIN_DEG)
        if left - right >= math.pi:
            return None
        # counter-clockwise of the right edge and clockwise of the left edge
        return (math.cos(right) * y - math.sin(right) * x >= 0.0) & (math.sin(left) * x - math.cos(left) * y >= 0.0)

    def column_azimuths_deg(self) -> np.ndarray:
        """Azimuth (degrees) of each column's centre."""
        return self.azimuth_left_deg - (np.arange(self.width) + 0.5) * self.azimuth_resolution_deg

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "beam_elevations_deg": list(self.beam_elevations_deg),
            "width": self.width,
            "azimuth_left_deg": self.azimuth_left_deg,
            "azimuth_right_deg": self.azimuth_right_deg,
            "max_range_m": self.max_range_m,
            "min_range_m": self.min_range_m,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensorSpec:
        """Build a spec from a mapping.

        Beams are given either as ``beam_elevations_deg`` (a list, top first) or as uniform spacing
        with ``beams``, ``fov_up_deg`` and ``fov_down_deg`` (elevations of the top and bottom beams).
        """
        known = {
            "name", "beam_elevations_deg", "beams", "fov_up_deg", "fov_down_deg", "width",
            "azimuth_left_deg", "azimuth_right_deg", "max_range_m", "min_range_m", "description",
        }  # fmt: skip
        unknown = sorted(set(data) - known)
        if unknown:
            raise SensorSpecError(f"unknown sensor fields: {', '.join(unknown)}")
        try:
            name = str(data["name"])
            if "beam_elevations_deg" in data:
                elevations = tuple(float(e) for e in data["beam_elevations_deg"])
            else:
                elevations = uniform_elevations(
                    int(data["beams"]), float(data["fov_up_deg"]), float(data["fov_down_deg"])
                )
            return cls(
                name=name,
                beam_elevations_deg=elevations,
                width=int(data["width"]),
                azimuth_left_deg=float(data.get("azimuth_left_deg", 180.0)),
                azimuth_right_deg=float(data.get("azimuth_right_deg", -180.0)),
                max_range_m=float(data["max_range_m"]),
                min_range_m=float(data.get("min_range_m", 0.0)),
                description=str(data.get("description", "")),
            )
        except KeyError as exc:
            raise SensorSpecError(f"sensor spec is missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SensorSpecError):
                raise
            raise SensorSpecError(f"sensor spec has a bad value: {exc}") from None


def uniform_elevations(beams: int, fov_up_deg: float, fov_down_deg: float) -> tuple[float, ...]:
    """Evenly spaced beam elevations from ``fov_up_deg`` (row 0) down to ``fov_down_deg``."""
    if beams < 1:
        raise SensorSpecError("beams must be >= 1")
    if beams > 1 and not fov_up_deg > fov_down_deg:
        raise SensorSpecError("fov_up_deg must be greater than fov_down_deg")
    return tuple(float(e) for e in np.linspace(fov_up_deg, fov_down_deg, beams))


def _row_edges(elevations: np.ndarray) -> np.ndarray:
    """Row boundaries (degrees, decreasing): midpoints between beams, half a gap beyond the outer ones."""
    if elevations.size == 1:
        return np.array([elevations[0] + 0.5, elevations[0] - 0.5])
    mids = (elevations[:-1] + elevations[1:]) / 2.0
    top = elevations[0] + (elevations[0] - elevations[1]) / 2.0
    bottom = elevations[-1] - (elevations[-2] - elevations[-1]) / 2.0
    return np.concatenate([[top], mids, [bottom]])


SENSORS: dict[str, SensorSpec] = {
    spec.name: spec
    for spec in (
        SensorSpec(
            name="kitti-front",
            beam_elevations_deg=HDL64E_KITTI_ELEVATIONS_DEG,
            width=512,
            azimuth_left_deg=45.0,
            azimuth_right_deg=-45.0,
            max_range_m=120.0,
            description="Velodyne HDL-64E on KITTI, front 90 deg, 64 x 512 (the SqueezeSeg layout)",
        ),
        SensorSpec(
            name="hdl64e-360",
            beam_elevations_deg=HDL64E_KITTI_ELEVATIONS_DEG,
            width=2048,
            azimuth_left_deg=180.0,
            azimuth_right_deg=-180.0,
            max_range_m=120.0,
            description="Velodyne HDL-64E, full 360 deg sweep, 64 x 2048 (0.176 deg columns)",
        ),
        SensorSpec(
            name="vlp16",
            beam_elevations_deg=uniform_elevations(16, 15.0, -15.0),
            width=1024,
            azimuth_left_deg=180.0,
            azimuth_right_deg=-180.0,
            max_range_m=100.0,
            description="Velodyne VLP-16 (Puck), 16 beams every 2 deg from +15 to -15, 360 deg, 16 x 1024",
        ),
        SensorSpec(
            name="vlp32c",
            beam_elevations_deg=VLP32C_ELEVATIONS_DEG,
            width=1024,
            azimuth_left_deg=180.0,
            azimuth_right_deg=-180.0,
            max_range_m=200.0,
            description="Velodyne VLP-32C (Ultra Puck), 32 non-uniform beams +15..-25 deg, 360 deg, 32 x 1024",
        ),
        SensorSpec(
            name="os1-64",
            beam_elevations_deg=uniform_elevations(64, 16.6, -16.6),
            width=1024,
            azimuth_left_deg=180.0,
            azimuth_right_deg=-180.0,
            max_range_m=120.0,
            description="Ouster OS1-64, 64 uniform beams over 33.2 deg, 360 deg, 64 x 1024",
        ),
    )
}

DEFAULT_SENSOR = "kitti-front"


def load_sensor(name_or_path: str | Path) -> SensorSpec:
    """A built-in sensor by name, or a user's spec from a ``.yaml``/``.yml``/``.json`` file."""
    key = str(name_or_path)
    if key in SENSORS:
        return SENSORS[key]
    path = Path(key)
    if path.suffix.lower() not in {".yaml", ".yml", ".json"}:
        raise SensorSpecError(
            f"unknown sensor {key!r}: use one of {', '.join(sorted(SENSORS))} or a .yaml/.json spec file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SensorSpecError(f"{path}: cannot read sensor spec ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SensorSpecError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, Mapping):
        raise SensorSpecError(f"{path}: a sensor spec must be a mapping of fields")
    try:
        return SensorSpec.from_dict(data)
    except SensorSpecError as exc:
        raise SensorSpecError(f"{path}: {exc}") from None


def sensor_names() -> Sequence[str]:
    return sorted(SENSORS)
