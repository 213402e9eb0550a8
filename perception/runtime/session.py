"""ONNX Runtime sessions with an execution-provider preference and an honest report of what runs.

Preference names: ``tensorrt``, ``cuda``, ``cpu`` (or full ONNX Runtime provider names). ``auto`` means
TensorRT -> CUDA -> CPU. Providers this onnxruntime build lacks are skipped with a log line; the
provider reported is ``session.get_providers()[0]``, i.e. the one ONNX Runtime actually put first,
because onnxruntime-gpu silently falls back to CPU when CUDA cannot start.

TensorRT: :class:`TensorRTOptions` turns the deployment's choices (precision, engine and timing cache
directory, workspace) into the TensorRT execution provider's options for one model. TensorRT builds an
engine the first time a session runs, which takes seconds to minutes; with a cache directory the engine
is written there and later starts only deserialise it. :func:`warm_up` runs a model once on zeros, so
that this build (and CUDA's lazy initialisation) happens at start and not on the first real frame.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("tensorrt", "cuda", "cpu")
TRT_PROVIDER = PROVIDER_NAMES["tensorrt"]
Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
QDQ_SUFFIX = ".int8.onnx"
"""Name ending of the QDQ models ``perception quantize`` writes (:func:`perception.runtime.quantize.int8_model_path`):
their INT8 scales are in the graph, so TensorRT runs them in INT8 without a calibration table."""


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


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers (e.g. only CPU for the ``onnxruntime`` wheel)."""
    return list(ort.get_available_providers())


@dataclass(frozen=True)
class TensorRTOptions:
    """How the TensorRT execution provider builds and caches engines (ignored when TensorRT is not used).

    Attributes:
        precision: ``fp32``; ``fp16`` (TensorRT may pick FP16 kernels, layers it cannot run in FP16 stay
            FP32); ``int8`` (also FP16; needs a calibration table per model, see :meth:`calibration_table`).
            A QDQ model (name ending :data:`QDQ_SUFFIX`) always runs with INT8 and FP16 enabled and no
            table: its quantisation scales are in the graph.
        cache_dir: directory for engines (in ``<cache_dir>/<precision>/``, since an engine is only valid
            for one precision, GPU and TensorRT version) and the timing cache; None: no cache, every start
            builds the engines again.
        timing_cache: keep TensorRT's layer timing cache in ``cache_dir`` (speeds up later builds).
        workspace_mb: the most GPU memory TensorRT may use for tactics while building, MiB.
        builder_optimization_level: 0-5, TensorRT's build effort (3 is its default).
        device_id: CUDA device.
    """

    precision: Precision = "fp16"
    cache_dir: Path | None = None
    timing_cache: bool = True
    workspace_mb: int = 2048
    builder_optimization_level: int = 3
    device_id: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.workspace_mb < 1:
            raise ValueError(f"TensorRT workspace must be at least 1 MiB, got {self.workspace_mb}")
        if not 0 <= self.builder_optimization_level <= 5:
            raise ValueError(f"TensorRT builder optimisation level is 0-5, got {self.builder_optimization_level}")
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    @property
    def engine_dir(self) -> Path | None:
        """Where this precision's engines live (None without a cache directory)."""
        return None if self.cache_dir is None else self.cache_dir / self.precision

    @staticmethod
    def calibration_table_name(model_path: str | os.PathLike[str]) -> str:
        """File name (inside :attr:`engine_dir`) of a model's INT8 calibration table."""
        return f"{Path(model_path).stem}.calibration.flatbuffers"

    def calibration_table(self, model_path: str | os.PathLike[str]) -> Path | None:
        """The INT8 calibration table the TensorRT provider reads for ``model_path`` (None without a cache)."""
        engine_dir = self.engine_dir
        return None if engine_dir is None else engine_dir / self.calibration_table_name(model_path)

    def provider_options(self, model_path: str | os.PathLike[str]) -> dict[str, str]:
        """``TensorrtExecutionProvider`` options for one model (creates the cache directories)."""
        qdq = Path(model_path).name.endswith(QDQ_SUFFIX)
        int8 = self.precision == "int8" or qdq
        options = {
            "device_id": str(self.device_id),
            "trt_max_workspace_size": str(self.workspace_mb * 1024 * 1024),
            "trt_builder_optimization_level": str(self.builder_optimization_level),
            "trt_fp16_enable": "1" if self.precision == "fp16" or int8 else "0",
            "trt_int8_enable": "1" if int8 else "0",
        }
        engine_dir = self.engine_dir
        if int8 and not qdq:
            table = self.calibration_table(model_path)
            if table is None or not table.is_file():
                raise ModelLoadError(
                    f"{model_path}: TensorRT INT8 needs a calibration table at "
                    f"{table if table is not None else '<cache dir>/int8/' + self.calibration_table_name(model_path)}"
                    "; make one with `perception export trt --precision int8 --calibration-data DIR`"
                )
            options["trt_int8_calibration_table_name"] = table.name
            options["trt_int8_use_native_calibration_table"] = "0"
        if engine_dir is not None and self.cache_dir is not None:
            engine_dir.mkdir(parents=True, exist_ok=True)
            options["trt_engine_cache_enable"] = "1"
            options["trt_engine_cache_path"] = str(engine_dir)
            if self.timing_cache:
                options["trt_timing_cache_enable"] = "1"
                options["trt_timing_cache_path"] = str(self.cache_dir)
        return options


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


