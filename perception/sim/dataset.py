"""Synthetic datasets in the KITTI object layout, reproducible frame by frame.

``generate_dataset`` writes, for frames ``000000``, ``000001``, ...:

* ``velodyne/*.bin``: float32 (N, 4) points, LiDAR frame (x forward, y left, z up), intensity in [0, 1];
* ``labels/*.label``: per-point class and instance id (SemanticKITTI layout, one uint32 per point);
* ``squeezeseg/*.npy``: float32 (64, 512, 6) front-view tensors (``kitti-front`` projection; the label
  channel holds the class of the point that wins each pixel);
* ``image_2/*.png``: 1242 x 375 RGB renders (with ``camera=True``);
* ``label_2/*.txt``: KITTI objects (Car, Van, Pedestrian, Cyclist, DontCare);
* ``calib/*.txt``: P0-P3, R0_rect, Tr_velo_to_cam, Tr_imu_to_velo;
* ``ImageSets/train.txt`` and ``val.txt``: a deterministic split by frame index;
* ``manifest.json``: the seed, the full config, the sensor spec, library versions and each frame's
  seed, split and statistics. :func:`regenerate_frame` rebuilds any frame from it bit for bit (with
  the same library versions).

Every file is written atomically (``perception.io.common``); the manifest is written last.
Randomness: frame ``k`` of seed ``s`` uses ``SeedSequence(s, spawn_key=(k,))``; within a frame the
scene, LiDAR and camera draw from independent child sequences, so turning the camera off leaves the
scene and the scan unchanged.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perception import __version__
from perception.io.common import atomic_write, atomic_write_text
from perception.io.kitti import Calibration, KittiObject, write_calib, write_label, write_velodyne_bin
from perception.io.labels import write_point_labels
from perception.io.squeezeseg import write_squeezeseg_npy
from perception.lidar.projection import points_to_pixels, spherical_project, to_squeezeseg_tensor
from perception.lidar.sensors import SENSORS, SensorSpec, load_sensor
from perception.sim.camera import (
    Annotation,
    CameraModel,
    CameraParams,
    CameraRender,
    LabelParams,
    annotate,
    label_lines,
    render_camera,
)
from perception.sim.config import load_config, sample
from perception.sim.lidar import LidarParams, LidarScan, simulate_lidar
from perception.sim.world import CLASS_NAMES, Scene, build_scene

PathLike = str | os.PathLike[str]
MANIFEST_FORMAT = "perception-sim/1"
SQUEEZESEG_SENSOR = "kitti-front"


@dataclass
class FrameData:
    """One simulated frame in memory: the scene, the LiDAR scan, the render (None without camera), the
    annotations of every actor, the calibration, the SqueezeSeg tensor and per-stage timings (ms)."""

    frame_id: str
    seed: int
    scene: Scene
    scan: LidarScan
    render: CameraRender | None
    annotations: list[Annotation]
    calib: Calibration
    squeezeseg: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def label_objects(self) -> list[KittiObject]:
        return label_lines(self.annotations)

    @property
    def num_points(self) -> int:
        return len(self.scan.points)

    def stats(self) -> dict[str, Any]:
        """Deterministic per-frame statistics (counts only)."""
        labels = self.scan.labels
        objs = self.label_objects
        types: dict[str, int] = {}
        for o in objs:
            types[o.type] = types.get(o.type, 0) + 1
        return {
            "points": len(labels),
            "points_per_class": {CLASS_NAMES[c]: int(np.count_nonzero(labels == c)) for c in range(len(CLASS_NAMES))},
            "actors": {CLASS_NAMES[c]: sum(1 for o in self.scene.actors if o.label == c) for c in (1, 2, 3)},
            "label_2": dict(sorted(types.items())),
            "occluded": [sum(1 for o in objs if o.type != "DontCare" and o.occluded == k) for k in range(4)],
            "truncated": [
                sum(1 for o in objs if o.type != "DontCare" and lo <= o.truncated < hi)
                for lo, hi in ((0.0, 0.01), (0.01, 0.15), (0.15, 0.3), (0.3, 0.5), (0.5, 1.01))
            ],
        }


def frame_seed(seed: int, index: int) -> int:
    """The seed of frame ``index`` of a dataset with ``seed`` (independent of the number of frames)."""
    if seed < 0 or index < 0:
        raise ValueError("seed and frame index must be non-negative")
    return int(np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1, dtype=np.uint64)[0])


def frame_id_of(index: int) -> str:
    return f"{index:06d}"


def squeezeseg_tensor(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The SqueezeSeg (64, 512, 6) tensor of a scan: ``kitti-front`` projection, label channel from the
    point that wins each pixel (the nearest)."""
    proj = spherical_project(points, SENSORS[SQUEEZESEG_SENSOR])
    return to_squeezeseg_tensor(proj, points_to_pixels(np.asarray(labels).astype(np.float32), proj))


