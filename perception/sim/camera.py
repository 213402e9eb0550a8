"""Camera simulation and KITTI object labels: a pinhole camera with KITTI's calibration, rendered by
ray casting one ray per pixel (open3d), and ``label_2`` objects computed from what is visible.

Frames: the LiDAR frame (x forward, y left, z up) holds the scene; ``Tr_velo_to_cam`` maps it to the
reference camera (x right, y down, z forward), ``R0_rect`` (identity here) to the rectified camera, and
``P2`` to pixels of ``image_2``. Pixel (col, row) is the ray through image coordinates u = col, v = row.

Rendering: colour per material with Lambertian shading under a sun and a sky (ambient from above),
sun shadows (a second, occlusion-only ray cast), glossy highlights and sky reflections on paint and
glass, distance haze, a sky gradient where rays miss, then exposure and Gaussian pixel noise.

Labels: an actor's 2D box is the tight box of the pixels whose first hit is the actor; ``occluded`` is
0/1/2 from the visible fraction of the pixels it would cover rendered alone (3, unknown, without a
camera); ``truncated`` is the fraction of its projected 3D box outside the image. Actors with too few
visible pixels, too small or too far become DontCare regions; those barely visible are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from perception.io.kitti import Calibration, KittiObject
from perception.sim.materials import apply_patterns
from perception.sim.world import Scene, build_raycaster, cast_rays, import_open3d

KITTI_IMAGE_SIZE = (1242, 375)  # width, height
# KITTI object benchmark calibration (training frame 000000): P0-P3 of the rectified cameras
KITTI_P = {
    "P0": [[721.5377, 0.0, 609.5593, 0.0], [0.0, 721.5377, 172.854, 0.0], [0.0, 0.0, 1.0, 0.0]],
    "P1": [[721.5377, 0.0, 609.5593, -387.5744], [0.0, 721.5377, 172.854, 0.0], [0.0, 0.0, 1.0, 0.0]],
    "P2": [[721.5377, 0.0, 609.5593, 44.85728], [0.0, 721.5377, 172.854, 0.2163791], [0.0, 0.0, 1.0, 0.002745884]],
    "P3": [[721.5377, 0.0, 609.5593, -339.5242], [0.0, 721.5377, 172.854, 2.199936], [0.0, 0.0, 1.0, 0.002729905]],
}
# LiDAR (x fwd, y left, z up) -> camera (x right, y down, z fwd) axes
VELO_TO_CAM_AXES = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
_RAY_CACHE: dict[bytes, np.ndarray] = {}
_DIR_CACHE: dict[str, Any] = {}  # unit directions and lengths of the last pixel rays rendered
_BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def kitti_calibration(camera_position_m: tuple[float, float, float] = (0.27, 0.0, -0.08)) -> Calibration:
    """KITTI-like calibration: KITTI's P0-P3, R0_rect = identity, and a ``Tr_velo_to_cam`` that puts the
    reference camera at ``camera_position_m`` in the LiDAR frame (0.27 m ahead of and 0.08 m below the
    LiDAR by default, as on KITTI's car) with axes exactly aligned (KITTI's real ones are off by < 1 deg)."""
    tr = np.zeros((3, 4))
    tr[:, :3] = VELO_TO_CAM_AXES
    tr[:, 3] = -VELO_TO_CAM_AXES @ np.asarray(camera_position_m, dtype=np.float64)
    imu = np.eye(3, 4)
    imu[:, 3] = [-0.8086759, 0.3195559, -0.7997231]
    return Calibration(
        P0=np.array(KITTI_P["P0"]), P1=np.array(KITTI_P["P1"]), P2=np.array(KITTI_P["P2"]), P3=np.array(KITTI_P["P3"]),
        R0_rect=np.eye(3), Tr_velo_to_cam=tr, Tr_imu_to_velo=imu,
    )  # fmt: skip


@dataclass(frozen=True)
class CameraModel:
    """The left colour camera (``image_2``) of a calibration: ``width`` x ``height`` pixels."""

    calib: Calibration
    width: int = KITTI_IMAGE_SIZE[0]
    height: int = KITTI_IMAGE_SIZE[1]

    @classmethod
    def kitti(cls) -> CameraModel:
        return cls(kitti_calibration())

    @property
    def intrinsics(self) -> np.ndarray:
        return np.asarray(self.calib.P2[:, :3], dtype=np.float64)

    def _rect_to_velo_rotation(self) -> np.ndarray:
        rot = np.asarray(self.calib.R0_rect) @ np.asarray(self.calib.Tr_velo_to_cam)[:, :3]
        return np.linalg.inv(rot)

    def center_velo(self) -> np.ndarray:
        """Optical centre of camera 2 in the LiDAR frame (metres)."""
        b = np.linalg.solve(self.intrinsics, np.asarray(self.calib.P2)[:, 3])
        return self.calib.rect_to_velo((-b)[None])[0]

    def pixel_rays(self) -> np.ndarray:
        """Rays (H * W, 6) float32 in the LiDAR frame, row-major; a ray's hit distance is the hit's depth
        along the camera's optical axis (the direction has unit rectified z). Cached per calibration;
        the returned array is read-only."""
        key = (
            b"".join(
                np.ascontiguousarray(m, dtype=np.float64).tobytes()
                for m in (self.calib.P2, self.calib.R0_rect, self.calib.Tr_velo_to_cam)
            )
            + np.array([self.width, self.height]).tobytes()
        )
        rays = _RAY_CACHE.get(key)
        if rays is None:
            cols, rows = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
            pix = np.stack([cols.ravel(), rows.ravel(), np.ones(cols.size)], axis=0)
            d_velo = ((self._rect_to_velo_rotation() @ np.linalg.inv(self.intrinsics)) @ pix).T
            origin = np.broadcast_to(self.center_velo(), d_velo.shape)
            rays = np.ascontiguousarray(np.concatenate([origin, d_velo], axis=1), dtype=np.float32)
            rays.flags.writeable = False
            if len(_RAY_CACHE) >= 4:
                _RAY_CACHE.pop(next(iter(_RAY_CACHE)))
            _RAY_CACHE[key] = rays
        return rays

    def box_image_rect(self, corners_velo: np.ndarray, near: float = 0.1) -> tuple[float, float, float, float] | None:
        """Bounding rectangle (u0, v0, u1, v1) in pixels of a 3D box (8 corners, LiDAR frame) clipped to
        the part at least ``near`` metres in front of the camera; None when it is all behind."""
        rect = self.calib.velo_to_rect(corners_velo)
        P = np.asarray(self.calib.P2)
        w = (P @ np.concatenate([rect, np.ones((8, 1))], axis=1).T)[2]
        pts = [rect[i] for i in range(8) if w[i] >= near]
        for a, b in _BOX_EDGES:
            if (w[a] - near) * (w[b] - near) < 0:
                s = (near - w[a]) / (w[b] - w[a])
                pts.append(rect[a] + s * (rect[b] - rect[a]))
        if not pts:
            return None
        uv, _ = self.calib.rect_to_image(np.array(pts))
        return float(uv[:, 0].min()), float(uv[:, 1].min()), float(uv[:, 0].max()), float(uv[:, 1].max())

    def truncation(self, rect: tuple[float, float, float, float]) -> float:
        """Fraction of a rectangle's area outside the image (pixels span [-0.5, size - 0.5])."""
        u0, v0, u1, v1 = rect
        area = max(u1 - u0, 1e-9) * max(v1 - v0, 1e-9)
        iw = max(0.0, min(u1, self.width - 0.5) - max(u0, -0.5))
        ih = max(0.0, min(v1, self.height - 0.5) - max(v0, -0.5))
        return float(np.clip(1.0 - iw * ih / area, 0.0, 1.0))


