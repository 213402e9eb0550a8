"""SqueezeDet / SqueezeDet+ nets, ONNX export parity, the torch-free detector and the detect/eval CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="exporting a model needs the [train] extra (torch)")

from perception.camera.anchors import squeezedet_anchors  # noqa: E402
from perception.io import KittiObject, read_label, write_image, write_label  # noqa: E402
from perception.runtime.detector import Detector  # noqa: E402
from perception.runtime.segmenter import InvalidInputError  # noqa: E402
from perception.runtime.session import ModelLoadError  # noqa: E402
from perception.training.export import (  # noqa: E402
    build_detection_model,
    compare_detection_with_onnxruntime,
    export_detection_onnx,
)
from perception.training.nets.squeezedet import SQUEEZEDET_PLUS, squeezedet, squeezedet_plus  # noqa: E402

from .conftest import KITTI_SAMPLES, requires_kitti_samples  # noqa: E402


@pytest.fixture(scope="module")
def det_model(tmp_path_factory):
    model = build_detection_model("squeezedet", seed=0)
    return model, export_detection_onnx(model, tmp_path_factory.mktemp("det") / "squeezedet.onnx")


def synthetic_frame(width: int = 1242, height: int = 375) -> np.ndarray:
    rng = np.random.default_rng(0)
    frame = np.zeros((height, width, 3), np.uint8)
    frame[: height // 2] = (135, 180, 230)
    frame[height // 2 :] = (90, 90, 95)
    frame[200:300, 400:600] = (200, 30, 30)
    return np.clip(frame + rng.integers(0, 8, frame.shape), 0, 255).astype(np.uint8)


def test_parameter_counts_and_grids_match_the_papers():
    for builder, params, grid in ((squeezedet, 2.08e6, (24, 78)), (squeezedet_plus, 7.02e6, (22, 76))):
        model = builder().eval()
        n = sum(p.numel() for p in model.parameters())
        assert n == pytest.approx(params, rel=0.01), builder.__name__
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 384, 1248))
        assert out.shape == (1, 72, *grid)


def test_convdet_split_follows_the_channel_layout():
    model = squeezedet()
    out = torch.arange(72, dtype=torch.float32).view(1, 72, 1, 1).repeat(1, 1, 2, 3)
    classes, conf, deltas = model.split_outputs(out)
    assert classes.shape == (1, 54, 3) and conf.shape == (1, 54) and deltas.shape == (1, 54, 4)
    # anchor k of a cell: class logits 3k..3k+2, confidence 27+k, deltas 36+4k..36+4k+3
    assert (
        classes[0, 4].tolist() == [12, 13, 14] and conf[0, 4].item() == 31 and deltas[0, 4].tolist() == [52, 53, 54, 55]
    )
    assert classes[0, 9].tolist() == [0, 1, 2]  # next cell, anchor 0


def test_bgr_mean_subtraction_inside_the_model():
    model = squeezedet()
    rgb = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    np.testing.assert_allclose(
        model.preprocess(rgb).flatten().numpy(), [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-5
    )


def test_export_parity_and_metadata(det_model):
    model, path = det_model
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["perception.task"] == "detection" and json.loads(meta["perception.grid"]) == [78, 24]
    image = (np.random.default_rng(1).random((2, 3, 384, 1248)) * 255).astype(np.float32)
    diff = compare_detection_with_onnxruntime(model, path, image)
    print(f"SqueezeDet torch vs ONNX Runtime max |diff|: {diff:.2e}")
    assert diff <= 1e-4


def test_squeezedet_plus_exports_with_its_own_grid(tmp_path):
    model = build_detection_model("squeezedet+", seed=0)
    assert model.variant is SQUEEZEDET_PLUS
    path = export_detection_onnx(model, tmp_path / "plus.onnx")
    detector = Detector(path, providers="cpu")
    assert len(detector.anchors) == 76 * 22 * 9
    np.testing.assert_array_equal(detector.anchors, squeezedet_anchors(grid_w=76, grid_h=22))
    image = (np.random.default_rng(2).random((1, 3, 384, 1248)) * 255).astype(np.float32)
    assert compare_detection_with_onnxruntime(model, path, image) <= 1e-4


def test_detector_boxes_lie_in_the_original_frame(det_model):
    detector = Detector(det_model[1], providers="cpu")
    result = detector.detect(synthetic_frame(1224, 370))
    assert result.image_size == (1224, 370) and result.provider == "CPUExecutionProvider"
    assert 0 < len(result.detections) <= 64
    for det in result.detections:
        assert 0 <= det.x1 <= det.x2 <= 1223 and 0 <= det.y1 <= det.y2 <= 369
        assert det.class_name in ("car", "pedestrian", "cyclist") and 0 <= det.score <= 1
    scores = [d.score for d in result.detections]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((375, 1242), np.uint8), "shape"),
        (np.zeros((375, 1242, 4), np.uint8), "shape"),
        (np.zeros((375, 1242, 3), np.float32), "uint8"),
        (np.zeros((4, 4, 3), np.uint8), "outside"),
    ],
)
def test_bad_frames_raise_clearly_and_detector_keeps_working(det_model, image, message):
    detector = Detector(det_model[1], providers="cpu")
    with pytest.raises(InvalidInputError, match=message):
        detector.detect(image)
    assert detector.detect(synthetic_frame()).image_size == (1242, 375)


def test_segmentation_model_is_not_a_detector(tmp_path, det_model):
    proto = onnx.load(det_model[1])
    for prop in proto.metadata_props:
        if prop.key == "perception.task":
            prop.value = "segmentation"
    onnx.save(proto, tmp_path / "x.onnx")
    with pytest.raises(ModelLoadError, match="not a detection model"):
        Detector(tmp_path / "x.onnx")


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perception.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_detect_cli_writes_json_png_and_kitti(tmp_path, det_model):
    frame = tmp_path / "frame.png"
    write_image(frame, synthetic_frame())
    outputs = ["--json", str(tmp_path / "d.json"), "--png", str(tmp_path / "d.png"), "--kitti", str(tmp_path / "d.txt")]
    res = run_cli("detect", str(frame), "--model", str(det_model[1]), *outputs, "--plot-threshold", "0")
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["image_size"] == [1242, 375] and len(doc["detections"]) == len(read_label(tmp_path / "d.txt"))
    assert (tmp_path / "d.png").stat().st_size > 0
    bad = run_cli("detect", str(tmp_path / "d.json"), "--model", str(det_model[1]))
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "not a PNG or JPEG" in bad.stderr


@requires_kitti_samples
def test_detect_cli_on_the_real_kitti_frame(tmp_path, det_model):
    res = run_cli("detect", str(KITTI_SAMPLES / "kitti_image_sample.png"), "--model", str(det_model[1]))
    assert res.returncode == 0 and "1242 x 375" in res.stdout


def test_eval_det_cli_json(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for i in range(45):
        car = KittiObject("Car", 0.0, 0, 0.0, (100.0 + i, 100.0, 200.0 + i, 180.0), (1.5, 1.6, 4.0), (0, 1.7, 10), 0)
        ped = KittiObject("Pedestrian", 0.0, 0, 0.0, (500.0, 100.0, 540.0, 200.0), (1.7, 0.6, 0.8), (0, 1.7, 9), 0)
        write_label(gt_dir / f"{i:06d}.txt", [car, ped])
        car.score, ped.score = 0.9, 0.8
        write_label(pred_dir / f"{i:06d}.txt", [car] if i % 2 else [car, ped])
    res = run_cli("eval", "det", "--gt", str(gt_dir), "--pred", str(pred_dir), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["metric"] == "R40" and out["car"] == {"easy": 100.0, "moderate": 100.0, "hard": 100.0}
    assert out["pedestrian"]["easy"] < 100.0  # half the pedestrians were missed
    bad = run_cli("eval", "det", "--gt", str(tmp_path / "nope"), "--pred", str(pred_dir))
    assert bad.returncode == 2 and "not a directory" in bad.stderr


def test_fresh_squeezedet_starts_with_unit_scale_activations():
    """conv1's He init accounts for the unnormalised pixel input, so training from scratch is stable."""
    from perception.training.nets.squeezedet import squeezedet

    model = squeezedet().eval()
    image = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (1, 3, 384, 1248)).astype(np.float32))
    with torch.no_grad():
        conv1 = torch.relu(model.conv1(model.preprocess(image)))
        out = model(image)
    assert 0.2 < float(conv1.std()) < 5.0
    assert float(out.abs().max()) < 1.0
