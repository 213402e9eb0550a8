"""Streams under stress: clients that vanish mid-stream leave nothing running, SIGTERM drains in-flight calls,
and a small run of the ``service`` load benchmark (keys and error count only: no timing asserts)."""

from __future__ import annotations

import asyncio
import math
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from perception import bench
from perception.client import GrpcClient, encode_stream_frame
from perception.pipeline import Frame
from perception.service.server import RunningService, serve_in_background
from perception.service.settings import Settings

from .conftest import free_port, server_env
from .test_pipeline import exported_models, models_root, shared_pipeline

GIVE_UP_S = 60.0  # only bounds a wait for something that should happen in well under a second


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return exported_models(models_root(tmp_path_factory))


def settings_for(models, **overrides) -> Settings:
    base = {
        "host": "127.0.0.1",
        "port": 0,
        "grpc_port": 0,
        "providers": "cpu",
        "seg_model": models[0],
        "det_model": models[1],
        "stream_queue_size": 1,
        "log_level": "warning",
    }
    return Settings(**(base | overrides))


def loop_task_count(svc: RunningService) -> int:
    """Tasks alive on the REST server's event loop (one per open connection or stream, plus uvicorn's own)."""
    loop = svc.uvicorn_server.servers[0].get_loop()

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1  # not this one

    return asyncio.run_coroutine_threadsafe(count(), loop).result(timeout=30)


def wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + GIVE_UP_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def active_streams(svc: RunningService, protocol: str) -> float:
    return svc.metrics.active_streams.labels(protocol)._value.get()


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_a_websocket_client_that_vanishes_mid_stream_leaves_no_task_behind(models, street_scan, policy):
    from websockets.sync.client import connect

    message = encode_stream_frame(Frame("f", 0.0, points=street_scan.points))
    with serve_in_background(settings_for(models, stream_policy=policy), shared_pipeline(*models)) as svc:
        baseline = loop_task_count(svc)
        with connect(f"{svc.ws_url}/v1/stream", max_size=None) as ws:
            for _ in range(4):  # more than the queue holds: under "block" the receiver waits for room
                ws.send(message)
            assert wait_until(lambda: svc.metrics.stream_frames.labels("websocket")._value.get() >= 2)
            assert loop_task_count(svc) > baseline and active_streams(svc, "websocket") == 1
            ws.socket.shutdown(socket.SHUT_RDWR)  # gone without a close frame, frames still queued
        assert wait_until(lambda: active_streams(svc, "websocket") == 0), "the stream handler never ended"
        assert wait_until(lambda: loop_task_count(svc) <= baseline), (loop_task_count(svc), baseline)
        with connect(f"{svc.ws_url}/v1/stream", max_size=None) as again:  # and the server still streams
            again.send(encode_stream_frame(Frame("next", 1.0, points=street_scan.points[:2000])))
            assert '"frame_id":"next"' in again.recv()


def test_a_grpc_client_that_cancels_mid_stream_leaves_no_thread_behind(models, street_scan):
    with serve_in_background(settings_for(models, stream_policy="block"), shared_pipeline(*models)) as svc:
        assert svc.grpc_target is not None
        with GrpcClient(svc.grpc_target) as client:
            request = client.perceive_request(None, street_scan.points, "f", 0.0)
            call = client.stub.Stream(iter([request] * 50))
            assert next(call).frame_id == "f"
            assert any(t.name == "perception-grpc-stream-reader" for t in threading.enumerate())
            call.cancel()
            assert wait_until(lambda: active_streams(svc, "grpc") == 0), "the Stream handler never ended"
            readers = lambda: [t for t in threading.enumerate() if t.name == "perception-grpc-stream-reader"]  # noqa: E731
            assert wait_until(lambda: not readers())
            assert client.segment(street_scan.points[:2000])["num_points"] == 2000


def test_sigterm_lets_in_flight_rest_requests_and_grpc_streams_finish(models, street_scan, tmp_path):
    port, grpc_port = free_port(), free_port()
    env = server_env(models, port, grpc_port, stream_policy="block", shutdown_grace_s="30")
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        code = "from perception.service.server import run_server; run_server()"
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=subprocess.STDOUT)
    points = street_scan.points[:5000]
    try:
        assert wait_until(lambda: proc.poll() is not None or _ready(port)) and proc.poll() is None, log.read_text()
        # REST: a body that arrives in two parts, the second only after SIGTERM
        second_part = threading.Event()
        rest: dict[str, httpx.Response] = {}

        def body():
            yield points[:2500].tobytes()
            second_part.wait(GIVE_UP_S)
            yield points[2500:].tobytes()

        def post() -> None:
            rest["response"] = httpx.post(
                f"http://127.0.0.1:{port}/v1/segment",
                content=body(),
                headers={"content-type": "application/octet-stream"},
                timeout=GIVE_UP_S,
            )

        poster = threading.Thread(target=post)
        poster.start()
        # gRPC: a stream that has answered one frame; the next ones are sent after SIGTERM
        outbox: queue.Queue[object] = queue.Queue()
        with GrpcClient(f"127.0.0.1:{grpc_port}") as client:
            responses = client.stub.Stream(iter(outbox.get, None))
            outbox.put(client.perceive_request(None, points, "before", 0.0))
            assert next(responses).frame_id == "before"
            time.sleep(0.5)  # the REST request's first part has been read by now (its handler is waiting)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            second_part.set()
            for k in range(3):
                outbox.put(client.perceive_request(None, points, f"after-{k}", 1.0))
            outbox.put(None)
            after = [r.frame_id for r in responses]
        poster.join(GIVE_UP_S)
        assert after == ["after-0", "after-1", "after-2"]
        assert rest["response"].status_code == 200 and rest["response"].json()["num_points"] == 5000
        assert proc.wait(timeout=GIVE_UP_S) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_the_service_load_bench_runs_clients_of_both_protocols_without_errors(models, street_scan):
    frame = Frame("load", 0.0, points=street_scan.points[:5000])
    res = bench.service_load(
        models[0], models[1], frame, repeats=3, duration_s=1.5, warmup_s=0.5, ws_clients=1, grpc_clients=1,
        warmup_runs=1,
    )  # fmt: skip
    assert res["errors"] == 0, res["error_samples"]
    assert res["load_websocket_frames"] >= 1 and res["load_grpc_frames"] >= 1
    assert res["runs"] == res["load_websocket_frames"] + res["load_grpc_frames"]
    assert res["throughput_fps"] == pytest.approx(res["runs"] / res["measured_s"])
    assert res["p50_ms"] == res["median_ms"] <= res["p99_ms"]
    assert res["rss_after_warmup_mb"] > 0 and res["rss_end_mb"] > 0 and math.isfinite(res["rss_growth_pct"])
    growth = (res["rss_end_mb"] - res["rss_after_warmup_mb"]) / res["rss_after_warmup_mb"] * 100
    assert res["rss_growth_pct"] == pytest.approx(growth)
    for protocol in ("grpc", "ws", "rest"):
        ratio = res[f"{protocol}_median_ms"] / res["inprocess_median_ms"]
        assert res[f"inprocess_vs_{protocol}_speedup"] == pytest.approx(ratio)
        assert res[f"{protocol}_overhead_pct"] == pytest.approx((ratio - 1) * 100)
    assert all(k.endswith("_speedup") for k in res if "_vs_" in k)
    assert np.isfinite([v for v in res.values() if isinstance(v, float)]).all()
    assert "service" in bench.BENCHMARKS
