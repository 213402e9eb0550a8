"""Range images coloured by class, as an operator looks at them."""

from __future__ import annotations

import numpy as np

# unknown (grey), car (blue), pedestrian (red), cyclist (yellow); empty pixels black
CLASS_COLOURS = np.array([[110, 110, 110], [40, 110, 255], [235, 50, 50], [245, 200, 40]], dtype=np.uint8)


def colourise_labels(pixel_labels: np.ndarray, mask: np.ndarray, row_scale: int = 4) -> np.ndarray:
    """uint8 RGB (H * row_scale, W, 3): each pixel's class colour, black where the mask is False.

    Rows are repeated ``row_scale`` times because range images are much wider than tall (64 x 512).
    """
    labels = np.asarray(pixel_labels)
    if labels.shape != np.asarray(mask).shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and mask {np.asarray(mask).shape} must be the same (H, W)")
    palette = np.concatenate([CLASS_COLOURS, np.zeros((1, 3), np.uint8)])
    index = np.where(mask, np.clip(labels, 0, len(CLASS_COLOURS) - 1), len(CLASS_COLOURS))
    return np.repeat(palette[index], row_scale, axis=0)
