"""The live viewer's feed: /viewer page and assets, the /v1/viewer WebSocket on a real server, the message format.

The browser itself is tested in test_viewer_browser.py.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import re
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from perception.camera.boxes import Detection2D
from perception.client import RestClient
from perception.io import read_velodyne_bin
from perception.lidar.clustering import Box3D, Instance
from perception.pipeline import Frame, PerceptionResult, Pipeline
from perception.service import viewer as viewer_module
from perception.service.server import serve_in_background
from perception.service.settings import Settings
from perception.service.viewer import (
    STATIC_DIR,
    ViewerSnapshot,
    decode_viewer_message,
    encode_viewer_message,
    select_points,
)

from .conftest import SAMPLE_DIR
from .test_pipeline import exported_models, synthetic_image

API_KEY = "viewer-key-7"


@functools.cache
def viewer_models(root: str) -> tuple[Path, Path]:
    """Fresh-weight ONNX models exported once per test session (shared with the browser and demo tests)."""
    return exported_models(root)


@functools.cache
def viewer_pipeline(seg: Path, det: Path) -> Pipeline:
    return Pipeline(seg, det, providers="cpu")


def models_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.getbasetemp() / "viewer-models")


def settings_for(models: tuple[Path, Path], **overrides: object) -> Settings:
    base: dict[str, object] = {"host": "127.0.0.1", "port": 0, "grpc_port": 0, "grpc_enabled": False,
                               "providers": "cpu", "seg_model": models[0], "det_model": models[1]}  # fmt: skip
    base.update(overrides)
    return Settings(**base)


@functools.cache
def sample_points() -> np.ndarray:
    return read_velodyne_bin(SAMPLE_DIR / "velodyne" / "000000.bin")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return viewer_models(models_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def server(models):
    with serve_in_background(settings_for(models), viewer_pipeline(*models)) as svc:
        yield svc


def connect_viewer(url: str, **kwargs):
    from websockets.sync.client import connect

    return connect(url, max_size=None, open_timeout=30, **kwargs)


def next_frame(ws, timeout: float = 120.0) -> tuple[dict, bytes | None, np.ndarray | None]:
    """The next binary frame message (skipping the hello)."""
    while True:
        message = ws.recv(timeout=timeout)
        if isinstance(message, bytes):
            return decode_viewer_message(message)


# --- the message ------------------------------------------------------------------------------------


def known_snapshot(num_points: int = 5000, seq: int = 3) -> ViewerSnapshot:
    rng = np.random.default_rng(0)
    points = rng.uniform(-30, 30, (num_points, 4)).astype(np.float32)
    labels = np.zeros(num_points, np.int64)
    labels[:40] = 1
    labels[100:110] = 2
    box = Box3D(10.0, 2.0, -1.0, 4.0, 1.8, 1.5, 0.25)
    instance = Instance(1, 1, 40, np.arange(40), np.array([10.0, 2.0, -1.0]), box, 0.8)
    result = PerceptionResult(
        "f-9", 12.5, detections=[Detection2D(1, "car", 0.75, 100.0, 50.0, 300.0, 200.0)], labels=labels,
        scores=np.ones(num_points, np.float32), instances=[instance], providers={"camera": "CPUExecutionProvider"},
        timings_ms={"camera": 12.0, "lidar": 30.5, "total": 31.25}, image_size=(1600, 400), classes=("unknown", "car"),
    )  # fmt: skip
    image = np.zeros((400, 1600, 3), np.uint8)
    image[:, :800] = (200, 30, 30)
    return ViewerSnapshot(seq, "/v1/perceive", 1000.0, Frame("f-9", 12.5, image=image, points=points), result)


def test_a_viewer_message_carries_the_result_a_jpeg_and_subsampled_points():
    snap = known_snapshot()
    message = encode_viewer_message(snap, max_points=1000, max_image_width=800)
    header, jpeg, points = decode_viewer_message(message)
    (length,) = struct.unpack_from("<I", message, 0)
    assert length % 4 == 0 and header["points"]["offset"] % 4 == 0
    assert (header["type"], header["seq"], header["source"], header["frame_id"]) == ("frame", 3, "/v1/perceive", "f-9")
    assert header["detections"] == [{"class_id": 1, "class_name": "car", "score": 0.75,
                                     "x1": 100.0, "y1": 50.0, "x2": 300.0, "y2": 200.0}]  # fmt: skip
    assert header["timings_ms"]["total"] == 31.25 and header["instances"][0]["box"]["yaw"] == 0.25
    assert header["image_size"] == [1600, 400], "boxes stay in original pixels"
    picture = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert picture.shape == (200, 800, 3) and (header["image"]["width"], header["image"]["height"]) == (800, 200)
    assert np.abs(picture[100, 200].astype(int) - (200, 30, 30)).max() < 12 and picture[100, 600].max() < 12
    assert points.shape == (1000, 4) and header["points"]["total"] == 5000
    assert int((points[:, 3] == 1).sum()) == 40 and int((points[:, 3] == 2).sum()) == 10, "objects are all kept"
    original = {row.tobytes() for row in snap.frame.points[:, :3].astype("<f4")}
    assert all(row.tobytes() in original for row in np.ascontiguousarray(points[:, :3])), "points are input points"


def test_select_points_keeps_objects_first_and_spreads_the_background():
    pts = np.zeros((100, 4), np.float32)
    pts[:, 0] = np.arange(100)
    pts[7, 1] = np.nan
    labels = np.zeros(100, np.int64)
    labels[[3, 50, 97]] = 2
    assert select_points(pts, labels, 1000).tolist() == [i for i in range(100) if i != 7]
    idx = select_points(pts, labels, 10)
    assert len(idx) == 10 and {3, 50, 97} <= set(idx.tolist()) and 7 not in idx
    assert idx.min() < 10 and idx.max() > 90, "background spread over the cloud"
    assert len(select_points(pts, labels, 2)) == 2 and set(select_points(pts, labels, 2).tolist()) <= {3, 50, 97}
    assert len(select_points(pts, labels, 0)) == 0


# --- the page --------------------------------------------------------------------------------------


def test_the_viewer_page_and_its_assets_are_served_without_external_resources(server):
    page = httpx.get(f"{server.rest_url}/viewer", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = [a for a in re.findall(r'(?:src|href)="([^"]+)"', page.text) if not a.startswith("data:")]
    assert sorted(assets) == ["viewer/static/viewer.css", "viewer/static/viewer.js"]
    for asset in assets:
        res = httpx.get(f"{server.rest_url}/{asset}", timeout=30)
        assert res.status_code == 200 and len(res.content) > 500, asset
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//cdn|@import|import\s*\(", text), f"{path.name} loads something from outside"
    assert httpx.get(f"{server.rest_url}/viewer/", timeout=30, follow_redirects=True).status_code == 200


def test_static_files_are_package_data():
    import tomllib

    doc = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = doc["tool"]["setuptools"]["package-data"]["perception"]
    assert "service/static/*" in patterns
    assert {p.name for p in STATIC_DIR.iterdir()} >= {"viewer.html", "viewer.js", "viewer.css"}


# --- the feed on a real server ------------------------------------------------------------------------


def test_frames_sent_through_the_stream_and_rest_reach_the_viewer(server):
    with connect_viewer(f"{server.ws_url}/v1/viewer") as ws:
        hello = json.loads(ws.recv(timeout=30))
        assert hello["type"] == "hello" and {m["stage"] for m in hello["models"]} == {"camera", "lidar"}
        image = synthetic_image(seed=5)
        frame = Frame("view-1", 3.5, image=image, points=sample_points())
        with RestClient(server.rest_url) as client:
            answers = list(client.stream([frame]))
        header, jpeg, points = next_frame(ws)
        while header["frame_id"] != "view-1":  # a frame another test sent before this one connected
            header, jpeg, points = next_frame(ws)
        answer = answers[0]
        assert header["source"] == "/v1/stream" and header["timestamp"] == 3.5
        assert header["detections"] == answer["detections"] and header["detections"]
        assert header["timings_ms"] == answer["timings_ms"]
        assert len(header["instances"]) == len(answer["instances"])
        assert Image.open(io.BytesIO(jpeg)).size == (1242, 375) and header["image_size"] == [1242, 375]
        assert points.shape == (header["points"]["count"], 4) and 0 < len(points) <= 30_000
        assert header["points"]["total"] == len(sample_points())
        predicted = answer["class_counts"]
        drawn_objects = int((points[:, 3] > 0).sum())
        assert drawn_objects == min(30_000, sum(v for k, v in predicted.items() if k != "unknown"))

        with RestClient(server.rest_url) as client:
            doc = client.segment(sample_points()[:20_000], frame_id="rest-2", timestamp=4.0)
        header, jpeg, points = next_frame(ws)
        assert (header["frame_id"], header["source"], jpeg) == ("rest-2", "/v1/segment", None)
        assert header["seq"] >= 2 and len(points) == 20_000 and header["class_counts"] == doc["class_counts"]


def test_a_new_viewer_gets_the_latest_frame_at_once_and_one_encoding_serves_all(server, monkeypatch):
    calls: list[int] = []
    real = viewer_module.encode_viewer_message

    def counting(snapshot, *args, **kwargs):
        calls.append(snapshot.seq)
        return real(snapshot, *args, **kwargs)

    monkeypatch.setattr(viewer_module, "encode_viewer_message", counting)
    with RestClient(server.rest_url) as client:
        client.detect(synthetic_image(seed=1), frame_id="latest-1")
    with connect_viewer(f"{server.ws_url}/v1/viewer") as a, connect_viewer(f"{server.ws_url}/v1/viewer") as b:
        first = [next_frame(a)[0], next_frame(b)[0]]
        assert [h["frame_id"] for h in first] == ["latest-1", "latest-1"], "the newest frame comes at once"
        with RestClient(server.rest_url) as client:
            client.detect(synthetic_image(seed=2), frame_id="latest-2")
        second = [next_frame(a)[0], next_frame(b)[0]]
        assert [h["frame_id"] for h in second] == ["latest-2", "latest-2"]
    assert calls == [first[0]["seq"], second[0]["seq"]], "each frame is encoded once for both viewers"


def test_viewers_skip_to_the_newest_frame_when_frames_come_faster_than_they_read(models):
    settings = settings_for(models, det_model=None)
    pipeline = Pipeline(models[0], None, providers="cpu")
    with serve_in_background(settings, pipeline) as svc, connect_viewer(f"{svc.ws_url}/v1/viewer") as ws:
        ws.recv(timeout=30)  # hello
        hub = svc.uvicorn_server.config.app.state.viewer
        small = sample_points()[:3000]
        result = pipeline.run(Frame("x", 0.0, points=small))
        for k in range(1, 51):  # from this thread, as the pipeline's worker threads do
            frame_id = f"burst-{k}"
            hub.offer(Frame(frame_id, float(k), points=small), dataclasses.replace(result, frame_id=frame_id), "test")
        seen = []
        while not seen or seen[-1] != "burst-50":
            seen.append(next_frame(ws, timeout=30)[0]["frame_id"])
        assert len(seen) < 50 and seen[-1] == "burst-50", "a slow viewer skips frames and ends on the newest"
        assert hub.subscribers == 1
    pipeline.close()


def test_the_viewer_socket_needs_the_api_key_when_one_is_set(models):
    from websockets.exceptions import InvalidStatus

    settings = settings_for(models, api_key=API_KEY)
    with serve_in_background(settings, viewer_pipeline(*models)) as svc:
        assert httpx.get(f"{svc.rest_url}/viewer", timeout=30).status_code == 200, "the page itself holds no data"
        with pytest.raises(InvalidStatus), connect_viewer(f"{svc.ws_url}/v1/viewer"):
            pass
        with pytest.raises(InvalidStatus), connect_viewer(f"{svc.ws_url}/v1/viewer?api_key=wrong"):
            pass
        with connect_viewer(f"{svc.ws_url}/v1/viewer?api_key={API_KEY}") as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "hello"
        with connect_viewer(f"{svc.ws_url}/v1/viewer", additional_headers={"x-api-key": API_KEY}) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "hello"


def test_frames_sent_over_grpc_reach_the_viewer(models):
    from perception.client import GrpcClient

    settings = settings_for(models, grpc_enabled=True)
    with (
        serve_in_background(settings, viewer_pipeline(*models)) as svc,
        connect_viewer(f"{svc.ws_url}/v1/viewer") as ws,
    ):
        assert json.loads(ws.recv(timeout=30))["type"] == "hello"
        with GrpcClient(svc.grpc_target) as client:
            client.segment(sample_points()[:5_000], frame_id="grpc-1", timestamp=7.0)
        header, jpeg, points = next_frame(ws)
        assert (header["frame_id"], header["source"], header["timestamp"]) == ("grpc-1", "grpc", 7.0)
        assert jpeg is None and len(points) == 5_000
