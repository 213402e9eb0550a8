"""ONNX export of the torch models, with metadata the runtime reads and a parity check against ONNX Runtime."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.shape_inference
import torch

from perception.io.common import permissions_for
from perception.lidar import squeezeseg_config as cfg
from perception.lidar.sensors import SensorSpec
from perception.training.nets.squeezedet import DET_CLASSES, INPUT_HEIGHT, INPUT_WIDTH, SqueezeDet
from perception.training.nets.squeezeseg import SqueezeSeg

DEFAULT_OPSET = 17
SEG_INPUTS = ("range_image", "mask")
SEG_OUTPUTS = ("logits", "probs")


class _SegmentationGraph(torch.nn.Module):
    """The exported graph: logits, and class probabilities zeroed on empty pixels."""

    def __init__(self, model: SqueezeSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, range_image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(range_image, mask)
        return logits, torch.softmax(logits, dim=1) * mask


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_segmentation_onnx(
    model: SqueezeSeg,
    out_path: str | os.PathLike[str],
    sensor: SensorSpec,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export SqueezeSeg (+ CRF) for ``sensor``'s H x W with a dynamic batch, check it, write atomically.

    Inputs ``range_image`` float32 (B, 5, H, W) and ``mask`` float32 (B, 1, H, W); outputs ``logits`` and
    ``probs`` (B, C, H, W). Metadata (``perception.*`` keys) names the task, sensor, classes, CRF and
    normalisation so the runtime can check what it loads.
    """
    height, width = sensor.shape
    if width % 16:
        raise ValueError(f"SqueezeSeg needs a width divisible by 16, sensor {sensor.name} has {width}")
    graph = _SegmentationGraph(model).eval()
    example = (torch.zeros(1, 5, height, width), torch.zeros(1, 1, height, width))
    crf = model.crf
    meta = {
        "perception.task": "segmentation",
        "perception.architecture": "squeezeseg" + ("+crf" if crf is not None else ""),
        "perception.block": model.block,
        "perception.sensor": json.dumps(sensor.to_dict()),
        "perception.input_height": str(height),
        "perception.input_width": str(width),
        "perception.classes": json.dumps(list(cfg.CLASSES[: model.num_classes])),
        "perception.input_mean": json.dumps(model.input_mean.flatten().tolist()),
        "perception.input_std": json.dumps(model.input_std.flatten().tolist()),
        "perception.crf": json.dumps(
            {"iterations": crf.iterations, "window": list(crf.window), "form": crf.form} if crf else None
        ),
    }
    meta.update(_user_metadata(metadata))
    return _export_checked(graph, example, Path(out_path), SEG_INPUTS, SEG_OUTPUTS, opset, meta)


