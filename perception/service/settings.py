"""Service settings from the environment (prefix ``PERCEPTION_``), e.g. ``PERCEPTION_PORT=9000``.

List values (``PERCEPTION_CORS_ORIGINS``) take JSON (``["https://a.example"]``) or a comma-separated
list. A model path set to an empty string or ``none`` disables that stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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

    @field_validator("seg_model", "det_model", mode="before")
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

    def api_key_value(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None
