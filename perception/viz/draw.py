"""Shared drawing helpers: class colours, fonts, captions, legends and panel layout (numpy + Pillow).

Every picture in :mod:`perception.viz` is a uint8 (H, W, 3) RGB array; pixel (row, col) with row 0 at the
top. The colours are the ones the browser viewer uses too (``perception/service/static/viewer.js``), so an
operator sees the same class in the same hue everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]

# index = SqueezeSeg label: unknown (grey), car (blue), pedestrian (red), cyclist (yellow)
CLASS_NAMES: tuple[str, ...] = ("unknown", "car", "pedestrian", "cyclist")
CLASS_RGB: dict[str, RGB] = {
    "unknown": (110, 110, 110),
    "car": (40, 110, 255),
    "pedestrian": (235, 50, 50),
    "cyclist": (245, 200, 40),
}
BACKGROUND: RGB = (16, 18, 22)
FOREGROUND: RGB = (235, 235, 235)
GRID: RGB = (52, 56, 64)

# a panel's caption bar above it, and the gap between panels, in pixels
CAPTION_HEIGHT = 22
PANEL_GAP = 8


def class_colour(name_or_id: str | int) -> RGB:
    """The RGB colour of a class, by name (``car``) or SqueezeSeg label id (1); white for others."""
    if isinstance(name_or_id, int | np.integer):
        index = int(name_or_id)
        name = CLASS_NAMES[index] if 0 <= index < len(CLASS_NAMES) else ""
    else:
        name = str(name_or_id).lower()
    return CLASS_RGB.get(name, (255, 255, 255))


@functools.cache
def font(size: int = 13) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels (scalable when Pillow has FreeType, else the bitmap one)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow or no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, size: int = 13) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` drawn at the origin in :func:`font` of ``size``."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font(size))
    return int(np.ceil(right - min(left, 0))), int(np.ceil(bottom - min(top, 0)))


def label_box(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: RGB, size: int = 13, text_fill: RGB = (0, 0, 0)
) -> tuple[int, int, int, int]:
    """Draw ``text`` on a filled rectangle whose top-left corner is ``xy``; return the rectangle (x1, y1, x2, y2)."""
    width, height = text_size(draw, text, size)
    x, y = round(float(xy[0])), round(float(xy[1]))
    rect = (x, y, x + width + 4, y + height + 3)
    draw.rectangle(rect, fill=fill)
    draw.text((x + 2, y + 1), text, fill=text_fill, font=font(size))
    return rect


def caption(image: np.ndarray, text: str, height: int = CAPTION_HEIGHT, size: int = 13) -> np.ndarray:
    """``image`` with a caption bar of ``height`` pixels above it (image pixel (r, c) moves to (r + height, c))."""
    img = np.asarray(image, dtype=np.uint8)
    canvas = Image.new("RGB", (img.shape[1], img.shape[0] + height), BACKGROUND)
    canvas.paste(Image.fromarray(img), (0, height))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, (height - text_size(draw, text, size)[1]) // 2), text, fill=FOREGROUND, font=font(size))
    return np.asarray(canvas)


def hstack(images: Sequence[np.ndarray], gap: int = PANEL_GAP) -> np.ndarray:
    """Images side by side, top-aligned, ``gap`` pixels apart; image k starts at column sum(widths[:k]) + k * gap."""
    if not images:
        raise ValueError("hstack needs at least one image")
    height = max(im.shape[0] for im in images)
    width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = BACKGROUND
    col = 0
    for im in images:
        canvas[: im.shape[0], col : col + im.shape[1]] = im
        col += im.shape[1] + gap
    return canvas


def vstack(images: Sequence[np.ndarray], gap: int = PANEL_GAP) -> np.ndarray:
    """Images one under the other, left-aligned, ``gap`` pixels apart."""
    if not images:
        raise ValueError("vstack needs at least one image")
    width = max(im.shape[1] for im in images)
    height = sum(im.shape[0] for im in images) + gap * (len(images) - 1)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = BACKGROUND
    row = 0
    for im in images:
        canvas[row : row + im.shape[0], : im.shape[1]] = im
        row += im.shape[0] + gap
    return canvas


def legend(entries: Sequence[tuple[str, RGB]], width: int, height: int = CAPTION_HEIGHT, size: int = 12) -> np.ndarray:
    """A strip (height, width, 3) with a colour swatch and name per entry, left to right."""
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = 6
    for name, colour in entries:
        swatch = height // 2
        top = (height - swatch) // 2
        draw.rectangle((x, top, x + swatch, top + swatch), fill=colour)
        x += swatch + 4
        draw.text((x, (height - text_size(draw, name, size)[1]) // 2), name, fill=FOREGROUND, font=font(size))
        x += text_size(draw, name, size)[0] + 14
    return np.asarray(canvas)


def class_legend(width: int, names: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """:func:`legend` of the segmentation classes."""
    return legend([(n, class_colour(n)) for n in names], width)
