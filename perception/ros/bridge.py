"""The rosbridge client: ROS topics in, perception results out, over rosbridge v2 (roslibpy).

``RosBridge`` subscribes to a ``sensor_msgs/PointCloud2`` topic and/or a ``sensor_msgs/Image`` or
``sensor_msgs/CompressedImage`` topic through a rosbridge server (ROS 1 or ROS 2; the protocol is
JSON over a WebSocket, ``uint8[]`` fields as base64), pairs scans and images by nearest stamp
(:mod:`perception.ros.sync`), runs each frame through a processor (the in-process
:class:`~perception.pipeline.Pipeline`, or the perception service via :class:`RemoteProcessor`) and
publishes the results (:mod:`perception.ros.results`) with the input messages' stamps and frame ids.

Threads: roslibpy delivers messages on its event-loop thread, where :meth:`RosBridge.on_message`
only reads the header and hands the message to the pairer; one worker thread decodes, runs and
publishes (:meth:`RosBridge.step`). Between them sits a small "drop the oldest" queue, and a frame
older than ``max_age_s`` (since it arrived) when the worker gets to it is dropped: a slow pipeline
falls behind by at most the queue, never by a growing backlog.

Connection: roslibpy reconnects with exponential backoff (``reconnect_min_s`` doubling-ish up to
``reconnect_max_s``) when the connection drops or the server is not up yet, and re-sends the
subscriptions and advertisements; results made while disconnected are not queued for later
(``not_published``). Malformed messages are logged and counted (``malformed``) and the bridge goes on.

Counters (:meth:`RosBridge.stats`): ``received_lidar``, ``received_camera``, ``processed`` (frames run
and published), ``dropped`` (never processed: too old, queue overflow, pairer overflow), ``skipped_images``
(images no scan took), ``malformed``, ``failed`` (pipeline/service errors), ``published``,
``not_published``, ``connections`` (1 + reconnections), ``disconnections``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from perception.pipeline import Frame, FrameQueue, PerceptionResult, Pipeline
from perception.ros.frames import FrameOptions, FrameOutput, Processor, process_pair
from perception.ros.messages import MessageError, header_of
from perception.ros.results import (
    COMPRESSED_IMAGE,
    IMAGE,
    OUTPUT_TYPES,
    OUTPUTS,
    POINTCLOUD2,
    RosDialect,
    RosVersion,
    result_from_service,
    to_rosbridge,
)
from perception.ros.sync import FramePair, Incoming, Kind, StampPairer

log = logging.getLogger("perception.ros")

DEFAULT_OUTPUT_TOPICS: dict[str, str] = {
    "detections_2d": "/perception/detections_2d",
    "detections_3d": "/perception/detections_3d",
    "labelled_points": "/perception/labelled_points",
    "markers": "/perception/markers",
}


def check_rosbridge_url(url: str) -> str:
    """``ws://HOST:PORT`` or ``wss://...``; raises ValueError with a clear message otherwise."""
    parsed = urlparse(url)
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise ValueError(f"--rosbridge must be a WebSocket URL such as ws://localhost:9090, got {url!r}")
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"--rosbridge {url!r}: bad port") from None
    return url


