"""REST and WebSocket API over :class:`perception.pipeline.Pipeline` (FastAPI).

Endpoints (all ``/v1/*`` need header ``x-api-key`` when ``Settings.api_key`` is set; health, readiness
and metrics do not, so probes and scrapers work without it):

* ``POST /v1/detect``: a camera image as ``multipart/form-data`` (file part ``image``, PNG/JPEG), as a raw
  ``image/png`` / ``image/jpeg`` body, or as raw RGB ``application/octet-stream`` with query parameters
  ``width`` and ``height`` (``width * height * 3`` bytes, row-major from the top-left pixel).
* ``POST /v1/segment``: a point cloud as ``application/octet-stream`` (little-endian float32 x, y, z,
  intensity per point, KITTI ``.bin`` content, N x 16 bytes), as ``application/x-pcd`` (also
  ``application/x-ply``, ``application/x-npy``), or as a ``multipart/form-data`` file part ``points``
  whose filename suffix (.bin, .pcd, .ply, .npy) says the format. ``include_labels=true`` adds per-point
  labels and scores, ``include_point_indices=true`` each instance's point indices.
* ``POST /v1/perceive``: ``multipart/form-data`` with parts ``image`` and/or ``points`` (as above; an image
  part sent as ``application/octet-stream`` is raw RGB and needs ``width``/``height``).
* ``GET /v1/models``, ``GET /healthz`` (alive), ``GET /readyz`` (200 when every configured model is
  loaded, else 503), ``GET /metrics`` (Prometheus text format).
* ``GET /viewer``: the live viewer page, fed by the WebSocket ``/v1/viewer`` with every frame the endpoints
  here process (:mod:`perception.service.viewer`).

Errors are JSON ``{"error": "..."}``: 400 bad payload (sizes, NaN/inf points, empty clouds, undecodable
images), 401 API key, 413 body larger than ``max_body_mb``, 415 unknown content type, 422 bad query
parameter, 503 the model the request needs is not loaded. The server keeps serving after each.

WebSocket ``/v1/stream`` protocol
---------------------------------
Client -> server, one **binary** message per frame (the envelope of
:func:`perception.service.schemas.pack_frame_envelope`)::

    uint32 little-endian  L, the header length
    L bytes               JSON header, e.g. {"frame_id": "42", "timestamp": 1.5, "include_labels": false,
                            "image": {"encoding": "encoded" | "rgb8", "width": W, "height": H, "size": B1},
                            "points": {"format": "float32", "size": B2}}
    B1 bytes              image: PNG/JPEG file, or raw RGB (rgb8, W x H x 3 bytes)
    B2 bytes              points: little-endian float32 x, y, z, intensity per point (N x 16 bytes)

``image`` and ``points`` are each optional (not both); ``frame_id`` defaults to the frame's sequence number
(1, 2, ...) and ``timestamp`` to the receive time. The client ends the stream with the **text** message
``{"type": "end"}``.

Server -> client, **text** JSON messages in the order the frames were sent:

* ``{"type": "result", ...}``: as the ``/v1/perceive`` response, with ``dropped_before``;
* ``{"type": "error", "frame_id": ..., "error": "...", "dropped_before": n}``: a frame that could not be
  processed (the stream goes on);
* ``{"type": "end", "received": n, "processed": n, "dropped": n, "errors": n}`` after ``end``, once every
  queued frame is answered; then the server closes with code 1000.

Each stream has a bounded queue of ``stream_queue_size`` frames between the receiver and the pipeline.
When the client sends faster than the pipeline runs, policy ``drop`` (default) discards the *oldest*
queued frame (the newest is never dropped, so a client may also just wait for the result of its last
frame); ``block`` stops reading from the socket until there is room (TCP back-pressure). Frames dropped
since the previous answer are counted in the next answer's ``dropped_before`` and in the
``perception_dropped_frames_total`` metric; every frame sent is either answered or counted there. The API
key, when set, goes in the ``x-api-key`` header of the upgrade request (or the ``api_key`` query
parameter for browsers, which cannot set headers); a wrong key closes with code 1008 before the accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from perception import __version__
from perception.pipeline import (
    AsyncFrameQueue,
    Frame,
    InvalidInputError,
    PerceptionResult,
    Pipeline,
    QueueClosedError,
    StageUnavailableError,
)
from perception.service.metrics import CONTENT_TYPE, Metrics
from perception.service.schemas import (
    DetectResponse,
    ErrorResponse,
    HealthResponse,
    ModelsResponse,
    PerceiveResponse,
    ReadyResponse,
    SegmentResponse,
    StreamEnd,
    image_from_bytes,
    points_from_bytes,
    points_from_file_bytes,
    unpack_frame_envelope,
)
from perception.service.settings import Settings
from perception.service.viewer import ViewerHub, mount_viewer

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg"}
RAW_TYPE = "application/octet-stream"
POINT_FILE_TYPES = {
    "application/x-pcd": ".pcd",
    "application/pcd": ".pcd",
    "application/x-ply": ".ply",
    "application/ply": ".ply",
    "application/x-npy": ".npy",
}


class ServiceError(Exception):
    """An error answered with ``{"error": message}`` and an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


