r"""``ProxSGD``: proximal gradient descent, the forward-scale-space baseline."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..regularizers import Regularizer
from ._base import ParamsT, RegularizedOptimizer, evaluate_closure, is_joint

__all__ = ["ProxSGD"]


class ProxSGD(RegularizedOptimizer):
    r"""Proximal gradient descent: ``theta = prox_{tau J}(theta - tau g)``.

    Starts from whatever the parameters are (dense or sparse) and removes what the prox
    zeros -- the forward scale space, the opposite of Bregman's.

    Example:
        >>> opt = ProxSGD(model.parameters(), lr=0.1, reg=L1(1e-4))
    """

    def __init__(self, params: ParamsT, lr: float, reg: Regularizer | None = None) -> None:
        super().__init__(params, dict(lr=lr, reg=reg))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if not params:
                continue
            lr, reg = float(group["lr"]), group["reg"]
            torch._foreach_add_(params, [p.grad for p in params], alpha=-lr)
            if is_joint(reg) and not reg.is_null:
                reg.prox_all([p.clone() for p in params], lr, out=params)  # type: ignore[attr-defined]
            elif not reg.is_null:
                for p in params:
                    p.copy_(reg.prox(p, lr))
        return loss
