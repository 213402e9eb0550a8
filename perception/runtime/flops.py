"""Floating-point operations of an ONNX graph, from its weights and inferred tensor shapes.

Convention (the one papers and ``fvcore``/``thop`` use, doubled): a multiply-accumulate is 2 FLOPs, and
only the ops that do matrix products are counted in :attr:`FlopCount.total`:

* ``Conv``: ``2 * N * C_out * prod(out spatial) * (C_in / groups) * prod(kernel)`` (grouped and
  depthwise convolutions included; the bias add is not counted);
* ``ConvTranspose``: ``2 * N * C_in * prod(in spatial) * (C_out / groups) * prod(kernel)`` (every input
  pixel is scattered through the whole kernel; bias not counted);
* ``MatMul``: ``2 * prod(batch dims) * M * K * N`` with numpy broadcasting of the batch dims;
* ``Gemm``: ``2 * M * K * N`` (``alpha``/``beta`` scaling and the ``C`` add not counted);
* the integer forms of a quantised graph in QOperator format (``ConvInteger``, ``QLinearConv``,
  ``MatMulInteger``, ``QLinearMatMul``) like their float ops (integer operations, same count). A QDQ
  graph keeps float ``Conv``/``MatMul`` nodes between ``DequantizeLinear``/``QuantizeLinear`` pairs, so its
  count equals the FP32 graph's.

Everything else (``Add``, ``Mul``, ``Relu``, ``Exp``, ``Softmax``, pooling, reductions, ...) is counted
*roughly* and kept apart in :attr:`FlopCount.elementwise`: one FLOP per element of the op's largest input
or output (``Softmax`` 5 per element, ``Exp``/``Sigmoid`` 4, pooling one per window element), and
shape-only ops (``Reshape``, ``Concat``, ``Slice``, ``Gather``, ``Cast``, ...) count 0. That number is a
rough guide to memory-bound work, not part of the GFLOP/s figures.

Shapes come from ``onnx.shape_inference`` (with data propagation, so ``Shape -> Gather -> Reshape``
chains resolve) after the graph inputs' symbolic dimensions are fixed (``batch``, default 1). Needs the
``onnx`` package (``[train]`` extra); it is imported only when a count is asked for, so the runtime
itself never needs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MATMUL_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul")
# where the weight / second operand sits among the inputs of each op (QOperator-format ops have scales first)
_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3}

# rough FLOPs per element for the non-matmul ops (the largest input or output tensor's element count)
_ONE_FLOP_OPS = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Neg",
    "Abs",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Sqrt",
    "Pow",
    "Reciprocal",
    "Clip",
    "Where",
    "Greater",
    "Less",
    "Equal",
    "And",
    "Or",
    "Not",
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ArgMax",
    "ArgMin",
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "Resize",
    "Upsample",
    "QuantizeLinear",
    "DequantizeLinear",
]
_ELEMENTWISE_COST: dict[str, float] = {
    **dict.fromkeys(_ONE_FLOP_OPS, 1.0),
    **dict.fromkeys(("Exp", "Log", "Sigmoid", "Tanh", "Erf", "HardSigmoid", "Softplus"), 4.0),
    **dict.fromkeys(("Softmax", "LogSoftmax"), 5.0),
}
_POOL_OPS = ("MaxPool", "AveragePool", "LpPool")


class FlopCountError(ValueError):
    """The graph cannot be counted (onnx missing, unreadable file, or shapes that cannot be inferred)."""


@dataclass
class FlopCount:
    """FLOPs of one inference of a graph at a fixed batch.

    Attributes:
        total: FLOPs (2 x multiply-accumulates) of every Conv, ConvTranspose, MatMul and Gemm.
        by_op_type: ``total`` split by op type.
        by_node: (node name, op type, FLOPs) of each counted matmul-like node, in graph order.
        elementwise: rough FLOPs of all other ops (see the module docstring); not part of ``total``.
        batch: the batch size the symbolic input dimensions were fixed to.
        uncounted: names of matmul-like nodes whose shapes could not be inferred (their FLOPs are missing
            from ``total``; empty for the models of this repository).
    """

    total: int
    by_op_type: dict[str, int]
    by_node: list[tuple[str, str, int]]
    elementwise: int
    batch: int = 1
    uncounted: list[str] = field(default_factory=list)
    shape_source: str = "onnx shape inference"

    @property
    def gflops(self) -> float:
        """``total`` in GFLOP (1e9 FLOPs)."""
        return self.total / 1e9

    def scope_total(self, substring: str) -> int:
        """FLOPs of the counted nodes whose name contains ``substring`` (e.g. ``"/crf/"``)."""
        return sum(f for name, _, f in self.by_node if substring in name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gflops": self.gflops,
            "flops": self.total,
            "by_op_type": dict(self.by_op_type),
            "elementwise_flops_rough": self.elementwise,
            "batch": self.batch,
            "uncounted_nodes": list(self.uncounted),
            "shape_source": self.shape_source,
        }


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise FlopCountError("counting FLOPs needs the onnx package (pip install 'perception[train]')") from None
    return onnx


def _dims(value_info: Any) -> list[int | str | None]:
    shape = value_info.type.tensor_type.shape
    if not value_info.type.tensor_type.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for d in shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _fix_input_dims(model: Any, batch: int, input_shapes: dict[str, tuple[int, ...]] | None) -> None:
    """Set every graph input's shape to ``input_shapes[name]``, or its symbolic dimensions to ``batch``."""
    initializers = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims = inp.type.tensor_type.shape.dim
        if input_shapes and inp.name in input_shapes:
            wanted = list(input_shapes[inp.name])
            if len(wanted) != len(dims):
                raise FlopCountError(f"input {inp.name!r} has rank {len(dims)}, got shape {tuple(wanted)}")
            for d, v in zip(dims, wanted, strict=True):
                d.Clear()
                d.dim_value = int(v)
            continue
        for d in dims:
            if not d.HasField("dim_value") or d.dim_value <= 0:
                d.Clear()
                d.dim_value = batch