@dataclass(frozen=True)
class CameraParams:
    """Rendering settings of one frame: pixel noise std (0-255 units), exposure gain, sun shadows,
    haze distance (metres) and the sky's horizon and zenith colours (display RGB in [0, 1])."""

    noise_std: float = 2.0
    exposure: float = 1.0
    shadows: bool = True
    fog_distance_m: float = 800.0
    sky_horizon: tuple[float, float, float] = (0.80, 0.86, 0.92)
    sky_zenith: tuple[float, float, float] = (0.36, 0.56, 0.86)


@dataclass(frozen=True)
class CameraRender:
    """A rendered frame: ``image`` uint8 (H, W, 3) RGB; ``object_index`` int32 (H, W), the index in
    ``Scene.objects`` of each pixel's first hit (-1 for sky); ``depth`` float32 (H, W) metres along the
    optical axis (inf for sky)."""

    image: np.ndarray
    object_index: np.ndarray
    depth: np.ndarray


def sky_color(dirs: np.ndarray, sun: np.ndarray, params: CameraParams) -> np.ndarray:
    """Sky radiance (N, 3) float32 for unit directions (N, 3): a horizon-to-zenith gradient and a sun glow."""
    dirs = np.asarray(dirs, dtype=np.float32)
    dz = np.clip(dirs[:, 2], -1.0, 1.0)
    t = (np.clip(np.arcsin(dz) / np.float32(0.6), 0.0, 1.0) ** np.float32(0.6))[:, None]
    horizon = np.asarray(params.sky_horizon, dtype=np.float32)
    zenith = np.asarray(params.sky_zenith, dtype=np.float32)
    col = horizon[None] + (zenith - horizon)[None] * t
    cos_sun = np.clip(dirs @ np.asarray(sun, dtype=np.float32), 0.0, 1.0)
    cs8 = cos_sun**8
    glow = np.float32(0.5) * (cs8 * cs8) ** 18.75 + np.float32(0.12) * cs8
    col += glow[:, None] * np.array([1.0, 0.95, 0.85], dtype=np.float32)
    col[dz < 0] = horizon * np.float32(0.55)
    return col


