"""INT8 static quantisation (``perception quantize``) and the runtime's ``precision: int8`` setting.

Untrained exports, calibrated on two simulated frames. The untrained SqueezeSeg + CRF outputs nearly equal
probabilities everywhere (top-two margin under 0.002 on about 94 % of pixels), so its argmax flips on noise
of a thousandth; the argmax checks are on the pixels where FP32 decides, and on SqueezeSeg without the CRF,
whose untrained logits have real margins.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="exporting models needs the [train] extra (torch)")
pytest.importorskip("onnx", reason="quantisation needs the onnx package ([train] extra)")
pytest.importorskip("open3d", reason="simulating calibration frames needs open3d ([train] extra)")

from typer.testing import CliRunner

from perception.cli import app
from perception.io import read_image, read_velodyne_bin
from perception.lidar.sensors import SENSORS
from perception.runtime.detector import Detector
from perception.runtime.quantize import (
    CRF_SCOPE,
    argmax_agreement,
    calibration_feeds,
    int8_model_path,
    model_for_precision,
    quantize_model,
)
from perception.runtime.segmenter import Segmenter
from perception.training.export import (
    build_detection_model,
    build_segmentation_model,
    export_detection_onnx,
    export_segmentation_onnx,
    write_export_card,
)

from .conftest import SAMPLE_DIR

runner = CliRunner()


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    from perception.sim.dataset import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("calib"), "urban", frames=2, seed=11, camera=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    seg = build_segmentation_model(seed=0)
    seg_path = export_segmentation_onnx(seg, root / "seg.onnx", SENSORS["kitti-front"])
    write_export_card(seg, seg_path, "segmentation", "SqueezeSeg + CRF", "range image 5 x 64 x 512", 17, None)
    det = build_detection_model("squeezedet", seed=0)
    det_path = export_detection_onnx(det, root / "det.onnx")
    return {"seg": seg_path, "det": det_path}


@pytest.fixture(scope="module")
def seg_int8(models, calib_dir, tmp_path_factory):
    """``perception quantize seg`` on the CRF model: (CLI result, INT8 path)."""
    out = tmp_path_factory.mktemp("seg_int8") / "seg.int8.onnx"
    res = runner.invoke(app, ["quantize", "seg", "--model", str(models["seg"]), "--data", str(calib_dir),
                              "--frames", "2", "--out", str(out)])  # fmt: skip
    return res, out


@pytest.fixture(scope="module")
def det_int8(models, calib_dir, tmp_path_factory):
    """``perception quantize det --json`` with the default output path (beside a copy of the model)."""
    root = tmp_path_factory.mktemp("det_int8")
    model = root / "det.onnx"
    model.write_bytes(models["det"].read_bytes())
    res = runner.invoke(app, ["quantize", "det", "--model", str(model), "--data", str(calib_dir), "--json"])
    return res, root / "det.int8.onnx"


def _scans(calib_dir):
    return [read_velodyne_bin(p) for p in sorted((calib_dir / "velodyne").glob("*.bin"))] + [
        read_velodyne_bin(SAMPLE_DIR / "velodyne" / "000000.bin")
    ]


def test_only_convolutions_read_by_fp32_nodes_alone_stay_fp32():
    from onnx import TensorProto, helper

    from perception.runtime.quantize import float_output_conv_names

    def conv(name: str, src: str, dst: str):
        return helper.make_node("Conv", [src, "w"], [dst], name=name)

    nodes = [
        conv("feeds_quantised", "x", "a"),  # also a graph output, but a quantised conv reads it
        conv("quantised", "a", "b"),
        conv("last", "b", "c"),  # read by the FP32 head only
        helper.make_node("Relu", ["c"], ["y"], name="head"),
        conv("only_output", "b", "z"),  # a graph output and nothing else
        conv("dead", "b", "unused"),  # read by nothing
        conv("unnamed_reader", "b", "d"),
        helper.make_node("Relu", ["d"], ["e"]),  # no name: never counted as FP32
    ]
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "y", "z", "e")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], value)
    assert float_output_conv_names(helper.make_model(graph), {"head"}) == ["last", "only_output"]


def test_quantize_seg_cli_writes_an_int8_model_with_its_card_and_keeps_the_crf_fp32(models, calib_dir, seg_int8):
    import onnx

    res, out = seg_int8
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # rich wraps long lines
    assert "CRF nodes kept FP32" in said and "calibrated on 2 frames" in said
    assert sorted(p.name for p in out.parent.iterdir()) == ["seg.int8.json", "seg.int8.md", "seg.int8.onnx"]

    card = json.loads(out.with_suffix(".json").read_text())
    assert card["quantization"]["fp32_model"] == str(models["seg"])
    assert card["quantization"]["calibration_frames"] == 2
    assert str(calib_dir) in card["quantization"]["calibration_data"]
    assert card["parameters"] == json.loads(models["seg"].with_suffix(".json").read_text())["parameters"]
    assert "INT8" in out.with_suffix(".md").read_text()

    graph = onnx.load(str(out)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    backbone_convs = [n for n in graph.node if n.op_type == "Conv" and CRF_SCOPE not in n.name]
    crf_nodes = [n for n in graph.node if CRF_SCOPE in n.name]
    last = [n for n in backbone_convs if n.name == "/model/conv14/Conv"]  # feeds only the CRF and the head
    assert len(last) == 1 and not any(i in dequantized for i in last[0].input)  # FP32 weights and input
    assert all(n.input[1] in dequantized for n in backbone_convs if n not in last)  # the others: int8 weights
    assert crf_nodes and not any(i in dequantized for n in crf_nodes for i in n.input)  # CRF reads FP32 only
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert {producers[o.name] for o in graph.output} == {"Add", "Mul"}  # logits, probs: FP32 head, no DQ

    fp32, int8 = Segmenter(models["seg"], providers="cpu"), Segmenter(out, providers="cpu")
    for points in _scans(calib_dir):
        ref, cand = fp32.segment(points), int8.segment(points)
        mask = ref.projection.mask
        assert cand.labels.shape == ref.labels.shape
        # class probabilities stay close (an untrained CRF model has nearly tied classes: see the docstring)
        assert np.abs(ref.pixel_probs - cand.pixel_probs).max(axis=0)[mask].mean() < 0.02
        top = np.sort(ref.pixel_probs, axis=0)
        decided = mask & (top[-1] - top[-2] > 0.005)
        assert decided.sum() > 100
        assert np.mean(ref.pixel_labels[decided] == cand.pixel_labels[decided]) > 0.95


def test_int8_squeezeseg_without_crf_agrees_with_fp32_on_most_pixels(calib_dir, tmp_path):
    path = export_segmentation_onnx(build_segmentation_model(crf=False, seed=1), tmp_path / "plain.onnx",
                                    SENSORS["kitti-front"])  # fmt: skip
    feeds = calibration_feeds("seg", path, calib_dir)
    report = quantize_model(path, int8_model_path(path), feeds, max_frames=2, task="seg", data=str(calib_dir))
    assert report.frames == 2 and report.crf_nodes == 0 and report.int8_bytes < report.fp32_bytes / 2
    # the head after conv14 (the decomposed softmax and the mask): probabilities stay FP32, and so does
    # conv14, which feeds only the head
    softmax = [f"/Softmax/{op}" for op in ("ReduceMax", "Sub", "Exp", "ReduceSum", "Div")]
    assert report.fp32_nodes == [*softmax, "/Mul", "/model/conv14/Conv"]
    fp32, int8 = Segmenter(path, providers="cpu"), Segmenter(report.out, providers="cpu")
    for points in _scans(calib_dir):  # the committed sample is no calibration frame
        ref, cand = fp32.segment(points), int8.segment(points)
        mask = ref.projection.mask
        assert np.mean(ref.pixel_labels[mask] == cand.pixel_labels[mask]) > 0.8


def test_quantize_det_cli_gives_a_detector_that_agrees_with_fp32(models, calib_dir, det_int8):
    import onnx

    from perception.camera.preprocess import to_network_input

    res, out = det_int8
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["out"] == str(out) and out.is_file()  # default: NAME.int8.onnx beside the model
    assert report["frames"] == 2 and report["qdq_tensors"] > 50 and report["int8_bytes"] < report["fp32_bytes"] / 2
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["quantization"]["fp32_sha256"] and card["task"] == "detection"
    graph = onnx.load(str(out)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    assert not any(i in dequantized for i in convs.pop("/model/convdet/Conv").input)  # feeds only the FP32 head
    assert convs and all(n.input[1] in dequantized for n in convs.values())

    fp32, int8 = Detector(models["det"], providers="cpu"), Detector(out, providers="cpu")
    for image_path in sorted((calib_dir / "image_2").glob("*.png")):
        image = read_image(image_path)
        feeds = {"image": to_network_input(image, fp32.input_size)}
        ref, cand = fp32.model.session.run(None, feeds), int8.model.session.run(None, feeds)
        assert argmax_agreement(ref[0], cand[0], axis=-1) > 0.9  # class per anchor
        assert np.abs(ref[1] - cand[1]).mean() < 0.05  # confidence
        assert int8.detect(image).image_size == (image.shape[1], image.shape[0])


def test_int8_flop_count_equals_fp32(models, det_int8):
    from perception.runtime.flops import count_flops

    _, int8 = det_int8
    assert count_flops(int8).total == count_flops(models["det"]).total == 10_566_107_136


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["quantize", "seg", "--model", "missing.onnx", "--data", "."], "missing.onnx: no such model"),
        (["quantize", "cls", "--model", "DET", "--data", "."], "task must be seg or det"),
        (["quantize", "seg", "--model", "DET", "--data", "CALIB"], "not a segmentation model"),
        (["quantize", "det", "--model", "DET", "--data", "EMPTY"], "needs image_2/ and label_2/"),
        (["quantize", "seg", "--model", "SEG", "--data", "CALIB", "--crf", "int4"], "--crf must be fp32 or int8"),
        (["quantize", "seg", "--model", "SEG", "--data", "CALIB", "--out", "SEG"], "must not overwrite"),
    ],
)
def test_bad_quantize_input_gives_one_error_line(models, calib_dir, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    subs = {
        "DET": str(models["det"]),
        "SEG": str(models["seg"]),
        "CALIB": str(calib_dir),
        "EMPTY": str(tmp_path / "empty"),
    }
    res = runner.invoke(app, [subs.get(a, a) for a in args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def test_precision_int8_loads_the_int8_sibling_or_says_how_to_make_it(models, seg_int8, tmp_path, monkeypatch):
    from perception.service.app import build_pipeline
    from perception.service.settings import Settings

    seg = tmp_path / "seg.onnx"
    seg.write_bytes(models["seg"].read_bytes())
    assert Settings(seg_model=seg, det_model=None).model_paths() == (seg, None)
    monkeypatch.setenv("PERCEPTION_PRECISION", "int8")
    settings = Settings(seg_model=seg, det_model=None, warmup=False)
    assert settings.precision == "int8"
    with pytest.raises(FileNotFoundError, match=r"seg\.int8\.onnx.*perception quantize"):
        settings.model_paths()
    with pytest.raises(FileNotFoundError, match="no INT8 model"):
        build_pipeline(settings)
    int8_model_path(seg).write_bytes(seg_int8[1].read_bytes())
    assert model_for_precision(seg, "int8") == tmp_path / "seg.int8.onnx"
    pipeline = build_pipeline(settings)
    try:
        assert pipeline.segmenter is not None and pipeline.segmenter.model.path == tmp_path / "seg.int8.onnx"
        assert pipeline.detector is None
    finally:
        pipeline.close()
    with pytest.raises(ValueError, match="precision"):
        Settings(precision="int4")
