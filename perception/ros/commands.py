"""The bodies of ``perception ros`` and ``perception replay`` (the options live in :mod:`perception.cli`).

Bad input raises ``ValueError``/``OSError`` with a message fit for the one ``error:`` line the CLI
prints; a missing ``[ros]`` extra is reported the same way.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perception.ros.frames import FrameOutput, Processor


def require_ros_extra(*modules: str) -> None:
    """Raise ValueError naming the ``[ros]`` extra when one of ``modules`` is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"{' and '.join(missing)} not installed: the ROS commands need the [ros] extra "
            "(pip install 'perception[ros]')"
        )


def parse_intensity_scale(text: str) -> float | str:
    """``auto`` or a positive number."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--intensity-scale must be 'auto' or a positive number, got {text!r}")
    return value


def output_topics(detections_2d: str, detections_3d: str, points: str, markers: str) -> dict[str, str]:
    """Output name -> topic ("" turns an output off)."""
    return {"detections_2d": detections_2d, "detections_3d": detections_3d, "labelled_points": points,
            "markers": markers}  # fmt: skip


def build_processor(
    *,
    lidar: bool,
    camera: bool,
    seg_model: Path,
    det_model: Path,
    providers: str,
    service: str | None,
    api_key: str | None,
) -> tuple[Processor, Callable[[], None]]:
    """(processor, close): the remote service when ``service`` is given, else an in-process pipeline
    with the models the configured sensors need."""
    if service:
        from perception.ros.bridge import RemoteProcessor

        remote = RemoteProcessor(service, api_key=api_key)
        return remote, remote.close
    from perception.pipeline import ModelLoadError, Pipeline

    for needed, path, task in ((lidar, seg_model, "seg"), (camera, det_model, "det")):
        if needed and not path.is_file():
            raise ValueError(
                f"{path}: no such model; export one with `perception export {task} --out {path}` or use --service"
            )
    try:
        pipeline = Pipeline(seg_model if lidar else None, det_model if camera else None, providers=providers)
    except ModelLoadError as exc:
        raise ValueError(str(exc)) from None
    return pipeline.run, pipeline.close


def check_limits(pair_tolerance: float, duration: float | None = None, max_frames: int | None = None) -> None:
    """The numeric options that have a floor, each with its own clear message."""
    if not (math.isfinite(pair_tolerance) and pair_tolerance >= 0):
        raise ValueError(f"--pair-tolerance must be >= 0 seconds, got {pair_tolerance}")
    if duration is not None and not duration >= 0:
        raise ValueError(f"--duration must be >= 0 seconds, got {duration}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")


def configure_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"--log-level must be debug, info, warning or error, got {level!r}")
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_ros(
    *,
    rosbridge: str,
    lidar_topic: str | None,
    camera_topic: str | None,
    camera_type: str,
    ros_version: int,
    type_names: list[str],
    topics: dict[str, str],
    lidar_frame: str | None,
    camera_frame: str | None,
    pair_tolerance: float,
    max_age: float,
    queue_size: int,
    reconnect_min: float,
    reconnect_max: float,
    intensity_scale: str,
    processor_args: dict[str, Any],
    duration: float | None,
    max_frames: int | None,
    stats_every: float,
) -> dict[str, int]:
    """Validate everything, then run the bridge until Ctrl-C / ``duration`` / ``max_frames``; the counters."""
    from perception.ros.bridge import BridgeConfig, RosBridge
    from perception.ros.results import parse_type_overrides

    check_limits(pair_tolerance, duration, max_frames)
    if camera_type not in ("auto", "raw", "compressed"):
        raise ValueError(f"--camera-type must be auto, raw or compressed, got {camera_type!r}")
    if ros_version not in (1, 2):
        raise ValueError(f"--ros-version must be 1 or 2, got {ros_version}")
    config = BridgeConfig(
        url=rosbridge,
        lidar_topic=lidar_topic or None,
        camera_topic=camera_topic or None,
        camera_compressed=None if camera_type == "auto" else camera_type == "compressed",
        version=ros_version,  # type: ignore[arg-type]
        type_overrides=parse_type_overrides(type_names),
        output_topics=topics,
        lidar_frame=lidar_frame,
        camera_frame=camera_frame,
        pair_tolerance_s=pair_tolerance,
        max_age_s=max_age,
        queue_size=queue_size,
        reconnect_min_s=reconnect_min,
        reconnect_max_s=reconnect_max,
        intensity_scale=parse_intensity_scale(intensity_scale),
    )
    require_ros_extra("roslibpy")
    processor, close = build_processor(lidar=bool(config.lidar_topic), camera=bool(config.camera_topic),
                                       **processor_args)  # fmt: skip
    bridge = RosBridge(config, processor)
    try:
        bridge.run(duration_s=duration, max_frames=max_frames, stats_every_s=stats_every)
    except KeyboardInterrupt:
        pass
    finally:
        close()
    return bridge.stats()


def run_replay(
    *,
    bag: Path,
    out: Path | None,
    lidar_topic: str | None,
    camera_topic: str | None,
    topics: dict[str, str],
    storage: str | None,
    copy_inputs: bool,
    pair_tolerance: float,
    lidar_frame: str | None,
    camera_frame: str | None,
    intensity_scale: str,
    max_frames: int | None,
    processor_args: dict[str, Any],
    progress: Callable[[FrameOutput], None] | None = None,
) -> Any:
    """Find the topics, load what they need, replay; the :class:`~perception.ros.replay.ReplayReport`."""
    require_ros_extra("rosbags")
    from perception.ros.replay import bag_topics, replay_bag

    check_limits(pair_tolerance, None, max_frames)
    if storage not in (None, "sqlite3", "mcap"):
        raise ValueError(f"--storage must be sqlite3 or mcap, got {storage!r}")
    scale = parse_intensity_scale(intensity_scale)
    if processor_args.get("service"):
        # check the service URL before reading the bag
        from urllib.parse import urlparse

        parsed = urlparse(processor_args["service"])
        if parsed.scheme not in ("grpc", "http", "https") or not parsed.netloc:
            raise ValueError(
                f"--service must be grpc://HOST:PORT or http(s)://HOST:PORT, got {processor_args['service']!r}"
            )
    lidar_topic, camera_topic = bag_topics(bag, lidar_topic, camera_topic)
    processor, close = build_processor(lidar=bool(lidar_topic), camera=bool(camera_topic), **processor_args)
    try:
        return replay_bag(
            bag,
            processor,
            out=out,
            lidar_topic=lidar_topic or "",
            camera_topic=camera_topic or "",
            result_topics=topics,
            storage=storage,
            copy_inputs=copy_inputs,
            pair_tolerance_s=pair_tolerance,
            lidar_frame=lidar_frame,
            camera_frame=camera_frame,
            intensity_scale=scale,
            max_frames=max_frames,
            progress=progress,
        )
    finally:
        close()