def _attr(node: Any, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def _known(shape: list[int | str | None] | None) -> bool:
    return bool(shape) and all(isinstance(d, int) and d >= 0 for d in shape)  # type: ignore[union-attr]


def _numel(shape: list[int | str | None] | None) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape is not None and _known(shape) else 0


def _matmul_flops(a: list[int], b: list[int]) -> int:
    """2 * batch * M * K * N of numpy-style ``matmul(a, b)`` (1-D operands promoted as numpy does)."""
    a2 = [1, *a] if len(a) == 1 else a
    b2 = [*b, 1] if len(b) == 1 else b
    m, k = a2[-2], a2[-1]
    n = b2[-1]
    batch = np.broadcast_shapes(tuple(a2[:-2]), tuple(b2[:-2]))
    return 2 * int(np.prod(batch, dtype=np.int64)) * m * k * n


def _node_flops(node: Any, shapes: dict[str, list[int | str | None]]) -> int | None:
    """FLOPs of a Conv/ConvTranspose/MatMul/Gemm node, or None when a needed shape is unknown."""
    get = shapes.get
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        w, y = get(node.input[_WEIGHT_INPUT[node.op_type]]), get(node.output[0])
        if not (_known(w) and _known(y)):
            return None
        # weight (C_out, C_in / groups, k...) ; output (N, C_out, spatial...)
        return 2 * _numel(y) * int(np.prod(w[1:], dtype=np.int64))  # type: ignore[index]
    if node.op_type == "ConvTranspose":
        x, w = get(node.input[0]), get(node.input[1])
        if not (_known(x) and _known(w)):
            return None
        # weight (C_in, C_out / groups, k...) ; every input element meets C_out / groups * prod(k) weights
        return 2 * _numel(x) * int(np.prod(w[1:], dtype=np.int64))  # type: ignore[index]
    if node.op_type in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a, b = get(node.input[0]), get(node.input[_WEIGHT_INPUT[node.op_type]])
        if not (_known(a) and _known(b)):
            return None
        return _matmul_flops(a, b)  # type: ignore[arg-type]
    if node.op_type == "Gemm":
        a, b = get(node.input[0]), get(node.input[1])
        if not (_known(a) and _known(b)) or len(a) != 2 or len(b) != 2:  # type: ignore[arg-type]
            return None
        m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])  # type: ignore[index]
        n = b[0] if _attr(node, "transB", 0) else b[1]  # type: ignore[index]
        return 2 * int(m) * int(k) * int(n)  # type: ignore[arg-type]
    raise AssertionError(node.op_type)


def _elementwise_flops(node: Any, shapes: dict[str, list[int | str | None]]) -> int:
    if node.op_type in _POOL_OPS:
        kernel = _attr(node, "kernel_shape", [1])
        return _numel(shapes.get(node.output[0])) * int(np.prod(kernel))
    if node.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        return _numel(shapes.get(node.input[0]))
    cost = _ELEMENTWISE_COST.get(node.op_type)
    if cost is None:
        return 0
    sizes = [_numel(shapes.get(name)) for name in (*node.input, *node.output) if name]
    return int(cost * max(sizes, default=0))


