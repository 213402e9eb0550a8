"""Result messages (ROS 1 / ROS 2), stamp pairing and the bridge's core, without a network.

The result messages are checked two ways: as rosbags messages of independently transcribed vision_msgs
definitions (serialised by rosbags), and as rosbridge JSON read back the way a rosbridge server reads it.
The bridge core runs with a fake clock and a fake processor (no models, no connection).
"""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="checking messages needs the [ros] extra (rosbags)")


from perception.camera.boxes import Detection2D
from perception.lidar.clustering import Box3D, Instance
from perception.pipeline import Frame, PerceptionResult
from perception.ros.bridge import BridgeConfig, RemoteProcessor, RosBridge, check_rosbridge_url
from perception.ros.messages import Stamp, make_header, points_to_pointcloud2, rgb_to_compressed_image
from perception.ros.results import (
    RosDialect,
    parse_type_overrides,
    result_from_service,
    result_messages,
    to_rosbridge,
)
from perception.ros.sync import Incoming, StampPairer
from perception.ros.typedefs import dict_to_rosbags, output_typestore

from .test_ros_bridge import VISION_MSGS as VISION_MSGS_ROS2
from .test_ros_bridge import VISION_MSGS_ROS1, reference_store


def fake_result(points: np.ndarray | None, with_image: bool) -> PerceptionResult:
    result = PerceptionResult("f", 0.0)
    if with_image:
        result.detections = [
            Detection2D(0, "car", 0.9, 10.0, 20.0, 110.0, 70.0),
            Detection2D(1, "pedestrian", 0.6, 300.0, 50.0, 320.0, 120.0),
        ]
        result.image_size = (640, 480)
    if points is not None:
        n = len(points)
        result.labels = (points[:, 0] > 0).astype(np.int64)
        result.scores = np.full(n, 0.5, np.float32)
        idx = np.flatnonzero(result.labels)[:5]
        result.instances = [
            Instance(1, 1, len(idx), idx, points[idx, :3].mean(axis=0).astype(np.float64),
                     Box3D(5.0, 1.0, -0.5, 4.2, 1.8, 1.5, math.pi / 6), 0.8)
        ]  # fmt: skip
    return result


POINTS = np.array([[1, 2, 3, 0.5], [-1, 0, 0, 0.1], [2, 2, 2, 1.0], [3, 0, 1, 0.0]], np.float32)
LIDAR_HDR = (Stamp(100, 5), "velodyne")
CAMERA_HDR = (Stamp(100, 20_000_005), "camera")


@pytest.mark.parametrize("version", [1, 2])
def test_result_messages_are_valid_messages_of_the_published_vision_msgs(version):
    msgs = result_messages(fake_result(POINTS, True), version=version, points=POINTS,
                           lidar_header=LIDAR_HDR, camera_header=CAMERA_HDR)  # fmt: skip
    assert set(msgs) == {"detections_2d", "detections_3d", "labelled_points", "markers"}
    store = reference_store(version)
    types = {
        "detections_2d": "vision_msgs/msg/Detection2DArray",
        "detections_3d": "vision_msgs/msg/Detection3DArray",
        "labelled_points": "sensor_msgs/msg/PointCloud2",
        "markers": "visualization_msgs/msg/MarkerArray",
    }
    objs = {}
    for name, msgtype in types.items():
        objs[name] = dict_to_rosbags(store, msgtype, msgs[name])
        raw = store.serialize_ros1(objs[name], msgtype) if version == 1 else store.serialize_cdr(objs[name], msgtype)
        assert len(raw) > 0
    d2 = objs["detections_2d"]
    assert d2.header.stamp.sec == 100 and d2.header.stamp.nanosec == 20_000_005 and d2.header.frame_id == "camera"
    first = d2.detections[0]
    if version == 1:
        assert (first.bbox.center.x, first.bbox.center.y, first.bbox.size_x) == (60.0, 45.0, 100.0)
        assert first.results[0].id == 1 and first.results[0].score == pytest.approx(0.9)
        assert d2.detections[1].results[0].id == 2  # pedestrian: DESIGN.md label 2
    else:
        assert (first.bbox.center.position.x, first.bbox.center.position.y, first.bbox.size_y) == (60.0, 45.0, 50.0)
        assert first.results[0].hypothesis.class_id == "car" and first.id == "0"
    d3 = objs["detections_3d"].detections[0]
    assert objs["detections_3d"].header.frame_id == "velodyne"
    assert (d3.bbox.center.position.x, d3.bbox.size.x, d3.bbox.size.y, d3.bbox.size.z) == (5.0, 4.2, 1.8, 1.5)
    q = d3.bbox.center.orientation
    assert 2 * math.atan2(q.z, q.w) == pytest.approx(math.pi / 6) and q.x == q.y == 0
    cloud = objs["labelled_points"]
    assert cloud.width == 4 and cloud.point_step == 20 and cloud.header.stamp.nanosec == 5
    raw = cloud.data.view(np.uint8).tobytes()
    rows = np.frombuffer(raw, np.dtype([("xyzi", "<f4", 4), ("label", "<u2"), ("instance", "<u2")]))
    np.testing.assert_array_equal(rows["xyzi"], POINTS)
    assert rows["label"].tolist() == [1, 0, 1, 1] and rows["instance"].tolist() == [1, 0, 1, 1]
    markers = objs["markers"].markers
    assert [m.action for m in markers] == [3, 0, 0] and [m.type for m in markers[1:]] == [1, 9]
    assert markers[1].scale.x == 4.2 and markers[2].text.startswith("car #1")


