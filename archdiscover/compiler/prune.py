"""Physical removal of channels (Torch-Pruning's per-layer functions) and size counting.

Layers Torch-Pruning knows (Conv, ConvTranspose, Linear, BatchNorm, InstanceNorm, PReLU)
are narrowed with its functions, so their attributes (``out_channels``, ``in_features``,
``groups`` ...) follow; a grouped convolution loses the same positions in every group
(``groups`` stays); a depthwise convolution with a channel multiplier loses whole groups.
``nn.MultiheadAttention`` loses whole heads and becomes a
:class:`~archdiscover.layers.PrunedMultiheadAttention`. Any other sliced tensor (a
parameter or buffer a module uses directly: a per-channel scale, a class token, a position
embedding, the statistics of a hand-written normalization) is cut along its dim.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import Tensor, nn

from ..graph import ops
from ..graph.trace import ChannelGraph
from ..layers import narrow_multihead_attention
from .errors import CompileError

__all__ = ["count", "prune"]


def _cut(
    m: nn.Module, name: str, dim: int, drop: list[int], also: Sequence[nn.Module] = ()
) -> None:
    """Remove positions ``drop`` of tensor ``name`` of ``m`` along ``dim`` (in place), in
    ``m`` and in every module of ``also`` that holds the same tensor under that name."""
    t = getattr(m, name)
    keep = torch.as_tensor(sorted(set(range(t.shape[dim])) - set(drop)), device=t.device)
    new: Tensor = t.detach().index_select(dim, keep).contiguous()
    if isinstance(t, nn.Parameter):
        new = nn.Parameter(new, requires_grad=t.requires_grad)
    for owner in (m, *also):
        if owner is not m and getattr(owner, name, None) is not t:
            continue
        if name in owner._parameters or isinstance(new, nn.Parameter):
            owner._parameters[name] = new  # type: ignore[assignment]
        elif name in owner._buffers:
            owner._buffers[name] = new
        else:
            setattr(owner, name, new)


def prune(g: ChannelGraph, remove: set[int], model: nn.Module | None = None) -> None:
    """Physically remove the channels of the group labels in ``remove`` from ``g.gm`` (and
    from ``model``, the module ``g`` was traced from, whose modules a forward that is traced
    through holds the sliced tensors of: the graph keeps its own holders for those)."""
    if not remove:
        return
    rem = np.array(sorted(remove))
    todo: dict[tuple[str, str, int, str, int], set[int]] = defaultdict(set)
    for mem in g.members:
        pos = np.flatnonzero(np.isin(g.labels[mem.slots], rem))
        if len(pos):
            todo[(mem.module, mem.param, mem.dim, mem.role, mem.groups)].update(int(p) for p in pos)
    heads: dict[str, int] = {}
    once: set[str] = set()  # norms: one call prunes all their tensors
    done: set[tuple[str, str, int]] = set()
    for (mod, param, dim, role, groups), pos in todo.items():
        if (mod, param, dim) in done:
            continue
        done.add((mod, param, dim))
        m = g.gm.get_submodule(mod)
        also = []
        if model is not None:
            try:
                also = [model.get_submodule(mod)]
            except AttributeError:
                also = []
        idxs = sorted(pos)
        if isinstance(m, (*ops.CONV, *ops.CONV_TRANSPOSE)) and param in ("weight", "bias"):
            _prune_conv(m, param, dim, role, groups, idxs)
        elif isinstance(m, nn.Linear) and param in ("weight", "bias"):
            if param == "weight":
                if dim == 0:
                    tp.prune_linear_out_channels(m, idxs)
                else:
                    tp.prune_linear_in_channels(m, idxs)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if mod not in once:
                tp.prune_batchnorm_out_channels(m, idxs)
                once.add(mod)
        elif isinstance(m, nn.modules.instancenorm._InstanceNorm):
            if mod not in once:
                once.add(mod)
                keep = sorted(set(range(m.num_features)) - set(idxs))
                if m.affine:
                    tp.prune_instancenorm_out_channels(m, idxs)
                else:
                    m.num_features = len(keep)
                if m.track_running_stats:
                    m.running_mean = m.running_mean[keep]
                    m.running_var = m.running_var[keep]
        elif isinstance(m, nn.GroupNorm) and param in ("weight", "bias"):
            _cut(m, param, 0, idxs, also)
            m.num_channels = m.num_groups = int(getattr(m, param).shape[0])
        elif isinstance(m, nn.PReLU) and param == "weight":
            tp.prune_prelu_out_channels(m, idxs)
        elif isinstance(m, nn.MultiheadAttention) and param in ("in_proj_weight", "in_proj_bias"):
            _cut(m, param, dim, idxs, also)
            if param == "in_proj_weight" and dim == 0:
                heads[mod] = len(idxs) // (3 * m.head_dim)
        elif isinstance(getattr(m, param, None), Tensor):
            _cut(m, param, dim, idxs, also)
        else:  # pragma: no cover - members are created for tensors only
            raise CompileError(f"no way to narrow {param!r} of {type(m).__name__} '{mod}'")
    for mod, n in heads.items():
        m = g.gm.get_submodule(mod)
        narrow_multihead_attention(m, m.num_heads - n)


def _prune_conv(
    m: nn.Module, param: str, dim: int, role: str, groups: int, idxs: list[int]
) -> None:
    transposed = isinstance(m, ops.CONV_TRANSPOSE)
    out_dim = 1 if transposed else 0
    if param == "bias":
        return  # pruned with the weight's output side
    if role == "norm":  # a depthwise conv (with a channel multiplier): whole groups go
        mult = m.out_channels // m.in_channels
        if mult == 1:
            tp.prune_depthwise_conv_out_channels(m, idxs)
            return
        gone = sorted({i // mult for i in idxs})
        rows = [r for j in gone for r in range(j * mult, (j + 1) * mult)]
        _cut(m, "weight", 0, rows)
        if m.bias is not None:
            _cut(m, "bias", 0, rows)
        m.in_channels -= len(gone)
        m.groups -= len(gone)
        m.out_channels -= len(rows)
        return
    if dim == out_dim:
        tp.prune_conv_out_channels(m, idxs)
        return
    if groups > 1:  # the same positions in every group: expand to input channel indices
        a = m.in_channels // m.groups
        idxs = [j * a + p for j in range(m.groups) for p in idxs]
    tp.prune_conv_in_channels(m, idxs)


def count(model: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[int, int]:
    """``(MACs for one forward pass of inputs[0]'s batch / batch, parameters)``."""
    macs, params = tp.utils.count_ops_and_params(model, inputs[0] if len(inputs) == 1 else inputs)
    return int(macs), int(params)
