"""Synthetic world: mesh builders, scene layout, LiDAR and camera simulation, KITTI-layout datasets.

Tests that ray cast need open3d (the ``[train]`` extra) and skip without it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from perception.io import read_calib, read_image, read_label, read_squeezeseg_npy, read_velodyne_bin
from perception.io.kitti import box_corners_rect
from perception.io.labels import read_point_labels_and_instances
from perception.lidar.sensors import SENSORS
from perception.sim import meshes as M
from perception.sim.config import PRESETS, SimConfigError, load_config
from perception.sim.world import CAR, CYCLIST, PEDESTRIAN, UNKNOWN, Box3D, build_scene

REPO = Path(__file__).resolve().parents[1]
SEED = 7
LAYOUT = ("velodyne", "image_2", "label_2", "calib", "labels", "squeezeseg")


def needs_open3d() -> None:
    pytest.importorskip("open3d", reason="ray casting needs open3d (the [train] extra)")


def _check_mesh(mesh: M.Mesh) -> None:
    verts, tris = mesh
    assert verts.ndim == 2 and verts.shape[1] == 3 and np.all(np.isfinite(verts))
    assert tris.ndim == 2 and tris.shape[1] == 3 and tris.dtype.kind == "i"
    assert tris.min() >= 0 and tris.max() < len(verts)
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    assert np.all(np.linalg.norm(np.cross(b - a, c - a), axis=1) > 1e-9), "degenerate triangles"


# --- pure numpy: meshes, configs, layout --------------------------------------------------------


def test_primitive_and_object_meshes_are_valid():
    prims = [
        M.box((1, 2, 3)), M.cylinder(0.3, 0.2, 12, "y"), M.torus(0.3, 0.02), M.icosphere(1.0, 2),
        M.limb((0, 0, 1), (0.2, 0.1, 0.3), 0.1, 0.12), M.prism(np.array([[0, 0], [1, 0], [1, 1], [0, 1.2]]), 2.0),
    ]  # fmt: skip
    for mesh in prims:
        _check_mesh(mesh)
    rng = np.random.default_rng(0)
    shapes = [
        M.car_mesh(M.CarShape()), M.car_mesh(M.CarShape(5.2, 2.0, 2.2, "van", 0.35, 0.18, 1.0, 0.8, 0.1, 3.1)),
        M.pedestrian_mesh(M.PedestrianShape()), M.cyclist_mesh(M.CyclistShape()),
        M.tree_mesh(3.0, 0.2, 2.0, rng.uniform(0.9, 1.1, 162)), M.street_light_mesh(8.0, 2.0),
        M.guard_rail_mesh(40.0), M.jersey_barrier_mesh(30.0), M.building_mesh(10, 8, 12, True),
    ]  # fmt: skip
    for parts in shapes:
        for mesh in parts.values():
            _check_mesh(mesh)


def test_car_mesh_has_cabin_wheels_and_the_asked_size():
    shape = M.CarShape(length=4.5, width=1.8, height=1.5)
    parts = M.car_mesh(shape)
    assert {"body", "glass", "tyre", "rim", "headlight", "taillight", "plate"} <= set(parts)
    lo, hi = M.mesh_bounds(list(parts.values()))
    np.testing.assert_allclose(hi - lo, [4.5, 1.8, 1.5], atol=0.03)
    assert lo[2] == pytest.approx(0.0, abs=1e-9)  # the tyres stand on the ground
    assert len(parts["tyre"][1]) >= 4 * 20  # four round wheels, not boxes
    assert parts["glass"][0][:, 2].min() == pytest.approx(shape.belt)  # the cabin sits on the body


def test_pedestrian_and_cyclist_meshes_have_articulated_parts():
    for h in (1.2, 1.75, 1.95):
        parts = M.pedestrian_mesh(M.PedestrianShape(height=h))
        lo, hi = M.mesh_bounds(list(parts.values()))
        assert hi[2] == pytest.approx(h, abs=0.03) and lo[2] >= -1e-9
        assert {"skin", "hair", "shirt", "trousers", "shoes"} <= set(parts)
        assert 0.3 < hi[1] - lo[1] < 0.8  # shoulders and arms
    parts = M.cyclist_mesh(M.CyclistShape())
    lo, hi = M.mesh_bounds(list(parts.values()))
    assert 1.5 < hi[0] - lo[0] < 2.0 and 1.5 < hi[2] < 1.95
    assert {"tyre", "frame", "shirt", "trousers"} <= set(parts)


def test_yaml_configs_equal_the_presets_and_bad_keys_fail(tmp_path):
    for name in PRESETS:
        assert load_config(REPO / "sim_data" / "configs" / f"{name}.yaml") == load_config(name)
    assert load_config({"base": "highway", "cars": {"van_prob": 0.5}})["road"]["guard_rails"] is True
    with pytest.raises(SimConfigError, match="unknown config key"):
        load_config({"cars": {"colour": "red"}})
    with pytest.raises(SimConfigError, match="range"):
        load_config({"road": {"lane_width_m": [4.0, 3.0]}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("road: [1, 2]\n")
    with pytest.raises(SimConfigError):
        load_config(bad)


def _footprint_overlap(a: Box3D, b: Box3D) -> bool:
    from perception.sim.world import _Footprint, _footprints_overlap

    fa = _Footprint(a.center[0], a.center[1], a.size[0], a.size[1], a.yaw)
    fb = _Footprint(b.center[0], b.center[1], b.size[0], b.size[1], b.yaw)
    return _footprints_overlap(fa, fb)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_urban_scene_places_actors_plausibly(seed):
    scene = build_scene(load_config("urban"), np.random.default_rng(seed))
    actors = scene.actors
    assert len({a.instance for a in actors}) == len(actors) and all(a.instance > 0 for a in actors)
    assert all(o.instance == 0 for o in scene.objects if o.label == UNKNOWN)
    ego_yaw = math.radians(scene.layout["ego_yaw_deg"])
    cars = [a for a in actors if a.label == CAR]
    assert len(cars) >= 5
    for a in actors:
        assert a.box is not None and a.kitti_type is not None
        bottom = a.box.center[2] - a.box.size[2] / 2
        kerb = scene.layout["kerb_m"]
        assert bottom == pytest.approx(scene.ground_z, abs=1e-4) or bottom == pytest.approx(
            scene.ground_z + kerb, abs=1e-4
        )
        # vertices stay inside the box
        assert a.box.contains(a.vertices, margin=1e-3).all()
    for a in cars:
        # cars drive along the road (or across it on the cross street)
        rel = (a.box.yaw + ego_yaw) % math.pi
        assert min(rel, math.pi - rel) < 0.2 or abs(rel - math.pi / 2) < 0.2
        assert 3.4 < a.box.size[0] < 5.8 and 1.5 < a.box.size[1] < 2.1
    for a in actors:
        if a.label == PEDESTRIAN and a.attributes["where"] == "sidewalk":
            assert a.box.center[2] - a.box.size[2] / 2 > scene.ground_z + 0.05
    for i, a in enumerate(actors):
        for b in actors[i + 1 :]:
            assert not _footprint_overlap(a.box, b.box), (a.kind, a.box, b.kind, b.box)


def test_scenes_are_deterministic_and_presets_differ():
    a = build_scene(load_config("urban"), np.random.default_rng(5))
    b = build_scene(load_config("urban"), np.random.default_rng(5))
    assert len(a.objects) == len(b.objects)
    for oa, ob in zip(a.objects, b.objects, strict=True):
        assert oa.kind == ob.kind and np.array_equal(oa.vertices, ob.vertices) and np.array_equal(oa.albedo, ob.albedo)
    hw = build_scene(load_config("highway"), np.random.default_rng(5))
    assert {a.label for a in hw.actors} == {CAR}
    assert hw.layout["lanes_forward"] >= 2 and any(o.kind == "guard_rail" for o in hw.objects)


# --- LiDAR --------------------------------------------------------------------------------------


def _wall_scan(x: float, reflectivity: float, seed: int = 0, **params):
    from perception.sim.lidar import LidarParams, simulate_lidar
    from perception.sim.world import scene_from_objects, wall_object

    scene = scene_from_objects([wall_object(x, reflectivity=reflectivity)])
    return simulate_lidar(scene, SENSORS["hdl64e-360"], np.random.default_rng(seed), LidarParams(**params)), scene


def test_range_noise_on_a_flat_wall_is_about_2cm():
    needs_open3d()
    scan, _ = _wall_scan(10.0, 0.6)
    p = scan.points[:, :3].astype(np.float64)
    r = np.linalg.norm(p, axis=1)
    r_true = 10.0 / (p[:, 0] / r)  # the noise is along each ray: the direction is exact
    resid = r - r_true
    assert len(resid) > 5000
    assert abs(resid.mean()) < 0.002
    assert 0.018 < resid.std() < 0.022
    assert np.all(scan.labels == 0) and np.all(scan.instances == 0)


def test_dark_and_far_returns_are_lost_more_often():
    needs_open3d()
    from perception.sim.lidar import LidarParams, detection_probability

    params = LidarParams()
    p = detection_probability(np.array([0.05, 0.2, 0.8]), np.full(3, 40.0), params)
    assert p[0] < p[1] < p[2] <= 1 - params.dropout + 1e-12
    q = detection_probability(np.full(3, 0.1), np.array([10.0, 40.0, 80.0]), params)
    assert q[0] > q[1] > q[2]

    def kept_fraction(x: float, refl: float) -> float:
        scan, scene = _wall_scan(x, refl)
        from perception.sim.lidar import lidar_rays

        hits = scene.cast(lidar_rays(SENSORS["hdl64e-360"]))
        return len(scan.points) / int(hits.hit.sum())

    dark_far, bright_far = kept_fraction(50.0, 0.05), kept_fraction(50.0, 0.8)
    dark_near = kept_fraction(10.0, 0.05)
    assert dark_far < bright_far - 0.3
    assert dark_far < dark_near - 0.3
    assert bright_far > 0.9 and dark_near > 0.9
    scan_dark, _ = _wall_scan(20.0, 0.1)
    scan_bright, _ = _wall_scan(20.0, 0.8)
    assert scan_dark.points[:, 3].mean() < scan_bright.points[:, 3].mean()


# --- a generated dataset (shared) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 3-frame urban dataset and its frames in memory."""
    needs_open3d()
    from perception.sim.dataset import generate_dataset

    root = tmp_path_factory.mktemp("sim") / "ds"
    frames = []
    generate_dataset(root, "urban", frames=3, seed=SEED, progress=frames.append)
    return root, frames