class BodyTooLargeError(ServiceError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes ({limit / 2**20:g} MiB)")


# --- middleware ----------------------------------------------------------------------------------


class BodyLimitMiddleware:
    """413 for bodies above ``limit`` bytes: at once from Content-Length, else while the body streams in."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.limit
                except ValueError:
                    too_large = False
                if too_large:
                    response = _error_response(
                        BodyTooLargeError(self.limit).status, BodyTooLargeError(self.limit).message
                    )
                    await response(scope, receive, send)
                    return
        received = 0
        limit = self.limit

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    """Counts every HTTP request by route template and status, with its latency."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request("http", endpoint, status, time.perf_counter() - start)


# --- dependencies --------------------------------------------------------------------------------


def get_settings(conn: HTTPConnection) -> Settings:
    return conn.app.state.settings


def get_pipeline(conn: HTTPConnection) -> Pipeline:
    return conn.app.state.pipeline


def get_metrics(conn: HTTPConnection) -> Metrics:
    return conn.app.state.metrics


def api_key_ok(settings: Settings, given: str | None) -> bool:
    """True when no key is configured or ``given`` matches it (constant-time comparison)."""
    expected = settings.api_key_value()
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


SettingsDep = Annotated[Settings, Depends(get_settings)]


def require_api_key(conn: HTTPConnection, settings: SettingsDep) -> None:
    """401 unless the x-api-key header matches ``Settings.api_key`` (no-op without a key)."""
    if not api_key_ok(settings, conn.headers.get("x-api-key")):
        raise ServiceError(401, "missing or invalid API key (send it in the x-api-key header)")


PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


# --- helpers -------------------------------------------------------------------------------------


def _error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _result_payload(
    result: PerceptionResult, model: type[Any], include_labels: bool = False, include_point_indices: bool = False
) -> dict[str, Any]:
    """The result dict restricted to ``model``'s fields (the endpoint's documented response)."""
    full = result.to_dict(include_labels=include_labels, include_point_indices=include_point_indices)
    return {k: v for k, v in full.items() if k in model.model_fields}


def _new_frame_id() -> str:
    return uuid.uuid4().hex


def _decode_image_part(
    data: bytes, media_type: str, filename: str | None, width: int | None, height: int | None
) -> np.ndarray:
    """Image array from a multipart part or body: raw rgb8 for octet-stream with width/height, else PNG/JPEG."""
    if media_type == RAW_TYPE and width and height and not (filename or "").lower().endswith((".png", ".jpg", ".jpeg")):
        return image_from_bytes(data, "rgb8", width, height)
    return image_from_bytes(data, "encoded")


def _decode_points_part(data: bytes, media_type: str, filename: str | None) -> np.ndarray:
    """Point array from a multipart part: format from the filename suffix, else from the part's content type."""
    suffix = PurePosixPath(filename or "").suffix.lower()
    if not suffix:
        suffix = POINT_FILE_TYPES.get(media_type, ".bin")
    return points_from_file_bytes(data, suffix)


async def _run(
    pipeline: Pipeline,
    metrics: Metrics,
    frame_factory: Callable[[], Frame],
    viewer: ViewerHub | None = None,
    source: str = "rest",
) -> PerceptionResult:
    """Decode (``frame_factory``) and run the pipeline in a worker thread; record stage timings; offer the
    frame and its result to the live viewer."""

    def work() -> PerceptionResult:
        frame = frame_factory()
        result = pipeline.run(frame)
        if viewer is not None:
            viewer.offer(frame, result, source)
        return result

    result = await run_in_threadpool(work)
    metrics.observe_stages(result.timings_ms)
    return result


async def _respond(
    result: PerceptionResult, model: type[Any], include_labels: bool = False, include_point_indices: bool = False
) -> Response:
    """The JSON response, built in a worker thread (a 120k-point label list takes tens of ms to encode)."""

    def encode() -> bytes:
        return _json_bytes(_result_payload(result, model, include_labels, include_point_indices))

    return Response(content=await run_in_threadpool(encode), media_type="application/json")


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad payload (sizes, NaN/inf, empty cloud, bad image)."},
    401: {"model": ErrorResponse, "description": "Missing or invalid x-api-key."},
    413: {"model": ErrorResponse, "description": "Body larger than max_body_mb."},
    415: {"model": ErrorResponse, "description": "Unsupported content type."},
    422: {"model": ErrorResponse, "description": "Bad query parameter."},
    503: {"model": ErrorResponse, "description": "The model this request needs is not loaded."},
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_DETECT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"image": _BINARY["schema"]}, "required": ["image"]}
            },
            "image/png": _BINARY,
            "image/jpeg": _BINARY,
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary", "description": "Raw RGB, width x height x 3."}
            },
        },
    }
}
_SEGMENT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary", "description": "float32 x, y, z, intensity x N."}
            },
            "application/x-pcd": _BINARY,
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"points": _BINARY["schema"]}, "required": ["points"]}
            },
        },
    }
}
_PERCEIVE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": _BINARY["schema"], "points": _BINARY["schema"]},
                }
            }
        },
    }
}

