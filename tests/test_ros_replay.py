"""Bag replay end to end: bags written with rosbags (ROS 1, ROS 2 sqlite3 and MCAP), replayed through a
pipeline, results written to a new bag and read back with rosbags; and the ``perception replay`` /
``perception ros`` commands as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="bag replay needs the [ros] extra (rosbags)")

from rosbags.highlevel import AnyReader
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Writer2
from rosbags.typesys import Stores, get_typestore
from typer.testing import CliRunner

from perception.cli import app
from perception.pipeline import Frame, PerceptionResult
from perception.ros.replay import bag_topics, replay_bag

from .test_pipeline import exported_models, models_root, shared_pipeline, synthetic_image
from .test_ros_results import fake_result

ROS1 = get_typestore(Stores.ROS1_NOETIC)
ROS2 = get_typestore(Stores.ROS2_HUMBLE)
LIDAR, CAMERA = "/kitti/velo", "/kitti/camera_color_left/image_raw"
BASE_SEC = 1_317_000_000


def header(store, sec: int, nsec: int, frame_id: str):
    T = store.types
    kwargs = {"stamp": T["builtin_interfaces/msg/Time"](sec, nsec), "frame_id": frame_id}
    if store is ROS1:
        kwargs["seq"] = 0
    return T["std_msgs/msg/Header"](**kwargs)


def cloud_msg(store, points: np.ndarray, sec: int, nsec: int):
    """x, y, z, intensity float32 and a 4-byte pad: point_step 20."""
    T = store.types
    packed = np.zeros((len(points), 5), np.float32)
    packed[:, :4] = points
    return T["sensor_msgs/msg/PointCloud2"](
        header=header(store, sec, nsec, "velo_link"),
        height=1,
        width=len(points),
        fields=[
            T["sensor_msgs/msg/PointField"](name=n, offset=4 * k, datatype=7, count=1)
            for k, n in enumerate(("x", "y", "z", "intensity"))
        ],
        is_bigendian=False,
        point_step=20,
        row_step=20 * len(points),
        data=packed.view(np.uint8).reshape(-1),
        is_dense=True,
    )


def image_msg(store, rgb: np.ndarray, sec: int, nsec: int):
    T = store.types
    return T["sensor_msgs/msg/Image"](
        header=header(store, sec, nsec, "camera_color_left"),
        height=rgb.shape[0],
        width=rgb.shape[1],
        encoding="rgb8",
        is_bigendian=0,
        step=rgb.shape[1] * 3,
        data=rgb.reshape(-1),
    )


def write_bag(path: Path, kind: str, scans: list[np.ndarray], images: list[np.ndarray], extra_bad: bool = False):
    """ROS 1 (kind "ros1"), ROS 2 sqlite3 ("sqlite3") or MCAP ("mcap"): per frame k an image 10 ms after
    the scan, recorded 50 ms after the scan's stamp, plus a string topic that replay ignores."""
    store = ROS1 if kind == "ros1" else ROS2
    if kind == "ros1":
        writer = Writer1(path)
    else:
        writer = Writer2(
            path, version=9, storage_plugin=StoragePlugin.MCAP if kind == "mcap" else StoragePlugin.SQLITE3
        )
    serialize = store.serialize_ros1 if kind == "ros1" else store.serialize_cdr
    with writer:
        c_lidar = writer.add_connection(LIDAR, "sensor_msgs/msg/PointCloud2", typestore=store)
        c_cam = writer.add_connection(CAMERA, "sensor_msgs/msg/Image", typestore=store)
        c_str = writer.add_connection("/note", "std_msgs/msg/String", typestore=store)
        for k, (pts, rgb) in enumerate(zip(scans, images, strict=True)):
            sec, nsec = BASE_SEC + k, 100_000_000
            t = sec * 10**9 + nsec + 50_000_000
            writer.write(c_lidar, t, serialize(cloud_msg(store, pts, sec, nsec), "sensor_msgs/msg/PointCloud2"))
            writer.write(
                c_cam, t + 1, serialize(image_msg(store, rgb, sec, nsec + 10_000_000), "sensor_msgs/msg/Image")
            )
            writer.write(c_str, t + 2, serialize(store.types["std_msgs/msg/String"](data="hi"), "std_msgs/msg/String"))
        if extra_bad:
            bad = cloud_msg(store, scans[0], BASE_SEC + 50, 0)
            bad.point_step = 8  # x, y, z do not fit
            writer.write(c_lidar, (BASE_SEC + 50) * 10**9, serialize(bad, "sensor_msgs/msg/PointCloud2"))
            writer.write(c_cam, (BASE_SEC + 50) * 10**9 + 1, b"\x00\x01")  # truncated: does not deserialise


def read_bag(path: Path) -> dict[str, list[tuple[int, str, object]]]:
    out: dict[str, list[tuple[int, str, object]]] = {}
    with AnyReader([path]) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, conn.msgtype, reader.deserialize(raw, conn.msgtype)))
    return out


