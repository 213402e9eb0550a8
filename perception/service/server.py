"""Run the REST/WebSocket server (uvicorn) and the gRPC server in one process, sharing one pipeline.

:func:`run_server` is what ``perception serve`` calls: it blocks until SIGINT or SIGTERM, then stops
gracefully: gRPC health goes NOT_SERVING, both servers stop accepting, in-flight requests and streams get
``Settings.shutdown_grace_s`` seconds, and the pipeline is closed. A second SIGINT forces the exit.

:func:`serve_in_background` starts the same pair in background threads (tests, notebooks, a ROS bridge
in the same process) and returns a handle with the bound URLs.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn

from perception.pipeline import Pipeline
from perception.service.app import build_pipeline, create_app
from perception.service.grpc_server import GrpcServer
from perception.service.metrics import Metrics
from perception.service.settings import Settings

log = logging.getLogger(__name__)


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: :func:`run_server` owns SIGINT/SIGTERM (and never re-raises)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ws_max_size=settings.max_body_bytes,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        lifespan="on",
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind the REST server to {host}:{port} ({exc.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def run_server(settings: Settings | None = None, *, pipeline: Pipeline | None = None) -> None:
    """Serve REST/WebSocket on ``settings.port`` and gRPC on ``settings.grpc_port`` until SIGINT/SIGTERM.

    Must run in the main thread (signal handlers). Raises :class:`OSError` when a port cannot be bound.
    Models that fail to load do not stop the server: ``/readyz`` and gRPC health report not ready and
    requests that need them get 503 / UNAVAILABLE.
    """
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    owns_pipeline = pipeline is None
    pipe = pipeline if pipeline is not None else build_pipeline(settings)
    metrics = Metrics()
    grpc_server: GrpcServer | None = None
    sock: socket.socket | None = None
    try:
        sock = _bind(settings.host, settings.port)
        app = create_app(settings, pipe, metrics)
        if settings.grpc_enabled:
            grpc_server = GrpcServer(settings, pipe, metrics, viewer=app.state.viewer).start()
        server = _UvicornServer(_uvicorn_config(app, settings))

        def handle(sig: int, _: FrameType | None) -> None:
            log.info("received %s: shutting down", signal.Signals(sig).name)
            if server.should_exit and sig == signal.SIGINT:
                server.force_exit = True  # a second Ctrl+C: stop waiting for in-flight requests
            server.should_exit = True
            if grpc_server is not None:
                grpc_server.stop(settings.shutdown_grace_s)  # drains while uvicorn drains

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            log.info(
                "REST/WebSocket on http://%s:%d%s",
                _url_host(settings.host),
                sock.getsockname()[1],
                f", gRPC on {grpc_server.address}" if grpc_server else "",
            )
            server.run(sockets=[sock])
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
    finally:
        if sock is not None:
            sock.close()
        if grpc_server is not None:
            grpc_server.stop(settings.shutdown_grace_s).wait()
        if owns_pipeline:
            pipe.close()
        log.info("stopped")


@dataclass
class RunningService:
    """Handle of :func:`serve_in_background`: URLs and the objects behind them."""

    rest_url: str
    ws_url: str
    grpc_target: str | None
    settings: Settings
    pipeline: Pipeline
    metrics: Metrics
    uvicorn_server: uvicorn.Server
    grpc_server: GrpcServer | None
    thread: threading.Thread


@contextlib.contextmanager
def serve_in_background(
    settings: Settings | None = None, pipeline: Pipeline | None = None, startup_timeout_s: float = 60.0
) -> Iterator[RunningService]:
    """Both servers in background threads for the ``with`` block (ports 0 in ``settings``: any free ones).

    ``startup_timeout_s`` only guards against a server that never comes up. On exit both servers stop
    (in-flight requests get ``settings.shutdown_grace_s``) and a pipeline built here is closed.
    """
    settings = settings or Settings()
    with contextlib.ExitStack() as stack:
        if pipeline is None:
            pipeline = build_pipeline(settings)
            stack.callback(pipeline.close)
        metrics = Metrics()
        grpc_server = None
        app = create_app(settings, pipeline, metrics)
        if settings.grpc_enabled:
            grpc_server = GrpcServer(settings, pipeline, metrics, viewer=app.state.viewer).start()
            stack.callback(lambda: grpc_server.stop(0).wait())
        sock = _bind(settings.host, settings.port)
        stack.callback(sock.close)
        server = _UvicornServer(_uvicorn_config(app, settings))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="perception-uvicorn", daemon=True)
        thread.start()

        def stop_rest() -> None:
            server.should_exit = True
            if grpc_server is not None:
                grpc_server.stop(settings.shutdown_grace_s)  # both drain at the same time
            thread.join()

        stack.callback(stop_rest)
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the REST server did not start")
            time.sleep(0.01)
        host = _url_host(settings.host)
        port = sock.getsockname()[1]
        yield RunningService(
            rest_url=f"http://{host}:{port}",
            ws_url=f"ws://{host}:{port}",
            grpc_target=f"{host}:{grpc_server.port}" if grpc_server else None,
            settings=settings,
            pipeline=pipeline,
            metrics=metrics,
            uvicorn_server=server,
            grpc_server=grpc_server,
            thread=thread,
        )
