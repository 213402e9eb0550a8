"""SqueezeSeg (Wu et al., ICRA 2018): point-wise segmentation of a LiDAR range image.

Architecture of ``squeezeSeg.py`` in the public SqueezeSeg repository: every stride and pooling acts
on the azimuth axis only, Fire modules encode, FireDeconv modules decode with element-wise skip sums,
dropout and a 3x3 classifier, then the recurrent CRF (``crf.py``).

Input: the raw range image (B, 5, H, W) (x, y, z, intensity, range, metres as projected) and the
valid-pixel mask (B, 1, H, W); the network normalises with the paper's mean/std inside the graph, so
the exported ONNX model takes what the projection produces. W must be a multiple of 16.

Differences from the original, on purpose: weights start from He initialisation (the original
started its encoder from ImageNet SqueezeNet weights, which cannot be downloaded here); TF "SAME"
padding of conv1 (bottom/right only for stride 2) is reproduced with an explicit pad.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from perception.lidar import squeezeseg_config as cfg
from perception.training.nets.blocks import BlockName, Fire, SqueezeNextFire, make_block
from perception.training.nets.crf import CRFForm, RecurrentCRF

__all__ = ["Fire", "FireDeconv", "SqueezeSeg", "make_block", "squeezeseg", "squeezeseg_without_crf"]


def bilinear_upsample_kernel(channels: int, size: tuple[int, int]) -> torch.Tensor:
    """Per-channel bilinear kernel (channels, channels, kh, kw) for a transposed convolution."""
    kernel = torch.zeros(channels, channels, *size)
    axes = []
    for k in size:
        factor = (k + 1) // 2
        centre = factor - 1 if k % 2 == 1 else factor - 0.5
        axes.append(1 - torch.abs(torch.arange(k, dtype=torch.float32) - centre) / factor)
    weights = axes[0][:, None] * axes[1][None, :]
    for c in range(channels):
        kernel[c, c] = weights
    return kernel


class FireDeconv(nn.Module):
    """1x1 squeeze, a 1x4 transposed convolution doubling the azimuth (bilinear init), then Fire expands."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.deconv = nn.ConvTranspose2d(squeeze, squeeze, kernel_size=(1, 4), stride=(1, 2), padding=(0, 1))
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.out_channels = expand1x1 + expand3x3
        with torch.no_grad():
            self.deconv.weight.copy_(bilinear_upsample_kernel(squeeze, (1, 4)))
            self.deconv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.deconv(F.relu(self.squeeze(x))))
        return torch.cat([F.relu(self.expand1x1(s)), F.relu(self.expand3x3(s))], dim=1)


def _azimuth_pool() -> nn.MaxPool2d:
    """3x3 max-pool, stride 1 x 2: TF "SAME" (pads only the right end of the azimuth for even widths)."""
    return nn.MaxPool2d(kernel_size=3, stride=(1, 2), padding=(1, 0), ceil_mode=True)


class SqueezeSeg(nn.Module):
    """SqueezeSeg network, optionally followed by the recurrent CRF; returns logits (B, C, H, W)."""

    def __init__(
        self,
        num_classes: int = cfg.NUM_CLASSES,
        crf: RecurrentCRF | None = None,
        dropout: float = 1.0 - cfg.DROPOUT_KEEP_PROB,
        input_mean: tuple[float, ...] = cfg.INPUT_MEAN,
        input_std: tuple[float, ...] = cfg.INPUT_STD,
        block: BlockName = "fire",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.block = block
        self.register_buffer("input_mean", torch.tensor(input_mean, dtype=torch.float32).view(1, 5, 1, 1))
        self.register_buffer("input_std", torch.tensor(input_std, dtype=torch.float32).view(1, 5, 1, 1))
        self.conv1 = nn.Conv2d(5, 64, 3, stride=(1, 2))
        self.conv1_skip = nn.Conv2d(5, 64, 1)
        self.pool1 = _azimuth_pool()
        self.fire2 = make_block(block, 64, 16, 64, 64)
        self.fire3 = make_block(block, 128, 16, 64, 64)
        self.pool3 = _azimuth_pool()
        self.fire4 = make_block(block, 128, 32, 128, 128)
        self.fire5 = make_block(block, 256, 32, 128, 128)
        self.pool5 = _azimuth_pool()
        self.fire6 = make_block(block, 256, 48, 192, 192)
        self.fire7 = make_block(block, 384, 48, 192, 192)
        self.fire8 = make_block(block, 384, 64, 256, 256)
        self.fire9 = make_block(block, 512, 64, 256, 256)
        self.fdeconv10 = FireDeconv(512, 64, 128, 128)
        self.fdeconv11 = FireDeconv(256, 32, 64, 64)
        self.fdeconv12 = FireDeconv(128, 16, 32, 32)
        self.fdeconv13 = FireDeconv(64, 16, 32, 32)
        self.drop = nn.Dropout(dropout)
        self.conv14 = nn.Conv2d(64, num_classes, 3, padding=1)
        self.crf = crf
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module is not self.conv14 and not self._is_crf(module):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, SqueezeNextFire):
                module.scale_residual_branch()
        nn.init.normal_(self.conv14.weight, std=0.01)
        nn.init.zeros_(self.conv14.bias)

    def _is_crf(self, module: nn.Module) -> bool:
        return self.crf is not None and any(module is m for m in self.crf.modules())

    def normalise(self, range_image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (range_image - self.input_mean) / self.input_std * mask

    def forward(self, range_image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, H, W) from a raw range image (B, 5, H, W) and its mask (B, 1, H, W) in {0, 1}."""
        x = self.normalise(range_image, mask)
        conv1 = F.relu(self.conv1(F.pad(x, (0, 1, 1, 1))))
        conv1_skip = F.relu(self.conv1_skip(x))
        fire3 = self.fire3(self.fire2(self.pool1(conv1)))
        fire5 = self.fire5(self.fire4(self.pool3(fire3)))
        fire9 = self.fire9(self.fire8(self.fire7(self.fire6(self.pool5(fire5)))))
        up = self.fdeconv10(fire9) + fire5
        up = self.fdeconv11(up) + fire3
        up = self.fdeconv12(up) + conv1
        up = self.fdeconv13(up) + conv1_skip
        logits = self.conv14(self.drop(up))
        if self.crf is not None:
            logits = self.crf(logits, x[:, :3], mask)
        return logits


def squeezeseg(num_classes: int = cfg.NUM_CLASSES, crf_iterations: int = cfg.CRF_ITERATIONS,
               crf_window: tuple[int, int] = cfg.CRF_WINDOW, crf_form: CRFForm = "original",
               block: BlockName = "fire") -> SqueezeSeg:  # fmt: skip
    """SqueezeSeg with the recurrent CRF (the paper's model; ``crf_form="standard"``: CRF-as-RNN's form).

    ``block``: the encoder's blocks, ``fire`` (the paper's), ``squeezenext`` or ``shift`` (lighter).
    """
    crf = RecurrentCRF(num_classes, iterations=crf_iterations, window=crf_window, form=crf_form)
    return SqueezeSeg(num_classes, crf=crf, block=block)


def squeezeseg_without_crf(num_classes: int = cfg.NUM_CLASSES, block: BlockName = "fire") -> SqueezeSeg:
    """SqueezeSeg without the CRF (the paper's ablation, and a faster model)."""
    return SqueezeSeg(num_classes, crf=None, block=block)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
