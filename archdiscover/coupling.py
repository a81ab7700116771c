"""Coupled-group regularization: channel groups (graph) become optimizer param groups.

This is the one module that knows both the channel graph and the regularizers: it turns
:func:`archdiscover.graph.channel_groups` into plain ``torch.optim`` param groups whose
``"reg"`` is a :class:`~archdiscover.regularizers.CoupledGroupL12` (an index of group ids
per tensor). The optimizers see a regularizer with ``joint = True`` and call its
``prox_all``, without knowing about graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from ._inputs import Inputs
from .graph.groups import ChannelGroup, channel_groups
from .regularizers import CoupledGroupL12, Null, Regularizer

__all__ = ["coupled_param_groups"]


def coupled_param_groups(
    model: nn.Module,
    example_inputs: Inputs,
    lam: float,
    *,
    groups: Sequence[ChannelGroup] | None = None,
    roles: Sequence[str] = ("out", "norm"),
    params: Sequence[str] = ("weight", "bias"),
    others: Regularizer | None = None,
) -> list[dict[str, Any]]:
    """Optimizer param groups whose regularizer acts on whole coupled channel groups.

    The first param group holds every parameter with a slice in a removable coupled group
    (by default the producing rows and biases and the per-channel BatchNorm / depthwise
    parameters, ``roles=("out", "norm")``) under one
    :class:`~archdiscover.regularizers.CoupledGroupL12` of strength ``lam``: one prox zeros
    a channel's conv filter, bias, BatchNorm scale and shift together (and, across residual
    additions, every producer of that stream channel), which makes its output exactly zero
    so that :func:`archdiscover.compile` removes it. The second holds all other parameters
    with ``others`` (default :class:`~archdiscover.regularizers.Null`).

    Growth versus pruning: a channel whose *whole* group is zero, bias and BatchNorm shift
    included, feeds exactly 0 into its ReLU, and ``relu'(0) = 0`` in PyTorch, so it gets no
    gradient and the inverse scale space can never add it back: with the default roles,
    start from the channels you are willing to keep (a denser ``sparse_init_``). To let
    Bregman iterations *add* channels from a very sparse start, regularize the filters
    only (``roles=("out",), params=("weight",)``) and keep biases non-zero
    (``sparse_init_(..., bias="keep")``): a dead channel then outputs a constant,
    which ``compile`` folds into the next layer where that is exact.

    Example:
        >>> pg = coupled_param_groups(model, torch.randn(1, 3, 32, 32), lam=0.05)
        >>> opt = archdiscover.LinBreg(pg, lr=0.1, momentum=0.9)
        >>> archdiscover.sparse_init_(model, 0.1, reg=opt)  # 10% of the channels alive
    """
    roles = tuple(roles)
    if not set(roles) <= {"out", "norm", "in"} or not roles:
        raise ValueError(f"roles must be a non-empty subset of ('out', 'norm', 'in'), got {roles}")
    if groups is None:
        groups = channel_groups(model, example_inputs)
    index: dict[int, tuple[int, np.ndarray]] = {}  # id(param) -> (dim, ids)
    tensors: dict[int, nn.Parameter] = {}
    for gid, grp in enumerate(groups):
        for s in grp.params(roles):
            if ("bias" if s.param.endswith("bias") else "weight") not in params:
                continue  # e.g. in_proj_weight / in_proj_bias of attention, a layer scale
            p = getattr(model.get_submodule(s.module), s.param)
            if not isinstance(p, nn.Parameter):
                continue
            key = id(p)
            if key not in index:
                index[key] = (s.dim, np.full(p.shape[s.dim], -1, dtype=np.int64))
                tensors[key] = p
            dim, ids = index[key]
            if dim != s.dim:
                raise ValueError(
                    f"{s.module}.{s.param} is sliced along dims {dim} and {s.dim} by the "
                    f"chosen roles {roles}; a coupled group regularizer needs one dim per tensor"
                )
            ids[list(s.index)] = gid
    order = list(tensors)  # insertion order: graph order
    coupled = [tensors[k] for k in order]
    reg = CoupledGroupL12(lam, [(index[k][0], index[k][1].tolist()) for k in order])
    chosen = set(order)
    rest = [p for p in model.parameters() if id(p) not in chosen]
    out: list[dict[str, Any]] = [{"params": coupled, "reg": reg, "name": "coupled"}]
    if rest:
        out.append(
            {"params": rest, "reg": others if others is not None else Null(), "name": "other"}
        )
    return out
