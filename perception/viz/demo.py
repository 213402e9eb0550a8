"""``perception demo``: the shipped models on the bundled sample (and the real KITTI samples where present),
written out as pictures and an HTML report that links them. It is what a new user runs first.

For each frame of each data directory (KITTI layout: ``velodyne/*.bin`` with optional ``labels/*.label``
point labels, or with KITTI object ``label_2/`` boxes and ``calib/`` whose point labels follow the
SqueezeSeg box-to-point protocol; ``image_2/*.png`` with optional ``label_2/*.txt`` boxes) it writes:

* ``<set>_<id>_camera.png``: the camera frame with detections (score >= the plot threshold) and the
  ground-truth boxes in white;
* ``<set>_<id>_range.png``: the range image coloured by predicted label and by ground truth, side by side;
* ``<set>_<id>_bev.png``: a bird's-eye view coloured by predicted class with the pipeline's instance
  boxes and ids, beside the ground truth with boxes fitted to the labelled instances.

The real samples (``kitti_samples``: SqueezeSeg ``.npy`` scans with labels, a camera PNG) give the same
pictures. Frames with camera labels give KITTI precision/recall curves (``pr_curves.png``); every run
directory under ``runs`` with a ``metrics.jsonl`` gives training curves (``training_<run>.png``).
``index.html`` links them all, with the models, the per-stage timings (ms) and the AP table.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perception import KITTI_SAMPLES
from perception.camera.boxes import Detection2D
from perception.io import KittiObject, read_image, read_label, read_squeezeseg_npy, read_velodyne_bin, write_image
from perception.io.labels import read_point_labels_and_instances
from perception.lidar.box_labels import box_labels_of_frame
from perception.lidar.clustering import Instance
from perception.lidar.projection import spherical_project
from perception.pipeline import Frame, ModelLoadError, PerceptionResult, Pipeline
from perception.viz.bev_view import BevGrid, draw_bev, instances_from_labels
from perception.viz.camera_view import draw_detections
from perception.viz.draw import caption, hstack
from perception.viz.plots import draw_pr_curves, draw_training_curves, read_training_log
from perception.viz.range_view import pixel_labels_of_points, range_comparison
from perception.viz.report import Figure, Section, Table, write_report

DEFAULT_SEG_MODEL = Path("models/squeezeseg_kitti-front.onnx")
DEFAULT_DET_MODEL = Path("models/squeezedet.onnx")
DEFAULT_DATA = Path("sim_data/sample")
DEFAULT_KITTI_SAMPLES = KITTI_SAMPLES
DEFAULT_RUNS = Path("runs")

# file names in the docs folder (README pictures) for the first frame of the first data directory
DOCS_NAMES = {"camera": "demo_camera.png", "range": "demo_range.png", "bev": "demo_bev.png"}


@dataclass
class DemoFrame:
    """What the demo made of one frame: its pictures (paths relative to the output directory) and timings."""

    dataset: str
    frame_id: str
    pictures: dict[str, str] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    num_points: int | None = None
    num_instances: int = 0
    num_detections: int = 0
    num_shown: int = 0


@dataclass
class DemoResult:
    """The demo's output: ``index`` (the HTML report), frames, other pictures and notes."""

    out_dir: Path
    index: Path
    frames: list[DemoFrame]
    pictures: dict[str, str]
    notes: list[str]
    docs: list[Path] = field(default_factory=list)

    @property
    def all_pictures(self) -> list[Path]:
        """Every picture written, absolute paths."""
        names = [p for f in self.frames for p in f.pictures.values()] + list(self.pictures.values())
        return [self.out_dir / n for n in names]


def check_models(seg_model: Path, det_model: Path) -> None:
    """:class:`ValueError` (one line) naming the model files that do not exist."""
    missing = [str(p) for p in (seg_model, det_model) if not Path(p).is_file()]
    if missing:
        raise ValueError(
            f"{' and '.join(missing)}: no such model; the demo runs the shipped models (train and export them "
            "with `perception train` and `perception export`, or pass --seg-model/--det-model)"
        )


def _frame_ids(root: Path) -> list[str]:
    ids = {p.stem for p in (root / "velodyne").glob("*.bin")} | {p.stem for p in (root / "image_2").glob("*.png")}
    return sorted(ids)


