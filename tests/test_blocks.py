"""Encoder blocks (Fire, SqueezeNext, Shift) and the lighter SqueezeSeg / SqueezeDet variants built from them."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the model code needs the [train] extra")

from perception.training.nets.blocks import (  # noqa: E402
    Fire,
    ShiftFire,
    SqueezeNextFire,
    make_block,
    shift3x3,
)


def shift_reference(x: np.ndarray) -> np.ndarray:
    """The shift written out per pixel: group g reads the neighbour at offset g of a 3x3 window, else 0."""
    _, c, h, w = x.shape
    sizes = [c // 9] * 9
    sizes[4] += c - 9 * (c // 9)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    out = np.zeros_like(x)
    channel = 0
    for size, (dy, dx) in zip(sizes, offsets, strict=True):
        for ch in range(channel, channel + size):
            for y in range(h):
                for xx in range(w):
                    sy, sx = y + dy, xx + dx
                    if 0 <= sy < h and 0 <= sx < w:
                        out[:, ch, y, xx] = x[:, ch, sy, sx]
        channel += size
    return out


@pytest.mark.parametrize("channels", [9, 20, 27])
def test_shift_moves_each_group_to_its_neighbour_with_zero_fill(channels: int) -> None:
    x = np.random.default_rng(channels).normal(size=(2, channels, 5, 7)).astype(np.float32)
    got = shift3x3(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, shift_reference(x))


@pytest.mark.parametrize("block", ["fire", "squeezenext", "shift"])
def test_blocks_share_fires_interface(block: str) -> None:
    module = make_block(block, 128, 32, 128, 128)
    x = torch.randn(2, 128, 8, 16)
    y = module(x)
    assert module.out_channels == 256
    assert y.shape == (2, 256, 8, 16)
    assert bool((y >= 0).all())  # every block ends with a ReLU


def test_lighter_blocks_have_fewer_parameters_and_no_3x3_kernels_in_shift() -> None:
    sizes = (512, 64, 256, 256)  # SqueezeSeg's fire9
    fire, nxt, shift = Fire(*sizes), SqueezeNextFire(*sizes), ShiftFire(*sizes)
    fire_n, nxt_n, shift_n = (sum(p.numel() for p in m.parameters()) for m in (fire, nxt, shift))
    assert shift_n < nxt_n < fire_n
    assert all(max(p.shape[-2:]) == 1 for p in shift.parameters() if p.dim() == 4)
    assert {tuple(p.shape[-2:]) for p in nxt.parameters() if p.dim() == 4} == {(1, 1), (3, 1), (1, 3)}


def test_squeezenext_skip_only_when_the_widths_match() -> None:
    assert SqueezeNextFire(256, 32, 128, 128).residual
    assert not SqueezeNextFire(128, 32, 128, 128).residual


def test_unknown_block_and_too_narrow_shift_are_refused() -> None:
    with pytest.raises(ValueError, match="block must be one of"):
        make_block("mobilenet", 64, 16, 64, 64)
    with pytest.raises(ValueError, match="at least 9"):
        ShiftFire(64, 8, 64, 64)


@pytest.mark.parametrize("block", ["squeezenext", "shift"])
def test_lighter_squeezeseg_exports_with_fewer_flops_and_matches_torch(block: str, tmp_path) -> None:
    from perception.lidar.sensors import SENSORS
    from perception.runtime.flops import count_flops
    from perception.runtime.segmenter import Segmenter
    from perception.training.export import (
        build_segmentation_model,
        export_segmentation_onnx,
        logit_agreement,
    )

    sensor = SENSORS["kitti-front"]
    fire_path = export_segmentation_onnx(build_segmentation_model(crf=False), tmp_path / "fire.onnx", sensor)
    model = build_segmentation_model(crf=True, block=block, crf_form="standard")
    path = export_segmentation_onnx(model, tmp_path / f"{block}.onnx", sensor)
    assert count_flops(path).total < 0.75 * count_flops(fire_path).total
    rng = np.random.default_rng(0)
    image = (rng.normal(size=(1, 5, *sensor.shape)) * 10).astype(np.float32)
    mask = (rng.random((1, 1, *sensor.shape)) > 0.1).astype(np.float32)
    diff, scale = logit_agreement(model, path, image, mask)
    assert diff <= 2e-6 * max(scale, 50.0)  # float32 round-off
    segmenter = Segmenter(path, providers="cpu")
    assert segmenter.model.metadata["perception.block"] == block


@pytest.mark.parametrize("block", ["squeezenext", "shift"])
def test_lighter_squeezedet_keeps_the_anchor_grid(block: str) -> None:
    from perception.training.nets.squeezedet import squeezedet

    fire, light = squeezedet(), squeezedet(block=block)
    with torch.no_grad():
        out = light.eval()(torch.zeros(1, 3, 384, 1248))
    assert out.shape == (1, 9 * (3 + 1 + 4), 24, 78)
    assert sum(p.numel() for p in light.parameters()) < sum(p.numel() for p in fire.parameters())


def test_trainer_and_export_agree_on_the_block(tmp_path) -> None:
    from perception.training.export import build_segmentation_model
    from perception.training.nets.squeezeseg import squeezeseg
    from perception.training.train import TrainConfig

    trained = squeezeseg(block="shift", crf_form="standard")
    path = tmp_path / "shift.pt"
    torch.save({"model": trained.state_dict(), "config": {"block": "shift", "crf_form": "standard"}}, path)
    rebuilt = build_segmentation_model(path)
    assert rebuilt.block == "shift"
    for (name, a), b in zip(trained.state_dict().items(), rebuilt.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="block must be"):
        TrainConfig.from_dict({"block": "resnet"})
