"""Procedural driving scenes: roads, kerbs, sidewalks, buildings, clutter, cars, pedestrians and cyclists.

Frames and units: everything is built in the LiDAR frame of the frame's ego car (x forward, y left,
z up, metres; the sensor at the origin, the road at ``z = -lidar_height_m``). The scene is first laid
out in a road frame (x along the road, the sensor at the origin), then turned by the ego car's small
heading offset relative to the road, so roads are not always exactly aligned with the sensor.
Right-hand traffic: the ego car drives in one of the lanes right of the centre line, towards +x.

Each :class:`SceneObject` is one triangle mesh with per-triangle materials; actors (cars, pedestrians,
cyclists) carry their class (1 car, 2 pedestrian, 3 cyclist; 0 for background), a per-frame instance id
and a ground-truth :class:`Box3D` (LiDAR frame: centre, length/width/height along the heading, its left
and up, yaw about z). The box is the tight box of the object's mesh in its own frame.

Building a scene needs only numpy; ray casting (:meth:`Scene.cast`) needs open3d, imported lazily.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perception.sim import meshes as M
from perception.sim.config import SimConfigError, sample
from perception.sim.materials import (
    CAR_PAINTS,
    CLOTH_COLOURS,
    FACADE_COLOURS,
    HAIR_COLOURS,
    MATERIALS,
    SIGN_COLOURS,
    SKIN_TONES,
    Material,
    paint_reflectivity,
)

UNKNOWN, CAR, PEDESTRIAN, CYCLIST = 0, 1, 2, 3
CLASS_NAMES = ("unknown", "car", "pedestrian", "cyclist")
KITTI_TYPE_CLASS = {"Car": CAR, "Van": CAR, "Pedestrian": PEDESTRIAN, "Cyclist": CYCLIST}


def import_open3d() -> Any:
    """open3d (the ``[train]`` extra), with a clear error when it is missing."""
    try:
        import open3d
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the synthetic world's ray casting needs open3d: pip install 'perception[train]' "
            "(on Debian/Ubuntu it also needs the libusb-1.0-0 package)"
        ) from exc
    return open3d


# --- boxes and objects --------------------------------------------------------------------------


@dataclass(frozen=True)
class Box3D:
    """An upright 3D box in the LiDAR frame: centre (x, y, z) in metres, size (length, width, height)
    along the heading, its left and up, and yaw (radians, about z, 0 = facing +x)."""

    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float

    @property
    def bottom_center(self) -> np.ndarray:
        return np.array([self.center[0], self.center[1], self.center[2] - 0.5 * self.size[2]])

    def corners(self) -> np.ndarray:
        """(8, 3) corners: the bottom four counter-clockwise from front-right, then the top four."""
        lh, wh, hh = (0.5 * s for s in self.size)
        x = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * lh
        y = np.array([-1, 1, 1, -1, -1, 1, 1, -1]) * wh
        z = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * hh
        return np.stack([x, y, z], 1) @ M.rotation_z(self.yaw).T + np.asarray(self.center)

    def contains(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """bool (N,): points (N, 3+) inside the box grown by ``margin`` metres on every side."""
        local = (np.asarray(points, dtype=np.float64)[:, :3] - np.asarray(self.center)) @ M.rotation_z(self.yaw)
        half = 0.5 * np.asarray(self.size) + margin
        return np.all(np.abs(local) <= half, axis=1)

    def rotated(self, yaw: float) -> Box3D:
        """This box after turning the whole world by ``yaw`` about the origin's z axis."""
        c = M.rotation_z(yaw) @ np.asarray(self.center)
        return Box3D((float(c[0]), float(c[1]), float(c[2])), self.size, _wrap(self.yaw + yaw))

    def to_dict(self) -> dict[str, Any]:
        return {"center": list(self.center), "size": list(self.size), "yaw": self.yaw}


def _wrap(angle: float) -> float:
    """Angle wrapped to [-pi, pi)."""
    return float((angle + math.pi) % (2.0 * math.pi) - math.pi)


@dataclass(eq=False)
class SceneObject:
    """One object: a triangle mesh in the LiDAR frame with per-triangle materials.

    ``vertices`` float32 (V, 3) metres; ``triangles`` uint32 (T, 3); ``albedo`` float32 (T, 3) display
    RGB in [0, 1]; ``reflectivity`` float32 (T,) LiDAR reflectivity; ``gloss`` float32 (T,);
    ``pattern`` uint8 (T,) procedural pattern ids. ``label`` is the class (0 for background),
    ``instance`` the per-frame instance id (0 for background), ``box`` the ground truth of actors and
    ``kitti_type`` their KITTI type (Car, Van, Pedestrian, Cyclist).
    """

    kind: str
    vertices: np.ndarray
    triangles: np.ndarray
    albedo: np.ndarray
    reflectivity: np.ndarray
    gloss: np.ndarray
    pattern: np.ndarray
    label: int = UNKNOWN
    instance: int = 0
    box: Box3D | None = None
    kitti_type: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def num_triangles(self) -> int:
        return int(self.triangles.shape[0])

    def rotated(self, yaw: float) -> SceneObject:
        verts = (self.vertices.astype(np.float64) @ M.rotation_z(yaw).T).astype(np.float32)
        box = None if self.box is None else self.box.rotated(yaw)
        return SceneObject(
            self.kind, verts, self.triangles, self.albedo, self.reflectivity, self.gloss, self.pattern,
            self.label, self.instance, box, self.kitti_type, dict(self.attributes),
        )  # fmt: skip


