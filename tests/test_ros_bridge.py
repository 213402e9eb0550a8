"""The rosbridge client end to end against a rosbridge v2 protocol server that lives in this file.

:class:`FakeRosbridge` speaks the published rosbridge v2 protocol over a real WebSocket (``websockets``):
clients ``advertise``/``unadvertise`` topics with a type, ``publish`` JSON messages on advertised topics
(``uint8[]`` as base64 text), ``subscribe``/``unsubscribe`` with a type; the server forwards publications
to the subscribers of the topic (``{"op": "publish", "topic", "msg"}``) and answers protocol errors with
``{"op": "status", "level": "error"}``. Like rosbridge, it fills the fields a client leaves out with
their defaults and refuses fields the type does not have: every message a client publishes is turned
into a rosbags message of the advertised type (ROS 2 humble + vision_msgs 4.x, transcribed here
independently of the package) and serialised to CDR, so a structurally wrong message fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("roslibpy", reason="the ROS bridge needs the [ros] extra (roslibpy)")
pytest.importorskip("rosbags", reason="the ROS tests check messages with rosbags ([ros] extra)")

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import Nodetype
from websockets.asyncio.server import serve

from perception.pipeline import Frame, Pipeline
from perception.ros.bridge import BridgeConfig, RemoteProcessor, RosBridge, local_processor

from .test_pipeline import exported_models, models_root, shared_pipeline, synthetic_image

# --- a rosbridge v2 server -----------------------------------------------------------------------

# vision_msgs 4.x (ROS 2 humble), from the package's msg files
VISION_MSGS = {
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score",
    "vision_msgs/msg/ObjectHypothesisWithPose": "ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose",
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y",
    "vision_msgs/msg/BoundingBox3D": "geometry_msgs/Pose center\ngeometry_msgs/Vector3 size",
    "vision_msgs/msg/Detection2D": "std_msgs/Header header\nObjectHypothesisWithPose[] results\n"
    "BoundingBox2D bbox\nstring id",
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nDetection2D[] detections",
    "vision_msgs/msg/Detection3D": "std_msgs/Header header\nObjectHypothesisWithPose[] results\n"
    "BoundingBox3D bbox\nstring id",
    "vision_msgs/msg/Detection3DArray": "std_msgs/Header header\nDetection3D[] detections",
}

# vision_msgs 0.0.x (ROS 1 noetic), from the package's msg files
VISION_MSGS_ROS1 = {
    "vision_msgs/msg/ObjectHypothesisWithPose": "int64 id\nfloat64 score\ngeometry_msgs/PoseWithCovariance pose",
    "vision_msgs/msg/BoundingBox2D": "geometry_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y",
    "vision_msgs/msg/BoundingBox3D": "geometry_msgs/Pose center\ngeometry_msgs/Vector3 size",
    "vision_msgs/msg/Detection2D": "Header header\nObjectHypothesisWithPose[] results\nBoundingBox2D bbox\n"
    "sensor_msgs/Image source_img",
    "vision_msgs/msg/Detection2DArray": "Header header\nDetection2D[] detections",
    "vision_msgs/msg/Detection3D": "Header header\nObjectHypothesisWithPose[] results\nBoundingBox3D bbox\n"
    "sensor_msgs/PointCloud2 source_cloud",
    "vision_msgs/msg/Detection3DArray": "Header header\nDetection3D[] detections",
}


def reference_store(version: int):
    """rosbags' ROS 1 noetic or ROS 2 humble types plus vision_msgs as transcribed above."""
    store = get_typestore(Stores.ROS1_NOETIC if version == 1 else Stores.ROS2_HUMBLE)
    types: dict[str, Any] = {}
    for name, text in (VISION_MSGS_ROS1 if version == 1 else VISION_MSGS).items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


