"""FLOP counting from ONNX graphs: hand-built graphs with hand-computed counts, and the exported SqueezeSeg."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="counting FLOPs needs the onnx package ([train] extra)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from perception.runtime.flops import FlopCountError, count_flops  # noqa: E402


def _model(nodes, inputs, outputs, initializers=()):
    """A float32 graph; ``initializers`` are (name, shape) filled with 0.1, or (name, array)."""
    arrays = [
        numpy_helper.from_array(v if isinstance(v, np.ndarray) else np.full(v, 0.1, np.float32), n)
        for n, v in initializers
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],  # shapes left to inference
        arrays,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv_model(x_shape, w_shape, **attrs):
    return _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)], [("x", x_shape)], ["y"], [("w", w_shape)]
    )


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs", "expected"),
    [
        # 2 * N * C_out * H_out * W_out * (C_in / groups) * kh * kw
        ((1, 3, 8, 8), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}, 2 * 4 * 8 * 8 * 3 * 9),  # 13,824
        ((2, 3, 8, 8), (5, 3, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, 2 * 2 * 5 * 4 * 4 * 27),  # 8,640
        ((1, 4, 6, 6), (8, 2, 3, 3), {"group": 2}, 2 * 8 * 4 * 4 * 2 * 9),  # grouped, valid padding: 4,608
        ((1, 4, 5, 5), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}, 2 * 4 * 5 * 5 * 1 * 9),  # depthwise: 1,800
        ((1, 2, 4, 7), (3, 2, 1, 4), {"strides": [1, 2]}, 2 * 3 * 4 * 2 * 2 * 4),  # 1 x 4 kernel, stride (1, 2): 384
    ],
)
def test_conv_flops_match_the_hand_count(x_shape, w_shape, attrs, expected):
    count = count_flops(_conv_model(x_shape, w_shape, **attrs))
    assert count.total == expected
    assert count.by_op_type == {"Conv": expected}
    assert count.by_node == [("conv", "Conv", expected)]
    assert count.uncounted == []


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs", "expected"),
    [
        # every input pixel meets C_out / groups * kh * kw weights: 2 * N * C_in * H_in * W_in * C_out/g * kh * kw
        ((1, 6, 4, 4), (6, 3, 2, 2), {"strides": [2, 2]}, 2 * 6 * 16 * 3 * 4),  # 2,304
        ((1, 6, 4, 4), (6, 2, 2, 2), {"strides": [2, 2], "group": 2}, 2 * 6 * 16 * 2 * 4),  # grouped: 1,536
        ((1, 16, 64, 32), (16, 16, 1, 4), {"strides": [1, 2], "pads": [0, 1, 0, 1]}, 2 * 16 * 64 * 32 * 16 * 4),
    ],
)
def test_conv_transpose_flops_match_the_hand_count(x_shape, w_shape, attrs, expected):
    model = _model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", **attrs)],
        [("x", x_shape)],
        ["y"],
        [("w", w_shape)],
    )
    count = count_flops(model)
    assert count.total == expected and count.by_op_type == {"ConvTranspose": expected}


def test_matmul_and_gemm_flops_match_the_hand_count():
    model = _model(
        [
            helper.make_node("MatMul", ["a", "b"], ["ab"], name="mm"),  # (2, 3, 4, 5) @ (5, 6)
            helper.make_node("MatMul", ["c", "d"], ["cd"], name="bcast"),  # (3, 1, 4, 5) @ (2, 5, 7) -> (3, 2, 4, 7)
            helper.make_node("Gemm", ["e", "f"], ["ef"], name="gemm", transB=1),  # (4, 5) x (6, 5)^T
            helper.make_node("Gemm", ["g", "h"], ["gh"], name="gemm_t", transA=1),  # (5, 4)^T x (5, 3)
        ],
        [("a", (2, 3, 4, 5)), ("c", (3, 1, 4, 5)), ("e", (4, 5)), ("g", (5, 4))],
        ["ab", "cd", "ef", "gh"],
        [("b", (5, 6)), ("d", (2, 5, 7)), ("f", (6, 5)), ("h", (5, 3))],
    )
    count = count_flops(model)
    expected = {
        "mm": 2 * 2 * 3 * 4 * 5 * 6,
        "bcast": 2 * 3 * 2 * 4 * 5 * 7,
        "gemm": 2 * 4 * 5 * 6,
        "gemm_t": 2 * 4 * 5 * 3,
    }
    assert {name: flops for name, _, flops in count.by_node} == expected
    assert count.by_op_type == {"MatMul": 1440 + 1680, "Gemm": 240 + 120}
    assert count.total == sum(expected.values())


def test_elementwise_ops_are_counted_roughly_and_apart_from_the_total():
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),  # 1 per element: 4 * 8 * 8 = 256
            helper.make_node("Add", ["r", "c"], ["s"]),  # 256
            helper.make_node("Softmax", ["s"], ["p"], axis=1),  # 5 per element: 1280
            helper.make_node("Reshape", ["p", "shape"], ["y"]),  # shape-only: 0
        ],
        [("x", (1, 3, 8, 8))],
        ["y"],
        [("w", (4, 3, 3, 3)), ("shape", np.array([1, -1], np.int64))],
    )
    count = count_flops(model)
    assert count.total == 13_824
    assert count.elementwise == 256 + 256 + 1280


def test_symbolic_batch_is_fixed_to_the_batch_asked_for():
    model = _conv_model(("N", 3, 8, 8), (4, 3, 3, 3), pads=[1, 1, 1, 1])
    assert count_flops(model).total == 13_824
    assert count_flops(model, batch=3).total == 3 * 13_824
    assert count_flops(model, input_shapes={"x": (2, 3, 16, 16)}).total == 2 * 4 * 13_824


def test_shapes_onnx_cannot_infer_come_from_one_onnxruntime_run():
    # pads computed in the graph (as torch exports TF "SAME" padding): onnx's shape inference loses the shape
    model = _model(
        [
            helper.make_node("Shape", ["x"], ["xs"]),  # [1, 3, 8, 8]
            helper.make_node("Slice", ["xs", "two", "four"], ["hw"]),  # [8, 8]
            helper.make_node("Cast", ["hw"], ["hwf"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["hwf", "hwf"], ["onesf"]),  # [1., 1.]
            helper.make_node("Cast", ["onesf"], ["ones"], to=TensorProto.INT64),
            helper.make_node("Sub", ["ones", "ones"], ["zeros"]),
            helper.make_node("Concat", ["zeros", "ones", "zeros", "ones"], ["pads"], axis=0),  # [0, 0, 1, 1] x 2
            helper.make_node("Pad", ["x", "pads"], ["xp"]),  # (1, 3, 10, 10)
            helper.make_node("Conv", ["xp", "w"], ["y"], name="conv"),  # valid 3 x 3 -> (1, 4, 8, 8)
        ],
        [("x", (1, 3, 8, 8))],
        ["y"],
        [("w", (4, 3, 3, 3)), ("two", np.array([2], np.int64)), ("four", np.array([4], np.int64))],
    )
    blind = count_flops(model, run_if_needed=False)
    assert blind.uncounted == ["conv"] and blind.total == 0
    count = count_flops(model)
    assert count.total == 13_824 and count.uncounted == []
    assert "ONNX Runtime" in count.shape_source


def test_unreadable_models_raise_flop_count_errors(tmp_path):
    with pytest.raises(FlopCountError, match="no such model"):
        count_flops(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(FlopCountError, match="not a readable ONNX model"):
        count_flops(bad)
    with pytest.raises(FlopCountError, match="batch"):
        count_flops(_conv_model((1, 3, 8, 8), (4, 3, 3, 3)), batch=0)


def squeezeseg_flops_by_hand(height: int = 64, width: int = 512, classes: int = 4) -> int:
    """SqueezeSeg without the CRF, from the layer table of DESIGN.md: stride and pooling on the azimuth only."""

    def conv(cin: int, cout: int, k: int, w: int) -> int:
        return 2 * height * w * cout * cin * k

    def fire(cin: int, s: int, e1: int, e3: int, w: int) -> int:
        return conv(cin, s, 1, w) + conv(s, e1, 1, w) + conv(s, e3, 9, w)

    def fire_deconv(cin: int, s: int, e1: int, e3: int, w: int) -> int:
        # squeeze at w, 1 x 4 transposed conv s -> s doubling the width, expands at 2w
        return conv(cin, s, 1, w) + 2 * height * w * s * s * 4 + conv(s, e1, 1, 2 * w) + conv(s, e3, 9, 2 * w)

    w = width
    total = conv(5, 64, 9, w // 2) + conv(5, 64, 1, w)  # conv1 stride (1, 2) and its 1x1 skip at full width
    total += fire(64, 16, 64, 64, w // 4) + fire(128, 16, 64, 64, w // 4)
    total += fire(128, 32, 128, 128, w // 8) + fire(256, 32, 128, 128, w // 8)
    total += fire(256, 48, 192, 192, w // 16) + fire(384, 48, 192, 192, w // 16)
    total += fire(384, 64, 256, 256, w // 16) + fire(512, 64, 256, 256, w // 16)
    total += fire_deconv(512, 64, 128, 128, w // 16) + fire_deconv(256, 32, 64, 64, w // 8)
    total += fire_deconv(128, 16, 32, 32, w // 4) + fire_deconv(64, 16, 32, 32, w // 2)
    return total + conv(64, classes, 9, w)


def test_exported_squeezeseg_counts_5_8_gflop_at_64x512(tmp_path):
    pytest.importorskip("torch", reason="exporting needs the [train] extra")
    from perception.lidar.sensors import SENSORS
    from perception.training.export import build_segmentation_model, export_segmentation_onnx

    path = export_segmentation_onnx(build_segmentation_model(crf=False), tmp_path / "seg.onnx", SENSORS["kitti-front"])
    count = count_flops(path)
    assert squeezeseg_flops_by_hand() == 5_811_208_192
    assert count.total == squeezeseg_flops_by_hand()
    assert count.by_op_type["ConvTranspose"] == 2 * 64 * 4 * (
        32 * 64 * 64 + 64 * 32 * 32 + 128 * 16 * 16 + 256 * 16 * 16
    )
    assert count.uncounted == [] and count.scope_total("/crf/") == 0
