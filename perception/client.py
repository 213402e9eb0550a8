"""Clients of the perception service: :class:`RestClient` (HTTP + WebSocket) and :class:`GrpcClient`.

Both return results as plain dicts with the JSON schema of ``POST /v1/perceive`` (``frame_id``,
``timestamp``, ``image_size``, ``detections``, ``num_points``, ``class_counts``, ``instances``,
``providers``, ``timings_ms``, ``dropped_before``), except that per-point ``labels`` (int64) and
``scores`` (float32), when asked for, are numpy arrays of length N. Streams yield such dicts with
``"type": "result"``, or ``{"type": "error", "frame_id", "error", "dropped_before"}`` for a frame the
server could not process. Failed requests raise :class:`ClientError` with the HTTP status (int) or the
gRPC status code name (str) and the server's message.

Inputs: images as uint8 (H, W, 3) RGB arrays (sent raw) or PNG/JPEG bytes; points as float (N, 4)
arrays x, y, z (metres, LiDAR frame), intensity (sent as packed float32), or, for the REST client,
a path to a ``.bin``/``.pcd``/``.ply``/``.npy`` file.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from perception.pipeline import Frame
from perception.service.schemas import pack_frame_envelope, points_to_bytes

ImageInput = np.ndarray | bytes
PointsInput = np.ndarray | str | os.PathLike[str]

_POINT_FILE_TYPES = {".pcd": "application/x-pcd", ".ply": "application/x-ply", ".npy": "application/x-npy"}


class ClientError(RuntimeError):
    """The server refused or failed a request: ``status`` is the HTTP status or gRPC status code name."""

    def __init__(self, status: int | str, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


def _image_kind(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    return "application/octet-stream"


def _rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def _with_arrays(doc: dict[str, Any]) -> dict[str, Any]:
    """Per-point lists as numpy arrays (labels int64, scores float32)."""
    if doc.get("labels") is not None:
        doc["labels"] = np.asarray(doc["labels"], dtype=np.int64)
    if doc.get("scores") is not None:
        doc["scores"] = np.asarray(doc["scores"], dtype=np.float32)
    return doc


# --- REST ----------------------------------------------------------------------------------------


class RestClient:
    """HTTP client of the REST API and the WebSocket stream.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        api_key: sent as header ``x-api-key``.
        timeout: seconds per request (None: no limit).
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float | None = 120.0) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        headers = {"x-api-key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.last_stream_end: dict[str, Any] | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: Any) -> Any:
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ClientError(response.status_code, message)
        return response

    @staticmethod
    def _params(**kwargs: Any) -> dict[str, Any]:
        out = {}
        for key, value in kwargs.items():
            if value is None or value is False:
                continue
            out[key] = "true" if value is True else value
        return out

    def detect(self, image: ImageInput, frame_id: str | None = None, timestamp: float | None = None) -> dict[str, Any]:
        """Detections in an RGB array (sent raw) or PNG/JPEG bytes; boxes in that image's pixels."""
        params = self._params(frame_id=frame_id, timestamp=timestamp)
        if isinstance(image, bytes | bytearray):
            content, ctype = bytes(image), _image_kind(bytes(image))
            if ctype == "application/octet-stream":
                raise ValueError("image bytes are neither PNG nor JPEG; pass an RGB array for raw pixels")
        else:
            rgb = _rgb(image)
            content, ctype = rgb.tobytes(), "application/octet-stream"
            params.update(width=rgb.shape[1], height=rgb.shape[0])
        response = self._http.post("/v1/detect", content=content, headers={"content-type": ctype}, params=params)
        return _with_arrays(self._check(response).json())

    def segment(
        self,
        points: PointsInput,
        include_labels: bool = False,
        include_point_indices: bool = False,
        frame_id: str | None = None,
        timestamp: float | None = None,
    ) -> dict[str, Any]:
        """Labels and instances of a cloud: an (N, 4) array, or a .bin/.pcd/.ply/.npy file path."""
        params = self._params(
            include_labels=include_labels,
            include_point_indices=include_point_indices,
            frame_id=frame_id,
            timestamp=timestamp,
        )
        if isinstance(points, str | os.PathLike):
            path = Path(points)
            content = path.read_bytes()
            ctype = _POINT_FILE_TYPES.get(path.suffix.lower(), "application/octet-stream")
        else:
            content, ctype = points_to_bytes(points), "application/octet-stream"
        response = self._http.post("/v1/segment", content=content, headers={"content-type": ctype}, params=params)
        return _with_arrays(self._check(response).json())

    def perceive(
        self,
        image: ImageInput | None = None,
        points: np.ndarray | None = None,
        include_labels: bool = False,
        include_point_indices: bool = False,
        frame_id: str | None = None,
        timestamp: float | None = None,
    ) -> dict[str, Any]:
        """Camera and LiDAR of one frame in one multipart request."""
        params = self._params(
            include_labels=include_labels,
            include_point_indices=include_point_indices,
            frame_id=frame_id,
            timestamp=timestamp,
        )
        files: dict[str, tuple[str, bytes, str]] = {}
        if image is not None:
            if isinstance(image, bytes | bytearray):
                kind = _image_kind(bytes(image))
                files["image"] = ("image.png" if kind == "image/png" else "image.jpg", bytes(image), kind)
            else:
                rgb = _rgb(image)
                files["image"] = ("image.rgb", rgb.tobytes(), "application/octet-stream")
                params.update(width=rgb.shape[1], height=rgb.shape[0])
        if points is not None:
            files["points"] = ("points.bin", points_to_bytes(points), "application/octet-stream")
        response = self._http.post("/v1/perceive", files=files, params=params)
        return _with_arrays(self._check(response).json())

    def models(self) -> list[dict[str, Any]]:
        return self._check(self._http.get("/v1/models")).json()["models"]

    def health(self) -> bool:
        return self._http.get("/healthz").status_code == 200

    def ready(self) -> tuple[bool, dict[str, Any]]:
        response = self._http.get("/readyz")
        return response.status_code == 200, response.json()

    def metrics(self) -> str:
        return self._check(self._http.get("/metrics")).text

    def stream(self, frames: Iterable[Frame], include_labels: bool = False) -> Iterator[dict[str, Any]]:
        """Send frames over the WebSocket as fast as the connection takes them; yield answers in order.

        A sender thread writes the frames and then ``{"type": "end"}``; this generator yields every
        result/error message and stops at the server's end message, kept in :attr:`last_stream_end`.
        """
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        url = self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/v1/stream"
        headers = {"x-api-key": self.api_key} if self.api_key else None
        self.last_stream_end = None
        failure: list[BaseException] = []
        try:
            ws = connect(url, additional_headers=headers, max_size=None, compression=None)
        except InvalidStatus as exc:
            raise ClientError(exc.response.status_code, "the server refused the WebSocket (API key?)") from None
        with ws:

            def send_all() -> None:
                try:
                    for frame in frames:
                        ws.send(encode_stream_frame(frame, include_labels))
                    ws.send(json.dumps({"type": "end"}))
                except BaseException as exc:  # reported after the receiver stops
                    failure.append(exc)

            sender = threading.Thread(target=send_all, name="perception-ws-sender", daemon=True)
            sender.start()
            try:
                for message in ws:
                    doc = json.loads(message)
                    if doc.get("type") == "end":
                        self.last_stream_end = doc
                        break
                    yield _with_arrays(doc)
            finally:
                if self.last_stream_end is None:
                    ws.close()  # unblocks a sender waiting on a full socket
                sender.join()
        if self.last_stream_end is None:
            reason = f": sending frames failed ({failure[0]})" if failure else ""
            raise ClientError("websocket", f"the stream closed before the server's end message{reason}")


def encode_stream_frame(frame: Frame, include_labels: bool = False) -> bytes:
    """The WebSocket envelope of a :class:`Frame` (image sent raw RGB, points packed float32)."""
    header: dict[str, Any] = {
        "frame_id": frame.frame_id,
        "timestamp": frame.timestamp,
        "include_labels": include_labels,
    }
    image_bytes = points_bytes = None
    if frame.image is not None:
        rgb = _rgb(frame.image)
        header["image"] = {"encoding": "rgb8", "width": rgb.shape[1], "height": rgb.shape[0]}
        image_bytes = rgb.tobytes()
    if frame.points is not None:
        points_bytes = points_to_bytes(frame.points)
    return pack_frame_envelope(header, image_bytes, points_bytes)


# --- gRPC ----------------------------------------------------------------------------------------


def result_from_proto(msg: Any) -> dict[str, Any]:
    """A ``PerceptionResult`` message as the REST JSON dict (labels/scores as numpy arrays)."""
    doc: dict[str, Any] = {
        "frame_id": msg.frame_id,
        "timestamp": msg.timestamp,
        "image_size": [msg.image_width, msg.image_height] if msg.image_width else None,
        "num_points": msg.num_points if msg.has_points else None,
        "num_points_in_view": msg.num_points_in_view if msg.has_points else None,
        "detections": [
            {
                "class_id": d.class_id,
                "class_name": d.class_name,
                "score": d.score,
                "x1": d.x1,
                "y1": d.y1,
                "x2": d.x2,
                "y2": d.y2,
            }
            for d in msg.detections
        ],
        "instances": [
            {
                "id": i.id,
                "class_id": i.class_id,
                "class_name": i.class_name,
                "num_points": i.num_points,
                "centroid": list(i.centroid),
                "box": {
                    "center": [i.box.x, i.box.y, i.box.z],
                    "size": [i.box.length, i.box.width, i.box.height],
                    "yaw": i.box.yaw,
                },
                "score": i.score,
                **({"point_indices": list(i.point_indices)} if i.point_indices else {}),
            }
            for i in msg.instances
        ],
        "class_counts": dict(msg.class_counts) if msg.has_points else None,
        "providers": dict(msg.providers),
        "timings_ms": dict(msg.timings_ms),
        "dropped_before": msg.dropped_before,
    }
    if msg.labels:
        doc["labels"] = np.frombuffer(msg.labels, dtype=np.uint8).astype(np.int64)
        doc["scores"] = np.frombuffer(msg.scores, dtype="<f4").astype(np.float32) if msg.scores else None
    return doc


class GrpcClient:
    """Client of ``perception.v1.Perception``.

    Args:
        target: ``host:port``.
        api_key: sent as metadata ``x-api-key``.
        max_message_mb: send/receive message limit (MiB).
        timeout: seconds per unary call (None: no deadline).
    """

    def __init__(
        self, target: str, api_key: str | None = None, max_message_mb: int = 64, timeout: float | None = 120.0
    ) -> None:
        import grpc

        from perception.service.proto import perception_pb2 as pb
        from perception.service.proto import perception_pb2_grpc as pb_grpc

        self._grpc = grpc
        self._pb = pb
        limit = max_message_mb * 1024 * 1024
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        )
        self.stub = pb_grpc.PerceptionStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (("x-api-key", api_key),) if api_key else ()
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _image(self, image: ImageInput) -> Any:
        pb = self._pb
        if isinstance(image, bytes | bytearray):
            return pb.Image(data=bytes(image), encoding=pb.Image.ENCODED)
        rgb = _rgb(image)
        return pb.Image(data=rgb.tobytes(), encoding=pb.Image.RGB8, width=rgb.shape[1], height=rgb.shape[0])

    def _points(self, points: np.ndarray) -> Any:
        return self._pb.PointCloud(data=points_to_bytes(points))

    def _call(self, method: Any, request: Any) -> dict[str, Any]:
        try:
            return result_from_proto(method(request, timeout=self.timeout, metadata=self.metadata))
        except self._grpc.RpcError as exc:
            raise ClientError(exc.code().name, exc.details() or "") from None

    def perceive_request(
        self,
        image: ImageInput | None = None,
        points: np.ndarray | None = None,
        frame_id: str = "",
        timestamp: float = 0.0,
        include_labels: bool = False,
        include_point_indices: bool = False,
    ) -> Any:
        """The ``PerceiveRequest`` message for these inputs (also what :meth:`stream` sends)."""
        request = self._pb.PerceiveRequest(
            frame_id=frame_id,
            timestamp=timestamp,
            include_labels=include_labels,
            include_point_indices=include_point_indices,
        )
        if image is not None:
            request.image.CopyFrom(self._image(image))
        if points is not None:
            request.points.CopyFrom(self._points(points))
        return request

    def detect(self, image: ImageInput, frame_id: str = "", timestamp: float = 0.0) -> dict[str, Any]:
        request = self._pb.DetectRequest(frame_id=frame_id, timestamp=timestamp, image=self._image(image))
        return self._call(self.stub.Detect, request)

    def segment(
        self,
        points: np.ndarray,
        include_labels: bool = False,
        include_point_indices: bool = False,
        frame_id: str = "",
        timestamp: float = 0.0,
    ) -> dict[str, Any]:
        request = self._pb.SegmentRequest(
            frame_id=frame_id,
            timestamp=timestamp,
            points=self._points(points),
            include_labels=include_labels,
            include_point_indices=include_point_indices,
        )
        return self._call(self.stub.Segment, request)

    def perceive(
        self,
        image: ImageInput | None = None,
        points: np.ndarray | None = None,
        include_labels: bool = False,
        include_point_indices: bool = False,
        frame_id: str = "",
        timestamp: float = 0.0,
    ) -> dict[str, Any]:
        request = self.perceive_request(image, points, frame_id, timestamp, include_labels, include_point_indices)
        return self._call(self.stub.Perceive, request)

    def stream(self, frames: Iterable[Frame], include_labels: bool = False) -> Iterator[dict[str, Any]]:
        """Send frames as fast as gRPC flow control allows; yield answers in order (see the module doc)."""
        requests = (self.perceive_request(f.image, f.points, f.frame_id, f.timestamp, include_labels) for f in frames)
        try:
            for response in self.stub.Stream(requests, metadata=self.metadata):
                if response.WhichOneof("outcome") == "result":
                    yield {"type": "result", **result_from_proto(response.result)}
                else:
                    yield {
                        "type": "error",
                        "frame_id": response.frame_id,
                        "error": response.error,
                        "dropped_before": response.dropped_before,
                    }
        except self._grpc.RpcError as exc:
            raise ClientError(exc.code().name, exc.details() or "") from None

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name of ``service`` ("" = the server), e.g. ``SERVING``."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        except self._grpc.RpcError as exc:
            raise ClientError(exc.code().name, exc.details() or "") from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