FrameIdQuery = Annotated[str | None, Query(max_length=256, description="Returned unchanged; default: a UUID.")]
TimestampQuery = Annotated[float | None, Query(description="Sensor time in seconds; default: receive time.")]
WidthQuery = Annotated[int | None, Query(ge=1, le=8192, description="Raw RGB width in pixels.")]
HeightQuery = Annotated[int | None, Query(ge=1, le=8192, description="Raw RGB height in pixels.")]
LabelsQuery = Annotated[bool, Query(description="Add per-point labels and scores (large for big scans).")]
IndicesQuery = Annotated[bool, Query(description="Add each instance's point indices.")]


# --- the app -------------------------------------------------------------------------------------


def build_pipeline(settings: Settings) -> Pipeline:
    """The pipeline the settings describe; a model that fails to load leaves its stage unavailable (503).

    With ``settings.warmup`` each loaded model runs once on zeros before this returns, so TensorRT builds
    (or loads from ``trt_cache_dir``) its engines before the server answers; a model whose warm-up fails
    is reported like one that failed to load. With ``settings.precision == "int8"`` the models are the
    ``NAME.int8.onnx`` siblings of the configured ones; a missing one raises :class:`FileNotFoundError`.
    """
    seg_model, det_model = settings.model_paths()
    pipeline = Pipeline(
        seg_model,
        det_model,
        settings.providers,
        cluster=settings.cluster,
        nan_policy=settings.nan_policy,
        strict=False,
        workers=settings.pipeline_workers,
        intra_op_threads=settings.intra_op_threads,
        tensorrt=settings.tensorrt_options(),
    )
    if settings.warmup:
        pipeline.warm_up()
    return pipeline


