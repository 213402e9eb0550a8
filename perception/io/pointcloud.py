"""Point cloud files: PCD (ascii, binary), PLY (ascii, binary little/big endian) and a dispatcher.

Every reader returns the project's point cloud contract: float32 (N, 4) x, y, z, intensity. The
intensity comes from a field named ``intensity``, ``i``, ``reflectance`` or ``scalar_intensity``;
without one it is 0. Values outside [0, 1] are kept as they are (scanners scale differently).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from perception.io.common import MalformedFileError, atomic_write_bytes, read_bytes
from perception.io.kitti import read_velodyne_bin

PathLike = str | os.PathLike[str]

INTENSITY_NAMES = ("intensity", "i", "reflectance", "scalar_intensity", "remission")

_PCD_TYPES = {
    ("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
    ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8",
}  # fmt: skip

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def _to_xyzi(path: PathLike, table: np.ndarray, names: list[str]) -> np.ndarray:
    lower = {n.lower(): n for n in names}
    missing = [axis for axis in "xyz" if axis not in lower]
    if missing:
        raise MalformedFileError(path, f"no {'/'.join(missing)} field (fields: {', '.join(names)})")
    out = np.zeros((table.shape[0], 4), dtype=np.float32)
    for k, axis in enumerate("xyz"):
        out[:, k] = table[lower[axis]]
    for name in INTENSITY_NAMES:
        if name in lower:
            out[:, 3] = table[lower[name]]
            break
    return out


# --- PCD --------------------------------------------------------------------------------------


def read_pcd(path: PathLike) -> np.ndarray:
    """A PCD v0.7 file with DATA ascii or binary (binary_compressed is refused with a clear error)."""
    data = read_bytes(path)
    header: dict[str, list[str]] = {}
    offset = 0
    while True:
        end = data.find(b"\n", offset)
        if end < 0:
            raise MalformedFileError(path, "PCD header ends before its DATA line")
        line = data[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            break
    try:
        names = header["FIELDS"]
        sizes = [int(s) for s in header["SIZE"]]
        types = [t.upper() for t in header["TYPE"]]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(names))]
        npoints = (
            int(header["POINTS"][0])
            if "POINTS" in header
            else int(header["WIDTH"][0]) * int(header.get("HEIGHT", ["1"])[0])
        )
    except (KeyError, ValueError, IndexError) as exc:
        raise MalformedFileError(path, f"bad PCD header ({exc})") from None
    if not (len(names) == len(sizes) == len(types) == len(counts)):
        raise MalformedFileError(path, "PCD header: FIELDS, SIZE, TYPE and COUNT differ in length")
    if npoints < 0:
        raise MalformedFileError(path, f"PCD header: negative point count {npoints}")
    fields = []
    for name, size, typ, count in zip(names, sizes, types, counts, strict=True):
        code = _PCD_TYPES.get((typ, size))
        if code is None:
            raise MalformedFileError(path, f"PCD field {name}: unsupported TYPE {typ} SIZE {size}")
        fields.append((name, "<" + code, (count,)) if count > 1 else (name, "<" + code))
    dtype = np.dtype(fields)
    mode = header["DATA"][0].lower() if header["DATA"] else ""
    if mode == "binary":
        body = data[offset:]
        need = npoints * dtype.itemsize
        if len(body) < need:
            raise MalformedFileError(
                path, f"truncated PCD: {npoints} points need {need} bytes of data, found {len(body)}"
            )
        table = np.frombuffer(body, dtype=dtype, count=npoints)
    elif mode == "ascii":
        rows = [r.split() for r in data[offset:].decode("ascii", errors="replace").splitlines() if r.strip()]
        ncols = sum(counts)
        if len(rows) < npoints:
            raise MalformedFileError(path, f"truncated PCD: header says {npoints} points, found {len(rows)}")
        try:
            flat = np.array(rows[:npoints], dtype=np.float64)
        except ValueError:
            raise MalformedFileError(path, "PCD ascii data: rows of unequal length or non-numbers") from None
        if npoints and flat.shape[1] != ncols:
            raise MalformedFileError(path, f"PCD ascii data: {flat.shape[1]} columns, header says {ncols}")
        table = np.zeros(npoints, dtype=[(n, "<f8") for n in names])
        col = 0
        for name, count in zip(names, counts, strict=True):
            if npoints:
                table[name] = flat[:, col]
            col += count
    else:
        raise MalformedFileError(path, f"PCD DATA {mode or '(none)'} is not supported (use ascii or binary)")
    return _to_xyzi(path, table, names)


def write_pcd(path: PathLike, points: np.ndarray, binary: bool = True) -> Path:
    """Write (N, 4) points as PCD v0.7 with fields x y z intensity (float32), atomically."""
    pts = _check_points(points)
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z intensity\n"
        "SIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
        f"WIDTH {len(pts)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(pts)}\n"
        f"DATA {'binary' if binary else 'ascii'}\n"
    )
    if binary:
        body = pts.astype("<f4").tobytes()
    else:
        body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in pts).encode("ascii")
    return atomic_write_bytes(path, header.encode("ascii") + body)


# --- PLY --------------------------------------------------------------------------------------


def read_ply(path: PathLike) -> np.ndarray:
    """The ``vertex`` element of a PLY file (ascii, binary_little_endian or binary_big_endian)."""
    data = read_bytes(path)
    if not data.startswith(b"ply"):
        raise MalformedFileError(path, "not a PLY file (no 'ply' magic)")
    end = data.find(b"end_header")
    if end < 0:
        raise MalformedFileError(path, "PLY header has no end_header")
    body_start = data.find(b"\n", end) + 1
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    fmt = ""
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for line in lines[1:]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        try:
            if parts[0] == "format":
                fmt = parts[1]
            elif parts[0] == "element":
                elements.append((parts[1], int(parts[2]), []))
            elif parts[0] == "property":
                if not elements:
                    raise MalformedFileError(path, "PLY property before any element")
                if parts[1] == "list":
                    elements[-1][2].append((parts[4], "list"))
                else:
                    code = _PLY_TYPES.get(parts[1])
                    if code is None:
                        raise MalformedFileError(path, f"PLY property type {parts[1]} is not supported")
                    elements[-1][2].append((parts[2], code))
        except (IndexError, ValueError):
            raise MalformedFileError(path, f"bad PLY header line {line!r}") from None
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise MalformedFileError(path, f"PLY format {fmt or '(none)'} is not supported")
    if not elements or elements[0][0] != "vertex":
        raise MalformedFileError(path, "PLY file must start with a vertex element")
    _, count, props = elements[0]
    if any(code == "list" for _, code in props):
        raise MalformedFileError(path, "PLY vertex element with list properties is not supported")
    names = [name for name, _ in props]
    if fmt == "ascii":
        rows = data[body_start:].decode("ascii", errors="replace").split("\n")
        rows = [r for r in rows if r.strip()][:count]
        if len(rows) < count:
            raise MalformedFileError(path, f"truncated PLY: header says {count} vertices, found {len(rows)}")
        try:
            flat = np.array([r.split()[: len(props)] for r in rows], dtype=np.float64).reshape(count, len(props))
        except ValueError:
            raise MalformedFileError(path, "PLY ascii vertices: rows of unequal length or non-numbers") from None
        table = np.zeros(count, dtype=[(n, "<f8") for n in names])
        for k, name in enumerate(names):
            table[name] = flat[:, k]
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(name, order + code) for name, code in props])
        need = count * dtype.itemsize
        if len(data) - body_start < need:
            raise MalformedFileError(
                path, f"truncated PLY: {count} vertices need {need} bytes, found {len(data) - body_start}"
            )
        table = np.frombuffer(data, dtype=dtype, count=count, offset=body_start)
    return _to_xyzi(path, table, names)


def write_ply(path: PathLike, points: np.ndarray, binary: bool = True) -> Path:
    """Write (N, 4) points as a PLY vertex element with x y z intensity (float32), atomically."""
    pts = _check_points(points)
    fmt = "binary_little_endian" if binary else "ascii"
    header = (
        f"ply\nformat {fmt} 1.0\nelement vertex {len(pts)}\nproperty float x\nproperty float y\n"
        "property float z\nproperty float intensity\nend_header\n"
    )
    if binary:
        body = pts.astype("<f4").tobytes()
    else:
        body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in pts).encode("ascii")
    return atomic_write_bytes(path, header.encode("ascii") + body)


def _check_points(points: np.ndarray) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"points must be (N, 4), got {arr.shape}")
    return arr


# --- dispatch ---------------------------------------------------------------------------------

POINT_CLOUD_SUFFIXES = (".bin", ".pcd", ".ply", ".npy")


def read_point_cloud(path: PathLike) -> np.ndarray:
    """Read a point cloud by suffix: KITTI ``.bin``, ``.pcd``, ``.ply``, or ``.npy`` holding (N, 3|4)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".bin":
        return read_velodyne_bin(path)
    if suffix == ".pcd":
        return read_pcd(path)
    if suffix == ".ply":
        return read_ply(path)
    if suffix == ".npy":
        from perception.io.squeezeseg import read_npy_array

        arr = read_npy_array(path)
        if arr.ndim != 2 or arr.shape[1] not in (3, 4) or arr.dtype.kind != "f":
            raise MalformedFileError(
                path, f"expected a float (N, 3) or (N, 4) point array, got {arr.dtype} {arr.shape}"
            )
        if arr.shape[1] == 3:
            arr = np.concatenate([arr, np.zeros((arr.shape[0], 1), arr.dtype)], axis=1)
        return arr.astype(np.float32)
    raise MalformedFileError(
        path, f"unknown point cloud format {suffix or '(no suffix)'}; use .bin, .pcd, .ply or .npy"
    )
