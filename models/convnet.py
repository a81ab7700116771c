"""Small convolutional classifier supernet (the paper's MNIST conv net)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import positive, register


class ConvNet(nn.Module):
    """``[Conv5x5 -> MaxPool2 -> ReLU] * k -> Flatten -> Linear -> ReLU -> Linear``.

    Shape: input ``(N, in_channels, image_size, image_size)``, output ``(N, num_classes)``.
    The defaults are the paper's MNIST net::

        conv 5x5 1->64, max-pool 2, ReLU       28 -> 24 -> 12
        conv 5x5 64->64, max-pool 2, ReLU      12 ->  8 ->  4
        flatten (64*4*4 = 1024), fc 1024->128, ReLU, fc 128->10

    Convs have no padding, so each stage maps a side ``s`` to ``(s - 4) // 2``.

    Layers: ``features`` = ``Sequential(conv, pool, relu, conv, pool, relu, ...)`` (conv ``i``
    at index ``3 * i``), ``classifier`` = ``Sequential(Flatten, Linear, ReLU, Linear)``.

    Args:
        in_channels: input image channels.
        channels: output channels of each 5x5 conv (one conv stage per entry).
        hidden: width of the hidden fully connected layer.
        num_classes: output size.
        image_size: input side length, used to compute the flatten size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (64, 64),
        hidden: int = 128,
        num_classes: int = 10,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        if len(channels) == 0:
            raise ValueError("ConvNet needs at least one conv layer")
        positive("channels", list(channels))
        positive("in_channels", in_channels)
        positive("hidden", hidden)
        positive("num_classes", num_classes)
        layers: list[nn.Module] = []
        side, prev = image_size, in_channels
        for c in channels:
            layers += [nn.Conv2d(prev, c, kernel_size=5), nn.MaxPool2d(2), nn.ReLU()]
            side = (side - 4) // 2
            prev = c
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for {len(channels)} stages")
        self.flat_features = prev * side * side
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.flat_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("convnet")
def convnet(
    *,
    in_channels: int = 1,
    channels: Sequence[int] = (64, 64),
    hidden: int = 128,
    num_classes: int = 10,
    image_size: int = 28,
) -> ConvNet:
    """Build a :class:`ConvNet`; the defaults are the paper's MNIST conv net."""
    return ConvNet(
        in_channels=in_channels,
        channels=channels,
        hidden=hidden,
        num_classes=num_classes,
        image_size=image_size,
    )
