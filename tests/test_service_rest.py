"""REST + WebSocket service on real uvicorn servers (ephemeral ports, background threads or a subprocess)
over real ONNX models with fresh weights."""

from __future__ import annotations

import io
import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from perception.client import ClientError, RestClient, encode_stream_frame
from perception.io import write_pcd
from perception.pipeline import Frame
from perception.service.schemas import (
    DetectResponse,
    ModelsResponse,
    PerceiveResponse,
    SegmentResponse,
    pack_frame_envelope,
)
from perception.service.server import serve_in_background
from perception.service.settings import Settings

from .conftest import KITTI_SAMPLES, free_port, server_env
from .test_pipeline import exported_models, models_root, shared_pipeline, synthetic_image

API_KEY = "s3cret-key"
RAW = "application/octet-stream"


def service_settings(**overrides) -> Settings:
    base = {"host": "127.0.0.1", "port": 0, "grpc_port": 0, "grpc_enabled": False, "providers": "cpu"}
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return exported_models(models_root(tmp_path_factory))


@pytest.fixture(scope="module")
def pipeline(models):
    return shared_pipeline(*models)


@pytest.fixture(scope="module")
def server(pipeline, models):
    """The default service: drop policy with a queue of 1 frame."""
    settings = service_settings(seg_model=models[0], det_model=models[1], stream_queue_size=1)
    with serve_in_background(settings, pipeline) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(server):
    with RestClient(server.rest_url) as c:
        yield c


@pytest.fixture(scope="module")
def blocking_server(pipeline, models):
    settings = service_settings(seg_model=models[0], det_model=models[1], stream_policy="block", stream_queue_size=1)
    with serve_in_background(settings, pipeline) as svc:
        yield svc


@pytest.fixture(scope="module")
def scan_in_process(pipeline, street_scan):
    return pipeline.run(Frame("in-process", 0.0, points=street_scan.points))


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- REST over a real server ---------------------------------------------------------------------


def test_a_120k_point_scan_over_http_gives_the_in_process_result(client, street_scan, scan_in_process):
    doc = client.segment(street_scan.points, include_labels=True, frame_id="scan-7", timestamp=17.25)
    assert doc["num_points"] == len(street_scan.points) > 100_000
    assert (doc["frame_id"], doc["timestamp"]) == ("scan-7", 17.25)
    np.testing.assert_array_equal(doc["labels"], scan_in_process.labels)
    np.testing.assert_allclose(doc["scores"], scan_in_process.scores, atol=5e-5)
    assert len(doc["instances"]) == len(scan_in_process.instances)
    assert doc["class_counts"] == scan_in_process.class_counts()
    assert doc["providers"] == {"lidar": "CPUExecutionProvider"}
    assert {"lidar.inference", "lidar.clustering", "total"} <= set(doc["timings_ms"])
    raw = httpx.post(
        f"{client.base_url}/v1/segment",
        content=street_scan.points.astype("<f4").tobytes(),
        headers={"content-type": "application/octet-stream"},
        timeout=120,
    )
    assert raw.status_code == 200
    parsed = SegmentResponse.model_validate(raw.json())
    assert parsed.labels is None and parsed.num_points == len(street_scan.points)


def test_detect_takes_multipart_png_a_png_body_and_raw_rgb_alike(client):
    image = synthetic_image(seed=3)
    png = png_bytes(image)
    url = f"{client.base_url}/v1/detect"
    multipart = httpx.post(url, files={"image": ("frame.png", png, "image/png")}, timeout=120)
    body = httpx.post(url, content=png, headers={"content-type": "image/png"}, timeout=120)
    raw = client.detect(image)
    assert multipart.status_code == body.status_code == 200
    docs = [DetectResponse.model_validate(multipart.json()), DetectResponse.model_validate(body.json())]
    assert raw["image_size"] == [1242, 375] and raw["providers"] == {"camera": "CPUExecutionProvider"}
    boxes = [[(d.x1, d.y1, d.x2, d.y2, d.class_id) for d in doc.detections] for doc in docs]
    assert boxes[0] == boxes[1] == [(d["x1"], d["y1"], d["x2"], d["y2"], d["class_id"]) for d in raw["detections"]]
    assert boxes[0] and all(0 <= d[0] <= d[2] <= 1241 and 0 <= d[1] <= d[3] <= 374 for d in boxes[0])


@pytest.mark.skipif(not (KITTI_SAMPLES / "kitti_image_sample.png").is_file(), reason="real KITTI image not found")
def test_a_real_kitti_png_is_detected(client):
    doc = client.detect((KITTI_SAMPLES / "kitti_image_sample.png").read_bytes())
    assert doc["image_size"][0] > 1000 and doc["detections"]


