"""gRPC server of ``perception.v1.Perception`` (``proto/perception.proto``) over the pipeline.

Unary ``Detect``, ``Segment``, ``Perceive`` and bidirectional ``Stream``; images as PNG/JPEG bytes or raw
RGB with width/height, point clouds as packed little-endian float32 x, y, z, intensity (the payloads of
:mod:`perception.service.schemas`). Message limits are ``Settings.grpc_max_message_mb`` (default 64 MiB;
a 120k-point HDL-64E scan is ~1.9 MB). Bad input -> ``INVALID_ARGUMENT``, a missing model ->
``UNAVAILABLE``, both with a message that says what is wrong (bytes that are not the request message at all
included: :class:`MalformedRequestInterceptor`); a message above the limit is ``RESOURCE_EXHAUSTED`` (gRPC's
own check); the server keeps serving.

``Stream`` has the WebSocket endpoint's semantics: a reader thread moves requests into a bounded
:class:`perception.pipeline.FrameQueue` (``stream_queue_size``); policy ``drop`` discards the oldest queued
frame when the client is faster than the pipeline, ``block`` stops reading (gRPC flow control then slows
the client). Responses come in request order; ``dropped_before`` counts the frames dropped since the
previous response. Half-closing the request stream ends the call once every queued frame is answered.

Also served: ``grpc.health.v1.Health`` (``SERVING`` for ``""`` and ``perception.v1.Perception`` when
every configured model is loaded, ``NOT_SERVING`` otherwise and during shutdown) and server reflection.
With ``Settings.api_key`` every call except health checks needs metadata ``x-api-key``
(``UNAUTHENTICATED`` otherwise).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from perception.pipeline import (
    Frame,
    FrameQueue,
    InvalidInputError,
    PerceptionResult,
    Pipeline,
    QueueClosedError,
    StageUnavailableError,
)
from perception.service.metrics import Metrics
from perception.service.proto import perception_pb2 as pb
from perception.service.proto import perception_pb2_grpc as pb_grpc
from perception.service.schemas import image_from_bytes, points_from_bytes
from perception.service.settings import Settings
from perception.service.viewer import ViewerHub

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Perception"].full_name  # "perception.v1.Perception"
HEALTH_PREFIX = "/grpc.health.v1.Health/"


# --- conversions ---------------------------------------------------------------------------------


def image_from_proto(image: pb.Image, what: str = "image") -> np.ndarray:
    """uint8 (H, W, 3) RGB from an :class:`Image` message (ENCODED PNG/JPEG or raw RGB8)."""
    encoding = "rgb8" if image.encoding == pb.Image.RGB8 else "encoded"
    return image_from_bytes(image.data, encoding, image.width or None, image.height or None, what=what)


def result_to_proto(
    result: PerceptionResult, include_labels: bool = False, include_point_indices: bool = False
) -> pb.PerceptionResult:
    """The protobuf of a result; labels as uint8 bytes and scores as float32 bytes when asked."""
    msg = pb.PerceptionResult(
        frame_id=result.frame_id,
        timestamp=result.timestamp,
        dropped_before=int(result.dropped_before),
    )
    for det in result.detections:
        msg.detections.add(
            class_id=int(det.class_id),
            class_name=str(det.class_name),
            score=float(det.score),
            x1=float(det.x1),
            y1=float(det.y1),
            x2=float(det.x2),
            y2=float(det.y2),
        )
    if result.image_size is not None:
        msg.image_width, msg.image_height = (int(v) for v in result.image_size)
    if result.labels is not None:
        msg.has_points = True
        msg.num_points = int(result.labels.shape[0])
        msg.num_points_in_view = int(result.num_points_in_view or 0)
        msg.class_counts.update(result.class_counts() or {})
        if include_labels:
            if result.labels.size and int(result.labels.max()) > 255:
                raise InvalidInputError("labels above 255 do not fit the uint8 labels field")
            msg.labels = result.labels.astype(np.uint8).tobytes()
            if result.scores is not None:
                msg.scores = np.ascontiguousarray(result.scores, dtype="<f4").tobytes()
    for inst in result.instances:
        b = inst.box
        msg.instances.add(
            id=int(inst.id),
            class_id=int(inst.class_id),
            class_name=inst.class_name,
            num_points=int(inst.num_points),
            centroid=[float(v) for v in inst.centroid],
            box=pb.Box3D(x=b.x, y=b.y, z=b.z, length=b.length, width=b.width, height=b.height, yaw=b.yaw),
            score=float(inst.score),
            point_indices=inst.point_indices.tolist() if include_point_indices else [],
        )
    msg.providers.update(result.providers)
    msg.timings_ms.update({k: float(v) for k, v in result.timings_ms.items()})
    return msg


# --- servicer ------------------------------------------------------------------------------------


class PerceptionServicer(pb_grpc.PerceptionServicer):
    """The RPCs; each turns pipeline errors into status codes and records metrics."""

    def __init__(
        self, pipeline: Pipeline, settings: Settings, metrics: Metrics, viewer: ViewerHub | None = None
    ) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.metrics = metrics
        self.viewer = viewer

    # frames from requests (decoding in the calling thread) -----------------------------------------

    @staticmethod
    def _id_time(frame_id: str, timestamp: float, received: float) -> tuple[str, float]:
        return frame_id or uuid.uuid4().hex, timestamp if timestamp != 0.0 else received

    def _detect_frame(self, request: pb.DetectRequest, received: float) -> Frame:
        if not request.HasField("image"):
            raise InvalidInputError("DetectRequest.image is missing")
        self.pipeline.require("camera")
        frame_id, timestamp = self._id_time(request.frame_id, request.timestamp, received)
        return Frame(frame_id, timestamp, image=image_from_proto(request.image))

    def _segment_frame(self, request: pb.SegmentRequest, received: float) -> Frame:
        if not request.HasField("points"):
            raise InvalidInputError("SegmentRequest.points is missing")
        self.pipeline.require("lidar")
        frame_id, timestamp = self._id_time(request.frame_id, request.timestamp, received)
        return Frame(frame_id, timestamp, points=points_from_bytes(request.points.data))

    def _perceive_frame(self, request: pb.PerceiveRequest, received: float) -> Frame:
        has_image, has_points = request.HasField("image"), request.HasField("points")
        if not has_image and not has_points:
            raise InvalidInputError("PerceiveRequest needs image and/or points")
        image = points = None
        if has_image:
            self.pipeline.require("camera")
            image = image_from_proto(request.image)
        if has_points:
            self.pipeline.require("lidar")
            points = points_from_bytes(request.points.data)
        frame_id, timestamp = self._id_time(request.frame_id, request.timestamp, received)
        return Frame(frame_id, timestamp, image=image, points=points)

    def _run(self, frame: Frame) -> PerceptionResult:
        result = self.pipeline.run(frame)
        self.metrics.observe_stages(result.timings_ms)
        if self.viewer is not None:
            self.viewer.offer(frame, result, "grpc")
        return result

    def _unary(
        self, method: str, context: grpc.ServicerContext, build: Callable[[float], Frame], labels: bool, indices: bool
    ) -> pb.PerceptionResult:
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            result = self._run(build(time.time()))
            return result_to_proto(result, labels, indices)
        except InvalidInputError as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT
            context.abort(code, str(exc))
        except StageUnavailableError as exc:
            code = grpc.StatusCode.UNAVAILABLE
            context.abort(code, str(exc))
        except Exception as exc:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method)
            context.abort(code, f"internal server error ({type(exc).__name__})")
        finally:
            self.metrics.observe_request("grpc", method, code.name, time.perf_counter() - start)
        raise AssertionError("unreachable")  # context.abort raises

    def Detect(self, request: pb.DetectRequest, context: grpc.ServicerContext) -> pb.PerceptionResult:  # noqa: N802
        return self._unary("Detect", context, lambda t: self._detect_frame(request, t), False, False)

    def Segment(self, request: pb.SegmentRequest, context: grpc.ServicerContext) -> pb.PerceptionResult:  # noqa: N802
        return self._unary(
            "Segment",
            context,
            lambda t: self._segment_frame(request, t),
            request.include_labels,
            request.include_point_indices,
        )

    def Perceive(self, request: pb.PerceiveRequest, context: grpc.ServicerContext) -> pb.PerceptionResult:  # noqa: N802
        return self._unary(
            "Perceive",
            context,
            lambda t: self._perceive_frame(request, t),
            request.include_labels,
            request.include_point_indices,
        )

    def Stream(  # noqa: N802
        self, request_iterator: Iterator[pb.PerceiveRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamResponse]:
        queue: FrameQueue[tuple[pb.PerceiveRequest | MalformedRequest, float, float, int]] = FrameQueue(
            self.settings.stream_queue_size, self.settings.stream_policy
        )
        metrics = self.metrics

        def read() -> None:
            try:
                for request in request_iterator:
                    metrics.stream_frames.labels("grpc").inc()
                    dropped = queue.put((request, time.time(), time.perf_counter(), queue.received + 1))
                    if dropped:
                        metrics.dropped_frames.labels("grpc").inc(dropped)
            except QueueClosedError:
                pass
            except Exception as exc:  # the client went away (grpc raises RpcError-like objects here)
                log.debug("stream reader stopped: %s", exc)
            finally:
                queue.close()

        context.add_callback(queue.close)  # the call ended (client cancel, deadline): stop both sides
        reader = threading.Thread(target=read, name="perception-grpc-stream-reader", daemon=True)
        start, code = time.perf_counter(), grpc.StatusCode.OK
        metrics.active_streams.labels("grpc").inc()
        reader.start()
        try:
            while (got := queue.get()) is not None:
                (request, received, started, seq), dropped_before = got
                if isinstance(request, MalformedRequest):
                    metrics.observe_request("grpc", "Stream.frame", "INVALID_ARGUMENT", time.perf_counter() - started)
                    yield pb.StreamResponse(error=request.problem, frame_id=str(seq), dropped_before=dropped_before)
                    continue
                frame_id = request.frame_id or str(seq)
                try:
                    result = self._run(self._perceive_frame(request, received))
                except (InvalidInputError, StageUnavailableError) as exc:
                    status = "INVALID_ARGUMENT" if isinstance(exc, InvalidInputError) else "UNAVAILABLE"
                    response = pb.StreamResponse(error=str(exc), frame_id=frame_id, dropped_before=dropped_before)
                else:
                    status = "OK"
                    result.dropped_before = dropped_before
                    if not request.frame_id:
                        result.frame_id = frame_id
                    response = pb.StreamResponse(
                        result=result_to_proto(result, request.include_labels, request.include_point_indices),
                        frame_id=result.frame_id,
                        dropped_before=dropped_before,
                    )
                metrics.observe_request("grpc", "Stream.frame", status, time.perf_counter() - started)
                if not context.is_active():
                    code = grpc.StatusCode.CANCELLED
                    break
                yield response
        finally:
            queue.close()
            metrics.active_streams.labels("grpc").dec()
            metrics.observe_request("grpc", "Stream", code.name, time.perf_counter() - start)


# --- malformed requests --------------------------------------------------------------------------


class MalformedRequest:
    """What the tolerant deserializer of :class:`MalformedRequestInterceptor` gives for bytes that do not
    parse as the method's request message (gRPC itself would answer ``INTERNAL``)."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _tolerant(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception as exc:  # google.protobuf.message.DecodeError and kin
            return MalformedRequest(f"the request is not a valid {method} request message (protobuf: {exc})")

    return parse


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    """Unparseable request bytes -> ``INVALID_ARGUMENT`` (unary calls) or an error answer (``Stream``, which
    goes on), instead of gRPC's ``INTERNAL`` "Exception deserializing request!"."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        name = method.rsplit("/", 1)[-1]
        kwargs = {
            "request_deserializer": _tolerant(handler.request_deserializer, name),
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(handler.stream_stream, **kwargs)  # Stream checks each item
        if handler.request_streaming or handler.response_streaming:
            return handler  # no such methods in perception.v1 today
        inner, metrics = handler.unary_unary, self._metrics

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, MalformedRequest):
                if metrics is not None:
                    metrics.observe_request("grpc", name, "INVALID_ARGUMENT", 0.0)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.problem)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)


# --- API key -------------------------------------------------------------------------------------


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """``UNAUTHENTICATED`` unless metadata ``x-api-key`` matches; health checks are exempt."""

    def __init__(self, api_key: str, metrics: Metrics | None = None) -> None:
        self._key = api_key.encode("utf-8")
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(HEALTH_PREFIX):
            return continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get("x-api-key")
        if isinstance(given, str) and hmac.compare_digest(given.encode("utf-8"), self._key):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if self._metrics is not None:
            self._metrics.observe_request("grpc", method.rsplit("/", 1)[-1], "UNAUTHENTICATED", 0.0)
        return _deny(handler, "missing or invalid API key (send it as metadata x-api-key)")


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that aborts with UNAUTHENTICATED."""

    def abort(_: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)


