r"""What every archdiscover optimizer shares: a regularizer per param group, validated
hyperparameters (in ``__init__``, ``add_param_group`` and ``load_state_dict`` alike),
plain-data ``state_dict`` s, :meth:`RegularizedOptimizer.set_reg`, and the Bregman
subgradient variable ``v``.

The subgradient variable of a Bregman iteration lives in the optimizer state: for a
parameter ``theta`` with regularizer ``J`` and elastic-net parameter ``delta`` it starts at

.. math::
    v_0 = \theta_0 / \delta + p_0, \qquad p_0 \in \partial J(\theta_0),

so that ``theta_0 = prox_{delta J}(delta v_0)``: the initialization is a fixed point and a
sparse start stays exactly as sparse until the gradients move ``v`` past the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..regularizers import Regularizer, as_regularizer

__all__ = [
    "IMPLS",
    "ParamsT",
    "RegularizedOptimizer",
    "check",
    "ensure_v",
    "evaluate_closure",
    "initial_vs",
    "is_joint",
    "is_real",
    "rebase_subgradients",
]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]

#: the implementations an update can run on (see :mod:`archdiscover.optim._functional`)
IMPLS = ("auto", "single", "foreach", "compiled", "ckernel")


def check(cond: bool, who: str, msg: str) -> None:
    """Raise ``ValueError(f"{who}: {msg}")`` unless ``cond``."""
    if not cond:
        raise ValueError(f"{who}: {msg}")


def is_real(x: Any) -> bool:
    """A finite Python number that is not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_joint(reg: Any) -> bool:
    """True for regularizers coupling all tensors of a param group (``CoupledGroupL12``)."""
    return bool(getattr(reg, "joint", False))


def evaluate_closure(closure: Callable[[], float] | None) -> float | None:
    """The loss from ``closure`` (with gradients enabled), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class RegularizedOptimizer(Optimizer):
    """Shared machinery of ``LinBreg``, ``AdaBreg`` and ``ProxSGD``.

    A regularizer per param group (key ``"reg"``), plain-data ``state_dict`` s, validation of
    every group's hyperparameters wherever a group comes from, and :meth:`set_reg`.
    Subclasses extend :meth:`_validate_group` and implement ``step``.
    """

    #: implementations this optimizer offers besides "auto" (subclasses narrow it)
    impls: tuple[str, ...] = ("single", "foreach")

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        defaults = dict(defaults)
        defaults["reg"] = as_regularizer(defaults.get("reg"), where=type(self).__name__)
        super().__init__(params, defaults)

    # -- groups -----------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        where = f"{type(self).__name__} param group {index}"
        group["reg"] = as_regularizer(group["reg"], where=where)
        self._validate_group(group, where)

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        lr = group["lr"]
        check(
            isinstance(lr, Tensor) or is_real(lr),
            where,
            f"lr must be a finite real number, got {lr!r}",
        )
        check(float(lr) >= 0.0, where, f"invalid learning rate lr={float(lr)} (must be >= 0)")
        if "delta" in group:
            delta = group["delta"]
            check(
                is_real(delta) and delta > 0,
                where,
                f"invalid delta={delta!r} (must be a finite number > 0)",
            )
        if "impl" in group:
            impl = group["impl"]
            allowed = ("auto", *self.impls)
            check(
                impl in allowed,
                where,
                f"impl must be one of {', '.join(map(repr, allowed))}, got {impl!r}",
            )

    def set_reg(
        self, group: int | dict[str, Any], reg: Regularizer | Mapping[str, Any] | None
    ) -> None:
        """Replace the regularizer of ``group`` (an index or a param group dict).

        Bregman optimizers also rewrite their subgradients ``v`` so that the current
        parameters stay a fixed point of the new prox (:func:`rebase_subgradients`).
        """
        g = self.param_groups[group] if isinstance(group, int) else group
        new = as_regularizer(reg, where=f"{type(self).__name__}.set_reg")
        self._reg_changed(g, g["reg"], new)
        g["reg"] = new

    def _reg_changed(self, group: dict[str, Any], old: Regularizer, new: Regularizer) -> None:
        """Hook for optimizers whose state depends on the regularizer."""

    # -- plain-data state dicts -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        for g in sd["param_groups"]:
            if isinstance(g.get("reg"), Regularizer):
                g["reg"] = g["reg"].to_dict()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; its hyperparameters are validated first, as ``__init__`` would.

        A refused state dict (``lr = -5``, an unknown regularizer, ...) raises ``ValueError``
        naming the group and leaves the optimizer as it was.
        """
        name = type(self).__name__
        groups = state_dict.get("param_groups") if isinstance(state_dict, Mapping) else None
        if not isinstance(groups, list):
            raise ValueError(f"{name}.load_state_dict: not an optimizer state dict")
        for i, saved in enumerate(groups):
            where = f"{name} state_dict group {i}"
            if not isinstance(saved, Mapping):
                raise ValueError(f"{where}: not a dict")
            probe = {**self.defaults, **saved}
            probe["reg"] = as_regularizer(saved.get("reg"), where=where)
            self._validate_group(probe, where)
        own = [set(g) for g in self.param_groups]
        super().load_state_dict(state_dict)
        for i, g in enumerate(self.param_groups):
            for key in own[i] if i < len(own) else ():  # keys newer than the saved state
                if key not in g and key in self.defaults:
                    g[key] = self.defaults[key]
            g["reg"] = as_regularizer(g.get("reg"), where=f"{name} state_dict group {i}")

    # -- helpers ----------------------------------------------------------------------------------
    def _params_with_grad(self, group: dict[str, Any]) -> list[Tensor]:
        joint = is_joint(group["reg"])
        out = []
        for p in group["params"]:
            if p.grad is None:
                if not joint:
                    continue
                # a coupled regularizer's prox needs every tensor of its group
                p.grad = torch.zeros_like(p)
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients "
                    f"(parameter of shape {tuple(p.shape)})"
                )
            out.append(p)
        return out


