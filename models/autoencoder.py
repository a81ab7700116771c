"""Denoising autoencoder supernets: fully connected and convolutional (optionally UNet-like)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from .registry import positive, register


class DenseAutoencoder(nn.Module):
    """``Flatten -> Linear(D, w1) -> ReLU -> ... -> Linear(w_k, D) [-> Sigmoid] -> Unflatten``.

    Shape: input ``(N, *in_shape)``, output ``(N, *in_shape)``, with ``D = prod(in_shape)``.
    The defaults are the paper's denoising net: 784 -> 784 x 5 hidden layers -> 784. The
    data is standardized, so there is no output activation unless ``out_activation`` asks.

    Layers: ``layers`` = ``Sequential(Flatten, Linear, ReLU, ..., Linear, [Sigmoid], Unflatten)``;
    the ``i``-th Linear is at index ``1 + 2 * i``.

    Args:
        in_shape: shape of one input sample (without the batch dimension).
        widths: hidden layer widths (ReLU after each).
        out_activation: ``None`` (identity) or ``"sigmoid"``.
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (1, 28, 28),
        widths: Sequence[int] = (784, 784, 784, 784, 784),
        out_activation: str | None = None,
    ) -> None:
        super().__init__()
        if out_activation not in (None, "sigmoid"):
            raise ValueError(f"out_activation must be None or 'sigmoid', not {out_activation!r}")
        positive("in_shape", list(in_shape))
        positive("widths", list(widths))
        self.in_shape = tuple(int(s) for s in in_shape)
        dim = math.prod(self.in_shape)
        sizes = [dim, *widths, dim]
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        if out_activation == "sigmoid":
            layers.append(nn.Sigmoid())
        layers.append(nn.Unflatten(1, self.in_shape))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class ConvAutoencoder(nn.Module):
    """Over-wide convolutional encoder/decoder for image denoising (UNet-like with ``skips``).

    Shape: input ``(N, in_channels, H, W)``, output ``(N, in_channels, H, W)``; ``H`` and ``W``
    must be divisible by ``2 ** len(enc_widths)`` (28x28 works for the default depth 2).

    Architecture (``d = len(enc_widths) = len(dec_widths)``)::

        encoder[i]    Conv3x3(prev -> enc_widths[i]) + BN + ReLU, then MaxPool2d(2) (``pool``)
                      (i = 0..d-1; prev = in_channels, then enc_widths[i-1])
        bottleneck    Conv3x3(enc_widths[-1] -> bottleneck) + BN + ReLU
        up[j]         ConvTranspose2d(prev -> up_widths[j], kernel 2, stride 2)
                      (j = 0..d-1; prev = bottleneck, then dec_widths[j-1])
                      if skips: torch.cat([up, encoder[d-1-j] output], dim=1)
        decoder[j]    Conv3x3(cin -> dec_widths[j]) + BN + ReLU,
                      cin = up_widths[j] (+ enc_widths[d-1-j] if skips)
        head          Conv1x1(dec_widths[-1] -> in_channels)  (no activation: data is standardized)

    The convs followed by BatchNorm have no bias. Each width number sets exactly the output
    channels of the layer(s) named above; ``up_widths`` defaults to ``dec_widths``.

    Args:
        in_channels: image channels (input and output).
        enc_widths: output channels of each encoder conv, outermost first.
        bottleneck: output channels of the bottleneck conv (lowest resolution).
        dec_widths: output channels of each decoder conv, innermost first.
        skips: concatenate the matching encoder feature map after each up-sampling.
        up_widths: output channels of each ConvTranspose2d (default: ``dec_widths``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        enc_widths: Sequence[int] = (64, 128),
        bottleneck: int = 256,
        dec_widths: Sequence[int] = (128, 64),
        skips: bool = False,
        up_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        enc_widths, dec_widths = list(enc_widths), list(dec_widths)
        up_widths = list(dec_widths if up_widths is None else up_widths)
        depth = len(enc_widths)
        if depth == 0 or len(dec_widths) != depth or len(up_widths) != depth:
            raise ValueError(
                "enc_widths, dec_widths and up_widths must be non-empty and of equal length, "
                f"got {len(enc_widths)}, {len(dec_widths)}, {len(up_widths)}"
            )
        positive("in_channels", in_channels)
        positive("enc_widths", enc_widths)
        positive("dec_widths", dec_widths)
        positive("up_widths", up_widths)
        positive("bottleneck", bottleneck)
        self.skips = skips
        self.encoder = nn.ModuleList()
        prev = in_channels
        for w in enc_widths:
            self.encoder.append(_conv_bn_relu(prev, w))
            prev = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _conv_bn_relu(prev, bottleneck)
        prev = bottleneck
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for j, (u, w) in enumerate(zip(up_widths, dec_widths, strict=True)):
            self.up.append(nn.ConvTranspose2d(prev, u, kernel_size=2, stride=2))
            cin = u + (enc_widths[depth - 1 - j] if skips else 0)
            self.decoder.append(_conv_bn_relu(cin, w))
            prev = w
        self.head = nn.Conv2d(prev, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats: list[torch.Tensor] = []
        for enc in self.encoder:
            x = enc(x)
            feats.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.up, self.decoder, reversed(feats), strict=True):
            x = up(x)
            if self.skips:
                x = torch.cat([x, skip], dim=1)
            x = dec(x)
        return self.head(x)


@register("dense_autoencoder")
def dense_autoencoder(
    *,
    in_shape: Sequence[int] = (1, 28, 28),
    widths: Sequence[int] = (784, 784, 784, 784, 784),
    out_activation: str | None = None,
) -> DenseAutoencoder:
    """Build a :class:`DenseAutoencoder`; the defaults are the paper's denoising net."""
    return DenseAutoencoder(in_shape=in_shape, widths=widths, out_activation=out_activation)


@register("conv_autoencoder")
def conv_autoencoder(
    *,
    in_channels: int = 1,
    enc_widths: Sequence[int] = (64, 128),
    bottleneck: int = 256,
    dec_widths: Sequence[int] = (128, 64),
    skips: bool = False,
    up_widths: Sequence[int] | None = None,
) -> ConvAutoencoder:
    """Build a :class:`ConvAutoencoder` (``skips=True``: UNet-style concat skips)."""
    return ConvAutoencoder(
        in_channels=in_channels,
        enc_widths=enc_widths,
        bottleneck=bottleneck,
        dec_widths=dec_widths,
        skips=skips,
        up_widths=up_widths,
    )