def make_object(
    kind: str,
    parts: Mapping[str, M.Mesh],
    materials: Mapping[str, Material] | None = None,
    *,
    label: int = UNKNOWN,
    instance: int = 0,
    box: Box3D | None = None,
    kitti_type: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> SceneObject:
    """A scene object from role -> mesh parts; each role takes ``materials[role]``, else ``MATERIALS[role]``."""
    mats = dict(materials or {})
    verts, tris, alb, refl, gloss, pat = [], [], [], [], [], []
    offset = 0
    for role, (v, t) in parts.items():
        if not len(t):
            continue
        m = mats.get(role) or MATERIALS[role]
        verts.append(np.asarray(v, dtype=np.float64))
        tris.append(np.asarray(t, dtype=np.int64) + offset)
        offset += len(v)
        n = len(t)
        alb.append(np.broadcast_to(np.asarray(m.albedo, np.float32), (n, 3)))
        refl.append(np.full(n, m.reflectivity, np.float32))
        gloss.append(np.full(n, m.gloss, np.float32))
        pat.append(np.full(n, m.pattern, np.uint8))
    if not tris:
        raise ValueError(f"object {kind!r} has no triangles")
    return SceneObject(
        kind=kind,
        vertices=np.concatenate(verts).astype(np.float32),
        triangles=np.concatenate(tris).astype(np.uint32),
        albedo=np.ascontiguousarray(np.concatenate(alb), dtype=np.float32),
        reflectivity=np.concatenate(refl),
        gloss=np.concatenate(gloss),
        pattern=np.concatenate(pat),
        label=label,
        instance=instance,
        box=box,
        kitti_type=kitti_type,
        attributes=dict(attributes or {}),
    )


def place_parts(parts: Mapping[str, M.Mesh], yaw: float, position: np.ndarray) -> tuple[M.Parts, Box3D]:
    """Parts moved from their local frame to ``position`` (the footprint centre on the ground) turned by
    ``yaw``, and the tight box of the local mesh carried along."""
    lo, hi = M.mesh_bounds(list(parts.values()))
    size = hi - lo
    centre = M.rotation_z(yaw) @ (0.5 * (lo + hi)) + np.asarray(position, dtype=np.float64)
    box = Box3D(
        (float(centre[0]), float(centre[1]), float(centre[2])),
        (float(size[0]), float(size[1]), float(size[2])),
        _wrap(yaw),
    )
    return M.transform_parts(parts, yaw, position), box


# --- the scene ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hits:
    """First hits of a batch of rays: distance ``t`` (N,) in units of the ray direction's length (inf
    when missed), the hit object's index in ``Scene.objects`` (N,; -1 when missed), the hit triangle's
    index in the scene's concatenated triangle tables (N,; -1) and the unit face normal (N, 3)."""

    t: np.ndarray
    object_index: np.ndarray
    triangle: np.ndarray
    normal: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        return self.object_index >= 0


@dataclass(eq=False)
class Scene:
    """Objects of one frame, the road height ``ground_z`` (metres, LiDAR frame), the unit vector
    towards the sun, and the sampled layout parameters (``layout``, JSON-friendly)."""

    objects: list[SceneObject]
    ground_z: float
    sun_direction: np.ndarray
    layout: dict[str, Any] = field(default_factory=dict)
    _tables: dict[str, np.ndarray] | None = field(default=None, init=False, repr=False)
    _raycaster: Any = field(default=None, init=False, repr=False)

    @property
    def actors(self) -> list[SceneObject]:
        return [o for o in self.objects if o.label != UNKNOWN]

    @property
    def num_triangles(self) -> int:
        return sum(o.num_triangles for o in self.objects)

    def tables(self) -> dict[str, np.ndarray]:
        """Per-triangle material tables over all objects, with ``offset`` (n_objects + 1,): object i owns
        triangles offset[i]:offset[i+1]; ``label`` and ``instance`` are per object."""
        if self._tables is None:
            self._tables = {
                "offset": np.concatenate([[0], np.cumsum([o.num_triangles for o in self.objects])]).astype(np.int64),
                "albedo": np.concatenate([o.albedo for o in self.objects]),
                "reflectivity": np.concatenate([o.reflectivity for o in self.objects]),
                "gloss": np.concatenate([o.gloss for o in self.objects]),
                "pattern": np.concatenate([o.pattern for o in self.objects]),
                "label": np.array([o.label for o in self.objects], dtype=np.int64),
                "instance": np.array([o.instance for o in self.objects], dtype=np.int64),
            }
        return self._tables

    def raycaster(self) -> Any:
        """The open3d ``RaycastingScene`` of all objects (built once); geometry id i is object i."""
        if self._raycaster is None:
            self._raycaster = build_raycaster(self.objects)
        return self._raycaster

    def cast(self, rays: np.ndarray, nthreads: int = 0) -> Hits:
        """First hits of rays (N, 6) float32 (origin, direction; LiDAR frame) against the whole scene."""
        return cast_rays(self.raycaster(), rays, self.tables()["offset"], nthreads)


def build_raycaster(objects: list[SceneObject]) -> Any:
    """An open3d ``RaycastingScene`` holding ``objects`` in order (geometry id = list index)."""
    o3d = import_open3d()
    rc = o3d.t.geometry.RaycastingScene()
    for i, obj in enumerate(objects):
        gid = rc.add_triangles(
            o3d.core.Tensor(np.ascontiguousarray(obj.vertices, dtype=np.float32)),
            o3d.core.Tensor(np.ascontiguousarray(obj.triangles, dtype=np.uint32)),
        )
        if gid != i:  # pragma: no cover - open3d numbers geometries in order
            raise RuntimeError(f"open3d gave geometry id {gid} to object {i}")
    return rc


def cast_rays(raycaster: Any, rays: np.ndarray, offsets: np.ndarray, nthreads: int = 0) -> Hits:
    """First hits of ``rays`` (N, 6) against an open3d scene whose geometry i owns triangles from ``offsets[i]``."""
    o3d = import_open3d()
    rays = np.ascontiguousarray(rays, dtype=np.float32)
    res = raycaster.cast_rays(o3d.core.Tensor(rays), nthreads=nthreads)
    t = res["t_hit"].numpy().reshape(-1)
    gid = res["geometry_ids"].numpy().reshape(-1).astype(np.int64)
    prim = res["primitive_ids"].numpy().reshape(-1).astype(np.int64)
    normal = res["primitive_normals"].numpy().reshape(-1, 3)
    hit = np.isfinite(t) & (gid != int(o3d.t.geometry.RaycastingScene.INVALID_ID))
    obj = np.where(hit, gid, -1)
    tri = np.where(hit, offsets[np.where(hit, gid, 0)] + prim, -1)
    norm = np.linalg.norm(normal, axis=1, keepdims=True)
    normal = np.where(hit[:, None], normal / np.maximum(norm, 1e-12), 0.0).astype(np.float32)
    return Hits(np.where(hit, t, np.inf).astype(np.float32), obj, tri, normal)


# --- procedural layout --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Footprint:
    x: float
    y: float
    length: float
    width: float
    yaw: float

    def corners(self) -> np.ndarray:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        hl, hw = 0.5 * self.length, 0.5 * self.width
        local = np.array([[hl, hw], [hl, -hw], [-hl, -hw], [-hl, hw]])
        return local @ np.array([[c, s], [-s, c]]) + np.array([self.x, self.y])

    @property
    def radius(self) -> float:
        return 0.5 * math.hypot(self.length, self.width)


def _footprints_overlap(a: _Footprint, b: _Footprint) -> bool:
    """Separating-axis test of two oriented rectangles (after a bounding-circle check)."""
    if math.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius:
        return False
    ca, cb = a.corners(), b.corners()
    for f in (a, b):
        c, s = math.cos(f.yaw), math.sin(f.yaw)
        for axis in (np.array([c, s]), np.array([-s, c])):
            pa, pb = ca @ axis, cb @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


def _intervals(start: float, end: float, cuts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """[start, end] minus the cut intervals."""
    pieces = [(start, end)]
    for c0, c1 in cuts:
        nxt = []
        for a, b in pieces:
            if c1 <= a or c0 >= b:
                nxt.append((a, b))
                continue
            if c0 > a:
                nxt.append((a, c0))
            if c1 < b:
                nxt.append((c1, b))
        pieces = nxt
    return [(a, b) for a, b in pieces if b - a > 1e-6]


def _interval(spec: Any) -> tuple[float, float]:
    """A config interval (``[low, high]``, used as is, not sampled); a single number x means [x, x]."""
    if isinstance(spec, list | tuple):
        return float(spec[0]), float(spec[1])
    return float(spec), float(spec)


def _in_cuts(x: float, cuts: list[tuple[float, float]]) -> bool:
    return any(c0 <= x <= c1 for c0, c1 in cuts)


def _choice(rng: np.random.Generator, items: tuple[Any, ...]) -> Any:
    return items[int(rng.integers(len(items)))]


def _jitter_rgb(
    rng: np.random.Generator, rgb: tuple[float, float, float], amount: float = 0.06
) -> tuple[float, float, float]:
    f = 1.0 + rng.uniform(-amount, amount, 3)
    r, g, b = np.clip(np.asarray(rgb) * f, 0.0, 1.0)
    return float(r), float(g), float(b)


# per body type, uniform ranges: size (m), wheel radius and ground clearance (m); belt line as a
# fraction of the height; bonnet, boot and wheelbase as fractions of the length
_CAR_BODIES: dict[str, dict[str, tuple[float, float]]] = {
    "sedan": {"length": (4.2, 4.95), "width": (1.72, 1.88), "height": (1.38, 1.52), "wheel_radius": (0.3, 0.34),
              "clearance": (0.13, 0.18), "belt": (0.56, 0.62), "hood": (0.24, 0.3), "trunk": (0.16, 0.22),
              "wheelbase": (0.58, 0.62)},
    "hatchback": {"length": (3.6, 4.3), "width": (1.62, 1.8), "height": (1.42, 1.58), "wheel_radius": (0.28, 0.32),
                  "clearance": (0.13, 0.17), "belt": (0.56, 0.62), "hood": (0.22, 0.27), "trunk": (0.03, 0.06),
                  "wheelbase": (0.6, 0.64)},
    "suv": {"length": (4.3, 4.9), "width": (1.8, 1.95), "height": (1.62, 1.85), "wheel_radius": (0.34, 0.38),
            "clearance": (0.18, 0.24), "belt": (0.55, 0.6), "hood": (0.22, 0.26), "trunk": (0.03, 0.06),
            "wheelbase": (0.58, 0.62)},
    "van": {"length": (4.8, 5.6), "width": (1.9, 2.05), "height": (1.9, 2.4), "wheel_radius": (0.33, 0.36),
            "clearance": (0.16, 0.2), "belt": (0.45, 0.5), "hood": (0.14, 0.18), "trunk": (0.02, 0.03),
            "wheelbase": (0.58, 0.62)},
}  # fmt: skip


@dataclass
class _Layout:
    """Road-frame layout of one frame (metres; y positions relative to the sensor)."""

    x0: float
    x1: float
    lane_width: float
    fwd_lanes: list[float]
    bwd_lanes: list[float]
    centre: float
    median: float
    lanes_right: float
    lanes_left: float
    parking_right: bool
    parking_left: bool
    parking_width: float
    edge_right: float
    edge_left: float
    sidewalk: float
    kerb: float
    intersection: float | None
    cross_half_width: float
    crosswalk: tuple[float, float] | None

    @property
    def cross_cut(self) -> list[tuple[float, float]]:
        if self.intersection is None:
            return []
        return [(self.intersection - self.cross_half_width, self.intersection + self.cross_half_width)]


class _SceneBuilder:
    def __init__(self, config: Mapping[str, Any], rng: np.random.Generator) -> None:
        self.cfg = config
        self.rng = rng
        self.zg = -float(config["world"]["lidar_height_m"])
        self.objects: list[SceneObject] = []
        self.footprints: list[_Footprint] = []
        self.next_instance = 1

    def s(self, section: str, key: str) -> Any:
        return sample(self.rng, self.cfg[section][key])

    # -- helpers -------------------------------------------------------------------------------

    def add_background(
        self, kind: str, parts: Mapping[str, M.Mesh], materials: Mapping[str, Material] | None = None
    ) -> None:
        self.objects.append(make_object(kind, parts, materials))

    def free(self, fp: _Footprint) -> bool:
        return not any(_footprints_overlap(fp, other) for other in self.footprints)

    def add_actor(
        self,
        kind: str,
        parts: Mapping[str, M.Mesh],
        materials: Mapping[str, Material],
        label: int,
        kitti_type: str,
        position: np.ndarray,
        yaw: float,
        margin: float,
        attributes: Mapping[str, Any],
    ) -> bool:
        """Place an actor if its footprint (grown by ``margin``) is free; True when placed."""
        world_parts, box = place_parts(parts, yaw, position)
        fp = _Footprint(box.center[0], box.center[1], box.size[0] + 2 * margin, box.size[1] + 2 * margin, box.yaw)
        if not self.free(fp):
            return False
        self.footprints.append(fp)
        self.objects.append(
            make_object(
                kind, world_parts, materials, label=label, instance=self.next_instance, box=box,
                kitti_type=kitti_type, attributes=attributes,
            )
        )  # fmt: skip
        self.next_instance += 1
        return True

    # -- layout --------------------------------------------------------------------------------

    def layout(self) -> _Layout:
        r = self.rng
        x0, x1 = _interval(self.cfg["world"]["extent_m"])
        lw = self.s("road", "lane_width_m")
        nf = int(self.s("road", "lanes_forward"))
        nb = int(self.s("road", "lanes_backward"))
        median = self.s("road", "median_m")
        ego_lane = int(r.integers(nf))
        e = self.s("world", "ego_lateral_offset_m")
        yc = -e + median / 2 + (ego_lane + 0.5) * lw
        fwd = [yc - median / 2 - (i + 0.5) * lw for i in range(nf)]
        bwd = [yc + median / 2 + (j + 0.5) * lw for j in range(nb)]
        lanes_r, lanes_l = yc - median / 2 - nf * lw, yc + median / 2 + nb * lw
        p_park = float(self.cfg["road"]["parking_prob"])
        park_r, park_l = bool(r.random() < p_park), bool(r.random() < p_park)
        pw = self.s("road", "parking_width_m")
        shoulder = self.s("road", "shoulder_m")
        edge_r = lanes_r - (pw if park_r else 0.0) - shoulder
        edge_l = lanes_l + (pw if park_l else 0.0) + shoulder
        sw = self.s("road", "sidewalk_width_m")
        kerb = self.s("road", "kerb_height_m") if sw > 0 else 0.0
        has_int = bool(r.random() < float(self.cfg["road"]["intersection_prob"]))
        x_int = self.s("road", "intersection_x_m")
        cross_hw = lw
        has_cw = bool(r.random() < float(self.cfg["road"]["crosswalk_prob"]))
        cw_mid = float(r.uniform(12.0, 45.0))
        crosswalk = None
        if has_cw:
            c = x_int - cross_hw - 2.0 if has_int else cw_mid
            crosswalk = (c - 1.5, c + 1.5)
        return _Layout(
            x0, x1, lw, fwd, bwd, yc, median, lanes_r, lanes_l, park_r, park_l, pw, edge_r, edge_l, sw, kerb,
            x_int if has_int else None, cross_hw, crosswalk,
        )  # fmt: skip

    # -- static world --------------------------------------------------------------------------

    def ground_and_roads(self, L: _Layout) -> None:
        zg = self.zg
        name = str(self.cfg["world"]["terrain"])
        if name not in MATERIALS:
            raise SimConfigError(f"config world.terrain: unknown material {name!r}; use one of {', '.join(MATERIALS)}")
        terrain = MATERIALS[name]
        self.add_background(
            "terrain", {"terrain": M.quad(-600.0, 600.0, -600.0, 600.0, zg - 0.02)}, {"terrain": terrain}
        )
        roads = [M.quad(L.x0, L.x1, L.edge_right, L.edge_left, zg)]
        if L.intersection is not None:
            a, b = L.intersection - L.cross_half_width, L.intersection + L.cross_half_width
            roads += [M.quad(a, b, -300.0, L.edge_right, zg), M.quad(a, b, L.edge_left, 300.0, zg)]
        self.add_background("road", {"asphalt": M.merge(roads)})
        if L.sidewalk > 0:
            self.sidewalks(L)
        self.markings(L)

    def sidewalks(self, L: _Layout) -> None:
        zg, sw, kh = self.zg, L.sidewalk, L.kerb
        top, bottom = zg + kh, zg - 0.05
        h = top - bottom
        zc = 0.5 * (top + bottom)
        walks, kerbs = [], []
        for a, b in _intervals(L.x0, L.x1, L.cross_cut):
            for edge, sign in ((L.edge_right, -1.0), (L.edge_left, 1.0)):
                kerbs.append(M.box((b - a, 0.15, h), (0.5 * (a + b), edge + sign * 0.075, zc)))
                walks.append(
                    M.box((b - a, sw - 0.15, h), (0.5 * (a + b), edge + sign * (0.15 + 0.5 * (sw - 0.15)), zc))
                )
        if L.intersection is not None:
            far = 300.0
            for xa, sign_x in ((L.intersection - L.cross_half_width, -1.0), (L.intersection + L.cross_half_width, 1.0)):
                for y_in, sign_y in ((L.edge_right - sw, -1.0), (L.edge_left + sw, 1.0)):
                    ya, yb = sorted((y_in, sign_y * far))
                    kerbs.append(M.box((0.15, yb - ya, h), (xa + sign_x * 0.075, 0.5 * (ya + yb), zc)))
                    walks.append(
                        M.box((sw - 0.15, yb - ya, h), (xa + sign_x * (0.15 + 0.5 * (sw - 0.15)), 0.5 * (ya + yb), zc))
                    )
        self.add_background("sidewalk", {"sidewalk": M.merge(walks)})
        self.add_background("kerb", {"kerb": M.merge(kerbs)})

    def markings(self, L: _Layout) -> None:
        r = self.rng
        z = self.zg + 0.005
        dash, gap = float(self.s("road", "dash_m")), float(self.s("road", "dash_gap_m"))
        width = 0.12 if L.median == 0 else 0.18
        cuts = list(L.cross_cut)
        if L.crosswalk is not None:
            cuts.append((L.crosswalk[0] - 0.5, L.crosswalk[1] + 0.5))
        lines: list[tuple[float, bool]] = []  # (y, dashed)
        lines += [(L.centre - L.median / 2 - (i + 1) * L.lane_width, True) for i in range(len(L.fwd_lanes) - 1)]
        lines += [(L.centre + L.median / 2 + (j + 1) * L.lane_width, True) for j in range(len(L.bwd_lanes) - 1)]
        if L.median == 0:
            lines.append((L.centre, bool(r.random() < 0.6)))
        else:
            lines += [(L.centre - L.median / 2 + 0.25, False), (L.centre + L.median / 2 - 0.25, False)]
        if L.parking_right or L.median > 0:
            lines.append((L.lanes_right - 0.1, L.parking_right))
        if L.parking_left or L.median > 0:
            lines.append((L.lanes_left + 0.1, L.parking_left))
        quads = []
        for y, dashed in lines:
            for a, b in _intervals(L.x0, L.x1, cuts):
                if not dashed:
                    quads.append(M.quad(a, b, y - width / 2, y + width / 2, z))
                    continue
                x = a + float(r.uniform(0.0, dash + gap))
                while x < b:
                    quads.append(M.quad(x, min(x + dash, b), y - width / 2, y + width / 2, z))
                    x += dash + gap
        if L.crosswalk is not None:
            c0, c1 = L.crosswalk
            y = L.edge_right + 0.4
            while y + 0.5 < L.edge_left - 0.3:
                quads.append(M.quad(c0, c1, y, y + 0.5, z))
                y += 1.0
        if quads:
            self.add_background("markings", {"lane_paint": M.merge(quads)})

    def buildings(self, L: _Layout) -> None:
        cfg = self.cfg["buildings"]
        if not cfg["enabled"] or L.sidewalk <= 0:
            return
        r = self.rng
        cut = []
        if L.intersection is not None:
            cut = [
                (
                    L.intersection - L.cross_half_width - L.sidewalk - 1.0,
                    L.intersection + L.cross_half_width + L.sidewalk + 1.0,
                )
            ]
        rows: list[tuple[float, float, float, int, str]] = []  # (start, end, facade line, outward sign, axis)
        for edge, sign in ((L.edge_right, -1.0), (L.edge_left, 1.0)):
            line = edge + sign * (L.sidewalk + self.s("buildings", "setback_m"))
            rows += [(a, b, line, int(sign), "x") for a, b in _intervals(L.x0, L.x1, cut)]
        if L.intersection is not None:
            for xa, sign_x in ((L.intersection - L.cross_half_width, -1.0), (L.intersection + L.cross_half_width, 1.0)):
                line = xa + sign_x * (L.sidewalk + self.s("buildings", "setback_m"))
                rows.append((L.edge_right - L.sidewalk - 1.0, L.edge_right - 120.0, line, int(sign_x), "y"))
                rows.append((L.edge_left + L.sidewalk + 1.0, L.edge_left + 120.0, line, int(sign_x), "y"))
        for start, end, line, sign, axis in rows:
            lo, hi = min(start, end), max(start, end)
            pos = lo + float(r.uniform(0.0, 3.0))
            while pos < hi - 4.0:
                length = min(self.s("buildings", "length_m"), hi - pos)
                depth = self.s("buildings", "depth_m")
                height = self.s("buildings", "height_m")
                jitter = float(r.uniform(0.0, 0.6))
                near = line + sign * jitter
                far = near + sign * depth
                if axis == "x":
                    cx, cy, sx, sy = pos + length / 2, 0.5 * (near + far), length, depth
                else:
                    cx, cy, sx, sy = 0.5 * (near + far), pos + length / 2, depth, length
                parts = M.transform_parts(
                    M.building_mesh(sx, sy, height, bool(r.random() < 0.5)), 0.0, (cx, cy, self.zg)
                )
                colour = _jitter_rgb(r, _choice(r, FACADE_COLOURS))
                mats = {
                    "facade": MATERIALS["facade"].with_albedo(colour, float(r.uniform(0.3, 0.5))),
                    "roof": MATERIALS["roof"].with_albedo(_jitter_rgb(r, (0.35, 0.34, 0.33), 0.2)),
                }
                self.add_background("building", parts, mats)
                pos += length + 0.05
                if r.random() < float(cfg["gap_prob"]):
                    pos += self.s("buildings", "gap_m")

    def clutter(self, L: _Layout) -> None:
        r = self.rng
        cfg = self.cfg["clutter"]
        cuts = list(L.cross_cut)
        if L.crosswalk is not None:
            cuts.append((L.crosswalk[0] - 1.0, L.crosswalk[1] + 1.0))
        sides = ((L.edge_right, -1.0), (L.edge_left, 1.0))
        has_walk = L.sidewalk >= 1.5
        # trees along the kerb
        if has_walk:
            for edge, sign in sides:
                if r.random() >= float(cfg["tree_prob"]):
                    continue
                x = L.x0 + float(r.uniform(0.0, 6.0))
                while x < L.x1:
                    if not _in_cuts(x, cuts):
                        self.tree((x, edge + sign * 0.9, self.zg + L.kerb))
                    x += self.s("clutter", "tree_spacing_m")
        # street lights: at the kerb, or beyond the shoulder; on a wide median too
        for edge, sign in sides:
            x = L.x0 + float(r.uniform(0.0, 15.0))
            y = edge + sign * (0.5 if has_walk else 1.2)
            while x < L.x1:
                if not _in_cuts(x, cuts):
                    self.pole((x, y, self.zg + L.kerb), 0.0 if sign < 0 else math.pi, L)
                x += self.s("clutter", "pole_spacing_m")
        # signs facing the traffic of their side
        for _ in range(int(self.s("clutter", "signs"))):
            edge, sign = sides[int(r.integers(2))]
            x = float(r.uniform(L.x0 + 10, min(L.x1, 90.0)))
            if _in_cuts(x, cuts):
                continue
            pos = np.array([x, edge + sign * (0.4 if has_walk else 1.0), self.zg + L.kerb])
            colour = _choice(r, SIGN_COLOURS)
            parts = M.transform_parts(
                M.sign_mesh(float(r.uniform(2.0, 2.6)), float(r.uniform(0.5, 0.8)), bool(r.random() < 0.5)),
                math.pi if sign < 0 else 0.0,
                pos,
            )
            self.add_background("sign", parts, {"sign": MATERIALS["sign"].with_albedo(colour)})
            self.footprints.append(_Footprint(pos[0], pos[1], 0.5, 0.5, 0.0))
        # bins at the building side of the sidewalk
        if has_walk:
            for _ in range(int(self.s("clutter", "bins"))):
                edge, sign = sides[int(r.integers(2))]
                x = float(r.uniform(L.x0 + 10, min(L.x1, 90.0)))
                pos = np.array([x, edge + sign * (L.sidewalk - 0.5), self.zg + L.kerb])
                fp = _Footprint(pos[0], pos[1], 0.7, 0.7, 0.0)
                if _in_cuts(x, cuts) or not self.free(fp):
                    continue
                parts = M.transform_parts(
                    M.bin_mesh(float(r.uniform(0.45, 0.65)), float(r.uniform(0.8, 1.1))),
                    float(r.uniform(-0.3, 0.3)),
                    pos,
                )
                self.add_background(
                    "bin", parts, {"plastic": MATERIALS["plastic"].with_albedo(_choice(r, CLOTH_COLOURS))}
                )
                self.footprints.append(fp)
        # bushes beyond the sidewalk (or the verge)
        for _ in range(int(self.s("clutter", "bushes"))):
            edge, sign = sides[int(r.integers(2))]
            x = float(r.uniform(L.x0 + 5, min(L.x1, 100.0)))
            y = edge + sign * (L.sidewalk + float(r.uniform(0.3, 1.2)) if has_walk else float(r.uniform(2.0, 6.0)))
            z = self.zg + (L.kerb if has_walk else 0.0) - 0.05
            if _in_cuts(x, cuts):
                continue
            parts = M.bush_mesh(
                float(r.uniform(0.5, 1.3)), float(r.uniform(0.6, 1.4)), r.uniform(0.8, 1.2, M.icosphere_vertex_count(1))
            )
            self.add_background(
                "bush",
                M.transform_parts(parts, 0.0, (x, y, z)),
                {"foliage": MATERIALS["foliage"].with_albedo(_jitter_rgb(r, MATERIALS["foliage"].albedo, 0.2))},
            )
        # trees scattered on the verges
        for _ in range(int(self.s("clutter", "far_trees"))):
            edge, sign = sides[int(r.integers(2))]
            x = float(r.uniform(L.x0, L.x1))
            self.tree((x, edge + sign * float(r.uniform(6.0, 40.0)), self.zg - 0.02))
        # highway furniture
        length = L.x1 - L.x0
        xm = 0.5 * (L.x0 + L.x1)
        if self.cfg["road"]["guard_rails"]:
            for edge, sign in sides:
                parts = M.guard_rail_mesh(length)
                if sign > 0:
                    parts = M.transform_parts(parts, math.pi, (0.0, 0.0, 0.0))
                self.add_background("guard_rail", M.transform_parts(parts, 0.0, (xm, edge + sign * 0.6, self.zg)))
        if self.cfg["road"]["median_barrier"] and L.median >= 0.8:
            self.add_background(
                "barrier", M.transform_parts(M.jersey_barrier_mesh(length), 0.0, (xm, L.centre, self.zg))
            )

    def tree(self, pos: tuple[float, float, float]) -> None:
        r = self.rng
        crown = float(r.uniform(1.2, 2.8))
        trunk_h = max(float(r.uniform(2.2, 3.8)), 2.7 + 0.5 * crown)  # the crown clears vans under it
        parts = M.tree_mesh(
            trunk_h, float(r.uniform(0.1, 0.22)), crown, r.uniform(0.82, 1.15, M.icosphere_vertex_count(2))
        )
        mats = {"foliage": MATERIALS["foliage"].with_albedo(_jitter_rgb(r, MATERIALS["foliage"].albedo, 0.25))}
        self.add_background("tree", M.transform_parts(parts, float(r.uniform(0, 2 * math.pi)), pos), mats)
        self.footprints.append(_Footprint(pos[0], pos[1], 0.8, 0.8, 0.0))

    def pole(self, pos: tuple[float, float, float], yaw: float, L: _Layout) -> None:
        r = self.rng
        parts = M.street_light_mesh(float(r.uniform(6.0, 9.0)), float(r.uniform(1.0, 2.5)))
        # the arm points towards +y locally: turn it over the road
        self.add_background("pole", M.transform_parts(parts, yaw, pos))
        self.footprints.append(_Footprint(pos[0], pos[1], 0.5, 0.5, 0.0))

    # -- actors --------------------------------------------------------------------------------

    def car_shape(self) -> M.CarShape:
        r = self.rng
        c = self.cfg["cars"]
        u = r.random()
        pv, ps, ph = float(c["van_prob"]), float(c["suv_prob"]), float(c["hatchback_prob"])
        body = "van" if u < pv else "suv" if u < pv + ps else "hatchback" if u < pv + ps + ph else "sedan"
        spec = _CAR_BODIES[body]

        def draw(key: str) -> float:
            return float(r.uniform(*spec[key]))

        length, width, height = draw("length"), draw("width"), draw("height")
        return M.CarShape(
            length=length, width=width, height=height, body_type=body, wheel_radius=draw("wheel_radius"),
            clearance=draw("clearance"), belt=height * draw("belt"), hood=length * draw("hood"),
            trunk=length * draw("trunk"), wheelbase=length * draw("wheelbase"),
        )  # fmt: skip

    def car(
        self, x: float, y: float, yaw: float, parked: bool, shape: M.CarShape | None = None, margin: float | None = None
    ) -> bool:
        r = self.rng
        shape = shape or self.car_shape()
        weights = np.array([w for _, w in CAR_PAINTS])
        paint = _jitter_rgb(r, CAR_PAINTS[int(r.choice(len(CAR_PAINTS), p=weights / weights.sum()))][0], 0.04)
        mats = {"body": MATERIALS["body"].with_albedo(paint, paint_reflectivity(paint))}
        kitti = "Van" if shape.body_type == "van" else "Car"
        m = (0.25 if parked else 0.6) if margin is None else margin
        attrs = {"parked": parked, "body_type": shape.body_type}
        return self.add_actor("car", M.car_mesh(shape), mats, CAR, kitti, np.array([x, y, self.zg]), yaw, m, attrs)

    def traffic(self, L: _Layout) -> None:
        r = self.rng
        c = self.cfg["cars"]
        # moving cars, lane by lane
        for lanes, heading in ((L.fwd_lanes, 0.0), (L.bwd_lanes, math.pi)):
            for yl in lanes:
                if r.random() >= float(c["lane_fill_prob"]):
                    continue
                x = L.x0 + float(r.uniform(0.0, 20.0))
                while x < L.x1 - 5.0:
                    shape = self.car_shape()
                    cx = x + shape.length / 2
                    y = yl + float(np.clip(r.normal(0.0, 0.15), -0.35, 0.35))
                    yaw = heading + float(r.normal(0.0, 0.015))
                    self.car(cx, y, yaw, parked=False, shape=shape)
                    x += shape.length + self.s("cars", "moving_gap_m")
        # parked cars along the kerbs
        cuts = [(a - 5.0, b + 5.0) for a, b in L.cross_cut]
        if L.crosswalk is not None:
            cuts.append((L.crosswalk[0] - 3.0, L.crosswalk[1] + 3.0))
        for present, inner, sign in ((L.parking_right, L.lanes_right, -1.0), (L.parking_left, L.lanes_left, 1.0)):
            if not present:
                continue
            kerb_y = inner + sign * L.parking_width
            for a, b in _intervals(L.x0, L.x1, cuts):
                x = a + float(r.uniform(0.0, 3.0))
                while True:
                    shape = self.car_shape()
                    if x + shape.length > b:
                        break
                    if r.random() >= float(c["parked_skip_prob"]):
                        y = kerb_y - sign * (shape.width / 2 + float(r.uniform(0.15, 0.4)))
                        heading = 0.0 if sign < 0 else math.pi
                        if r.random() < 0.12:
                            heading = math.pi - heading
                        self.car(
                            x + shape.length / 2, y, heading + float(r.normal(0.0, 0.03)), parked=True, shape=shape
                        )
                    x += shape.length + self.s("cars", "parked_gap_m")
        # cross traffic
        if L.intersection is not None:
            for _ in range(int(self.s("cars", "cross_traffic"))):
                d = 1.0 if r.random() < 0.5 else -1.0
                xl = L.intersection + d * L.lane_width / 2
                if r.random() < 0.25:
                    y = float(r.uniform(L.edge_right, L.edge_left))
                elif r.random() < 0.5:
                    y = float(r.uniform(L.edge_right - 60.0, L.edge_right - 3.0))
                else:
                    y = float(r.uniform(L.edge_left + 3.0, L.edge_left + 60.0))
                self.car(xl + float(r.normal(0, 0.1)), y, d * math.pi / 2 + float(r.normal(0.0, 0.02)), parked=False)

    def person_shape(self, walking: bool) -> M.PedestrianShape:
        r = self.rng
        c = self.cfg["pedestrians"]
        child = r.random() < float(c["child_prob"])
        h = float(r.uniform(1.05, 1.4)) if child else float(np.clip(r.normal(1.72, 0.09), 1.5, 1.98))
        return M.PedestrianShape(
            height=h,
            shoulder_width=h * float(r.uniform(0.22, 0.26)),
            girth=float(r.uniform(0.9, 1.2)),
            stride=float(r.uniform(0.2, 0.42)) if walking else float(r.uniform(0.0, 0.05)),
            phase=float(r.uniform(0.0, 2 * math.pi)),
            arm_swing=float(r.uniform(0.4, 1.0)) if walking else 0.1,
        )

    def clothes(self) -> dict[str, Material]:
        r = self.rng
        return {
            "skin": MATERIALS["skin"].with_albedo(_choice(r, SKIN_TONES)),
            "hair": MATERIALS["hair"].with_albedo(_choice(r, HAIR_COLOURS)),
            "shirt": MATERIALS["shirt"].with_albedo(
                _jitter_rgb(r, _choice(r, CLOTH_COLOURS)), float(r.uniform(0.15, 0.55))
            ),
            "trousers": MATERIALS["trousers"].with_albedo(
                _jitter_rgb(r, _choice(r, CLOTH_COLOURS)), float(r.uniform(0.1, 0.4))
            ),
            "shoes": MATERIALS["shoes"],
        }

    def pedestrian(self, x: float, y: float, z: float, yaw: float, walking: bool, where: str) -> bool:
        parts = M.pedestrian_mesh(self.person_shape(walking))
        return self.add_actor(
            "pedestrian", parts, self.clothes(), PEDESTRIAN, "Pedestrian", np.array([x, y, z]), yaw, 0.15,
            {"walking": walking, "where": where},
        )  # fmt: skip

    def pedestrians(self, L: _Layout) -> None:
        r = self.rng
        c = self.cfg["pedestrians"]
        n = int(self.s("pedestrians", "count"))
        xr = _interval(c["x_range_m"])
        placed = 0
        crossing = L.crosswalk is not None and r.random() < float(c["crossing_prob"])
        n_cross = int(r.integers(1, 4)) if crossing else 0
        for _ in range(n_cross):
            if placed >= n:
                break
            c0, c1 = L.crosswalk  # type: ignore[misc]
            for _try in range(10):
                x, y = float(r.uniform(c0 + 0.4, c1 - 0.4)), float(r.uniform(L.edge_right + 0.5, L.edge_left - 0.5))
                yaw = (math.pi / 2 if r.random() < 0.5 else -math.pi / 2) + float(r.normal(0.0, 0.15))
                if self.pedestrian(x, y, self.zg, yaw, True, "crossing"):
                    placed += 1
                    break
        if L.sidewalk < 1.2:
            return
        cuts = list(L.cross_cut)
        tries = 0
        while placed < n and tries < 20 * max(n, 1):
            tries += 1
            edge, sign = ((L.edge_right, -1.0), (L.edge_left, 1.0))[int(r.integers(2))]
            x = float(r.uniform(*xr))
            if _in_cuts(x, cuts):
                continue
            y = edge + sign * float(r.uniform(0.55, L.sidewalk - 0.35))
            walking = r.random() >= float(c["standing_prob"])
            yaw = (
                (0.0 if r.random() < 0.5 else math.pi) + float(r.normal(0.0, 0.2))
                if walking
                else float(r.uniform(-math.pi, math.pi))
            )
            if not self.pedestrian(x, y, self.zg + L.kerb, yaw, walking, "sidewalk"):
                continue
            placed += 1
            if r.random() < float(c["group_prob"]):
                for _k in range(int(r.integers(1, 3))):
                    if placed >= n:
                        break
                    gx = x + float(r.uniform(-1.5, 1.5))
                    gy = float(
                        np.clip(
                            y + r.uniform(-0.9, 0.9),
                            min(edge, edge + sign * L.sidewalk) + 0.4,
                            max(edge, edge + sign * L.sidewalk) - 0.4,
                        )
                    )
                    if self.pedestrian(gx, gy, self.zg + L.kerb, yaw + float(r.normal(0.0, 0.2)), walking, "sidewalk"):
                        placed += 1

    def cyclists(self, L: _Layout) -> None:
        r = self.rng
        c = self.cfg["cyclists"]
        xr = _interval(c["x_range_m"])
        for _ in range(int(self.s("cyclists", "count"))):
            for _try in range(20):
                u = r.random()
                if u < 0.55:
                    x, y, yaw = float(r.uniform(*xr)), L.lanes_right + float(r.uniform(0.6, 1.1)), 0.0
                elif u < 0.85 or L.intersection is None:
                    x, y, yaw = float(r.uniform(*xr)), L.lanes_left - float(r.uniform(0.6, 1.1)), math.pi
                else:
                    d = 1.0 if r.random() < 0.5 else -1.0
                    x = L.intersection + d * (L.lane_width - 0.9)
                    y = float(r.uniform(L.edge_right - 30.0, L.edge_left + 30.0))
                    yaw = d * math.pi / 2
                shape = M.CyclistShape(
                    rider_height=float(np.clip(r.normal(1.76, 0.07), 1.55, 1.95)),
                    wheel_radius=float(r.uniform(0.31, 0.36)),
                    wheelbase=float(r.uniform(1.0, 1.12)),
                    crank=float(r.uniform(0.0, 2 * math.pi)),
                    lean=float(r.uniform(0.35, 0.75)),
                )
                mats = self.clothes()
                mats["frame"] = MATERIALS["frame"].with_albedo(_choice(r, CLOTH_COLOURS))
                yaw += float(r.normal(0.0, 0.04))
                if self.add_actor(
                    "cyclist", M.cyclist_mesh(shape), mats, CYCLIST, "Cyclist", np.array([x, y, self.zg]), yaw, 0.4, {}
                ):
                    break

    # -- all -----------------------------------------------------------------------------------

    def build(self) -> Scene:
        L = self.layout()
        # the ego car, and room in front of and behind it in its lane
        self.footprints.append(_Footprint(-0.4, 0.0, 4.8, 1.9, 0.0))
        self.footprints.append(_Footprint(-0.5, 0.0, 17.0, 1.0, 0.0))
        self.ground_and_roads(L)
        self.buildings(L)
        self.clutter(L)
        self.traffic(L)
        self.pedestrians(L)
        self.cyclists(L)
        ego_yaw = math.radians(self.s("world", "ego_yaw_deg"))
        elev = math.radians(self.s("world", "sun_elevation_deg"))
        azim = math.radians(self.s("world", "sun_azimuth_deg"))
        sun = np.array([math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev)])
        objects = [o.rotated(-ego_yaw) for o in self.objects]
        layout = {
            "lanes_forward": len(L.fwd_lanes),
            "lanes_backward": len(L.bwd_lanes),
            "lane_width_m": round(L.lane_width, 4),
            "parking": [L.parking_right, L.parking_left],
            "sidewalk_m": round(L.sidewalk, 4),
            "kerb_m": round(L.kerb, 4),
            "intersection_x_m": None if L.intersection is None else round(L.intersection, 3),
            "crosswalk": L.crosswalk is not None,
            "ego_yaw_deg": round(math.degrees(ego_yaw), 4),
        }
        return Scene(objects, self.zg, sun, layout)


def build_scene(config: Mapping[str, Any], rng: np.random.Generator) -> Scene:
    """A procedural scene from a full config (:func:`perception.sim.config.load_config`) and a generator."""
    return _SceneBuilder(config, rng).build()


def scene_from_objects(
    objects: list[SceneObject], ground_z: float = -1.73, sun_direction: np.ndarray | None = None
) -> Scene:
    """A scene of hand-made objects (tests, demos); the sun defaults to 45 deg up, behind-left."""
    sun = np.array([-0.5, 0.5, 0.7071]) if sun_direction is None else np.asarray(sun_direction, dtype=np.float64)
    return Scene(list(objects), float(ground_z), sun / np.linalg.norm(sun))


def ground_object(ground_z: float = -1.73, half_size: float = 200.0, material: str = "asphalt") -> SceneObject:
    """A flat ground square at ``ground_z`` (background)."""
    return make_object("road", {material: M.quad(-half_size, half_size, -half_size, half_size, ground_z)})


def car_object(
    x: float, y: float, yaw: float = 0.0, ground_z: float = -1.73, instance: int = 1, shape: M.CarShape | None = None,
    paint: tuple[float, float, float] = (0.62, 0.07, 0.06),
) -> SceneObject:  # fmt: skip
    """A single car standing on ``ground_z`` at (x, y) (LiDAR frame, metres) with heading ``yaw``."""
    parts, box = place_parts(M.car_mesh(shape or M.CarShape()), yaw, np.array([x, y, ground_z]))
    mats = {"body": MATERIALS["body"].with_albedo(paint, paint_reflectivity(paint))}
    return make_object("car", parts, mats, label=CAR, instance=instance, box=box, kitti_type="Car")


def wall_object(
    x: float, width: float = 40.0, height: float = 20.0, ground_z: float = -1.73, reflectivity: float = 0.5
) -> SceneObject:
    """A flat wall facing the sensor: the plane x = ``x`` (metres), spanning |y| <= width/2."""
    parts = {"concrete": M.box((0.3, width, height), (x + 0.15, 0.0, ground_z + height / 2 - 0.1))}
    return make_object("wall", parts, {"concrete": MATERIALS["concrete"].with_albedo((0.6, 0.6, 0.6), reflectivity)})
