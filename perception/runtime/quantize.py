"""INT8 static quantisation of the exported models for ONNX Runtime (QDQ format, per-channel weights).

``perception quantize seg|det --model M.onnx --data DIR --out M.int8.onnx`` runs :func:`quantize_model`:

* calibration feeds are real frames of ``DIR`` prepared exactly as the runtime prepares them, through the
  same functions the TensorRT INT8 calibration uses (:func:`perception.runtime.trt.segmentation_feeds`:
  the spherical projection of each scan onto the model's sensor, range image + mask, normalised inside
  the graph; :func:`perception.runtime.trt.detection_feeds`: ``to_network_input`` of each image);
* ONNX Runtime's static quantiser (MinMax calibration) inserts QuantizeLinear/DequantizeLinear pairs:
  activations uint8 (asymmetric), weights int8 per output channel, ``reduce_range`` (7-bit weights) by
  default because x86 CPUs without VNNI (AVX2 only) can saturate the int16 intermediate sums of u8 x s8
  products;
* SqueezeSeg's recurrent CRF stays FP32 by default (``keep_crf_fp32``), and so do the tensors it reads
  (logits, normalised x, y, z, mask: its nodes are rewired to the float tensors the quantiser had put
  through Q/DQ) and the output head after the last quantised convolution (softmax / sigmoid, so
  probabilities keep full resolution rather than steps of 1/255). Why: the CRF's bilateral weights
  ``exp(-|p_i - p_j|^2 / (2 theta^2))`` with theta 0.01-0.015 in normalised units need x, y, z far finer
  than an 8-bit step over their range, and its messages are sums over softmax probabilities. Measured on
  an untrained export (argmax agreement with FP32 on the valid pixels of 6 held-out simulated scans,
  calibrated on 16): CRF and its inputs FP32 84.7 %; CRF quantised too 62.6 %; only Conv/ConvTranspose
  quantised, CRF FP32 83.3 %. (Untrained classes are nearly tied, so these are low for any setting; where
  FP32's top-two probabilities differ by more than 0.005 the default agrees on 100 %.) The CRF is about
  4 % of SqueezeSeg's FLOPs (:mod:`perception.runtime.flops`), so FP32 there costs little speed;
* the last convolution before that FP32 part (SqueezeDet's ConvDet, SqueezeSeg's conv14) stays FP32 too
  (:func:`float_output_conv_names`): with its output unquantised it could not run as a QLinearConv anyway.
  Quantising the head's input instead (ConvDet's output through Q/DQ) was faster still, but its one 8-bit
  scale spans class logits, confidences and box deltas together: the shipped detector's car AP (R40,
  moderate, validation split) fell from 20.6 to 7.6;
* the output is written atomically with a model card beside it (``NAME.int8.json`` / ``.md``) naming the
  FP32 file (and its sha256), the calibration data and frames, and what was quantised.

The runtime loads ``<name>.int8.onnx`` beside a configured model when asked for INT8
(:func:`model_for_precision`; ``PERCEPTION_PRECISION=int8`` in the service). This module imports onnx
(through ``onnxruntime.quantization``) only inside :func:`quantize_model`; the path helpers need nothing.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
Task = Literal["seg", "det"]
MODEL_PRECISIONS: tuple[str, ...] = ("fp32", "int8")
INT8_SUFFIX = ".int8.onnx"
CRF_SCOPE = "/crf/"
"""Substring of the names torch's exporter gives the CRF's nodes (``/model/crf/Conv_3``, ...)."""
DEFAULT_CALIBRATION_FRAMES = 32


class QuantizationError(ValueError):
    """Quantisation cannot run: onnx missing, no calibration frames, a model of the wrong task, ..."""


def int8_model_path(model_path: PathLike) -> Path:
    """Where the INT8 version of ``model_path`` lives: ``models/x.onnx`` -> ``models/x.int8.onnx``."""
    path = Path(model_path)
    if path.name.endswith(INT8_SUFFIX):
        return path
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(stem + INT8_SUFFIX)


def model_for_precision(model_path: PathLike, precision: str) -> Path:
    """The file to load for ``precision``: the model itself (fp32) or its INT8 sibling, which must exist.

    Raises :class:`FileNotFoundError` naming the missing INT8 file and the command that makes it.
    """
    if precision not in MODEL_PRECISIONS:
        raise ValueError(f"model precision must be one of {', '.join(MODEL_PRECISIONS)}, got {precision!r}")
    path = Path(model_path)
    if precision == "fp32":
        return path
    target = int8_model_path(path)
    if not target.is_file():
        raise FileNotFoundError(
            f"{target}: no INT8 model beside {path} (precision int8); make it with "
            f"`perception quantize seg|det --model {path} --data DIR --out {target}`"
        )
    return target


def crf_node_names(model: Any) -> list[str]:
    """Names of the nodes of SqueezeSeg's recurrent CRF in an ``onnx.ModelProto`` (empty without a CRF)."""
    return [n.name for n in model.graph.node if CRF_SCOPE in n.name]