def _camera_params(config: Mapping[str, Any], rng: np.random.Generator) -> CameraParams:
    cam = config["camera"]
    warm = float(rng.uniform(-0.04, 0.04))
    hz = (0.80 + warm, 0.86, 0.92 - warm)
    zen = tuple(float(v) for v in np.clip(np.array([0.36, 0.56, 0.86]) + rng.uniform(-0.08, 0.08, 3), 0, 1))
    return CameraParams(
        noise_std=float(sample(rng, cam["noise_std"])),
        exposure=float(sample(rng, cam["exposure"])),
        shadows=bool(cam["shadows"]),
        fog_distance_m=float(sample(rng, cam["fog_distance_m"])),
        sky_horizon=hz,
        sky_zenith=(zen[0], zen[1], zen[2]),
    )


def simulate_frame(
    config: Mapping[str, Any],
    seed: int,
    sensor: SensorSpec,
    camera: bool = True,
    frame_id: str = "000000",
    nthreads: int = 0,
) -> FrameData:
    """Simulate one frame from a full config (:func:`~perception.sim.config.load_config`) and a frame seed."""
    times: dict[str, float] = {}
    ss_scene, ss_lidar, ss_camera = np.random.SeedSequence(seed).spawn(3)
    t0 = time.perf_counter()
    scene = build_scene(config, np.random.default_rng(ss_scene))
    t1 = time.perf_counter()
    times["scene"] = (t1 - t0) * 1e3
    scan = simulate_lidar(scene, sensor, np.random.default_rng(ss_lidar), LidarParams.from_config(config["lidar"]))
    t2 = time.perf_counter()
    times["lidar"] = (t2 - t1) * 1e3
    cam = CameraModel.kitti()
    render = None
    if camera:
        rng_cam = np.random.default_rng(ss_camera)
        render = render_camera(scene, cam, rng_cam, _camera_params(config, rng_cam), nthreads)
    t3 = time.perf_counter()
    times["camera"] = (t3 - t2) * 1e3
    annotations = annotate(scene, cam, render, LabelParams.from_config(config["camera"]), scan.instances, nthreads)
    t4 = time.perf_counter()
    times["labels"] = (t4 - t3) * 1e3
    tensor = squeezeseg_tensor(scan.points, scan.labels)
    times["squeezeseg"] = (time.perf_counter() - t4) * 1e3
    return FrameData(frame_id, seed, scene, scan, render, annotations, cam.calib, tensor, times)


def write_frame(out_dir: PathLike, frame: FrameData) -> dict[str, Path]:
    """Write one frame's files under ``out_dir`` (atomically); returns them by kind."""
    root = Path(out_dir)
    fid = frame.frame_id
    t0 = time.perf_counter()
    paths = {
        "velodyne": write_velodyne_bin(root / "velodyne" / f"{fid}.bin", frame.scan.points),
        "labels": write_point_labels(root / "labels" / f"{fid}.label", frame.scan.labels, frame.scan.instances),
        "squeezeseg": write_squeezeseg_npy(root / "squeezeseg" / f"{fid}.npy", frame.squeezeseg),
        "calib": write_calib(root / "calib" / f"{fid}.txt", frame.calib),
        "label": write_label(root / "label_2" / f"{fid}.txt", frame.label_objects),
    }
    if frame.render is not None:
        paths["image"] = write_png(root / "image_2" / f"{fid}.png", frame.render.image)
    frame.timings_ms["write"] = (time.perf_counter() - t0) * 1e3
    return paths