# --- server --------------------------------------------------------------------------------------


class GrpcServer:
    """The gRPC server with the Perception, Health and reflection services, bound but not yet started.

    ``port`` is the bound port (useful with ``Settings.grpc_port = 0``).
    """

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        metrics: Metrics | None = None,
        viewer: ViewerHub | None = None,
    ) -> None:
        """``viewer``: the REST app's hub (``app.state.viewer``), so /viewer also shows frames sent over gRPC."""
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics or Metrics()
        limit = settings.grpc_max_message_bytes
        interceptors: list[grpc.ServerInterceptor] = []
        key = settings.api_key_value()
        if key is not None:
            interceptors.append(ApiKeyInterceptor(key, self.metrics))
        interceptors.append(MalformedRequestInterceptor(self.metrics))  # inside the key check: auth comes first
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="perception-grpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        servicer = PerceptionServicer(pipeline, settings, self.metrics, viewer)
        pb_grpc.add_PerceptionServicer_to_server(servicer, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        host = settings.host
        address = f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot bind the gRPC server to {address} ({exc})") from None
        if self.port == 0:
            raise OSError(f"cannot bind the gRPC server to {address}")
        self.address = address.rsplit(":", 1)[0] + f":{self.port}"
        self._lock = threading.RLock()  # stop() may run in a signal handler that interrupted stop()

    def start(self) -> GrpcServer:
        self.server.start()
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.pipeline.ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set("", status)
        self.health.set(SERVICE_NAME, status)
        log.info("gRPC server on %s (%s)", self.address, "serving" if self.pipeline.ready else "not serving")
        return self

    def stop(self, grace: float | None = None) -> threading.Event:
        """Health -> NOT_SERVING, refuse new calls, give running ones ``grace`` seconds; returns the done event."""
        with self._lock:
            self.health.enter_graceful_shutdown()
            return self.server.stop(grace)

    def wait(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)