@pytest.fixture(scope="module")
def scans(street_scan) -> list[np.ndarray]:
    front = street_scan.points[street_scan.points[:, 0] > 0]
    return [front[k::3].copy() for k in range(2)]


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [synthetic_image(seed=k) for k in range(2)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return exported_models(models_root(tmp_path_factory))


def test_a_ros2_bag_replays_through_the_pipeline_into_a_new_bag(tmp_path, models, scans, images):
    bag = tmp_path / "drive"
    write_bag(bag, "sqlite3", scans, images, extra_bad=True)
    pipeline = shared_pipeline(*models)
    out = tmp_path / "results"
    seen = []
    report = replay_bag(bag, pipeline.run, out=out, progress=seen.append)
    assert (report.lidar_topic, report.camera_topic) == (LIDAR, CAMERA)  # found by type
    assert report.read == {LIDAR: 3, CAMERA: 3} and report.frames == 2
    assert report.malformed == 2 and report.failed == 0  # the bad scan and the undecodable image
    written = read_bag(out)
    assert sorted(written) == sorted(["/perception/detections_2d", "/perception/detections_3d",
                                      "/perception/labelled_points", "/perception/markers"])  # fmt: skip
    types = {topic: {m[1] for m in msgs} for topic, msgs in written.items()}
    assert types["/perception/detections_2d"] == {"vision_msgs/msg/Detection2DArray"}
    assert types["/perception/markers"] == {"visualization_msgs/msg/MarkerArray"}
    # frame 0 against the pipeline run here (the replay fed it the right inputs); frame 1 against the
    # result the replay reported (what was written is what was computed)
    expected_first = pipeline.run(Frame("x", 0.0, image=images[0], points=scans[0]))
    for k in range(2):
        expected = expected_first if k == 0 else seen[1].result
        t, _, cloud = written["/perception/labelled_points"][k]
        assert t == (BASE_SEC + k) * 10**9 + 150_000_000  # recorded at the scan's record time
        assert (cloud.header.stamp.sec, cloud.header.stamp.nanosec) == (BASE_SEC + k, 100_000_000)
        assert cloud.header.frame_id == "velo_link" and cloud.width == len(scans[k])
        rows = np.frombuffer(cloud.data.tobytes(), np.dtype([("p", "<f4", 4), ("label", "<u2"), ("inst", "<u2")]))
        np.testing.assert_array_equal(rows["p"], scans[k])
        np.testing.assert_array_equal(rows["label"], expected.labels)
        _, _, d2 = written["/perception/detections_2d"][k]
        assert (d2.header.stamp.nanosec, d2.header.frame_id) == (110_000_000, "camera_color_left")
        assert [r.results[0].hypothesis.class_id for r in d2.detections] == [d.class_name for d in expected.detections]
        _, _, d3 = written["/perception/detections_3d"][k]
        assert [d.id for d in d3.detections] == [str(i.id) for i in expected.instances]
        assert seen[k].result.frame_id == f"{BASE_SEC + k}.100000000"


@pytest.mark.parametrize("kind", ["ros1", "mcap"])
def test_ros1_and_mcap_bags_replay_into_bags_of_their_kind(tmp_path, kind, rng):
    scans = [rng.uniform(-20, 20, (500, 4)).astype(np.float32) for _ in range(3)]
    scans = [np.column_stack([s[:, :3], np.abs(s[:, 3]) / 20]) for s in scans]
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(3)]
    bag = tmp_path / ("drive.bag" if kind == "ros1" else "drive")
    write_bag(bag, kind, scans, images)
    frames = []

    def processor(frame: Frame) -> PerceptionResult:
        frames.append(frame)
        return fake_result(frame.points, frame.image is not None)

    out = tmp_path / ("out.bag" if kind == "ros1" else "out")
    report = replay_bag(bag, processor, out=out, lidar_topic=LIDAR, camera_topic=None, copy_inputs=True,
                        result_topics={"detections_3d": "/objects", "labelled_points": "/labelled"})  # fmt: skip
    assert report.frames == 3 and report.ros_version == (1 if kind == "ros1" else 2)
    assert all(f.image is None for f in frames)
    np.testing.assert_array_equal(frames[1].points, scans[1])
    if kind == "mcap":
        assert any(out.glob("*.mcap"))
    written = read_bag(out)
    assert sorted(written) == sorted([LIDAR, "/objects", "/labelled"])  # inputs copied, camera not used
    assert len(written[LIDAR]) == 3 and len(written["/objects"]) == 3
    _, msgtype, objects = written["/objects"][2]
    assert msgtype == "vision_msgs/msg/Detection3DArray"
    assert (objects.header.stamp.sec, objects.header.frame_id) == (BASE_SEC + 2, "velo_link")
    det = objects.detections[0]
    if kind == "ros1":
        assert det.results[0].id == 1 and det.bbox.size.x == pytest.approx(4.2)
    else:
        assert det.results[0].hypothesis.class_id == "car" and det.id == "1"