def logit_agreement(
    model: SqueezeSeg, onnx_path: str | os.PathLike[str], range_image: np.ndarray, mask: np.ndarray
) -> tuple[float, float]:
    """(max abs difference of the logits between torch (eval mode) and ONNX Runtime on CPU, max |logit|)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_logits = session.run(["logits"], {"range_image": range_image, "mask": mask})[0]
    with torch.no_grad():
        torch_logits = model.eval()(torch.from_numpy(range_image), torch.from_numpy(mask)).numpy()
    return float(np.max(np.abs(torch_logits - ort_logits))), float(np.max(np.abs(torch_logits)))


def compare_with_onnxruntime(
    model: SqueezeSeg, onnx_path: str | os.PathLike[str], range_image: np.ndarray, mask: np.ndarray
) -> float:
    """Max abs difference of the logits between torch (eval mode) and ONNX Runtime on CPU."""
    return logit_agreement(model, onnx_path, range_image, mask)[0]


def logit_tolerance(max_abs_logit: float) -> float:
    """How far ONNX Runtime's logits may be from torch's: 1e-4, or 2e-6 of the largest logit when larger
    (float32 round-off grows with the magnitude: trained weights give logits in the hundreds on noise)."""
    return max(1e-4, 2e-6 * max_abs_logit)


def build_segmentation_model(
    checkpoint: str | os.PathLike[str] | None = None,
    crf: bool = True,
    crf_iterations: int = cfg.CRF_ITERATIONS,
    crf_window: tuple[int, int] = cfg.CRF_WINDOW,
    seed: int = 0,
    crf_form: str | None = None,
    block: str | None = None,
) -> SqueezeSeg:
    """SqueezeSeg from a checkpoint (a state dict, or a dict with ``model``), or freshly initialised from ``seed``.

    ``crf_form`` and ``block`` None: what the trainer recorded in the checkpoint's config, else the
    paper's (``original``, ``fire``). A checkpoint ending in ``.onnx`` is a model this project
    exported: see :func:`segmentation_model_from_onnx` (the CRF and blocks it records win over the
    arguments).
    """
    from perception.training.nets.squeezeseg import squeezeseg, squeezeseg_without_crf

    if checkpoint is not None and Path(checkpoint).suffix == ".onnx":
        return segmentation_model_from_onnx(checkpoint)
    recorded = _checkpoint_config(checkpoint) if checkpoint is not None else {}
    crf_form = crf_form or recorded.get("crf_form", "original")
    block = block or recorded.get("block", "fire")
    torch.manual_seed(seed)
    model = (
        squeezeseg(crf_iterations=crf_iterations, crf_window=crf_window, crf_form=crf_form, block=block)  # type: ignore[arg-type]
        if crf
        else squeezeseg_without_crf(block=block)  # type: ignore[arg-type]
    )
    if checkpoint is not None:
        _load_weights(model, checkpoint)
    return model.eval()


def segmentation_model_from_onnx(path: str | os.PathLike[str]) -> SqueezeSeg:
    """The torch SqueezeSeg of an ONNX segmentation model this project exported, with its weights.

    The CRF (iterations, window, form) and the blocks come from the model's metadata, every trainable
    weight from its initializers (the exporter keeps their names); buffers that the exporter folded
    away (fixed CRF kernels) come from the configuration. SqueezeSeg is fully convolutional, so the
    model can then be exported again for another sensor's H x W (``perception export seg --checkpoint
    models/squeezeseg_kitti-front.onnx --sensor hdl64e-360``), or with the current exporter.
    """
    from perception.training.nets.squeezeseg import squeezeseg, squeezeseg_without_crf

    source = Path(path)
    try:
        proto = onnx.load(str(source))
    except FileNotFoundError:
        raise ValueError(f"{source}: no such model") from None
    except Exception as exc:  # onnx's DecodeError and friends
        raise ValueError(f"{source}: not a readable ONNX model ({type(exc).__name__})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("perception.task") != "segmentation":
        raise ValueError(f"{source}: not a segmentation model exported by this project (no perception.task)")
    try:
        crf = json.loads(meta.get("perception.crf", "null"))
        block = meta.get("perception.block", "fire")
        if crf:
            window = (int(crf["window"][0]), int(crf["window"][1]))
            model = squeezeseg(crf_iterations=int(crf["iterations"]), crf_window=window, crf_form=crf["form"],
                               block=block)  # type: ignore[arg-type]  # fmt: skip
        else:
            model = squeezeseg_without_crf(block=block)  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{source}: unreadable CRF/block metadata ({exc})") from None
    state = model.state_dict()
    arrays = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    for node in proto.graph.node:  # the exporter shares equal initializers (zero biases) through Identity nodes
        if node.op_type == "Identity" and node.input[0] in arrays:
            arrays[node.output[0]] = arrays[node.input[0]]
    weights = {
        name.removeprefix("model."): torch.from_numpy(array.copy())
        for name, array in arrays.items()
        if name.startswith("model.")
    }
    # every weight and buffer must come from the graph, except the CRF's fixed kernels (functions of
    # the configuration that the exporter may fold away)
    fixed = {name for name in state if name.startswith("crf.") and not name.endswith(("compat.weight", "compat.bias"))}
    missing = sorted(set(state) - fixed - weights.keys())
    if missing:
        raise ValueError(f"{source}: weights missing from the graph: {', '.join(missing[:5])}")
    for name, value in weights.items():
        if name not in state or state[name].shape != value.shape:
            raise ValueError(f"{source}: weight {name} {tuple(value.shape)} does not fit {type(model).__name__}")
        state[name] = value
    model.load_state_dict(state)
    return model.eval()


DET_INPUTS = ("image",)
DET_OUTPUTS = ("class_probs", "confidence", "deltas")


class _DetectionGraph(torch.nn.Module):
    """The exported detector: per-anchor class probabilities (softmax), confidence (sigmoid) and deltas."""

    def __init__(self, model: SqueezeDet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        class_logits, confidence, deltas = self.model.split_outputs(self.model(image))
        return torch.softmax(class_logits, dim=-1), torch.sigmoid(confidence), deltas


def decompose_channel_softmax(proto: onnx.ModelProto) -> int:
    """Rewrite every Softmax over a non-last axis as ReduceMax, Sub, Exp, ReduceSum, Div; returns how many.

    ONNX Runtime's CPU Softmax transposes its input when the axis is not the last one: on a
    (1, 4, 64, 512) tensor over axis 1 (SqueezeSeg's class axis) it takes 2.8 ms where the five
    elementwise and reduction nodes take 0.4 ms, the same values to float32 round-off (1.2e-7).
    SqueezeSeg with its CRF has four such softmaxes (three CRF iterations and the output probabilities).
    The graph is changed in place; the new nodes keep the old node's name as a prefix.
    """
    inferred = onnx.shape_inference.infer_shapes(proto)
    ranks = {
        info.name: len(info.type.tensor_type.shape.dim)
        for info in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
        if info.type.tensor_type.HasField("shape")
    }
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:  # Softmax then flattened every axis from `axis` on, and ReduceSum took no axes input
        return 0
    rewritten = 0
    nodes: list[onnx.NodeProto] = []
    for node in proto.graph.node:
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
        rank = ranks.get(node.input[0]) if node.op_type == "Softmax" else None
        if rank is None or axis % rank == rank - 1:
            nodes.append(node)
            continue
        x, y, name = node.input[0], node.output[0], node.name or f"softmax_{rewritten}"
        axes = f"{name}/axes"
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array([axis % rank], dtype=np.int64), axes))
        reduce_max = (
            onnx.helper.make_node("ReduceMax", [x, axes], [f"{name}/max"], name=f"{name}/ReduceMax", keepdims=1)
            if opset >= 18
            else onnx.helper.make_node(
                "ReduceMax", [x], [f"{name}/max"], name=f"{name}/ReduceMax", axes=[axis % rank], keepdims=1
            )
        )
        nodes += [
            reduce_max,
            onnx.helper.make_node("Sub", [x, f"{name}/max"], [f"{name}/shifted"], name=f"{name}/Sub"),
            onnx.helper.make_node("Exp", [f"{name}/shifted"], [f"{name}/exp"], name=f"{name}/Exp"),
            onnx.helper.make_node(
                "ReduceSum", [f"{name}/exp", axes], [f"{name}/sum"], name=f"{name}/ReduceSum", keepdims=1
            ),
            onnx.helper.make_node("Div", [f"{name}/exp", f"{name}/sum"], [y], name=f"{name}/Div"),
        ]
        rewritten += 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return rewritten


def _export_checked(
    graph: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    target: Path,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    opset: int,
    meta: dict[str, str],
) -> Path:
    """torch.onnx.export into a temporary sibling, decompose channel softmaxes, add metadata, run onnx.checker,
    rename into place."""
    if opset < 17:
        raise ValueError("opset must be >= 17")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # the CRF's neighbour slices trigger a harmless constant-folding notice in the TorchScript exporter
            warnings.filterwarnings("ignore", message="Constant folding")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                graph,
                example,
                tmp,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes={name: {0: "batch"} for name in (*inputs, *outputs)},
                opset_version=opset,
                dynamo=False,
            )
        proto = onnx.load(tmp)
        decompose_channel_softmax(proto)
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "perception"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, tmp)
        os.chmod(tmp, permissions_for(target))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def export_detection_onnx(
    model: SqueezeDet,
    out_path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export SqueezeDet/SqueezeDet+ at 1248 x 384 with a dynamic batch, checked, written atomically.

    Input ``image`` float32 (B, 3, 384, 1248) RGB in [0, 255]; outputs ``class_probs`` (B, A, C),
    ``confidence`` (B, A) and ``deltas`` (B, A, 4), anchors numbered (row * Wg + col) * K + k.
    """
    graph = _DetectionGraph(model).eval()
    grid_w, grid_h = model.variant.grid
    meta = {
        "perception.task": "detection",
        "perception.architecture": model.variant.name,
        "perception.block": model.block,
        "perception.input_width": str(INPUT_WIDTH),
        "perception.input_height": str(INPUT_HEIGHT),
        "perception.grid": json.dumps([grid_w, grid_h]),
        "perception.anchors_per_cell": str(model.anchors_per_cell),
        "perception.classes": json.dumps(list(DET_CLASSES[: model.num_classes])),
    }
    meta.update(_user_metadata(metadata))
    example = (torch.zeros(1, 3, INPUT_HEIGHT, INPUT_WIDTH),)
    return _export_checked(graph, example, Path(out_path), DET_INPUTS, DET_OUTPUTS, opset, meta)


def _user_metadata(metadata: dict[str, Any] | None) -> dict[str, str]:
    return {f"perception.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}


def build_detection_model(
    variant: str = "squeezedet",
    checkpoint: str | os.PathLike[str] | None = None,
    seed: int = 0,
    block: str | None = None,
) -> SqueezeDet:
    """SqueezeDet or SqueezeDet+ from a checkpoint, or freshly initialised from ``seed``.

    ``block`` None: the backbone blocks the trainer recorded in the checkpoint's config, else ``fire``.
    """
    from perception.training.nets.squeezedet import squeezedet, squeezedet_plus

    builders = {"squeezedet": squeezedet, "squeezedet+": squeezedet_plus, "squeezedet-plus": squeezedet_plus}
    if variant not in builders:
        raise ValueError(f"unknown detector {variant!r}; use squeezedet or squeezedet+")
    block = block or (_checkpoint_config(checkpoint).get("block", "fire") if checkpoint is not None else "fire")
    torch.manual_seed(seed)
    model = builders[variant](block=block)  # type: ignore[operator]
    if checkpoint is not None:
        _load_weights(model, checkpoint)
    return model.eval()


def _checkpoint_config(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The trainer's config stored in a checkpoint ({} for a bare state dict or an unreadable file)."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception:  # _load_weights reports unreadable files
        return {}
    config = state.get("config") if isinstance(state, dict) else None
    return config if isinstance(config, dict) else {}


def _load_weights(model: torch.nn.Module, checkpoint: str | os.PathLike[str]) -> None:
    """Load a state dict (or a dict holding one under ``model``) without unpickling arbitrary objects."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{checkpoint}: no such checkpoint") from None
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise ValueError(f"{checkpoint}: not a readable torch checkpoint ({type(exc).__name__})") from None
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"{checkpoint}: weights do not fit {type(model).__name__} ({str(exc).splitlines()[0]})"
        ) from None


def compare_detection_with_onnxruntime(
    model: SqueezeDet, onnx_path: str | os.PathLike[str], image: np.ndarray
) -> float:
    """Max abs difference over class probabilities, confidences and deltas, torch (eval) vs ONNX Runtime CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_out = session.run(list(DET_OUTPUTS), {"image": image})
    with torch.no_grad():
        torch_out = _DetectionGraph(model.eval())(torch.from_numpy(image))
    return float(max(np.max(np.abs(t.numpy() - o)) for t, o in zip(torch_out, ort_out, strict=True)))


def write_export_card(
    model: torch.nn.Module,
    onnx_path: str | os.PathLike[str],
    task: str,
    architecture: str,
    input_desc: str,
    opset: int,
    checkpoint: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """Write the model card for a fresh export: what the model is and what it was trained on (metrics come later)."""
    from perception.evaluation.model_card import write_card

    path = Path(onnx_path)
    card: dict[str, Any] = {
        "name": path.stem,
        "task": task,
        "architecture": architecture,
        "input": input_desc,
        "parameters": sum(p.numel() for p in model.parameters()),
        "onnx_opset": opset,
        "sha256": sha256_file(path),
        "file_size_bytes": path.stat().st_size,
    }
    if checkpoint is None:
        card["training"] = {}
        card["notes"] = "Freshly initialised weights: an untrained model, for tests and benchmarks only."
    elif Path(checkpoint).suffix == ".onnx":
        from perception.evaluation.model_card import read_card

        source = read_card(checkpoint)
        origin = f"{checkpoint} (sha256 {sha256_file(checkpoint)[:12]}...)"
        card["training"] = {**source.get("training", {}), "weights_from": origin}
        card["notes"] = (
            f"The weights of {checkpoint}, exported again for this input. Its card's metrics do not carry over "
            "(another sensor, or another graph): measure this file with `perception eval ... --card`."
        )
    else:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # our own trainer's checkpoint
        config = state.get("config", {}) if isinstance(state, dict) else {}
        card["training"] = {
            "checkpoint": str(checkpoint),
            "data": config.get("data", "unknown"),
            "data_kind": config.get("extra", {}).get("data_kind", "unknown"),
            "steps": state.get("step") if isinstance(state, dict) else None,
            "batch_size": config.get("batch_size"),
            "crop_width": config.get("crop_width"),
            "lr": config.get("lr"),
            "validation_at_training": state.get("val_metrics", {}) if isinstance(state, dict) else {},
        }
    write_card(path, card)
    return card
