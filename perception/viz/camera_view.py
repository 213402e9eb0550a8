"""Camera frames with detection boxes, class names and scores drawn on them (Pillow).

Boxes are (x1, y1, x2, y2) in pixels of the frame (DESIGN.md, Detection2D); the outline covers the pixels
from x1 to x2 and y1 to y2 (rounded), ``line_width`` pixels thick, drawn inwards. Each label
``class score`` sits on a filled rectangle of the class colour just above the box's top-left corner (inside
the box when there is no room above). Detections are drawn from the lowest score up, so the most
confident box is on top where boxes overlap. Ground-truth boxes (KITTI ``label_2`` objects) are drawn
first, as thin white outlines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from perception.camera.boxes import Detection2D
from perception.io.kitti import KittiObject
from perception.viz.draw import CLASS_RGB, label_box, text_size

# car blue, pedestrian red, cyclist yellow (same hues as the range view's classes)
DETECTION_COLOURS = {name: CLASS_RGB[name] for name in ("car", "pedestrian", "cyclist")}
GROUND_TRUTH_COLOUR = (255, 255, 255)
DONT_CARE_COLOUR = (150, 150, 150)


def label_font_size(image_height: int) -> int:
    """Label text size in pixels for a frame ``image_height`` pixels tall (13 px at KITTI's 375)."""
    return int(max(10, min(28, round(image_height / 29))))


def draw_detections(
    image: np.ndarray,
    detections: Sequence[Detection2D],
    line_width: int = 2,
    ground_truth: Sequence[KittiObject] = (),
    font_size: int | None = None,
) -> np.ndarray:
    """A copy of the uint8 RGB frame with each detection's box and ``class score`` label drawn.

    Args:
        image: uint8 (H, W, 3) RGB frame.
        detections: boxes in pixels of ``image``.
        line_width: outline thickness in pixels.
        ground_truth: KITTI objects whose ``bbox`` is drawn as a 1-pixel white outline (DontCare in grey).
        font_size: label text height in pixels; default from the frame height (:func:`label_font_size`).
    """
    frame = np.ascontiguousarray(image, dtype=np.uint8)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {frame.shape}")
    canvas = Image.fromarray(frame)
    draw = ImageDraw.Draw(canvas)
    size = font_size or label_font_size(frame.shape[0])
    for obj in ground_truth:
        x1, y1, x2, y2 = obj.bbox
        if x2 <= x1 or y2 <= y1:
            continue
        colour = DONT_CARE_COLOUR if obj.type == "DontCare" else GROUND_TRUTH_COLOUR
        draw.rectangle((round(x1), round(y1), round(x2), round(y2)), outline=colour, width=1)
    for det in sorted(detections, key=lambda d: d.score):
        colour = DETECTION_COLOURS.get(det.class_name, (255, 255, 255))
        x1, y1, x2, y2 = (round(float(v)) for v in (det.x1, det.y1, det.x2, det.y2))
        draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=colour, width=line_width)
        text = f"{det.class_name} {det.score:.2f}"
        label_height = text_size(draw, text, size)[1] + 3
        top = y1 - label_height - 1 if y1 - label_height - 1 >= 0 else y1 + line_width
        label_box(draw, (x1, top), text, colour, size)
    return np.asarray(canvas)