def test_dataset_has_the_kitti_layout_and_reads_back(dataset):
    from perception.sim.camera import kitti_calibration

    root, frames = dataset
    ids = ["000000", "000001", "000002"]
    for d in LAYOUT:
        assert sorted(p.stem for p in (root / d).iterdir() if not p.name.startswith(".")) == ids, d
    for fid, frame in zip(ids, frames, strict=True):
        pts = read_velodyne_bin(root / "velodyne" / f"{fid}.bin")
        assert pts.dtype == np.float32 and pts.shape[1] == 4 and len(pts) > 50000
        assert np.all((pts[:, 3] >= 0) & (pts[:, 3] <= 1))
        cls, inst = read_point_labels_and_instances(root / "labels" / f"{fid}.label", expected=len(pts))
        np.testing.assert_array_equal(cls, frame.scan.labels)
        np.testing.assert_array_equal(inst, frame.scan.instances)
        tensor = read_squeezeseg_npy(root / "squeezeseg" / f"{fid}.npy", shape=(64, 512))
        assert tensor.shape == (64, 512, 6)
        assert (tensor[..., 4] > 0).mean() > 0.8 and np.any(tensor[..., 5] == CAR)
        assert np.all(tensor[tensor[..., 4] == 0, 5] == 0)
        img = read_image(root / "image_2" / f"{fid}.png")
        assert img.shape == (375, 1242, 3) and img.std() > 10
        calib = read_calib(root / "calib" / f"{fid}.txt")
        ref = kitti_calibration()
        for key in ("P2", "R0_rect", "Tr_velo_to_cam"):
            np.testing.assert_allclose(getattr(calib, key), getattr(ref, key))
        objs = read_label(root / "label_2" / f"{fid}.txt")
        assert {o.type for o in objs} <= {"Car", "Van", "Pedestrian", "Cyclist", "DontCare"}
        assert any(o.type in ("Car", "Van") for o in objs)
    train = (root / "ImageSets" / "train.txt").read_text().split()
    val = (root / "ImageSets" / "val.txt").read_text().split()
    assert sorted(train + val) == ids and not set(train) & set(val)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["seed"] == SEED and manifest["sensor"]["name"] == "hdl64e-360"
    assert manifest["config"] == load_config("urban") and manifest["package_version"]
    assert [f["id"] for f in manifest["frames"]] == ids and all(isinstance(f["seed"], int) for f in manifest["frames"])