def test_perceive_takes_an_image_and_a_point_cloud_in_one_multipart_request(client, street_scan):
    pts = street_scan.points[:20000]
    doc = client.perceive(png_bytes(synthetic_image()), pts, include_labels=True, include_point_indices=True)
    PerceiveResponse.model_validate(doc | {"labels": doc["labels"].tolist(), "scores": doc["scores"].tolist()})
    assert doc["detections"] and doc["num_points"] == 20000 and doc["labels"].shape == (20000,)
    assert set(doc["providers"]) == {"camera", "lidar"} and {"camera", "lidar", "total"} <= set(doc["timings_ms"])
    for inst in doc["instances"]:
        assert len(inst["point_indices"]) == inst["num_points"]
    camera_only = client.perceive(synthetic_image(), None)  # a raw RGB part
    assert camera_only["detections"] and camera_only["num_points"] is None and camera_only["instances"] == []


def test_segment_takes_pcd_bodies_and_multipart_files(client, street_scan, tmp_path):
    pts = street_scan.points[:3000]
    pcd = write_pcd(tmp_path / "scan.pcd", pts).read_bytes()
    url = f"{client.base_url}/v1/segment"
    as_body = httpx.post(url, content=pcd, headers={"content-type": "application/x-pcd"}, timeout=120)
    as_file = httpx.post(url, files={"points": ("scan.pcd", pcd, "application/octet-stream")}, timeout=120)
    as_bin = httpx.post(url, files={"points": ("000001.bin", pts.tobytes(), "application/octet-stream")}, timeout=120)
    docs = [r.json() for r in (as_body, as_file, as_bin)]
    assert [r.status_code for r in (as_body, as_file, as_bin)] == [200, 200, 200], docs
    assert docs[0]["class_counts"] == docs[1]["class_counts"] == docs[2]["class_counts"]
    assert docs[0]["num_points"] == 3000
    assert client.segment(tmp_path / "scan.pcd")["class_counts"] == docs[0]["class_counts"]


