"""Shared fixtures. Real KITTI samples live in ../shared (absent in a user's clone: tests skip)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from perception import KITTI_SAMPLES  # ../shared beside the checkout: the one definition

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "sim_data" / "sample"


def free_port() -> int:
    """A TCP port free on loopback right now (for a test server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(models: tuple[Path, Path], port: int, grpc_port: int, **settings: str) -> dict[str, str]:
    """This process's environment plus a test server's settings: both ports, both models, CPU, quiet logs;
    ``settings`` add more (``stream_policy="block"`` -> ``PERCEPTION_STREAM_POLICY=block``)."""
    return {
        **os.environ,
        "PERCEPTION_PORT": str(port),
        "PERCEPTION_GRPC_PORT": str(grpc_port),
        "PERCEPTION_SEG_MODEL": str(models[0]),
        "PERCEPTION_DET_MODEL": str(models[1]),
        "PERCEPTION_PROVIDERS": "cpu",
        "PERCEPTION_LOG_LEVEL": "warning",
        **{f"PERCEPTION_{key.upper()}": value for key, value in settings.items()},
    }


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
