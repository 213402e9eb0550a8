"""Triangle-mesh builders for the synthetic world: pure numpy, no open3d.

Every builder returns a :data:`Mesh`, ``(vertices, triangles)``: float64 ``(V, 3)`` in metres and
int64 ``(T, 3)`` vertex indices. Object builders return a mapping ``role -> Mesh`` (``"body"``,
``"glass"``, ``"tyre"``, ...) so the world can give each part its own material.

Local frame of an object: x forward (the heading), y left, z up, metres; the footprint is centred on
the origin and the object stands on ``z = 0``. Winding order is not relied on: the renderers shade
both sides of every triangle.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Mesh = tuple[np.ndarray, np.ndarray]
Parts = dict[str, Mesh]

_EMPTY_V = np.zeros((0, 3))
_EMPTY_T = np.zeros((0, 3), dtype=np.int64)


# --- primitives ---------------------------------------------------------------------------------


def empty_mesh() -> Mesh:
    return _EMPTY_V.copy(), _EMPTY_T.copy()


def merge(meshes: Sequence[Mesh]) -> Mesh:
    """One mesh from several (vertex indices shifted)."""
    meshes = [m for m in meshes if len(m[1])]
    if not meshes:
        return empty_mesh()
    offsets = np.cumsum([0] + [len(v) for v, _ in meshes[:-1]])
    verts = np.concatenate([np.asarray(v, dtype=np.float64) for v, _ in meshes])
    tris = np.concatenate([np.asarray(t, dtype=np.int64) + o for (_, t), o in zip(meshes, offsets, strict=True)])
    return verts, tris


def merge_parts(parts: Sequence[Parts]) -> Parts:
    """Merge several role -> mesh mappings role by role."""
    roles: dict[str, list[Mesh]] = {}
    for p in parts:
        for role, mesh in p.items():
            roles.setdefault(role, []).append(mesh)
    return {role: merge(ms) for role, ms in roles.items()}


def rotation_z(yaw: float) -> np.ndarray:
    """3x3 rotation by ``yaw`` radians about z (counter-clockwise seen from above)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def transform(mesh: Mesh, yaw: float = 0.0, translation: Sequence[float] = (0.0, 0.0, 0.0)) -> Mesh:
    """Rotate a mesh by ``yaw`` about z, then translate it (metres)."""
    verts, tris = mesh
    return verts @ rotation_z(yaw).T + np.asarray(translation, dtype=np.float64), tris


def transform_parts(parts: Mapping[str, Mesh], yaw: float, translation: Sequence[float]) -> Parts:
    return {role: transform(mesh, yaw, translation) for role, mesh in parts.items()}


