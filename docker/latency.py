"""Per-stage latency of the perception pipeline on this machine, with the service's settings.

The measurement behind the latency table of docs/deployment.md: the models, providers and TensorRT
options come from the same ``PERCEPTION_*`` environment variables as ``perception serve`` (so inside an
image it measures what the service runs), the pipeline is warmed up (TensorRT engines built or loaded),
then one frame (a LiDAR scan and a camera image) runs ``--runs`` times. Prints JSON: the provider each
stage ran on, and the median and p99 of each stage in milliseconds. Name the hardware (GPU, power mode)
and the software versions next to any figure you publish.

    python docker/latency.py SCAN.bin [--image FRAME.png] [--runs 200]

In the GPU image: ``docker run --rm --gpus all -v perception-trt:/var/cache/perception/trt
-v "$PWD/docker/latency.py:/app/latency.py:ro" -v "$PWD/sim_data:/data:ro" --entrypoint python
perception:gpu /app/latency.py /data/sample/velodyne/000000.bin``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys

import numpy as np
import onnxruntime as ort

from perception.io import read_image, read_velodyne_bin
from perception.pipeline import Frame, Pipeline
from perception.service.settings import Settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan", help="LiDAR scan, KITTI .bin (x, y, z, intensity float32)")
    parser.add_argument("--image", help="camera frame, PNG/JPEG (default: a 1242 x 375 noise frame)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs after warm-up (default 200)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    settings = Settings()
    seg_model, det_model = settings.model_paths()  # the NAME.int8.onnx siblings with PERCEPTION_PRECISION=int8
    points = read_velodyne_bin(args.scan)
    if args.image:
        image = read_image(args.image)
    else:
        image = np.random.default_rng(0).integers(0, 256, (375, 1242, 3), dtype=np.uint8)
    with Pipeline(
        seg_model,
        det_model,
        settings.providers,
        cluster=settings.cluster,
        intra_op_threads=settings.intra_op_threads,
        tensorrt=settings.tensorrt_options(),
    ) as pipeline:
        warm_up_s = pipeline.warm_up()
        results = [pipeline.run(Frame(str(i), float(i), image=image, points=points)) for i in range(args.runs)]
    stages = sorted({k for r in results for k in r.timings_ms})
    series = {k: [r.timings_ms[k] for r in results if k in r.timings_ms] for k in stages}
    report = {
        "machine": f"{platform.node()} ({platform.machine()}, {platform.processor() or 'cpu unknown'})",
        "onnxruntime": ort.__version__,
        "providers": results[-1].providers,
        "models": [str(m) for m in (seg_model, det_model) if m is not None],
        "precision": settings.precision,
        "trt_precision": settings.trt_precision,
        "runs": args.runs,
        "points": int(points.shape[0]),
        "image": list(image.shape[1::-1]),
        "warm_up_s": {k: round(v, 3) for k, v in warm_up_s.items()},
        "median_ms": {k: round(statistics.median(v), 2) for k, v in series.items()},
        "p99_ms": {k: round(float(np.percentile(v, 99)), 2) for k, v in series.items()},
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
