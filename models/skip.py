"""Skip-gated supernets: every candidate connection is scaled by a learnable gate.

The gates are ordinary scalar parameters, zero at construction (the sparse start of the
inverse scale space): a connection exists once training makes its gate non-zero, and the
compiler (:mod:`archdiscover.compiler.topology`) removes every connection whose gate is
exactly zero, then every layer that no longer reaches the output.

* :class:`SkipAutoencoder` -- the fully connected net of the authors' Skip-Encoder notebook
  (Bungert et al., code for arXiv 2105.04319): blocks of ``D`` units, block ``i`` adds its
  gated inputs to its output,
  ``x_{i+1} = act(linear_i(x_i)) + sum_{k <= i} skips_i[k] * x_k``.
* :class:`SkipConvAutoencoder` -- a full-resolution DenseNet-style conv net whose blocks
  read the concatenation of their predecessor and the gated outputs of all earlier blocks
  (the input included); the head reads the gated outputs of every block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .registry import register

__all__ = ["GatedConvBlock", "SkipAutoencoder", "SkipBlock", "SkipConvAutoencoder"]

_ACTIVATIONS = {"relu": nn.ReLU, None: nn.Identity, "identity": nn.Identity}


def _activation(name: str | None, what: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"{what} must be 'relu' or None, not {name!r}")
    return _ACTIVATIONS[name]()


class SkipBlock(nn.Module):
    """One block of :class:`SkipAutoencoder`: ``act(linear(xs[-1])) + sum_k skips[k] * xs[k]``.

    Shape: ``xs`` is a list of ``n_inputs`` tensors ``(N, features)``; the output is
    ``(N, features)``. ``skips`` (``n_inputs`` scalars, zero at construction) gates the
    additive connection from each earlier output ``xs[k]``, the block's own input
    ``xs[-1]`` included (``skips[-1] = 1`` makes the block residual).
    """

    def __init__(self, features: int, n_inputs: int, activation: str | None = "relu") -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)
        self.act = _activation(activation, "activation")
        self.skips = nn.Parameter(torch.zeros(n_inputs))

    def forward(self, xs: list[Tensor]) -> Tensor:
        out = self.act(self.linear(xs[-1]))
        for k, x in enumerate(xs):
            out = out + self.skips[k] * x
        return out


class SkipAutoencoder(nn.Module):
    """The Skip-Encoder notebook's fully connected supernet with gated additive skips.

    Shape: input ``(N, *in_shape)``, output ``(N, *in_shape)``; ``D = prod(in_shape)``.

    ``x_0 = flatten(input)``; block ``i = 0 .. depth-1`` computes
    ``x_{i+1} = act_i(W_i x_i + b_i) + sum_{k=0}^{i} s_{i,k} x_k`` with ``act_i`` ReLU for
    the hidden blocks and ``out_activation`` for the last; the output is ``x_depth``
    unflattened. Every layer is ``D`` wide (the skips add tensors of the same size): the
    notebook's ``7 * [784]`` sizes are ``depth = 6`` blocks of 784, with
    ``1 + 2 + ... + 6 = 21`` gates. The gates start at zero, so the supernet starts as the
    plain chain; a gate from the input to the last block makes the identity reachable.

    Layers: ``blocks[i].linear`` (``nn.Linear(D, D)``), ``blocks[i].skips``
    (``Parameter(zeros(i + 1))``).

    Args:
        in_shape: shape of one sample (without the batch dimension).
        depth: number of blocks (Linear layers).
        activation: of the hidden blocks' Linear (``"relu"`` or ``None``).
        out_activation: of the last block's Linear; ``None`` (identity) since the data
            are standardized (the notebook applies ReLU to pixel targets in [0, 1]).
        out_floor: if set, the output is ``max(x_depth, out_floor)``: images bounded
            below (standardized MNIST: pixel 0 is ``-mean / std``), so that the network can
            return exact background, as the notebook's ReLU output does for pixels in
            [0, 1].
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (1, 28, 28),
        depth: int = 6,
        activation: str | None = "relu",
        out_activation: str | None = None,
        out_floor: float | None = None,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        _activation(activation, "activation")
        _activation(out_activation, "out_activation")
        self.in_shape = tuple(int(s) for s in in_shape)
        dim = math.prod(self.in_shape)
        self.flatten = nn.Flatten()
        self.blocks = nn.ModuleList(
            SkipBlock(dim, i + 1, activation if i < depth - 1 else out_activation)
            for i in range(depth)
        )
        self.unflatten = nn.Unflatten(1, self.in_shape)
        self.out_floor = None if out_floor is None else float(out_floor)

    def forward(self, x: Tensor) -> Tensor:
        xs = [self.flatten(x)]
        for block in self.blocks:
            xs.append(block(xs))
        out = xs[-1] if self.out_floor is None else torch.clamp(xs[-1], min=self.out_floor)
        return self.unflatten(out)


