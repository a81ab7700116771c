"""Fully connected supernet."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from .registry import positive, register


class MLP(nn.Module):
    """``Flatten -> Linear(in, w1) -> ReLU -> ... -> Linear(w_k, out)``.

    Shape: input ``(N, *)`` with ``prod(*) = in_features``, output ``(N, out_features)``.
    The paper's MNIST classifier is ``MLP(784, (200, 80), 10)`` (preset ``"mnist"``).

    Args:
        in_features: input size after flattening.
        widths: hidden layer widths.
        out_features: output size.
        final_relu: also apply ReLU after the last layer (the reference code does).
    """

    def __init__(
        self,
        in_features: int = 784,
        widths: Sequence[int] = (200, 80),
        out_features: int = 10,
        final_relu: bool = False,
    ) -> None:
        super().__init__()
        positive("in_features", in_features)
        positive("out_features", out_features)
        if len(widths):
            positive("widths", list(widths))
        sizes = [in_features, *widths, out_features]
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2 or final_relu:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


PRESETS = {"mnist": dict(in_features=784, widths=(200, 80), out_features=10)}


@register("mlp", signature=MLP)
def mlp(preset: str | None = None, **kwargs: object) -> MLP:
    """Build an :class:`MLP`; ``preset="mnist"`` is the paper's 784-200-80-10."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown mlp preset {preset!r} (available: {sorted(PRESETS)})")
        kwargs = {**PRESETS[preset], **kwargs}
    return MLP(**kwargs)  # type: ignore[arg-type]
