"""SqueezeSeg and its recurrent CRF (torch), checked against the paper's layout and a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the [train] extra (torch) is not installed")

from perception.lidar import squeezeseg_config as cfg  # noqa: E402
from perception.training.nets.crf import RecurrentCRF, neighbour_offsets  # noqa: E402
from perception.training.nets.squeezeseg import (  # noqa: E402
    Fire,
    FireDeconv,
    count_parameters,
    squeezeseg,
    squeezeseg_without_crf,
)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def shifted(a: np.ndarray, dz: int, da: int) -> np.ndarray:
    """a[..., z + dz, x + da] with zeros outside (a is (..., H, W))."""
    h, w = a.shape[-2:]
    out = np.zeros_like(a)
    zs, ze = max(0, -dz), min(h, h - dz)
    xs, xe = max(0, -da), min(w, w - da)
    out[..., zs:ze, xs:xe] = a[..., zs + dz : ze + dz, xs + da : xe + da]
    return out


def reference_crf_iteration(x, xyz, mask, window, theta_a, theta_bi_a, theta_r, k_ang, k_bi):
    """One mean-field iteration of SqueezeSeg's CRF, written from the equations (DESIGN.md), numpy float64.

    x (C, H, W) current output, xyz (3, H, W) normalised coordinates, mask (H, W) in {0, 1}.
    """
    q = softmax(x, axis=0)
    c = x.shape[0]
    ang = np.zeros_like(q)
    bi_ang = np.zeros_like(q)
    bi_sum = np.zeros_like(q)
    for dz in range(-(window[0] // 2), window[0] // 2 + 1):
        for da in range(-(window[1] // 2), window[1] // 2 + 1):
            if dz == 0 and da == 0:
                continue
            d2_pix = dz * dz + da * da
            q_j = shifted(q, dz, da)
            m_j = shifted(mask, dz, da)
            dist2 = ((xyz - shifted(xyz, dz, da)) ** 2).sum(axis=0)
            for k in range(c):
                ang[k] += np.exp(-d2_pix / (2 * theta_a[k] ** 2)) * q_j[k]
                bi_ang[k] += np.exp(-d2_pix / (2 * theta_bi_a[k] ** 2)) * q_j[k]
                bi_sum[k] += q_j[k] * m_j * np.exp(-dist2 / (2 * theta_r[k] ** 2))
    bi = bi_sum * mask * bi_ang
    return q + np.einsum("kc,chw->khw", k_ang, ang) + np.einsum("kc,chw->khw", k_bi, bi)


@pytest.mark.parametrize("window", [(3, 5), (5, 7)])
def test_crf_iteration_matches_numpy_reference(window):
    rng = np.random.default_rng(0)
    c, h, w = 4, 12, 20
    x = rng.normal(size=(c, h, w)).astype(np.float32) * 2
    # neighbouring points close in space, so the bilateral term is far from zero
    xyz = (np.cumsum(rng.normal(scale=0.004, size=(3, h, w)), axis=2)).astype(np.float32)
    mask = (rng.random((h, w)) > 0.2).astype(np.float32)
    crf = RecurrentCRF(iterations=1, window=window)
    with torch.no_grad():
        crf.ang_compat.weight.add_(torch.from_numpy(rng.normal(scale=0.05, size=(c, c, 1, 1)).astype(np.float32)))
        out = crf(torch.from_numpy(x)[None], torch.from_numpy(xyz)[None], torch.from_numpy(mask)[None, None])
    expected = reference_crf_iteration(
        x.astype(np.float64), xyz.astype(np.float64), mask.astype(np.float64), window,
        cfg.ANG_THETA_A, cfg.BILATERAL_THETA_A, cfg.BILATERAL_THETA_R,
        crf.ang_compat.weight[:, :, 0, 0].detach().double().numpy(),
        crf.bi_compat.weight[:, :, 0, 0].detach().double().numpy(),
    )  # fmt: skip
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-5, rtol=0)
    # the bilateral message is not trivially zero in this case
    bi_only = reference_crf_iteration(x, xyz, mask, window, cfg.ANG_THETA_A, cfg.BILATERAL_THETA_A,
                                      cfg.BILATERAL_THETA_R, np.zeros((c, c)), np.eye(c))  # fmt: skip
    assert np.abs(bi_only - softmax(x, 0)).max() > 0.05


def test_crf_three_iterations_equal_three_reference_iterations():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 8, 16))
    xyz = rng.normal(scale=0.01, size=(3, 8, 16))
    mask = (rng.random((8, 16)) > 0.3).astype(np.float64)
    crf = RecurrentCRF(iterations=3).double()
    with torch.no_grad():
        out = crf(torch.from_numpy(x)[None], torch.from_numpy(xyz)[None], torch.from_numpy(mask)[None, None])
    k_ang = crf.ang_compat.weight[:, :, 0, 0].detach().numpy()
    k_bi = crf.bi_compat.weight[:, :, 0, 0].detach().numpy()
    ref = x
    for _ in range(3):
        ref = reference_crf_iteration(ref, xyz, mask, (3, 5), cfg.ANG_THETA_A, cfg.BILATERAL_THETA_A,
                                      cfg.BILATERAL_THETA_R, k_ang, k_bi)  # fmt: skip
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-10)


def test_crf_initialisation_and_options():
    crf = RecurrentCRF()
    off = 1 - np.eye(4)
    np.testing.assert_allclose(crf.ang_compat.weight[:, :, 0, 0].detach().numpy(), off * 0.02, rtol=1e-6)
    np.testing.assert_allclose(crf.bi_compat.weight[:, :, 0, 0].detach().numpy(), off * 0.1, rtol=1e-6)
    assert crf.ang_compat.weight.requires_grad and crf.bi_compat.weight.requires_grad
    assert len(neighbour_offsets((3, 5))) == 14 and (0, 0) not in neighbour_offsets((3, 5))
    with pytest.raises(ValueError):
        RecurrentCRF(window=(4, 5))
    with pytest.raises(ValueError):
        RecurrentCRF(iterations=0)
    standard = RecurrentCRF(form="standard", iterations=2)
    logits = torch.randn(1, 4, 6, 10)
    out = standard(logits, torch.zeros(1, 3, 6, 10), torch.ones(1, 1, 6, 10))
    assert out.shape == logits.shape


def test_squeezeseg_layout_matches_the_paper():
    model = squeezeseg()
    # Fire (squeeze, expand1x1, expand3x3) widths from squeezeSeg.py
    fires = {name: (m.squeeze.out_channels, m.expand1x1.out_channels, m.expand3x3.out_channels)
             for name, m in model.named_children() if isinstance(m, Fire | FireDeconv)}  # fmt: skip
    assert fires == {
        "fire2": (16, 64, 64), "fire3": (16, 64, 64), "fire4": (32, 128, 128), "fire5": (32, 128, 128),
        "fire6": (48, 192, 192), "fire7": (48, 192, 192), "fire8": (64, 256, 256), "fire9": (64, 256, 256),
        "fdeconv10": (64, 128, 128), "fdeconv11": (32, 64, 64), "fdeconv12": (16, 32, 32), "fdeconv13": (16, 32, 32),
    }  # fmt: skip
    assert model.conv1.stride == (1, 2) and model.conv1.out_channels == 64
    assert model.pool1.stride == (1, 2) and model.conv14.out_channels == 4
    assert model.fdeconv10.deconv.kernel_size == (1, 4) and model.fdeconv10.deconv.stride == (1, 2)
    n = count_parameters(model)
    print(f"SqueezeSeg parameters: {n} (+CRF), {count_parameters(squeezeseg_without_crf())} without")
    assert 850_000 < n < 950_000
    assert count_parameters(model) - count_parameters(squeezeseg_without_crf()) == 2 * 16


def test_forward_shapes_and_azimuth_only_downsampling():
    model = squeezeseg().eval()
    shapes = {}
    for name in ("conv1", "fire3", "fire5", "fire9", "fdeconv13"):
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, tuple(o.shape)))
    with torch.no_grad():
        out = model(torch.randn(2, 5, 64, 512), torch.ones(2, 1, 64, 512))
    assert out.shape == (2, 4, 64, 512)
    assert shapes["conv1"][2:] == (64, 256) and shapes["fire3"][2:] == (64, 128)
    assert shapes["fire5"][2:] == (64, 64) and shapes["fire9"][2:] == (64, 32)
    assert shapes["fdeconv13"][2:] == (64, 512)


def test_bilinear_deconv_upsamples_a_constant_to_a_constant():
    up = FireDeconv(8, 4, 4, 4).deconv
    with torch.no_grad():
        out = up(torch.ones(1, 4, 3, 16))
    assert out.shape == (1, 4, 3, 32)
    np.testing.assert_allclose(out[..., 1:-1].numpy(), 1.0, atol=1e-6)


def test_normalisation_uses_paper_constants_and_masks_empty_pixels():
    model = squeezeseg_without_crf()
    image = torch.tensor(cfg.INPUT_MEAN).view(1, 5, 1, 1).repeat(1, 1, 2, 16) + torch.tensor(cfg.INPUT_STD).view(
        1, 5, 1, 1
    )
    mask = torch.ones(1, 1, 2, 16)
    mask[..., 0, :] = 0
    x = model.normalise(image, mask)
    assert torch.allclose(x[..., 1, :], torch.ones(1)) and torch.all(x[..., 0, :] == 0.0)


def test_gradients_reach_crf_compatibility():
    model = squeezeseg()
    out = model(torch.randn(1, 5, 16, 64), torch.ones(1, 1, 16, 64))
    out.sum().backward()
    assert model.crf.ang_compat.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
