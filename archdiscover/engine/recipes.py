"""Regularizer recipes: a config's ``regularizer`` name becomes optimizer param groups.

* ``l1`` -- entries of every Conv / ConvTranspose / Linear weight;
* ``group`` -- output units (rows, filters; ``axis=1`` for a ConvTranspose weight);
* ``kernels`` -- each k x k kernel of a convolution, the rows of a Linear (the paper's Table 2);
  with ``group`` and ``kernels`` the rows of a Linear take ``linear_lam`` when it is set (the
  paper's code: ``lamda_0`` on the convs, ``lamda_1`` on the Linear layers), else ``lam``;
* ``coupled`` -- coupled channel groups (:func:`archdiscover.coupled_param_groups`, the
  default recipe): the BatchNorm scale and shift of every channel that has one (filters
  dense and unregularized), the producing rows and biases of the others;
  ``coupled_weights`` -- the same groups, filters only (biases kept non-zero);
* ``none`` -- no regularizer.

With ``group`` and ``kernels`` a layer none of whose outputs can be removed (found with
:func:`archdiscover.inspect`: it makes the model's output) stays dense and unregularized
(``"output weights"``, :class:`~archdiscover.regularizers.Null`): a hidden unit that the
sparse start switched off can only receive a gradient through its outgoing weights, so
those must not start at zero (with entry-wise L1 from 1% of the entries almost none of them
exist, and nothing grows).

Gates (:mod:`archdiscover.graph.gates`: scalar parameters that scale a whole tensor, one
per candidate connection, e.g. the ``skips`` of ``models.skip_autoencoder``) get a param
group of their own with every recipe but ``none``: ``L1(gate_lam)`` (``lam`` when
``gate_lam`` is unset), one scalar per connection, so a connection enters the network when
its gate leaves zero. Which layers count as model-output layers is judged with every gated
connection absent (the sparse start: gates begin at zero), so a candidate skip from the
input does not freeze the widths it could later couple.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..graph import ops
from ..optim import AdaBreg, LinBreg, ProxSGD
from ..regularizers import L1, GroupL12, Null, Regularizer
from .config import TrainConfig

__all__ = ["build_optimizer", "lr_scheduler", "param_groups", "unit_counter"]


def param_groups(model: nn.Module, cfg: TrainConfig, example: Tensor) -> list[dict[str, Any]]:
    """The optimizer param groups of ``cfg.regularizer`` at strength ``cfg.lam``, with the
    gates of gated connections in a group ``"gates"`` of their own (see the module doc)."""
    groups = _recipe_groups(model, cfg, example)
    if cfg.regularizer == "none":
        return groups
    return _gate_group(model, example, groups, getattr(cfg, "gate_lam", None), cfg.lam)


def _gate_group(
    model: nn.Module,
    example: Tensor,
    groups: list[dict[str, Any]],
    gate_lam: float | None,
    lam: float,
) -> list[dict[str, Any]]:
    """Move the gate parameters out of ``groups`` into one group with ``L1(gate_lam)``."""
    from ..graph.gates import gate_parameters

    gates = list(gate_parameters(model, example).values())
    if not gates:
        return groups
    ids = {id(p) for p in gates}
    out = []
    for grp in groups:
        if getattr(grp.get("reg"), "joint", False):
            if any(id(p) in ids for p in grp["params"]):  # pragma: no cover - not sliced
                raise ValueError("a gate parameter is part of a coupled channel group")
            out.append(grp)
            continue
        rest = [p for p in grp["params"] if id(p) not in ids]
        if rest:
            out.append({**grp, "params": rest})
    out.append({"params": gates, "reg": L1(lam if gate_lam is None else gate_lam), "name": "gates"})
    return out


def _recipe_groups(model: nn.Module, cfg: TrainConfig, example: Tensor) -> list[dict[str, Any]]:
    if cfg.regularizer in ("coupled", "coupled_weights"):
        from ..coupling import coupled_param_groups

        kw = (
            {"roles": ("out",), "params": ("weight",)}
            if cfg.regularizer == "coupled_weights"
            else {}
        )
        return coupled_param_groups(model, example, cfg.lam, delta=cfg.coupled_delta, **kw)
    lam = cfg.lam
    lin_lam = lam if cfg.linear_lam is None else cfg.linear_lam
    if cfg.regularizer == "none":
        return [{"params": list(model.parameters()), "reg": Null(), "name": "all"}]
    # output units that cannot be removed (the model's outputs): entries (L1), not rows
    fixed = _fixed_layers(model, example) if cfg.regularizer != "l1" else set()
    buckets: dict[str, tuple[Regularizer, list[nn.Parameter]]] = {}

    def put(name: str, reg: Regularizer, p: nn.Parameter) -> None:
        buckets.setdefault(name, (reg, []))[1].append(p)

    seen: set[int] = set()
    for mname, m in model.named_modules():
        if not isinstance(m, ops.WEIGHTED) or id(m.weight) in seen:
            continue
        seen.add(id(m.weight))
        transposed = isinstance(m, ops.CONV_TRANSPOSE)
        if cfg.regularizer == "l1":
            put("weights", L1(lam), m.weight)
        elif mname in fixed:  # dense: the hidden units grow through its columns
            put("output weights", Null(), m.weight)
        elif cfg.regularizer == "group":  # output units: rows / filters
            if isinstance(m, nn.Linear) and cfg.linear_lam is not None:
                put("linear rows", GroupL12(lin_lam, axis=0), m.weight)
            else:
                put(
                    "transposed" if transposed else "weights",
                    GroupL12(lam, axis=1 if transposed else 0),
                    m.weight,
                )
        elif m.weight.dim() > 2:  # kernels: each k x k kernel of a convolution
            name = "transposed kernels" if transposed else "conv kernels"
            put(name, GroupL12.kernels(lam), m.weight)
        else:  # kernels: the rows (neurons) of a Linear
            put("linear rows", GroupL12(lin_lam, axis=0), m.weight)
    groups = [{"params": ps, "reg": reg, "name": name} for name, (reg, ps) in buckets.items()]
    others = [p for p in model.parameters() if id(p) not in seen]
    if others:
        groups.append({"params": others, "reg": Null(), "name": "other"})
    return groups


def unit_counter(
    model: nn.Module, cfg: TrainConfig, example: Tensor
) -> Callable[[nn.Module], dict[str, int]] | None:
    """For the coupled recipes, a function giving each producing layer's active channels
    (:func:`archdiscover.coupling.active_channels`: a channel whose regularized slices are
    all zero is inactive, whatever its unregularized filter holds); ``None`` for the other
    recipes, whose units are counted on the weights (:func:`archdiscover.sparsity_report`)."""
    if cfg.regularizer not in ("coupled", "coupled_weights") or cfg.optimizer in ("sgd", "adam"):
        return None
    from ..coupling import active_channels
    from ..graph.groups import channel_groups

    groups = channel_groups(model, example)
    if cfg.regularizer == "coupled_weights":
        return lambda m: active_channels(m, groups, ("out",), ("weight",))
    return lambda m: active_channels(m, groups)


def _fixed_layers(model: nn.Module, example: Tensor) -> set[str]:
    """Layers none of whose output units can be removed (they make the model's output):
    a row group there would only switch outputs off, so they get entry-wise L1 instead."""
    from ..graph.gates import drop_gated_terms, find_gates
    from ..graph.groups import inspect
    from ..graph.trace import TraceError, trace

    try:  # judged with every gated connection absent (gates start at zero)
        gm = trace(model, example).gm
    except TraceError:
        return set()
    if drop_gated_terms(gm, find_gates(gm)):
        gm.graph.eliminate_dead_code()
        gm.recompile()
    rep = inspect(gm, example)
    if not rep.traceable:  # pragma: no cover - traced above
        return set()
    return {name for name, (removable, _total) in rep.layers.items() if removable == 0}


def build_optimizer(model: nn.Module, cfg: TrainConfig, example: Tensor) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names, over the param groups of its regularizer recipe."""
    if cfg.optimizer in ("sgd", "adam"):
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(
                model.parameters(), lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening
            )
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    groups = param_groups(model, cfg, example)
    if cfg.optimizer == "linbreg":
        return LinBreg(
            groups, lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening, impl=cfg.impl
        )
    if cfg.optimizer == "adabreg":
        return AdaBreg(groups, lr=cfg.lr, betas=tuple(cfg.betas), impl=cfg.impl)
    return ProxSGD(groups, lr=cfg.lr)


def lr_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    """The learning-rate schedule ``cfg.lr_schedule`` names (None for ``constant``)."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None
