"""DnCNN-style denoising supernet (Zhang et al., "Beyond a Gaussian Denoiser", TIP 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from .registry import register


class DnCNN(nn.Module):
    """Residual-learning denoiser: the network predicts the noise and subtracts it.

    Shape: input ``(N, channels, H, W)`` (any ``H``, ``W``), output the same shape.

    Architecture (``d = depth``, widths ``w_1 .. w_{d-1}``)::

        body[0]       Conv3x3(channels -> w_1, bias) + ReLU
        body[i]       Conv3x3(w_i -> w_{i+1}, no bias) + BatchNorm + ReLU   (i = 1 .. d-2)
        body[d-1]     Conv3x3(w_{d-1} -> channels, no bias)
        output        x - body(x)

    Every conv is zero-padded (``padding=1``), so the output has the input's size. The
    defaults are the paper's grey-level DnCNN-S: depth 17, 64 channels.

    Args:
        channels: image channels (input and output).
        depth: number of conv layers (at least 2).
        width: channels of every hidden layer (ignored when ``widths`` is given).
        widths: the ``depth - 1`` hidden widths, e.g. the ones a discovery run found.
        zero_init_residual: zero the last conv's weights, so the network starts as the
            identity ``x - 0`` and learns the noise from there (as torchvision's ResNet flag
            zeroes each residual branch's last BatchNorm scale; Fixup-style). At a short
            training budget it is the stronger start (docs/RESULTS.md section 6).
    """

    def __init__(
        self,
        channels: int = 1,
        depth: int = 17,
        width: int = 64,
        widths: Sequence[int] | None = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"DnCNN needs depth >= 2, got {depth}")
        ws = [int(width)] * (depth - 1) if widths is None else [int(w) for w in widths]
        if len(ws) != depth - 1 or min(ws) < 1:
            raise ValueError(
                f"DnCNN of depth {depth} needs {depth - 1} positive hidden widths, got {ws}"
            )
        layers: list[nn.Module] = [nn.Conv2d(channels, ws[0], 3, padding=1), nn.ReLU()]
        for a, b in pairwise(ws):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
        layers.append(nn.Conv2d(ws[-1], channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)
        self.widths = tuple(ws)
        if zero_init_residual:
            nn.init.zeros_(self.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


@register("dncnn")
def dncnn(
    *,
    channels: int = 1,
    depth: int = 17,
    width: int = 64,
    widths: Sequence[int] | None = None,
    zero_init_residual: bool = False,
) -> DnCNN:
    """Build a :class:`DnCNN` (the defaults: the paper's 17 layers of 64 channels)."""
    return DnCNN(
        channels=channels,
        depth=depth,
        width=width,
        widths=widths,
        zero_init_residual=zero_init_residual,
    )
