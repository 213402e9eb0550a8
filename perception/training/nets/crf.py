"""SqueezeSeg's recurrent CRF: mean-field iterations as convolutions, exportable to ONNX.

Written from ``_recurrent_crf_layer``, ``_locally_connected_layer`` and ``_bilateral_filter_layer`` of
the public SqueezeSeg repository. For a window of ``kh x kw`` pixels around pixel i (its centre left
out, zero padding at the borders), with C classes:

* once per frame, bilateral weights ``w[c, j, i] = exp(-|p_i - p_j|^2 / (2 theta_r[c]^2))`` on the
  *normalised* x, y, z of the neighbours j;
* each iteration, from the current output ``x``:
  ``Q = softmax(x)``;
  ``ang = G_a * Q`` (a fixed per-class Gaussian on pixel offsets, centre zeroed, ``theta_a``);
  ``bi = (sum_j Q_j m_j w_ij) * m_i * (G_b * Q)`` (``m`` the valid-pixel mask, ``G_b`` a Gaussian like
  ``G_a`` with the bilateral ``theta_a``);
  ``x = Q + K_a ang + K_b bi``, with ``K_a``, ``K_b`` trainable C x C compatibility matrices
  initialised ``(1 - I) * 0.02`` and ``(1 - I) * 0.1``.

Quirks of the original, kept by default (``form="original"``): the pairwise term is added to, not
subtracted from, the unary; the unary is the softmax of the previous iteration's output rather than
the network's logits; the bilateral message multiplies two window sums. ``form="standard"`` is the
CRF-as-RNN form instead: ``x = logits - (K_a ang + K_b bi)`` with the unary fixed to the logits.

All loops are over static window offsets and a fixed iteration count, so ``torch.onnx.export``
unrolls them into one graph.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from perception.lidar import squeezeseg_config as cfg

CRFForm = Literal["original", "standard"]


def gaussian_window_kernel(window: tuple[int, int], thetas: tuple[float, ...]) -> np.ndarray:
    """Depthwise kernel (C, 1, kh, kw): ``exp(-(dz^2 + da^2) / (2 theta_c^2))``, centre zeroed."""
    kh, kw = window
    dz = np.arange(kh) - kh // 2
    da = np.arange(kw) - kw // 2
    d2 = dz[:, None] ** 2 + da[None, :] ** 2
    kernel = np.stack([np.exp(-d2 / (2.0 * t**2)) for t in thetas]).astype(np.float32)
    kernel[:, kh // 2, kw // 2] = 0.0
    return kernel[:, None]


def neighbour_offsets(window: tuple[int, int]) -> list[tuple[int, int]]:
    """(dz, da) of each window position but the centre, row-major: the neighbour order of the CRF."""
    kh, kw = window
    return [(i - kh // 2, j - kw // 2) for i in range(kh) for j in range(kw) if (i, j) != (kh // 2, kw // 2)]


def _neighbour_kernel(window: tuple[int, int], channels: int) -> torch.Tensor:
    """Grouped one-hot kernel (channels * K, 1, kh, kw): output channel c * K + n is channel c at neighbour n."""
    kh, kw = window
    offsets = neighbour_offsets(window)
    one_hot = torch.zeros(len(offsets), 1, kh, kw)
    for n, (dz, da) in enumerate(offsets):
        one_hot[n, 0, dz + kh // 2, da + kw // 2] = 1.0
    return one_hot.repeat(channels, 1, 1, 1)


class RecurrentCRF(nn.Module):
    """Mean-field CRF over a range image (see the module docstring for the equations)."""

    def __init__(
        self,
        num_classes: int = cfg.NUM_CLASSES,
        iterations: int = cfg.CRF_ITERATIONS,
        window: tuple[int, int] = cfg.CRF_WINDOW,
        ang_theta_a: tuple[float, ...] = cfg.ANG_THETA_A,
        bilateral_theta_a: tuple[float, ...] = cfg.BILATERAL_THETA_A,
        bilateral_theta_r: tuple[float, ...] = cfg.BILATERAL_THETA_R,
        ang_coef: float = cfg.ANG_FILTER_COEF,
        bi_coef: float = cfg.BI_FILTER_COEF,
        form: CRFForm = "original",
    ) -> None:
        super().__init__()
        kh, kw = window
        if kh % 2 == 0 or kw % 2 == 0 or kh < 1 or kw < 1 or kh * kw < 2:
            raise ValueError(f"CRF window must have odd sides and more than one pixel, got {window}")
        if iterations < 1:
            raise ValueError("CRF iterations must be >= 1")
        for name, thetas in (("ang_theta_a", ang_theta_a), ("bilateral_theta_a", bilateral_theta_a),
                             ("bilateral_theta_r", bilateral_theta_r)):  # fmt: skip
            if len(thetas) != num_classes:
                raise ValueError(f"{name} needs one value per class ({num_classes}), got {len(thetas)}")
        if form not in ("original", "standard"):
            raise ValueError(f"unknown CRF form {form!r}")
        self.num_classes = num_classes
        self.iterations = iterations
        self.window = (kh, kw)
        self.form = form
        self.num_neighbours = kh * kw - 1
        self.padding = (kh // 2, kw // 2)
        self.register_buffer("ang_kernel", torch.from_numpy(gaussian_window_kernel(self.window, ang_theta_a)))
        self.register_buffer("bi_ang_kernel", torch.from_numpy(gaussian_window_kernel(self.window, bilateral_theta_a)))
        self.register_buffer("class_neighbours", _neighbour_kernel(self.window, num_classes))
        self.register_buffer("xyz_neighbours", _neighbour_kernel(self.window, 3))
        inv_two_theta_r2 = 1.0 / (2.0 * torch.tensor(bilateral_theta_r, dtype=torch.float32) ** 2)
        self.register_buffer("inv_two_theta_r2", inv_two_theta_r2.view(1, num_classes, 1, 1, 1))
        off_diagonal = 1.0 - torch.eye(num_classes)
        self.ang_compat = nn.Conv2d(num_classes, num_classes, 1, bias=False)
        self.bi_compat = nn.Conv2d(num_classes, num_classes, 1, bias=False)
        with torch.no_grad():
            self.ang_compat.weight.copy_((off_diagonal * ang_coef)[:, :, None, None])
            self.bi_compat.weight.copy_((off_diagonal * bi_coef)[:, :, None, None])

    def neighbours(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, K, H, W): each channel's values at the K window neighbours (zero padded)."""
        b, c, h, w = x.shape
        out = F.conv2d(x, kernel, padding=self.padding, groups=c)
        return out.view(b, c, self.num_neighbours, h, w)

    def bilateral_weights(self, xyz: torch.Tensor) -> torch.Tensor:
        """Weights (B, C, K, H, W) from normalised x, y, z (B, 3, H, W)."""
        diff = xyz.unsqueeze(2) - self.neighbours(xyz, self.xyz_neighbours)
        sq = diff * diff
        dist2 = sq[:, 0:1] + sq[:, 1:2] + sq[:, 2:3]  # not a ReduceSum: ONNX Runtime reduces a middle axis slowly
        return torch.exp(-dist2 * self.inv_two_theta_r2)

    def messages(self, q: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Angular and bilateral messages (each (B, C, H, W)) of class probabilities ``q``."""
        c = self.num_classes
        ang = F.conv2d(q, self.ang_kernel, padding=self.padding, groups=c)
        bi_ang = F.conv2d(q, self.bi_ang_kernel, padding=self.padding, groups=c)
        q_nbr = self.neighbours(q * mask, self.class_neighbours)
        bi = (q_nbr * weights).sum(dim=2) * mask * bi_ang
        return ang, bi

    def forward(self, logits: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Refined scores (B, C, H, W) from network logits, normalised xyz (B, 3, H, W) and mask (B, 1, H, W)."""
        weights = self.bilateral_weights(xyz)
        out = logits
        for _ in range(self.iterations):
            q = torch.softmax(out, dim=1)
            ang, bi = self.messages(q, weights, mask)
            pairwise = self.ang_compat(ang) + self.bi_compat(bi)
            out = q + pairwise if self.form == "original" else logits - pairwise
        return out
