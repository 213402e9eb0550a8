"""The perception pipeline (camera + LiDAR on real ONNX models with fresh weights) and the stream queues.

The exported models and one loaded :class:`Pipeline` are shared with ``test_service_rest.py`` and
``test_service_grpc.py`` through the cached helpers here (exported once per session).
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from perception.pipeline import (
    AsyncFrameQueue,
    Frame,
    FrameQueue,
    InvalidInputError,
    ModelLoadError,
    Pipeline,
    QueueClosedError,
    StageUnavailableError,
)

# --- shared fixtures (imported by the service tests) --------------------------------------------


@functools.cache
def exported_models(root: str) -> tuple[Path, Path]:
    """(segmentation, detection) ONNX models with fresh weights, exported once into ``root``."""
    pytest.importorskip("torch", reason="exporting a model needs the [train] extra (torch)")
    from perception.lidar.sensors import SENSORS
    from perception.training.export import (
        build_detection_model,
        build_segmentation_model,
        export_detection_onnx,
        export_segmentation_onnx,
    )

    out = Path(root)
    seg = export_segmentation_onnx(build_segmentation_model(seed=0), out / "squeezeseg.onnx", SENSORS["kitti-front"])
    det = export_detection_onnx(build_detection_model("squeezedet", seed=0), out / "squeezedet.onnx")
    return seg, det


@functools.cache
def shared_pipeline(seg: Path, det: Path) -> Pipeline:
    """One pipeline for the whole session (CPU, so results are reproducible)."""
    return Pipeline(seg, det, providers="cpu")


def models_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.getbasetemp() / "service-models")


def synthetic_image(width: int = 1242, height: int = 375, seed: int = 0) -> np.ndarray:
    """A KITTI-sized RGB frame: sky, road, a red box, noise."""
    rng = np.random.default_rng(seed)
    frame = np.zeros((height, width, 3), np.uint8)
    frame[: height // 2] = (135, 180, 230)
    frame[height // 2 :] = (90, 90, 95)
    frame[height // 2 : height // 2 + 80, width // 3 : width // 3 + 160] = (200, 30, 30)
    return np.clip(frame + rng.integers(0, 8, frame.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return exported_models(models_root(tmp_path_factory))


@pytest.fixture(scope="module")
def pipeline(models):
    return shared_pipeline(*models)


@pytest.fixture(scope="module")
def both_result(pipeline, street_scan):
    frame = Frame("f-1", 1234.5, image=synthetic_image(), points=street_scan.points)
    return frame, pipeline.run(frame)


# --- pipeline ----------------------------------------------------------------------------------


def test_a_frame_with_both_sensors_runs_both_stages_with_timings_and_providers(both_result, street_scan):
    _, result = both_result
    n = len(street_scan.points)
    assert n > 100_000
    assert (result.frame_id, result.timestamp) == ("f-1", 1234.5)
    assert result.labels.shape == (n,) and result.labels.dtype == np.int64
    assert result.scores.shape == (n,) and result.scores.dtype == np.float32
    assert result.image_size == (1242, 375) and result.detections
    assert result.providers == {"camera": "CPUExecutionProvider", "lidar": "CPUExecutionProvider"}
    expected = {"camera.preprocess", "camera.inference", "camera.postprocess", "camera"}
    expected |= {"lidar.projection", "lidar.inference", "lidar.unprojection", "lidar.clustering", "lidar", "total"}
    assert set(result.timings_ms) == expected
    assert all(v >= 0 for v in result.timings_ms.values())
    # the stages run concurrently inside the frame's total
    assert result.timings_ms["total"] >= max(result.timings_ms["camera"], result.timings_ms["lidar"])
    assert result.dropped_before == 0 and result.num_points_in_view == int((result.scores > 0).sum())
    for inst in result.instances:
        assert inst.class_id in (1, 2, 3) and (result.labels[inst.point_indices] == inst.class_id).all()


def test_the_result_dict_is_json_and_carries_labels_only_when_asked(both_result):
    _, result = both_result
    small = result.to_dict()
    assert "labels" not in small and "scores" not in small
    assert "point_indices" not in small["instances"][0]
    json.dumps(small, allow_nan=False)
    full = result.to_dict(include_labels=True, include_point_indices=True)
    assert full["labels"] == result.labels.tolist()
    np.testing.assert_allclose(full["scores"], result.scores, atol=5e-5)
    assert full["instances"][0]["point_indices"] == result.instances[0].point_indices.tolist()
    assert sum(full["class_counts"].values()) == full["num_points"] == len(result.labels)
    assert full["image_size"] == [1242, 375] and full["detections"][0]["class_name"] in ("car", "pedestrian", "cyclist")
    json.dumps(full, allow_nan=False)


def test_the_pipeline_gives_what_the_stages_give_alone(pipeline, both_result):
    frame, result = both_result
    seg = pipeline.segmenter.segment(frame.points)
    np.testing.assert_array_equal(result.labels, seg.labels)
    det = pipeline.detector.detect(frame.image)
    assert [d.box for d in result.detections] == [d.box for d in det.detections]


def test_single_sensor_frames_run_only_their_stage(pipeline, street_scan):
    cam = pipeline.run(Frame("cam", 1.0, image=synthetic_image(seed=1)))
    assert cam.labels is None and cam.instances == [] and cam.detections
    assert set(cam.providers) == {"camera"} and "lidar" not in cam.timings_ms
    assert cam.to_dict()["num_points"] is None
    lidar = pipeline.run(Frame("lidar", 2.0, points=street_scan.points[:5000, :3]))  # (N, 3): intensity 0
    assert lidar.detections == [] and lidar.image_size is None and lidar.labels.shape == (5000,)
    assert set(lidar.providers) == {"lidar"} and "camera" not in lidar.timings_ms


def test_concurrent_callers_all_get_their_own_results(pipeline, street_scan):
    results: dict[int, object] = {}

    def work(k: int) -> None:
        pts = street_scan.points[k * 3000 : (k + 1) * 3000]
        results[k] = pipeline.run(Frame(str(k), float(k), points=pts))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2]
    for k, res in results.items():
        assert res.frame_id == str(k) and res.labels.shape == (3000,)
        np.testing.assert_array_equal(
            res.labels, pipeline.segmenter.segment(street_scan.points[k * 3000 : (k + 1) * 3000]).labels
        )


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (Frame("a", 0.0), "neither an image nor points"),
        (Frame("b", 0.0, points=np.zeros((0, 4), np.float32)), "empty"),
        (Frame("c", 0.0, points=np.full((10, 4), np.nan, np.float32)), "10 of 10 points have NaN"),
        (Frame("d", 0.0, points=np.array([[1, 2, 3, 4], [np.inf, 0, 0, 0]], np.float32)), "1 of 2 points"),
        (Frame("e", 0.0, points=np.zeros((10, 5), np.float32)), "shape"),
        (Frame("f", 0.0, image=np.zeros((100, 100), np.uint8)), "must be \\(H, W, 3\\)"),
        (Frame("g", 0.0, image=np.zeros((100, 100, 3), np.float32)), "uint8"),
        (Frame("h", float("nan"), points=np.ones((10, 4), np.float32)), "timestamp"),
    ],
)
def test_bad_frames_raise_invalid_input_and_the_pipeline_keeps_working(pipeline, frame, message):
    with pytest.raises(InvalidInputError, match=message):
        pipeline.run(frame)


def test_after_bad_frames_a_good_one_still_runs(pipeline, street_scan):
    with pytest.raises(InvalidInputError):
        pipeline.run(Frame("x", 0.0, points=np.full((3, 4), np.inf, np.float32), image=synthetic_image()))
    assert pipeline.run(Frame("ok", 0.0, points=street_scan.points[:2000])).labels.shape == (2000,)


def test_nan_policy_drop_labels_bad_points_unknown(models, street_scan):
    pts = street_scan.points[:4000].copy()
    pts[::4, 1] = np.nan
    with Pipeline(models[0], None, providers="cpu", nan_policy="drop", cluster=False) as pipe:
        result = pipe.run(Frame("n", 0.0, points=pts))
    assert (result.labels[::4] == 0).all() and (result.scores[::4] == 0).all()
    assert result.instances == [] and "lidar.clustering" not in result.timings_ms


def test_missing_models_leave_their_stage_unavailable_with_a_clear_error(tmp_path, models):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelLoadError, match="no such model file"):
        Pipeline(missing, None)
    pipe = Pipeline(models[0], missing, providers="cpu", strict=False)
    assert not pipe.ready and pipe.available("lidar") and not pipe.available("camera")
    assert "nope.onnx: no such model file" in pipe.load_errors["camera"]
    infos = {m.stage: m for m in pipe.models()}
    assert infos["camera"].loaded is False and "no such model file" in infos["camera"].error
    assert infos["lidar"].loaded and infos["lidar"].task == "segmentation" and infos["lidar"].input_size == [64, 512]
    assert len(infos["lidar"].sha256) == 64 and infos["lidar"].providers == ["CPUExecutionProvider"]
    with pytest.raises(StageUnavailableError, match=r"camera stage is unavailable.*nope\.onnx: no such model file"):
        pipe.run(Frame("x", 0.0, image=synthetic_image()))
    pipe.close()
    lidar_only = Pipeline(None, None)
    assert not lidar_only.ready and lidar_only.models() == []
    with pytest.raises(StageUnavailableError, match="lidar stage is not configured"):
        lidar_only.run(Frame("x", 0.0, points=np.ones((4, 4), np.float32)))
    lidar_only.close()
    with pytest.raises(RuntimeError, match="closed"):
        lidar_only.run(Frame("x", 0.0, points=np.ones((4, 4), np.float32)))


# --- stream queues -------------------------------------------------------------------------------


def test_drop_policy_drops_the_oldest_and_reports_the_count_with_the_next_item():
    q: FrameQueue[int] = FrameQueue(2, "drop")
    assert [q.put(i) for i in range(5)] == [0, 0, 1, 1, 1]
    assert q.get() == (3, 3)  # 0, 1, 2 dropped before 3
    assert q.put(5) == 0
    assert q.get() == (4, 0) and q.get() == (5, 0)
    assert (q.received, q.dropped) == (6, 3)
    q.close()
    assert q.get() is None
    with pytest.raises(QueueClosedError):
        q.put(6)


def test_block_policy_makes_the_sender_wait_and_drops_nothing():
    q: FrameQueue[int] = FrameQueue(1, "block")
    sent: list[int] = []

    def sender() -> None:
        for i in range(4):
            q.put(i)
            sent.append(i)
        q.close()

    t = threading.Thread(target=sender)
    t.start()
    got = []
    while (item := q.get()) is not None:
        got.append(item)
    t.join()
    assert got == [(0, 0), (1, 0), (2, 0), (3, 0)] and sent == [0, 1, 2, 3] and q.dropped == 0


def test_closing_a_queue_delivers_what_is_queued_then_none():
    q: FrameQueue[str] = FrameQueue(3)
    q.put("a")
    q.put("b")
    q.close()
    assert [q.get(), q.get(), q.get()] == [("a", 0), ("b", 0), None]
    assert FrameQueue(1).get(timeout=0.01) is None
    with pytest.raises(ValueError, match="maxsize"):
        FrameQueue(0)
    with pytest.raises(ValueError, match="policy"):
        FrameQueue(1, "newest")  # type: ignore[arg-type]


def test_async_queue_has_the_same_semantics():
    async def scenario() -> tuple[list, list]:
        drop: AsyncFrameQueue[int] = AsyncFrameQueue(2, "drop")
        for i in range(5):
            await drop.put(i)
        await drop.close()
        dropped = [await drop.get() for _ in range(3)]
        block: AsyncFrameQueue[int] = AsyncFrameQueue(1, "block")

        async def producer() -> None:
            for i in range(3):
                await block.put(i)
            await block.close()

        task = asyncio.create_task(producer())
        blocked = []
        while (item := await block.get()) is not None:
            blocked.append(item)
        await task
        return dropped, blocked

    dropped, blocked = asyncio.run(scenario())
    assert dropped == [(3, 3), (4, 0), None]
    assert blocked == [(0, 0), (1, 0), (2, 0)]
