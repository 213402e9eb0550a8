"""Camera frames with detection boxes, class names and scores drawn on them (Pillow)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from perception.camera.boxes import Detection2D

# car blue, pedestrian red, cyclist yellow (same hues as the range view's classes)
DETECTION_COLOURS = {"car": (40, 110, 255), "pedestrian": (235, 50, 50), "cyclist": (245, 200, 40)}


def draw_detections(image: np.ndarray, detections: Sequence[Detection2D], line_width: int = 2) -> np.ndarray:
    """A copy of the uint8 RGB frame with each detection's box and ``class score`` label drawn."""
    canvas = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(canvas)
    for det in detections:
        colour = DETECTION_COLOURS.get(det.class_name, (255, 255, 255))
        draw.rectangle((det.x1, det.y1, det.x2, det.y2), outline=colour, width=line_width)
        text = f"{det.class_name} {det.score:.2f}"
        left, top, right, bottom = draw.textbbox((det.x1, det.y1), text)
        y = max(0.0, det.y1 - (bottom - top) - 2)
        draw.rectangle((det.x1, y, det.x1 + (right - left) + 2, y + (bottom - top) + 2), fill=colour)
        draw.text((det.x1 + 1, y), text, fill=(0, 0, 0))
    return np.asarray(canvas)