def shade(
    scene: Scene,
    origins: np.ndarray,
    dirs: np.ndarray,
    t: np.ndarray,
    triangle: np.ndarray,
    normals: np.ndarray,
    params: CameraParams,
    nthreads: int = 0,
) -> np.ndarray:
    """Colour (N, 3) float32 in [0, ~1] of the hits of unit rays ``dirs`` (N, 3) from ``origins`` ((3,) or
    (N, 3)) at distances ``t`` (N,) metres, with face ``normals`` (N, 3) of the hit ``triangle`` (indices
    into the scene's tables)."""
    f32 = np.float32
    tables = scene.tables()
    dirs = np.asarray(dirs, dtype=f32)
    t = np.asarray(t, dtype=f32)
    normals = np.asarray(normals, dtype=f32)
    d_dot_n = np.einsum("ij,ij->i", normals, dirs)
    flip = d_dot_n > 0
    n = np.where(flip[:, None], -normals, normals)
    d_dot_n = -np.abs(d_dot_n)
    p = np.asarray(origins, dtype=f32) + dirs * t[:, None]
    albedo, _, gloss = apply_patterns(
        tables["pattern"][triangle], p, n, tables["albedo"][triangle], tables["reflectivity"][triangle],
        tables["gloss"][triangle], scene.ground_z,
    )  # fmt: skip
    sun = np.asarray(scene.sun_direction, dtype=f32)
    ndl = n @ sun
    lit = ndl > 0
    if params.shadows and lit.any():
        o3d = import_open3d()
        idx = np.flatnonzero(lit)
        rays = np.empty((idx.size, 6), dtype=f32)
        rays[:, :3] = p[idx] + f32(0.02) * n[idx]
        rays[:, 3:] = sun
        occluded = scene.raycaster().test_occlusions(o3d.core.Tensor(rays), nthreads=nthreads).numpy().reshape(-1)
        lit[idx[occluded.astype(bool)]] = False
    light = f32(0.30) + f32(0.14) * n[:, 2] + f32(0.85) * np.where(lit, ndl, f32(0.0))
    col = albedo * light[:, None] * np.array([1.0, 0.97, 0.92], dtype=f32)
    shiny = np.flatnonzero(gloss > 0)
    if shiny.size:
        g = gloss[shiny]
        ds, ns = dirs[shiny], n[shiny]
        refl_dir = ds - (f32(2.0) * d_dot_n[shiny])[:, None] * ns
        rs = np.clip(refl_dir @ sun, 0.0, 1.0)
        rs4 = rs * rs
        rs4 *= rs4
        spec = np.where(lit[shiny], (rs4 * rs4) ** 5, f32(0.0)) * g * f32(0.8)
        fresnel = f32(0.04) + f32(0.96) * (f32(1.0) + d_dot_n[shiny]) ** 5
        mirror = (g * (f32(0.1) + f32(0.55) * fresnel))[:, None]
        col[shiny] = col[shiny] * (f32(1.0) - mirror) + mirror * sky_color(refl_dir, sun, params) + spec[:, None]
    fog = np.exp(-t / f32(params.fog_distance_m))[:, None]
    horizon = np.asarray(params.sky_horizon, dtype=f32)[None]
    return col * fog + horizon * (f32(1.0) - fog)


