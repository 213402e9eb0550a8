"""Bag replay: run perception on the scans and images recorded in a ROS 1 or ROS 2 bag (rosbags).

Reads ROS 1 ``.bag`` files and ROS 2 bag directories (sqlite3 ``.db3`` or MCAP storage; a path to the
``.db3``/``.mcap`` file inside the directory works too) with rosbags' ``AnyReader``, in recording
order. Scans and images are paired exactly as the live bridge pairs them (nearest stamp within
``pair_tolerance_s``; the recording time plays the clock, and nothing is dropped for age), each frame
goes through the processor, and the results (:mod:`perception.ros.results`) can be written to a new
bag of the same ROS version: a ``.bag`` file for a ROS 1 input, a bag directory for ROS 2 (same storage
as the input unless told otherwise). Result messages carry the input messages' header stamps and frame
ids; their record time in the output bag is that of the scan (or image) they came from.

Topics: when neither ``lidar_topic`` nor ``camera_topic`` is given, the bag's only PointCloud2 topic and
its only Image/CompressedImage topic are used (an error names the candidates when there are several).
Messages that cannot be deserialised or converted are logged, counted and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perception.ros.frames import FrameOptions, FrameOutput, Processor, process_pair
from perception.ros.messages import header_of
from perception.ros.results import OUTPUT_TYPES, OUTPUTS
from perception.ros.sync import FramePair, Incoming, StampPairer
from perception.ros.typedefs import dict_to_rosbags, normalise_type_name, output_typestore, rosbags_to_dict

log = logging.getLogger("perception.ros.replay")

POINTCLOUD2_TYPES = {"sensor_msgs/msg/PointCloud2"}
IMAGE_TYPES = {"sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"}

DEFAULT_RESULT_TOPICS: dict[str, str] = {
    "detections_2d": "/perception/detections_2d",
    "detections_3d": "/perception/detections_3d",
    "labelled_points": "/perception/labelled_points",
    "markers": "/perception/markers",
}


@dataclass
class ReplayReport:
    """What a replay did.

    Attributes:
        bag, out: input bag and output bag (None when no bag was written).
        ros_version: 1 or 2.
        lidar_topic, camera_topic: the topics used (None when absent).
        read: messages read per input topic.
        frames: frames processed.
        malformed: messages skipped because they could not be deserialised or converted.
        failed: frames the processor failed on.
        skipped_images: images no scan took.
        written: result messages written per output topic.
    """

    bag: str
    out: str | None
    ros_version: int
    lidar_topic: str | None
    camera_topic: str | None
    read: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    malformed: int = 0
    failed: int = 0
    skipped_images: int = 0
    written: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        topics = ", ".join(f"{t} {n}" for t, n in self.read.items()) or "nothing"
        line = f"{self.bag} (ROS {self.ros_version}): read {topics}; {self.frames} frames"
        line += f", {self.malformed} malformed messages skipped, {self.failed} frames failed"
        if self.skipped_images:
            line += f", {self.skipped_images} images unpaired"
        if self.out is not None:
            written = ", ".join(f"{t} {n}" for t, n in self.written.items()) or "nothing"
            line += f"; wrote {written} to {self.out}"
        return line


def _bag_dir(path: Path) -> tuple[Path, bool]:
    """(path for AnyReader, is ROS 2)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such bag")
    if path.is_dir():
        if not (path / "metadata.yaml").is_file():
            raise ValueError(f"{path}: a ROS 2 bag directory needs a metadata.yaml (not a bag?)")
        return path, True
    if path.suffix in (".db3", ".mcap") and (path.parent / "metadata.yaml").is_file():
        return path.parent, True
    if path.suffix != ".bag":
        raise ValueError(f"{path}: expected a ROS 1 .bag file or a ROS 2 bag directory")
    return path, False