def test_camera_parameters_follow_kitti():
    from perception.sim.camera import CameraModel

    cam = CameraModel.kitti()
    P2 = cam.calib.P2
    assert (cam.width, cam.height) == (1242, 375)
    assert (
        P2[0, 0] == pytest.approx(721.5377)
        and P2[0, 2] == pytest.approx(609.5593)
        and P2[1, 2] == pytest.approx(172.854)
    )
    centre = cam.center_velo()
    assert centre[0] == pytest.approx(0.27, abs=0.01) and centre[2] == pytest.approx(-0.08, abs=0.01)
    # a point straight ahead of the camera projects near the principal point
    uv, depth = cam.calib.velo_to_image(np.array([[30.0, centre[1], centre[2]]]))
    assert depth[0] > 0 and abs(uv[0, 0] - 609.56) < 2 and abs(uv[0, 1] - 172.85) < 2


def test_point_labels_agree_with_ground_truth_boxes(dataset):
    _, frames = dataset
    for frame in frames:
        boxes = {a.instance: a for a in frame.scene.actors}
        pts, labels, inst = frame.scan.points, frame.scan.labels, frame.scan.instances
        assert np.all((labels == 0) == (inst == 0))
        for iid in np.unique(inst[inst > 0]):
            sel = inst == iid
            actor = boxes[int(iid)]
            assert np.all(labels[sel] == actor.label)
            # every point of an actor lies in its box grown by a few centimetres (6 sigma of range noise)
            assert actor.box.contains(pts[sel], margin=0.12).all(), actor.kind
        for actor in frame.scene.actors:
            # points inside the box, above the road (ground returns under the body are background)
            inside = actor.box.contains(pts, margin=0.0) & (pts[:, 2] > actor.box.bottom_center[2] + 0.15)
            if actor.label == CAR and inside.sum() >= 20:
                # a car with points has its instance id on (nearly) all of the points inside its box
                assert np.mean(inst[inside] == actor.instance) > 0.9
        assert np.count_nonzero(labels == CAR) > 1000


