r"""``AdaBreg``: Adam's preconditioned direction steps the Bregman subgradient variable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

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

__all__ = ["AdaBreg"]


class AdaBreg(RegularizedOptimizer):
    r"""Bregmanized Adam (Bungert et al., JMLR 2022, Alg. 3).

    .. math::
        m_k = \beta_1 m_{k-1} + (1-\beta_1) g_k,\quad s_k = \beta_2 s_{k-1} + (1-\beta_2) g_k^2,

        v_{k+1} = v_k - \tau \frac{m_k / (1-\beta_1^k)}{\sqrt{s_k / (1-\beta_2^k)} + \epsilon},
        \quad \theta_{k+1} = \mathrm{prox}_{\delta J}(\delta v_{k+1}).

    With ``reg=None`` and ``delta=1`` this *is* ``torch.optim.Adam``, bit for bit (the default
    ``impl`` then runs on torch's own arithmetic).

    Args:
        params: parameters or param groups (a group may set ``lr``, ``delta``, ``betas``,
            ``eps``, ``reg`` and ``impl``).
        lr: step size ``tau``.
        reg: default regularizer (``None``: no regularization).
        delta: elastic-net parameter ``delta > 0``.
        betas: moment coefficients, each in ``[0, 1)``.
        eps: added to the denominator, ``>= 0``.
        impl: ``"auto"``, ``"single"``, ``"foreach"`` or ``"compiled"`` (``torch.compile``);
            see :mod:`archdiscover.optim._functional`. A param group default.

    Example:
        >>> opt = AdaBreg(model.parameters(), lr=1e-3, reg=GroupL12(0.05))
    """

    impls = ("single", "foreach", "compiled")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        reg: Regularizer | None = None,
        delta: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        impl: str = "auto",
    ) -> None:
        defaults = dict(lr=lr, reg=reg, delta=delta, betas=betas, eps=eps, impl=impl)
        self._kernel = F.CompiledKernel(F.KERNELS["adabreg"], type(self).__name__)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        super()._validate_group(group, where)
        betas = group["betas"]
        check(
            isinstance(betas, (tuple, list)) and len(betas) == 2,
            where,
            f"betas must be a pair (beta1, beta2), got {betas!r}",
        )
        for i, b in enumerate(betas):
            check(
                is_real(b) and 0.0 <= b < 1.0,
                where,
                f"invalid beta parameter at index {i}: {b!r} (must be in [0, 1))",
            )
        check(
            is_real(group["eps"]) and group["eps"] >= 0.0,
            where,
            f"invalid eps={group['eps']!r} (must be >= 0)",
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = evaluate_closure(closure)
        batch = F.Batch()
        exact = F.is_torch_arithmetic(self.param_groups)
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            lr = float(group["lr"])
            vs = ensure_v(self.state, params, group["delta"], group["reg"])
            grads, ms, ss, steps = [], [], [], []
            for p in params:
                st = self.state[p]
                if "step" not in st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                grads.append(p.grad)
                ms.append(st["exp_avg"])
                ss.append(st["exp_avg_sq"])
                steps.append(st["step"])
            torch._foreach_add_(steps, 1.0)
            ks = [float(s.item()) for s in steps]  # CPU scalars: no device sync
            step_sizes = [lr / (1.0 - beta1**k) for k in ks]
            bc2_sqrts = [(1.0 - beta2**k) ** 0.5 for k in ks]
            F.adabreg_update(
                params, grads, vs, ms, ss, step_sizes, bc2_sqrts, group, self._kernel, batch, exact
            )
        batch.flush(self._kernel)
        return loss

    def _reg_changed(self, group: dict[str, Any], old: Regularizer, new: Regularizer) -> None:
        """Keep ``theta`` a fixed point of the new prox (:func:`rebase_subgradients`)."""
        rebase_subgradients(self.state, group, old, new)