def write_png(path: PathLike, image: np.ndarray, compress_level: int = 1) -> Path:
    """Write uint8 (H, W, 3) RGB as PNG, atomically, with fast zlib compression (a noisy 1242 x 375
    render: ~85 ms and ~0.8 MB at level 1, ~260 ms and ~0.7 MB at PIL's default 6)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    return atomic_write(
        path, lambda handle: Image.fromarray(arr).save(handle, format="PNG", compress_level=compress_level)
    )


def _resolve_sensor(sensor: str | PathLike | SensorSpec) -> SensorSpec:
    return sensor if isinstance(sensor, SensorSpec) else load_sensor(sensor)


@dataclass(frozen=True)
class FrameSummary:
    """What a worker process reports about a frame it simulated and wrote (the frame stays in the worker)."""

    frame_id: str
    seed: int
    num_points: int
    label_objects: list[KittiObject]
    timings_ms: dict[str, float]
    stats: dict[str, Any]


def _simulate_and_write(
    root: Path, config: Mapping[str, Any], seed: int, sensor: SensorSpec, camera: bool, frame_id: str, nthreads: int
) -> FrameSummary:
    frame = simulate_frame(config, seed, sensor, camera, frame_id, nthreads)
    write_frame(root, frame)
    return FrameSummary(frame_id, seed, frame.num_points, frame.label_objects, frame.timings_ms, frame.stats())


def split_of(index: int, val_fraction: float) -> str:
    """``val`` for an evenly spread ``val_fraction`` of frame indices, else ``train``."""
    return "val" if math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction) else "train"


def generate_dataset(
    out_dir: PathLike,
    config: PathLike | Mapping[str, Any] | None = "urban",
    frames: int = 10,
    seed: int = 0,
    sensor: str | PathLike | SensorSpec = "hdl64e-360",
    camera: bool = True,
    *,
    progress: Callable[[FrameData | FrameSummary], None] | None = None,
    nthreads: int = 0,
    workers: int = 1,
) -> Path:
    """Simulate ``frames`` frames and write them in the KITTI layout under ``out_dir``; returns ``out_dir``.

    ``config`` is a preset name (``urban``, ``highway``), a YAML/JSON file or a mapping overriding the
    defaults (see :mod:`perception.sim.config`); ``sensor`` a built-in sensor name, a spec file or a
    :class:`SensorSpec`. ``progress`` is called with each frame once it is written (its ``timings_ms``
    filled in). ``nthreads`` is open3d's ray-casting thread count (0: all cores). ``workers`` > 1 simulates
    frames in that many processes (each frame depends only on its own seed, so the output is the same
    bit for bit); ``progress`` then gets a :class:`FrameSummary`, in frame order. Needs open3d.
    """
    if frames < 0:
        raise ValueError("frames must be >= 0")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    cfg = load_config(config)
    spec = _resolve_sensor(sensor)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    val_fraction = float(cfg["dataset"]["val_fraction"])
    entries = []
    if workers > 1 and frames > 1:
        jobs = [(root, cfg, frame_seed(seed, k), spec, camera, frame_id_of(k), nthreads) for k in range(frames)]
        context = multiprocessing.get_context("spawn")  # open3d and BLAS threads do not survive fork safely
        with ProcessPoolExecutor(max_workers=min(workers, frames), mp_context=context) as pool:
            for k, summary in enumerate(pool.map(_simulate_and_write, *zip(*jobs, strict=True))):
                entries.append({"id": summary.frame_id, "seed": summary.seed, "split": split_of(k, val_fraction),
                                "stats": summary.stats})  # fmt: skip
                if progress is not None:
                    progress(summary)
    else:
        for k in range(frames):
            fid = frame_id_of(k)
            fseed = frame_seed(seed, k)
            frame = simulate_frame(cfg, fseed, spec, camera, fid, nthreads)
            write_frame(root, frame)
            entries.append({"id": fid, "seed": fseed, "split": split_of(k, val_fraction), "stats": frame.stats()})
            if progress is not None:
                progress(frame)
    for split in ("train", "val"):
        ids = [e["id"] for e in entries if e["split"] == split]
        atomic_write_text(root / "ImageSets" / f"{split}.txt", "".join(i + "\n" for i in ids))
    manifest = build_manifest(cfg, seed, spec, camera, entries)
    atomic_write_text(root / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return root


def _versions() -> dict[str, str]:
    out = {"perception": __version__, "numpy": np.__version__}
    try:
        import open3d

        out["open3d"] = open3d.__version__
    except ImportError:  # pragma: no cover
        out["open3d"] = "missing"
    return out


def build_manifest(
    cfg: Mapping[str, Any], seed: int, sensor: SensorSpec, camera: bool, entries: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "package_version": __version__,
        "versions": _versions(),
        "seed": seed,
        "num_frames": len(entries),
        "camera": camera,
        "sensor": sensor.to_dict(),
        "squeezeseg_sensor": SQUEEZESEG_SENSOR,
        "config": cfg,
        "frames": entries,
    }


def read_manifest(manifest: PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A manifest from a dict, a ``manifest.json`` path or a dataset directory."""
    if isinstance(manifest, Mapping):
        return dict(manifest)
    path = Path(manifest)
    if path.is_dir():
        path = path / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    return data


def regenerate_frame(
    manifest: PathLike | Mapping[str, Any], frame_id: str | int, out_dir: PathLike | None = None
) -> FrameData:
    """Rebuild frame ``frame_id`` (``"000003"`` or 3) of a dataset from its manifest; with ``out_dir``
    also write its files there. Identical bytes need the manifest's library versions (warns otherwise)."""
    data = read_manifest(manifest)
    fid = frame_id_of(frame_id) if isinstance(frame_id, int) else str(frame_id)
    entry = next((e for e in data["frames"] if e["id"] == fid), None)
    if entry is None:
        raise KeyError(f"frame {fid!r} is not in the manifest")
    now = _versions()
    then = data.get("versions", {})
    differ = sorted(k for k in now if then.get(k) not in (None, now[k]))
    if differ:
        warnings.warn(
            f"regenerating with other versions of {', '.join(differ)} than the dataset was made with", stacklevel=2
        )
    cfg = load_config(data["config"])
    spec = SensorSpec.from_dict(data["sensor"])
    frame = simulate_frame(cfg, int(entry["seed"]), spec, bool(data["camera"]), fid)
    if out_dir is not None:
        write_frame(out_dir, frame)
    return frame