def mesh_bounds(meshes: Sequence[Mesh]) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned (min, max) corners over several meshes."""
    verts = np.concatenate([v for v, t in meshes if len(t)])
    return verts.min(axis=0), verts.max(axis=0)


# the 12 triangles of a hexahedron whose corners are numbered bottom 0-3, top 4-7 (same order around)
_HEX_TRIS = np.array(
    [
        [0, 2, 1], [0, 3, 2],  # bottom
        [4, 5, 6], [4, 6, 7],  # top
        [0, 1, 5], [0, 5, 4],
        [1, 2, 6], [1, 6, 5],
        [2, 3, 7], [2, 7, 6],
        [3, 0, 4], [3, 4, 7],
    ],
    dtype=np.int64,
)  # fmt: skip


def hexahedron(corners: np.ndarray) -> Mesh:
    """A closed six-faced solid from 8 corners: bottom 0-3 then top 4-7, listed in the same order around.

    Triangles 0-1 are the bottom face, 2-3 the top face, 4-11 the sides.
    """
    c = np.asarray(corners, dtype=np.float64)
    if c.shape != (8, 3):
        raise ValueError(f"a hexahedron needs 8 corners, got {c.shape}")
    return c, _HEX_TRIS.copy()


def box(size: Sequence[float], center: Sequence[float] = (0.0, 0.0, 0.0)) -> Mesh:
    """Axis-aligned box of ``size`` (x, y, z extents, metres) centred on ``center``."""
    hx, hy, hz = (0.5 * float(s) for s in size)
    sx = np.array([-1, 1, 1, -1, -1, 1, 1, -1]) * hx
    sy = np.array([-1, -1, 1, 1, -1, -1, 1, 1]) * hy
    sz = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * hz
    return hexahedron(np.stack([sx, sy, sz], axis=1) + np.asarray(center, dtype=np.float64))


def frustum_box(bottom: Sequence[float], top: Sequence[float], z0: float, z1: float) -> Mesh:
    """A tapered block: rectangle ``bottom`` (x0, x1, half width) at ``z0`` lofted to ``top`` at ``z1``."""
    bx0, bx1, bw = bottom
    tx0, tx1, tw = top
    corners = [
        [bx0, -bw, z0], [bx1, -bw, z0], [bx1, bw, z0], [bx0, bw, z0],
        [tx0, -tw, z1], [tx1, -tw, z1], [tx1, tw, z1], [tx0, tw, z1],
    ]  # fmt: skip
    return hexahedron(np.array(corners, dtype=np.float64))


def quad(x0: float, x1: float, y0: float, y1: float, z: float) -> Mesh:
    """A horizontal rectangle [x0, x1] x [y0, y1] at height ``z`` (two triangles)."""
    verts = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=np.float64)
    return verts, np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int64)


def prism(profile: np.ndarray, depth: float, axis: str = "y") -> Mesh:
    """Extrude a convex polygon, closed with fan-triangulated caps.

    ``profile`` (K, 2) lists the polygon's corners in order. With ``axis="y"`` they are (x, z) and the
    solid spans y in [-depth/2, depth/2]; with ``axis="x"`` they are (y, z) and it spans x.
    """
    prof = np.asarray(profile, dtype=np.float64)
    k = len(prof)
    if prof.ndim != 2 or prof.shape[1] != 2 or k < 3:
        raise ValueError("profile must be (K>=3, 2)")
    half = 0.5 * depth
    if axis == "y":
        a = np.stack([prof[:, 0], np.full(k, -half), prof[:, 1]], axis=1)
        b = np.stack([prof[:, 0], np.full(k, half), prof[:, 1]], axis=1)
    elif axis == "x":
        a = np.stack([np.full(k, -half), prof[:, 0], prof[:, 1]], axis=1)
        b = np.stack([np.full(k, half), prof[:, 0], prof[:, 1]], axis=1)
    else:
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    verts = np.concatenate([a, b])
    i = np.arange(k)
    j = (i + 1) % k
    sides = np.concatenate([np.stack([i, j, j + k], 1), np.stack([i, j + k, i + k], 1)])
    fan = np.arange(1, k - 1)
    caps = np.concatenate(
        [np.stack([np.zeros(k - 2, np.int64), fan + 1, fan], 1), np.stack([np.full(k - 2, k), fan + k, fan + k + 1], 1)]
    )
    return verts, np.concatenate([sides, caps]).astype(np.int64)


@functools.lru_cache(maxsize=32)
def _ring_unit(segments: int) -> tuple[np.ndarray, np.ndarray]:
    ang = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
    c, s = np.cos(ang), np.sin(ang)
    c.flags.writeable = False
    s.flags.writeable = False
    return c, s


@functools.lru_cache(maxsize=32)
def _cylinder_triangles(n: int) -> np.ndarray:
    i = np.arange(n)
    j = (i + 1) % n
    tris = np.concatenate(
        [
            np.stack([i, j, j + n], 1),
            np.stack([i, j + n, i + n], 1),
            np.stack([np.full(n, 2 * n), j, i], 1),
            np.stack([np.full(n, 2 * n + 1), i + n, j + n], 1),
        ]
    ).astype(np.int64)
    tris.flags.writeable = False
    return tris


_AXIS_ORDER = {"z": [0, 1, 2], "y": [0, 2, 1], "x": [2, 1, 0]}


def _orient(verts: np.ndarray, axis: str) -> np.ndarray:
    """Map a z-axis-aligned shape onto ``axis`` (x, y or z)."""
    if axis not in _AXIS_ORDER:
        raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
    return verts[:, _AXIS_ORDER[axis]]


def cylinder(
    radius: float,
    length: float,
    segments: int = 12,
    axis: str = "z",
    center: Sequence[float] = (0.0, 0.0, 0.0),
    radius_top: float | None = None,
) -> Mesh:
    """A closed cylinder (a cone frustum if ``radius_top`` differs) along ``axis``, centred on ``center``."""
    c, s = _ring_unit(segments)
    rt = radius if radius_top is None else radius_top
    h = 0.5 * length
    n = segments
    verts = np.empty((2 * n + 2, 3))
    verts[:n, 0], verts[:n, 1], verts[:n, 2] = radius * c, radius * s, -h
    verts[n : 2 * n, 0], verts[n : 2 * n, 1], verts[n : 2 * n, 2] = rt * c, rt * s, h
    verts[2 * n] = (0.0, 0.0, -h)
    verts[2 * n + 1] = (0.0, 0.0, h)
    return _orient(verts, axis) + np.asarray(center, dtype=np.float64), _cylinder_triangles(n).copy()


def torus(
    major: float,
    minor: float,
    n_major: int = 16,
    n_minor: int = 4,
    axis: str = "y",
    center: Sequence[float] = (0, 0, 0),
) -> Mesh:
    """A ring (bicycle tyre) of radius ``major`` and tube radius ``minor`` around ``axis``."""
    u = np.linspace(0.0, 2.0 * np.pi, n_major, endpoint=False)[:, None]
    v = np.linspace(0.0, 2.0 * np.pi, n_minor, endpoint=False)[None, :]
    r = major + minor * np.cos(v)
    verts = np.stack(np.broadcast_arrays(r * np.cos(u), r * np.sin(u), minor * np.sin(v) + 0 * u), -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n_major), np.arange(n_minor), indexing="ij")
    a = i * n_minor + j
    b = ((i + 1) % n_major) * n_minor + j
    c = ((i + 1) % n_major) * n_minor + (j + 1) % n_minor
    d = i * n_minor + (j + 1) % n_minor
    tris = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return _orient(verts, axis) + np.asarray(center, dtype=np.float64), tris.astype(np.int64)


def icosphere_vertex_count(subdivisions: int) -> int:
    return 10 * 4**subdivisions + 2


def icosphere(radius: float = 1.0, subdivisions: int = 1) -> Mesh:
    """A sphere from a subdivided icosahedron (42 vertices at 1 subdivision, 162 at 2), centred on the origin."""
    verts, tris = _unit_icosphere(subdivisions)
    return verts * radius, tris.copy()


@functools.lru_cache(maxsize=8)
def _unit_icosphere(subdivisions: int) -> Mesh:
    p = (1.0 + math.sqrt(5.0)) / 2.0
    verts = [[-1, p, 0], [1, p, 0], [-1, -p, 0], [1, -p, 0], [0, -1, p], [0, 1, p], [0, -1, -p], [0, 1, -p],
             [p, 0, -1], [p, 0, 1], [-p, 0, -1], [-p, 0, 1]]  # fmt: skip
    tris = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
            [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11],
            [6, 2, 10], [8, 6, 7], [9, 8, 1]]  # fmt: skip
    v = [np.array(x, dtype=np.float64) / np.linalg.norm(x) for x in verts]
    faces = tris
    for _ in range(subdivisions):
        faces = _subdivide(v, faces)
    verts_arr, tris_arr = np.array(v), np.array(faces, dtype=np.int64)
    verts_arr.flags.writeable = False
    tris_arr.flags.writeable = False
    return verts_arr, tris_arr


def _subdivide(v: list[np.ndarray], faces: list[list[int]]) -> list[list[int]]:
    """Split every triangle in four, appending the (normalised) edge midpoints to ``v``."""
    cache: dict[tuple[int, int], int] = {}

    def mid(a: int, b: int) -> int:
        key = (min(a, b), max(a, b))
        if key not in cache:
            m = v[a] + v[b]
            v.append(m / np.linalg.norm(m))
            cache[key] = len(v) - 1
        return cache[key]

    new = []
    for a, b, c in faces:
        ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
        new += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
    return new


def ellipsoid(radii: Sequence[float], center: Sequence[float], subdivisions: int = 1) -> Mesh:
    verts, tris = icosphere(1.0, subdivisions)
    return verts * np.asarray(radii, dtype=np.float64) + np.asarray(center, dtype=np.float64), tris


def limb(p0: Sequence[float], p1: Sequence[float], width: float, depth: float) -> Mesh:
    """A box from joint ``p0`` to joint ``p1`` with cross-section ``width`` (across, near y) x ``depth``."""
    a = np.asarray(p0, dtype=np.float64)
    b = np.asarray(p1, dtype=np.float64)
    axis = b - a
    length = float(np.linalg.norm(axis))
    if length < 1e-9:
        raise ValueError("limb joints coincide")
    axis /= length
    side = np.array([0.0, 1.0, 0.0]) - axis[1] * axis
    if np.linalg.norm(side) < 1e-6:
        side = np.array([1.0, 0.0, 0.0]) - axis[0] * axis
    side /= np.linalg.norm(side)
    third = np.cross(axis, side)
    hw, hd = 0.5 * width, 0.5 * depth
    ring = [(-hw, -hd), (hw, -hd), (hw, hd), (-hw, hd)]
    corners = [a + s * side + t * third for s, t in ring] + [b + s * side + t * third for s, t in ring]
    return hexahedron(np.array(corners))


def two_link(base: np.ndarray, target: np.ndarray, a: float, b: float, bend: np.ndarray) -> np.ndarray:
    """The middle joint of a two-segment chain (hip-knee-foot) of lengths ``a``, ``b`` reaching ``target``.

    The chain bends towards ``bend`` (a direction); a target out of reach is pulled in.
    """
    d = target - base
    dist = float(np.linalg.norm(d))
    dist = min(max(dist, abs(a - b) + 1e-3), a + b - 1e-3)
    u = d / max(float(np.linalg.norm(d)), 1e-9)
    x = (a * a - b * b + dist * dist) / (2 * dist)
    h = math.sqrt(max(a * a - x * x, 0.0))
    perp = bend - np.dot(bend, u) * u
    perp /= max(float(np.linalg.norm(perp)), 1e-9)
    return base + x * u + h * perp


# --- object shapes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CarShape:
    """Dimensions of a car (metres).

    ``body_type`` is ``sedan``, ``hatchback``, ``suv`` or ``van``; ``belt`` is the height of the
    window line, ``hood``/``trunk`` the lengths of bonnet and boot in front of and behind the cabin.
    """

    length: float = 4.4
    width: float = 1.8
    height: float = 1.5
    body_type: str = "sedan"
    wheel_radius: float = 0.32
    clearance: float = 0.16
    belt: float = 0.85
    hood: float = 1.1
    trunk: float = 0.8
    wheelbase: float = 2.65


def car_mesh(shape: CarShape) -> Parts:
    """A car: a chamfered lower body, a tapered cabin (glass sides, painted roof), four wheels with rims,
    lamps and number plates. Roles: body, glass, tyre, rim, headlight, taillight, plate."""
    L, W, H = shape.length, shape.width, shape.height
    cl, belt = shape.clearance, shape.belt
    hl = L / 2
    front_top = belt - 0.12 if shape.body_type != "van" else belt
    profile = np.array(
        [
            [-hl + 0.15, cl], [hl - 0.22, cl], [hl, cl + 0.2], [hl, front_top],
            [hl - 0.35, belt], [-hl + 0.25, belt], [-hl, belt - 0.1], [-hl, cl + 0.18],
        ]
    )  # fmt: skip
    body = prism(profile, W)
    # cabin: windshield base behind the bonnet, rear window above the boot; narrower at the roof
    x_front_base = hl - shape.hood
    x_rear_base = -hl + shape.trunk
    rake = 0.45 * (H - belt) if shape.body_type != "van" else 0.25 * (H - belt)
    x_front_top = x_front_base - rake * 1.6
    x_rear_top = x_rear_base + (0.55 * (H - belt) if shape.body_type == "sedan" else 0.08)
    hw_base = 0.5 * W - 0.04
    hw_top = 0.5 * W - 0.16
    roof_z = H - 0.03
    cabin_v, cabin_t = frustum_box(
        (x_rear_base, x_front_base, hw_base), (x_rear_top, x_front_top, hw_top), belt, roof_z
    )
    glass = (cabin_v, cabin_t[4:])
    roof_lid = frustum_box(
        (x_rear_top + 0.02, x_front_top - 0.02, hw_top - 0.01), (x_rear_top + 0.1, x_front_top - 0.1, hw_top - 0.06),
        roof_z - 0.005, H,
    )  # fmt: skip
    r = shape.wheel_radius
    tyre_w = 0.21
    y_wheel = 0.5 * W - 0.5 * tyre_w - 0.015
    axle_front = 0.5 * shape.wheelbase + 0.05 * (shape.hood - shape.trunk)
    axle_rear = axle_front - shape.wheelbase
    tyres, rims = [], []
    for ax in (axle_front, axle_rear):
        for side in (-1.0, 1.0):
            tyres.append(cylinder(r, tyre_w, 16, "y", (ax, side * y_wheel, r)))  # a vertex at the bottom
            rims.append(cylinder(0.6 * r, tyre_w + 0.01, 10, "y", (ax, side * y_wheel, r)))
    lamp_z = 0.5 * (cl + 0.2 + front_top)
    head = [box((0.04, 0.32, 0.12), (hl - 0.015, s * (0.5 * W - 0.25), lamp_z)) for s in (-1, 1)]
    tail = [box((0.04, 0.3, 0.12), (-hl + 0.015, s * (0.5 * W - 0.22), belt - 0.2)) for s in (-1, 1)]
    plates = [
        box((0.03, 0.52, 0.12), (hl - 0.005, 0.0, cl + 0.24)),
        box((0.03, 0.52, 0.12), (-hl + 0.005, 0.0, belt - 0.3)),
    ]
    return {
        "body": merge([body, (cabin_v, cabin_t[2:4]), roof_lid]),
        "glass": glass,
        "tyre": merge(tyres),
        "rim": merge(rims),
        "headlight": merge(head),
        "taillight": merge(tail),
        "plate": merge(plates),
    }


@dataclass(frozen=True)
class PedestrianShape:
    """A person (metres, radians): ``stride`` is the leg swing amplitude, ``phase`` the gait phase
    (0 both legs together), ``arm_swing`` the arm amplitude relative to the legs."""

    height: float = 1.75
    shoulder_width: float = 0.42
    girth: float = 1.0
    stride: float = 0.35
    phase: float = 1.2
    arm_swing: float = 0.8


def pedestrian_mesh(shape: PedestrianShape) -> Parts:
    """A walking (or standing) person: legs with knees, feet, a tapered torso, arms with elbows, neck and
    head. Roles: skin, hair, shirt, trousers, shoes."""
    H, g = shape.height, shape.girth
    s = H / 1.75
    hip_z = 0.52 * H
    thigh, shin = 0.245 * H, 0.245 * H
    swing = shape.stride * math.sin(shape.phase)
    legs, feet = [], []
    for side, sign in ((-1.0, 1.0), (1.0, -1.0)):
        a = sign * swing
        hip = np.array([0.0, side * 0.09 * s * g, hip_z])
        foot_x = math.sin(a) * (thigh + shin) * 0.97
        foot = np.array([foot_x, side * 0.1 * s * g, 0.06 * s])
        knee = two_link(hip, foot, thigh, shin, np.array([1.0, 0.0, 0.0]))  # knees bend forward
        legs.append(limb(hip, knee, 0.15 * s * g, 0.16 * s * g))
        legs.append(limb(knee, foot, 0.11 * s * g, 0.12 * s * g))
        feet.append(box((0.26 * s, 0.1 * s, 0.08 * s), (foot_x + 0.05 * s, side * 0.1 * s * g, 0.04 * s)))
    shoulder_z = 0.815 * H
    sw = 0.5 * shape.shoulder_width * g
    torso = frustum_box(
        (-0.1 * s * g, 0.1 * s * g, 0.17 * s * g), (-0.11 * s * g, 0.1 * s * g, sw - 0.05), hip_z - 0.06, shoulder_z
    )
    neck = cylinder(0.05 * s, 0.08 * H, 6, "z", (0.0, 0.0, shoulder_z + 0.03 * H))
    head_r = 0.066 * H
    head_c = (0.01, 0.0, H - 1.12 * head_r)
    head_v, head_t = ellipsoid((0.95 * head_r, 0.85 * head_r, 1.12 * head_r), head_c, 1)
    top = head_v[head_t].mean(axis=1)[:, 2] > head_c[2] + 0.2 * head_r
    back = head_v[head_t].mean(axis=1)[:, 0] < head_c[0] - 0.3 * head_r
    hair_mask = top | back
    arms_upper, hands = [], []
    upper, fore = 0.19 * H, 0.16 * H
    for side, sign in ((-1.0, -1.0), (1.0, 1.0)):
        a = sign * swing * shape.arm_swing
        sh = np.array([0.0, side * (sw + 0.02), shoulder_z - 0.02])
        elbow = sh + upper * np.array([math.sin(a), 0.02 * side, -math.cos(a)])
        fa = a + 0.25 + max(a, 0.0) * 0.6
        hand = elbow + fore * np.array([math.sin(fa), 0.0, -math.cos(fa)])
        arms_upper.append(limb(sh, elbow, 0.095 * s * g, 0.1 * s * g))
        arms_upper.append(limb(elbow, hand, 0.075 * s * g, 0.08 * s * g))
        hands.append(box((0.08 * s, 0.05 * s, 0.09 * s), hand - np.array([0.0, 0.0, 0.04 * s])))
    return {
        "skin": merge([neck, (head_v, head_t[~hair_mask]), *hands]),
        "hair": (head_v, head_t[hair_mask]),
        "shirt": merge([torso, *arms_upper]),
        "trousers": merge(legs),
        "shoes": merge(feet),
    }


@dataclass(frozen=True)
class CyclistShape:
    """A rider on a bicycle (metres, radians): ``crank`` is the pedal angle, ``lean`` the rider's
    forward lean of the torso from vertical."""

    rider_height: float = 1.75
    wheel_radius: float = 0.34
    wheelbase: float = 1.05
    crank: float = 0.6
    lean: float = 0.55


def cyclist_mesh(shape: CyclistShape) -> Parts:
    """A bicycle (two tyres, frame tubes, fork, handlebar, saddle) and a seated, pedalling rider.
    Roles: tyre, frame, skin, hair, shirt, trousers, shoes."""
    r = shape.wheel_radius
    s = shape.rider_height / 1.75
    rear = np.array([-0.5 * shape.wheelbase, 0.0, r])
    front = np.array([0.5 * shape.wheelbase, 0.0, r])
    bb = np.array([rear[0] + 0.42, 0.0, r - 0.05])
    seat = np.array([bb[0] - 0.2 * s, 0.0, bb[2] + 0.58 * s])
    head_tube = np.array([front[0] - 0.2, 0.0, r + 0.5 * s])
    bar = head_tube + np.array([-0.08, 0.0, 0.12])
    tube = 0.04
    frame = [
        limb(rear, bb, tube, tube), limb(bb, seat, tube, tube), limb(seat, rear, tube, tube),
        limb(bb, head_tube, tube * 1.3, tube * 1.3), limb(seat - np.array([0, 0, 0.05]), head_tube, tube, tube),
        limb(head_tube, front, tube, tube), limb(head_tube, bar, tube, tube),
        box((0.05, 0.58, 0.035), bar), box((0.26, 0.12, 0.05), seat + np.array([0.0, 0.0, 0.04])),
    ]  # fmt: skip
    # 20 segments put a vertex at the bottom: the tyres touch z = 0
    tyres = [torus(r - 0.022, 0.022, 20, 4, "y", rear), torus(r - 0.022, 0.022, 20, 4, "y", front)]
    hubs = [cylinder(0.05, 0.1, 6, "y", rear), cylinder(0.05, 0.1, 6, "y", front)]
    # rider
    hip = seat + np.array([-0.02, 0.0, 0.1])
    torso_len = 0.3 * shape.rider_height
    shoulder = hip + torso_len * np.array([math.sin(shape.lean), 0.0, math.cos(shape.lean)])
    legs, shoes = [], []
    crank_len = 0.17
    for side, phase in ((-1.0, 0.0), (1.0, math.pi)):
        ang = shape.crank + phase
        pedal = bb + np.array([crank_len * math.cos(ang), side * 0.13, -crank_len * math.sin(ang)])
        hip_j = hip + np.array([0.0, side * 0.1 * s, 0.0])
        knee = two_link(hip_j, pedal, 0.245 * shape.rider_height, 0.25 * shape.rider_height, np.array([1.0, 0.0, 0.4]))
        legs += [limb(hip_j, knee, 0.15 * s, 0.16 * s), limb(knee, pedal, 0.11 * s, 0.12 * s)]
        shoes.append(box((0.25 * s, 0.1 * s, 0.08 * s), pedal + np.array([0.03, 0.0, 0.02])))
        frame.append(limb(bb, pedal - np.array([0.0, side * 0.02, 0.0]), 0.025, 0.025))
    sw = 0.2 * s
    torso = limb(hip, shoulder, 0.36 * s, 0.22 * s)
    arms = []
    hand_skin = []
    for side in (-1.0, 1.0):
        sh = shoulder + np.array([0.0, side * sw, -0.03])
        hand = bar + np.array([0.0, side * 0.24, 0.02])
        elbow = two_link(
            sh, hand, 0.19 * shape.rider_height, 0.17 * shape.rider_height, np.array([-0.3, side * 0.3, -1.0])
        )
        arms += [limb(sh, elbow, 0.095 * s, 0.1 * s), limb(elbow, hand, 0.075 * s, 0.08 * s)]
        hand_skin.append(box((0.08, 0.06, 0.06), hand))
    neck_dir = (shoulder - hip) / np.linalg.norm(shoulder - hip)
    head_r = 0.066 * shape.rider_height
    head_c = shoulder + neck_dir * 0.08 * s + np.array([0.06, 0.0, head_r * 1.1])
    head_v, head_t = ellipsoid((0.95 * head_r, 0.85 * head_r, 1.12 * head_r), head_c, 1)
    cent = head_v[head_t].mean(axis=1)
    hair = (cent[:, 2] > head_c[2] + 0.1 * head_r) | (cent[:, 0] < head_c[0] - 0.3 * head_r)
    neck = limb(shoulder, shoulder + neck_dir * 0.12 * s + np.array([0.03, 0, 0]), 0.1 * s, 0.1 * s)
    return {
        "tyre": merge(tyres),
        "frame": merge(frame + hubs),
        "skin": merge([(head_v, head_t[~hair]), neck, *hand_skin]),
        "hair": (head_v, head_t[hair]),
        "shirt": merge([torso, *arms]),
        "trousers": merge(legs),
        "shoes": merge(shoes),
    }


# --- background objects -------------------------------------------------------------------------


def tree_mesh(trunk_height: float, trunk_radius: float, crown_radius: float, crown_noise: np.ndarray) -> Parts:
    """A tree: a tapered trunk and a lumpy crown (an icosphere of 2 subdivisions, per-vertex radius
    factors ``crown_noise`` of shape (162,)). Roles: trunk, foliage."""
    trunk = cylinder(
        trunk_radius, trunk_height + 0.3, 8, "z", (0.0, 0.0, 0.5 * trunk_height - 0.15), 0.7 * trunk_radius
    )
    verts, tris = icosphere(1.0, 2)
    noise = np.asarray(crown_noise, dtype=np.float64)
    if noise.shape != (len(verts),):
        raise ValueError(f"crown_noise must have shape ({len(verts)},), got {noise.shape}")
    verts = verts * noise[:, None] * np.array([crown_radius, crown_radius, 1.15 * crown_radius])
    verts[:, 2] += trunk_height + 0.85 * crown_radius
    return {"trunk": trunk, "foliage": (verts, tris)}


def bush_mesh(radius: float, height: float, noise: np.ndarray) -> Parts:
    """A low shrub: a flattened lumpy icosphere (1 subdivision, ``noise`` of shape (42,)). Role: foliage."""
    verts, tris = icosphere(1.0, 1)
    verts = verts * np.asarray(noise, dtype=np.float64)[:, None] * np.array([radius, radius, 0.5 * height])
    verts[:, 2] += 0.45 * height
    return {"foliage": (verts, tris)}


def street_light_mesh(height: float, arm: float) -> Parts:
    """A lamp post with an arm reaching over the road towards +y. Roles: pole, lamp."""
    pole = cylinder(0.09, height, 8, "z", (0.0, 0.0, 0.5 * height), 0.06)
    arm_m = limb((0.0, 0.0, height - 0.2), (0.0, arm, height + 0.1), 0.07, 0.07)
    lamp = box((0.25, 0.5, 0.1), (0.0, arm, height + 0.02))
    return {"pole": merge([pole, arm_m]), "lamp": lamp}


def sign_mesh(height: float, plate: float, round_plate: bool) -> Parts:
    """A traffic sign facing +x: a thin post and a round or square plate. Roles: pole, sign."""
    post = cylinder(0.04, height, 6, "z", (0.0, 0.0, 0.5 * height))
    if round_plate:
        face = cylinder(0.5 * plate, 0.03, 12, "x", (0.05, 0.0, height))
    else:
        face = box((0.03, plate, plate), (0.05, 0.0, height))
    return {"pole": post, "sign": face}


def bin_mesh(width: float, height: float) -> Parts:
    """A rubbish bin. Role: plastic."""
    return {
        "plastic": merge(
            [
                box((width, width, height), (0.0, 0.0, 0.5 * height)),
                box((width + 0.04, width + 0.04, 0.05), (0.0, 0.0, height)),
            ]
        )
    }


def building_mesh(length: float, depth: float, height: float, ledge: bool) -> Parts:
    """A building block: length along x, depth along y (the facade at y = +depth/2 faces +y), from
    z = -0.1 to ``height``; an optional roof ledge. Roles: facade, roof."""
    main = box((length, depth, height + 0.1), (0.0, 0.0, 0.5 * (height - 0.1)))
    parts = {"facade": main}
    if ledge:
        parts["roof"] = box((length + 0.3, depth + 0.3, 0.35), (0.0, 0.0, height + 0.1))
    return parts


def guard_rail_mesh(length: float, post_spacing: float = 4.0) -> Parts:
    """A steel guard rail along x: a beam at 0.5-0.8 m on posts. Role: metal."""
    beam = box((length, 0.08, 0.32), (0.0, 0.0, 0.62))
    n = max(int(length // post_spacing), 1)
    xs = (np.arange(n + 1) - n / 2) * (length / n)
    posts = [box((0.1, 0.1, 0.7), (x, -0.1, 0.35)) for x in xs]
    return {"metal": merge([beam, *posts])}


def jersey_barrier_mesh(length: float) -> Parts:
    """A concrete median barrier along x (the New Jersey profile, 0.81 m high). Role: concrete."""
    profile = np.array(
        [
            [-0.3, -0.05],
            [0.3, -0.05],
            [0.3, 0.08],
            [0.16, 0.33],
            [0.08, 0.81],
            [-0.08, 0.81],
            [-0.16, 0.33],
            [-0.3, 0.08],
        ]
    )
    return {"concrete": prism(profile, length, axis="x")}
