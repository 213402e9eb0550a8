"""Building blocks shared by the SqueezeNet-family models.

Three interchangeable encoder blocks, each taking ``(in_channels, squeeze, expand1x1, expand3x3)`` and
returning ``expand1x1 + expand3x3`` channels at the input's resolution, so a backbone can swap them:

* :class:`Fire` (SqueezeNet, Iandola et al. 2016): 1x1 squeeze, concatenated 1x1 and 3x3 expands.
* :class:`SqueezeNextFire` (SqueezeNext, Gholami et al. 2018): a two-stage 1x1 squeeze, separable 3x1 and
  1x3 convolutions, a 1x1 expand, and an identity skip when the channel counts match.
* :class:`ShiftFire` (Shift, Wu et al. 2018): the 3x3 convolution replaced by a parameter-free shift of
  channel groups to the 9 neighbours of a 3x3 window (zero fill), between 1x1 convolutions.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

BlockName = Literal["fire", "squeezenext", "shift"]


class Fire(nn.Module):
    """SqueezeNet Fire module: 1x1 squeeze, then concatenated 1x1 and 3x3 expands, all with ReLU."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.out_channels = expand1x1 + expand3x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(s)), F.relu(self.expand3x3(s))], dim=1)


class SqueezeNextFire(nn.Module):
    """SqueezeNext block with Fire's interface: squeeze to S, then S/2, 3x1 and 1x3 back to S, 1x1 expand.

    About 2-3x fewer multiply-accumulates than a Fire module with the same channels (SqueezeSeg's fire9:
    86 k vs 197 k per pixel). The skip adds the input when ``in_channels`` equals the output width.
    """

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        half = max(squeeze // 2, 1)
        self.out_channels = expand1x1 + expand3x3
        self.squeeze1 = nn.Conv2d(in_channels, squeeze, 1)
        self.squeeze2 = nn.Conv2d(squeeze, half, 1)
        self.conv3x1 = nn.Conv2d(half, squeeze, (3, 1), padding=(1, 0))
        self.conv1x3 = nn.Conv2d(squeeze, squeeze, (1, 3), padding=(0, 1))
        self.expand = nn.Conv2d(squeeze, self.out_channels, 1)
        self.residual = in_channels == self.out_channels

    def scale_residual_branch(self, factor: float = 0.5) -> None:
        """Shrink the expand's initial weights on a residual block (call after the model's own init).

        Without batch norm, each identity skip adds the branch's variance to the input's; scaling the
        branch keeps a stack of residual blocks from inflating activations at the start of training.
        """
        if self.residual:
            with torch.no_grad():
                self.expand.weight.mul_(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.squeeze2(F.relu(self.squeeze1(x))))
        s = F.relu(self.conv1x3(F.relu(self.conv3x1(s))))
        out = self.expand(s)
        return F.relu(out + x if self.residual else out)


def shift3x3(x: torch.Tensor) -> torch.Tensor:
    """Channel group g of 9 reads each pixel's neighbour at offset g of a 3x3 window (zero fill outside).

    The centre group (offset 0, 0) also takes the channels left over when C is not a multiple of 9.

    (B, C, H, W) -> (B, C, H, W). Parameter- and FLOP-free; exports to ONNX as Pad + Slice + Concat.
    """
    channels, height, width = (int(d) for d in x.shape[1:])  # static sizes (python ints also when traced)
    base, extra = divmod(channels, 9)
    sizes = [base + (extra if g == 4 else 0) for g in range(9)]  # the centre group (no shift) takes the rest
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    parts = []
    for group, (dy, dx) in zip(torch.split(x, sizes, dim=1), offsets, strict=True):
        padded = F.pad(group, (1, 1, 1, 1))
        parts.append(padded[:, :, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width])
    return torch.cat(parts, dim=1)


class ShiftFire(nn.Module):
    """Shift block with Fire's interface: 1x1 squeeze, 3x3 shift, 1x1 expand to both expands' width."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        if squeeze < 9:
            raise ValueError(f"a shift block needs at least 9 squeeze channels, got {squeeze}")
        self.out_channels = expand1x1 + expand3x3
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, self.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.expand(shift3x3(F.relu(self.squeeze(x)))))


BLOCKS: dict[str, type[nn.Module]] = {"fire": Fire, "squeezenext": SqueezeNextFire, "shift": ShiftFire}


def make_block(block: str, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> nn.Module:
    """An encoder block by name (``fire``, ``squeezenext`` or ``shift``) with Fire's interface."""
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {block!r}")
    return BLOCKS[block](in_channels, squeeze, expand1x1, expand3x3)