def test_bad_bags_and_topics_are_refused_clearly(tmp_path, rng):
    scans = [rng.uniform(-5, 5, (50, 4)).astype(np.float32)]
    images = [np.zeros((4, 4, 3), np.uint8)]
    bag = tmp_path / "b"
    write_bag(bag, "sqlite3", scans, images)
    with pytest.raises(FileNotFoundError, match="no such bag"):
        replay_bag(tmp_path / "missing.bag", lambda f: PerceptionResult("x", 0.0))
    junk = tmp_path / "junk.bag"
    junk.write_bytes(b"not a bag at all")
    with pytest.raises(ValueError, match="not a readable ROS bag"):
        replay_bag(junk, lambda f: PerceptionResult("x", 0.0))
    with pytest.raises(ValueError, match="topic /nope is not in the bag; its topics: /kitti/camera"):
        bag_topics(bag, lidar_topic="/nope")
    with pytest.raises(ValueError, match="holds sensor_msgs/msg/Image, not sensor_msgs/PointCloud2"):
        bag_topics(bag, lidar_topic=CAMERA)
    assert bag_topics(bag) == (LIDAR, CAMERA)
    assert bag_topics(next(bag.glob("*.db3"))) == (LIDAR, CAMERA)  # the storage file inside the directory works too
    with pytest.raises(FileExistsError, match="exists already"):
        replay_bag(bag, lambda f: PerceptionResult("x", 0.0), out=bag)
    with pytest.raises(ValueError, match="ROS 2 bag directory"):
        replay_bag(bag, lambda f: PerceptionResult("x", 0.0), out=tmp_path / "x.bag")


# --- the commands ----------------------------------------------------------------------------------------


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perception.cli", *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_perception_replay_writes_a_result_bag(tmp_path, models, rng):
    scans = [rng.uniform(-30, 30, (3000, 4)).astype(np.float32) for _ in range(2)]
    for s in scans:
        s[:, 3] = np.abs(s[:, 3]) / 30
    bag = tmp_path / "in.bag"
    write_bag(bag, "ros1", scans, [np.zeros((8, 8, 3), np.uint8)] * 2)
    out = tmp_path / "out.bag"
    res = run_cli("replay", str(bag), "--lidar-topic", LIDAR, "--seg-model", str(models[0]), "--out", str(out),
                  "--providers", "cpu")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "2 frames" in res.stdout and str(out) in res.stdout
    written = read_bag(out)
    assert len(written["/perception/labelled_points"]) == 2 and "/perception/detections_2d" not in written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "missing.bag"], "error: missing.bag: no such bag"),
        (["replay", "{junk}"], "not a readable ROS bag"),
        (["replay", "{bag}", "--lidar-topic", "/nope", "--seg-model", "{seg}"], "topic /nope is not in the bag"),
        (["replay", "{bag}", "--lidar-topic", LIDAR, "--seg-model", "nope.onnx"], "nope.onnx: no such model"),
        (["replay", "{bag}", "--service", "ftp://x"], "--service must be grpc://"),
        (["ros", "--rosbridge", "http://x:9090", "--lidar-topic", "/p"], "WebSocket URL"),
        (["ros", "--rosbridge", "ws://x:9090"], "give a LiDAR topic, a camera topic or both"),
        (
            ["ros", "--rosbridge", "ws://x:9090", "--lidar-topic", "/p", "--ros-version", "3"],
            "--ros-version must be 1 or 2",
        ),
        (["ros", "--rosbridge", "ws://x:9090", "--lidar-topic", "/p", "--seg-model", "no.onnx"], "no such model"),
        (["ros", "--rosbridge", "ws://x:9090", "--lidar-topic", "/p", "--type-name", "a"], "KEY=TYPE"),
        (["ros", "--rosbridge", "ws://x:9090", "--lidar-topic", "/p", "--intensity-scale", "big"], "intensity"),
        (["ros", "--rosbridge", "ws://x:9090", "--lidar-topic", "/p", "--pair-tolerance", "-1"], "pair-tolerance"),
        (["ros", "--rosbridge", "ws://x:9090", "--lidar-topic", "/p", "--max-age", "0"], "max age must be > 0"),
        (["replay", "{bag}", "--max-frames", "0"], "--max-frames must be >= 1"),
    ],
)
def test_bad_command_lines_end_with_one_error_line(tmp_path, models, args, message):
    bag = tmp_path / "ok.bag"
    write_bag(bag, "ros1", [np.ones((10, 4), np.float32)], [np.zeros((4, 4, 3), np.uint8)])
    junk = tmp_path / "junk.bag"
    junk.write_bytes(b"#ROSBAG V9.9\n")
    args = [a.format(bag=bag, junk=junk, seg=models[0]) for a in args]
    # in-process (a subprocess per case would cost seconds each); the replay test above runs the real command
    res = CliRunner().invoke(app, [*args, "--duration", "1"] if args[0] == "ros" else args)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