def create_app(
    settings: Settings | None = None, pipeline: Pipeline | None = None, metrics: Metrics | None = None
) -> FastAPI:
    """The FastAPI app. Without ``pipeline`` one is built from ``settings`` (and closed with the app)."""
    settings = settings or Settings()
    owns_pipeline = pipeline is None
    pipe = pipeline if pipeline is not None else build_pipeline(settings)
    metrics = metrics or Metrics()
    metrics.set_models({info.stage: info.loaded for info in pipe.models()})

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_pipeline:
            pipe.close()

    app = FastAPI(
        title="perception",
        version=__version__,
        summary="Camera detection (SqueezeDet) and LiDAR segmentation (SqueezeSeg) on ONNX Runtime.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.pipeline = pipe
    app.state.metrics = metrics
    app.state.viewer = ViewerHub()

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _error_response(exc.status, exc.message)

    @app.exception_handler(InvalidInputError)
    async def _invalid_input(_: Request, exc: InvalidInputError) -> JSONResponse:
        return _error_response(400, str(exc))

    @app.exception_handler(StageUnavailableError)
    async def _unavailable(_: Request, exc: StageUnavailableError) -> JSONResponse:
        return _error_response(503, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _bad_params(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return _error_response(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error: %s", exc)
        return _error_response(500, f"internal server error ({type(exc).__name__})")

    app.include_router(_api_router(), dependencies=[Depends(require_api_key)])
    app.include_router(_ops_router())
    app.add_api_websocket_route("/v1/stream", stream_endpoint)
    mount_viewer(
        app,
        app.state.viewer,
        lambda conn: api_key_ok(settings, conn.headers.get("x-api-key") or conn.query_params.get("api_key")),
    )

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", "x-api-key"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _api_router() -> APIRouter:
    router = APIRouter(prefix="/v1", responses=_ERRORS)

    @router.post(
        "/detect", response_model=DetectResponse, openapi_extra=_DETECT_BODY, summary="Detect objects in an image"
    )
    async def detect(
        request: Request,
        pipeline: PipelineDep,
        metrics: MetricsDep,
        width: WidthQuery = None,
        height: HeightQuery = None,
        frame_id: FrameIdQuery = None,
        timestamp: TimestampQuery = None,
    ) -> Response:
        """Camera detections; boxes in pixels of the submitted image."""
        pipeline.require("camera")
        media = _media_type(request.headers.get("content-type"))
        received = time.time()
        if media == "multipart/form-data":
            async with request.form(max_files=2, max_fields=8) as form:
                part = form.get("image")
                if not isinstance(part, UploadFile):
                    raise ServiceError(400, "multipart body needs a file part named 'image'")
                data = await part.read()
                part_type, filename = _media_type(part.content_type), part.filename
        elif media in IMAGE_TYPES:
            data, part_type, filename = await request.body(), media, None
        elif media == RAW_TYPE:
            if width is None or height is None:
                raise ServiceError(400, "raw RGB (application/octet-stream) needs query parameters width and height")
            data, part_type, filename = await request.body(), media, None
        else:
            raise ServiceError(
                415,
                f"unsupported content type {media or '(none)'!r} for /v1/detect; use multipart/form-data, "
                "image/png, image/jpeg or application/octet-stream (raw RGB with width and height)",
            )

        def frame() -> Frame:
            image = _decode_image_part(data, part_type, filename, width, height)
            return Frame(frame_id or _new_frame_id(), received if timestamp is None else timestamp, image=image)

        result = await _run(pipeline, metrics, frame, request.app.state.viewer, "/v1/detect")
        return await _respond(result, DetectResponse)

    @router.post(
        "/segment", response_model=SegmentResponse, openapi_extra=_SEGMENT_BODY, summary="Segment a point cloud"
    )
    async def segment(
        request: Request,
        pipeline: PipelineDep,
        metrics: MetricsDep,
        include_labels: LabelsQuery = False,
        include_point_indices: IndicesQuery = False,
        frame_id: FrameIdQuery = None,
        timestamp: TimestampQuery = None,
    ) -> Response:
        """Per-point classes and object instances with 3D boxes (LiDAR frame, metres)."""
        pipeline.require("lidar")
        media = _media_type(request.headers.get("content-type"))
        received = time.time()
        if media == "multipart/form-data":
            async with request.form(max_files=2, max_fields=8) as form:
                part = form.get("points")
                if not isinstance(part, UploadFile):
                    raise ServiceError(400, "multipart body needs a file part named 'points'")
                data = await part.read()
                part_type, filename = _media_type(part.content_type), part.filename
        elif media == RAW_TYPE or media in POINT_FILE_TYPES:
            data, part_type, filename = await request.body(), media, None
        else:
            raise ServiceError(
                415,
                f"unsupported content type {media or '(none)'!r} for /v1/segment; use application/octet-stream "
                "(float32 x, y, z, intensity), application/x-pcd or multipart/form-data",
            )

        def frame() -> Frame:
            points = _decode_points_part(data, part_type, filename)
            return Frame(frame_id or _new_frame_id(), received if timestamp is None else timestamp, points=points)

        result = await _run(pipeline, metrics, frame, request.app.state.viewer, "/v1/segment")
        return await _respond(result, SegmentResponse, include_labels, include_point_indices)

    @router.post(
        "/perceive",
        response_model=PerceiveResponse,
        openapi_extra=_PERCEIVE_BODY,
        summary="Camera and LiDAR of one frame together",
    )
    async def perceive(
        request: Request,
        pipeline: PipelineDep,
        metrics: MetricsDep,
        width: WidthQuery = None,
        height: HeightQuery = None,
        include_labels: LabelsQuery = False,
        include_point_indices: IndicesQuery = False,
        frame_id: FrameIdQuery = None,
        timestamp: TimestampQuery = None,
    ) -> Response:
        """Detections and segmentation of one frame; the two stages run concurrently."""
        media = _media_type(request.headers.get("content-type"))
        received = time.time()
        if media != "multipart/form-data":
            raise ServiceError(
                415,
                f"unsupported content type {media or '(none)'!r} for /v1/perceive; use multipart/form-data "
                "with file parts 'image' and/or 'points'",
            )
        async with request.form(max_files=4, max_fields=8) as form:
            image_part, points_part = form.get("image"), form.get("points")
            if not isinstance(image_part, UploadFile) and not isinstance(points_part, UploadFile):
                raise ServiceError(400, "multipart body needs a file part 'image' and/or a file part 'points'")
            image_args = points_args = None
            if isinstance(image_part, UploadFile):
                pipeline.require("camera")
                image_args = (await image_part.read(), _media_type(image_part.content_type), image_part.filename)
            if isinstance(points_part, UploadFile):
                pipeline.require("lidar")
                points_args = (await points_part.read(), _media_type(points_part.content_type), points_part.filename)

        def frame() -> Frame:
            image = _decode_image_part(*image_args, width, height) if image_args else None
            points = _decode_points_part(*points_args) if points_args else None
            return Frame(
                frame_id or _new_frame_id(), received if timestamp is None else timestamp, image=image, points=points
            )

        result = await _run(pipeline, metrics, frame, request.app.state.viewer, "/v1/perceive")
        return await _respond(result, PerceiveResponse, include_labels, include_point_indices)

    @router.get("/models", response_model=ModelsResponse, summary="Configured models and their providers")
    async def models(pipeline: PipelineDep) -> dict[str, Any]:
        return {"models": [info.to_dict() for info in pipeline.models()]}

    return router


def _ops_router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", response_model=HealthResponse, summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "A configured model is not loaded."}},
        summary="Readiness: every configured model loaded",
    )
    async def readyz(pipeline: PipelineDep) -> JSONResponse:
        stages = {info.stage: info.loaded for info in pipeline.models()}
        body = {"ready": pipeline.ready, "stages": stages, "errors": dict(pipeline.load_errors)}
        return JSONResponse(body, status_code=200 if pipeline.ready else 503)

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics_endpoint(metrics: MetricsDep) -> Response:
        return Response(content=metrics.render(), media_type=CONTENT_TYPE)

    return router


# --- WebSocket stream ----------------------------------------------------------------------------


@dataclass
class _StreamItem:
    seq: int
    payload: bytes | None  # the envelope, or None when ``problem`` says why there is none
    problem: str | None
    received: float  # time.time() at receipt, the default timestamp
    started: float  # perf_counter() at receipt, for the latency metric


def _decode_stream_frame(pipeline: Pipeline, item: _StreamItem) -> tuple[Frame, bool]:
    """The :class:`Frame` of one envelope and its include_labels (decoded here: dropped frames never are)."""
    if item.payload is None:
        raise InvalidInputError(item.problem or "no payload")
    header, image_bytes, points_bytes = unpack_frame_envelope(item.payload)
    if header.image is None and header.points is None:
        raise InvalidInputError("envelope: the header has neither image nor points")
    image = points = None
    if header.image is not None and image_bytes is not None:
        pipeline.require("camera")
        image = image_from_bytes(image_bytes, header.image.encoding, header.image.width, header.image.height)
    if header.points is not None and points_bytes is not None:
        pipeline.require("lidar")
        points = points_from_bytes(points_bytes)
    frame_id = header.frame_id if header.frame_id is not None else str(item.seq)
    timestamp = item.received if header.timestamp is None else header.timestamp
    return Frame(frame_id, timestamp, image=image, points=points), header.include_labels


def _frame_id_of(item: _StreamItem) -> str:
    """Best-effort frame id of a message that failed (for the error answer)."""
    if item.payload is not None:
        try:
            header, _, _ = unpack_frame_envelope(item.payload)
            if header.frame_id is not None:
                return header.frame_id
        except InvalidInputError:
            pass
    return str(item.seq)


def _answer_stream_item(
    pipeline: Pipeline, item: _StreamItem, dropped_before: int, viewer: ViewerHub | None = None
) -> tuple[str, dict[str, float]]:
    """The JSON answer to one queued frame and its stage timings (empty for an error answer).

    Decoding, inference and JSON encoding all happen here, in a worker thread; a processed frame is
    offered to the live viewer.
    """
    answer: dict[str, Any]
    timings: dict[str, float] = {}
    try:
        frame, include_labels = _decode_stream_frame(pipeline, item)
        result = pipeline.run(frame)
    except Exception as exc:
        if isinstance(exc, InvalidInputError | StageUnavailableError):
            message = str(exc)
        else:
            log.exception("stream frame %d failed", item.seq)
            message = f"internal server error ({type(exc).__name__})"
        answer = {"type": "error", "frame_id": _frame_id_of(item), "error": message, "dropped_before": dropped_before}
    else:
        result.dropped_before = dropped_before
        timings = result.timings_ms
        if viewer is not None:
            viewer.offer(frame, result, "/v1/stream")
        answer = {"type": "result", **_result_payload(result, PerceiveResponse, include_labels)}
    return _json_bytes(answer).decode("utf-8"), timings


async def stream_endpoint(websocket: WebSocket) -> None:
    """``/v1/stream``: frames in, results out in order, bounded queue with drop/block policy (module docs)."""
    settings: Settings = websocket.app.state.settings
    pipeline: Pipeline = websocket.app.state.pipeline
    metrics: Metrics = websocket.app.state.metrics
    given = websocket.headers.get("x-api-key") or websocket.query_params.get("api_key")
    if not api_key_ok(settings, given):
        metrics.observe_request("websocket", "/v1/stream", 401, 0.0)
        await websocket.close(code=1008, reason="missing or invalid API key")
        return
    await websocket.accept()
    metrics.active_streams.labels("websocket").inc()
    queue: AsyncFrameQueue[_StreamItem] = AsyncFrameQueue(settings.stream_queue_size, settings.stream_policy)
    counts = {"processed": 0, "errors": 0}
    limit = settings.max_body_bytes

    async def process() -> None:
        try:
            while (got := await queue.get()) is not None:
                item, dropped_before = got
                text, timings = await run_in_threadpool(
                    _answer_stream_item, pipeline, item, dropped_before, websocket.app.state.viewer
                )
                if timings:
                    counts["processed"] += 1
                    metrics.observe_stages(timings)
                else:
                    counts["errors"] += 1
                await websocket.send_text(text)
                status = "ok" if timings else "error"
                metrics.observe_request("websocket", "/v1/stream", status, time.perf_counter() - item.started)
        finally:
            # Sending failed (the client went away) or the stream ended: a receiver waiting for room in the
            # queue (policy "block" stops reading the socket, so it cannot see the disconnect) must wake up.
            await queue.close()

    worker = asyncio.create_task(process())
    ended = False
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            payload: bytes | None = message.get("bytes")
            problem = None
            if payload is None:
                if _is_end(message.get("text") or ""):
                    ended = True
                    break
                problem = 'unexpected text message: frames are binary envelopes and the end is {"type": "end"}'
            elif len(payload) > limit:
                payload, problem = None, f"message of {len(payload)} bytes is larger than the limit of {limit}"
            item = _StreamItem(queue.received + 1, payload, problem, time.time(), time.perf_counter())
            metrics.stream_frames.labels("websocket").inc()
            dropped = await queue.put(item)
            if dropped:
                metrics.dropped_frames.labels("websocket").inc(dropped)
            await asyncio.sleep(0)  # let the worker take the frame before the next buffered message is read
        await queue.close()
        if ended:
            await worker
            end = StreamEnd(
                received=queue.received, processed=counts["processed"], dropped=queue.dropped, errors=counts["errors"]
            )
            await websocket.send_text(end.model_dump_json())
            await websocket.close(code=1000)
    except (WebSocketDisconnect, QueueClosedError):
        pass  # the client went away (QueueClosedError: noticed by the worker while the receiver waited for room)
    finally:
        if not worker.done():
            worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await worker
        metrics.active_streams.labels("websocket").dec()


def _is_end(text: str) -> bool:
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("type") == "end"