def render_camera(
    scene: Scene, camera: CameraModel, rng: np.random.Generator, params: CameraParams | None = None, nthreads: int = 0
) -> CameraRender:
    """Render ``scene`` through ``camera`` (needs open3d); ``rng`` draws the pixel noise."""
    params = params or CameraParams()
    rays = camera.pixel_rays()
    hits = scene.cast(rays, nthreads)
    h, w = camera.height, camera.width
    key = id(rays)
    if _DIR_CACHE.get("key") != key:
        scale = np.linalg.norm(rays[:, 3:], axis=1)
        _DIR_CACHE.update(key=key, rays=rays, scale=scale, dirs=rays[:, 3:] / scale[:, None])
    scale, dirs = _DIR_CACHE["scale"], _DIR_CACHE["dirs"]
    colour = np.empty((h * w, 3), dtype=np.float32)
    hit = hits.hit
    idx = np.flatnonzero(hit)
    miss = np.flatnonzero(~hit)
    sun = np.asarray(scene.sun_direction, dtype=np.float64)
    if miss.size:
        colour[miss] = sky_color(dirs[miss], sun, params)
    if idx.size:
        dist = hits.t[idx] * scale[idx]
        colour[idx] = shade(scene, rays[0, :3], dirs[idx], dist, hits.triangle[idx], hits.normal[idx], params, nthreads)
    noise = rng.standard_normal((h * w, 3), dtype=np.float32)
    noise *= np.float32(params.noise_std)
    colour *= np.float32(255.0 * params.exposure)
    colour += noise
    np.rint(colour, out=colour)
    np.clip(colour, 0, 255, out=colour)
    img = colour.astype(np.uint8)
    return CameraRender(
        image=img.reshape(h, w, 3),
        object_index=hits.object_index.reshape(h, w).astype(np.int32),
        depth=hits.t.reshape(h, w),
    )


# --- labels -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelParams:
    """When an actor becomes a label, a DontCare region, or nothing (pixels, metres, fractions)."""

    min_visible_pixels: int = 30
    dontcare_min_pixels: int = 10
    min_box_height_px: float = 8.0
    max_distance_m: float = 80.0
    max_truncation: float = 0.9
    occlusion_visible: tuple[float, float] = (0.9, 0.5)
    min_lidar_points: int = 5

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> LabelParams:
        occ = (
            section.get("occlusion_level0_visible", cls.occlusion_visible[0]),
            section.get("occlusion_level1_visible", cls.occlusion_visible[1]),
        )
        return cls(
            min_visible_pixels=int(section.get("min_visible_pixels", cls.min_visible_pixels)),
            dontcare_min_pixels=int(section.get("dontcare_min_pixels", cls.dontcare_min_pixels)),
            min_box_height_px=float(section.get("min_box_height_px", cls.min_box_height_px)),
            max_distance_m=float(section.get("max_distance_m", cls.max_distance_m)),
            max_truncation=float(section.get("max_truncation", cls.max_truncation)),
            occlusion_visible=(float(occ[0]), float(occ[1])),
            min_lidar_points=int(section.get("min_lidar_points", cls.min_lidar_points)),
        )


@dataclass(frozen=True)
class Annotation:
    """What became of one actor: ``status`` is ``object`` (a label line), ``dontcare`` or ``skipped``.

    ``visible_pixels`` counts pixels whose first hit is the actor, ``visible_fraction`` those over the
    pixels it covers rendered alone (-1 when unknown), ``truncation`` the fraction of its projected 3D
    box outside the image, ``depth_m`` its bottom centre's depth along the optical axis.
    """

    object_index: int
    instance: int
    label: int
    status: str
    kitti: KittiObject | None
    visible_pixels: int
    visible_fraction: float
    truncation: float
    occlusion: int
    depth_m: float


def occlusion_level(visible_fraction: float, thresholds: tuple[float, float]) -> int:
    """KITTI occlusion: 0 fully visible, 1 partly occluded, 2 largely occluded, 3 unknown (fraction < 0)."""
    if visible_fraction < 0:
        return 3
    if visible_fraction >= thresholds[0]:
        return 0
    return 1 if visible_fraction >= thresholds[1] else 2


def _wrap(angle: float) -> float:
    return float((angle + math.pi) % (2.0 * math.pi) - math.pi)


