"""SqueezeDet anchor boxes, laid out exactly as the original ``set_anchors``.

Coordinates are pixels of the network input (1248 x 384 for KITTI), x to the right and y down,
origin at the top-left pixel; anchors are (cx, cy, w, h).

The original (``src/config/kitti_squeezeDet_config.py`` of the public squeezeDet repository) builds
an (H, W, B, 4) array and flattens it, so anchor ``k`` of grid cell (column ``i``, row ``j``) is row
``(j * grid_w + i) * B + k``: cell-major, row by row, then the anchor shape. Cell centres sit at
``(i + 1) * image_width / (grid_w + 1)`` and ``(j + 1) * image_height / (grid_h + 1)`` for zero-based
``i``, ``j``: the grid is spread evenly inside the image without touching its borders.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Anchor (width, height) in input pixels, in the original's order (k-means on KITTI boxes).
ANCHOR_SHAPES: tuple[tuple[float, float], ...] = (
    (36.0, 37.0), (366.0, 174.0), (115.0, 59.0),
    (162.0, 87.0), (38.0, 90.0), (258.0, 173.0),
    (224.0, 108.0), (78.0, 170.0), (72.0, 43.0),
)  # fmt: skip

INPUT_WIDTH = 1248
INPUT_HEIGHT = 384
GRID_WIDTH = 78
GRID_HEIGHT = 24
ANCHORS_PER_CELL = len(ANCHOR_SHAPES)


def squeezedet_anchors(
    image_width: int = INPUT_WIDTH,
    image_height: int = INPUT_HEIGHT,
    grid_w: int = GRID_WIDTH,
    grid_h: int = GRID_HEIGHT,
    shapes: Sequence[tuple[float, float]] = ANCHOR_SHAPES,
) -> np.ndarray:
    """All anchors, float32 (grid_h * grid_w * len(shapes), 4) as (cx, cy, w, h) in input pixels.

    Row ``(j * grid_w + i) * len(shapes) + k`` is shape ``k`` centred on cell (column ``i``, row ``j``),
    at ``((i + 1) * image_width / (grid_w + 1), (j + 1) * image_height / (grid_h + 1))``. This matches
    the order of the ConvDet output reshaped channels-last (see :func:`perception.camera.boxes.split_convdet`).
    """
    if grid_w < 1 or grid_h < 1:
        raise ValueError(f"grid must be at least 1 x 1, got {grid_w} x {grid_h}")
    wh = np.asarray(shapes, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2 or len(wh) == 0:
        raise ValueError(f"shapes must be a non-empty sequence of (w, h), got shape {wh.shape}")
    num_shapes = len(wh)
    cx = np.arange(1, grid_w + 1, dtype=np.float64) * float(image_width) / (grid_w + 1)
    cy = np.arange(1, grid_h + 1, dtype=np.float64) * float(image_height) / (grid_h + 1)
    out = np.empty((grid_h, grid_w, num_shapes, 4), dtype=np.float64)
    out[..., 0] = cx[None, :, None]
    out[..., 1] = cy[:, None, None]
    out[..., 2] = wh[None, None, :, 0]
    out[..., 3] = wh[None, None, :, 1]
    return out.reshape(-1, 4).astype(np.float32)
