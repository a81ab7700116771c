"""Coupled-group regularization: channel groups (graph) become optimizer param groups.

This is the one module that knows both the channel graph and the regularizers: it turns
:func:`archdiscover.graph.channel_groups` into plain ``torch.optim`` param groups whose
``"reg"`` is a :class:`~archdiscover.regularizers.CoupledGroupL12` (an index of group ids
per tensor). The optimizers see a regularizer with ``joint = True`` and call its
``prox_all``, without knowing about graphs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from ._inputs import Inputs
from .graph import ops
from .graph.groups import ChannelGroup, Slice, channel_groups
from .regularizers import CoupledGroupL12, Null, Regularizer

__all__ = ["active_channels", "coupled_param_groups"]


def coupled_param_groups(
    model: nn.Module,
    example_inputs: Inputs,
    lam: float,
    *,
    groups: Sequence[ChannelGroup] | None = None,
    roles: str | Sequence[str] = "auto",
    params: Sequence[str] = ("weight", "bias"),
    others: Regularizer | None = None,
    delta: float | None = None,
) -> list[dict[str, Any]]:
    r"""Optimizer param groups whose regularizer acts on whole coupled channel groups.

    The first param group (``"name": "coupled"``) holds every parameter with a regularized
    slice under one :class:`~archdiscover.regularizers.CoupledGroupL12` of strength ``lam``,
    ``J = lam * sum_g sqrt(|g|) ||x_g||_2``; the second (``"other"``) holds all other
    parameters with ``others`` (default :class:`~archdiscover.regularizers.Null`).

    Which slices of a coupled group are regularized (``roles``):

    * ``"auto"`` (default): where the group passes a BatchNorm (or an affine InstanceNorm),
      the **scale and shift** of every such norm in the group (across residual additions:
      every block's norm on that stream channel), and nothing else; the conv filters stay
      dense and unregularized. A group with zero scale and shift outputs exactly 0 (so
      :func:`archdiscover.compile` removes it), and its filters keep their values, so the
      normalized conv output it would pass on is never degenerate. Where a group has no
      such norm: the producers' rows (filters, neurons) and biases, and any other
      per-channel parameters (depthwise filters, PReLU slopes), as in the paper's row
      sparsity.
    * a subset of ``("out", "norm", "in")``: exactly those slices of every group (e.g.
      ``("out", "norm")``: filter, bias, scale and shift together).

    This is a Bregman recipe: with :func:`archdiscover.sparse_init_` (``reg=`` the
    optimizer) only a few groups per layer start non-zero and the rest exactly zero; with
    its growth hooks (``grow=True``, :mod:`archdiscover.growth`: ReLU takes the
    subgradient 1 at exactly 0 in training), a switched-off channel still sees its
    gradient, its ``v_g`` accumulates the evidence and the channel enters when
    ``||v_g|| > lam * sqrt(|g|)``: larger ``lam``, later and fewer channels. A channel
    whose ``v_g`` falls back under the threshold leaves.

    ``delta`` (the Bregman elastic-net parameter, ``theta_g = delta * shrink(v_g, lam
    sqrt(|g|))``) is set on the coupled group only when given (else the optimizer's
    default, 1). It does not move the entry threshold; it sets how fast an entered group
    grows: ``theta`` moves ``delta`` times as far as ``v`` per step. A BatchNorm scale's
    natural size is 1, while under AdaBreg ``v`` moves at most about ``lr`` per step, so
    with ``delta = 1`` and ``lr = 1e-3`` a channel that enters late reaches a scale of a
    few tenths at most in a short run. On the DnCNN benchmark (docs/RESULTS.md section 6,
    AdaBreg) ``delta = 10`` gained 3.3 dB over 1 at the same ``lam`` and half the FLOPs,
    and ``delta = 100`` another 0.4-0.6 dB at less than half the FLOPs again; on the ResNet-20 of
    section 4 (6 epochs), 100 kept the accuracy of 10 with two thirds of the parameters. Under
    LinBreg ``v`` moves by ``lr * grad``, so ``theta`` moves by ``delta * lr * grad``: there
    a large ``delta`` is a larger learning rate.

    Example:
        >>> pg = coupled_param_groups(model, torch.randn(1, 3, 32, 32), lam=0.1)
        >>> opt = archdiscover.LinBreg(pg, lr=0.1, momentum=0.9)
        >>> archdiscover.sparse_init_(model, 0.05, reg=opt)  # 5% of each layer's channels
    """
    auto = isinstance(roles, str)
    if auto and roles != "auto":
        raise ValueError(
            f"roles must be 'auto' or a subset of ('out', 'norm', 'in'), got {roles!r}"
        )
    if not auto:
        roles = tuple(roles)
        if not set(roles) <= {"out", "norm", "in"} or not roles:
            raise ValueError(
                f"roles must be 'auto' or a non-empty subset of ('out', 'norm', 'in'), got {roles}"
            )
    if groups is None:
        groups = channel_groups(model, example_inputs)
    index: dict[int, tuple[int, np.ndarray]] = {}  # id(param) -> (dim, ids)
    tensors: dict[int, nn.Parameter] = {}
    for gid, grp in enumerate(groups):
        for s in _regularized_slices(model, grp, roles if not auto else None):
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
    if delta is not None:
        if not (math.isfinite(delta) and delta > 0):
            raise ValueError(f"coupled_param_groups: delta must be finite and > 0, got {delta}")
        out[0]["delta"] = float(delta)
    if rest:
        out.append(
            {"params": rest, "reg": others if others is not None else Null(), "name": "other"}
        )
    return out


def _is_affine_norm(model: nn.Module, name: str) -> bool:
    m = model.get_submodule(name)
    return isinstance(m, ops.NORM) and isinstance(getattr(m, "weight", None), nn.Parameter)


def _regularized_slices(
    model: nn.Module, grp: ChannelGroup, roles: tuple[str, ...] | None
) -> list[Slice]:
    """The slices of ``grp`` a coupled regularizer acts on (``roles=None``: ``"auto"``)."""
    if roles is not None:
        return grp.params(roles)
    norms = [s for s in grp.params(("norm",)) if _is_affine_norm(model, s.module)]
    return norms if norms else grp.params(("out", "norm"))


def active_channels(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    roles: str | Sequence[str] = "auto",
    params: Sequence[str] = ("weight", "bias"),
) -> dict[str, int]:
    """Per producing layer (Conv / ConvTranspose / Linear), how many of its output channels
    are *active*: their coupled group has a non-zero slice among those
    :func:`coupled_param_groups` regularizes with ``roles`` and ``params``.

    With the default recipe an inactive channel outputs exactly zero (zero BatchNorm scale
    and shift, or zero row and bias), so these are the widths :func:`archdiscover.compile`
    keeps. A layer's channels that are in no removable group (e.g. the model's output) count
    as active. Example: ``active_channels(model, archdiscover.channel_groups(model, x))``.
    """
    auto = isinstance(roles, str)
    counts: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, (*ops.CONV, *ops.CONV_TRANSPOSE)):
            counts[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            counts[name] = m.out_features
    for grp in groups:
        slices = [
            s
            for s in _regularized_slices(model, grp, None if auto else tuple(roles))
            if s.param in params
        ]
        if slices and not any(bool(s.tensor(model).any()) for s in slices):
            for prod in grp.producers:
                n = sum(
                    len(s.index)
                    for s in grp.slices
                    if s.module == prod and s.role == "out" and s.param == "weight"
                )
                if prod in counts:
                    counts[prod] -= n
    return counts
