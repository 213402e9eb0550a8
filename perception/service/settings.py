"""Service settings from the environment (prefix ``PERCEPTION_``), e.g. ``PERCEPTION_PORT=9000``.

List values (``PERCEPTION_CORS_ORIGINS``) take JSON (``["https://a.example"]``) or a comma-separated
list. A model path set to an empty string or ``none`` disables that stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from perception.runtime.session import TensorRTOptions

DEFAULT_SEG_MODEL = Path("models/squeezeseg_kitti-front.onnx")
DEFAULT_DET_MODEL = Path("models/squeezedet.onnx")


class Settings(BaseSettings):
    """Everything ``perception serve`` and :func:`perception.service.app.create_app` need."""

    model_config = SettingsConfigDict(env_prefix="PERCEPTION_", extra="ignore", validate_default=True)

    host: str = Field("127.0.0.1", description="Address both servers bind (0.0.0.0 for every interface).")
    port: int = Field(8000, ge=0, le=65535, description="REST/WebSocket port (0: any free port).")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: any free port).")
    grpc_enabled: bool = Field(True, description="Start the gRPC server next to the REST one.")
    seg_model: Path | None = Field(DEFAULT_SEG_MODEL, description="SqueezeSeg ONNX model; none: no LiDAR stage.")
    det_model: Path | None = Field(DEFAULT_DET_MODEL, description="SqueezeDet ONNX model; none: no camera stage.")
    providers: str = Field("auto", description="auto (TensorRT -> CUDA -> CPU) or a list like cuda,cpu.")
    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="Model files to load: fp32 (as configured) or int8 (NAME.int8.onnx beside each configured model, "
        "made by `perception quantize`; ONNX Runtime runs its QDQ graph).",
    )
    trt_precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp16", description="TensorRT precision (int8 needs calibration tables in the cache, see docs/deployment.md)."
    )
    trt_cache_dir: Path | None = Field(
        None, description="TensorRT engine and timing cache directory; none: engines are rebuilt at every start."
    )
    trt_workspace_mb: int = Field(2048, ge=1, description="GPU memory TensorRT may use while building engines, MiB.")
    warmup: bool = Field(True, description="Run each model once at start (TensorRT builds or loads its engines).")
    api_key: SecretStr | None = Field(None, description="When set, clients must send it (header/metadata x-api-key).")
    max_body_mb: float = Field(64.0, gt=0, description="Largest request body / WebSocket message, MiB (413 above).")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS; empty: CORS off."
    )
    stream_queue_size: int = Field(2, ge=1, le=1024, description="Frames a stream may queue before the policy acts.")
    stream_policy: Literal["drop", "block"] = Field(
        "drop", description="drop: discard the oldest queued frame; block: make the sender wait."
    )
    cluster: bool = Field(True, description="Group labelled points into instances with 3D boxes.")
    nan_policy: Literal["error", "drop"] = Field(
        "error", description="error: refuse clouds with NaN/inf (400); drop: label such points 0."
    )
    grpc_max_message_mb: int = Field(64, ge=16, le=2047, description="gRPC send/receive message limit, MiB.")
    grpc_workers: int = Field(16, ge=1, description="Threads of the gRPC server (concurrent RPCs, streams).")
    pipeline_workers: int = Field(2, ge=1, description="Threads running the camera stage beside the LiDAR one.")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per model (0: its default).")
    shutdown_grace_s: float = Field(5.0, ge=0, description="Seconds in-flight requests get on SIGINT/SIGTERM.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("seg_model", "det_model", "trt_cache_dir", mode="before")
    @classmethod
    def _none_path(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [v.strip() for v in text.split(",") if v.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value else value

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def grpc_max_message_bytes(self) -> int:
        return self.grpc_max_message_mb * 1024 * 1024

    def tensorrt_options(self) -> TensorRTOptions:
        """The TensorRT provider options these settings describe (used only where TensorRT runs)."""
        return TensorRTOptions(
            precision=self.trt_precision, cache_dir=self.trt_cache_dir, workspace_mb=self.trt_workspace_mb
        )

    def model_paths(self) -> tuple[Path | None, Path | None]:
        """(seg, det) model files to load at :attr:`precision` (None: stage off).

        For ``int8`` each configured model's ``NAME.int8.onnx`` sibling; :class:`FileNotFoundError` naming
        the missing file and the command that makes it when one is absent.
        """
        from perception.runtime.quantize import model_for_precision

        seg = None if self.seg_model is None else model_for_precision(self.seg_model, self.precision)
        det = None if self.det_model is None else model_for_precision(self.det_model, self.precision)
        return seg, det

    def api_key_value(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None