def _inferred_shapes(onnx: Any, proto: Any) -> dict[str, list[int | str | None]]:
    """Shapes of every tensor ``onnx.shape_inference`` (with data propagation) can work out."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:  # onnx's InferenceError and friends
        raise FlopCountError(f"shape inference failed: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    graph = inferred.graph
    shapes: dict[str, list[int | str | None]] = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        shapes[vi.name] = _dims(vi)
    for init in graph.initializer:
        shapes[init.name] = [int(d) for d in init.dims]
    for node in graph.node:
        if node.op_type == "Constant":
            value = _attr(node, "value", None)
            if value is not None:
                shapes[node.output[0]] = [int(d) for d in value.dims]
    return shapes


def _tensors_needed(graph: Any) -> list[str]:
    """The tensors whose shapes the count reads: all inputs and outputs of the counted nodes."""
    needed: dict[str, None] = {}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in MATMUL_OPS or node.op_type in _ELEMENTWISE_COST or node.op_type in _POOL_OPS:
            for name in (*node.input, *node.output):
                if name:
                    needed[name] = None
    return list(needed)


def _shapes_from_onnxruntime(onnx: Any, proto: Any, names: list[str]) -> dict[str, list[int | str | None]]:
    """Actual shapes of ``names`` from one CPU run of ``proto`` on zero inputs (fixed input shapes)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    outputs = {o.name for o in probe.graph.output}
    initializers = {t.name for t in probe.graph.initializer}
    wanted = [n for n in names if n not in outputs and n not in initializers]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted)
    feeds = {}
    for inp in probe.graph.input:
        if inp.name in initializers:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        feeds[inp.name] = np.zeros([d.dim_value for d in inp.type.tensor_type.shape.dim], dtype=dtype)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names_out = [o.name for o in session.get_outputs()]
        values = session.run(names_out, feeds)
    except Exception as exc:  # onnxruntime's own error types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlopCountError(f"shapes could not be inferred and the probe run failed ({first})") from None
    return {name: list(np.shape(v)) for name, v in zip(names_out, values, strict=True)}


def count_flops(
    model: str | os.PathLike[str] | Any,
    batch: int = 1,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    run_if_needed: bool = True,
) -> FlopCount:
    """FLOPs of one run of an ONNX model (a path or an ``onnx.ModelProto``) at ``batch``.

    ``input_shapes`` fixes named inputs to full shapes (overriding ``batch`` for them). Where
    ``onnx.shape_inference`` leaves a needed shape unknown (e.g. a ``Pad`` whose pads are computed in the
    graph, as torch exports TF-style "SAME" padding), and ``run_if_needed``, the model runs once in ONNX
    Runtime (CPU) on zero inputs with those tensors exposed as outputs to read their shapes. Raises
    :class:`FlopCountError` without the ``onnx`` package or for an unreadable model. Nodes inside
    subgraphs (``If``/``Loop`` bodies) are not counted.
    """
    onnx = _require_onnx()
    if batch < 1:
        raise FlopCountError(f"batch must be >= 1, got {batch}")
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        try:
            proto = onnx.load(str(path))
        except FileNotFoundError:
            raise FlopCountError(f"{path}: no such model file") from None
        except Exception as exc:  # onnx raises DecodeError and friends
            raise FlopCountError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    _fix_input_dims(proto, batch, input_shapes)
    shapes = _inferred_shapes(onnx, proto)
    missing = [name for name in _tensors_needed(proto.graph) if not _known(shapes.get(name))]
    shape_source = "onnx shape inference"
    if missing and run_if_needed:
        shapes.update(_shapes_from_onnxruntime(onnx, proto, missing))
        shape_source += f" + one ONNX Runtime run for {len(missing)} tensors"
    graph = proto.graph

    by_op: dict[str, int] = {}
    by_node: list[tuple[str, str, int]] = []
    uncounted: list[str] = []
    elementwise = 0
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in MATMUL_OPS:
            flops = _node_flops(node, shapes)
            if flops is None:
                uncounted.append(node.name or node.output[0])
                continue
            by_op[node.op_type] = by_op.get(node.op_type, 0) + flops
            by_node.append((node.name or node.output[0], node.op_type, flops))
        else:
            elementwise += _elementwise_flops(node, shapes)
    return FlopCount(
        total=sum(by_op.values()),
        by_op_type=by_op,
        by_node=by_node,
        elementwise=elementwise,
        batch=batch,
        uncounted=uncounted,
        shape_source=shape_source,
    )


__all__ = ["MATMUL_OPS", "FlopCount", "FlopCountError", "count_flops"]
