"""Image-quality metrics for denoising: PSNR and SSIM, batched, in torch.

Both compare a batch of images ``x`` with a reference ``y`` of shape ``(N, C, H, W)`` whose
values span ``data_range`` (1.0 for pixels in ``[0, 1]``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "psnr_from_mse", "ssim"]


def _check(x: Tensor, y: Tensor, data_range: float, what: str) -> None:
    if x.shape != y.shape:
        raise ValueError(
            f"{what}: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.dim() != 4:
        raise ValueError(f"{what}: expected (N, C, H, W) images, got shape {tuple(x.shape)}")
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"{what}: data_range must be a finite number > 0, got {data_range!r}")


def psnr_from_mse(mse: float | Tensor, data_range: float = 1.0) -> Any:
    """``10 log10(data_range^2 / mse)`` dB (``inf`` for ``mse = 0``): the PSNR formula, for a
    float or a tensor of mean squared errors."""
    if isinstance(mse, Tensor):
        return 10.0 * torch.log10(data_range**2 / mse)
    return 10.0 * math.log10(data_range * data_range / mse) if mse > 0 else math.inf


@torch.no_grad()
def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    r"""Peak signal-to-noise ratio per image, in dB:
    ``10 log10(data_range^2 / mean((x - y)^2))`` (``inf`` for identical images).

    Returns a tensor of shape ``(N,)``; average it for a data set's mean PSNR.
    """
    _check(x, y, data_range, "psnr")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return psnr_from_mse(mse, data_range).to(x.dtype)


def _gaussian(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


@torch.no_grad()
def ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    *,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    r"""Structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004) per image.

    With Gaussian-weighted local means ``mu``, variances ``s^2`` and covariance ``s_xy``
    (an ``window x window`` window of standard deviation ``sigma``, valid positions only)::

        SSIM = mean over positions and channels of
               (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))

    with ``C1 = (k1 * data_range)^2`` and ``C2 = (k2 * data_range)^2`` (the reference
    implementation's constants; ``skimage.metrics.structural_similarity(...,
    gaussian_weights=True, use_sample_covariance=False)`` computes the same). 1 means
    identical. Returns a tensor of shape ``(N,)``.
    """
    _check(x, y, data_range, "ssim")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"ssim: window must be an odd positive size, got {window}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"ssim: images {tuple(x.shape[-2:])} are smaller than the window {window}")
    xd, yd = x.double(), y.double()
    c = x.shape[1]
    g = _gaussian(window, sigma, xd.dtype, xd.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(xd), blur(yd)
    sxx = blur(xd * xd) - mu_x**2
    syy = blur(yd * yd) - mu_y**2
    sxy = blur(xd * yd) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).to(x.dtype)