def _readers(model: Any) -> dict[str, list[Any]]:
    """Tensor name -> the nodes that read it."""
    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def head_node_names(model: Any, kept: set[str]) -> list[str]:
    """Nodes from which no quantised convolution is reachable: the output head after the last Conv that is
    quantised (softmax, sigmoid, reshapes), and inputs that only feed ``kept`` nodes (the CRF's x, y, z slice).

    ``kept`` are nodes already left in FP32 (their convolutions do not count as quantised). Relies on the
    graph's nodes being topologically sorted, as ONNX requires.
    """
    consumers = _readers(model)
    reaches: dict[int, bool] = {}  # id(node) -> a quantised conv is this node or downstream of it
    head = []
    for node in reversed(model.graph.node):
        quantised_conv = node.op_type in ("Conv", "ConvTranspose") and node.name not in kept
        downstream = any(reaches.get(id(c), False) for out in node.output for c in consumers.get(out, []))
        reaches[id(node)] = quantised_conv or downstream
        if not reaches[id(node)] and node.name not in kept:
            head.append(node.name)
    return head[::-1]


def float_output_conv_names(model: Any, fp32: set[str]) -> list[str]:
    """Convolutions whose every output is read by nodes of ``fp32`` only (or only is a graph output): the last
    convolution before an FP32 head or CRF (SqueezeDet's ConvDet, SqueezeSeg's conv14). A convolution nothing
    reads, or one an unnamed node reads, is not among them.

    Quantised, such a convolution gains nothing: with no QuantizeLinear on its output ONNX Runtime cannot
    fuse it into a QLinearConv and runs it in float on dequantised weights, outside its blocked (NCHWc)
    layout, slower than the FP32 convolution (ConvDet: 45 ms against 30 ms in one profile). Left FP32, it
    reads the float tensor before its input's Q/DQ pair. Not propagated upwards: the convolutions before
    it stay quantised.
    """
    readers = _readers(model)
    outputs = {o.name for o in model.graph.output}

    def read_only_in_fp32(tensor: str) -> bool:
        nodes = readers.get(tensor, [])
        return all(n.name and n.name in fp32 for n in nodes) and bool(nodes or tensor in outputs)

    return [
        node.name
        for node in model.graph.node
        if node.op_type in ("Conv", "ConvTranspose")
        and node.name not in fp32
        and all(read_only_in_fp32(o) for o in node.output)
    ]


