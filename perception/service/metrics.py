"""Prometheus metrics of the service (``GET /metrics``, text exposition format).

One :class:`Metrics` per server process, shared by the REST/WebSocket app and the gRPC server; each
instance has its own registry, so several apps (tests) never collide.

* ``perception_requests_total{protocol, endpoint, status}``: REST requests by route template and HTTP
  status, gRPC calls by method and status code name, WebSocket frames by outcome (``ok``/``error``);
* ``perception_request_duration_seconds{protocol, endpoint}``: latency histogram of the same requests;
* ``perception_stage_duration_seconds{stage}``: pipeline stage histograms (``camera.inference``,
  ``lidar.clustering``, ``total``, ...), seconds;
* ``perception_dropped_frames_total{protocol}``: stream frames dropped by the "drop" policy;
* ``perception_stream_frames_total{protocol}``: stream frames received;
* ``perception_active_streams{protocol}``: open WebSocket/gRPC streams;
* ``perception_model_loaded{stage}``: 1 when the stage's model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# 1 ms .. 30 s: CPU inference of a 120k-point scan takes a few hundred ms, a GPU a few ms
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The service's counters and histograms in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "perception_requests",
            "Requests by protocol, endpoint (route or gRPC method) and status.",
            ("protocol", "endpoint", "status"),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "perception_request_duration_seconds",
            "Request latency in seconds, from the first byte received to the response.",
            ("protocol", "endpoint"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "perception_stage_duration_seconds",
            "Pipeline stage wall time in seconds.",
            ("stage",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dropped_frames = Counter(
            "perception_dropped_frames",
            "Stream frames dropped unprocessed because the client sent faster than the pipeline ran.",
            ("protocol",),
            registry=self.registry,
        )
        self.stream_frames = Counter(
            "perception_stream_frames", "Stream frames received.", ("protocol",), registry=self.registry
        )
        self.active_streams = Gauge("perception_active_streams", "Open streams.", ("protocol",), registry=self.registry)
        self.model_loaded = Gauge(
            "perception_model_loaded", "1 when the stage's model is loaded.", ("stage",), registry=self.registry
        )
        for protocol in ("websocket", "grpc"):  # export the zero counters from the start
            self.dropped_frames.labels(protocol)
            self.stream_frames.labels(protocol)
            self.active_streams.labels(protocol)

    def observe_request(self, protocol: str, endpoint: str, status: str | int, seconds: float) -> None:
        self.requests.labels(protocol, endpoint, str(status)).inc()
        self.request_seconds.labels(protocol, endpoint).observe(seconds)

    def observe_stages(self, timings_ms: Mapping[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stage_seconds.labels(stage).observe(ms / 1e3)

    def set_models(self, loaded: Mapping[str, bool]) -> None:
        for stage, ok in loaded.items():
            self.model_loaded.labels(stage).set(1.0 if ok else 0.0)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