Spinning = Literal["in_run", "off", "on"]
SPINNING: tuple[str, ...] = get_args(Spinning)


def session_options(intra_op_threads: int = 0, spinning: Spinning = "in_run") -> ort.SessionOptions:
    """The session options of :func:`load_model`: every graph optimisation, sequential execution, ONNX
    Runtime's CPU memory arena, ``intra_op_threads`` (0: one per core) intra-op threads.

    ``spinning``: ``in_run`` (default) lets the threads busy-wait between the parallel sections of a run
    and stops them when the run returns (``session.force_spinning_stop``); ``off`` never spins
    (``session.intra_op.allow_spinning=0``); ``on`` is ONNX Runtime's default, which keeps spinning after
    a run and so takes a small CPU's cores from the numpy work between runs (projection, clustering).
    ``perception bench ort-settings`` times these choices against their alternatives.
    """
    if spinning not in SPINNING:
        raise ValueError(f"spinning must be one of {', '.join(SPINNING)}, got {spinning!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if spinning == "off":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif spinning == "in_run":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def load_model(
    path: str | os.PathLike[str],
    providers: str | Sequence[str] = "auto",
    intra_op_threads: int = 0,
    provider_options: dict[str, dict[str, str]] | None = None,
    tensorrt: TensorRTOptions | None = None,
    spinning: Spinning = "in_run",
) -> LoadedModel:
    """Open an ONNX model with the preferred providers; raise :class:`ModelLoadError` on a bad file.

    ``spinning`` (:func:`session_options`): ``in_run`` by default. Measured with the shipped segmenter on
    2 cores: with clustering on one street scan, ``off`` gave 156.6-172.8 ms per frame against 190.2-190.3
    ms for ``on`` (median of 20, two runs each); ``in_run`` against ``off`` in alternating runs (neither
    spins after a run, so neither slows the other), two runs: network 76.5 / 74.5 vs 80.2 / 76.5 ms, the
    mesh-world LiDAR frame with clustering 105.9 / 113.4 vs 109.6 / 117.7 ms.

    Providers this onnxruntime build lacks are skipped: one line each, and a line naming the provider
    that runs instead (a warning when the preference was explicit, info for ``auto``). ``tensorrt`` gives
    the TensorRT provider's options (:class:`TensorRTOptions`, default FP16 without a cache); an entry for
    it in ``provider_options`` wins over those.
    """
    model_path = Path(path)
    if not model_path.is_file():
        raise ModelLoadError(f"{model_path}: no such model file")
    wanted = parse_provider_preference(providers)
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    explicit = not (isinstance(providers, str) and providers.strip().lower() == "auto")
    for skipped in (p for p in wanted if p not in available):
        log.info("execution provider %s is not available in this onnxruntime build; skipping it", skipped)
    if chosen[0] != wanted[0]:
        log.log(
            logging.WARNING if explicit else logging.INFO,
            "%s: asked for %s, which this onnxruntime build does not have (it has %s); falling back to %s",
            model_path.name,
            wanted[0],
            ", ".join(sorted(available)),
            chosen[0],
        )
    options = session_options(intra_op_threads, spinning)
    opts = dict(provider_options or {})
    if TRT_PROVIDER in chosen and TRT_PROVIDER not in opts:
        opts[TRT_PROVIDER] = (tensorrt or TensorRTOptions()).provider_options(model_path)
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


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def zero_feeds(session: ort.InferenceSession, batch: int = 1) -> dict[str, np.ndarray]:
    """Zero-filled inputs of the right shapes and types (symbolic dimensions become ``batch``)."""
    feeds = {}
    for spec in session.get_inputs():
        dtype = _ORT_DTYPES.get(spec.type)
        if dtype is None:
            raise ModelLoadError(f"input {spec.name!r} has type {spec.type}, which warm-up cannot make")
        shape = [d if isinstance(d, int) and d > 0 else batch for d in spec.shape]
        feeds[spec.name] = np.zeros(shape, dtype=dtype)
    return feeds


def warm_up(model: LoadedModel, runs: int = 1) -> float:
    """Run ``model`` ``runs`` times on zeros; return the seconds the first run took.

    On TensorRT the first run builds the engine (or loads it from the engine cache), on CUDA it
    initialises the context and picks kernels; after this the first real frame runs at full speed.
    Raises :class:`ModelLoadError` when the model cannot run at all.
    """
    feeds = zero_feeds(model.session)
    first = 0.0
    for i in range(max(1, runs)):
        start = time.perf_counter()
        try:
            model.session.run(None, feeds)
        except Exception as exc:  # onnxruntime's own error types
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{model.path}: warm-up run on {model.provider} failed ({message})") from None
        if i == 0:
            first = time.perf_counter() - start
    log.info("%s warmed up on %s (first run %.1f ms)", model.path.name, model.provider, first * 1e3)
    return first