def _read_float_inputs(model: Any, names: set[str]) -> int:
    """Make the nodes ``names`` (and the graph outputs) read the float tensors the quantiser put through
    QuantizeLinear -> DequantizeLinear, and drop the Q/DQ nodes nothing reads any more; return the number
    of inputs rewired. Weights (initializer -> DequantizeLinear) are left alone."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}

    def float_source(tensor: str) -> str | None:
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        quant = producer.get(dq.input[0])
        return quant.input[0] if quant is not None and quant.op_type == "QuantizeLinear" else None

    rewired = 0
    for node in graph.node:
        if node.name in names:
            for i, tensor in enumerate(node.input):
                source = float_source(tensor)
                if source is not None:
                    node.input[i] = source
                    rewired += 1
    for output in graph.output:  # a quantised graph output: give the name back to the float tensor
        source = float_source(output.name)
        if source is None:
            continue
        graph.node.remove(producer[output.name])
        for node in graph.node:
            for seq in (node.input, node.output):
                for i, tensor in enumerate(seq):
                    if tensor == source:
                        seq[i] = output.name
        rewired += 1
    while True:  # prune Q/DQ nodes left without readers
        read = {t for node in graph.node for t in node.input} | {o.name for o in graph.output}
        dangling = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                    and not any(o in read for o in n.output)]  # fmt: skip
        if not dangling:
            break
        for node in dangling:
            graph.node.remove(node)
    used = {t for node in graph.node for t in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:  # scales / zero points of dropped pairs
        graph.initializer.remove(init)
    return rewired


class _CalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over a bounded iterator of feeds.

    An error while reading a frame ends calibration and is kept in :attr:`error`, so that the caller can
    raise it as it is instead of as whatever the quantiser makes of a reader that raised.
    """

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]], limit: int) -> None:
        self._iter: Iterator[dict[str, np.ndarray]] = iter(feeds)
        self._left = limit
        self.count = 0
        self.error: Exception | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._left <= 0 or self.error is not None:
            return None
        try:
            feed = next(self._iter, None)
        except Exception as exc:  # a bad frame file: report it after the quantiser returns
            self.error = exc
            return None
        if feed is not None:
            self._left -= 1
            self.count += 1
        return feed


def calibration_feeds(task: Task, model_path: PathLike, data: PathLike, split: str | None = None) -> Iterator[dict]:
    """Inputs of ``model_path`` for each frame of ``data``, prepared as the runtime prepares them.

    seg: labelled scans (SqueezeSeg ``.npy`` or ``velodyne/`` + ``labels/``, as ``perception eval seg``
    reads them), projected onto the model's sensor; det: ``image_2/`` (with ``label_2/``) of a KITTI-layout
    directory, resized to the network input. Opens the model once (CPU) to read its sensor / input size.
    """
    from perception.runtime.trt import detection_feeds, segmentation_feeds

    if task == "seg":
        from perception.runtime.segmenter import Segmenter

        return segmentation_feeds(Segmenter(model_path, providers="cpu"), data, split)
    if task == "det":
        from perception.runtime.detector import Detector

        return detection_feeds(Detector(model_path, providers="cpu"), data, split)
    raise ValueError(f"task must be seg or det, got {task!r}")


@dataclass
class QuantizeReport:
    """What :func:`quantize_model` made.

    Attributes:
        model: the FP32 model quantised. out: the INT8 model written.
        frames: calibration frames used. data: where they came from (for the card).
        qdq_tensors: tensors read through a DequantizeLinear (int8 weights, uint8 activations).
        metadata: the model's ``perception.*`` metadata (carried over from the FP32 model).
        fp32_nodes: nodes left in FP32 on purpose: the CRF (``crf_nodes`` of them), the output head and the
            convolutions that feed only those (``fp32_convs``, :func:`float_output_conv_names`).
        fp32_bytes, int8_bytes: file sizes. seconds: wall time of calibration + quantisation.
    """

    model: Path
    out: Path
    task: str
    frames: int
    data: str
    qdq_tensors: int
    metadata: dict[str, str] = field(default_factory=dict)
    fp32_nodes: list[str] = field(default_factory=list)
    crf_nodes: int = 0
    fp32_convs: list[str] = field(default_factory=list)
    op_types: list[str] = field(default_factory=list)
    per_channel: bool = True
    reduce_range: bool = True
    fp32_bytes: int = 0
    int8_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "out": str(self.out),
            "task": self.task,
            "frames": self.frames,
            "data": self.data,
            "qdq_tensors": self.qdq_tensors,
            "fp32_nodes": len(self.fp32_nodes),
            "crf_nodes_fp32": self.crf_nodes,
            "op_types": list(self.op_types),
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "fp32_bytes": self.fp32_bytes,
            "int8_bytes": self.int8_bytes,
            "seconds": round(self.seconds, 3),
        }


def _require_quantization() -> Any:
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError as exc:
        raise QuantizationError(
            f"INT8 quantisation needs the onnx package of the [train] extra ({exc.name} is missing)"
        ) from None
    return onnx, quantization


