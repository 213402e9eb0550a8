"""Readers and writers: KITTI, SqueezeSeg ``.npy``, PCD, PLY and images. Writers are atomic."""

from perception.io.common import MalformedFileError, atomic_write, atomic_write_bytes, atomic_write_text
from perception.io.images import decode_image, read_image, write_image
from perception.io.kitti import (
    Calibration,
    KittiObject,
    read_calib,
    read_label,
    read_velodyne_bin,
    write_calib,
    write_label,
    write_velodyne_bin,
)
from perception.io.pointcloud import read_pcd, read_ply, read_point_cloud, write_pcd, write_ply
from perception.io.squeezeseg import read_squeezeseg_npy, write_squeezeseg_npy

__all__ = [
    "Calibration",
    "KittiObject",
    "MalformedFileError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "decode_image",
    "read_calib",
    "read_image",
    "read_label",
    "read_pcd",
    "read_ply",
    "read_point_cloud",
    "read_squeezeseg_npy",
    "read_velodyne_bin",
    "write_calib",
    "write_image",
    "write_label",
    "write_pcd",
    "write_ply",
    "write_squeezeseg_npy",
    "write_velodyne_bin",
]
