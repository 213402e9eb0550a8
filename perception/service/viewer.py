"""The live viewer: a browser page at ``/viewer`` fed over the WebSocket ``/v1/viewer`` with whatever the
service is processing.

Every frame the REST endpoints or the ``/v1/stream`` WebSocket process is *offered* to the app's
:class:`ViewerHub` (a reference is kept, nothing is copied or encoded). The hub is a latest-value
broadcast: each connected viewer gets the newest frame as soon as it can take it, and frames that arrive
while a viewer is still receiving the previous one are skipped for that viewer (its header's ``seq``
tells how many). A frame is encoded once (JPEG + subsampled points) however many viewers watch, and never
when none does, so the viewer costs the request path only the reference swap.

``/v1/viewer`` protocol (server -> browser; whatever the browser sends is ignored):

* first a **text** message ``{"type": "hello", "version": ..., "models": [...]}`` (``GET /v1/models``'s list);
* then one **binary** message per frame::

      uint32 little-endian  L, the header length
      L bytes               JSON header (padded with spaces to a multiple of 4 bytes)
      image.size bytes      at image.offset: the camera frame as JPEG (absent without an image)
      points.size bytes     at points.offset (4-byte aligned): float32 x, y, z, label per point

  The header is the ``/v1/perceive`` response (``detections`` in pixels of the original image,
  ``instances`` with boxes in the LiDAR frame in metres, ``timings_ms`` per stage in milliseconds, ...)
  plus ``type`` "frame", ``seq`` (1, 2, ... per service), ``source`` (the endpoint that processed it),
  ``received_at`` (server wall time in seconds), ``image`` {``offset``, ``size``, ``width``, ``height``
  (of the JPEG), ``encoding`` "jpeg"} and ``points`` {``offset``, ``size``, ``count``, ``total``,
  ``layout`` "float32 x,y,z,label"}: at most ``max_points`` points (LiDAR frame, metres), every object
  point first and evenly spaced background points after.

The API key, when set, is checked as on ``/v1/stream`` (``x-api-key`` header or ``api_key`` query
parameter); the page itself holds no data and needs none (it passes its own ``?api_key=`` on).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.staticfiles import StaticFiles

from perception import __version__
from perception.pipeline import Frame, PerceptionResult

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
POINT_LAYOUT = "float32 x,y,z,label"


@dataclass(frozen=True)
class ViewerSnapshot:
    """One processed frame as the hub holds it: ``seq`` 1, 2, ... in the order frames were offered;
    ``received_at`` the server wall time (seconds) of the offer; ``source`` the endpoint."""

    seq: int
    source: str
    received_at: float
    frame: Frame
    result: PerceptionResult


def select_points(points: np.ndarray, labels: np.ndarray, max_points: int) -> np.ndarray:
    """Indices (ascending) of at most ``max_points`` finite points: every labelled one (label > 0) first,
    then evenly spaced background points; evenly spaced object points if they alone exceed the limit."""
    xyz = np.asarray(points)[:, :3]
    finite = np.isfinite(xyz).all(axis=1)
    if max_points <= 0:
        return np.zeros(0, np.int64)
    if int(finite.sum()) <= max_points:
        return np.flatnonzero(finite)
    objects = np.flatnonzero(finite & (labels > 0))
    if objects.shape[0] >= max_points:
        return objects[np.linspace(0, objects.shape[0] - 1, max_points).round().astype(np.int64)]
    background = np.flatnonzero(finite & (labels <= 0))
    keep = max_points - objects.shape[0]
    picked = background[np.linspace(0, background.shape[0] - 1, keep).round().astype(np.int64)]
    return np.unique(np.concatenate([objects, picked]))


def _pad4(data: bytes, fill: bytes = b"\0") -> bytes:
    return data + fill * (-len(data) % 4)


def encode_viewer_message(
    snapshot: ViewerSnapshot, max_points: int = 30_000, max_image_width: int = 1280, jpeg_quality: int = 80
) -> bytes:
    """The binary ``/v1/viewer`` message of one snapshot (module docs). Images wider than
    ``max_image_width`` pixels are scaled down for transport; boxes stay in original-image pixels."""
    frame, result = snapshot.frame, snapshot.result
    header: dict[str, Any] = {
        "type": "frame",
        "seq": snapshot.seq,
        "source": snapshot.source,
        "received_at": snapshot.received_at,
        **result.to_dict(),
        "classes": list(result.classes),
    }
    image_bytes = b""
    if frame.image is not None:
        img = Image.fromarray(np.ascontiguousarray(frame.image, dtype=np.uint8))
        if img.width > max_image_width:
            img = img.resize((max_image_width, max(1, round(img.height * max_image_width / img.width))))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=jpeg_quality)
        image_bytes = buf.getvalue()
        header["image"] = {"encoding": "jpeg", "width": img.width, "height": img.height, "size": len(image_bytes)}
        if header.get("image_size") is None:
            header["image_size"] = [frame.image.shape[1], frame.image.shape[0]]
    points_bytes = b""
    if frame.points is not None and result.labels is not None:
        pts = np.asarray(frame.points)
        idx = select_points(pts, result.labels, max_points)
        packed = np.empty((idx.shape[0], 4), "<f4")
        packed[:, :3] = pts[idx, :3]
        packed[:, 3] = result.labels[idx]
        points_bytes = packed.tobytes()
        header["points"] = {"count": int(idx.shape[0]), "total": int(pts.shape[0]), "layout": POINT_LAYOUT,
                            "size": len(points_bytes)}  # fmt: skip
    # offsets depend on the header's length, which depends on the offsets' digits: iterate to a fixed point
    image_offset = points_offset = 0
    for _ in range(4):
        if "image" in header:
            header["image"]["offset"] = image_offset
        if "points" in header:
            header["points"]["offset"] = points_offset
        raw = _pad4(json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8"), b" ")
        start = 4 + len(raw)
        new_image, new_points = start, start + len(_pad4(image_bytes))
        if (new_image, new_points) == (image_offset, points_offset):
            break
        image_offset, points_offset = new_image, new_points
    return b"".join([struct.pack("<I", len(raw)), raw, _pad4(image_bytes), points_bytes])


def decode_viewer_message(message: bytes) -> tuple[dict[str, Any], bytes | None, np.ndarray | None]:
    """(header, JPEG bytes or None, (M, 4) float32 points or None) of a binary ``/v1/viewer`` message."""
    (length,) = struct.unpack_from("<I", message, 0)
    header = json.loads(bytes(message[4 : 4 + length]))
    image = points = None
    if "image" in header:
        off, size = header["image"]["offset"], header["image"]["size"]
        image = bytes(message[off : off + size])
    if "points" in header:
        off, count = header["points"]["offset"], header["points"]["count"]
        points = np.frombuffer(message, "<f4", count * 4, off).reshape(count, 4)
    return header, image, points


class ViewerHub:
    """Latest-value broadcast of processed frames to the ``/v1/viewer`` sockets (module docs).

    :meth:`offer` is thread-safe and O(1) (the pipeline's worker threads call it); subscribers live on
    the app's event loop. ``max_points``, ``max_image_width`` (pixels) and ``jpeg_quality`` bound what one
    message carries.
    """

    def __init__(self, max_points: int = 30_000, max_image_width: int = 1280, jpeg_quality: int = 80) -> None:
        self.max_points = max_points
        self.max_image_width = max_image_width
        self.jpeg_quality = jpeg_quality
        self._lock = threading.Lock()
        self._latest: ViewerSnapshot | None = None
        self._seq = 0
        self._waiters: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self._next_token = 0
        self._encode_lock = threading.Lock()
        self._cache: tuple[int, bytes] | None = None

    @property
    def subscribers(self) -> int:
        """Viewers connected now."""
        with self._lock:
            return len(self._waiters)

    def offer(self, frame: Frame, result: PerceptionResult, source: str) -> None:
        """Make ``(frame, result)`` the newest frame and wake the viewers (from any thread)."""
        with self._lock:
            self._seq += 1
            self._latest = ViewerSnapshot(self._seq, source, time.time(), frame, result)
            waiters = list(self._waiters.values())
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # the loop closed under us: the app is stopping
                loop.call_soon_threadsafe(event.set)

    def latest(self) -> ViewerSnapshot | None:
        with self._lock:
            return self._latest

    def message(self, snapshot: ViewerSnapshot) -> bytes:
        """The encoded message of ``snapshot``, encoded once however many viewers ask (thread-safe)."""
        with self._encode_lock:
            if self._cache is not None and self._cache[0] == snapshot.seq:
                return self._cache[1]
            data = encode_viewer_message(snapshot, self.max_points, self.max_image_width, self.jpeg_quality)
            self._cache = (snapshot.seq, data)
            return data

    def _subscribe(self, event: asyncio.Event) -> int:
        with self._lock:
            self._next_token += 1
            self._waiters[self._next_token] = (asyncio.get_running_loop(), event)
            if self._latest is not None:
                event.set()
            return self._next_token

    def _unsubscribe(self, token: int) -> None:
        with self._lock:
            self._waiters.pop(token, None)

    async def serve(self, websocket: WebSocket, hello: dict[str, Any]) -> None:
        """Send ``hello`` and then the newest frame whenever there is one, until the viewer disconnects."""
        await websocket.accept()
        event = asyncio.Event()
        token = self._subscribe(event)

        async def pump() -> None:
            await websocket.send_text(json.dumps(hello))
            last = 0
            while True:
                await event.wait()
                event.clear()
                snapshot = self.latest()
                if snapshot is None or snapshot.seq == last:
                    continue
                last = snapshot.seq
                try:
                    data = await run_in_threadpool(self.message, snapshot)
                except Exception:  # one bad frame must not end the viewer's connection
                    log.exception("viewer: cannot encode frame %s (seq %d)", snapshot.result.frame_id, snapshot.seq)
                    continue
                await websocket.send_bytes(data)

        async def listen() -> None:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass

        tasks = [asyncio.create_task(pump()), asyncio.create_task(listen())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.debug("viewer connection ended: %r", task.exception())
        finally:
            self._unsubscribe(token)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(Exception):  # already closed when the viewer went away
                await websocket.close(code=1000)


def mount_viewer(app: FastAPI, hub: ViewerHub, authorize: Callable[[HTTPConnection], bool]) -> None:
    """Add ``GET /viewer`` (the page), ``/viewer/static/*`` (its script and style) and the ``/v1/viewer``
    WebSocket to ``app``; ``authorize`` decides whether a WebSocket may connect (the API key check)."""

    async def viewer_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "viewer.html", media_type="text/html", headers={"cache-control": "no-cache"})

    async def viewer_socket(websocket: WebSocket) -> None:
        if not authorize(websocket):
            await websocket.close(code=1008, reason="missing or invalid API key")
            return
        pipeline = websocket.app.state.pipeline
        hello = {"type": "hello", "version": __version__, "models": [m.to_dict() for m in pipeline.models()]}
        await hub.serve(websocket, hello)

    app.add_api_route("/viewer", viewer_page, methods=["GET"], include_in_schema=False)
    app.mount("/viewer/static", StaticFiles(directory=STATIC_DIR), name="viewer-static")
    app.add_api_websocket_route("/v1/viewer", viewer_socket)