def quantize_model(
    model_path: PathLike,
    out_path: PathLike,
    feeds: Iterable[dict[str, np.ndarray]],
    *,
    max_frames: int = DEFAULT_CALIBRATION_FRAMES,
    task: str = "",
    data: str = "",
    keep_crf_fp32: bool = True,
    op_types: Iterable[str] | None = None,
    per_channel: bool = True,
    reduce_range: bool = True,
    write_card: bool = True,
) -> QuantizeReport:
    """Statically quantise ``model_path`` to INT8 (QDQ) from up to ``max_frames`` calibration feeds.

    Args:
        model_path: the FP32 ONNX model. out_path: where the INT8 model goes (written atomically).
        feeds: model inputs, one dict per frame (e.g. :func:`calibration_feeds`).
        keep_crf_fp32: leave SqueezeSeg's CRF nodes (:data:`CRF_SCOPE`) unquantised.
        op_types: op types to quantise (default: every type ONNX Runtime can quantise).
        per_channel: int8 weight scales per output channel (else per tensor).
        reduce_range: 7-bit weights, safe on CPUs without VNNI (see the module docstring).
        write_card: write ``NAME.int8.json``/``.md`` beside ``out_path``.
    """
    onnx, q = _require_quantization()
    source, target = Path(model_path), Path(out_path)
    if not source.is_file():
        raise QuantizationError(f"{source}: no such model")
    if source.resolve() == target.resolve():
        raise QuantizationError(f"{target}: the INT8 model must not overwrite the FP32 one")
    if max_frames < 1:
        raise QuantizationError(f"need at least one calibration frame, got {max_frames}")
    start = time.perf_counter()
    try:
        onnx.load(str(source))  # a readable model, or a clear error before calibration starts
    except Exception as exc:  # onnx's DecodeError and friends
        raise QuantizationError(f"{source}: not a readable ONNX model ({type(exc).__name__})") from None
    reader = _CalibrationReader(feeds, max_frames)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".perception-quant-", dir=target.parent) as tmp:
        staged = Path(tmp) / target.name
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # constant folding + shape inference: folds the Identity nodes by which torch's exporter shares
            # equal initializers (e.g. all-zero biases), which the quantiser needs as plain initializers
            q.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # onnx / onnxruntime errors of several types
            raise QuantizationError(f"{source}: pre-processing failed ({str(exc).splitlines()[0]})") from None
        prepared_model = onnx.load(str(prepared))
        crf = crf_node_names(prepared_model) if keep_crf_fp32 else []
        fp32 = crf + head_node_names(prepared_model, set(crf))
        fp32_convs = float_output_conv_names(prepared_model, set(fp32))
        excluded = fp32 + fp32_convs
        try:
            q.quantize_static(
                str(prepared),
                str(staged),
                reader,
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=list(op_types) if op_types is not None else None,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                nodes_to_exclude=excluded or None,
                calibrate_method=q.CalibrationMethod.MinMax,
                calibration_providers=["CPUExecutionProvider"],
            )
        except (ValueError, RuntimeError) as exc:
            if reader.error is not None:
                raise reader.error from None
            if reader.count == 0:
                raise QuantizationError(f"{source}: no calibration frames in {data or 'the feeds'}") from None
            raise QuantizationError(f"{source}: quantisation failed ({str(exc).splitlines()[0]})") from None
        if reader.error is not None:
            raise reader.error
        if reader.count == 0:
            raise QuantizationError(f"{source}: no calibration frames in {data or 'the feeds'}")
        quantized = onnx.load(str(staged))
        _read_float_inputs(quantized, set(excluded))
        onnx.checker.check_model(quantized)
        qdq_tensors = sum(1 for n in quantized.graph.node if n.op_type == "DequantizeLinear")
        if qdq_tensors == 0:
            raise QuantizationError(f"{source}: nothing was quantised (no QDQ pairs in the output)")
        from perception.io.common import atomic_write_bytes

        atomic_write_bytes(target, quantized.SerializeToString())
    report = QuantizeReport(
        model=source,
        out=target,
        task=task,
        frames=reader.count,
        data=data,
        qdq_tensors=qdq_tensors,
        metadata={p.key: p.value for p in quantized.metadata_props},
        fp32_nodes=excluded,
        crf_nodes=len(crf),
        fp32_convs=fp32_convs,
        op_types=sorted(set(op_types)) if op_types is not None else [],
        per_channel=per_channel,
        reduce_range=reduce_range,
        fp32_bytes=source.stat().st_size,
        int8_bytes=target.stat().st_size,
        seconds=time.perf_counter() - start,
    )
    if write_card:
        write_int8_card(report)
    log.info("%s -> %s: INT8 from %d frames (%d QDQ pairs, %d FP32 nodes kept)", source.name, target.name,
             report.frames, report.qdq_tensors, len(excluded))  # fmt: skip
    return report