def _storage_of(bag_dir: Path) -> str:
    import yaml

    try:
        meta = yaml.safe_load((bag_dir / "metadata.yaml").read_text())
        return str(meta["rosbag2_bagfile_information"]["storage_identifier"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "sqlite3"


def _pick_topic(topics: Mapping[str, Any], wanted: set[str], what: str) -> str | None:
    found = sorted(name for name, info in topics.items() if normalise_type_name(info.msgtype or "") in wanted)
    if len(found) > 1:
        raise ValueError(f"the bag has several {what} topics ({', '.join(found)}); choose one")
    return found[0] if found else None


def _check_topic(topics: Mapping[str, Any], topic: str, wanted: set[str], what: str) -> None:
    if topic not in topics:
        listing = ", ".join(f"{n} ({i.msgtype})" for n, i in sorted(topics.items())) or "none"
        raise ValueError(f"topic {topic} is not in the bag; its topics: {listing}")
    msgtype = normalise_type_name(topics[topic].msgtype or "")
    if msgtype not in wanted:
        raise ValueError(f"topic {topic} holds {msgtype}, not {what}")


def _resolve_topics(
    topics: Mapping[str, Any], bag_path: Path, lidar_topic: str | None, camera_topic: str | None
) -> tuple[str | None, str | None]:
    if lidar_topic is None and camera_topic is None:
        lidar_topic = _pick_topic(topics, POINTCLOUD2_TYPES, "PointCloud2")
        camera_topic = _pick_topic(topics, IMAGE_TYPES, "Image/CompressedImage")
        if lidar_topic is None and camera_topic is None:
            listing = ", ".join(f"{n} ({i.msgtype})" for n, i in sorted(topics.items())) or "none"
            raise ValueError(f"{bag_path}: no PointCloud2, Image or CompressedImage topic; topics: {listing}")
    if lidar_topic:
        _check_topic(topics, lidar_topic, POINTCLOUD2_TYPES, "sensor_msgs/PointCloud2")
    if camera_topic:
        _check_topic(topics, camera_topic, IMAGE_TYPES, "sensor_msgs/Image or CompressedImage")
    return lidar_topic or None, camera_topic or None


def _open_reader(bag_path: Path) -> tuple[Any, bool]:
    from rosbags.highlevel import AnyReader, AnyReaderError

    reader_path, is2 = _bag_dir(bag_path)
    try:
        reader = AnyReader([reader_path])
        reader.open()
    except AnyReaderError as exc:
        raise ValueError(f"{bag_path}: not a readable ROS bag ({exc})") from None
    return reader, is2


def bag_topics(
    bag: str | Path, lidar_topic: str | None = None, camera_topic: str | None = None
) -> tuple[str | None, str | None]:
    """The (LiDAR, camera) topics a replay of ``bag`` would use (see the module docstring)."""
    reader, _ = _open_reader(Path(bag))
    try:
        return _resolve_topics(reader.topics, Path(bag), lidar_topic, camera_topic)
    finally:
        reader.close()


class _BagWriter:
    """The output bag: ROS 1 ``.bag`` or ROS 2 directory, result connections added on first use."""

    def __init__(self, out: Path, version: int, storage: str, reader: Any, copy_topics: list[str]) -> None:
        if out.exists():
            raise FileExistsError(f"{out} exists already; choose a new output path")
        if version == 1 and out.suffix != ".bag":
            raise ValueError(f"{out}: the output of a ROS 1 bag is a ROS 1 bag; name it *.bag")
        if version == 2 and out.suffix == ".bag":
            raise ValueError(f"{out}: the output of a ROS 2 bag is a ROS 2 bag directory; drop the .bag suffix")
        self.version = version
        self.typestore = output_typestore(version)
        if version == 1:
            from rosbags.rosbag1 import Writer as Writer1

            self.writer: Any = Writer1(out)
        else:
            from rosbags.rosbag2 import StoragePlugin
            from rosbags.rosbag2 import Writer as Writer2

            if storage not in ("sqlite3", "mcap"):
                raise ValueError(f"storage must be sqlite3 or mcap, got {storage!r}")
            plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
            self.writer = Writer2(out, version=9, storage_plugin=plugin)
        self.writer.open()
        self.connections: dict[str, Any] = {}
        self.copies: dict[str, Any] = {}  # input topic -> output connection
        for conn in reader.connections:
            if conn.topic in copy_topics and conn.topic not in self.copies:
                self.copies[conn.topic] = self.writer.add_connection(
                    conn.topic, normalise_type_name(conn.msgtype), typestore=reader.typestore
                )

    def copy(self, conn: Any, timestamp: int, raw: bytes) -> None:
        target = self.copies.get(conn.topic)
        if target is not None:
            self.writer.write(target, timestamp, raw)

    def write(self, topic: str, msgtype: str, msg: Mapping[str, Any], timestamp: int) -> None:
        msgtype = normalise_type_name(msgtype)
        if topic not in self.connections:
            self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.typestore)
        obj = dict_to_rosbags(self.typestore, msgtype, msg)
        if self.version == 1:
            raw = self.typestore.serialize_ros1(obj, msgtype)
        else:
            raw = self.typestore.serialize_cdr(obj, msgtype)
        self.writer.write(self.connections[topic], timestamp, raw)

    def close(self) -> None:
        self.writer.close()


def replay_bag(
    bag: str | Path,
    processor: Processor,
    *,
    out: str | Path | None = None,
    lidar_topic: str | None = None,
    camera_topic: str | None = None,
    result_topics: Mapping[str, str] | None = None,
    storage: str | None = None,
    copy_inputs: bool = False,
    pair_tolerance_s: float = 0.05,
    pair_wait_s: float = 0.2,
    lidar_frame: str | None = None,
    camera_frame: str | None = None,
    intensity_scale: float | str = "auto",
    max_frames: int | None = None,
    progress: Callable[[FrameOutput], None] | None = None,
) -> ReplayReport:
    """Run ``processor`` on the scans/images of ``bag``; optionally write the results to ``out``.

    Args:
        bag: ROS 1 ``.bag`` file or ROS 2 bag directory (sqlite3 or MCAP).
        processor: ``Frame -> PerceptionResult`` (a pipeline's ``run`` or a remote processor).
        out: output bag (``.bag`` for ROS 1, a new directory for ROS 2), or None to write nothing.
        lidar_topic, camera_topic: input topics (both None: detected, see the module docstring).
        result_topics: output name -> topic (default :data:`DEFAULT_RESULT_TOPICS`; "" turns one off).
        storage: ROS 2 output storage, ``sqlite3`` or ``mcap`` (default: the input's).
        copy_inputs: also copy the input topics into the output bag.
        pair_tolerance_s, pair_wait_s: pairing (see :mod:`perception.ros.sync`), seconds.
        lidar_frame, camera_frame: output frame ids instead of the inputs'.
        intensity_scale: see :func:`perception.ros.messages.normalise_intensity`.
        max_frames: stop after this many frames.
        progress: called with every frame's output.

    Raises:
        FileNotFoundError, FileExistsError: missing bag, existing output.
        ValueError: not a bag, unreadable bag, missing or wrongly typed topics, bad options.
    """
    bag_path = Path(bag)
    reader_path, is2 = _bag_dir(bag_path)
    version = 2 if is2 else 1
    topics_out = {k: v for k, v in (result_topics or DEFAULT_RESULT_TOPICS).items() if v}
    unknown = set(topics_out) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"unknown outputs {sorted(unknown)}; known: {', '.join(OUTPUTS)}")
    options = FrameOptions(
        version=version,
        outputs=tuple(topics_out),
        lidar_frame=lidar_frame,
        camera_frame=camera_frame,
        intensity_scale=intensity_scale,
    )
    reader, _ = _open_reader(bag_path)
    writer: _BagWriter | None = None
    try:
        lidar_topic, camera_topic = _resolve_topics(reader.topics, bag_path, lidar_topic, camera_topic)
        report = ReplayReport(
            bag=str(bag_path),
            out=str(out) if out is not None else None,
            ros_version=version,
            lidar_topic=lidar_topic or None,
            camera_topic=camera_topic or None,
        )
        if out is not None:
            in_topics = [t for t in (lidar_topic, camera_topic) if t] if copy_inputs else []
            writer = _BagWriter(
                Path(out), version, storage or (_storage_of(reader_path) if is2 else ""), reader, in_topics
            )
        pairer = StampPairer(
            lidar=bool(lidar_topic),
            camera=bool(camera_topic),
            tolerance_s=pair_tolerance_s,
            max_wait_s=pair_wait_s,
            max_age_s=float("inf"),
            max_pending=256,
        )
        kinds = {lidar_topic: "lidar", camera_topic: "camera"}
        connections = [c for c in reader.connections if c.topic in kinds]
        record_time: dict[int, int] = {}  # id(Incoming) -> record time (ns), while the item is held

        def run(pairs: list[FramePair]) -> bool:
            for pair in pairs:
                if max_frames is not None and report.frames >= max_frames:
                    return False
                output, problems = process_pair(pair, processor, options)
                for problem in problems:
                    topic = {"lidar": lidar_topic, "camera": camera_topic}.get(problem.source)
                    log.warning("%s%s", f"{topic}: " if topic else "", problem.message)
                    if problem.kind == "malformed":
                        report.malformed += 1
                    else:
                        report.failed += 1
                if output is None:
                    continue
                report.frames += 1
                lead = pair.lidar if pair.lidar is not None else pair.camera
                assert lead is not None
                stamp_ns = record_time.pop(id(lead), lead.stamp.ns)
                if pair.lidar is not None and pair.camera is not None:
                    record_time.pop(id(pair.camera), None)
                if writer is not None:
                    for name, msg in output.messages.items():
                        topic = topics_out[name]
                        writer.write(topic, OUTPUT_TYPES[name], msg, stamp_ns)
                        report.written[topic] = report.written.get(topic, 0) + 1
                if progress is not None:
                    progress(output)
            return True

        going = True
        for conn, timestamp, raw in reader.messages(connections=connections):
            kind = kinds[conn.topic]
            report.read[conn.topic] = report.read.get(conn.topic, 0) + 1
            if writer is not None:
                writer.copy(conn, timestamp, raw)
            try:
                message = rosbags_to_dict(reader.deserialize(raw, conn.msgtype))
                stamp, frame_id = header_of(message, conn.topic)
            except Exception as exc:  # a corrupt record can fail deserialisation in any way; skip it
                report.malformed += 1
                log.warning(
                    "%s: skipped a message recorded at %d ns that cannot be read: %s", conn.topic, timestamp, exc
                )
                continue
            item = Incoming(kind, stamp, frame_id, message, timestamp * 1e-9)  # type: ignore[arg-type]
            record_time[id(item)] = timestamp
            if not run(pairer.add(item, timestamp * 1e-9)):
                going = False
                break
        if going:
            run(pairer.flush())
        report.skipped_images = pairer.skipped
        return report
    finally:
        if writer is not None:
            writer.close()
        reader.close()
