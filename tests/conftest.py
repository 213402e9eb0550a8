"""Shared fixtures. Real KITTI samples live in ../shared (absent in a user's clone: tests skip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
KITTI_SAMPLES = REPO.parent / "shared" / "data" / "kitti_samples"
SAMPLE_DIR = REPO / "sim_data" / "sample"


def kitti_sample_scans() -> list[Path]:
    return sorted(KITTI_SAMPLES.glob("*.npy")) if KITTI_SAMPLES.is_dir() else []


requires_kitti_samples = pytest.mark.skipif(
    not kitti_sample_scans(), reason=f"real KITTI samples not found at {KITTI_SAMPLES} (only in the dev workspace)"
)


@pytest.fixture(scope="session")
def street_scan():
    """A 360 deg HDL-64E scan of the analytic street scene, with labels."""
    from perception.lidar.sensors import SENSORS
    from perception.sim.analytic import cast_scan, street_scene

    return cast_scan(SENSORS["hdl64e-360"], street_scene(0), seed=0)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
