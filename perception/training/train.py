"""Trainers for SqueezeSeg (segmentation) and SqueezeDet (detection), with the papers' optimiser settings.

One loop serves both tasks: SGD with momentum 0.9, weight decay 1e-4, lr 0.01 halved every 10,000 steps,
each gradient tensor clipped to norm 1.0 (as the originals' ``tf.clip_by_norm`` per variable), mixed
precision on CUDA. Batches are a pure function of (seed, step), so ``--resume`` continues with exactly
the batch and dropout state an uninterrupted run would have used. Checkpoints are written atomically
every ``checkpoint_every`` steps, at the end and on SIGINT/SIGTERM; ``best.pt`` keeps the best validation
score (mean IoU of car/pedestrian/cyclist for segmentation, moderate car AP for detection). Metrics go to
``metrics.jsonl`` and ``metrics.csv`` in the run directory, and to TensorBoard when it is installed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from perception.io.common import atomic_write, atomic_write_text
from perception.lidar import squeezeseg_config as seg_cfg
from perception.training.nets.blocks import BLOCKS

Task = Literal["seg", "det"]


@dataclass
class TrainConfig:
    """Training settings; defaults are the papers' (DESIGN.md) except batch size, which suits a CPU."""

    task: Task = "seg"
    data: str = ""
    val_data: str | None = None
    train_split: str | None = "train"
    val_split: str | None = "val"
    out: str = "runs/seg"
    steps: int = 1000
    batch_size: int = 8
    lr: float = seg_cfg.LEARNING_RATE
    lr_decay_steps: int = seg_cfg.LR_DECAY_STEPS
    lr_decay_factor: float = seg_cfg.LR_DECAY_FACTOR
    momentum: float = seg_cfg.MOMENTUM
    weight_decay: float = seg_cfg.WEIGHT_DECAY
    max_grad_norm: float = seg_cfg.MAX_GRAD_NORM
    warmup_steps: int = 0
    # sgd: the papers' (momentum, weight decay, clipping); adam: Adam with decoupled weight decay (AdamW),
    # which learns faster from scratch, where the papers started from ImageNet weights
    optimizer: str = "sgd"
    checkpoint_every: int = 100
    validate_every: int = 0  # steps; 0 = once per epoch
    log_every: int = 10
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    threads: int = 0
    # segmentation
    crf: bool = True
    crf_iterations: int = seg_cfg.CRF_ITERATIONS
    # "original": the paper's code (re-softmaxed unary, pairwise added; its output spans about [0, 1], which
    # slows learning from scratch); "standard": CRF-as-RNN (logits minus the compatibility-weighted messages)
    crf_form: str = "original"
    crop_width: int = 0  # random azimuth crops for speed (multiple of 16); 0 = full width
    flip: bool = True
    range_dropout: float = 0.0
    # point-level augmentation of KITTI-layout scans before projection (datasets.PointAugment; 0 = off)
    rotate_deg: float = 0.0
    scale_jitter: float = 0.0
    intensity_jitter: float = 0.0
    point_dropout: float = 0.0
    beam_dropout: float = 0.0
    # more training sets beside ``data``: [{data: DIR, split: NAME or FILE.txt, repeat: k}], e.g. a few
    # real KITTI scans oversampled k times per epoch beside a large synthetic set
    sources: list[dict[str, Any]] = field(default_factory=list)
    # KITTI box labels outside the camera's image (no object is labelled there): "ignore" leaves them out
    # of the loss; "background" trains them as background, as the paper's front-90-deg protocol scores them
    outside_camera: str = "ignore"
    # start from these weights: a checkpoint (.pt) or a model this project exported (.onnx)
    init: str | None = None
    # focal loss (SqueezeSegV2): CE x (1 - p_true)^gamma; 0 = plain cross-entropy
    focal_gamma: float = 0.0
    # which validation figure picks best.pt: "mean" (IoU of car, pedestrian, cyclist) or one class's IoU
    select: str = "mean"
    # per-class loss weights (unknown, car, pedestrian, cyclist); None = the paper's (1/15, 1, 10, 10), which
    # are about inverse to KITTI's class frequencies: re-derive them for data with other frequencies
    class_weights: tuple[float, ...] | None = None
    # detection
    variant: str = "squeezedet"
    # encoder blocks of either model: fire (the papers'), squeezenext or shift (lighter; nets/blocks.py)
    block: str = "fire"
    drift: tuple[int, int] = (150, 100)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training config must be a mapping")
        return cls.from_dict({**data, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        cfg = cls(**data)
        if cfg.task not in ("seg", "det"):
            raise ValueError(f"task must be seg or det, got {cfg.task!r}")
        if cfg.crop_width % 16:
            raise ValueError("crop_width must be a multiple of 16")
        if cfg.steps < 1 or cfg.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        cfg.drift = tuple(cfg.drift)  # type: ignore[assignment]
        if cfg.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be sgd or adam, got {cfg.optimizer!r}")
        if cfg.block not in BLOCKS:
            raise ValueError(f"block must be {', '.join(BLOCKS)}, got {cfg.block!r}")
        if cfg.crf_form not in ("original", "standard"):
            raise ValueError(f"crf_form must be original or standard, got {cfg.crf_form!r}")
        if cfg.select not in ("mean", *(f"iou_{c}" for c in seg_cfg.CLASSES[1:])):
            raise ValueError(f"select must be mean or iou_car/iou_pedestrian/iou_cyclist, got {cfg.select!r}")
        for source in cfg.sources:
            if not isinstance(source, dict) or "data" not in source or set(source) - {"data", "split", "repeat"}:
                raise ValueError(f"each of sources needs data (and optionally split, repeat), got {source!r}")
        if cfg.outside_camera not in ("ignore", "background"):
            raise ValueError(f"outside_camera must be ignore or background, got {cfg.outside_camera!r}")
        if cfg.focal_gamma < 0:
            raise ValueError("focal_gamma must be >= 0")
        if cfg.class_weights is not None:
            cfg.class_weights = tuple(float(w) for w in cfg.class_weights)
            if len(cfg.class_weights) != len(seg_cfg.CLASSES) or min(cfg.class_weights) <= 0:
                raise ValueError(f"class_weights needs {len(seg_cfg.CLASSES)} positive numbers, one per class")
        return cfg


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for but torch sees no GPU")
    return torch.device(name)


def clip_gradients_per_tensor(parameters: Iterator[torch.nn.Parameter], max_norm: float) -> float:
    """Clip each gradient tensor to ``max_norm`` (the originals' per-variable clip); return the global norm."""
    total = 0.0
    for p in parameters:
        if p.grad is None:
            continue
        norm = float(p.grad.norm())
        total += norm * norm
        if norm > max_norm:
            p.grad.mul_(max_norm / (norm + 1e-12))
    return math.sqrt(total)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> tuple[int, list[int]]:
    """(epoch, dataset indices) of the batch at ``step``: a fresh permutation each epoch, seeded by (seed, epoch)."""
    per_epoch = max(1, n // batch_size)
    epoch, b = divmod(step, per_epoch)
    perm = np.random.default_rng((seed, epoch)).permutation(n)
    if n < batch_size:
        perm = np.resize(perm, batch_size)
    return epoch, perm[b * batch_size : (b + 1) * batch_size].tolist()


class TrainingTask:
    """What differs between segmentation and detection: data, model, loss, validation."""

    name: str
    model: torch.nn.Module
    train_set: Any
    val_set: Any | None

    def batch(self, indices: list[int], epoch: int, device: torch.device) -> tuple[Any, ...]:
        raise NotImplementedError

    def loss(self, batch: tuple[Any, ...]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def validate(self, device: torch.device) -> dict[str, float]:
        raise NotImplementedError

    def score(self, metrics: dict[str, float]) -> float:
        raise NotImplementedError


class SegmentationTask(TrainingTask):
    name = "seg"

    def __init__(self, cfg: TrainConfig) -> None:
        from torch.utils.data import ConcatDataset

        from perception.io.kitti import read_split_ids
        from perception.training.datasets import KittiScanDataset, PointAugment, RepeatedDataset, SqueezeSegNpyDataset
        from perception.training.nets.squeezeseg import squeezeseg, squeezeseg_without_crf

        self.cfg = cfg
        self.model = (
            squeezeseg(crf_iterations=cfg.crf_iterations, crf_form=cfg.crf_form, block=cfg.block)  # type: ignore[arg-type]
            if cfg.crf
            else squeezeseg_without_crf(block=cfg.block)  # type: ignore[arg-type]
        )

        if cfg.init:
            load_initial_weights(self.model, cfg.init)
        augment = PointAugment(flip=cfg.flip, rotate_deg=cfg.rotate_deg, scale=cfg.scale_jitter,
                               intensity_jitter=cfg.intensity_jitter, point_dropout=cfg.point_dropout,
                               beam_dropout=cfg.beam_dropout)  # fmt: skip

        def make(root: str, split: str | None, train: bool) -> Any:
            base = Path(root)
            if (base / "velodyne").is_dir():
                return KittiScanDataset(base, split=split, augment=augment if train else None, seed=cfg.seed,
                                        ignore_outside_camera=cfg.outside_camera == "ignore")  # fmt: skip
            kwargs = {"flip": cfg.flip and train, "dropout": cfg.range_dropout if train else 0.0, "seed": cfg.seed}
            npy_dir = base / "squeezeseg" if (base / "squeezeseg").is_dir() else base
            return SqueezeSegNpyDataset(npy_dir, files=read_split_ids(base, split), **kwargs)

        parts = [make(cfg.data, cfg.train_split, True)]
        for source in cfg.sources:
            part = make(str(source["data"]), source.get("split"), True)
            parts.append(RepeatedDataset(part, int(source.get("repeat", 1))))
        self.train_set = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        val_root = cfg.val_data or cfg.data
        self.val_set = make(val_root, cfg.val_split, False) if cfg.val_split or cfg.val_data else None

    def batch(self, indices: list[int], epoch: int, device: torch.device) -> tuple[Any, ...]:
        from perception.training.datasets import set_epoch

        set_epoch(self.train_set, epoch)
        items = [self.train_set[i] for i in indices]
        image, mask, labels = (torch.stack([it[k] for it in items]) for k in range(3))
        if self.cfg.crop_width and self.cfg.crop_width < image.shape[-1]:
            rng = np.random.default_rng((self.cfg.seed, epoch, indices[0], 7))
            start = int(rng.integers(0, image.shape[-1] - self.cfg.crop_width + 1))
            cut = slice(start, start + self.cfg.crop_width)
            image, mask, labels = image[..., cut], mask[..., cut], labels[..., cut]
        return image.to(device), mask.to(device), labels.to(device)

    def loss(self, batch: tuple[Any, ...]) -> dict[str, torch.Tensor]:
        from perception.training.losses import squeezeseg_loss

        image, mask, labels = batch
        logits = self.model(image, mask)
        weights = self.cfg.class_weights or seg_cfg.CLASS_LOSS_WEIGHTS
        gamma = self.cfg.focal_gamma
        return {"total": squeezeseg_loss(logits.float(), labels, mask[:, 0], class_weights=weights, focal_gamma=gamma)}

    @torch.no_grad()
    def validate(self, device: torch.device) -> dict[str, float]:
        from perception.training.evaluate import segmentation_metrics

        self.model.eval()
        preds, gts, masks = [], [], []
        for i in range(len(self.val_set)):
            image, mask, labels = self.val_set[i]
            logits = self.model(image[None].to(device), mask[None].to(device))
            preds.append(logits.argmax(1)[0].cpu().numpy())
            gts.append(labels.numpy())
            masks.append((mask[0].numpy() > 0) & (labels.numpy() >= 0))  # IGNORE_LABEL pixels are not scored
        self.model.train()
        return segmentation_metrics(np.stack(preds), np.stack(gts), np.stack(masks)).flat()

    def score(self, metrics: dict[str, float]) -> float:
        if self.cfg.select != "mean":
            return float(metrics.get(self.cfg.select, np.nan))
        values = [metrics.get(f"iou_{c}", np.nan) for c in ("car", "pedestrian", "cyclist")]
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


class DetectionTask(TrainingTask):
    name = "det"

    def __init__(self, cfg: TrainConfig) -> None:
        from perception.camera.anchors import squeezedet_anchors
        from perception.training.datasets import KittiDetectionDataset
        from perception.training.nets.squeezedet import squeezedet, squeezedet_plus

        self.cfg = cfg
        builders = {"squeezedet": squeezedet, "squeezedet+": squeezedet_plus}
        if cfg.variant not in builders:
            raise ValueError(f"unknown detector variant {cfg.variant!r}")
        self.model = builders[cfg.variant](block=cfg.block)  # type: ignore[arg-type]
        grid_w, grid_h = self.model.variant.grid
        self.anchors = squeezedet_anchors(grid_w=grid_w, grid_h=grid_h)
        self.train_set = KittiDetectionDataset(cfg.data, cfg.train_split, augment=True, drift=cfg.drift, seed=cfg.seed)
        val_root = cfg.val_data or cfg.data
        self.val_set = KittiDetectionDataset(val_root, cfg.val_split) if cfg.val_split or cfg.val_data else None

    def batch(self, indices: list[int], epoch: int, device: torch.device) -> tuple[Any, ...]:
        from perception.training.losses import squeezedet_targets

        self.train_set.epoch = epoch
        items = [self.train_set[i] for i in indices]
        targets = [squeezedet_targets(it[1].numpy(), it[2].numpy(), self.anchors) for it in items]
        stack = [torch.from_numpy(np.stack([getattr(t, k) for t in targets])).to(device)
                 for k in ("mask", "deltas", "labels", "boxes")]  # fmt: skip
        return (torch.stack([it[0] for it in items]).to(device), *stack)

    def loss(self, batch: tuple[Any, ...]) -> dict[str, torch.Tensor]:
        from perception.training.losses import squeezedet_loss

        images, mask, deltas, labels, boxes = batch
        class_logits, conf, pred_deltas = self.model.split_outputs(self.model(images).float())
        anchors = torch.from_numpy(self.anchors).to(images.device)
        return squeezedet_loss(class_logits, conf, pred_deltas, anchors, mask, deltas, labels, boxes)

    @torch.no_grad()
    def validate(self, device: torch.device) -> dict[str, float]:
        from perception.camera.boxes import postprocess_detections
        from perception.evaluation.kitti_object import evaluate_kitti_2d
        from perception.io import read_image, read_label

        self.model.eval()
        gt, dt = {}, {}
        for i, frame_id in enumerate(self.val_set.ids):
            image = self.val_set[i][0]
            h, w = read_image(self.val_set.root / "image_2" / f"{frame_id}.png").shape[:2]
            classes, conf, deltas = self.model.split_outputs(self.model(image[None].to(device)))
            dets = postprocess_detections(
                torch.softmax(classes, -1)[0].cpu().numpy(), torch.sigmoid(conf)[0].cpu().numpy(),
                deltas[0].cpu().numpy(), self.anchors, original_size=(w, h),
            )  # fmt: skip
            dt[frame_id] = [d.to_kitti() for d in dets]
            gt[frame_id] = read_label(self.val_set.root / "label_2" / f"{frame_id}.txt")
        self.model.train()
        ap = evaluate_kitti_2d(gt, dt, metric="R40")
        return {f"ap_{c}_{d}": (v if v is not None else float("nan"))
                for c in ("car", "pedestrian", "cyclist") for d, v in ap[c].items()}  # fmt: skip

    def score(self, metrics: dict[str, float]) -> float:
        return float(metrics.get("ap_car_moderate", float("nan")))


class MetricsLog:
    """Appends metric rows to metrics.jsonl and metrics.csv (and TensorBoard when installed)."""

    def __init__(self, run_dir: Path) -> None:
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb: Any = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        with self.jsonl.open("a") as handle:
            # strict JSON: NaN (an undefined metric, e.g. precision of a class never predicted) becomes null
            clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
            handle.write(json.dumps(clean, allow_nan=False) + "\n")
        new = not self.csv.exists()
        with self.csv.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "key", "value"])
            for key, value in row.items():
                if key != "step":
                    writer.writerow([row["step"], key, value])
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self.tb.add_scalar(key, value, row["step"])


def load_initial_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Weights to start training from: a checkpoint or state dict (.pt), or an exported segmentation .onnx."""
    from perception.training.export import _load_weights, segmentation_model_from_onnx

    if str(path).endswith(".onnx"):
        source = segmentation_model_from_onnx(path)
        try:
            model.load_state_dict(source.state_dict())
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ValueError(f"{path}: weights do not fit {type(model).__name__} ({first})") from None
    else:
        _load_weights(model, path)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save into memory, then an atomic write: a kill leaves the previous checkpoint intact."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)  # our own file: it holds RNG states


def train(
    cfg: TrainConfig, resume: bool = False, progress: Callable[[int, dict[str, float]], None] | None = None
) -> dict[str, Any]:
    """Run (or resume) training; returns a summary with the final and best validation metrics."""
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    task: TrainingTask = SegmentationTask(cfg) if cfg.task == "seg" else DetectionTask(cfg)
    model = task.model.to(device).train()
    optimizer: torch.optim.Optimizer
    if cfg.optimizer == "adam":
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def lr_factor(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        return warm * cfg.lr_decay_factor ** (step // cfg.lr_decay_steps)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    run_dir = Path(cfg.out)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    log = MetricsLog(run_dir)
    step, best, last_val = 0, -math.inf, {}
    if resume:
        last = ckpt_dir / "last.pt"
        if not last.is_file():
            raise ValueError(f"{last}: no checkpoint to resume from")
        state = load_checkpoint(last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, best, last_val = state["step"], state["best_score"], state.get("val_metrics", {})

    stop = {"signal": None}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def checkpoint(name: str = "last.pt") -> None:
        save_checkpoint(ckpt_dir / name, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
            "step": step, "best_score": best, "val_metrics": last_val, "config": asdict(cfg), "task": cfg.task,
        })  # fmt: skip

    n = len(task.train_set)
    per_epoch = max(1, n // cfg.batch_size)
    validate_every = cfg.validate_every or per_epoch
    history: list[float] = []
    t_start, frames = time.perf_counter(), 0
    try:
        while step < cfg.steps and stop["signal"] is None:
            epoch, indices = batch_indices(n, cfg.batch_size, cfg.seed, step)
            batch = task.batch(indices, epoch, device)
            with torch.autocast(device.type, enabled=use_amp):
                losses = task.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            scaler.unscale_(optimizer)
            grad_norm = clip_gradients_per_tensor(model.parameters(), cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            frames += len(indices)
            loss_value = float(losses["total"].detach())
            history.append(loss_value)
            if step % cfg.log_every == 0 or step == 1:
                elapsed = time.perf_counter() - t_start
                row = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                       "frames_per_s": frames / elapsed if elapsed > 0 else 0.0,
                       **{f"loss_{k}": float(v.detach()) for k, v in losses.items()}}  # fmt: skip
                log.write(row)
                if progress:
                    progress(step, row)
            if task.val_set is not None and step % validate_every == 0:
                last_val = task.validate(device)
                score = task.score(last_val)
                log.write({"step": step, **{f"val_{k}": v for k, v in last_val.items()}})
                if math.isfinite(score) and score > best:
                    best = score
                    checkpoint("best.pt")
            if step % cfg.checkpoint_every == 0:
                checkpoint()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    checkpoint()
    if not (ckpt_dir / "best.pt").exists():
        checkpoint("best.pt")
    elapsed = time.perf_counter() - t_start
    return {
        "step": step,
        "interrupted_by_signal": stop["signal"],
        "losses": history,
        "val_metrics": last_val,
        "best_score": best,
        "frames_per_s": frames / elapsed if elapsed > 0 else 0.0,
        "run_dir": str(run_dir),
    }