class _Demo:
    def __init__(self, pipeline: Pipeline, out_dir: Path, plot_threshold: float, say: Callable[[str], None]) -> None:
        self.pipeline = pipeline
        self.out = out_dir
        self.threshold = plot_threshold
        self.say = say
        self.gt_boxes: dict[str, list[KittiObject]] = {}
        self.dt_boxes: dict[str, list[KittiObject]] = {}

    def save(self, name: str, image: np.ndarray) -> str:
        write_image(self.out / name, image)
        self.say(f"wrote {self.out / name}")
        return name

    def camera_picture(self, name: str, title: str, image: np.ndarray, result: PerceptionResult,
                       gt: Sequence[KittiObject]) -> tuple[str, int]:  # fmt: skip
        shown: list[Detection2D] = [d for d in result.detections if d.score >= self.threshold]
        ms = result.timings_ms.get("camera", float("nan"))
        text = (f"{title}: {len(shown)} of {len(result.detections)} detections with score >= {self.threshold:g}"
                f"{'; ground truth in white' if gt else ''}; camera {ms:.0f} ms")  # fmt: skip
        return self.save(name, caption(draw_detections(image, shown, ground_truth=gt), text)), len(shown)

    def lidar_pictures(self, stem: str, title: str, points: np.ndarray, result: PerceptionResult,
                       range_pred: np.ndarray, range_gt: np.ndarray | None, range_mask: np.ndarray,
                       gt_labels: np.ndarray | None, gt_instances: Sequence[Instance]) -> dict[str, str]:  # fmt: skip
        assert result.labels is not None
        ms = result.timings_ms.get("lidar", float("nan"))
        pictures = {
            "range": self.save(
                f"{stem}_range.png",
                caption(range_comparison(range_pred, range_gt, range_mask), f"{title}: range image, LiDAR {ms:.0f} ms"),
            )
        }
        grid = BevGrid.fit(points)
        panels = [caption(draw_bev(points, result.labels, result.instances, grid),
                          f"prediction: {len(result.instances)} instances")]  # fmt: skip
        if gt_labels is not None:
            boxes = f"{len(gt_instances)} labelled instances" if gt_instances else "no instance ids"
            panels.append(caption(draw_bev(points, gt_labels, gt_instances, grid), f"ground truth: {boxes}"))
        pictures["bev"] = self.save(f"{stem}_bev.png", caption(hstack(panels), f"{title}: bird's-eye view"))
        return pictures

    def kitti_frame(self, dataset: str, root: Path, frame_id: str) -> DemoFrame:
        """One frame of a KITTI-layout directory."""
        paths = {
            "velodyne": root / "velodyne" / f"{frame_id}.bin",
            "labels": root / "labels" / f"{frame_id}.label",
            "image": root / "image_2" / f"{frame_id}.png",
            "boxes": root / "label_2" / f"{frame_id}.txt",
        }
        points = read_velodyne_bin(paths["velodyne"]) if paths["velodyne"].is_file() else None
        image = read_image(paths["image"]) if paths["image"].is_file() else None
        key = f"{dataset}/{frame_id}"
        result = self.pipeline.run(Frame(key, 0.0, image=image, points=points))
        out = DemoFrame(dataset, frame_id, timings_ms=dict(result.timings_ms))
        stem = f"{dataset}_{frame_id}"
        if image is not None:
            gt = read_label(paths["boxes"]) if paths["boxes"].is_file() else []
            out.pictures["camera"], out.num_shown = self.camera_picture(f"{stem}_camera.png", key, image, result, gt)
            out.num_detections = len(result.detections)
            if paths["boxes"].is_file():
                self.gt_boxes[key] = gt
                self.dt_boxes[key] = [d.to_kitti() for d in result.detections]
        if points is not None and result.labels is not None:
            gt_labels, gt_instances = None, []
            if paths["labels"].is_file():
                gt_labels, ids = read_point_labels_and_instances(paths["labels"], expected=len(points))
                gt_instances = instances_from_labels(points, gt_labels, ids)
            elif paths["boxes"].is_file() and (root / "calib" / f"{frame_id}.txt").is_file():
                # a KITTI object frame: labels from its 3D boxes; points left out of the score drawn as background
                gt_labels = np.maximum(box_labels_of_frame(root, frame_id, points), 0)
            assert self.pipeline.segmenter is not None
            proj = spherical_project(points, self.pipeline.segmenter.sensor)
            pred_px = pixel_labels_of_points(result.labels, proj)
            gt_px = pixel_labels_of_points(gt_labels, proj) if gt_labels is not None else None
            out.pictures.update(self.lidar_pictures(stem, key, points, result, pred_px, gt_px, proj.mask,
                                                    gt_labels, gt_instances))  # fmt: skip
            out.num_points, out.num_instances = len(points), len(result.instances)
        return out

    def squeezeseg_frame(self, path: Path) -> DemoFrame:
        """A real SqueezeSeg ``.npy`` scan: points from the filled pixels, ground truth from its label channel;
        the range pictures use the tensor's own pixel grid."""
        tensor = read_squeezeseg_npy(path)
        mask = tensor[..., 4] > 0
        points = np.ascontiguousarray(tensor[mask][:, :4])
        gt = tensor[mask][:, 5].astype(np.int64)
        key = f"kitti/{path.stem}"
        result = self.pipeline.run(Frame(key, 0.0, points=points))
        assert result.labels is not None
        pred_px = np.zeros(mask.shape, np.int64)
        gt_px = np.zeros(mask.shape, np.int64)
        pred_px[mask], gt_px[mask] = result.labels, gt
        out = DemoFrame("kitti", path.stem, timings_ms=dict(result.timings_ms), num_points=len(points),
                        num_instances=len(result.instances))  # fmt: skip
        out.pictures = self.lidar_pictures(f"kitti_{path.stem}", key, points, result, pred_px, gt_px, mask, gt, [])
        return out

    def image_frame(self, path: Path) -> DemoFrame:
        image = read_image(path)
        key = f"kitti/{path.stem}"
        result = self.pipeline.run(Frame(key, 0.0, image=image))
        out = DemoFrame("kitti", path.stem, timings_ms=dict(result.timings_ms), num_detections=len(result.detections))
        out.pictures["camera"], out.num_shown = self.camera_picture(f"kitti_{path.stem}_camera.png", key, image,
                                                                    result, [])  # fmt: skip
        return out


