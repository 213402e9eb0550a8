"""Container health check of the perception service: exit 0 when ``/readyz`` answers 200, else 1.

Docker's HEALTHCHECK and docker-compose's ``healthcheck`` run it inside the container (standard library
only, so the image needs no curl). It asks for readiness, not just liveness: a service whose configured
models did not load (or whose TensorRT engines could not be built) answers every request with 503, so
the container is reported unhealthy. ``PERCEPTION_PORT`` is the service's REST port (default 8000);
``PERCEPTION_HEALTH_URL`` overrides the whole URL. Usage: ``python healthcheck.py [--live]`` (``--live``
checks ``/healthz``, the process only).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = "/healthz" if "--live" in argv else "/readyz"
    port = os.environ.get("PERCEPTION_PORT", "8000")
    url = os.environ.get("PERCEPTION_HEALTH_URL") or f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: {url} answered {exc.code}: {exc.read(300).decode('utf-8', 'replace')}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
