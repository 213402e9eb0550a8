"""Scene configurations of the synthetic world: defaults, presets, YAML loading and range sampling.

A configuration is a nested mapping (see :data:`DEFAULT_CONFIG`, the ``urban`` preset, for every
key). A numeric leaf is either a fixed value or a ``[low, high]`` range: each frame draws a value
uniformly from the range (an integer from ``low..high`` inclusive when both are integers). User
configurations (YAML files, dicts) override the defaults key by key; unknown keys are errors, so a
typo never silently falls back to a default. ``sim_data/configs/*.yaml`` hold the presets written out.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PathLike = str | os.PathLike[str]


class SimConfigError(ValueError):
    """A simulation config is malformed (unknown key, wrong type, bad range)."""


DEFAULT_CONFIG: dict[str, Any] = {
    "name": "urban",
    "world": {
        "lidar_height_m": 1.73,  # sensor above the road, as on KITTI's car
        "extent_m": [-80.0, 140.0],  # road length modelled, along the road (behind, ahead of the ego car)
        "ego_yaw_deg": [-3.0, 3.0],  # ego heading relative to the road
        "ego_lateral_offset_m": [-0.3, 0.3],  # ego position within its lane
        "sun_elevation_deg": [18.0, 70.0],
        "sun_azimuth_deg": [-180.0, 180.0],
        "terrain": "terrain",  # material of the ground beyond roads and sidewalks
    },
    "road": {
        "lanes_forward": [1, 2],  # lanes in the ego car's direction (ego drives on the right)
        "lanes_backward": [1, 2],
        "lane_width_m": [3.2, 3.6],
        "median_m": 0.0,  # gap between the two directions
        "median_barrier": False,
        "parking_prob": 0.7,  # chance of a parking lane on each side
        "parking_width_m": [2.2, 2.5],
        "shoulder_m": 0.0,
        "sidewalk_width_m": [2.5, 5.0],  # 0: no sidewalk and no kerb (terrain beyond the road edge)
        "kerb_height_m": [0.12, 0.18],
        "guard_rails": False,
        "dash_m": [2.5, 4.0],  # lane divider dash length
        "dash_gap_m": [5.0, 8.0],  # and the gap between dashes
        "intersection_prob": 0.45,
        "intersection_x_m": [16.0, 55.0],  # distance ahead of the cross street's centre
        "crosswalk_prob": 0.7,  # zebra crossing (at the intersection, else mid-block)
    },
    "buildings": {
        "enabled": True,
        "setback_m": [0.0, 3.0],
        "length_m": [8.0, 30.0],
        "depth_m": [8.0, 16.0],
        "height_m": [5.0, 24.0],
        "gap_m": [2.0, 10.0],
        "gap_prob": 0.3,
    },
    "clutter": {
        "tree_spacing_m": [7.0, 16.0],
        "tree_prob": 0.6,  # per side of the road
        "pole_spacing_m": [18.0, 32.0],
        "signs": [1, 4],
        "bins": [0, 4],
        "bushes": [0, 8],
        "far_trees": [0, 0],  # trees scattered beyond the road edge (highway verges)
    },
    "cars": {
        "moving_gap_m": [6.0, 40.0],  # bumper-to-bumper gaps in a lane
        "lane_fill_prob": 0.85,  # chance that a lane has traffic at all
        "parked_gap_m": [0.6, 3.5],
        "parked_skip_prob": 0.25,  # chance of an empty slot in a parking lane
        "cross_traffic": [0, 3],  # cars on the cross street
        "van_prob": 0.08,
        "suv_prob": 0.25,
        "hatchback_prob": 0.3,
    },
    "pedestrians": {
        "count": [3, 14],
        "crossing_prob": 0.4,  # chance that some pedestrians walk on the zebra crossing
        "group_prob": 0.3,
        "child_prob": 0.1,
        "standing_prob": 0.25,
        "x_range_m": [-30.0, 70.0],
    },
    "cyclists": {
        "count": [0, 3],
        "x_range_m": [-20.0, 70.0],
    },
    "lidar": {
        "range_noise_m": 0.02,  # Gaussian range noise (std)
        "intensity_noise": 0.02,
        "incidence_floor": 0.5,  # intensity = reflectivity * (floor + (1 - floor) * cos(incidence)) * falloff
        "range_falloff": 0.25,  # intensity drops by this fraction at max range
        "dropout": 0.02,  # returns lost at random
        "snr_reference_m": 30.0,  # detection: p = 1 - exp(-intensity * (ref / range)^2 / snr_scale)
        "snr_scale": 0.05,
        "min_range_m": 0.9,
    },
    "camera": {
        "noise_std": 2.0,  # Gaussian pixel noise, in 0-255 units
        "exposure": [0.9, 1.15],
        "shadows": True,
        "fog_distance_m": [400.0, 1500.0],
        "min_visible_pixels": 30,  # fewer visible pixels: DontCare (or skipped)
        "dontcare_min_pixels": 10,  # fewer: not written at all
        "min_box_height_px": 8,
        "max_distance_m": 80.0,  # farther (camera depth): DontCare
        "max_truncation": 0.9,
        "occlusion_level0_visible": 0.9,  # visible fraction (of the object rendered alone) for occlusion 0
        "occlusion_level1_visible": 0.5,  # ... for occlusion 1; less is 2 (largely occluded)
        "min_lidar_points": 5,  # camera disabled: objects with fewer LiDAR points are not labelled
    },
    "dataset": {
        "val_fraction": 0.25,
    },
}

PRESETS: dict[str, dict[str, Any]] = {
    "urban": {},
    "highway": {
        "name": "highway",
        "world": {"extent_m": [-120.0, 180.0]},
        "road": {
            "lanes_forward": [2, 4],
            "lanes_backward": [2, 4],
            "lane_width_m": [3.5, 3.75],
            "median_m": [1.5, 5.0],
            "median_barrier": True,
            "parking_prob": 0.0,
            "shoulder_m": [2.0, 3.5],
            "sidewalk_width_m": 0.0,
            "guard_rails": True,
            "dash_m": 6.0,
            "dash_gap_m": 12.0,
            "intersection_prob": 0.0,
            "crosswalk_prob": 0.0,
        },
        "buildings": {"enabled": False},
        "clutter": {
            "tree_prob": 0.0,
            "pole_spacing_m": [35.0, 50.0],
            "signs": [0, 2],
            "bins": 0,
            "bushes": [0, 10],
            "far_trees": [10, 40],
        },
        "cars": {"moving_gap_m": [10.0, 60.0], "lane_fill_prob": 0.9, "cross_traffic": 0, "van_prob": 0.12},
        "pedestrians": {"count": 0},
        "cyclists": {"count": 0},
    },
}


def _merge(base: dict[str, Any], override: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise SimConfigError(f"unknown config key {where}{key!r}")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise SimConfigError(f"config key {where}{key!r} must be a mapping")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(config: PathLike | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full configuration: defaults overridden by a preset name, a YAML/JSON file or a mapping.

    A mapping or file may name a preset as its base with ``base: highway`` (default: the urban defaults).
    """
    if config is None:
        data: Mapping[str, Any] = {}
    elif isinstance(config, Mapping):
        data = config
    elif str(config) in PRESETS:
        data = PRESETS[str(config)]
    else:
        path = Path(config)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SimConfigError(
                f"{path}: cannot read scene config ({exc.strerror}); presets are {', '.join(PRESETS)}"
            ) from None
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise SimConfigError(f"{path}: not valid YAML/JSON: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise SimConfigError(f"{path}: a scene config must be a mapping")
    data = dict(data)
    base_name = data.pop("base", None)
    base = DEFAULT_CONFIG
    if base_name is not None:
        if base_name not in PRESETS:
            raise SimConfigError(f"unknown base preset {base_name!r}; use one of {', '.join(PRESETS)}")
        base = _merge(DEFAULT_CONFIG, PRESETS[base_name], "")
    merged = _merge(base, data, "")
    validate_config(merged)
    return merged


def _check_leaf(value: Any, where: str) -> None:
    if isinstance(value, bool | str):
        return
    if isinstance(value, int | float):
        if not np.isfinite(value):
            raise SimConfigError(f"config {where}: must be finite")
        return
    if isinstance(value, list | tuple):
        if len(value) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise SimConfigError(f"config {where}: a range must be [low, high], got {value!r}")
        if not value[0] <= value[1]:
            raise SimConfigError(f"config {where}: range low must not exceed high, got {value!r}")
        return
    raise SimConfigError(f"config {where}: unsupported value {value!r}")


def validate_config(config: Mapping[str, Any]) -> None:
    """Check every leaf's type against the defaults (numbers, [low, high] ranges, booleans, strings)."""

    def walk(node: Mapping[str, Any], ref: Mapping[str, Any], where: str) -> None:
        for key, value in node.items():
            path = f"{where}{key}"
            if isinstance(value, Mapping):
                walk(value, ref[key], path + ".")
                continue
            _check_leaf(value, path)
            if isinstance(ref[key], bool) != isinstance(value, bool):
                raise SimConfigError(
                    f"config {path}: expected {'a boolean' if isinstance(ref[key], bool) else 'a number'}"
                )
            if isinstance(ref[key], str) != isinstance(value, str):
                raise SimConfigError(f"config {path}: expected a string")

    walk(config, DEFAULT_CONFIG, "")
    for dotted in ("road.lanes_forward", "road.lanes_backward", "road.lane_width_m", "world.lidar_height_m"):
        section, key = dotted.split(".")
        v = config[section][key]
        low = min(v) if isinstance(v, list | tuple) else v
        if low <= 0:
            raise SimConfigError(f"config {dotted}: must be positive, got {v!r}")
    fractions = ("road.parking_prob", "road.intersection_prob", "road.crosswalk_prob", "dataset.val_fraction")
    for dotted in fractions:
        section, key = dotted.split(".")
        v = config[section][key]
        if not 0.0 <= float(v) <= 1.0:
            raise SimConfigError(f"config {dotted}: must lie in [0, 1], got {v!r}")


def sample(rng: np.random.Generator, spec: Any) -> Any:
    """A value from a config leaf: the value itself, or a uniform draw from a ``[low, high]`` range
    (integers inclusive when both ends are integers)."""
    if isinstance(spec, list | tuple):
        lo, hi = spec
        if isinstance(lo, int) and isinstance(hi, int):
            return int(rng.integers(lo, hi + 1))
        return float(rng.uniform(float(lo), float(hi)))
    return spec
