"""Physical removal of channels (Torch-Pruning's per-layer functions) and size counting."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch_pruning as tp
from torch import Tensor, nn

from ..graph import ops
from ..graph.trace import ChannelGraph
from .errors import CompileError

__all__ = ["count", "prune"]


def prune(g: ChannelGraph, remove: set[int]) -> None:
    """Physically remove the channels of the group labels in ``remove`` from ``g.gm``."""
    if not remove:
        return
    rem = np.array(sorted(remove))
    todo: dict[tuple[str, str], set[int]] = defaultdict(set)
    for mem in g.members:
        if mem.param != "weight" and mem.role != "norm":
            continue
        pos = np.flatnonzero(np.isin(g.labels[mem.slots], rem))
        if len(pos):
            todo[(mem.module, mem.role)].update(int(p) for p in pos)
    for (mod, role), pos in todo.items():
        m = g.gm.get_submodule(mod)
        idxs = sorted(pos)
        if isinstance(m, (*ops.CONV, *ops.CONV_TRANSPOSE)):
            if role == "norm":
                tp.prune_depthwise_conv_out_channels(m, idxs)
            elif role == "out":
                tp.prune_conv_out_channels(m, idxs)
            else:
                tp.prune_conv_in_channels(m, idxs)
        elif isinstance(m, nn.Linear):
            if role == "out":
                tp.prune_linear_out_channels(m, idxs)
            else:
                tp.prune_linear_in_channels(m, idxs)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            tp.prune_batchnorm_out_channels(m, idxs)
        elif isinstance(m, nn.modules.instancenorm._InstanceNorm):
            keep = sorted(set(range(m.num_features)) - set(idxs))
            tp.prune_instancenorm_out_channels(m, idxs)
            if m.track_running_stats:
                m.running_mean = m.running_mean[keep]
                m.running_var = m.running_var[keep]
        elif isinstance(m, nn.PReLU):
            tp.prune_prelu_out_channels(m, idxs)
        else:  # pragma: no cover - the tracer only creates members for the types above
            raise CompileError(f"no pruning function for {type(m).__name__} '{mod}'")


def count(model: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[int, int]:
    """``(MACs for one forward pass of inputs[0]'s batch / batch, parameters)``."""
    macs, params = tp.utils.count_ops_and_params(model, inputs[0] if len(inputs) == 1 else inputs)
    return int(macs), int(params)