@dataclass
class BridgeConfig:
    """What to subscribe to, what to publish, and the timing limits.

    Attributes:
        url: rosbridge WebSocket URL, e.g. ``ws://localhost:9090``.
        lidar_topic: PointCloud2 topic, or None for no LiDAR.
        camera_topic: Image or CompressedImage topic, or None for no camera.
        camera_compressed: subscribe as CompressedImage; None: when the topic name ends in
            ``/compressed`` (image_transport's convention).
        version: 1 or 2: message layouts and type names (see :class:`~perception.ros.results.RosDialect`).
        type_overrides: type names to use instead of the defaults, by ROS 1 type name.
        output_topics: topic per output (``detections_2d``, ``detections_3d``, ``labelled_points``,
            ``markers``); an empty name turns that output off.
        lidar_frame, camera_frame: frame ids for the outputs instead of the input messages' ones.
        pair_tolerance_s: largest stamp difference (seconds) between a scan and its image.
        pair_wait_s: how long a scan waits for an image stamped at or after it (seconds).
        max_age_s: frames older than this (seconds since they arrived) are dropped, not processed.
        queue_size: frames waiting for the worker; beyond it the oldest is dropped.
        reconnect_min_s, reconnect_max_s: first and largest delay between reconnection attempts.
        intensity_scale: ``auto`` or a factor (see :func:`perception.ros.messages.normalise_intensity`).
        marker_namespace: namespace prefix of the RViz markers.
        transport: roslibpy transport, ``asyncio`` (default) or ``twisted``.
    """

    url: str
    lidar_topic: str | None = "/velodyne_points"
    camera_topic: str | None = None
    camera_compressed: bool | None = None
    version: RosVersion = 2
    type_overrides: dict[str, str] = field(default_factory=dict)
    output_topics: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_OUTPUT_TOPICS))
    lidar_frame: str | None = None
    camera_frame: str | None = None
    pair_tolerance_s: float = 0.05
    pair_wait_s: float = 0.2
    max_age_s: float = 1.0
    queue_size: int = 2
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0
    intensity_scale: float | str = "auto"
    marker_namespace: str = "perception"
    transport: str = "asyncio"

    def __post_init__(self) -> None:
        check_rosbridge_url(self.url)
        if not (self.lidar_topic or self.camera_topic):
            raise ValueError("give a LiDAR topic, a camera topic or both")
        for topic in (self.lidar_topic, self.camera_topic, *self.output_topics.values()):
            if topic and not topic.startswith("/") and not topic[0].isalpha():
                raise ValueError(f"bad topic name {topic!r}")
        unknown = set(self.output_topics) - set(OUTPUTS)
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}; known: {', '.join(OUTPUTS)}")
        if self.version not in (1, 2):
            raise ValueError(f"ROS version must be 1 or 2, got {self.version!r}")
        if self.queue_size < 1:
            raise ValueError(f"queue size must be >= 1, got {self.queue_size}")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ValueError("reconnect delays must satisfy 0 < min <= max")
        if self.max_age_s <= 0:
            raise ValueError(f"max age must be > 0 seconds, got {self.max_age_s}")
        if self.transport not in ("asyncio", "twisted"):
            raise ValueError(f"transport must be asyncio or twisted, got {self.transport!r}")

    @property
    def dialect(self) -> RosDialect:
        return RosDialect(self.version, dict(self.type_overrides))

    @property
    def compressed(self) -> bool:
        if self.camera_compressed is not None:
            return self.camera_compressed
        return bool(self.camera_topic) and self.camera_topic.rstrip("/").endswith("/compressed")

    def input_type(self, kind: Kind) -> str:
        if kind == "lidar":
            return self.dialect.type_name(POINTCLOUD2)
        return self.dialect.type_name(COMPRESSED_IMAGE if self.compressed else IMAGE)

    def enabled_outputs(self) -> dict[str, str]:
        """Output name -> topic for the outputs that are on."""
        return {name: topic for name, topic in self.output_topics.items() if topic}


# --- processors ----------------------------------------------------------------------------------


def local_processor(pipeline: Pipeline) -> Processor:
    """Frames through an in-process pipeline."""
    return pipeline.run


