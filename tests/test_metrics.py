"""PSNR and SSIM against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from archdiscover.metrics import psnr, ssim


def _ssim_reference(x: np.ndarray, y: np.ndarray, win: int = 11, sigma: float = 1.5) -> float:
    """Wang et al. (2004), Gaussian window, valid positions, one channel, loops in numpy."""
    r = np.arange(win) - (win - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(x.shape[0] - win + 1):
        for j in range(x.shape[1] - win + 1):
            a, b = x[i : i + win, j : j + win], y[i : i + win, j : j + win]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
            cov = (w * a * b).sum() - ma * mb
            vals.append(
                ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            )
    return float(np.mean(vals))


def test_ssim_matches_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 18, generator=gen, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    got = ssim(x, y)
    for k in range(3):
        assert got[k].item() == pytest.approx(_ssim_reference(x[k, 0].numpy(), y[k, 0].numpy()))


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ssim(x, x), torch.ones(2))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    a, b = ssim(x + 0.05 * noise, x), ssim(x + 0.2 * noise, x)
    assert (a < 1).all() and (b < a).all()
    assert torch.allclose(ssim(x + 0.05 * noise, x), ssim(x, x + 0.05 * noise))


def test_psnr_matches_the_formula():
    x = torch.zeros(2, 1, 4, 4)
    y = x.clone()
    y[0] += 0.1  # mse 0.01 -> 20 dB
    y[1, 0, 0, 0] = 1.0  # mse 1/16 -> 10 log10(16)
    got = psnr(y, x)
    assert got[0].item() == pytest.approx(20.0, rel=1e-5)
    assert got[1].item() == pytest.approx(10 * math.log10(16), rel=1e-5)
    assert psnr(x, x)[0].item() == math.inf


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 15))
    with pytest.raises(ValueError, match="smaller than the window"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="data_range"):
        psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), data_range=0)
