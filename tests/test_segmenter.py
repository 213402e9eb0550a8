"""ONNX export of SqueezeSeg + CRF and the torch-free runtime segmenter, on real and synthetic scans."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="exporting a model needs the [train] extra (torch)")

from perception.lidar.sensors import SENSORS  # noqa: E402
from perception.runtime.segmenter import InvalidInputError, Segmenter, argmax_classes  # noqa: E402
from perception.runtime.session import ModelLoadError, load_model, parse_provider_preference  # noqa: E402
from perception.training.export import (  # noqa: E402
    build_segmentation_model,
    compare_with_onnxruntime,
    export_segmentation_onnx,
)

from .conftest import kitti_sample_scans, requires_kitti_samples  # noqa: E402


@pytest.fixture(scope="session")
def seg_model(tmp_path_factory):
    model = build_segmentation_model(seed=0)
    path = export_segmentation_onnx(model, tmp_path_factory.mktemp("models") / "seg.onnx", SENSORS["kitti-front"])
    return model, path


def test_export_is_a_checked_opset17_graph_with_dynamic_batch_and_metadata(seg_model):
    _, path = seg_model
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [5, 64, 512]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["perception.task"] == "segmentation" and meta["perception.architecture"] == "squeezeseg+crf"
    assert '"iterations": 3' in meta["perception.crf"]
    # the CRF is inside the same graph: one softmax per iteration plus the output's, each decomposed
    # into ReduceMax, Sub, Exp, ReduceSum, Div (ONNX Runtime's Softmax over the class axis is slow)
    assert not any(node.op_type == "Softmax" for node in proto.graph.node)
    assert sum(node.op_type == "Div" and "Softmax" in node.name for node in proto.graph.node) == 4


def test_torch_and_onnxruntime_agree_on_random_input(seg_model):
    model, path = seg_model
    rng = np.random.default_rng(0)
    image = (rng.normal(size=(2, 5, 64, 512)) * 10).astype(np.float32)
    mask = (rng.random((2, 1, 64, 512)) > 0.1).astype(np.float32)
    diff = compare_with_onnxruntime(model, path, image, mask)
    print(f"max |logit diff| random batch of 2: {diff:.2e}")
    assert diff <= 1e-4


@requires_kitti_samples
@pytest.mark.parametrize("path", kitti_sample_scans(), ids=lambda p: p.stem)
def test_torch_and_onnxruntime_agree_on_real_scans(seg_model, path):
    model, onnx_path = seg_model
    tensor = np.load(path)
    image = np.ascontiguousarray(tensor[..., :5].transpose(2, 0, 1))[None]
    mask = (tensor[..., 4] > 0).astype(np.float32)[None, None]
    diff = compare_with_onnxruntime(model, onnx_path, image, mask)
    print(f"{path.name}: max |logit diff| {diff:.2e}")
    assert diff <= 1e-4


def test_segmenter_labels_every_point_and_matches_torch(seg_model, street_scan):
    model, path = seg_model
    seg = Segmenter(path, providers="cpu")
    assert seg.provider == "CPUExecutionProvider" and seg.input_shape == (64, 512)
    result = seg.segment(street_scan.points)
    proj = result.projection
    assert result.labels.shape == (len(street_scan.points),)
    assert (result.labels[~proj.in_view] == 0).all() and (result.scores[~proj.in_view] == 0).all()
    assert set(result.timings_ms) == {"projection", "inference", "unprojection"}
    with torch.no_grad():
        logits = model(torch.from_numpy(proj.image)[None], torch.from_numpy(proj.mask.astype(np.float32))[None, None])
    expected = logits[0].argmax(0).numpy()
    expected[~proj.mask] = 0
    np.testing.assert_array_equal(result.pixel_labels, expected)
    rows, cols = proj.pixel_of_point[proj.in_view].T
    np.testing.assert_array_equal(result.labels[proj.in_view], expected[rows, cols])
    probs = torch.softmax(logits[0], 0).numpy()
    np.testing.assert_allclose(result.scores[proj.in_view], probs[expected[rows, cols], rows, cols], atol=1e-5)
    assert sum(result.class_counts().values()) == len(street_scan.points)


def test_argmax_classes_is_numpy_argmax_with_ties_to_the_first_class():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 16, 32)).astype(np.float32)
    scores[2, :4] = scores[1, :4] = scores.max(axis=0)[:4] + 1.0  # a tie for the highest, classes 1 and 2
    scores[:, 5] = 0.25  # every class tied
    out = argmax_classes(scores)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, np.argmax(scores, axis=0))
    assert (out[:4] == 1).all() and (out[5] == 0).all()
    scores[3, 7, 0] = np.nan  # a broken model's NaN wins, as in numpy
    assert argmax_classes(scores)[7, 0] == 3 == np.argmax(scores, axis=0)[7, 0]


def test_segmenter_accepts_a_batch_free_range_image(seg_model):
    _, path = seg_model
    seg = Segmenter(path, providers="cpu")
    labels, probs = seg.infer_range_image(np.zeros((5, 64, 512), np.float32), np.zeros((64, 512), bool))
    assert labels.shape == (64, 512) and (labels == 0).all() and probs.shape == (4, 64, 512)
    assert np.all(probs == 0)


@pytest.mark.parametrize(
    ("points", "message"),
    [
        (np.zeros((0, 4), np.float32), "empty"),
        (np.array([[-10, 0, -1, 0], [0, -20, -1, 0]], np.float32), "field of view"),
        (np.full((10, 4), np.nan, np.float32), "no valid point"),
        (np.zeros((10, 5), np.float32), "shape"),
        (np.array([["a", "b", "c", "d"]]), "dtype"),
        (np.zeros(12, np.float32), "shape"),
    ],
)
def test_bad_clouds_raise_clearly_and_the_segmenter_keeps_working(seg_model, street_scan, points, message):
    seg = Segmenter(seg_model[1], providers="cpu")
    with pytest.raises(InvalidInputError, match=message):
        seg.segment(points)
    assert seg.segment(street_scan.points[:5000]).labels.shape == (5000,)


def test_nan_rows_are_dropped_or_refused_by_policy(seg_model, street_scan):
    pts = street_scan.points[:3000].copy()
    pts[::10, 0] = np.nan
    result = Segmenter(seg_model[1], providers="cpu").segment(pts)
    assert result.projection.num_invalid == 300 and (result.labels[::10] == 0).all()
    with pytest.raises(InvalidInputError, match="300 points have NaN"):
        Segmenter(seg_model[1], providers="cpu", nan_policy="error").segment(pts)


def test_corrupt_wrong_task_and_wrong_sensor_models_are_refused(tmp_path, seg_model):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(seg_model[1].read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match=r"corrupt\.onnx: not a loadable ONNX model"):
        Segmenter(corrupt)
    with pytest.raises(ModelLoadError, match="no such model"):
        Segmenter(tmp_path / "missing.onnx")
    # a valid ONNX file that is not a segmentation model
    proto = onnx.load(seg_model[1])
    del proto.metadata_props[:]
    stripped = tmp_path / "nometa.onnx"
    onnx.save(proto, stripped)
    with pytest.raises(ModelLoadError, match="not a segmentation model"):
        Segmenter(stripped)
    # metadata claiming a sensor whose size does not match the graph's input
    proto = onnx.load(seg_model[1])
    for prop in proto.metadata_props:
        if prop.key == "perception.sensor":
            prop.value = prop.value.replace('"width": 512', '"width": 2048')
    wrong = tmp_path / "wrong_sensor.onnx"
    onnx.save(proto, wrong)
    with pytest.raises(ModelLoadError, match="needs \\(batch, 5, 64, 2048\\)"):
        Segmenter(wrong)


def test_range_image_of_the_wrong_size_is_refused(seg_model):
    seg = Segmenter(seg_model[1], providers="cpu")
    with pytest.raises(InvalidInputError, match="must be \\(5, 64, 512\\)"):
        seg.infer_range_image(np.zeros((5, 64, 2048), np.float32), np.zeros((64, 2048), bool))


def test_provider_preference_falls_back_to_cpu_with_a_log_line(seg_model, caplog):
    assert parse_provider_preference("auto") == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider",
    ]  # fmt: skip
    assert parse_provider_preference("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="unknown execution provider"):
        parse_provider_preference("tpu")
    with caplog.at_level(logging.INFO, logger="perception.runtime.session"):
        loaded = load_model(seg_model[1], "tensorrt,cuda")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert loaded.provider == "CPUExecutionProvider"
        assert "CUDAExecutionProvider is not available" in caplog.text


def test_export_without_crf_and_other_window(tmp_path):
    model = build_segmentation_model(crf=False, seed=1)
    path = export_segmentation_onnx(model, tmp_path / "nocrf.onnx", SENSORS["kitti-front"])
    assert Segmenter(path, providers="cpu").model.meta_json("crf") is None
    model = build_segmentation_model(crf_window=(5, 7), crf_iterations=2, seed=1)
    path = export_segmentation_onnx(model, tmp_path / "w57.onnx", SENSORS["kitti-front"])
    rng = np.random.default_rng(3)
    image = (rng.normal(size=(1, 5, 64, 512)) * 10).astype(np.float32)
    mask = (rng.random((1, 1, 64, 512)) > 0.1).astype(np.float32)
    assert compare_with_onnxruntime(model, path, image, mask) <= 1e-4


def test_segment_cli_writes_labels_instances_and_png(tmp_path, seg_model):
    import json
    import subprocess
    import sys

    from perception.io import read_image

    from .conftest import SAMPLE_DIR

    scan = SAMPLE_DIR / "velodyne" / "000000.bin"
    res = subprocess.run(
        [sys.executable, "-m", "perception.cli", "segment", str(scan), "--model", str(seg_model[1]),
         "--json", str(tmp_path / "s.json"), "--png", str(tmp_path / "s.png"), "--providers", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "s.json").read_text())
    assert len(doc["labels"]) == doc["num_points"] == len(doc["instance_ids"]) > 100_000
    assert doc["provider"] == "CPUExecutionProvider" and set(doc["timings_ms"]) >= {"inference", "clustering"}
    for inst in doc["instances"]:
        assert inst["class_id"] in (1, 2, 3) and inst["num_points"] >= 1
    png = read_image(tmp_path / "s.png")
    assert png.shape == (64 * 4, 512, 3)
    bad = subprocess.run(
        [sys.executable, "-m", "perception.cli", "segment", str(tmp_path / "s.json"), "--model", str(seg_model[1])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def test_the_weights_of_an_exported_model_come_back_and_export_for_another_sensor(seg_model, tmp_path):
    from typer.testing import CliRunner

    from perception.cli import app
    from perception.training.export import segmentation_model_from_onnx

    model, path = seg_model
    back = segmentation_model_from_onnx(path)
    assert back.crf is not None and back.crf.iterations == model.crf.iterations and back.block == model.block
    for name, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    out = tmp_path / "seg360.onnx"
    res = CliRunner().invoke(app, ["export", "seg", "--checkpoint", str(path), "--sensor", "hdl64e-360",
                                   "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    full = Segmenter(out, providers="cpu")
    assert full.input_shape == (64, 2048) and full.sensor.name == "hdl64e-360"
    card = json.loads(out.with_suffix(".json").read_text())
    assert str(path) in card["training"]["weights_from"] and "do not carry over" in card["notes"]
    # not a float SqueezeSeg of this project: a clear error
    int8 = tmp_path / "int8.onnx"
    proto = onnx.load(path)
    del proto.graph.initializer[:]
    onnx.save(proto, int8)
    with pytest.raises(ValueError, match="weights missing"):
        segmentation_model_from_onnx(int8)
    with pytest.raises(ValueError, match="no such model"):
        segmentation_model_from_onnx(tmp_path / "absent.onnx")
