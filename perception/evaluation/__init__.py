"""Evaluation metrics (pure numpy): KITTI 2D object detection AP (a port of the official devkit)."""