def kitti_box_fields(
    calib: Calibration, center: tuple[float, float, float], size: tuple[float, float, float], yaw: float
) -> dict[str, Any]:
    """KITTI 3D fields of a LiDAR-frame box (centre, l/w/h, yaw): dimensions (h, w, l), location (the
    bottom centre in rectified camera coordinates), rotation_y and alpha (radians, in [-pi, pi))."""
    length, width, height = size
    bottom = np.array([[center[0], center[1], center[2] - 0.5 * height]])
    loc = calib.velo_to_rect(bottom)[0]
    rot = np.asarray(calib.R0_rect) @ np.asarray(calib.Tr_velo_to_cam)[:, :3]
    heading = rot @ np.array([math.cos(yaw), math.sin(yaw), 0.0])
    ry = _wrap(math.atan2(-heading[2], heading[0]))
    alpha = _wrap(ry - math.atan2(loc[0], loc[2]))
    return {
        "dimensions": (round(float(height), 4), round(float(width), 4), round(float(length), 4)),
        "location": tuple(round(float(v), 4) for v in loc),
        "rotation_y": round(ry, 5),
        "alpha": round(alpha, 5),
    }


def dontcare(bbox: tuple[float, float, float, float]) -> KittiObject:
    """A KITTI DontCare region (the benchmark's conventional placeholder values)."""
    return KittiObject(
        type="DontCare", truncated=-1.0, occluded=-1, alpha=-10.0, bbox=bbox, dimensions=(-1.0, -1.0, -1.0),
        location=(-1000.0, -1000.0, -1000.0), rotation_y=-10.0,
    )  # fmt: skip