def _model_table(pipeline: Pipeline) -> Table:
    rows = []
    for info in pipeline.models():
        rows.append([info.stage, info.name, info.architecture or "", info.weights or "", (info.sha256 or "")[:12],
                     info.providers[0] if info.providers else "", str(info.path)])  # fmt: skip
    return Table(["stage", "model", "architecture", "weights", "sha256", "provider", "path"], rows, "Models")


def _timing_table(frames: Sequence[DemoFrame]) -> Table:
    stages = ["camera.preprocess", "camera.inference", "camera.postprocess", "camera", "lidar.projection",
              "lidar.inference", "lidar.unprojection", "lidar.clustering", "lidar", "total"]  # fmt: skip
    used = [s for s in stages if any(s in f.timings_ms for f in frames)]
    rows = [[f"{f.dataset}/{f.frame_id}", *(f"{f.timings_ms[s]:.1f}" if s in f.timings_ms else "" for s in used)]
            for f in frames]  # fmt: skip
    return Table(["frame", *used], rows, "Per-stage wall time (ms, this machine, first run includes warm-up)")


def run_demo(
    out_dir: Path = Path("out/demo"),
    seg_model: Path = DEFAULT_SEG_MODEL,
    det_model: Path = DEFAULT_DET_MODEL,
    data: Sequence[Path] = (DEFAULT_DATA,),
    kitti_samples: Path | None = DEFAULT_KITTI_SAMPLES,
    runs: Path | None = DEFAULT_RUNS,
    providers: str = "auto",
    plot_threshold: float = 0.4,
    max_frames: int = 3,
    docs_dir: Path | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> DemoResult:
    """Run both shipped models on the sample data and write pictures + ``index.html`` under ``out_dir``.

    Args:
        out_dir: where pictures and the report go (created).
        seg_model, det_model: the ONNX models; both must exist (:class:`ValueError` naming the missing one).
        data: KITTI-layout directories (the bundled sample by default); each must exist.
        kitti_samples: the real KITTI samples (``*.npy`` scans, ``*.png`` frames); skipped when absent.
        runs: a directory of training runs (``<run>/metrics.jsonl``); skipped when absent.
        providers: ONNX Runtime providers, ``auto`` or a list such as ``cuda,cpu``.
        plot_threshold: detections with a lower score are not drawn (they still count for the PR curves).
        max_frames: frames per data directory at most (the first ones by id).
        docs_dir: also copy the first frame's pictures (and the PR curves) there with stable names
            (``demo_camera.png``, ``demo_range.png``, ``demo_bev.png``, ``demo_pr_curves.png``), for the README.
        say: called with one line per picture written.

    Raises:
        ValueError: a model or data directory is missing or unreadable.
    """
    check_models(seg_model, det_model)
    for root in data:
        if not Path(root).is_dir():
            raise ValueError(f"{root}: no such data directory (run the demo from the repository root, or pass --data)")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    try:
        pipeline = Pipeline(seg_model, det_model, providers, strict=True)
    except ModelLoadError as exc:
        raise ValueError(str(exc)) from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    notes: list[str] = []
    sections: list[Section] = []
    frames: list[DemoFrame] = []
    pictures: dict[str, str] = {}
    with pipeline:
        demo = _Demo(pipeline, out_dir, plot_threshold, say)
        models = _model_table(pipeline)
        for root in data:
            root = Path(root)
            ids = _frame_ids(root)
            if not ids:
                notes.append(f"{root}: no velodyne/*.bin or image_2/*.png frames")
                continue
            if len(ids) > max_frames:
                notes.append(f"{root}: showing the first {max_frames} of {len(ids)} frames")
            for frame_id in ids[:max_frames]:
                frames.append(demo.kitti_frame(root.name, root, frame_id))
        if kitti_samples is not None and Path(kitti_samples).is_dir():
            for path in sorted(Path(kitti_samples).glob("*.npy"))[:max_frames]:
                frames.append(demo.squeezeseg_frame(path))
            for path in sorted(Path(kitti_samples).glob("*.png"))[:max_frames]:
                frames.append(demo.image_frame(path))
        elif kitti_samples is not None:
            notes.append(f"{kitti_samples}: no real KITTI samples here (they live only in the dev workspace)")
        ap_table = None
        if demo.gt_boxes:
            from perception.evaluation.kitti_object import kitti_2d_curves

            curves = kitti_2d_curves(demo.gt_boxes, demo.dt_boxes)
            pictures["pr_curves"] = demo.save("pr_curves.png", draw_pr_curves(curves))
            rows = [[cls, *(f"{pr.ap('R40'):.1f}" if pr.ap("R40") is not None else "-" for pr in per.values())]
                    for cls, per in curves.items()]  # fmt: skip
            ap_table = Table(["class", "easy", "moderate", "hard"], rows,
                             f"KITTI 2D AP R40 (%) on {len(demo.gt_boxes)} frames with camera labels")  # fmt: skip
        else:
            notes.append("no frame has camera labels (image_2 + label_2): no precision/recall curves")
    if runs is not None and Path(runs).is_dir():
        for run_dir in sorted(p for p in Path(runs).iterdir() if p.is_dir()):
            try:
                log = read_training_log(run_dir)
                pictures[f"training_{run_dir.name}"] = demo.save(
                    f"training_{run_dir.name}.png", draw_training_curves(log, run_dir.name)
                )
            except (FileNotFoundError, ValueError) as exc:
                notes.append(f"training curves of {run_dir}: {exc}")
    elif runs is not None:
        notes.append(f"{runs}: no training runs, no training curves")

    intro = (
        f"perception demo: {len(frames)} frames in {time.perf_counter() - started:.1f} s; detections drawn with "
        f"score >= {plot_threshold:g}. Colours: car blue, pedestrian red, cyclist yellow, unknown grey."
    )
    sections.append(Section("Models and timings", tables=[models, _timing_table(frames)]))
    for f in frames:
        figs = [Figure(f.pictures[k], f"{f.dataset}/{f.frame_id}: {title}", text) for k, title, text in (
            ("camera", "camera detections", f"{f.num_shown} of {f.num_detections} detections drawn"),
            ("range", "range image, prediction | ground truth", "row 0 = top beam, column 0 = +45 deg azimuth"),
            ("bev", "bird's-eye view, prediction | ground truth",
             f"{f.num_points} points, {f.num_instances} predicted instances; x forward (up), y left (left)"),
        ) if k in f.pictures]  # fmt: skip
        sections.append(Section(f"{f.dataset}/{f.frame_id}", figures=figs))
    evaluation = Section("Evaluation", tables=[ap_table] if ap_table else [])
    if "pr_curves" in pictures:
        evaluation.figures.append(Figure(pictures["pr_curves"], "precision / recall",
                                         "KITTI devkit protocol, 41 recall samples"))  # fmt: skip
    evaluation.figures += [Figure(v, f"training curves: {k.removeprefix('training_')}", "from metrics.jsonl")
                           for k, v in pictures.items() if k.startswith("training_")]  # fmt: skip
    evaluation.notes = notes
    sections.append(evaluation)
    index = write_report(out_dir / "index.html", "perception demo", sections, intro)
    result = DemoResult(out_dir, index, frames, pictures, notes)
    if docs_dir is not None and frames:
        docs_dir = Path(docs_dir)
        docs_dir.mkdir(parents=True, exist_ok=True)
        chosen = {DOCS_NAMES[k]: v for k, v in frames[0].pictures.items()}
        if "pr_curves" in pictures:
            chosen["demo_pr_curves.png"] = pictures["pr_curves"]
        for name, src in chosen.items():
            result.docs.append(Path(shutil.copyfile(out_dir / src, docs_dir / name)))
            say(f"wrote {docs_dir / name}")
    return result
