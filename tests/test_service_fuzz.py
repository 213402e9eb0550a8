"""Bad-input corpus over REST, WebSocket and gRPC, and an OpenAPI fuzz run (schemathesis) against a live server.

Every bad request must get a 4xx JSON error (REST), an error answer (WebSocket stream, which goes on) or
``INVALID_ARGUMENT`` (gRPC; ``RESOURCE_EXHAUSTED`` for a message above the size limit) with a message that
says what is wrong, never a 500 / ``INTERNAL``, and the server must keep serving. These cases add to the
ones of tests/test_service_rest.py (``BAD_REQUESTS``, the 413 tests) and tests/test_service_grpc.py (``BAD``).
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from perception.client import GrpcClient, encode_stream_frame
from perception.pipeline import Frame
from perception.service.proto import perception_pb2 as pb
from perception.service.proto import perception_pb2_grpc as pb_grpc
from perception.service.schemas import pack_frame_envelope
from perception.service.server import serve_in_background
from perception.service.settings import Settings

from .test_pipeline import exported_models, models_root, shared_pipeline

RAW = {"content-type": "application/octet-stream"}
BODY_LIMIT_MB = 8
GRPC_LIMIT_MB = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return exported_models(models_root(tmp_path_factory))


@pytest.fixture(scope="module")
def server(models):
    settings = Settings(
        host="127.0.0.1",
        port=0,
        grpc_port=0,
        providers="cpu",
        seg_model=models[0],
        det_model=models[1],
        max_body_mb=BODY_LIMIT_MB,
        grpc_max_message_mb=GRPC_LIMIT_MB,
        stream_policy="block",
        log_level="warning",
    )
    with serve_in_background(settings, shared_pipeline(*models)) as svc:
        yield svc


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def pcd(header: str, data: bytes = b"") -> bytes:
    fields = "FIELDS x y z intensity\nSIZE 4 4 4 4\nTYPE F F F F\n"
    return f"VERSION 0.7\n{fields}{header}DATA binary\n".encode() + data


GOOD_PNG = png(np.full((40, 40, 3), 90, np.uint8))
XYZ_ONLY = np.array([[5.0, 0.5, -1.0]] * 7, "<f4")  # N x 3: 84 bytes, not N x 16
FIFTY_MB = 50 * 2**20

# (id, method, path, httpx kwargs, status, words the error must contain)
REST_CORPUS = [
    ("truncated-points", "/v1/segment", {"content": b"\0" * 31, "headers": RAW}, 400, "not a multiple of 16"),
    ("n-by-3-points", "/v1/segment", {"content": XYZ_ONLY.tobytes(), "headers": RAW}, 400, "84 bytes"),
    ("neg-inf-points", "/v1/segment",
     {"content": np.array([[1, -np.inf, 1, 0]] * 3, "<f4").tobytes(), "headers": RAW}, 400, "NaN or infinite"),
    ("all-out-of-view", "/v1/segment",
     {"content": np.full((10, 4), 3e38, "<f4").tobytes(), "headers": RAW}, 400, "field of view"),
    ("fifty-mb-body", "/v1/segment", {"content": b"\0" * FIFTY_MB, "headers": RAW}, 413, "larger than the limit"),
    ("no-content-type", "/v1/segment", {"content": b"\0" * 16}, 415, "'(none)'"),
    ("form-urlencoded", "/v1/segment", {"data": {"points": "1,2,3"}}, 415, "x-www-form-urlencoded"),
    ("multipart-no-boundary", "/v1/segment",
     {"content": b"abc", "headers": {"content-type": "multipart/form-data"}}, 400, "boundary"),
    ("multipart-cut-short", "/v1/segment",
     {"content": b'--xx\r\nContent-Disposition: form-data; name="points"\r\n\r\nabc',
      "headers": {"content-type": "multipart/form-data; boundary=xx"}}, 400, "'points'"),
    ("pickled-npy", "/v1/segment",
     {"content": npy(np.array([{"a": 1}], dtype=object)), "headers": {"content-type": "application/x-npy"}},
     400, "allow_pickle"),
    ("truncated-npy", "/v1/segment",
     {"content": npy(np.zeros((5, 4), "<f4"))[:60], "headers": {"content-type": "application/x-npy"}},
     400, "not a readable .npy"),
    ("1d-npy", "/v1/segment",
     {"content": npy(np.zeros(5, "<f4")), "headers": {"content-type": "application/x-npy"}}, 400, "(N, 3) or (N, 4)"),
    ("pcd-negative-count", "/v1/segment",
     {"content": pcd("COUNT 1 1 1 1\nWIDTH -5\nHEIGHT 1\nPOINTS -5\n"),
      "headers": {"content-type": "application/x-pcd"}}, 400, "negative point count"),
    ("pcd-giant-count", "/v1/segment",
     {"content": pcd("COUNT 1 1 1 1\nWIDTH 999999999999\nHEIGHT 1\nPOINTS 999999999999\n", b"\0" * 32),
      "headers": {"content-type": "application/x-pcd"}}, 400, "truncated PCD"),
    ("ply-no-end-header", "/v1/segment",
     {"content": b"ply\nformat ascii 1.0\n", "headers": {"content-type": "application/x-ply"}}, 400, "end_header"),
    ("ply-giant-vertex-count", "/v1/segment",
     {"content": b"ply\nformat binary_little_endian 1.0\nelement vertex 99999999999\nproperty float x\n"
                 b"property float y\nproperty float z\nend_header\n" + b"\0" * 24,
      "headers": {"content-type": "application/x-ply"}}, 400, "truncated PLY"),
    ("timestamp-nan", "/v1/segment?timestamp=nan",
     {"content": np.ones((5, 4), "<f4").tobytes(), "headers": RAW}, 400, "finite"),
    ("frame-id-too-long", "/v1/segment?frame_id=" + "a" * 300,
     {"content": np.ones((5, 4), "<f4").tobytes(), "headers": RAW}, 422, "frame_id"),
    ("labels-not-bool", "/v1/segment?include_labels=maybe",
     {"content": np.ones((5, 4), "<f4").tobytes(), "headers": RAW}, 422, "include_labels"),
    ("giant-png-dimensions", "/v1/detect",
     {"content": png_claiming(100_000, 100_000), "headers": {"content-type": "image/png"}}, 400, "too large"),
    ("corrupt-png-data", "/v1/detect",
     {"content": png_claiming(2000, 20), "headers": {"content-type": "image/png"}}, 400, "truncated or corrupt"),
    ("truncated-png", "/v1/detect",
     {"content": GOOD_PNG[: len(GOOD_PNG) // 2], "headers": {"content-type": "image/png"}}, 400, "truncated"),
    ("truncated-jpeg", "/v1/detect",
     {"content": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "headers": {"content-type": "image/jpeg"}}, 400, "corrupt"),
    ("grayscale-png", "/v1/detect",
     {"content": png(np.zeros((40, 40), np.uint8)), "headers": {"content-type": "image/png"}}, 400, "grayscale"),
    ("16-bit-png", "/v1/detect",
     {"content": png(np.zeros((40, 40), np.uint16)), "headers": {"content-type": "image/png"}}, 400, "16-bit"),
    ("empty-png", "/v1/detect", {"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty"),
    ("negative-width", "/v1/detect?width=-5&height=10", {"content": b"\0" * 30, "headers": RAW}, 422, "width"),
    ("giant-width", "/v1/detect?width=100000&height=100000", {"content": b"\0" * 30, "headers": RAW},
     422, "less than or equal to 8192"),
    ("width-not-a-number", "/v1/detect?width=abc&height=10", {"content": b"\0" * 30, "headers": RAW},
     422, "valid integer"),
    ("wrong-json", "/v1/detect", {"content": b'{"image": "x"', "headers": {"content-type": "application/json"}},
     415, "application/json"),
    ("raw-part-without-size", "/v1/detect", {"files": {"image": ("a", b"\0" * 300, RAW["content-type"])}},
     400, "not a PNG or JPEG"),
    ("perceive-too-many-files", "/v1/perceive", {"files": [("image", ("a.png", GOOD_PNG, "image/png"))] * 6},
     400, "Too many files"),
    ("perceive-too-many-fields", "/v1/perceive",
     {"data": {f"f{i}": "x" for i in range(20)}, "files": {"image": ("a.png", GOOD_PNG, "image/png")}},
     400, "Too many fields"),
    ("perceive-raw-rgb-wrong-size", "/v1/perceive?width=20&height=20",
     {"files": {"image": ("a", b"\0" * 300, RAW["content-type"])}}, 400, "needs 1200 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "kwargs", "status", "words"), [c[1:] for c in REST_CORPUS],
                         ids=[c[0] for c in REST_CORPUS])  # fmt: skip
def test_rest_bad_input_is_a_4xx_json_error_and_the_server_keeps_serving(server, path, kwargs, status, words):
    response = httpx.post(server.rest_url + path, timeout=60, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert set(doc) == {"error"} and words in doc["error"], doc
    assert httpx.get(f"{server.rest_url}/healthz", timeout=30).status_code == 200


# (id, header dict or raw bytes, image payload, points payload, words)
WS_CORPUS = [
    ("header-not-json", struct.pack("<I", 5) + b"{nope", "bad header"),
    ("header-is-a-list", struct.pack("<I", 2) + b"[]", "bad header"),
    ("header-length-past-the-end", struct.pack("<I", 1000) + b"{}", "runs past the message"),
    ("negative-payload-size", struct.pack("<I", 23) + b'{"points":{"size":-16}}', "bad header"),
    ("sizes-disagree", struct.pack("<I", 24) + b'{"points":{"size":4000}}' + b"\0" * 16, "announces 4000"),
    ("neither-image-nor-points", pack_frame_envelope({"frame_id": "x"}), "neither image nor points"),
    ("giant-rgb8-dimensions", pack_frame_envelope(
        {"image": {"encoding": "rgb8", "width": 100_000, "height": 100_000}}, b"\0" * 30), "or equal to 8192"),
    ("inf-points", pack_frame_envelope({}, points=np.array([[1, 1, np.inf, 0]] * 2, "<f4").tobytes()), "infinite"),
    ("unknown-image-encoding", pack_frame_envelope({"image": {"encoding": "bmp"}}, b"\0" * 30), "bad header"),
]  # fmt: skip


def test_websocket_bad_frames_each_get_an_error_answer_and_the_stream_goes_on(server, street_scan):
    from websockets.sync.client import connect

    good = encode_stream_frame(Frame("good", 1.0, points=street_scan.points[:2000]))
    with connect(f"{server.ws_url}/v1/stream", max_size=None) as ws:
        for _, message, _ in WS_CORPUS:
            ws.send(message)
        ws.send("not json at all")
        ws.send(good)
        ws.send(json.dumps({"type": "end"}))
        answers = [json.loads(m) for m in ws]
    assert [a["type"] for a in answers] == ["error"] * (len(WS_CORPUS) + 1) + ["result", "end"]
    for (name, _, words), answer in zip(WS_CORPUS, answers, strict=False):
        assert words in answer["error"], (name, answer)
    assert "unexpected text message" in answers[len(WS_CORPUS)]["error"]
    assert answers[-2]["frame_id"] == "good" and answers[-2]["num_points"] == 2000
    assert answers[-1]["errors"] == len(WS_CORPUS) + 1 and answers[-1]["processed"] == 1


def corrupt_wire(_: object) -> bytes:
    return b"\xff\xff\xff"


GRPC_CORPUS = [
    ("giant-png-dimensions", "Detect", pb.DetectRequest(image=pb.Image(data=png_claiming(100_000, 100_000))),
     "too large"),
    ("truncated-png", "Detect", pb.DetectRequest(image=pb.Image(data=GOOD_PNG[:50])), "truncated"),
    ("giant-rgb8-dimensions", "Detect", pb.DetectRequest(image=pb.Image(
        data=b"\0" * 300, encoding=pb.Image.RGB8, width=2**31 - 1, height=2**31 - 1)), "outside 1..8192"),
    ("unknown-encoding-enum", "Detect", pb.DetectRequest(image=pb.Image(data=b"\0" * 300, encoding=7)),
     "not a PNG or JPEG"),
    ("empty-image", "Detect", pb.DetectRequest(image=pb.Image(data=b"")), "empty"),
    ("inf-points", "Segment", pb.SegmentRequest(points=pb.PointCloud(
        data=np.array([[1, 1, np.inf, 0]] * 2, "<f4").tobytes())), "NaN or infinite"),
    ("n-by-3-points", "Segment", pb.SegmentRequest(points=pb.PointCloud(data=XYZ_ONLY.tobytes())), "84 bytes"),
    ("all-out-of-view", "Segment", pb.SegmentRequest(points=pb.PointCloud(
        data=np.full((5, 4), 3e38, "<f4").tobytes()), include_labels=True), "field of view"),
    ("bad-image-good-points", "Perceive", pb.PerceiveRequest(
        image=pb.Image(data=b"junk"), points=pb.PointCloud(data=b"\0" * 16)), "not a PNG or JPEG"),
    ("truncated-points", "Perceive", pb.PerceiveRequest(points=pb.PointCloud(data=b"\0" * 17)),
     "not a multiple of 16"),
    ("not-a-protobuf-segment", "Segment", None, "not a valid Segment request message"),
    ("not-a-protobuf-detect", "Detect", None, "not a valid Detect request message"),
    ("not-a-protobuf-perceive", "Perceive", None, "not a valid Perceive request message"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "request_message", "words"), [c[1:] for c in GRPC_CORPUS],
                         ids=[c[0] for c in GRPC_CORPUS])  # fmt: skip
def test_grpc_bad_input_is_invalid_argument_and_the_server_keeps_serving(server, method, request_message, words):
    channel = grpc.insecure_channel(server.grpc_target)
    try:
        if request_message is None:  # bytes that do not parse as the request message at all
            call = channel.unary_unary(f"/perception.v1.Perception/{method}", request_serializer=corrupt_wire)
            request_message = object()
        else:
            call = getattr(pb_grpc.PerceptionStub(channel), method)
        with pytest.raises(grpc.RpcError) as err:
            call(request_message, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert words in err.value.details()
    finally:
        channel.close()
    with GrpcClient(server.grpc_target) as client:
        assert client.health() == "SERVING"


def test_grpc_oversized_message_is_resource_exhausted_and_a_corrupt_stream_frame_an_error(server, street_scan):
    with GrpcClient(server.grpc_target, max_message_mb=128) as client:
        stub = pb_grpc.PerceptionStub(client.channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Segment(pb.SegmentRequest(points=pb.PointCloud(data=b"\0" * FIFTY_MB)), timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in err.value.details()
        good = client.perceive_request(None, street_scan.points[:2000], "good", 1.0)
        stream = client.channel.stream_stream(
            "/perception.v1.Perception/Stream",
            request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            response_deserializer=pb.StreamResponse.FromString,
        )
        answers = list(stream(iter([b"\xff\xff", good, b"\x0a\x05ab"]), timeout=60))
    assert [(a.WhichOneof("outcome"), a.frame_id) for a in answers] == [
        ("error", "1"), ("result", "good"), ("error", "3"),
    ]  # fmt: skip
    assert "not a valid Stream request message" in answers[0].error and answers[1].result.num_points == 2000


def test_no_request_of_the_corpus_was_a_server_error(server, street_scan):
    """Runs after the corpus tests of this module: the metrics saw no 500 / INTERNAL, and real work still runs."""
    response = httpx.post(
        f"{server.rest_url}/v1/segment", content=street_scan.points[:2000].tobytes(), headers=RAW, timeout=60
    )
    assert response.status_code == 200 and response.json()["num_points"] == 2000
    text = httpx.get(f"{server.rest_url}/metrics", timeout=30).text
    assert 'status="400"' in text and 'status="INVALID_ARGUMENT"' in text  # the corpus did reach the server
    assert 'status="500"' not in text and 'status="INTERNAL"' not in text


def test_the_corpus_holds_at_least_25_distinct_cases():
    rest_grpc = [c[0] for c in REST_CORPUS] + [f"grpc-{c[0]}" for c in GRPC_CORPUS]
    assert len(set(rest_grpc)) == len(rest_grpc) >= 25
    assert len({c[0] for c in WS_CORPUS}) == len({c[1] for c in WS_CORPUS}) == len(WS_CORPUS)


# --- OpenAPI fuzzing ------------------------------------------------------------------------------


def test_openapi_fuzz_finds_no_server_error(server):
    """Requests generated by schemathesis from /openapi.json (valid and invalid by the schema) against the
    live server: no response is a 5xx."""
    schemathesis = pytest.importorskip("schemathesis", reason="the OpenAPI fuzz run needs schemathesis ([dev])")

    schema = schemathesis.openapi.from_url(f"{server.rest_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"POST /v1/detect", "POST /v1/segment", "POST /v1/perceive", "GET /v1/models"} <= {
        op.label for op in operations
    }
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        fuzz_operation(operation, server.rest_url, statuses)
    assert statuses["GET /healthz"] == {200}
    assert all(400 <= s < 500 for s in statuses["POST /v1/segment"] - {200})
    assert len(statuses) == len(operations)
    assert httpx.get(f"{server.rest_url}/healthz", timeout=30).status_code == 200


def fuzz_operation(operation, base_url: str, statuses: dict[str, set[int]]) -> None:
    """25 generated requests (by the schema and against it) to one operation; each must be answered below 500."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    label = operation.label
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @settings(max_examples=25, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=cases)
    def call(case) -> None:
        response = case.call(base_url=base_url, timeout=60)
        statuses.setdefault(label, set()).add(response.status_code)
        assert response.status_code < 500, (label, case.media_type, response.text[:300])

    call()
