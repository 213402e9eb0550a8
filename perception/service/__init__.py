"""The perception service: REST + WebSocket (FastAPI) and gRPC over :class:`perception.pipeline.Pipeline`.

* :mod:`perception.service.settings`: :class:`Settings` (environment prefix ``PERCEPTION_``);
* :mod:`perception.service.app`: :func:`create_app` (FastAPI: REST endpoints, WebSocket ``/v1/stream``);
* :mod:`perception.service.grpc_server`: :class:`GrpcServer` (``perception.v1.Perception``, health, reflection);
* :mod:`perception.service.server`: :func:`run_server` (both in one process, graceful SIGINT/SIGTERM);
* :mod:`perception.service.schemas`: JSON models and binary payload codecs;
* :mod:`perception.service.metrics`: Prometheus metrics.

Submodules are imported on use, so ``import perception.service`` stays light.
"""

from perception.service.settings import Settings

__all__ = ["Settings"]
