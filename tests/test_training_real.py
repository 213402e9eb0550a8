"""Training on real KITTI object scans: box labels with ignored points, point augmentation, mixing, init."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the [train] extra (torch) is not installed")

from perception.io import read_squeezeseg_npy  # noqa: E402
from perception.io.squeezeseg import split_squeezeseg  # noqa: E402
from perception.lidar.box_labels import IGNORE_LABEL, write_squeezeseg_frames  # noqa: E402
from perception.lidar.sensors import SENSORS  # noqa: E402
from perception.sim.analytic import cast_scan, street_scene  # noqa: E402
from perception.training.datasets import (  # noqa: E402
    KittiScanDataset,
    PointAugment,
    RepeatedDataset,
    augment_points,
    set_epoch,
)
from perception.training.losses import squeezeseg_loss  # noqa: E402
from perception.training.train import TrainConfig, train  # noqa: E402
from tests.test_box_labels import box, write_frame  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kitti_object_dir(tmp_path_factory):
    """Three analytic street scans in the KITTI object layout: each car a Car box, the first one a Van."""
    root = tmp_path_factory.mktemp("kitti_object")
    for i in range(3):
        boxes = street_scene(70 + i)
        scan = cast_scan(SENSORS["hdl64e-360"], boxes, seed=70 + i)
        cars = [b for b in boxes if b.label == 1]
        objects = [
            box(
                "Van" if k == 0 else "Car",
                b.x,
                b.y,
                h=b.height + 0.05,
                w=b.width + 0.1,
                length=b.length + 0.1,
                yaw=-b.yaw - np.pi / 2,
            )
            for k, b in enumerate(cars)
        ]
        # the analytic world puts the ground 1.73 m below the sensor
        for obj in objects:
            obj.location = (obj.location[0], 1.75, obj.location[2])
        write_frame(root, f"{i:06d}", scan.points, objects)
    return root


def test_kitti_scan_dataset_ignores_unscored_boxes_and_points_outside_the_camera(kitti_object_dir):
    seen = KittiScanDataset(kitti_object_dir, ignore_outside_camera=False)
    points, labels = seen.points_and_labels(0)
    assert (labels == 1).any() and (labels == IGNORE_LABEL).any()  # the cars, and the van left out
    hidden = KittiScanDataset(kitti_object_dir, ignore_outside_camera=True)
    _, hidden_labels = hidden.points_and_labels(0)
    behind = points[:, 0] < 0
    assert (hidden_labels[behind] == IGNORE_LABEL).all() and (labels[behind] != IGNORE_LABEL).any()
    image, mask, pixel_labels = seen[0]
    assert image.shape == (5, 64, 512) and set(np.unique(pixel_labels.numpy())) <= {-1, 0, 1}
    assert (pixel_labels.numpy()[mask[0].numpy() == 0] == 0).all()


def test_point_augmentation_keeps_labels_with_their_points():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-20, 20, (2000, 4)).astype(np.float32)
    pts[:, 3] = rng.uniform(0, 1, 2000)
    labels = (pts[:, 0] > 0).astype(np.int64)  # a label that a rotation or flip must carry along
    aug = PointAugment(flip=True, rotate_deg=10, scale=0.05, intensity_jitter=0.3, point_dropout=0.3)
    out, out_labels = augment_points(pts, labels, aug, np.random.default_rng(1))
    assert len(out) == len(out_labels) and 0.6 * len(pts) <= len(out) <= len(pts)
    assert out[:, 3].min() >= 0 and out[:, 3].max() <= 1
    # ranges scale by one factor within 5 %
    radius_ratio = np.linalg.norm(out[:, :3], axis=1).max() / np.linalg.norm(pts[:, :3], axis=1).max()
    assert 0.94 < radius_ratio < 1.06
    again, again_labels = augment_points(pts, labels, aug, np.random.default_rng(1))
    assert np.array_equal(again, out) and np.array_equal(again_labels, out_labels)
    plain, plain_labels = augment_points(pts, labels, PointAugment(), np.random.default_rng(1))
    assert np.array_equal(plain, pts) and np.array_equal(plain_labels, labels)
    # a pure rotation by yaw: each kept point keeps its label and its range
    rotated, rotated_labels = augment_points(pts, labels, PointAugment(rotate_deg=30), np.random.default_rng(2))
    assert np.allclose(np.hypot(rotated[:, 0], rotated[:, 1]), np.hypot(pts[:, 0], pts[:, 1]), atol=1e-4)
    assert np.array_equal(rotated_labels, labels)


def test_beam_dropout_empties_whole_rows(kitti_object_dir):
    data = KittiScanDataset(kitti_object_dir, augment=PointAugment(beam_dropout=0.5), seed=3)
    image, mask, labels = data[0]
    empty_rows = (mask[0].numpy() == 0).all(axis=1)
    assert 10 < empty_rows.sum() < 54
    assert (image.numpy()[:, empty_rows] == 0).all() and (labels.numpy()[empty_rows] == 0).all()


def test_repeated_dataset_and_epochs_reach_every_part(kitti_object_dir):
    from torch.utils.data import ConcatDataset

    real = KittiScanDataset(kitti_object_dir, augment=PointAugment(rotate_deg=5))
    other = KittiScanDataset(kitti_object_dir)
    mixed = ConcatDataset([other, RepeatedDataset(real, 4)])
    assert len(mixed) == 3 + 12
    set_epoch(mixed, 2)
    assert other.epoch == 2 and real.epoch == 8
    first, second = mixed[3][0], mixed[6][0]  # the same real frame, two repeats of one epoch
    assert torch.equal(first, second)  # the rng depends on (seed, epoch, index) of the frame
    with pytest.raises(ValueError):
        RepeatedDataset(real, 0)


def test_squeezeseg_loss_leaves_ignored_pixels_out_and_focal_lowers_easy_pixels():
    logits = torch.tensor([[[[4.0, 0.0, 1.0]], [[0.0, 4.0, 1.0]], [[0, 0, 0.0]], [[0, 0, 0.0]]]])
    labels = torch.tensor([[[0, 1, IGNORE_LABEL]]])
    mask = torch.ones(1, 1, 3)
    weights = (1.0, 1.0, 1.0, 1.0)
    kept = squeezeseg_loss(logits[..., :2], labels[..., :2], mask[..., :2], class_weights=weights)
    assert squeezeseg_loss(logits, labels, mask, class_weights=weights).item() == pytest.approx(kept.item())
    ce = -torch.log_softmax(logits[0, :, 0, 0], 0)[0]
    p = torch.exp(-ce)
    focal = squeezeseg_loss(logits, labels, mask, class_weights=weights, focal_gamma=2.0)
    assert focal.item() == pytest.approx(15 * (ce * (1 - p) ** 2).item(), rel=1e-5)
    assert focal.item() < kept.item()


def test_conversion_writes_npy_frames_that_read_back_with_ignored_labels(kitti_object_dir, tmp_path):
    written = write_squeezeseg_frames(kitti_object_dir, tmp_path / "conv", SENSORS["kitti-front"])
    assert [p.name for p in written] == ["000000.npy", "000001.npy", "000002.npy"]
    assert (tmp_path / "conv" / "ImageSets" / "all.txt").read_text() == "000000\n000001\n000002\n"
    _, mask, labels = split_squeezeseg(read_squeezeseg_npy(written[0], shape=(64, 512)))
    assert (labels[mask] == 1).any() and (labels[mask] == IGNORE_LABEL).any()
    assert not list((tmp_path / "conv").rglob("*.tmp"))


def test_training_mixes_sources_and_starts_from_the_shipped_model(kitti_object_dir, tmp_path):
    cfg = TrainConfig.from_dict(dict(
        task="seg", data=str(kitti_object_dir), train_split=None, val_split=None, out=str(tmp_path / "run"),
        steps=2, batch_size=2, crop_width=64, threads=1, crf_form="standard", rotate_deg=5.0, point_dropout=0.1,
        sources=[{"data": str(kitti_object_dir), "repeat": 2}], init=str(REPO / "models/squeezeseg_kitti-front.onnx"),
        focal_gamma=2.0, select="iou_car", outside_camera="background",
    ))  # fmt: skip
    summary = train(cfg)
    assert summary["step"] == 2 and all(np.isfinite(summary["losses"]))
    with pytest.raises(ValueError, match="sources"):
        TrainConfig.from_dict({"sources": [{"path": "x"}]})
    with pytest.raises(ValueError, match="outside_camera"):
        TrainConfig.from_dict({"outside_camera": "drop"})
    with pytest.raises(ValueError, match="select"):
        TrainConfig.from_dict({"select": "iou_bus"})


def test_init_from_the_shipped_model_copies_its_weights():
    from perception.training.export import segmentation_model_from_onnx
    from perception.training.nets.squeezeseg import squeezeseg
    from perception.training.train import load_initial_weights

    onnx_path = REPO / "models/squeezeseg_kitti-front.onnx"
    model = squeezeseg(crf_form="standard")
    load_initial_weights(model, onnx_path)
    source = segmentation_model_from_onnx(onnx_path).state_dict()
    assert all(torch.equal(value, source[name]) for name, value in model.state_dict().items())
    with pytest.raises(ValueError, match="no such checkpoint"):
        load_initial_weights(model, "/nonexistent.pt")
