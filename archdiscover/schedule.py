"""A regularization-strength scheduler that steers ``lam`` toward a target density.

The paper's discrepancy-principle idea, applied to sparsity: regularization is a
means, the size of the network the end. Bregman training is an inverse scale space: the
density grows by itself, and ``lam`` sets how fast (a weight enters when its accumulated
gradient passes ``lam``) and how easily a weight falls back to zero. After each epoch the
density ``d`` of the regularized parameters is compared with the target ``d*`` and with
the density ``d_prev`` one step before:

* ``d > d* (1 + tol)`` and not falling (``d >= d_prev``): too dense, every regularized
  group's ``lam`` is multiplied by ``factor``;
* ``d < d* (1 - tol)`` and stalled (``d <= d_prev (1 + growth)``) for ``patience``
  steps in a row: too sparse and not growing toward the target, ``lam`` is divided by
  ``factor``;
* ``d <= d* (1 + tol)`` but growing so fast that one more step of the same growth,
  ``d + (d - d_prev)``, would end above the band: ``lam`` is multiplied by ``factor``
  (a brake);
* otherwise ``lam`` stays: inside the band, or already moving the right way. (Lowering
  ``lam`` while the density still grows would only overshoot; raising it while the density
  already falls would only run ``lam`` away.)

Why the brake and ``patience``: in the inverse scale space a weight enters some steps after
``lam`` is lowered (its subgradient must first accumulate past the new threshold) and, once
in, it rarely leaves when ``lam`` is raised again. A target is best approached from below,
slowly: ``patience > 1`` waits for the growth a lower ``lam`` sets off before lowering it
again, and the brake stops a burst of entries before it overshoots.

Strengths change through :meth:`RegularizedOptimizer.set_reg`, which rewrites the
Bregman subgradients ``v`` so the current parameters stay a fixed point of the new prox:
a change of ``lam`` never moves a weight by itself, it changes how fast weights enter
(or leave) from then on.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .optim import RegularizedOptimizer

__all__ = ["LamScheduler"]


class LamScheduler:
    """Multiply or divide the regularization strength toward a target density.

    Args:
        optimizer: a :class:`~archdiscover.optim.LinBreg`, :class:`~archdiscover.optim.AdaBreg`
            or :class:`~archdiscover.optim.ProxSGD`; the param groups whose regularizer is
            not null when the scheduler is made are the ones it steers.
        target: the target density in ``(0, 1]``: non-zero fraction of the steered params
            (or whatever ``step(density)`` is given, e.g. a FLOPs fraction).
        factor: the multiplicative step, ``> 1``.
        tolerance: relative band around ``target`` where nothing changes, in ``[0, 1)``.
        growth: relative growth per step below which a too-sparse run counts as stalled.
        patience: consecutive stalled steps below the band before ``lam`` is lowered.
        min_lam, max_lam: bounds on every steered ``lam``.

    Example:
        >>> sched = LamScheduler(opt, target=0.05)
        >>> for epoch in range(epochs):
        ...     train_one_epoch(model, opt)
        ...     sched.step()          # after the epoch, like an LR scheduler
    """

    def __init__(
        self,
        optimizer: RegularizedOptimizer,
        target: float,
        *,
        factor: float = 1.5,
        tolerance: float = 0.1,
        growth: float = 0.02,
        patience: int = 1,
        min_lam: float = 1e-8,
        max_lam: float = 1e4,
    ) -> None:
        if not isinstance(optimizer, RegularizedOptimizer):
            raise ValueError(
                f"LamScheduler: optimizer must be an archdiscover optimizer "
                f"(LinBreg, AdaBreg, ProxSGD), got {type(optimizer).__name__}"
            )
        if not 0.0 < target <= 1.0:
            raise ValueError(f"LamScheduler: target must be in (0, 1], got {target!r}")
        if not factor > 1.0 or not math.isfinite(factor):
            raise ValueError(f"LamScheduler: factor must be a finite number > 1, got {factor!r}")
        if not 0.0 <= tolerance < 1.0:
            raise ValueError(f"LamScheduler: tolerance must be in [0, 1), got {tolerance!r}")
        if not growth >= 0.0:
            raise ValueError(f"LamScheduler: growth must be >= 0, got {growth!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"LamScheduler: patience must be an int >= 1, got {patience!r}")
        if not 0.0 < min_lam <= max_lam:
            raise ValueError(
                f"LamScheduler: need 0 < min_lam <= max_lam, got "
                f"min_lam={min_lam!r}, max_lam={max_lam!r}"
            )
        self.optimizer = optimizer
        self.target, self.factor, self.tolerance = float(target), float(factor), float(tolerance)
        self.growth, self.patience = float(growth), patience
        self.stalled = 0
        self.min_lam, self.max_lam = float(min_lam), float(max_lam)
        self.groups = [i for i, g in enumerate(optimizer.param_groups) if not g["reg"].is_null]
        if not self.groups:
            raise ValueError(
                "LamScheduler: no param group of the optimizer has a non-null regularizer to steer"
            )
        self.last_density: float | None = None
        self.steps = 0

    @torch.no_grad()
    def density(self) -> float:
        """Non-zero fraction of the parameters in the steered groups."""
        total = nonzero = 0
        for i in self.groups:
            for p in self.optimizer.param_groups[i]["params"]:
                total += p.numel()
                nonzero += int(torch.count_nonzero(p))
        return nonzero / total if total else 0.0

    def lams(self) -> list[float]:
        """The current ``lam`` of each steered group."""
        return [self.optimizer.param_groups[i]["reg"].lam for i in self.groups]

    def step(self, density: float | None = None) -> float:
        """Compare ``density`` (default: :meth:`density`) with the target and adjust ``lam``.

        Returns the factor applied to ``lam`` (``1.0`` when inside the band).
        """
        d = self.density() if density is None else float(density)
        prev, self.last_density, self.steps = self.last_density, d, self.steps + 1
        high = self.target * (1.0 + self.tolerance)
        low = self.target * (1.0 - self.tolerance)
        stalled = d < low and prev is not None and d <= prev * (1.0 + self.growth)
        self.stalled = self.stalled + 1 if stalled else 0
        if d > high and (prev is None or d >= prev):
            mult = self.factor
        elif d <= high and prev is not None and d > prev and 2 * d - prev > high:
            mult = self.factor  # the brake: the same growth once more would overshoot
        elif self.stalled >= self.patience:
            mult = 1.0 / self.factor
            self.stalled = 0
        else:
            return 1.0
        for i in self.groups:
            reg = self.optimizer.param_groups[i]["reg"]
            lam = min(self.max_lam, max(self.min_lam, reg.lam * mult))
            if lam != reg.lam:
                self.optimizer.set_reg(i, reg.with_lam(lam))
        return mult

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer (whose ``state_dict`` holds the ``lam`` values)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