def _visible_boxes(object_index: np.ndarray, wanted: np.ndarray) -> dict[int, tuple[int, int, int, int, int]]:
    """Per wanted object: (pixel count, col0, row0, col1, row1) of the pixels whose first hit it is."""
    w = object_index.shape[1]
    n_obj = int(max(object_index.max(), wanted.max() if wanted.size else 0)) + 1
    lut = np.full(n_obj + 1, -1, dtype=np.int64)
    lut[wanted] = np.arange(wanted.size)
    slot = lut[object_index.ravel()]  # -1 (sky) maps to lut[-1] = -1
    sel = np.flatnonzero(slot >= 0)
    out: dict[int, tuple[int, int, int, int, int]] = {}
    if not sel.size:
        return out
    s = slot[sel]
    order = np.argsort(s, kind="stable")
    s, sel = s[order], sel[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    rows, cols = sel // w, sel % w
    counts = np.diff(np.r_[starts, s.size])
    r0, r1 = np.minimum.reduceat(rows, starts), np.maximum.reduceat(rows, starts)
    c0, c1 = np.minimum.reduceat(cols, starts), np.maximum.reduceat(cols, starts)
    for k, st in enumerate(starts):
        out[int(wanted[s[st]])] = (int(counts[k]), int(c0[k]), int(r0[k]), int(c1[k]), int(r1[k]))
    return out


def _alone_fraction(
    scene: Scene, index: int, camera: CameraModel, render: CameraRender, rect: tuple[float, float, float, float],
    pixel_rays: np.ndarray, nthreads: int,
) -> float:  # fmt: skip
    """Visible pixels over the pixels the object covers when rendered alone, on a grid over ``rect``."""
    u0, v0, u1, v1 = rect
    c0, c1 = max(math.floor(u0), 0), min(math.ceil(u1), camera.width - 1)
    r0, r1 = max(math.floor(v0), 0), min(math.ceil(v1), camera.height - 1)
    if c1 < c0 or r1 < r0:
        return -1.0
    area = (c1 - c0 + 1) * (r1 - r0 + 1)
    stride = max(1, math.ceil(math.sqrt(area / 40000.0)))
    rows = np.arange(r0, r1 + 1, stride)
    cols = np.arange(c0, c1 + 1, stride)
    flat = (rows[:, None] * camera.width + cols[None, :]).ravel()
    rays = pixel_rays[flat]
    obj = scene.objects[index]
    alone = cast_rays(build_raycaster([obj]), rays, np.array([0, obj.num_triangles]), nthreads).hit
    n_alone = int(alone.sum())
    if n_alone == 0:
        return -1.0
    visible = render.object_index.ravel()[flat] == index
    return float(np.count_nonzero(visible & alone)) / n_alone


def annotate(
    scene: Scene,
    camera: CameraModel,
    render: CameraRender | None,
    params: LabelParams | None = None,
    lidar_instances: np.ndarray | None = None,
    nthreads: int = 0,
) -> list[Annotation]:
    """KITTI annotations of the scene's actors, in the order of ``scene.objects``.

    With a ``render`` the 2D boxes, occlusion and filtering come from visible pixels. Without one
    (LiDAR-only datasets) an actor is labelled when its projected 3D box meets the image and at least
    ``min_lidar_points`` points of ``lidar_instances`` (per-point instance ids) belong to it; the 2D box
    is its projected 3D box clipped to the image and ``occluded`` is 3 (unknown).
    """
    params = params or LabelParams()
    actors = [i for i, o in enumerate(scene.objects) if o.kitti_type is not None and o.box is not None]
    vis = _visible_boxes(render.object_index, np.array(actors, dtype=np.int64)) if render is not None and actors else {}
    point_counts: dict[int, int] = {}
    if lidar_instances is not None:
        ids, counts = np.unique(np.asarray(lidar_instances), return_counts=True)
        point_counts = {int(i): int(c) for i, c in zip(ids, counts, strict=True)}
    pixel_rays = camera.pixel_rays() if render is not None else None
    out = []
    for i in actors:
        obj = scene.objects[i]
        box = obj.box
        assert box is not None and obj.kitti_type is not None
        fields = kitti_box_fields(camera.calib, box.center, box.size, box.yaw)
        depth = float(fields["location"][2])
        rect = camera.box_image_rect(box.corners())
        trunc = camera.truncation(rect) if rect is not None else 1.0
        base = {
            "object_index": i,
            "instance": obj.instance,
            "label": obj.label,
            "truncation": round(trunc, 4),
            "depth_m": depth,
        }
        if render is None:
            n_pts = point_counts.get(obj.instance, 0)
            if (
                rect is None
                or trunc >= 1.0
                or n_pts < params.min_lidar_points
                or depth > params.max_distance_m
                or depth <= 0
            ):
                out.append(
                    Annotation(
                        status="skipped", kitti=None, visible_pixels=0, visible_fraction=-1.0, occlusion=3, **base
                    )
                )
                continue
            lo, hi = np.zeros(2), np.array([camera.width - 1, camera.height - 1])
            x1, y1 = np.round(np.clip(rect[:2], lo, hi), 2)
            x2, y2 = np.round(np.clip(rect[2:], lo, hi), 2)
            bbox = (float(x1), float(y1), float(x2), float(y2))
            ko = KittiObject(type=obj.kitti_type, truncated=round(min(trunc, 1.0), 2), occluded=3, bbox=bbox, **fields)
            status = "object" if trunc <= params.max_truncation else "skipped"
            out.append(
                Annotation(
                    status=status,
                    kitti=ko if status == "object" else None,
                    visible_pixels=0,
                    visible_fraction=-1.0,
                    occlusion=3,
                    **base,
                )
            )
            continue
        count, c0, r0, c1, r1 = vis.get(i, (0, 0, 0, 0, 0))
        if count < params.dontcare_min_pixels or rect is None:
            out.append(
                Annotation(
                    status="skipped", kitti=None, visible_pixels=count, visible_fraction=-1.0, occlusion=3, **base
                )
            )
            continue
        bbox = (float(c0), float(r0), float(c1), float(r1))
        assert pixel_rays is not None
        frac = _alone_fraction(scene, i, camera, render, rect, pixel_rays, nthreads)
        occ = occlusion_level(frac, params.occlusion_visible)
        too_small = count < params.min_visible_pixels or (r1 - r0 + 1) < params.min_box_height_px
        if too_small or depth > params.max_distance_m or trunc > params.max_truncation:
            out.append(
                Annotation(
                    status="dontcare",
                    kitti=dontcare(bbox),
                    visible_pixels=count,
                    visible_fraction=round(frac, 4),
                    occlusion=occ,
                    **base,
                )
            )
            continue
        ko = KittiObject(type=obj.kitti_type, truncated=round(trunc, 2), occluded=occ, bbox=bbox, **fields)
        out.append(
            Annotation(
                status="object", kitti=ko, visible_pixels=count, visible_fraction=round(frac, 4), occlusion=occ, **base
            )
        )
    return out


def label_lines(annotations: list[Annotation]) -> list[KittiObject]:
    """Objects for a ``label_2`` file: labelled actors first (scene order), DontCare regions last."""
    objs = [a.kitti for a in annotations if a.status == "object" and a.kitti is not None]
    cares = [a.kitti for a in annotations if a.status == "dontcare" and a.kitti is not None]
    return objs + cares
