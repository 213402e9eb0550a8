"""Streaming perception for autonomous vehicles: camera detection and LiDAR segmentation on ONNX Runtime."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("perception")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
