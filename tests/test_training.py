"""A short real training run: the loss goes down, resume is exact, checkpoints are atomic, export loads."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the [train] extra (torch) is not installed")

from perception.io import KittiObject, write_image, write_label  # noqa: E402
from perception.lidar.sensors import SENSORS  # noqa: E402
from perception.sim.analytic import cast_scan, street_scene  # noqa: E402
from perception.training.datasets import (  # noqa: E402
    KittiDetectionDataset,
    drift_image,
    flip_range_sample,
)
from perception.training.evaluate import segmentation_metrics  # noqa: E402
from perception.training.train import TrainConfig, batch_indices, load_checkpoint, train  # noqa: E402


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory):
    from perception.io import write_velodyne_bin
    from perception.io.labels import write_point_labels

    root = tmp_path_factory.mktemp("scans")
    for i in range(6):
        scan = cast_scan(SENSORS["hdl64e-360"], street_scene(50 + i), seed=50 + i)
        write_velodyne_bin(root / "velodyne" / f"{i:06d}.bin", scan.points)
        write_point_labels(root / "labels" / f"{i:06d}.label", scan.labels, scan.instances)
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000000\n000001\n000002\n000003\n")
    (root / "ImageSets" / "val.txt").write_text("000004\n000005\n")
    (root / "ImageSets" / "one.txt").write_text("000000\n")
    return root


def seg_config(scan_dir, out, **kw):
    base = dict(task="seg", data=str(scan_dir), out=str(out), steps=4, batch_size=2, crop_width=64, log_every=1,
                checkpoint_every=2, validate_every=0, val_split=None, threads=1, lr=0.01)  # fmt: skip
    return TrainConfig.from_dict({**base, **kw})


def test_segmentation_loss_goes_down_on_a_repeated_batch(scan_dir, tmp_path):
    # one scan, many steps: the network must fit it
    summary = train(seg_config(scan_dir, tmp_path / "fit", steps=30, batch_size=1, crop_width=0,
                               train_split="one", crf=False, flip=False))  # fmt: skip
    losses = summary["losses"]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_resume_gives_the_identical_next_step_loss(scan_dir, tmp_path):
    full = train(seg_config(scan_dir, tmp_path / "a"))
    train(seg_config(scan_dir, tmp_path / "b", steps=2))
    resumed = train(seg_config(scan_dir, tmp_path / "b"), resume=True)
    assert resumed["losses"] == full["losses"][2:]


def test_validation_writes_metrics_and_best_checkpoint(scan_dir, tmp_path):
    summary = train(seg_config(scan_dir, tmp_path / "v", steps=2, validate_every=2, val_split="val"))
    assert "iou_car" in summary["val_metrics"]
    run = tmp_path / "v"
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "metrics.jsonl").read_text().count("val_iou_car") == 1
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 2 and state["task"] == "seg"


def test_interrupted_checkpoint_write_keeps_the_previous_one(scan_dir, tmp_path, monkeypatch):
    import perception.training.train as train_module

    train(seg_config(scan_dir, tmp_path / "k", steps=2))
    last = tmp_path / "k" / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def killed(path, write):
        raise KeyboardInterrupt  # the process dies while writing the next checkpoint

    monkeypatch.setattr(train_module, "atomic_write", killed)
    with pytest.raises(KeyboardInterrupt):
        train(seg_config(scan_dir, tmp_path / "k", steps=4), resume=True)
    assert last.read_bytes() == before
    assert load_checkpoint(last)["step"] == 2
    assert [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_trained_checkpoint_exports_and_runs_in_the_runtime(scan_dir, tmp_path):
    from perception.runtime.segmenter import Segmenter
    from perception.training.export import build_segmentation_model, export_segmentation_onnx

    train(seg_config(scan_dir, tmp_path / "e", steps=2))
    model = build_segmentation_model(tmp_path / "e" / "checkpoints" / "last.pt")
    path = export_segmentation_onnx(model, tmp_path / "seg.onnx", SENSORS["kitti-front"])
    scan = cast_scan(SENSORS["hdl64e-360"], street_scene(99), seed=99)
    result = Segmenter(path, providers="cpu").segment(scan.points)
    assert result.labels.shape == (len(scan.points),)


def test_labels_from_kitti_boxes_match_the_simulated_labels():
    from perception.io.kitti import Calibration
    from perception.lidar.box_labels import point_labels_from_boxes

    boxes = street_scene(0)
    scan = cast_scan(SENSORS["hdl64e-360"], boxes, seed=0)
    calib = Calibration()
    calib.Tr_velo_to_cam = np.array([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0]])  # LiDAR -> camera axes
    objects = []
    for b in boxes:
        if b.label == 0:
            continue
        kind = {1: "Car", 2: "Pedestrian", 3: "Cyclist"}[b.label]
        # camera frame: x = -y_lidar, y = -z_lidar (box bottom at the ground, 1.73 m below), z = x_lidar;
        # rotation_y 0 points along camera x, so a LiDAR yaw maps to -yaw - pi/2
        objects.append(KittiObject(kind, dimensions=(b.height + 0.05, b.width + 0.1, b.length + 0.1),
                                   location=(-b.y, 1.73 + 0.02, b.x), rotation_y=-b.yaw - np.pi / 2))  # fmt: skip
    labels = point_labels_from_boxes(scan.points, objects, calib)
    agree = (labels == scan.labels).mean()
    assert agree > 0.999, agree


def test_flip_and_drift_augmentations():
    image = np.arange(5 * 2 * 4, dtype=np.float32).reshape(5, 2, 4)
    mask = np.ones((1, 2, 4), np.float32)
    labels = np.arange(8).reshape(2, 4)
    fi, _, fl = flip_range_sample(image, mask, labels)
    assert fl[0].tolist() == [3, 2, 1, 0] and fi[1, 0, 0] == -image[1, 0, 3] and fi[0, 0, 0] == image[0, 0, 3]
    img = np.zeros((384, 1248, 3), np.float32)
    img[100:110, 200:210] = 1
    out, boxes = drift_image(img, np.array([[200.0, 100, 209, 109]]), np.random.default_rng(0), (150, 100))
    x1, y1 = int(boxes[0, 0]), int(boxes[0, 1])
    assert out[y1 + 2, x1 + 2, 0] == 1


def test_detection_dataset_and_a_training_step(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        img = (rng.random((375, 1242, 3)) * 50).astype(np.uint8)
        img[150:250, 300:500] = (200, 30, 30)
        write_image(tmp_path / "image_2" / f"{i:06d}.png", img)
        write_label(tmp_path / "label_2" / f"{i:06d}.txt", [
            KittiObject("Car", bbox=(300.0, 150.0, 499.0, 249.0)), KittiObject("DontCare", bbox=(0, 0, 10, 10)),
        ])  # fmt: skip
    ds = KittiDetectionDataset(tmp_path)
    image, boxes, classes = ds[0]
    assert image.shape == (3, 384, 1248) and classes.tolist() == [0]
    sx, sy = 1248 / 1242, 384 / 375
    np.testing.assert_allclose(boxes[0].numpy(), [300 * sx, 150 * sy, 499 * sx, 249 * sy], rtol=1e-5)
    summary = train(TrainConfig.from_dict(dict(task="det", data=str(tmp_path), out=str(tmp_path / "run"), steps=2,
                    batch_size=1, train_split=None, val_split=None, log_every=1, threads=1)))  # fmt: skip
    assert len(summary["losses"]) == 2 and all(np.isfinite(summary["losses"]))


def test_batches_are_a_function_of_seed_and_step():
    assert batch_indices(10, 4, 0, 5) == batch_indices(10, 4, 0, 5)
    epoch, idx = batch_indices(10, 4, 0, 2)
    assert epoch == 1 and len(idx) == 4


def test_segmentation_metrics_hand_case():
    m = segmentation_metrics(np.array([1, 1, 0, 2]), np.array([1, 0, 0, 1]))
    assert m.iou[1] == pytest.approx(1 / 3) and m.precision[1] == 0.5 and m.recall[1] == 0.5
    assert np.isnan(m.precision[3])


def test_export_builds_the_crf_form_the_checkpoint_was_trained_with(tmp_path):
    from perception.training.export import build_segmentation_model
    from perception.training.nets.squeezeseg import squeezeseg
    from perception.training.train import TrainConfig

    trained = squeezeseg(crf_form="standard")
    path = tmp_path / "ckpt.pt"
    torch.save({"model": trained.state_dict(), "config": {"crf_form": "standard"}}, path)
    assert build_segmentation_model(path).crf.form == "standard"
    torch.save(trained.state_dict(), path)  # a bare state dict: the paper's form
    assert build_segmentation_model(path).crf.form == "original"
    with pytest.raises(ValueError, match="crf_form"):
        TrainConfig.from_dict({"crf_form": "fancy"})


def test_adam_option_resumes_exactly_and_records_its_optimizer(scan_dir, tmp_path):
    kw = dict(optimizer="adam", lr=1e-3, block="shift")
    full = train(seg_config(scan_dir, tmp_path / "a", **kw))
    train(seg_config(scan_dir, tmp_path / "b", steps=2, **kw))
    resumed = train(seg_config(scan_dir, tmp_path / "b", **kw), resume=True)
    assert resumed["losses"] == full["losses"][2:]
    state = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert state["config"]["optimizer"] == "adam" and state["config"]["block"] == "shift"
    assert "exp_avg_sq" in next(iter(state["optimizer"]["state"].values()))  # Adam's second moment
    with pytest.raises(ValueError, match="optimizer must be"):
        TrainConfig.from_dict({"optimizer": "lion"})