def write_int8_card(report: QuantizeReport) -> dict[str, Any]:
    """The INT8 model's card: which FP32 file it quantises (with its sha256), calibration data and frames."""
    from perception.evaluation.model_card import read_card, write_card

    fp32_card = read_card(report.model)
    meta = report.metadata
    card: dict[str, Any] = {
        "name": report.out.name[: -len(".onnx")],
        "task": fp32_card.get("task", meta.get("perception.task", report.task)),
        "architecture": f"{fp32_card.get('architecture', meta.get('perception.architecture', '?'))}, INT8 (QDQ)",
        "input": fp32_card.get("input", "as the FP32 model"),
        "parameters": fp32_card.get("parameters", "as the FP32 model"),
        "onnx_opset": fp32_card.get("onnx_opset", "as the FP32 model"),
        "sha256": _sha256(report.out),
        "file_size_bytes": report.int8_bytes,
        "quantization": {
            "fp32_model": str(report.model),
            "fp32_sha256": _sha256(report.model),
            "fp32_file_size_bytes": report.fp32_bytes,
            "method": "ONNX Runtime static quantisation, QDQ format, MinMax calibration",
            "weights": f"int8, {'per channel' if report.per_channel else 'per tensor'}"
            + (", 7-bit range (reduce_range)" if report.reduce_range else ""),
            "activations": "uint8, asymmetric",
            "op_types": report.op_types or "all ONNX Runtime can quantise",
            "fp32_nodes": len(report.fp32_nodes),
            "fp32_crf_nodes": report.crf_nodes,
            "fp32_convs": report.fp32_convs,
            "fp32_rule": "the recurrent CRF (node names with '/crf/') when kept FP32, the inputs that only feed it, "
            "the output head after the last quantised convolution, and the convolutions that feed only those "
            "(a quantised one would run in float on dequantised weights, slower); they read FP32 tensors",
            "calibration_data": report.data,
            "calibration_frames": report.frames,
        },
        "training": fp32_card.get("training", {}),
        "metrics": {},
        "notes": (
            f"INT8 (QDQ) version of the FP32 model {report.model} (sha256 {_sha256(report.model)[:12]}...), "
            f"calibrated on {report.frames} frames of {report.data or 'unnamed data'}. "
            + (f"The {report.crf_nodes} nodes of the recurrent CRF stay FP32. " if report.crf_nodes else "")
            + "The output head stays FP32"
            + (
                f", and so do the convolutions that feed only FP32 nodes ({', '.join(report.fp32_convs)}). "
                if report.fp32_convs
                else ". "
            )
            + "Metrics of the FP32 card do not carry over; measure this file with `perception eval ... --card`."
        ),
    }
    write_card(report.out, card)
    return card


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def argmax_agreement(reference: np.ndarray, candidate: np.ndarray, axis: int, where: np.ndarray | None = None) -> float:
    """Fraction (0-1) of positions where both outputs pick the same class along ``axis`` (optionally masked)."""
    same = np.argmax(reference, axis=axis) == np.argmax(candidate, axis=axis)
    if where is not None:
        sel = np.broadcast_to(np.asarray(where, dtype=bool), same.shape)
        return float(same[sel].mean()) if sel.any() else float("nan")
    return float(same.mean())


__all__ = [
    "CRF_SCOPE",
    "INT8_SUFFIX",
    "MODEL_PRECISIONS",
    "QuantizationError",
    "QuantizeReport",
    "argmax_agreement",
    "calibration_feeds",
    "crf_node_names",
    "int8_model_path",
    "model_for_precision",
    "quantize_model",
    "write_int8_card",
]
