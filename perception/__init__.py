"""Streaming perception for autonomous vehicles: camera detection and LiDAR segmentation on ONNX Runtime."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("perception")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

KITTI_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti_samples"
"""Where the real KITTI samples sit in the dev workspace (``../shared`` beside the repository checkout);
absent in a user's clone and in an installed package, where what reads them skips them."""

__all__ = ["KITTI_SAMPLES", "__version__"]