def test_the_package_vision_msgs_match_the_reference_transcription():
    for version in (1, 2):
        ours, ref = output_typestore(version), reference_store(version)
        for name in VISION_MSGS_ROS1 if version == 1 else VISION_MSGS_ROS2:
            assert ours.fielddefs[name] == ref.fielddefs[name], name


def test_rosbridge_json_uses_each_versions_time_and_base64():
    msgs = result_messages(fake_result(POINTS, False), version=1, points=POINTS, lidar_header=LIDAR_HDR)
    ros1 = to_rosbridge(msgs["labelled_points"], 1)
    assert ros1["header"]["stamp"] == {"secs": 100, "nsecs": 5}
    assert base64.b64decode(ros1["data"]) == msgs["labelled_points"]["data"]
    ros2 = to_rosbridge(msgs["markers"], 2)
    assert ros2["markers"][1]["lifetime"] == {"sec": 0, "nanosec": 0}
    assert to_rosbridge({"a": np.float32(1.5), "b": np.arange(3, dtype=np.int32)}, 2) == {"a": 1.5, "b": [0, 1, 2]}


def test_lidar_outputs_only_with_a_scan_and_camera_outputs_only_with_an_image():
    cam = result_messages(fake_result(None, True), version=2, camera_header=CAMERA_HDR)
    assert set(cam) == {"detections_2d"}
    lidar = result_messages(fake_result(POINTS, False), version=2, points=POINTS, lidar_header=LIDAR_HDR,
                            outputs=("labelled_points",))  # fmt: skip
    assert set(lidar) == {"labelled_points"}
    empty = result_messages(PerceptionResult("e", 0.0), version=2, points=np.zeros((0, 4), np.float32),
                            lidar_header=LIDAR_HDR)  # fmt: skip
    assert empty["labelled_points"]["width"] == 0 and empty["detections_3d"]["detections"] == []
    assert len(empty["markers"]["markers"]) == 1  # DELETEALL only
    with pytest.raises(ValueError, match="unknown outputs"):
        result_messages(PerceptionResult("e", 0.0), version=2, outputs=("boxes",))


def test_type_names_per_version_and_overrides():
    assert RosDialect(1).type_name("vision_msgs/Detection2DArray") == "vision_msgs/Detection2DArray"
    assert RosDialect(2).type_name("sensor_msgs/PointCloud2") == "sensor_msgs/msg/PointCloud2"
    overrides = parse_type_overrides(["sensor_msgs/PointCloud2=my_msgs/Cloud"])
    assert RosDialect(2, overrides).type_name("sensor_msgs/PointCloud2") == "my_msgs/Cloud"
    for bad, message in (("nonsense", "KEY=TYPE"), ("std_msgs/String=x/y", "unknown key")):
        with pytest.raises(ValueError, match=message):
            parse_type_overrides([bad])
    with pytest.raises(ValueError, match="1 or 2"):
        RosDialect(3)  # type: ignore[arg-type]


def test_a_service_result_dict_becomes_the_same_result():
    result = fake_result(POINTS, True)
    back = result_from_service(result.to_dict(include_labels=True, include_point_indices=True))
    assert back.detections == result.detections
    np.testing.assert_array_equal(back.labels, result.labels)
    inst, ref = back.instances[0], result.instances[0]
    assert (inst.id, inst.class_id, inst.box, inst.score) == (ref.id, ref.class_id, ref.box, pytest.approx(ref.score))
    np.testing.assert_array_equal(inst.point_indices, ref.point_indices)


