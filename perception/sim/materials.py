"""Surface materials of the synthetic world, shared by the LiDAR and the camera simulation.

A :class:`Material` holds a display albedo (RGB in [0, 1], what the camera sees under white light),
a LiDAR reflectivity in [0, 1] (at 905 nm: dark paint and tyres are dim, number plates, lamps and lane
paint are retro-reflective), a procedural pattern and a gloss. Patterns (asphalt grain, paving tiles,
facade windows, grass and foliage noise) are functions of the hit point, so the camera and the LiDAR
see the same texture, and they are deterministic (hashes of integer cells, no random state).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

PLAIN, ASPHALT, FACADE, TILES, GRASS, FOLIAGE = range(6)


@dataclass(frozen=True)
class Material:
    """Albedo (display RGB, [0, 1]), LiDAR reflectivity ([0, 1]), pattern id and gloss ([0, 1]; 1 is glass)."""

    albedo: tuple[float, float, float]
    reflectivity: float
    pattern: int = PLAIN
    gloss: float = 0.0

    def with_albedo(self, rgb: tuple[float, float, float], reflectivity: float | None = None) -> Material:
        return replace(self, albedo=rgb, reflectivity=self.reflectivity if reflectivity is None else reflectivity)


MATERIALS: dict[str, Material] = {
    "asphalt": Material((0.27, 0.27, 0.28), 0.30, ASPHALT),
    "lane_paint": Material((0.88, 0.88, 0.84), 0.80),
    "sidewalk": Material((0.60, 0.58, 0.55), 0.32, TILES),
    "kerb": Material((0.74, 0.73, 0.70), 0.38),
    "terrain": Material((0.34, 0.44, 0.22), 0.45, GRASS),
    "concrete": Material((0.68, 0.67, 0.64), 0.40),
    "metal": Material((0.64, 0.65, 0.68), 0.55, gloss=0.25),
    "facade": Material((0.72, 0.66, 0.56), 0.40, FACADE),
    "roof": Material((0.32, 0.31, 0.30), 0.30),
    "body": Material((0.8, 0.8, 0.8), 0.50, gloss=0.35),
    "glass": Material((0.06, 0.08, 0.10), 0.06, gloss=1.0),
    "tyre": Material((0.05, 0.05, 0.05), 0.04),
    "rim": Material((0.55, 0.56, 0.58), 0.45, gloss=0.3),
    "headlight": Material((0.92, 0.92, 0.88), 0.85, gloss=0.6),
    "taillight": Material((0.72, 0.06, 0.05), 0.85, gloss=0.5),
    "plate": Material((0.93, 0.93, 0.90), 0.95),
    "skin": Material((0.85, 0.66, 0.52), 0.35),
    "hair": Material((0.15, 0.10, 0.07), 0.10),
    "shirt": Material((0.3, 0.3, 0.6), 0.35),
    "trousers": Material((0.15, 0.15, 0.25), 0.25),
    "shoes": Material((0.10, 0.10, 0.10), 0.10),
    "frame": Material((0.7, 0.1, 0.1), 0.45, gloss=0.3),
    "trunk": Material((0.33, 0.24, 0.16), 0.30),
    "foliage": Material((0.20, 0.36, 0.14), 0.42, FOLIAGE),
    "pole": Material((0.45, 0.46, 0.48), 0.45),
    "lamp": Material((0.85, 0.85, 0.80), 0.50),
    "sign": Material((0.90, 0.90, 0.90), 0.95),
    "plastic": Material((0.18, 0.30, 0.20), 0.30),
}

# (rgb, weight): the usual spread of car colours (white, black, grey and silver dominate)
CAR_PAINTS: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((0.90, 0.90, 0.90), 0.22), ((0.05, 0.05, 0.06), 0.18), ((0.45, 0.46, 0.48), 0.16),
    ((0.68, 0.69, 0.71), 0.14), ((0.10, 0.16, 0.38), 0.08), ((0.62, 0.07, 0.06), 0.08),
    ((0.20, 0.36, 0.62), 0.05), ((0.10, 0.24, 0.14), 0.03), ((0.74, 0.68, 0.54), 0.03),
    ((0.85, 0.55, 0.10), 0.03),
)  # fmt: skip
FACADE_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.76, 0.70, 0.58), (0.60, 0.30, 0.22), (0.62, 0.62, 0.62), (0.86, 0.85, 0.80), (0.84, 0.76, 0.52),
    (0.42, 0.34, 0.28), (0.70, 0.72, 0.74), (0.55, 0.60, 0.66),
)  # fmt: skip
SKIN_TONES: tuple[tuple[float, float, float], ...] = (
    (0.94, 0.78, 0.66), (0.86, 0.66, 0.52), (0.70, 0.50, 0.36), (0.50, 0.34, 0.24), (0.34, 0.23, 0.16),
)  # fmt: skip
HAIR_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.08, 0.06, 0.05), (0.25, 0.16, 0.09), (0.55, 0.42, 0.25), (0.70, 0.70, 0.68), (0.35, 0.20, 0.10),
)  # fmt: skip
CLOTH_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.08, 0.08, 0.10), (0.15, 0.20, 0.35), (0.55, 0.10, 0.10), (0.85, 0.85, 0.82), (0.35, 0.35, 0.36),
    (0.20, 0.35, 0.20), (0.75, 0.60, 0.20), (0.45, 0.30, 0.20), (0.25, 0.45, 0.70), (0.60, 0.20, 0.45),
)  # fmt: skip
SIGN_COLOURS: tuple[tuple[float, float, float], ...] = ((0.85, 0.1, 0.1), (0.1, 0.25, 0.7), (0.95, 0.95, 0.95))


def luminance(rgb: tuple[float, float, float]) -> float:
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]


def paint_reflectivity(rgb: tuple[float, float, float]) -> float:
    """LiDAR reflectivity of car paint: black cars return little, white ones much (0.06-0.6)."""
    return 0.06 + 0.6 * luminance(rgb)


def hash_noise(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray | int = 0) -> np.ndarray:
    """A deterministic value in [0, 1) per integer cell (ix, iy, iz)."""
    h = (
        (np.asarray(ix, np.int64) * 73856093)
        ^ (np.asarray(iy, np.int64) * 19349663)
        ^ (np.asarray(iz, np.int64) * 83492791)
    )
    h &= 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 15
    return h.astype(np.float64) / 4294967296.0


def _cells(v: np.ndarray, size: float) -> np.ndarray:
    return np.floor(v / size).astype(np.int64)


def apply_patterns(
    pattern: np.ndarray,
    points: np.ndarray,
    normals: np.ndarray,
    albedo: np.ndarray,
    reflectivity: np.ndarray,
    gloss: np.ndarray,
    ground_z: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Albedo (N, 3), reflectivity (N,) and gloss (N,) after the procedural patterns at the hit points.

    ``points`` (N, 3) are hit points and ``normals`` (N, 3) unit surface normals in the LiDAR frame
    (metres); ``ground_z`` is the road height (metres), for facades' floors.
    """
    albedo = np.array(albedo, dtype=np.float32, copy=True)
    refl = np.array(reflectivity, dtype=np.float32, copy=True)
    gloss = np.array(gloss, dtype=np.float32, copy=True)
    pattern = np.asarray(pattern)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]

    sel = np.flatnonzero(pattern == ASPHALT)
    if sel.size:
        fine = hash_noise(_cells(x[sel], 0.06), _cells(y[sel], 0.06))
        coarse = hash_noise(_cells(x[sel], 2.5), _cells(y[sel], 2.5), 7)
        f = 0.86 + 0.22 * fine + 0.16 * (coarse - 0.5)
        albedo[sel] *= f[:, None].astype(np.float32)
        refl[sel] *= (0.85 + 0.3 * fine).astype(np.float32)

    sel = np.flatnonzero(pattern == TILES)
    if sel.size:
        tile = 0.4
        fx, fy = np.mod(x[sel] / tile, 1.0), np.mod(y[sel] / tile, 1.0)
        joint = (fx < 0.05) | (fy < 0.05)
        var = 0.92 + 0.16 * hash_noise(_cells(x[sel], tile), _cells(y[sel], tile), 3)
        f = np.where(joint, 0.72, var)
        albedo[sel] *= f[:, None].astype(np.float32)

    for pid, cell, lo, hi in ((GRASS, 0.12, 0.7, 1.3), (FOLIAGE, 0.22, 0.55, 1.35)):
        sel = np.flatnonzero(pattern == pid)
        if sel.size:
            n = hash_noise(_cells(x[sel], cell), _cells(y[sel], cell), _cells(z[sel], cell))
            f = lo + (hi - lo) * n
            albedo[sel] *= f[:, None].astype(np.float32)
            albedo[sel, 0] *= (0.9 + 0.2 * hash_noise(_cells(x[sel], 1.3), _cells(y[sel], 1.3), 5)).astype(np.float32)
            refl[sel] *= (0.8 + 0.4 * n).astype(np.float32)

    sel = np.flatnonzero(pattern == FACADE)
    if sel.size:
        n = normals[sel]
        vertical = np.abs(n[:, 2]) < 0.5
        tx, ty = -n[:, 1], n[:, 0]
        norm = np.maximum(np.hypot(tx, ty), 1e-6)
        s = (x[sel] * tx + y[sel] * ty) / norm
        h = z[sel] - ground_z
        bay, storey = 2.7, 3.1
        fs, fh = np.mod(s / bay, 1.0), np.mod(h / storey, 1.0)
        window = vertical & (fs > 0.22) & (fs < 0.78) & (fh > 0.32) & (fh < 0.86) & (h > 0.9)
        plinth = vertical & (h < 0.6)
        tint = hash_noise(_cells(s, bay), _cells(h, storey), 11)
        win_rgb = np.stack([0.10 + 0.25 * tint, 0.13 + 0.22 * tint, 0.17 + 0.2 * tint], 1).astype(np.float32)
        a = albedo[sel]
        a = np.where(window[:, None], win_rgb, a)
        a = np.where(plinth[:, None], a * 0.7, a)
        albedo[sel] = a
        refl[sel] = np.where(window, refl[sel] * 0.15, refl[sel])
        gloss[sel] = np.where(window, 0.8, gloss[sel])

    np.clip(albedo, 0.0, 1.0, out=albedo)
    np.clip(refl, 0.0, 1.0, out=refl)
    return albedo, refl, gloss