def test_label_2_boxes_are_the_ground_truth_boxes(dataset):
    root, frames = dataset
    frame = frames[0]
    calib = read_calib(root / "calib" / "000000.txt")
    by_index = {a.object_index: a for a in frame.annotations}
    n = 0
    for ann in by_index.values():
        if ann.status != "object":
            continue
        box = frame.scene.objects[ann.object_index].box
        corners = calib.rect_to_velo(box_corners_rect(ann.kitti))
        gt = box.corners()
        dist = np.linalg.norm(corners[:, None] - gt[None], axis=2).min(axis=1)
        assert dist.max() < 2e-3
        n += 1
    assert n >= 3


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(dataset, tmp_path):
    from perception.sim.dataset import generate_dataset

    root, _ = dataset
    again = generate_dataset(tmp_path / "again", "urban", frames=1, seed=SEED)
    other = generate_dataset(tmp_path / "other", "urban", frames=1, seed=SEED + 1)
    files = (
        "velodyne/000000.bin",
        "image_2/000000.png",
        "label_2/000000.txt",
        "labels/000000.label",
        "squeezeseg/000000.npy",
    )
    for f in files:
        assert (again / f).read_bytes() == (root / f).read_bytes(), f
    for f in ("velodyne/000000.bin", "image_2/000000.png", "labels/000000.label"):
        assert (other / f).read_bytes() != (root / f).read_bytes(), f


def test_regenerate_frame_reproduces_a_frame_exactly(dataset, tmp_path):
    from perception.sim.dataset import regenerate_frame

    root, frames = dataset
    frame = regenerate_frame(root / "manifest.json", "000002", out_dir=tmp_path)
    np.testing.assert_array_equal(frame.scan.points, frames[2].scan.points)
    for d, ext in (
        ("velodyne", "bin"),
        ("image_2", "png"),
        ("label_2", "txt"),
        ("labels", "label"),
        ("squeezeseg", "npy"),
        ("calib", "txt"),
    ):
        assert (tmp_path / d / f"000002.{ext}").read_bytes() == (root / d / f"000002.{ext}").read_bytes(), d


def test_camera_off_keeps_the_scan_and_labels_with_unknown_occlusion(dataset):
    from perception.sim.dataset import frame_seed, simulate_frame

    _, frames = dataset
    frame = simulate_frame(load_config("urban"), frame_seed(SEED, 0), SENSORS["hdl64e-360"], camera=False)
    np.testing.assert_array_equal(frame.scan.points, frames[0].scan.points)
    objs = frame.label_objects
    assert objs and all(o.occluded == 3 and o.type != "DontCare" for o in objs)