class GatedConvBlock(nn.Module):
    """``relu(conv3x3(cat([x_last, gates[0] * xs[0], ..., gates[k-1] * xs[k-1]])))``.

    Shape: ``x_last`` is ``(N, c_last, H, W)``, ``xs[k]`` is ``(N, c_k, H, W)``; output
    ``(N, out_channels, H, W)``. ``gates`` (``len(xs)`` scalars, zero at construction)
    scale each earlier tensor as a whole, so a zero gate is a missing connection. With
    ``last_channels=0`` the block reads only gated inputs (call it with ``x_last=None``);
    with ``activation=None`` there is no ReLU (the head).
    """

    def __init__(
        self,
        last_channels: int,
        skip_channels: Sequence[int],
        out_channels: int,
        activation: str | None = "relu",
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            last_channels + sum(skip_channels),
            out_channels,
            kernel_size,
            padding=kernel_size // 2,
        )
        self.act = _activation(activation, "activation")
        self.gates = nn.Parameter(torch.zeros(len(skip_channels)))

    def forward(self, x_last: Tensor | None, xs: list[Tensor]) -> Tensor:
        parts = [] if x_last is None else [x_last]
        parts += [self.gates[k] * x for k, x in enumerate(xs)]
        return self.act(self.conv(torch.cat(parts, dim=1)))


class SkipConvAutoencoder(nn.Module):
    """A DenseNet-style convolutional denoiser at full resolution with gated connections.

    Shape: input ``(N, in_channels, H, W)``, output ``(N, in_channels, H, W)``; any ``H, W``.

    ``h_0 = input``; block ``i = 0 .. n-1`` (``n = len(widths)``) computes
    ``h_{i+1} = relu(conv3x3_i(cat([h_i, g_{i,0} h_0, ..., g_{i,i-1} h_{i-1}])))`` (its
    predecessor ungated, every earlier output gated); the head is
    ``conv3x3(cat([g_0 h_0, ..., g_n h_n]))`` without activation (the data are
    standardized): every output it reads is gated, so when only earlier blocks' gates
    survive the later blocks no longer reach the output and the compiler drops them
    (depth discovery). ``n (n - 1) / 2 + n + 1`` gates, all zero at construction.

    Layers: ``blocks[i].conv``, ``blocks[i].gates``, ``head.conv``, ``head.gates``.

    Args:
        in_channels: image channels (input and output).
        widths: output channels of each block.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 16, 16, 16)) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths}")
        chans = [in_channels, *widths]
        self.blocks = nn.ModuleList(
            GatedConvBlock(chans[i], chans[:i], widths[i]) for i in range(len(widths))
        )
        self.head = GatedConvBlock(0, chans, in_channels, activation=None)

    def forward(self, x: Tensor) -> Tensor:
        hs = [x]
        for block in self.blocks:
            hs.append(block(hs[-1], hs[:-1]))
        return self.head(None, hs)


@register("skip_autoencoder")
def skip_autoencoder(
    *,
    in_shape: Sequence[int] = (1, 28, 28),
    depth: int = 6,
    activation: str | None = "relu",
    out_activation: str | None = None,
    out_floor: float | None = None,
) -> SkipAutoencoder:
    """Build a :class:`SkipAutoencoder`; the defaults are the Skip-Encoder notebook's net."""
    return SkipAutoencoder(
        in_shape=in_shape,
        depth=depth,
        activation=activation,
        out_activation=out_activation,
        out_floor=out_floor,
    )


@register("skip_conv_autoencoder")
def skip_conv_autoencoder(
    *, in_channels: int = 1, widths: Sequence[int] = (16, 16, 16, 16)
) -> SkipConvAutoencoder:
    """Build a :class:`SkipConvAutoencoder` (DenseNet-style gated concatenations)."""
    return SkipConvAutoencoder(in_channels=in_channels, widths=widths)