# --- pairing -------------------------------------------------------------------------------------------


def item(kind, sec, nsec=0, received=0.0):
    return Incoming(kind, Stamp(sec, nsec), kind, {"kind": kind, "sec": sec, "nsec": nsec}, received)


def test_one_sensor_gives_a_frame_per_message():
    pairer = StampPairer(lidar=True, camera=False)
    assert [p.lidar.stamp for p in pairer.add(item("lidar", 1), 0.0)] == [Stamp(1, 0)]
    with pytest.raises(ValueError, match="no camera topic"):
        pairer.add(item("camera", 1), 0.0)


def test_scans_pair_with_the_nearest_image_within_tolerance():
    pairer = StampPairer(lidar=True, camera=True, tolerance_s=0.05, max_wait_s=0.2)
    assert pairer.add(item("camera", 10, 0), 0.0) == []
    assert pairer.add(item("camera", 10, 30_000_000), 0.0) == []
    assert pairer.add(item("lidar", 10, 40_000_000), 0.0) == []  # an image after 10.04 may still come
    pairs = pairer.add(item("camera", 10, 45_000_000), 0.01)  # 10.045: nearer to 10.04 than 10.03 is
    assert len(pairs) == 1 and pairs[0].camera.stamp == Stamp(10, 45_000_000)
    assert pairer.skipped == 2  # 10.00 and 10.03 are used up
    # a scan with no image near it runs alone once it has waited
    assert pairer.add(item("lidar", 11, 0, received=1.0), 1.0) == []
    assert pairer.poll(1.1) == []
    alone = pairer.poll(1.25)
    assert len(alone) == 1 and alone[0].camera is None and alone[0].stamp == Stamp(11, 0)
    # an image far after the scan decides it at once, unpaired
    assert pairer.add(item("lidar", 12, 0, received=2.0), 2.0) == []
    late = pairer.add(item("camera", 12, 500_000_000, received=2.0), 2.0)
    assert len(late) == 1 and late[0].camera is None and pairer.pending() == (0, 1)
    assert pairer.paired == 3 and pairer.dropped == 0


def test_old_items_are_dropped_and_flush_decides_the_rest():
    pairer = StampPairer(lidar=True, camera=True, max_wait_s=10.0, max_age_s=1.0, max_pending=2)
    pairer.add(item("camera", 1, received=0.0), 0.0)
    pairer.add(item("lidar", 2, received=0.0), 0.0)
    assert pairer.poll(2.0) == [] and pairer.dropped == 2 and pairer.pending() == (0, 0)
    for k in range(3):
        pairer.add(item("lidar", 5 + k, received=3.0), 3.0)
    assert pairer.dropped == 3  # max_pending 2: the oldest scan went
    pairer.add(item("camera", 7, received=3.0), 3.0)  # pairs with the scan at 7, decides 6 unpaired
    assert pairer.pending() == (0, 0)
    pairer.add(item("lidar", 8, received=3.0), 3.0)
    pairer.add(item("camera", 4, received=3.0), 3.0)  # an old image: no use to the scan at 8
    flushed = pairer.flush()
    assert len(flushed) == 1 and flushed[0].camera is None and pairer.pending() == (0, 0)


# --- the bridge core (no connection) --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def cloud(points: np.ndarray, sec: int, frame_id: str = "velodyne") -> dict:
    msg = points_to_pointcloud2(
        make_header(Stamp(sec, 7), frame_id),
        {"x": points[:, 0], "y": points[:, 1], "z": points[:, 2], "intensity": points[:, 3]},
    )
    return to_rosbridge(msg, 1)  # fmt: skip


class FakeProcessor:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.fail_next = False

    def __call__(self, frame: Frame) -> PerceptionResult:
        self.frames.append(frame)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the service is down")
        return fake_result(frame.points, frame.image is not None)


def make_bridge(**overrides):
    config = BridgeConfig(url="ws://127.0.0.1:9", **overrides)
    clock, processor = Clock(), FakeProcessor()
    outputs = []
    bridge = RosBridge(config, processor, clock=clock, listener=outputs.append)
    return bridge, clock, processor, outputs


