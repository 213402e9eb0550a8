"""SqueezeDet and SqueezeDet+ (Wu et al., CVPR workshops 2017): single-shot detection with a ConvDet head.

Architectures of ``squeezeDet.py`` and ``squeezeDetPlus.py`` in the public squeezeDet repository:

* SqueezeDet: conv1 3x3/2 (64) -> max-pool 3x3/2 -> fire2-3 -> pool -> fire4-5 -> pool -> fire6-9 ->
  fire10-11 -> dropout -> ConvDet 3x3; TF "SAME" padding, so a 1248 x 384 input gives a 78 x 24 grid.
* SqueezeDet+: conv1 7x7/2 (96) and wider Fire modules with "VALID" padding: a 76 x 22 grid.

The ConvDet output (B, K * (C + 1 + 4), Hg, Wg) read channels-last per grid cell holds, for K anchors
and C classes: class logits (anchor k at k*C .. k*C + C - 1), one confidence logit per anchor, then
deltas dx, dy, dw, dh per anchor; anchors are numbered (row * Wg + col) * K + k.

The network takes the image as the ONNX graph receives it: float RGB in [0, 255], (B, 3, 384, 1248);
it flips to BGR and subtracts the original BGR means inside, as the original data layer did.
Weights start from He initialisation (the original started from ImageNet SqueezeNet weights, which
cannot be downloaded here); ConvDet starts from N(0, 1e-4) as in the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from perception.training.nets.blocks import BlockName, SqueezeNextFire, make_block

BGR_MEANS = (103.939, 116.779, 123.68)
# Spread of mean-subtracted pixel values (ImageNet's per-channel std is 57-58 on the 0-255 scale). The
# network keeps the original's unnormalised input; conv1's He initialisation is divided by this so that
# training from scratch starts with unit-scale activations (the original started from ImageNet weights).
PIXEL_STD = 58.0
INPUT_WIDTH, INPUT_HEIGHT = 1248, 384
NUM_ANCHORS_PER_CELL = 9
DET_CLASSES = ("car", "pedestrian", "cyclist")


@dataclass(frozen=True)
class SqueezeDetVariant:
    name: str
    conv1: tuple[int, int]  # (filters, kernel)
    fires: tuple[tuple[str, int, int, int], ...]  # (name, squeeze, expand1x1, expand3x3)
    pool_after: tuple[str, ...]  # pool after conv1 and after these fires
    same_padding: bool
    grid: tuple[int, int]  # (width, height) of the ConvDet grid at 1248 x 384


SQUEEZEDET = SqueezeDetVariant(
    name="squeezedet",
    conv1=(64, 3),
    fires=(
        ("fire2", 16, 64, 64),
        ("fire3", 16, 64, 64),
        ("fire4", 32, 128, 128),
        ("fire5", 32, 128, 128),
        ("fire6", 48, 192, 192),
        ("fire7", 48, 192, 192),
        ("fire8", 64, 256, 256),
        ("fire9", 64, 256, 256),
        ("fire10", 96, 384, 384),
        ("fire11", 96, 384, 384),
    ),
    pool_after=("fire3", "fire5"),
    same_padding=True,
    grid=(78, 24),
)

SQUEEZEDET_PLUS = SqueezeDetVariant(
    name="squeezedet+",
    conv1=(96, 7),
    fires=(
        ("fire2", 96, 64, 64),
        ("fire3", 96, 64, 64),
        ("fire4", 192, 128, 128),
        ("fire5", 192, 128, 128),
        ("fire6", 288, 192, 192),
        ("fire7", 288, 192, 192),
        ("fire8", 384, 256, 256),
        ("fire9", 384, 256, 256),
        ("fire10", 384, 256, 256),
        ("fire11", 384, 256, 256),
    ),
    pool_after=("fire4", "fire8"),
    same_padding=False,
    grid=(76, 22),
)


class MaxPoolSame(nn.Module):
    """3x3 stride-2 max-pool; TF "SAME" equals ceil-mode pooling without padding, "VALID" floor mode."""

    def __init__(self, same: bool) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=same)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


class SqueezeDet(nn.Module):
    """SqueezeDet backbone + ConvDet; returns the raw ConvDet map (B, K * (C + 5), Hg, Wg)."""

    def __init__(
        self,
        variant: SqueezeDetVariant = SQUEEZEDET,
        num_classes: int = len(DET_CLASSES),
        anchors_per_cell: int = NUM_ANCHORS_PER_CELL,
        dropout: float = 0.5,
        block: BlockName = "fire",
    ) -> None:
        super().__init__()
        self.variant = variant
        self.block = block
        self.num_classes = num_classes
        self.anchors_per_cell = anchors_per_cell
        self.register_buffer("bgr_means", torch.tensor(BGR_MEANS, dtype=torch.float32).view(1, 3, 1, 1))
        filters, kernel = variant.conv1
        self.conv1 = nn.Conv2d(3, filters, kernel, stride=2)
        self.pool1 = MaxPoolSame(variant.same_padding)
        layers: list[nn.Module] = []
        channels = filters
        for name, squeeze, e1, e3 in variant.fires:
            fire = make_block(block, channels, squeeze, e1, e3)
            self.add_module(name, fire)
            layers.append(fire)
            channels = fire.out_channels
            if name in variant.pool_after:
                pool = MaxPoolSame(variant.same_padding)
                self.add_module(f"pool_{name}", pool)
                layers.append(pool)
        self.features = layers
        self.drop = nn.Dropout(dropout)
        self.convdet = nn.Conv2d(channels, anchors_per_cell * (num_classes + 1 + 4), 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module is not self.convdet:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, SqueezeNextFire):
                module.scale_residual_branch()
        with torch.no_grad():
            self.conv1.weight /= PIXEL_STD
        nn.init.normal_(self.convdet.weight, std=1e-4)
        nn.init.zeros_(self.convdet.bias)

    def preprocess(self, image_rgb: torch.Tensor) -> torch.Tensor:
        """RGB [0, 255] (B, 3, H, W) -> BGR minus the original means."""
        return image_rgb.flip(1) - self.bgr_means

    def forward(self, image_rgb: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(image_rgb)
        if self.variant.same_padding:
            x = F.pad(x, (0, 1, 0, 1))  # TF "SAME" for a 3x3 stride-2 conv on even sizes: bottom/right only
        x = self.pool1(F.relu(self.conv1(x)))
        for layer in self.features:
            x = layer(x)
        return self.convdet(self.drop(x))

    def split_outputs(self, convdet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class logits (B, A, C), confidence logits (B, A), deltas (B, A, 4)) with A = Hg * Wg * K."""
        b = convdet.shape[0]
        k, c = self.anchors_per_cell, self.num_classes
        per_cell = convdet.permute(0, 2, 3, 1)  # channels last: (B, Hg, Wg, K * (C + 5))
        class_logits = per_cell[..., : k * c].reshape(b, -1, c)
        confidence = per_cell[..., k * c : k * (c + 1)].reshape(b, -1)
        deltas = per_cell[..., k * (c + 1) :].reshape(b, -1, 4)
        return class_logits, confidence, deltas


def squeezedet(num_classes: int = len(DET_CLASSES), block: BlockName = "fire") -> SqueezeDet:
    """SqueezeDet (about 2 M parameters, 78 x 24 x 9 anchors at 1248 x 384).

    ``block``: the backbone's blocks, ``fire`` (the paper's), ``squeezenext`` or ``shift`` (lighter).
    """
    return SqueezeDet(SQUEEZEDET, num_classes, block=block)


def squeezedet_plus(num_classes: int = len(DET_CLASSES), block: BlockName = "fire") -> SqueezeDet:
    """SqueezeDet+ (about 7 M parameters, 76 x 22 x 9 anchors at 1248 x 384)."""
    return SqueezeDet(SQUEEZEDET_PLUS, num_classes, block=block)
