"""Sparse initialization: start the inverse scale space from very few active parameters.

The paper (Sec. 4.1) masks a Kaiming-normal initialization with a random mask of density
``r`` and multiplies the variance by ``1 / r``, so the forward signal variance of a layer
matches that of the dense initialization: a unit sums ``r * fan_in`` non-zero terms of
variance ``gain^2 / (r * fan_in)`` instead of ``fan_in`` terms of ``gain^2 / fan_in``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .graph import ops
from .growth import enable_growth
from .regularizers import L1, Regularizer, kept_groups

__all__ = ["BIAS_INITS", "sparse_init_"]

BIAS_INITS = ("zero", "keep", "positive")


def sparse_init_(
    model: nn.Module,
    density: float,
    reg: Regularizer | Mapping[str, Regularizer] | Optimizer | None = None,
    *,
    nonlinearity: str = "relu",
    bias: str = "zero",
    generator: torch.Generator | None = None,
    grow: bool = True,
    min_units: int = 1,
) -> nn.Module:
    r"""Re-initialize the weights of ``model``'s Linear/Conv/ConvTranspose layers sparsely.

    Each weight ``W`` (fan-in ``n``) becomes ``M * N(0, gain^2 / (n * k))``, where the mask
    ``M`` keeps ``max(min_units, round(density * n_groups))`` random groups (at most all of
    them) of the regularizer that acts on ``W``: single entries for
    :class:`~archdiscover.regularizers.L1`, rows / channels / kernels for
    :class:`~archdiscover.regularizers.GroupL12`, and ``k`` is the kept fraction of a unit's
    inputs: the kept fraction of ``W`` for entries and kernels (a kept unit sums ``k * n``
    terms, as in the paper), 1 for masks of whole rows or channels (a kept unit sees all its
    inputs: scaling it by ``1 / density`` would blow its output up by ``density ** -0.5``,
    which made LinBreg diverge in narrow MLPs). A weight whose regularizer is
    :class:`~archdiscover.regularizers.Null` gets the dense Kaiming init (density 1); a
    weight not covered at all (a mapping without its name, an optimizer without it) is left
    untouched.

    Coupled channel groups (a :class:`~archdiscover.regularizers.CoupledGroupL12` param
    group, from :func:`archdiscover.coupled_param_groups`) are drawn *per layer*: the groups
    that live in the same tensors (one conv's channels, one residual stream's channels
    across its blocks) form a layer, and each layer keeps
    ``max(min_units, round(density * n))`` of its ``n`` groups, so every layer starts with
    at least ``min_units`` channels (one by default) and with the density asked. In the other
    groups every regularized slice (BatchNorm scale and shift, or rows and biases) is set
    exactly to zero; unregularized filters get the dense Kaiming init.

    Args:
        model: the network; modified in place and returned.
        density: fraction of groups kept, in ``(0, 1]`` (the paper uses 0.01).
        reg: where the groups come from: ``None`` (entries of every weight, as ``L1``), one
            regularizer for every weight, a mapping from *module* names (as in
            ``model.named_modules()``) to regularizers, or the optimizer that will train
            ``model`` (each weight takes its param group's ``"reg"``).
        nonlinearity: passed to :func:`torch.nn.init.calculate_gain`.
        bias: the biases of the re-initialized layers: ``"zero"``; ``"keep"`` (as they are,
            e.g. torch's default ``U(-1/sqrt(n), 1/sqrt(n))``); or ``"positive"``,
            ``U(0, 1/sqrt(n))`` as in the paper's code. With zero weights *and* zero biases
            a unit's pre-activation is exactly 0; with ``grow=True`` it still receives its
            gradient (see ``grow``), so ``"zero"`` is the right start for discovery. (A
            positive bias is the paper's other way in: the unit outputs the constant
            ``relu(b)``, which only carries the mean of the error downstream.)
        generator: for reproducible masks and values.
        grow: install :func:`archdiscover.growth.enable_growth` on ``model``: in training
            mode, ReLU-type activations take the subgradient 1 at exactly 0 (forward
            values unchanged), so the units this start switches off (zero row and bias, or
            zero BatchNorm scale and shift: a pre-activation of exactly 0) still see their
            gradient and the Bregman iteration can add them. ``False`` leaves PyTorch's
            ``relu'(0) = 0``, under which a unit that starts exactly zero never enters.
        min_units: the fewest groups any layer (any weight) keeps, ``>= 1`` (capped at the
            layer's size). At a small ``density`` a narrow layer keeps 1 unit; on the
            ResNet-20 x1 of docs/RESULTS.md section 4, 2 instead of 1 changed nothing on
            average over three seeds.

    Example:
        >>> model = nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 10))
        >>> opt = LinBreg([{"params": [model[0].weight, model[2].weight], "reg": L1(0.1)},
        ...                {"params": [model[0].bias, model[2].bias]}], lr=0.1)
        >>> sparse_init_(model, density=0.01, reg=opt)  # 1% of the weights non-zero
    """
    if not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
        raise ValueError(f"sparse_init_: density must be in (0, 1], got {density!r}")
    if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 1:
        raise ValueError(f"sparse_init_: min_units must be an integer >= 1, got {min_units!r}")
    if bias not in BIAS_INITS:
        raise ValueError(f"sparse_init_: bias must be one of {BIAS_INITS}, got {bias!r}")
    if isinstance(reg, Mapping):
        modules = dict(model.named_modules())
        unknown = sorted(set(reg) - set(modules))
        if unknown:
            raise ValueError(f"sparse_init_: no module named {unknown[0]!r} in the model")
    by_param: dict[Tensor, Regularizer] = {}
    joint_masks: dict[Tensor, Tensor] = {}
    if isinstance(reg, Optimizer):
        for group in reg.param_groups:
            group_reg = group.get("reg")
            if getattr(group_reg, "joint", False):
                joint_masks.update(
                    _joint_masks(group["params"], group_reg, density, generator, min_units)
                )
                continue
            for p in group["params"]:
                if isinstance(group_reg, Regularizer):
                    by_param[p] = group_reg
    gain = nn.init.calculate_gain(nonlinearity)
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, ops.WEIGHTED):
                continue
            if reg is None:
                r: Regularizer | None = L1(0.0)
            elif isinstance(reg, Regularizer):
                r = reg
            elif isinstance(reg, Optimizer):
                r = by_param.get(module.weight)
            elif isinstance(reg, Mapping):
                r = reg.get(name)
            else:
                raise ValueError(
                    f"sparse_init_: reg must be None, a Regularizer, a mapping of "
                    f"module names to regularizers or an Optimizer, got {reg!r}"
                )
            w = module.weight
            if w in joint_masks:
                mask = joint_masks[w].expand(w.shape)
            elif r is None:
                continue
            else:
                # a regularizer of the user's own may predate min_groups: pass it only if set
                extra = () if min_units == 1 else (min_units,)
                mask = r.group_mask(w.shape, density, generator, *extra)
            kept = _input_keep(module, mask)
            std = gain / math.sqrt(ops.fan_in(module) * kept)
            values = torch.randn(w.shape, generator=generator, dtype=w.dtype) * std
            w.copy_((values * mask).to(w.device))
            if module.bias is not None and bias == "zero":
                module.bias.zero_()
            elif module.bias is not None and bias == "positive":
                b = torch.rand(module.bias.shape, generator=generator, dtype=module.bias.dtype)
                module.bias.copy_((b / math.sqrt(ops.fan_in(module))).to(module.bias.device))
        # the other tensors of coupled groups (BatchNorm scale and shift, biases): dropped
        # channels are zeroed so that the whole group starts exactly at zero
        for p, mask in joint_masks.items():
            p.mul_(mask.to(p.dtype))
    if grow:
        enable_growth(model)
    return model


def _input_keep(module: nn.Module, mask: Tensor) -> float:
    """The fraction of a kept unit's inputs that are non-zero (what the variance is scaled
    by): the kept fraction of its own slice for entry and kernel masks; 1 when the mask keeps
    or drops whole output units (rows, channels), whose kept units see all their inputs."""
    axis = ops.unit_axis(module)
    m = mask.movedim(axis if axis is not None else 0, 0).flatten(1)
    per_unit = m.float().mean(1)
    whole = bool(((per_unit == 0) | (per_unit == 1)).all())
    if whole:
        return 1.0
    kept = float(mask.float().mean())
    return max(kept, 1.0 / mask.numel())


def _joint_masks(
    params: list[Tensor],
    reg: Regularizer,
    density: float,
    generator: torch.Generator | None,
    min_units: int = 1,
) -> dict[Tensor, Tensor]:
    """Per layer, keep ``max(min_units, round(density * n))`` of its ``n`` coupled groups
    (at most ``n``) at random:
    a mask per tensor, shaped to broadcast along the tensor's group dim (slices in no group
    are kept). A *layer* is the set of groups that live in the same tensors (one conv's
    channels; one residual stream's channels across its blocks)."""
    n = reg.n_groups  # type: ignore[attr-defined]
    where: list[list[int]] = [[] for _ in range(n)]
    for i, (_dim, ids) in enumerate(reg.index):  # type: ignore[attr-defined]
        for j in set(ids):
            if j >= 0:
                where[j].append(i)
    layers: dict[tuple[int, ...], list[int]] = {}
    for j in range(n):
        layers.setdefault(tuple(where[j]), []).append(j)
    keep = torch.zeros(n + 1, dtype=torch.bool)
    for members in layers.values():
        k = kept_groups(len(members), density, min_units)
        pick = torch.randperm(len(members), generator=generator)[:k]
        keep[torch.tensor(members)[pick]] = True
    keep[n] = True
    out: dict[Tensor, Tensor] = {}
    for p, (dim, ids) in zip(params, reg.index, strict=True):  # type: ignore[attr-defined]
        idx = torch.tensor([j if j >= 0 else n for j in ids])
        shape = [1] * p.dim()
        shape[dim] = p.shape[dim]
        out[p] = keep[idx].view(shape).to(p.device)
    return out