BAD_REQUESTS = [
    ("post", "/v1/segment", {"content": b"\0" * 100, "headers": {"content-type": "application/octet-stream"}},
     400, "100 bytes is not a multiple of 16"),
    ("post", "/v1/segment", {"content": b"", "headers": {"content-type": "application/octet-stream"}}, 400, "empty"),
    ("post", "/v1/segment", {"content": np.full((5, 4), np.nan, "<f4").tobytes(),
     "headers": {"content-type": "application/octet-stream"}}, 400, "5 of 5 points have NaN"),
    ("post", "/v1/segment", {"content": np.array([[1, 1, 1, np.inf]], "<f4").tobytes(),
     "headers": {"content-type": "application/octet-stream"}}, 400, "NaN or infinite"),
    ("post", "/v1/segment", {"content": b"VERSION 0.7\nDATA ascii\n", "headers": {"content-type": "application/x-pcd"}},
     400, "bad PCD header"),
    ("post", "/v1/segment", {"content": b"{}", "headers": {"content-type": "application/json"}},
     415, "application/json"),
    ("post", "/v1/segment", {"files": {"other": ("a.bin", b"\0" * 16)}}, 400, "file part named 'points'"),
    ("post", "/v1/segment", {"files": {"points": ("a.xyz", b"\0" * 16)}}, 400, "unknown point cloud format .xyz"),
    ("post", "/v1/detect?width=10&height=10", {"content": b"\0" * 299,
     "headers": {"content-type": "application/octet-stream"}}, 400, "needs 300 bytes"),
    ("post", "/v1/detect", {"content": b"\0" * 300, "headers": {"content-type": "application/octet-stream"}},
     400, "needs query parameters width and height"),
    ("post", "/v1/detect", {"content": b"\x89PNG\r\n\x1a\nnot really", "headers": {"content-type": "image/png"}},
     400, "image"),
    ("post", "/v1/detect", {"files": {"image": ("a.png", b"GIF89a....")}}, 400, "not a PNG or JPEG"),
    ("post", "/v1/detect?width=8&height=8", {"content": b"\0" * 192,
     "headers": {"content-type": "application/octet-stream"}}, 400, "outside 16..8192"),
    ("post", "/v1/detect", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
    ("post", "/v1/detect?width=0&height=5", {"content": b"", "headers": {"content-type": "application/octet-stream"}},
     422, "width"),
    ("post", "/v1/perceive", {"content": b"x", "headers": {"content-type": "application/octet-stream"}},
     415, "multipart/form-data"),
    ("post", "/v1/perceive", {"files": {"nothing": ("a.txt", b"x")}}, 400, "'image' and/or a file part 'points'"),
    ("get", "/v1/nowhere", {}, 404, "Not Found"),
    ("get", "/v1/segment", {}, 405, "Method Not Allowed"),
]  # fmt: skip


def test_bad_requests_get_4xx_json_errors_and_the_server_keeps_serving(client, street_scan):
    for method, path, kwargs, status, message in BAD_REQUESTS:
        response = httpx.request(method, client.base_url + path, timeout=60, **kwargs)
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"].startswith("application/json")
        assert set(response.json()) == {"error"} and message in response.json()["error"], (path, response.json())
    assert client.segment(street_scan.points[:2000])["num_points"] == 2000


def test_bodies_over_the_limit_get_413_whether_announced_or_streamed(pipeline, models):
    settings = service_settings(seg_model=models[0], det_model=models[1], max_body_mb=0.01)  # 10 KiB
    body = np.zeros((1000, 4), "<f4").tobytes()  # 16 000 bytes
    headers = {"content-type": "application/octet-stream"}
    with serve_in_background(settings, pipeline) as svc:
        announced = httpx.post(f"{svc.rest_url}/v1/segment", content=body, headers=headers, timeout=60)
        chunked = httpx.post(
            f"{svc.rest_url}/v1/segment", content=iter([body[:8000], body[8000:]]), headers=headers, timeout=60
        )
        ok = httpx.post(f"{svc.rest_url}/v1/segment", content=body[:1600], headers=headers, timeout=60)
    for response in (announced, chunked):
        assert response.status_code == 413 and "larger than the limit of 10485 bytes" in response.json()["error"]
    assert ok.status_code == 400 and "no valid point" in ok.json()["error"]  # within the limit; all at the origin


def test_models_health_and_readiness(client, models):
    import hashlib

    assert client.health() and client.ready()[0]
    listed = ModelsResponse.model_validate({"models": client.models()}).models
    by_stage = {m.stage: m for m in listed}
    assert by_stage["lidar"].task == "segmentation" and by_stage["lidar"].input_size == [64, 512]
    assert by_stage["lidar"].sensor == "kitti-front" and by_stage["lidar"].architecture == "squeezeseg+crf"
    assert by_stage["camera"].task == "detection" and by_stage["camera"].input_size == [1248, 384]
    assert by_stage["camera"].classes == ["car", "pedestrian", "cyclist"]
    for model, path in ((by_stage["lidar"], models[0]), (by_stage["camera"], models[1])):
        assert model.loaded and model.providers == ["CPUExecutionProvider"] and model.error is None
        assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and model.name == path.name


def test_a_missing_model_makes_readyz_503_and_its_endpoint_503_while_the_rest_serves(tmp_path, models, street_scan):
    settings = service_settings(seg_model=models[0], det_model=tmp_path / "absent.onnx")
    with serve_in_background(settings) as svc:  # builds its own pipeline from the settings
        url = svc.rest_url
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert ready.json()["stages"] == {"camera": False, "lidar": True}
        assert "absent.onnx: no such model file" in ready.json()["errors"]["camera"]
        assert httpx.get(f"{url}/healthz").status_code == 200
        png = png_bytes(synthetic_image())
        detect = httpx.post(f"{url}/v1/detect", content=png, headers={"content-type": "image/png"})
        assert detect.status_code == 503 and "camera stage is unavailable" in detect.json()["error"]
        perceive = httpx.post(f"{url}/v1/perceive", files={"image": ("a.png", png), "points": ("a.bin", b"\0" * 16)})
        assert perceive.status_code == 503
        seg = httpx.post(
            f"{url}/v1/segment", content=street_scan.points[:1000].tobytes(), headers={"content-type": RAW}
        )
        assert seg.status_code == 200 and seg.json()["num_points"] == 1000
        assert [m["loaded"] for m in httpx.get(f"{url}/v1/models").json()["models"]] == [False, True]
        assert 'perception_model_loaded{stage="camera"} 0.0' in httpx.get(f"{url}/metrics").text


def test_the_api_key_guards_v1_and_the_websocket_but_not_probes(pipeline, models, street_scan):
    settings = service_settings(seg_model=models[0], det_model=models[1], api_key=API_KEY)
    with serve_in_background(settings, pipeline) as svc:
        url = svc.rest_url
        for headers in ({}, {"x-api-key": "wrong"}):
            response = httpx.get(f"{url}/v1/models", headers=headers)
            assert response.status_code == 401 and "API key" in response.json()["error"]
            response = httpx.post(f"{url}/v1/segment", content=b"\0" * 16, headers={**headers, "content-type": RAW})
            assert response.status_code == 401
        assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/readyz").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200
        with RestClient(url, api_key=API_KEY) as good:
            assert len(good.models()) == 2
            answers = list(good.stream([Frame("k", 1.0, points=street_scan.points[:2000])]))
            assert [a["type"] for a in answers] == ["result"]
        with RestClient(url) as anonymous, pytest.raises(ClientError) as err:
            list(anonymous.stream([Frame("k", 1.0, points=street_scan.points[:2000])]))
        assert err.value.status == 403
        with RestClient(url, api_key="wrong") as bad, pytest.raises(ClientError) as err:
            bad.segment(street_scan.points[:10])
        assert err.value.status == 401


def test_openapi_describes_typed_requests_and_responses(client):
    doc = httpx.get(f"{client.base_url}/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for name in ("DetectResponse", "SegmentResponse", "PerceiveResponse", "ModelsResponse", "ErrorResponse"):
        assert name in schemas
    detect = doc["paths"]["/v1/detect"]["post"]
    assert {"multipart/form-data", "image/png", "image/jpeg", RAW} <= set(detect["requestBody"]["content"])
    assert detect["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("DetectResponse")
    assert detect["responses"]["415"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    assert {"application/x-pcd", RAW} <= set(doc["paths"]["/v1/segment"]["post"]["requestBody"]["content"])


def test_cors_is_off_by_default_and_on_for_configured_origins(pipeline):
    preflight = {"origin": "https://ui.example", "access-control-request-method": "POST"}
    with serve_in_background(service_settings(seg_model=None, det_model=None), pipeline) as svc:
        assert (
            "access-control-allow-origin" not in httpx.options(f"{svc.rest_url}/v1/segment", headers=preflight).headers
        )
    cors = service_settings(seg_model=None, det_model=None, cors_origins="https://ui.example, https://b.example")
    assert cors.cors_origins == ["https://ui.example", "https://b.example"]
    with serve_in_background(cors, pipeline) as svc:
        response = httpx.options(f"{svc.rest_url}/v1/segment", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://ui.example"


def test_settings_come_from_perception_environment_variables(monkeypatch):
    monkeypatch.setenv("PERCEPTION_PORT", "9100")
    monkeypatch.setenv("PERCEPTION_GRPC_PORT", "9101")
    monkeypatch.setenv("PERCEPTION_SEG_MODEL", "none")
    monkeypatch.setenv("PERCEPTION_API_KEY", "k-9f3e-secret")
    monkeypatch.setenv("PERCEPTION_CORS_ORIGINS", '["https://a.example"]')
    monkeypatch.setenv("PERCEPTION_STREAM_POLICY", "block")
    settings = Settings()
    assert (settings.port, settings.grpc_port, settings.seg_model) == (9100, 9101, None)
    assert settings.api_key_value() == "k-9f3e-secret" and "9f3e" not in repr(settings)
    assert settings.cors_origins == ["https://a.example"] and settings.stream_policy == "block"
    assert str(settings.det_model) == "models/squeezedet.onnx" and settings.host == "127.0.0.1"
    monkeypatch.setenv("PERCEPTION_STREAM_POLICY", "newest")
    with pytest.raises(ValueError, match="stream_policy"):
        Settings()


# --- WebSocket stream ----------------------------------------------------------------------------


def burst(points: np.ndarray, count: int) -> list[Frame]:
    return [Frame(f"{k:03d}", float(k), points=points) for k in range(count)]


def test_websocket_drops_the_oldest_frames_when_the_client_is_faster(client, street_scan):
    before = metric_value(client.metrics(), "perception_dropped_frames_total", protocol="websocket")
    answers = list(client.stream(burst(street_scan.points[:5000], 12)))
    ids = [a["frame_id"] for a in answers]
    assert all(a["type"] == "result" for a in answers)
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[-1] == "011"  # the newest is never dropped
    dropped = [a["dropped_before"] for a in answers]
    assert sum(dropped) + len(answers) == 12 and sum(dropped) > 0
    assert int(ids[0]) == dropped[0]
    for a, b in itertools.pairwise(answers):  # the gap between two answers is what was dropped
        assert int(b["frame_id"]) - int(a["frame_id"]) - 1 == b["dropped_before"]
    end = client.last_stream_end
    assert end == {"type": "end", "received": 12, "processed": len(answers), "dropped": sum(dropped), "errors": 0}
    after = metric_value(client.metrics(), "perception_dropped_frames_total", protocol="websocket")
    assert after - before == sum(dropped)


def test_websocket_block_policy_answers_every_frame_in_order(blocking_server, street_scan):
    with RestClient(blocking_server.rest_url) as c:
        answers = list(c.stream(burst(street_scan.points[:5000], 5), include_labels=True))
    assert [a["frame_id"] for a in answers] == ["000", "001", "002", "003", "004"]
    assert [a["dropped_before"] for a in answers] == [0] * 5
    assert all(a["labels"].shape == (5000,) for a in answers)
    np.testing.assert_array_equal(answers[0]["labels"], answers[4]["labels"])


def test_websocket_bad_frames_get_error_answers_in_order_and_the_stream_goes_on(blocking_server, street_scan):
    from websockets.sync.client import connect

    good = encode_stream_frame(Frame("good", 5.0, points=street_scan.points[:2000]))
    with connect(f"{blocking_server.ws_url}/v1/stream", max_size=None) as ws:
        ws.send(pack_frame_envelope({"frame_id": "nan"}, points=np.full((4, 4), np.nan, "<f4").tobytes()))
        ws.send(b"\x05\x00")
        ws.send(pack_frame_envelope({"frame_id": "odd"}, points=b"\0" * 20))
        ws.send(pack_frame_envelope({"frame_id": "rgb", "image": {"encoding": "rgb8", "width": 20}}, b"\0" * 60))
        ws.send("hello")
        ws.send(pack_frame_envelope({"frame_id": "png"}, png_bytes(synthetic_image())))
        ws.send(good)
        ws.send(encode_stream_frame(Frame("cam", 6.0, image=synthetic_image(seed=2))))
        ws.send(json.dumps({"type": "end"}))
        answers = [json.loads(message) for message in ws]  # until the server closes after its end message
    kinds = [(a["type"], a.get("frame_id")) for a in answers]
    assert kinds == [
        ("error", "nan"), ("error", "2"), ("error", "odd"), ("error", "rgb"), ("error", "5"),
        ("result", "png"), ("result", "good"), ("result", "cam"),
        ("end", None),
    ]  # fmt: skip
    errors = [a["error"] for a in answers[:5]]
    assert "4 of 4 points have NaN" in errors[0] and "shorter than its 4-byte header" in errors[1]
    assert "20 bytes is not a multiple of 16" in errors[2] and "rgb8 needs width and height" in errors[3]
    assert "unexpected text message" in errors[4]
    assert answers[5]["detections"] and answers[5]["num_points"] is None  # an image-only envelope
    assert answers[6]["num_points"] == 2000 and answers[6]["timestamp"] == 5.0
    assert answers[7]["image_size"] == [1242, 375]
    assert answers[8] == {"type": "end", "received": 8, "processed": 3, "dropped": 0, "errors": 5}


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_count_requests_by_endpoint_and_status_and_time_the_stages(client, street_scan):
    client.segment(street_scan.points[:2000])
    httpx.post(f"{client.base_url}/v1/segment", content=b"\0" * 5, headers={"content-type": RAW})
    text = client.metrics()
    assert metric_value(text, "perception_requests_total", endpoint="/v1/segment", protocol="http", status="200") >= 1
    assert metric_value(text, "perception_requests_total", endpoint="/v1/segment", protocol="http", status="400") >= 1
    assert metric_value(text, "perception_request_duration_seconds_count", endpoint="/v1/segment") >= 2
    for stage in ("lidar.projection", "lidar.inference", "lidar.clustering", "total"):
        assert metric_value(text, "perception_stage_duration_seconds_count", stage=stage) >= 1
    assert metric_value(text, "perception_model_loaded", stage="lidar") == 1.0
    assert "# TYPE perception_dropped_frames_total counter" in text


# --- run_server: one process, both servers, graceful shutdown ------------------------------------


def test_run_server_serves_rest_and_grpc_and_stops_cleanly_on_sigterm(models, tmp_path):
    pytest.importorskip("grpc_health")
    from perception.client import GrpcClient

    port, grpc_port = free_port(), free_port()
    env = server_env(models, port, grpc_port)
    code = "from perception.service.server import run_server; run_server()"
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(1200):  # the loop stops as soon as it answers; this only guards a hung start
            if proc.poll() is not None:
                break
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        assert proc.poll() is None, log.read_text()
        with GrpcClient(f"127.0.0.1:{grpc_port}") as grpc_client:
            assert grpc_client.health("perception.v1.Perception") == "SERVING"
            assert grpc_client.segment(np.array([[5, 0, -1, 0.5]] * 20, np.float32))["num_points"] == 20
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for p in (port, grpc_port):  # both ports are released
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", p)) != 0
    assert "Traceback" not in log.read_text()
