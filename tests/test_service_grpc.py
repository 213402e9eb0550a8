"""gRPC service on a real server (ephemeral port) over real ONNX models with fresh weights."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from perception.client import ClientError, GrpcClient
from perception.pipeline import Frame, Pipeline
from perception.service.grpc_server import SERVICE_NAME, GrpcServer
from perception.service.metrics import Metrics
from perception.service.proto import perception_pb2 as pb
from perception.service.proto import perception_pb2_grpc as pb_grpc
from perception.service.settings import Settings

from .test_pipeline import exported_models, models_root, shared_pipeline, synthetic_image

PROTO_DIR = Path(__file__).resolve().parents[1] / "perception" / "service" / "proto"
API_KEY = "grpc-key-7"


def grpc_settings(**overrides) -> Settings:
    base = {"host": "127.0.0.1", "grpc_port": 0, "providers": "cpu", "seg_model": None, "det_model": None}
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return exported_models(models_root(tmp_path_factory))


@pytest.fixture(scope="module")
def pipeline(models):
    return shared_pipeline(*models)


def start(settings: Settings, pipeline: Pipeline) -> GrpcServer:
    return GrpcServer(settings, pipeline, Metrics()).start()


@pytest.fixture(scope="module")
def server(pipeline, models):
    srv = start(grpc_settings(seg_model=models[0], det_model=models[1], stream_queue_size=1), pipeline)
    yield srv
    srv.stop(0).wait()


@pytest.fixture(scope="module")
def client(server):
    with GrpcClient(f"127.0.0.1:{server.port}") as c:
        yield c


@pytest.fixture(scope="module")
def blocking_server(pipeline, models):
    settings = grpc_settings(seg_model=models[0], det_model=models[1], stream_policy="block", stream_queue_size=1)
    srv = start(settings, pipeline)
    yield srv
    srv.stop(0).wait()


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_checked_in_stubs_match_the_proto(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc", reason="regenerating the stubs needs grpcio-tools")
    root = PROTO_DIR.parents[2]
    rel = PROTO_DIR.relative_to(root) / "perception.proto"
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{root}", f"-I{include}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}"]
    assert protoc.main([*args, str(root / rel)]) == 0
    for name in ("perception_pb2.py", "perception_pb2_grpc.py"):
        generated = (tmp_path / rel.parent / name).read_text()
        assert (PROTO_DIR / name).read_text() == "# ruff: noqa\n" + generated, f"{name} is stale: regenerate it"


def test_health_is_serving_and_reflection_lists_the_service(server, client):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    assert client.health() == "SERVING" and client.health(SERVICE_NAME) == "SERVING"
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="perception.v1.Perception"),
    ]
    listed, described = list(stub.ServerReflectionInfo(iter(requests)))
    names = {s.name for s in listed.list_services_response.service}
    assert {"perception.v1.Perception", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # the .proto, serialised


def test_a_120k_point_scan_over_grpc_gives_the_in_process_result(client, pipeline, street_scan):
    doc = client.segment(street_scan.points, include_labels=True, frame_id="scan-9", timestamp=3.5)
    expected = pipeline.run(Frame("x", 0.0, points=street_scan.points))
    assert (doc["frame_id"], doc["timestamp"], doc["num_points"]) == ("scan-9", 3.5, len(street_scan.points))
    np.testing.assert_array_equal(doc["labels"], expected.labels)
    np.testing.assert_array_equal(doc["scores"], expected.scores)
    assert doc["class_counts"] == expected.class_counts() and len(doc["instances"]) == len(expected.instances)
    first, ref = doc["instances"][0], expected.instances[0].to_dict()
    assert (first["class_name"], first["num_points"]) == (ref["class_name"], ref["num_points"])
    np.testing.assert_allclose(first["box"]["center"], ref["box"]["center"])
    assert doc["providers"] == {"lidar": "CPUExecutionProvider"} and "lidar.inference" in doc["timings_ms"]


def test_messages_above_the_grpc_default_of_4_mib_pass(client, street_scan):
    far = np.tile(np.array([[-500.0, 0.0, 0.0, 0.0]], np.float32), (250_000, 1))  # out of range: never clustered
    cloud = np.concatenate([street_scan.points, far])
    assert cloud.nbytes > 5 * 2**20
    doc = client.segment(cloud, include_labels=True)
    assert doc["num_points"] == len(cloud) and (doc["labels"][len(street_scan.points) :] == 0).all()


def test_detect_takes_png_bytes_and_raw_rgb_alike(client):
    image = synthetic_image(seed=4)
    encoded, raw = client.detect(png_bytes(image)), client.detect(image)
    assert encoded["image_size"] == raw["image_size"] == [1242, 375]
    assert encoded["detections"] == raw["detections"] and raw["detections"]
    assert raw["num_points"] is None and raw["providers"] == {"camera": "CPUExecutionProvider"}


def test_perceive_runs_both_stages(client, street_scan):
    doc = client.perceive(synthetic_image(), street_scan.points[:20000], include_point_indices=True, frame_id="p")
    assert doc["frame_id"] == "p" and doc["detections"] and doc["num_points"] == 20000
    assert set(doc["providers"]) == {"camera", "lidar"} and "labels" not in doc
    for inst in doc["instances"]:
        assert len(inst["point_indices"]) == inst["num_points"]


BAD = [
    ("Segment", pb.SegmentRequest(points=pb.PointCloud(data=b"\0" * 100)), "100 bytes is not a multiple of 16"),
    ("Segment", pb.SegmentRequest(points=pb.PointCloud(data=b"")), "empty"),
    ("Segment", pb.SegmentRequest(), "SegmentRequest.points is missing"),
    ("Segment", pb.SegmentRequest(points=pb.PointCloud(data=np.full((3, 4), np.nan, "<f4").tobytes())),
     "3 of 3 points have NaN"),
    ("Detect", pb.DetectRequest(), "DetectRequest.image is missing"),
    ("Detect", pb.DetectRequest(image=pb.Image(data=b"not an image")), "not a PNG or JPEG"),
    ("Detect", pb.DetectRequest(image=pb.Image(data=b"\0" * 10, encoding=pb.Image.RGB8, width=4, height=4)),
     "needs 48 bytes"),
    ("Detect", pb.DetectRequest(image=pb.Image(data=b"\0" * 10, encoding=pb.Image.RGB8)), "needs width and height"),
    ("Perceive", pb.PerceiveRequest(), "needs image and/or points"),
]  # fmt: skip


def test_bad_input_is_invalid_argument_and_the_server_still_answers(server, client, street_scan):
    stub = pb_grpc.PerceptionStub(client.channel)
    for method, request, message in BAD:
        with pytest.raises(grpc.RpcError) as err:
            getattr(stub, method)(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.value.details())
        assert message in err.value.details(), (method, err.value.details())
    assert client.segment(street_scan.points[:2000])["num_points"] == 2000
    text = server.metrics.render().decode()
    assert 'perception_requests_total{endpoint="Segment",protocol="grpc",status="INVALID_ARGUMENT"} 4.0' in text
    assert 'perception_requests_total{endpoint="Segment",protocol="grpc",status="OK"}' in text


def test_a_missing_model_is_unavailable_and_health_not_serving(tmp_path, street_scan):
    pipe = Pipeline(None, tmp_path / "gone.onnx", strict=False)
    srv = start(grpc_settings(det_model=tmp_path / "gone.onnx"), pipe)
    try:
        with GrpcClient(f"127.0.0.1:{srv.port}") as c:
            assert c.health() == "NOT_SERVING" and c.health(SERVICE_NAME) == "NOT_SERVING"
            with pytest.raises(ClientError) as err:
                c.detect(synthetic_image())
            assert err.value.status == "UNAVAILABLE" and "gone.onnx: no such model file" in err.value.message
            with pytest.raises(ClientError) as err:
                c.segment(street_scan.points[:100])
            assert err.value.status == "UNAVAILABLE" and "lidar stage is not configured" in err.value.message
    finally:
        srv.stop(0).wait()
        pipe.close()


def test_the_api_key_is_required_in_metadata_except_for_health(pipeline, models, street_scan):
    srv = start(grpc_settings(seg_model=models[0], det_model=models[1], api_key=API_KEY), pipeline)
    target = f"127.0.0.1:{srv.port}"
    try:
        for key in (None, "wrong"):
            with GrpcClient(target, api_key=key) as c:
                assert c.health() == "SERVING"
                with pytest.raises(ClientError) as err:
                    c.segment(street_scan.points[:100])
                assert err.value.status == "UNAUTHENTICATED" and "x-api-key" in err.value.message
                with pytest.raises(ClientError) as err:
                    list(c.stream([Frame("s", 0.0, points=street_scan.points[:100])]))
                assert err.value.status == "UNAUTHENTICATED"
        with GrpcClient(target, api_key=API_KEY) as c, pytest.raises(ClientError) as err:
            c.segment(np.zeros((0, 4), np.float32))  # past the key check: refused for its content
        assert err.value.status == "INVALID_ARGUMENT"
    finally:
        srv.stop(0).wait()


def test_stream_answers_in_order_and_drops_the_oldest_when_the_client_is_faster(server, client, street_scan):
    before = server.metrics.dropped_frames.labels("grpc")._value.get()
    frames = [Frame(f"{k:03d}", float(k), points=street_scan.points[:5000]) for k in range(12)]
    answers = list(client.stream(frames))
    ids = [a["frame_id"] for a in answers]
    assert all(a["type"] == "result" for a in answers)
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[-1] == "011"  # the newest is never dropped
    dropped = [a["dropped_before"] for a in answers]
    assert sum(dropped) + len(answers) == 12 and sum(dropped) > 0 and int(ids[0]) == dropped[0]
    for a, b in itertools.pairwise(answers):
        assert int(b["frame_id"]) - int(a["frame_id"]) - 1 == b["dropped_before"]
    assert server.metrics.dropped_frames.labels("grpc")._value.get() - before == sum(dropped)


def test_stream_block_policy_answers_every_frame(blocking_server, street_scan):
    frames = [Frame(str(k), float(k), points=street_scan.points[:5000]) for k in range(5)]
    with GrpcClient(f"127.0.0.1:{blocking_server.port}") as c:
        answers = list(c.stream(frames, include_labels=True))
    assert [a["frame_id"] for a in answers] == ["0", "1", "2", "3", "4"]
    assert [a["dropped_before"] for a in answers] == [0] * 5 and answers[4]["labels"].shape == (5000,)


def test_stream_reports_bad_frames_and_goes_on(blocking_server, street_scan):
    frames = [
        Frame("good-1", 1.0, points=street_scan.points[:3000]),
        Frame("nan", 2.0, points=np.full((4, 4), np.nan, np.float32)),
        Frame("cam", 3.0, image=synthetic_image(seed=5)),
        Frame("tiny", 4.0, image=np.zeros((4, 4, 3), np.uint8)),
        Frame("good-2", 5.0, points=street_scan.points[:3000]),
    ]
    with GrpcClient(f"127.0.0.1:{blocking_server.port}") as c:
        answers = list(c.stream(frames))
    assert [(a["type"], a["frame_id"]) for a in answers] == [
        ("result", "good-1"), ("error", "nan"), ("result", "cam"), ("error", "tiny"), ("result", "good-2"),
    ]  # fmt: skip
    assert "4 of 4 points have NaN" in answers[1]["error"] and "outside 16..8192" in answers[3]["error"]
    assert answers[2]["detections"] and answers[2]["timestamp"] == 3.0
    assert answers[0]["class_counts"] == answers[4]["class_counts"]


def test_a_taken_port_is_a_clear_oserror_for_either_server():
    import socket

    from perception.service.server import serve_in_background

    pipe = Pipeline(None, None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot bind the gRPC server to 127.0.0.1:{port}"):
            GrpcServer(grpc_settings(grpc_port=port), pipe)
        with (
            pytest.raises(OSError, match=f"cannot bind the REST server to 127.0.0.1:{port}"),
            serve_in_background(grpc_settings(port=port, grpc_enabled=False), pipe),
        ):
            pass
    pipe.close()