STORES = {1: reference_store(1), 2: reference_store(2)}
NUMPY = {"bool": np.bool_, "uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16}
NUMPY |= {"uint32": np.uint32, "int32": np.int32, "uint64": np.uint64, "int64": np.int64}
NUMPY |= {"float32": np.float32, "float64": np.float64}
TIME_TYPES = ("builtin_interfaces/msg/Time", "builtin_interfaces/msg/Duration")


def _ros2_name(name: str) -> str:
    parts = name.split("/")
    return name if len(parts) == 3 else f"{parts[0]}/msg/{parts[1]}"


def from_json(msgtype: str, value: Any, version: int = 2) -> Any:
    """A rosbridge JSON message as a rosbags message, the way rosbridge's populate_instance does it:
    missing fields get defaults, unknown fields and wrong kinds of values raise. ROS 1 times are
    ``{"secs", "nsecs"}``, ROS 2 times ``{"sec", "nanosec"}``."""
    store = STORES[version]
    msgtype = _ros2_name(msgtype)
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise TypeError(f"{msgtype}: expected an object, got {value!r}")
    if msgtype in TIME_TYPES and version == 1:
        if set(value) - {"secs", "nsecs"}:
            raise KeyError(f"a ROS 1 time has secs and nsecs, got {sorted(value)}")
        value = {"sec": value.get("secs", 0), "nanosec": value.get("nsecs", 0)}
    _, fields = store.fielddefs[msgtype]
    unknown = set(value) - {name for name, _ in fields}
    if unknown:
        raise KeyError(f"{msgtype} has no field(s) {sorted(unknown)}")
    kwargs = {}
    for name, (node, detail) in fields:
        item = value.get(name)
        if node == Nodetype.NAME:
            kwargs[name] = from_json(detail, item, version)
        elif node == Nodetype.BASE:
            kind = detail[0]
            if kind == "string":
                if item is not None and not isinstance(item, str):
                    raise TypeError(f"{msgtype}.{name}: expected a string, got {item!r}")
                kwargs[name] = item or ""
            elif kind == "bool":
                kwargs[name] = bool(item)
            else:
                if item is not None and (isinstance(item, bool) or not isinstance(item, int | float)):
                    raise TypeError(f"{msgtype}.{name}: expected a number, got {item!r}")
                if item is not None and kind not in ("float32", "float64") and not isinstance(item, int):
                    raise TypeError(f"{msgtype}.{name}: expected an integer, got {item!r}")
                kwargs[name] = (float if kind.startswith("float") else int)(item or 0)
        else:
            (sub_node, sub_detail), length = detail
            if sub_node == Nodetype.NAME:
                kwargs[name] = [from_json(sub_detail, v, version) for v in (item or [])]
            elif sub_detail[0] == "uint8" and isinstance(item, str):
                kwargs[name] = np.frombuffer(base64.b64decode(item, validate=True), np.uint8)
            else:
                default = np.zeros(length, NUMPY[sub_detail[0]]) if node == Nodetype.ARRAY else []
                kwargs[name] = np.asarray(item if item is not None else default, dtype=NUMPY[sub_detail[0]])
    return store.types[msgtype](**kwargs)


class FakeRosbridge:
    """A rosbridge v2 protocol server in a background thread (see the module docstring)."""

    def __init__(self, port: int = 0, version: int = 2) -> None:
        self.port = port
        self.version = version  # the ROS the server fronts: message layouts it accepts
        self.ops: list[tuple[str, str | None, str | None]] = []  # (op, topic, type) of every non-publish op
        self.advertised: dict[str, str] = {}  # topic -> type
        self.subscriptions: dict[str, dict[Any, str]] = {}  # topic -> {connection: type}
        self.received: dict[str, list[dict]] = {}  # topic -> messages clients published (JSON)
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._connections: set[Any] = set()

    # --- lifecycle
    def start(self) -> FakeRosbridge:
        ready = threading.Event()

        async def main() -> None:
            self._server = await serve(self._handler, "127.0.0.1", self.port, max_size=None, compression=None)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            await self._server.serve_forever()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            with contextlib.suppress(asyncio.CancelledError):
                self._loop.run_until_complete(main())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-rosbridge", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the fake rosbridge did not start"
        return self

    def kill(self) -> None:
        """Drop every connection without a closing handshake and stop listening (a crashed server)."""
        if self._thread is None or not self._thread.is_alive():
            return

        async def die() -> None:
            for ws in list(self._connections):
                ws.transport.abort()
            self._server.close(close_connections=False)  # serve_forever() returns, the thread ends

        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(die(), self._loop)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the fake rosbridge did not stop"
        with self._cond:
            self.advertised.clear()
            self.subscriptions.clear()
            self._connections.clear()

    # --- protocol
    async def _handler(self, ws: Any) -> None:
        self._connections.add(ws)
        try:
            async for raw in ws:
                try:
                    await self._dispatch(ws, json.loads(raw))
                except Exception as exc:  # a protocol error is answered, like rosbridge does
                    message = f"{type(exc).__name__}: {exc}"
                    with self._cond:
                        self.errors.append(message)
                        self._cond.notify_all()
                    await ws.send(json.dumps({"op": "status", "level": "error", "msg": message}))
        except Exception:
            pass
        finally:
            with self._cond:
                self._connections.discard(ws)
                for subs in self.subscriptions.values():
                    subs.pop(ws, None)
                self._cond.notify_all()

    async def _dispatch(self, ws: Any, doc: dict) -> None:
        op = doc["op"]
        topic = doc.get("topic")
        with self._cond:
            if op != "publish":
                self.ops.append((op, topic, doc.get("type")))
            if op == "advertise":
                known = self.advertised.get(topic)
                if known is not None and _ros2_name(known) != _ros2_name(doc["type"]):
                    raise ValueError(f"{topic} is advertised as {known}, not {doc['type']}")
                self.advertised[topic] = doc["type"]
            elif op == "unadvertise":
                self.advertised.pop(topic, None)
            elif op == "subscribe":
                self.subscriptions.setdefault(topic, {})[ws] = doc["type"]
            elif op == "unsubscribe":
                self.subscriptions.get(topic, {}).pop(ws, None)
            elif op == "publish":
                if topic not in self.advertised:
                    raise ValueError(f"cannot publish on {topic}: not advertised")
                msgtype = self.advertised[topic]
                obj = from_json(msgtype, doc["msg"], self.version)
                store = STORES[self.version]  # a well-formed message of that type:
                (store.serialize_ros1 if self.version == 1 else store.serialize_cdr)(obj, _ros2_name(msgtype))
                self.received.setdefault(topic, []).append(doc["msg"])
            else:
                raise ValueError(f"unsupported op {op!r}")
            self._cond.notify_all()

    def inject(self, topic: str, msgtype: str, msg: dict) -> int:
        """Publish ``msg`` to the subscribers of ``topic`` as a ROS node would (returns how many got it)."""
        payload = json.dumps({"op": "publish", "topic": topic, "msg": msg})
        with self._cond:
            targets = [ws for ws, t in self.subscriptions.get(topic, {}).items() if _ros2_name(t) == msgtype]
        assert self._loop is not None
        for ws in targets:
            asyncio.run_coroutine_threadsafe(ws.send(payload), self._loop).result(10)
        return len(targets)

    def wait(self, predicate, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True


# --- messages a ROS node would publish (JSON, built here with numpy only) -------------------------


def cloud_json(points: np.ndarray, sec: int, nanosec: int, frame_id: str = "velodyne") -> dict:
    """A PointCloud2 of x, y, z, intensity (0..255 float, as Velodyne drivers) and ring, 22-byte points."""
    n = len(points)
    dtype = np.dtype(
        {"names": ["x", "y", "z", "intensity", "ring"], "formats": ["<f4"] * 4 + ["<u2"], "offsets": [0, 4, 8, 12, 16],
         "itemsize": 22}
    )  # fmt: skip
    packed = np.zeros(n, dtype)
    for k, name in enumerate(("x", "y", "z")):
        packed[name] = points[:, k]
    packed["intensity"] = points[:, 3] * 255.0
    packed["ring"] = np.arange(n) % 64
    fields = [
        {"name": name, "offset": off, "datatype": 7, "count": 1}
        for name, off in (("x", 0), ("y", 4), ("z", 8), ("intensity", 12))
    ] + [{"name": "ring", "offset": 16, "datatype": 4, "count": 1}]
    return {
        "header": {"stamp": {"sec": sec, "nanosec": nanosec}, "frame_id": frame_id},
        "height": 1,
        "width": n,
        "fields": fields,
        "is_bigendian": False,
        "point_step": 22,
        "row_step": 22 * n,
        "data": base64.b64encode(packed.tobytes()).decode(),
        "is_dense": True,
    }


def image_json(rgb: np.ndarray, sec: int, nanosec: int, frame_id: str = "camera") -> dict:
    """A bgr8 Image."""
    h, w, _ = rgb.shape
    return {
        "header": {"stamp": {"sec": sec, "nanosec": nanosec}, "frame_id": frame_id},
        "height": h,
        "width": w,
        "encoding": "bgr8",
        "is_bigendian": 0,
        "step": w * 3,
        "data": base64.b64encode(np.ascontiguousarray(rgb[:, :, ::-1]).tobytes()).decode(),
    }


def decode_labelled(msg: dict) -> np.ndarray:
    """The labelled cloud's bytes through a dtype built from its fields (checked against the expected layout)."""
    names = [f["name"] for f in msg["fields"]]
    assert names == ["x", "y", "z", "intensity", "label", "instance"]
    assert [f["datatype"] for f in msg["fields"]] == [7, 7, 7, 7, 4, 4] and msg["point_step"] == 20
    dtype = np.dtype({"names": names, "formats": ["<f4"] * 4 + ["<u2"] * 2,
                      "offsets": [f["offset"] for f in msg["fields"]], "itemsize": 20})  # fmt: skip
    return np.frombuffer(base64.b64decode(msg["data"]), dtype)


# --- fixtures ----------------------------------------------------------------------------------------

LIDAR, CAMERA = "/velodyne_points", "/camera/image_raw"
OUT = {
    "detections_2d": "/perception/detections_2d",
    "detections_3d": "/perception/detections_3d",
    "labelled_points": "/perception/labelled_points",
    "markers": "/perception/markers",
}
TYPES = {
    "detections_2d": "vision_msgs/msg/Detection2DArray",
    "detections_3d": "vision_msgs/msg/Detection3DArray",
    "labelled_points": "sensor_msgs/msg/PointCloud2",
    "markers": "visualization_msgs/msg/MarkerArray",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return exported_models(models_root(tmp_path_factory))


@pytest.fixture(scope="module")
def pipeline(models) -> Pipeline:
    return shared_pipeline(*models)


@pytest.fixture(scope="module")
def scan(street_scan) -> np.ndarray:
    """The front half of the street scan (fewer points, same structure), with some NaN points."""
    pts = street_scan.points[street_scan.points[:, 0] > 0].copy()
    pts[::1000, :3] = np.nan  # missing returns: dropped by the bridge
    return pts


def wait_until(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_the_bridge_answers_scans_and_images_with_stamped_results_and_survives_a_server_restart(pipeline, scan):
    server = FakeRosbridge().start()
    config = BridgeConfig(
        url=f"ws://127.0.0.1:{server.port}",
        lidar_topic=LIDAR,
        camera_topic=CAMERA,
        version=2,
        pair_tolerance_s=0.05,
        max_age_s=30.0,  # generous: the CI machine is slow; the age limit has its own unit test
        queue_size=4,
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
    )
    bridge = RosBridge(config, local_processor(pipeline)).start()
    try:
        assert bridge.wait_connected(20), "the bridge did not connect"
        assert server.wait(lambda: len(server.advertised) == 4 and LIDAR in server.subscriptions
                           and CAMERA in server.subscriptions, 20)  # fmt: skip
        assert {n: server.advertised[OUT[n]] for n in TYPES} == TYPES
        assert next(iter(server.subscriptions[LIDAR].values())) == "sensor_msgs/msg/PointCloud2"
        assert next(iter(server.subscriptions[CAMERA].values())) == "sensor_msgs/msg/Image"

        images = [synthetic_image(seed=k) for k in range(2)]
        stamps = [(1_700_000_000 + k, 123_456_789 + k) for k in range(2)]
        for k, (sec, nsec) in enumerate(stamps):
            # the image 20 ms after the scan pairs with it; one 400 ms off does not
            assert server.inject(CAMERA, "sensor_msgs/msg/Image", image_json(images[k], sec, nsec + 20_000_000)) == 1
            assert server.inject(LIDAR, "sensor_msgs/msg/PointCloud2", cloud_json(scan, sec, nsec)) == 1
        assert server.wait(lambda: all(len(server.received.get(OUT[n], [])) >= 2 for n in OUT), 90), (
            bridge.stats(),
            server.errors,
        )
        assert server.errors == []

        valid = np.isfinite(scan[:, :3]).all(axis=1)
        expected = pipeline.run(Frame("x", 0.0, image=images[0], points=scan[valid]))
        for k, (sec, nsec) in enumerate(stamps):
            for name in ("detections_3d", "labelled_points"):
                header = server.received[OUT[name]][k]["header"]
                assert header == {"stamp": {"sec": sec, "nanosec": nsec}, "frame_id": "velodyne"}
            d2 = server.received[OUT["detections_2d"]][k]
            assert d2["header"] == {"stamp": {"sec": sec, "nanosec": nsec + 20_000_000}, "frame_id": "camera"}
            markers = server.received[OUT["markers"]][k]["markers"]
            assert markers[0]["action"] == 3 and markers[0]["header"]["stamp"] == {"sec": sec, "nanosec": nsec}
        cloud = decode_labelled(server.received[OUT["labelled_points"]][0])
        assert len(cloud) == valid.sum()
        np.testing.assert_array_equal(cloud["x"], scan[valid, 0])
        np.testing.assert_allclose(cloud["intensity"], scan[valid, 3], atol=1e-6)
        np.testing.assert_array_equal(cloud["label"], expected.labels)
        d2 = server.received[OUT["detections_2d"]][0]["detections"]
        assert len(d2) == len(expected.detections)
        first = expected.detections[0]
        assert d2[0]["bbox"]["center"]["position"]["x"] == pytest.approx((first.x1 + first.x2) / 2)
        assert d2[0]["results"][0]["hypothesis"]["class_id"] == first.class_name
        d3 = server.received[OUT["detections_3d"]][0]["detections"]
        assert [d["id"] for d in d3] == [str(i.id) for i in expected.instances]
        assert len(markers) == 1 + 2 * len(expected.instances)

        # malformed messages are skipped, the bridge keeps going
        bad = cloud_json(scan[:100], 1_700_000_010, 0)
        bad["point_step"] = 8  # x, y, z, intensity do not fit
        short = cloud_json(scan[:100], 1_700_000_011, 0)
        short["data"] = base64.b64encode(base64.b64decode(short["data"])[:-10]).decode()
        odd = image_json(images[0], 1_700_000_011, 0)
        odd["encoding"] = "yuv422"
        server.inject(LIDAR, "sensor_msgs/msg/PointCloud2", bad)
        server.inject(CAMERA, "sensor_msgs/msg/Image", odd)
        server.inject(LIDAR, "sensor_msgs/msg/PointCloud2", short)
        assert wait_until(lambda: bridge.stats()["malformed"] == 3, 60), bridge.stats()

        # the server dies; the bridge notices, reconnects when it is back, subscribes again and resumes
        before = len(server.received[OUT["labelled_points"]])
        port = server.port
        server.kill()
        assert wait_until(lambda: not bridge.connected and bridge.stats()["disconnections"] == 1, 20)
        time.sleep(0.5)  # a reconnection attempt or two fail while it is down
        server = FakeRosbridge(port).start()
        assert server.wait(lambda: LIDAR in server.subscriptions and len(server.advertised) == 4, 30), bridge.stats()
        assert wait_until(lambda: bridge.connected and bridge.stats()["connections"] == 2, 20), bridge.stats()
        sec, nsec = 1_700_000_020, 5
        server.inject(CAMERA, "sensor_msgs/msg/Image", image_json(images[1], sec, nsec))
        server.inject(LIDAR, "sensor_msgs/msg/PointCloud2", cloud_json(scan, sec, nsec))
        assert server.wait(lambda: all(len(server.received.get(OUT[n], [])) >= 1 for n in OUT), 90), bridge.stats()
        assert server.received[OUT["labelled_points"]][0]["header"]["stamp"] == {"sec": sec, "nanosec": nsec}
        assert server.received[OUT["detections_2d"]][0]["header"]["stamp"] == {"sec": sec, "nanosec": nsec}
        assert server.errors == []

        stats = bridge.stats()
        assert stats["received_lidar"] == 5 and stats["received_camera"] == 4
        assert stats["processed"] == before + 1 and stats["malformed"] == 3 and stats["failed"] == 0
    finally:
        bridge.stop()
        with contextlib.suppress(Exception):
            server.kill()


def test_frames_can_run_on_the_perception_service_over_grpc(pipeline, models, scan):
    from perception.ros.messages import Stamp
    from perception.ros.results import result_messages
    from perception.service.grpc_server import GrpcServer
    from perception.service.metrics import Metrics
    from perception.service.settings import Settings

    settings = Settings(host="127.0.0.1", grpc_port=0, providers="cpu", seg_model=models[0], det_model=models[1])
    server = GrpcServer(settings, pipeline, Metrics()).start()
    remote = RemoteProcessor(f"grpc://127.0.0.1:{server.port}")
    try:
        points = scan[np.isfinite(scan[:, :3]).all(axis=1)][:20_000]
        frame = Frame("f", 12.5, image=synthetic_image(seed=3), points=points)
        got, want = remote(frame), pipeline.run(frame)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert [d.class_name for d in got.detections] == [d.class_name for d in want.detections]
        np.testing.assert_allclose([d.box for d in got.detections], [d.box for d in want.detections], atol=1e-3)
        assert [i.id for i in got.instances] == [i.id for i in want.instances]
        for a, b in zip(got.instances, want.instances, strict=True):
            np.testing.assert_array_equal(a.point_indices, b.point_indices)
        header = (Stamp(12, 500_000_000), "velodyne")
        ours = result_messages(got, version=2, points=points, lidar_header=header, camera_header=header)
        theirs = result_messages(want, version=2, points=points, lidar_header=header, camera_header=header)
        assert ours["labelled_points"]["data"] == theirs["labelled_points"]["data"]
    finally:
        remote.close()
        server.stop(0).wait()


def test_the_perception_ros_command_runs_against_a_ros1_rosbridge_server(models, scan):
    server = FakeRosbridge(version=1).start()
    try:

        def publish_when_subscribed() -> None:
            if server.wait(lambda: LIDAR in server.subscriptions and OUT["labelled_points"] in server.advertised, 60):
                server.inject(LIDAR, "sensor_msgs/msg/PointCloud2", cloud_json(scan[:5000], 1_700_000_100, 9))

        feeder = threading.Thread(target=publish_when_subscribed, daemon=True)
        feeder.start()
        args = ["--rosbridge", f"ws://127.0.0.1:{server.port}", "--lidar-topic", LIDAR, "--seg-model", str(models[0]),
                "--providers", "cpu", "--ros-version", "1", "--max-frames", "1", "--duration", "90",
                "--markers-topic", ""]  # fmt: skip
        res = subprocess.run([sys.executable, "-m", "perception.cli", "ros", *args], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        feeder.join(5)
        assert res.returncode == 0, res.stderr
        assert "processed 1" in res.stdout and "received_lidar 1" in res.stdout
        assert "connected to rosbridge" in res.stderr
        # ROS 1 type names and stamps; the markers output is off; everything undone at the end
        assert server.errors == []
        assert ("subscribe", LIDAR, "sensor_msgs/PointCloud2") in server.ops
        assert ("advertise", OUT["detections_3d"], "vision_msgs/Detection3DArray") in server.ops
        assert ("unsubscribe", LIDAR, None) in server.ops and ("unadvertise", OUT["detections_3d"], None) in server.ops
        assert OUT["markers"] not in {topic for _, topic, _ in server.ops}
        msg = server.received[OUT["labelled_points"]][0]
        assert msg["header"] == {"stamp": {"secs": 1_700_000_100, "nsecs": 9}, "frame_id": "velodyne"}
        assert OUT["markers"] not in server.received and len(server.received[OUT["detections_3d"]]) == 1
    finally:
        server.kill()
