"""The export's graph rewrite: Softmax over a non-last axis decomposed into reductions and elementwise nodes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("torch", reason="the exporter needs torch ([train] extra)")
onnx = pytest.importorskip("onnx", reason="the exporter needs onnx ([train] extra)")
from onnx import TensorProto, helper  # noqa: E402

from perception.training.export import decompose_channel_softmax  # noqa: E402


def _softmax_model(opset: int) -> onnx.ModelProto:
    """x (2, 4, 3, 5) -> Softmax over axis 1 (rewritten), over axis -1 and over axis 3 (both last: kept)."""
    nodes = [
        helper.make_node("Softmax", ["x"], ["channel"], name="/crf/Softmax", axis=1),
        helper.make_node("Softmax", ["x"], ["last"], name="last", axis=-1),
        helper.make_node("Softmax", ["x"], ["last3"], name="last3", axis=3),
        helper.make_node("Add", ["channel", "last"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 3, 5])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4, 3, 5]) for n in ("y", "channel", "last3")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [17, 18])
def test_a_channel_softmax_becomes_reductions_with_the_same_values(opset):
    model = _softmax_model(opset)
    x = (np.random.default_rng(0).normal(size=(2, 4, 3, 5)) * 30).astype(np.float32)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert decompose_channel_softmax(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [(n.op_type, n.name) for n in model.graph.node]
    assert ("Softmax", "last") in ops and ("Softmax", "last3") in ops
    decomposed = [op for op, name in ops if name.startswith("/crf/Softmax/")]
    assert decomposed == ["ReduceMax", "Sub", "Exp", "ReduceSum", "Div"]
    rewritten = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for ref, new in zip(reference, rewritten, strict=True):
        np.testing.assert_allclose(new, ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rewritten[1].sum(axis=1), 1.0, atol=1e-6)
    assert decompose_channel_softmax(model) == 0  # nothing left to rewrite


def test_before_opset_13_nothing_is_rewritten():
    # a Softmax then flattened every axis from `axis` on: not a per-axis softmax, left as it is
    model = _softmax_model(12)
    before = [n.op_type for n in model.graph.node]
    assert decompose_channel_softmax(model) == 0
    assert [n.op_type for n in model.graph.node] == before