# --- camera labels on a hand-made scene ---------------------------------------------------------


@pytest.fixture(scope="module")
def street():
    """Four cars: a clear one (left), one ahead, one hidden behind it, one cut by the right image edge."""
    needs_open3d()
    from perception.sim.camera import CameraModel, annotate, render_camera
    from perception.sim.world import car_object, ground_object, scene_from_objects

    objects = [
        ground_object(),
        car_object(20.0, 5.0, yaw=0.3, instance=1),
        car_object(12.0, 0.0, yaw=0.0, instance=2, paint=(0.9, 0.9, 0.9)),
        car_object(22.0, 0.4, yaw=0.05, instance=3),
        car_object(8.0, -7.2, yaw=0.0, instance=4, paint=(0.1, 0.2, 0.5)),
    ]
    scene = scene_from_objects(objects)
    cam = CameraModel.kitti()
    render = render_camera(scene, cam, np.random.default_rng(0))
    anns = {a.instance: a for a in annotate(scene, cam, render)}
    return scene, cam, render, anns


def test_visible_car_box_matches_its_projected_3d_box(street):
    _, cam, _, anns = street
    ann = anns[1]
    assert ann.status == "object" and ann.occlusion == 0 and ann.truncation == 0
    uv, depth = cam.calib.rect_to_image(box_corners_rect(ann.kitti))
    assert np.all(depth > 0)
    projected = np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])
    np.testing.assert_allclose(np.array(ann.kitti.bbox), projected, atol=4.0)


def test_truncated_and_occluded_cars(street):
    _, cam, render, anns = street
    front, hidden, edge = anns[2], anns[3], anns[4]
    assert front.status == "object" and front.occlusion == 0
    assert hidden.occlusion >= 1 and hidden.visible_fraction < 0.9
    assert edge.status == "object" and edge.truncation > 0 and edge.kitti.truncated > 0
    assert edge.kitti.bbox[2] == cam.width - 1
    # the 2D boxes are the visible pixels: the hidden car's box lies within the image and is smaller
    assert (hidden.kitti.bbox[2] - hidden.kitti.bbox[0]) < (front.kitti.bbox[2] - front.kitti.bbox[0])
    assert render.image.dtype == np.uint8 and render.image.shape == (375, 1242, 3)
    assert np.count_nonzero(render.object_index == -1) > 0  # sky


def test_lidar_sees_pedestrians_and_cyclists_with_their_labels():
    needs_open3d()
    from perception.sim.lidar import simulate_lidar
    from perception.sim.world import ground_object, make_object, place_parts, scene_from_objects

    ped_parts, ped_box = place_parts(M.pedestrian_mesh(M.PedestrianShape()), 0.5, np.array([8.0, 2.0, -1.73]))
    cyc_parts, cyc_box = place_parts(M.cyclist_mesh(M.CyclistShape()), -0.2, np.array([10.0, -3.0, -1.73]))
    ped = make_object("pedestrian", ped_parts, label=PEDESTRIAN, instance=1, box=ped_box, kitti_type="Pedestrian")
    cyc = make_object("cyclist", cyc_parts, label=CYCLIST, instance=2, box=cyc_box, kitti_type="Cyclist")
    scene = scene_from_objects([ground_object(), ped, cyc])
    scan = simulate_lidar(scene, SENSORS["hdl64e-360"], np.random.default_rng(1))
    for actor in (ped, cyc):
        sel = scan.instances == actor.instance
        assert sel.sum() > 50 and np.all(scan.labels[sel] == actor.label)
        assert actor.box.contains(scan.points[sel], margin=0.12).all()


def test_parallel_workers_write_the_same_files_bit_for_bit(dataset, tmp_path):
    from perception.sim.dataset import FrameSummary, generate_dataset

    root, frames = dataset
    summaries: list[FrameSummary] = []
    generate_dataset(tmp_path / "par", "urban", frames=3, seed=SEED, workers=2, progress=summaries.append)
    assert [s.frame_id for s in summaries] == ["000000", "000001", "000002"]
    assert [s.num_points for s in summaries] == [f.num_points for f in frames]
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"):
        twin = tmp_path / "par" / path.relative_to(root)
        assert twin.read_bytes() == path.read_bytes(), path.relative_to(root)
    with pytest.raises(ValueError, match="workers"):
        generate_dataset(tmp_path / "bad", "urban", frames=1, workers=0)