# ---------------------------------------------------------------------------------------------
# The subgradient variable v
# ---------------------------------------------------------------------------------------------
def initial_vs(params: list[Tensor], delta: float, reg: Regularizer) -> list[Tensor]:
    """``theta / delta + p0`` with ``p0 in dJ(theta)`` per tensor (a coupled regularizer
    sees them all at once): each ``theta`` is a fixed point of the prox."""
    thetas = [p.detach() for p in params]
    if not is_joint(reg):
        subs = [reg.subgradient(t) for t in thetas]
    elif reg.is_null:
        subs = [torch.zeros_like(t) for t in thetas]
    else:
        subs = reg.subgradient_all(thetas)  # type: ignore[attr-defined]
    return [(t / delta + s).to(t.dtype) for t, s in zip(thetas, subs, strict=True)]


def ensure_v(
    state: Mapping[Tensor, dict[str, Any]], params: list[Tensor], delta: float, reg: Regularizer
) -> list[Tensor]:
    """The subgradient variables ``v`` of ``params``, created in ``state`` where missing."""
    if any("v" not in state[p] for p in params):
        for p, v in zip(params, initial_vs(params, delta, reg), strict=True):
            state[p].setdefault("v", v)
    return [state[p]["v"] for p in params]


def rebase_subgradients(
    state: Mapping[Tensor, dict[str, Any]],
    group: dict[str, Any],
    old: Regularizer,
    new: Regularizer,
) -> None:
    """Keep ``theta`` a fixed point: ``v = theta/delta + p`` with ``p in dJ_new(theta)``.

    When only the strength changes, the subgradient part ``p = v - theta/delta`` of the
    non-zero coordinates is rescaled by ``lam_new / lam_old`` (what keeps them fixed).
    Zero coordinates: when ``lam`` falls, their ``p`` is rescaled as well, so they keep
    their progress toward the threshold and none enters at once; when ``lam`` rises,
    their ``p`` is kept, so they are at once farther from the higher threshold (a brake
    that acts now, not after the entries already under way). Another regularizer
    structure replaces ``p`` by ``dJ_new(theta)``.
    """
    delta = group["delta"]
    params = [p for p in group["params"] if "v" in state.get(p, {})]
    with torch.no_grad():
        if old.same_structure(new) and old.lam > 0:
            ratio = new.lam / old.lam
            for p in params:
                v = state[p]["v"]
                base = p.detach() / delta
                scaled = base + (v - base) * ratio
                if ratio > 1:  # zero coordinates keep v: farther from the higher threshold
                    scaled = torch.where(p != 0, scaled, v)
                v.copy_(scaled)
        elif params:
            for p, v0 in zip(params, initial_vs(params, delta, new), strict=True):
                state[p]["v"].copy_(v0)
