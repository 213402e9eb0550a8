"""ONNX Runtime sessions with an execution-provider preference and an honest report of what runs.

Preference names: ``tensorrt``, ``cuda``, ``cpu`` (or full ONNX Runtime provider names). ``auto`` means
TensorRT -> CUDA -> CPU. Providers this onnxruntime build lacks are skipped with a log line; the
provider reported is ``session.get_providers()[0]``, i.e. the one ONNX Runtime actually put first,
because onnxruntime-gpu silently falls back to CPU when CUDA cannot start.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("tensorrt", "cuda", "cpu")


class ModelLoadError(RuntimeError):
    """A model file is missing, corrupt, or not the kind of model the caller needs."""


def parse_provider_preference(preference: str | Sequence[str]) -> list[str]:
    """Full provider names from ``"auto"``, ``"cuda,cpu"`` or a list; CPU is always appended last."""
    items = [p.strip() for p in preference.split(",")] if isinstance(preference, str) else list(preference)
    if items == ["auto"]:
        items = list(AUTO_ORDER)
    names = []
    for item in items:
        name = PROVIDER_NAMES.get(item.lower(), item)
        if name not in PROVIDER_NAMES.values():
            raise ValueError(f"unknown execution provider {item!r}; use auto or a list of {', '.join(PROVIDER_NAMES)}")
        if name not in names:
            names.append(name)
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")
    return names


@dataclass
class LoadedModel:
    """An inference session and what it is: path, metadata, providers asked for and in use."""

    path: Path
    session: ort.InferenceSession
    metadata: dict[str, str]
    requested_providers: list[str]
    providers: list[str] = field(default_factory=list)

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (the first one ONNX Runtime kept)."""
        return self.providers[0]

    def meta_json(self, key: str, default: object = None) -> object:
        raw = self.metadata.get(f"perception.{key}")
        return default if raw is None else json.loads(raw)


def load_model(
    path: str | os.PathLike[str],
    providers: str | Sequence[str] = "auto",
    intra_op_threads: int = 0,
    provider_options: dict[str, dict[str, str]] | None = None,
) -> LoadedModel:
    """Open an ONNX model with the preferred providers; raise :class:`ModelLoadError` on a bad file."""
    model_path = Path(path)
    if not model_path.is_file():
        raise ModelLoadError(f"{model_path}: no such model file")
    wanted = parse_provider_preference(providers)
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    for skipped in (p for p in wanted if p not in available):
        log.info("execution provider %s is not available in this onnxruntime build; skipping it", skipped)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    opts = provider_options or {}
    try:
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=[(p, opts.get(p, {})) for p in chosen]
        )
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{model_path}: not a loadable ONNX model ({first_line})") from None
    in_use = session.get_providers()
    if in_use[0] != chosen[0]:
        log.warning("asked for %s but ONNX Runtime runs %s on %s", chosen[0], in_use[0], model_path.name)
    else:
        log.info("%s runs on %s", model_path.name, in_use[0])
    meta = dict(session.get_modelmeta().custom_metadata_map)
    return LoadedModel(model_path, session, meta, wanted, list(in_use))