def test_bridge_core_processes_counts_and_keeps_stamps_and_frame_ids():
    bridge, _, processor, outputs = make_bridge(lidar_topic="/points", camera_topic=None, lidar_frame="base")
    bridge.on_message("lidar", cloud(POINTS, 50))
    out = bridge.step(timeout=0)
    assert out is not None and processor.frames[0].timestamp == pytest.approx(50.000000007)
    np.testing.assert_array_equal(processor.frames[0].points, POINTS)
    header = out.messages["labelled_points"]["header"]
    assert header["stamp"] == Stamp(50, 7) and header["frame_id"] == "base"  # the configured frame id
    stats = bridge.stats()
    assert stats["received_lidar"] == 1 and stats["processed"] == 1
    assert stats["not_published"] == 3 and stats["published"] == 0  # not connected: nothing queued for later
    assert bridge.step(timeout=0) is None and outputs == [out]


def test_frames_older_than_the_limit_are_dropped_not_processed():
    bridge, clock, processor, _ = make_bridge(lidar_topic="/points", max_age_s=1.0)
    bridge.on_message("lidar", cloud(POINTS, 1))
    clock.t = 1.5
    assert bridge.step(timeout=0) is None
    assert processor.frames == [] and bridge.stats()["dropped_stale"] == 1 and bridge.stats()["dropped"] == 1


def test_a_full_queue_drops_the_oldest_frame():
    bridge, _, processor, _ = make_bridge(lidar_topic="/points", queue_size=1)
    for sec in (1, 2, 3):
        bridge.on_message("lidar", cloud(POINTS, sec))
    assert bridge.step(timeout=0) is not None and bridge.step(timeout=0) is None
    assert [f.timestamp for f in processor.frames] == [pytest.approx(3.000000007)]
    assert bridge.stats()["dropped_overflow"] == 2


def test_malformed_messages_and_failures_are_counted_and_the_bridge_goes_on(caplog):
    bridge, clock, processor, _ = make_bridge(lidar_topic="/points", camera_topic="/cam/compressed")
    assert bridge.config.input_type("camera") == "sensor_msgs/msg/CompressedImage"
    bridge.on_message("lidar", {"no": "header"})
    bad = cloud(POINTS, 2)
    bad["point_step"] = 4
    bridge.on_message("lidar", bad)
    clock.t = 0.3  # no image came: the scan goes alone (and is malformed)
    assert bridge.step(timeout=0) is None
    processor.fail_next = True
    bridge.on_message("lidar", cloud(POINTS, 3))
    clock.t = 0.6
    assert bridge.step(timeout=0) is None
    rgb = np.full((4, 6, 3), 90, np.uint8)
    bridge.on_message("camera", to_rosbridge(rgb_to_compressed_image(make_header(Stamp(4, 10), "cam"), rgb, "png"), 2))
    bridge.on_message("lidar", cloud(POINTS, 4))
    out = bridge.step(timeout=0)
    assert out is not None and set(out.messages) == {"detections_2d", "detections_3d", "labelled_points", "markers"}
    np.testing.assert_array_equal(processor.frames[-1].image, rgb)
    assert out.messages["detections_2d"]["header"]["frame_id"] == "cam"
    stats = bridge.stats()
    assert (stats["malformed"], stats["failed"], stats["processed"]) == (2, 1, 1)
    assert "point_step 4" in caplog.text and "the service is down" in caplog.text


def test_a_scan_with_only_invalid_points_gives_empty_lidar_outputs():
    bridge, _, processor, _ = make_bridge(lidar_topic="/points")
    bridge.on_message("lidar", cloud(np.full((3, 4), np.nan, np.float32), 9))
    out = bridge.step(timeout=0)
    assert processor.frames == [] and out.messages["labelled_points"]["width"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "http://localhost:9090"}, "WebSocket URL"),
        ({"url": "ws://:9090"}, "WebSocket URL"),
        ({"url": "ws://host:99999"}, "bad port"),
        ({"url": "ws://h:1", "lidar_topic": None}, "LiDAR topic, a camera topic"),
        ({"url": "ws://h:1", "queue_size": 0}, "queue size"),
        ({"url": "ws://h:1", "output_topics": {"boxes": "/b"}}, "unknown outputs"),
        ({"url": "ws://h:1", "reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect"),
    ],
)
def test_bad_bridge_settings_are_refused_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BridgeConfig(**kwargs)


def test_service_urls():
    assert check_rosbridge_url("wss://robot.local:9090")
    with pytest.raises(ValueError, match="grpc://HOST:PORT"):
        RemoteProcessor("tcp://x:1")
