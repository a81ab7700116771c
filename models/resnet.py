"""CIFAR-style ResNet supernets (ResNet-18, ResNet-20, bottleneck variant) with every width
configurable, so that a narrowed network can be built with the same class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .registry import positive, register


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential:
    """The "downsample" shortcut: ``Conv1x1(cin -> cout, stride) + BN``."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(cout),
    )


def _resolve_downsample(cin: int, cout: int, stride: int, downsample: bool | None) -> bool:
    needed = cin != cout or stride != 1
    if downsample is None:
        return needed
    if needed and not downsample:
        raise ValueError(
            f"an identity shortcut needs equal shapes, got {cin} -> {cout} channels, "
            f"stride {stride}; pass downsample=True"
        )
    return downsample


class BasicBlock(nn.Module):
    """``Conv3x3(stride) -> BN -> ReLU -> Conv3x3 -> BN``, plus shortcut, then ReLU.

    Shape: input ``(N, in_planes, H, W)``, output ``(N, out_planes, H', W')`` with
    ``H' = ceil(H / stride)``.

    Layers: ``conv1`` (``in_planes -> width``, 3x3, stride), ``bn1``, ``conv2``
    (``width -> out_planes``, 3x3), ``bn2``, ``downsample`` (``None`` for the identity
    shortcut, else ``Sequential(Conv1x1(in_planes -> out_planes, stride), BN)``).

    Args:
        in_planes: residual-stream width coming in.
        width: inner width (output channels of ``conv1``).
        out_planes: residual-stream width going out (output channels of ``conv2``).
        stride: stride of ``conv1`` and of the projection shortcut.
        downsample: use the projection shortcut; ``None``: only when the shapes differ
            (``in_planes != out_planes`` or ``stride != 1``).
    """

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        width: int,
        out_planes: int,
        stride: int = 1,
        downsample: bool | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, out_planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU()
        use_proj = _resolve_downsample(in_planes, out_planes, stride, downsample)
        self.downsample = _projection(in_planes, out_planes, stride) if use_proj else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """``Conv1x1 -> BN -> ReLU -> Conv3x3(stride) -> BN -> ReLU -> Conv1x1 -> BN``, plus
    shortcut, then ReLU (stride on the 3x3 conv, as in torchvision's ResNet v1.5).

    Shape: input ``(N, in_planes, H, W)``, output ``(N, out_planes, H', W')`` with
    ``H' = ceil(H / stride)``.

    Layers: ``conv1`` (``in_planes -> widths[0]``, 1x1), ``bn1``, ``conv2``
    (``widths[0] -> widths[1]``, 3x3, stride), ``bn2``, ``conv3`` (``widths[1] -> out_planes``,
    1x1), ``bn3``, ``downsample`` (as in :class:`BasicBlock`).

    Args:
        in_planes: residual-stream width coming in.
        widths: the two inner widths (output channels of ``conv1`` and ``conv2``).
        out_planes: residual-stream width going out (output channels of ``conv3``).
        stride: stride of ``conv2`` and of the projection shortcut.
        downsample: use the projection shortcut; ``None``: only when the shapes differ.
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        widths: Sequence[int],
        out_planes: int,
        stride: int = 1,
        downsample: bool | None = None,
    ) -> None:
        super().__init__()
        w1, w2 = widths
        self.conv1 = nn.Conv2d(in_planes, w1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.conv2 = nn.Conv2d(w1, w2, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w2)
        self.conv3 = nn.Conv2d(w2, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU()
        use_proj = _resolve_downsample(in_planes, out_planes, stride, downsample)
        self.downsample = _projection(in_planes, out_planes, stride) if use_proj else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


def _scale(w: int, m: float) -> int:
    return max(1, round(w * m))


def _inner(block: Block, w: int | Sequence[int]) -> int | tuple[int, int]:
    """Normalize one ``block_widths`` entry: an int for BasicBlock, a pair for Bottleneck."""
    ws = (w,) if isinstance(w, int) else tuple(int(v) for v in w)
    if block is BasicBlock:
        if len(ws) != 1:
            raise ValueError(f"a BasicBlock has one inner width, got {w!r}")
        return ws[0]
    if len(ws) == 1:
        ws = ws * 2
    if len(ws) != 2:
        raise ValueError(f"a Bottleneck has two inner widths, got {w!r}")
    return (ws[0], ws[1])


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem (stride 1, no max-pool), residual stages, global average
    pool, Linear.

    Shape: input ``(N, in_channels, H, W)``, output ``(N, num_classes)``.

    Architecture::

        stem        Conv3x3(in_channels -> stem_width, stride 1) + BN + ReLU
        stages[s]   layers[s] blocks; block 0: stage input width -> stage_widths[s], stride
                    strides[s], projection shortcut if downsample[s]; blocks 1..: stage_widths[s]
                    -> stage_widths[s], stride 1, identity shortcut. Block b's inner width(s):
                    block_widths[s][b].
        pool        AdaptiveAvgPool2d(1), Flatten
        fc          Linear(stage_widths[-1] -> num_classes)

    Standard (supernet) configuration, from ``widths`` and ``width_multiplier`` (``m``):
    inner widths ``round(widths[s] * m)``, stream widths ``round(widths[s] * m) * expansion``
    (expansion 1 for :class:`BasicBlock`, 4 for :class:`Bottleneck`), stem width
    ``round(widths[0] * m)``. ``ResNet()`` is the CIFAR ResNet-18 (11,173,962 parameters).

    Narrow builds (e.g. a supernet with channels removed) override the standard widths:
    ``stage_widths``, ``block_widths``, ``stem_width``. The projection shortcut ("downsample")
    of each stage's first block defaults to the standard rule applied to the *standard*
    configuration (input width != output width or stride != 1), OR-ed with the same rule on
    the actual widths (an identity shortcut is impossible when the shapes differ). So a narrow
    build keeps the supernet's shortcut types even if its widths happen to coincide; pass
    ``downsample`` to set them explicitly.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks per stage.
        widths: standard inner (base) width of each stage, before ``width_multiplier``.
        strides: stride of each stage's first block.
        width_multiplier: scales every standard width.
        in_channels: input image channels.
        num_classes: output size.
        stage_widths: residual-stream width of each stage (output channels of every block in
            it). Default: the standard stream widths.
        block_widths: per stage, per block, the inner width (BasicBlock: an int; Bottleneck: a
            pair ``(conv1 out, conv2 out)``, or an int for both). Default: standard widths.
        stem_width: output channels of the stem conv. Default: ``stage_widths[0] //
            block.expansion`` (the stage-1 stream width for BasicBlock, whose identity
            shortcuts tie the two; pass it explicitly for narrowed Bottleneck nets).
        downsample: per stage, whether its first block has the projection shortcut.
    """

    def __init__(
        self,
        block: Block = BasicBlock,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        strides: Sequence[int] = (1, 2, 2, 2),
        width_multiplier: float = 1.0,
        in_channels: int = 3,
        num_classes: int = 10,
        stage_widths: Sequence[int] | None = None,
        block_widths: Sequence[Sequence[int | Sequence[int]]] | None = None,
        stem_width: int | None = None,
        downsample: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        if block not in (BasicBlock, Bottleneck):
            raise ValueError(f"block must be BasicBlock or Bottleneck, got {block!r}")
        n = len(layers)
        if n == 0 or len(widths) != n or len(strides) != n:
            raise ValueError(
                f"layers, widths and strides must be non-empty and of equal length, "
                f"got {len(layers)}, {len(widths)}, {len(strides)}"
            )
        positive("layers", list(layers))
        positive("widths", list(widths))
        positive("strides", list(strides))
        positive("in_channels", in_channels)
        positive("num_classes", num_classes)
        if not (isinstance(width_multiplier, (int, float)) and width_multiplier > 0):
            raise ValueError(f"width_multiplier must be > 0, got {width_multiplier!r}")
        exp = block.expansion
        base = [_scale(w, width_multiplier) for w in widths]
        std_stream = [b * exp for b in base]
        std_stem = base[0]

        stage_widths = list(std_stream if stage_widths is None else stage_widths)
        if len(stage_widths) != n:
            raise ValueError(f"stage_widths needs {n} entries, got {len(stage_widths)}")
        if block_widths is None:
            block_widths = [[b] * k for b, k in zip(base, layers, strict=True)]
        if len(block_widths) != n or any(
            len(bw) != k for bw, k in zip(block_widths, layers, strict=True)
        ):
            raise ValueError(f"block_widths must have {list(layers)} entries per stage")
        if stem_width is None:
            stem_width = max(1, stage_widths[0] // exp)
        if downsample is None:
            std_in = [std_stem, *std_stream[:-1]]
            act_in = [stem_width, *stage_widths[:-1]]
            downsample = [
                std_in[s] != std_stream[s] or act_in[s] != stage_widths[s] or strides[s] != 1
                for s in range(n)
            ]
        if len(downsample) != n:
            raise ValueError(f"downsample needs {n} entries, got {len(downsample)}")

        self.stage_widths = tuple(stage_widths)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        prev = stem_width
        for s in range(n):
            blocks: list[nn.Module] = []
            for b in range(layers[s]):
                inner = _inner(block, block_widths[s][b])
                if b == 0:
                    blk = block(prev, inner, stage_widths[s], strides[s], bool(downsample[s]))  # type: ignore[arg-type]
                else:
                    blk = block(stage_widths[s], inner, stage_widths[s], 1, False)  # type: ignore[arg-type]
                blocks.append(blk)
            stages.append(nn.Sequential(*blocks))
            prev = stage_widths[s]
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.flatten(self.pool(x)))


def _preset(
    block: Block,
    layers: Sequence[int],
    widths: Sequence[int],
    strides: Sequence[int],
    kwargs: dict[str, Any],
) -> ResNet:
    """A :class:`ResNet` with the preset's block, stages, widths and strides; ``kwargs`` are
    the remaining :class:`ResNet` arguments (``width_multiplier``, ``in_channels``,
    ``num_classes``, ``stage_widths``, ``block_widths``, ``stem_width``, ``downsample``)."""
    return ResNet(block, layers=layers, widths=widths, strides=strides, **kwargs)


@register("resnet18", signature=ResNet)
def resnet18(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-18: BasicBlock, stages (2, 2, 2, 2), widths (64, 128, 256, 512),
    strides (1, 2, 2, 2); keyword arguments as :class:`ResNet`'s other arguments."""
    return _preset(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), (1, 2, 2, 2), kwargs)


@register("resnet20", signature=ResNet)
def resnet20(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-20: BasicBlock, stages (3, 3, 3), widths (16, 32, 64), strides (1, 2, 2),
    projection (1x1 conv + BN) shortcuts: 272,474 parameters."""
    return _preset(BasicBlock, (3, 3, 3), (16, 32, 64), (1, 2, 2), kwargs)


@register("resnet_bottleneck", signature=ResNet)
def resnet_bottleneck(*, layers: Sequence[int] = (2, 2, 2), **kwargs: Any) -> ResNet:
    """Small CIFAR bottleneck ResNet: Bottleneck blocks, ``layers`` per stage (default
    (2, 2, 2)), inner widths (16, 32, 64), stream widths (64, 128, 256), strides (1, 2, 2)."""
    return _preset(Bottleneck, layers, (16, 32, 64), (1, 2, 2), kwargs)