class RemoteProcessor:
    """Frames through the perception service: ``grpc://HOST:PORT`` or ``http(s)://HOST:PORT``.

    Per-point labels and instance point indices are requested, so the labelled cloud can be built.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        parsed = urlparse(url)
        self.url = url
        if parsed.scheme == "grpc" and parsed.netloc:
            from perception.client import GrpcClient

            self.client: Any = GrpcClient(parsed.netloc, api_key=api_key, timeout=timeout_s)
        elif parsed.scheme in ("http", "https") and parsed.netloc:
            from perception.client import RestClient

            self.client = RestClient(url, api_key=api_key, timeout=timeout_s)
        else:
            raise ValueError(f"--service must be grpc://HOST:PORT or http(s)://HOST:PORT, got {url!r}")

    def __call__(self, frame: Frame) -> PerceptionResult:
        doc = self.client.perceive(
            image=frame.image,
            points=frame.points,
            include_labels=frame.points is not None,
            include_point_indices=frame.points is not None,
            frame_id=frame.frame_id,
            timestamp=frame.timestamp,
        )
        return result_from_service(doc)

    def close(self) -> None:
        self.client.close()


# --- the bridge ----------------------------------------------------------------------------------


class RosBridge:
    """rosbridge client running perception on ROS topics (see the module docstring).

    Args:
        config: topics, types and limits.
        processor: ``Frame -> PerceptionResult`` (:func:`local_processor` or :class:`RemoteProcessor`).
        clock: monotonic seconds (tests pass a fake clock).
        listener: called from the worker with every :class:`FrameOutput` after it was published.

    :meth:`on_message` and :meth:`step` work without a connection (tests drive them directly);
    :meth:`start` connects, subscribes, advertises and starts the worker thread.
    """

    def __init__(
        self,
        config: BridgeConfig,
        processor: Processor,
        *,
        clock: Callable[[], float] = time.monotonic,
        listener: Callable[[FrameOutput], None] | None = None,
    ) -> None:
        self.config = config
        self.processor = processor
        self.clock = clock
        self.listener = listener
        self._dialect = config.dialect
        self._options = FrameOptions(
            version=config.version,
            outputs=tuple(config.enabled_outputs()),
            lidar_frame=config.lidar_frame,
            camera_frame=config.camera_frame,
            intensity_scale=config.intensity_scale,
            marker_namespace=config.marker_namespace,
        )
        self._pairer = StampPairer(
            lidar=bool(config.lidar_topic),
            camera=bool(config.camera_topic),
            tolerance_s=config.pair_tolerance_s,
            max_wait_s=config.pair_wait_s,
            max_age_s=config.max_age_s,
        )
        self._queue: FrameQueue[FramePair] = FrameQueue(config.queue_size, policy="drop")
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._ros: Any = None
        self._subscriptions: list[Any] = []
        self._publishers: dict[str, Any] = {}
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._closed = threading.Event()  # set when a connection has closed (the close handshake is over)
        self._warned: collections.Counter[str] = collections.Counter()

    # --- counters ------------------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters (see the module docstring)."""
        with self._lock:
            counts = dict(self._counts)
            pairer_dropped, skipped = self._pairer.dropped, self._pairer.skipped
        keys = ("received_lidar", "received_camera", "processed", "malformed", "failed", "published")
        keys += ("not_published", "connections", "disconnections", "dropped_stale", "dropped_overflow")
        out = {k: int(counts.get(k, 0)) for k in keys}
        out["dropped_pairing"] = pairer_dropped
        out["dropped"] = out["dropped_stale"] + out["dropped_overflow"] + pairer_dropped
        out["skipped_images"] = skipped
        return out

    def _warn(self, key: str, message: str, *args: Any) -> None:
        """Log a warning; after 10 of one kind, only every 100th (the counters keep the totals)."""
        with self._lock:
            self._warned[key] += 1
            n = self._warned[key]
        if n <= 10 or n % 100 == 0:
            suffix = f" ({n} so far)" if n > 10 else ""
            log.warning(message + suffix, *args)

    # --- receiving (roslibpy's thread) -------------------------------------------------------------

    def on_message(self, kind: Kind, message: Any) -> None:
        """A message from the ``kind`` topic: read its header, pair it, queue complete frames."""
        topic = self.config.lidar_topic if kind == "lidar" else self.config.camera_topic
        self._count(f"received_{kind}")
        try:
            stamp, frame_id = header_of(message, "PointCloud2" if kind == "lidar" else "image")
        except MessageError as exc:
            self._count("malformed")
            self._warn("malformed", "skipping a malformed message on %s: %s", topic, exc)
            return
        now = self.clock()
        item = Incoming(kind, stamp, frame_id, message, now)
        with self._lock:
            ready = self._pairer.add(item, now)
        self._enqueue(ready)

    def _enqueue(self, pairs: list[FramePair]) -> None:
        for pair in pairs:
            dropped = self._queue.put(pair)
            if dropped:
                self._count("dropped_overflow", dropped)
                self._warn("overflow", "the pipeline is behind: dropped the oldest queued frame")

    # --- the worker --------------------------------------------------------------------------------

    def step(self, timeout: float = 0.05) -> FrameOutput | None:
        """Release paired frames, take the oldest queued one and handle it (or drop it when too old).

        Returns what was published, or None when no frame was handled.
        """
        with self._lock:
            ready = self._pairer.poll(self.clock())
        self._enqueue(ready)
        got = self._queue.get(timeout=timeout)
        if got is None:
            return None
        pair, _ = got
        age = self.clock() - pair.received
        if age > self.config.max_age_s:
            self._count("dropped_stale")
            self._warn("stale", "dropped frame %s: %.2f s old (limit %.2f s)", pair.stamp, age, self.config.max_age_s)
            return None
        return self.handle(pair)

    def handle(self, pair: FramePair) -> FrameOutput | None:
        """Decode, run and publish one frame; malformed parts are skipped, errors logged and counted."""
        out, problems = process_pair(pair, self.processor, self._options)
        for problem in problems:
            self._count(problem.kind)
            topic = {"lidar": self.config.lidar_topic, "camera": self.config.camera_topic}.get(problem.source)
            self._warn(problem.kind, "%s%s", f"{topic}: " if topic else "", problem.message)
        if out is None:
            return None
        for name, msg in out.messages.items():
            self._publish(name, msg)
        self._count("processed")
        if self.listener is not None:
            self.listener(out)
        return out

    def _publish(self, name: str, msg: dict[str, Any]) -> None:
        topic = self._publishers.get(name)
        if topic is None or not self.connected:
            self._count("not_published")
            return
        topic.publish(to_rosbridge(msg, self.config.version))
        self._count("published")

    def _run_worker(self) -> None:
        while not self._stopping.is_set():
            try:
                self.step(timeout=0.05)
            except Exception:  # never let the worker die silently
                log.exception("unexpected error in the ROS bridge worker")
                self._count("failed")

    # --- connection (the I/O shell) ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        ros = self._ros
        return ros is not None and self._connected.is_set() and bool(ros.is_connected)

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected (True) or ``timeout`` seconds pass (False)."""
        return self._connected.wait(timeout)

    def _on_ready(self, proto: Any) -> None:
        if self._stopping.is_set():
            if proto is not None:
                proto.send_close()  # a reconnection attempt that finished after stop()
            return
        self._count("connections")
        n = self.stats()["connections"]
        self._connected.set()
        if n == 1:
            log.info("connected to rosbridge at %s", self.config.url)
        else:
            log.info("reconnected to rosbridge at %s (connection %d)", self.config.url, n)

    def _on_close(self, _proto: Any) -> None:
        self._connected.clear()
        self._closed.set()
        if self._stopping.is_set():
            return
        self._count("disconnections")
        log.warning(
            "lost the rosbridge connection to %s; reconnecting (backoff %.1f..%.1f s)",
            self.config.url,
            self.config.reconnect_min_s,
            self.config.reconnect_max_s,
        )

    def start(self) -> RosBridge:
        """Connect (in the background, retrying with backoff), subscribe, advertise, start the worker."""
        if self._ros is not None:
            raise RuntimeError("the bridge is already started")
        import roslibpy
        from roslibpy.comm import select_factory

        factory = select_factory(self.config.transport)
        factory.set_initial_delay(self.config.reconnect_min_s)
        factory.set_max_delay(self.config.reconnect_max_s)
        self._stopping.clear()
        ros = roslibpy.Ros(self.config.url, transport=self.config.transport)
        self._ros = ros
        ros.on("ready", self._on_ready)
        ros.on("close", self._on_close)
        for kind, topic in (("lidar", self.config.lidar_topic), ("camera", self.config.camera_topic)):
            if not topic:
                continue
            sub = roslibpy.Topic(ros, topic, self.config.input_type(kind), queue_length=1)  # type: ignore[arg-type]
            sub.subscribe(lambda msg, kind=kind: self.on_message(kind, msg))
            self._subscriptions.append(sub)
            log.info("subscribed to %s (%s)", topic, self.config.input_type(kind))  # type: ignore[arg-type]
        for name, topic in self.config.enabled_outputs().items():
            msg_type = self._dialect.type_name(OUTPUT_TYPES[name])
            pub = roslibpy.Topic(ros, topic, msg_type, queue_size=2)
            pub.advertise()
            self._publishers[name] = pub
            log.info("publishing %s on %s (%s)", name, topic, msg_type)
        self._worker = threading.Thread(target=self._run_worker, name="perception-ros-worker", daemon=True)
        self._worker.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker, unsubscribe, unadvertise and close the connection (no reconnection)."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.join(timeout)
            self._worker = None
        ros, self._ros = self._ros, None
        if ros is None:
            return
        if ros.is_connected:
            for sub in self._subscriptions:
                sub.unsubscribe()
            for pub in self._publishers.values():
                pub.unadvertise()
            self._closed.clear()
            try:
                ros.close(timeout)
                # wait for the close handshake: it goes out after the results still being sent, so a
                # process that exits next does not cut off its last messages
                self._closed.wait(timeout)
            except Exception as exc:  # a connection dropping while closing is fine
                log.debug("closing the rosbridge connection: %s", exc)
        # roslibpy's asyncio transport keeps retrying a connection that never came up; tell it to stop
        if hasattr(ros.factory, "_stop"):
            ros.factory._stop = True
        self._subscriptions.clear()
        self._publishers.clear()
        self._connected.clear()

    def run(self, duration_s: float | None = None, max_frames: int | None = None, stats_every_s: float = 30.0) -> None:
        """Start, then block until Ctrl-C, ``duration_s`` seconds or ``max_frames`` processed frames; stop."""
        self.start()
        log.info("connecting to rosbridge at %s", self.config.url)
        t0 = last_stats = last_waiting = time.monotonic()
        try:
            while True:
                time.sleep(0.05)
                now = time.monotonic()
                if duration_s is not None and now - t0 >= duration_s:
                    break
                if max_frames is not None and self.stats()["processed"] >= max_frames:
                    break
                if not self.connected and now - last_waiting >= 10.0:
                    last_waiting = now
                    log.warning("not connected to rosbridge at %s; still trying", self.config.url)
                if stats_every_s > 0 and now - last_stats >= stats_every_s:
                    last_stats = now
                    log.info("stats: %s", format_stats(self.stats()))
        finally:
            self.stop()


def format_stats(stats: Mapping[str, int]) -> str:
    """The counters as one line."""
    return ", ".join(f"{k} {v}" for k, v in stats.items())


__all__ = [
    "DEFAULT_OUTPUT_TOPICS",
    "BridgeConfig",
    "FrameOutput",
    "Processor",
    "RemoteProcessor",
    "RosBridge",
    "check_rosbridge_url",
    "format_stats",
    "local_processor",
]
