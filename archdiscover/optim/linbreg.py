r"""``LinBreg``: linearized Bregman iterations, with heavy-ball momentum as an option."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..regularizers import Regularizer
from . import _functional as F
from ._base import (
    ParamsT,
    RegularizedOptimizer,
    check,
    ensure_v,
    evaluate_closure,
    is_real,
    rebase_subgradients,
)

__all__ = ["LinBreg"]


class LinBreg(RegularizedOptimizer):
    r"""Linearized Bregman iterations (Bungert et al., JMLR 2022, Alg. 1-2).

    .. math::
        b_k = \mu b_{k-1} + (1 - \text{dampening}) g_k,\quad
        v_{k+1} = v_k - \tau b_k,\quad
        \theta_{k+1} = \mathrm{prox}_{\delta J}(\delta v_{k+1}),

    with ``v_0 = theta_0 / delta + p_0``, ``p_0 in dJ(theta_0)``, so a sparse start is a fixed
    point and parameters enter only once the accumulated gradient pushes ``v`` past the
    threshold (the inverse scale space). ``momentum``, ``dampening`` and ``nesterov`` mean
    what they mean in :class:`torch.optim.SGD` (the first step sets ``b_1 = g_1``); the
    paper's momentum ``m = beta m + (1 - beta) tau g`` is ``momentum=beta, dampening=beta``.
    With ``reg=None`` and ``delta=1`` this *is* ``torch.optim.SGD``, bit for bit (the default
    ``impl`` then runs on torch's own arithmetic).

    Args:
        params: parameters or param groups; a group may set its own ``lr``, ``delta``,
            ``momentum``, ``dampening``, ``nesterov``, ``reg`` and ``impl``.
        lr: step size ``tau`` of the subgradient variable.
        reg: the default regularizer ``J`` (``None``: no regularization).
        delta: elastic-net parameter ``delta > 0``; the effective step on ``theta`` is
            ``delta * lr``.
        momentum: in ``[0, 1)``; dampening in ``[0, 1]``; nesterov as in ``torch.optim.SGD``.
        impl: ``"auto"``, ``"single"``, ``"foreach"``, ``"compiled"`` (``torch.compile``) or
            ``"ckernel"`` (a one-pass C kernel on the CPU); see
            :mod:`archdiscover.optim._functional`. A param group default, kept by
            ``state_dict``.

    Example:
        >>> model = torch.nn.Linear(784, 10)
        >>> opt = LinBreg([{"params": [model.weight], "reg": L1(1e-2)},
        ...                {"params": [model.bias]}], lr=0.1, momentum=0.9)
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    """

    impls = ("single", "foreach", "compiled", "ckernel")

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        reg: Regularizer | None = None,
        delta: float = 1.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        *,
        impl: str = "auto",
    ) -> None:
        defaults = dict(
            lr=lr,
            reg=reg,
            delta=delta,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            impl=impl,
        )
        self._kernel = F.CompiledKernel(F.KERNELS["linbreg"], type(self).__name__)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        super()._validate_group(group, where)
        m, d = group["momentum"], group["dampening"]
        check(is_real(m) and 0.0 <= m < 1.0, where, f"invalid momentum={m!r} (must be in [0, 1))")
        check(is_real(d) and 0.0 <= d <= 1.0, where, f"invalid dampening={d!r} (must be in [0, 1])")
        check(
            isinstance(group["nesterov"], bool),
            where,
            f"nesterov must be a bool, got {group['nesterov']!r}",
        )
        check(
            not group["nesterov"] or (m > 0 and d == 0),
            where,
            "nesterov momentum requires momentum > 0 and dampening = 0",
        )

    def _init_group(
        self, group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor | None]]:
        params = self._params_with_grad(group)
        vs = ensure_v(self.state, params, group["delta"], group["reg"])
        grads = [p.grad for p in params]
        bufs = [self.state[p].get("momentum_buffer") for p in params]
        return params, grads, vs, bufs  # type: ignore[return-value]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = evaluate_closure(closure)
        batch = F.Batch()
        exact = F.is_torch_arithmetic(self.param_groups)
        for group in self.param_groups:
            params, grads, vs, bufs = self._init_group(group)
            if params:
                F.linbreg_update(
                    params, grads, vs, bufs, self.state, group, self._kernel, batch, exact
                )
        batch.flush(self._kernel)
        return loss

    def _reg_changed(self, group: dict[str, Any], old: Regularizer, new: Regularizer) -> None:
        """Keep ``theta`` a fixed point of the new prox (:func:`rebase_subgradients`)."""
        rebase_subgradients(self.state, group, old, new)
