"""Sparsity regularizers: value, proximal map and subgradient, as pure tensor math.

Every regularizer ``J`` here is a positively homogeneous convex function scaled by a
strength ``lam >= 0``; the optimizers in :mod:`archdiscover.optim` use three of its maps:

* ``J(x)``                   -- ``reg(x)``, the value;
* ``prox_{tau J}(x)``        -- ``reg.prox(x, tau)``, ``argmin_y 1/2 ||y - x||^2 + tau J(y)``;
* ``p in dJ(x)``             -- ``reg.subgradient(x)``, the minimal-norm subgradient
  (zero where ``x`` is zero).

Regularizers are plain data: :meth:`Regularizer.to_dict` / :func:`regularizer_from_dict`
round-trip them, so optimizer ``state_dict`` s never pickle objects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = [
    "L1",
    "GroupL12",
    "Null",
    "Regularizer",
    "as_regularizer",
    "regularizer_from_dict",
]


class Regularizer:
    """Base class. Subclasses set ``kind`` and implement the three maps.

    Args:
        lam: the strength ``lambda >= 0``.
    """

    kind: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Regularizer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            Regularizer._registry[cls.kind] = cls

    def __init__(self, lam: float = 0.0) -> None:
        if isinstance(lam, bool) or not isinstance(lam, (int, float)):
            raise ValueError(f"{type(self).__name__}: lam must be a real number, got {lam!r}")
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"{type(self).__name__}: lam must be finite and >= 0, got {lam}")
        self.lam = float(lam)

    # -- the maps ---------------------------------------------------------------------
    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def prox(self, x: Tensor, tau: float) -> Tensor:
        raise NotImplementedError

    def subgradient(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    # -- structure --------------------------------------------------------------------
    @property
    def is_null(self) -> bool:
        """True when the regularizer is identically zero (prox is the identity)."""
        return self.lam == 0.0

    def group_mask(
        self, shape: torch.Size, density: float, generator: torch.Generator | None = None
    ) -> Tensor:
        """A boolean mask of ``shape`` keeping a random ``density`` fraction of the groups.

        The number of kept groups is ``max(1, round(density * n_groups))``; used by
        :func:`archdiscover.init.sparse_init_`.
        """
        return _random_mask(shape, (), density, generator)

    def with_lam(self, lam: float) -> Regularizer:
        """A copy of this regularizer with strength ``lam``."""
        d = self.to_dict()
        d["lam"] = float(lam)
        return regularizer_from_dict(d)

    def same_structure(self, other: Regularizer) -> bool:
        """True when ``other`` differs from ``self`` at most in ``lam``."""
        a, b = self.to_dict(), other.to_dict()
        a.pop("lam"), b.pop("lam")
        return a == b

    # -- plain data -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "lam": self.lam}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Regularizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({args})"


class Null(Regularizer):
    """``J = 0``: the prox is the identity, the subgradient is zero. For biases and norms."""

    kind = "null"

    def __init__(self) -> None:
        super().__init__(0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "lam": 0.0}

    def with_lam(self, lam: float) -> Regularizer:
        return self

    def __call__(self, x: Tensor) -> Tensor:
        return x.new_zeros(())

    def prox(self, x: Tensor, tau: float) -> Tensor:
        return x.clone()

    def subgradient(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def group_mask(
        self, shape: torch.Size, density: float, generator: torch.Generator | None = None
    ) -> Tensor:
        return torch.ones(shape, dtype=torch.bool)


class L1(Regularizer):
    """``J(x) = lam * ||x||_1``.

    ``prox_{tau J}(x) = sign(x) * max(|x| - tau * lam, 0)`` (soft shrinkage: exact zeros);
    ``dJ(x) = lam * sign(x)``.

    Example:
        >>> L1(0.5).prox(torch.tensor([2.0, -0.3, 0.0]), tau=1.0)
        tensor([1.5000, -0.0000, 0.0000])
    """

    kind = "l1"

    def __call__(self, x: Tensor) -> Tensor:
        return self.lam * x.abs().sum()

    def prox(self, x: Tensor, tau: float) -> Tensor:
        return soft_shrink(x, tau * self.lam)

    def subgradient(self, x: Tensor) -> Tensor:
        return self.lam * torch.sign(x)


class GroupL12(Regularizer):
    """Group sparsity ``J(x) = lam * sum_g sqrt(|g|) * ||x_g||_2`` (the paper's l_{1,2}).

    A group is one index along the dims named by ``axis``; the norm runs over all the
    other dims, and ``|g|`` is the number of entries in a group:

    * ``axis=0`` (default): the rows of a ``Linear`` weight ``(out, in)`` -- whole neurons --
      and the output channels of a ``Conv`` weight ``(out, in, kh, kw)`` -- whole channels;
    * ``axis=1``: the output channels of a ``ConvTranspose`` weight ``(in, out, kh, kw)``;
    * ``axis=(0, 1)`` (or :meth:`kernels`): each ``kh x kw`` kernel of a convolution.

    ``prox_{tau J}(x)_g = x_g * max(0, 1 - tau * lam * sqrt(|g|) / ||x_g||)`` zeros whole groups
    exactly; ``dJ(x)_g = lam * sqrt(|g|) * x_g / ||x_g||`` (zero on a zero group).

    Example:
        >>> w = torch.tensor([[3.0, 4.0], [0.1, 0.1]])
        >>> GroupL12(1.0).prox(w, tau=1.0)   # row norms 5 and 0.14, threshold sqrt(2)
        tensor([[2.1515, 2.8686],
                [0.0000, 0.0000]])
    """

    kind = "group_l12"

    def __init__(self, lam: float = 0.0, axis: int | Sequence[int] = 0) -> None:
        super().__init__(lam)
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        if not axes or any(isinstance(a, bool) or not isinstance(a, int) or a < 0 for a in axes):
            raise ValueError(
                f"GroupL12: axis must be a non-negative int or a tuple of them, got {axis!r}"
            )
        if len(set(axes)) != len(axes):
            raise ValueError(f"GroupL12: axis has repeated dims: {axis!r}")
        self.axis: tuple[int, ...] = tuple(sorted(axes))

    @classmethod
    def kernels(cls, lam: float) -> GroupL12:
        """Kernel-wise groups of a convolution weight: each ``k x k`` kernel is a group."""
        return cls(lam, axis=(0, 1))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "lam": self.lam, "axis": list(self.axis)}

    def norm_dims(self, x: Tensor) -> tuple[int, ...]:
        """The dims a group norm runs over (all but ``axis``)."""
        if x.dim() <= self.axis[-1]:
            raise ValueError(
                f"GroupL12(axis={self.axis}) needs a tensor with more than {self.axis[-1]} "
                f"dims, got shape {tuple(x.shape)}"
            )
        return tuple(d for d in range(x.dim()) if d not in self.axis)

    def group_size(self, x: Tensor) -> int:
        return math.prod(x.shape[d] for d in self.norm_dims(x))

    def group_norms(self, x: Tensor) -> Tensor:
        """``||x_g||_2`` for every group, shaped to broadcast against ``x``."""
        dims = self.norm_dims(x)
        if not dims:
            return x.abs()
        return torch.linalg.vector_norm(x, dim=dims, keepdim=True)

    def __call__(self, x: Tensor) -> Tensor:
        return self.lam * math.sqrt(self.group_size(x)) * self.group_norms(x).sum()

    def prox(self, x: Tensor, tau: float) -> Tensor:
        return group_shrink(x, tau * self.lam * math.sqrt(self.group_size(x)), self.norm_dims(x))

    def subgradient(self, x: Tensor) -> Tensor:
        norms = self.group_norms(x)
        scale = self.lam * math.sqrt(self.group_size(x))
        return torch.where(
            norms > 0, x * (scale / norms.clamp_min(torch.finfo(x.dtype).tiny)), torch.zeros_like(x)
        )

    def group_mask(
        self, shape: torch.Size, density: float, generator: torch.Generator | None = None
    ) -> Tensor:
        if len(shape) <= self.axis[-1]:
            raise ValueError(
                f"GroupL12(axis={self.axis}) cannot group a tensor of shape {tuple(shape)}"
            )
        return _random_mask(shape, self.axis, density, generator)


# -- kernels shared with the optimizers (pure functions, torch.compile friendly) ------------
def soft_shrink(x: Tensor, thresh: float | Tensor, out: Tensor | None = None) -> Tensor:
    """``sign(x) * max(|x| - thresh, 0)``: the prox of ``thresh * ||.||_1``.

    Computed as ``x - clamp(x, -thresh, thresh)``: the same value bit for bit (exact zeros
    inside the threshold, ``x -+ thresh`` outside), in two passes instead of four. With
    ``out`` (not aliasing ``x``) the result is written there without a temporary.
    """
    if out is None:
        return x - torch.clamp(x, -thresh, thresh)
    torch.clamp(x, -thresh, thresh, out=out)
    return torch.sub(x, out, out=out)


def group_shrink(
    x: Tensor, thresh: float | Tensor, dims: tuple[int, ...], out: Tensor | None = None
) -> Tensor:
    """``x_g * max(0, 1 - thresh / ||x_g||)`` with the norm over ``dims`` (prox of a group norm)."""
    if not dims:
        return soft_shrink(x, thresh, out=out)
    norms = torch.linalg.vector_norm(x, dim=dims, keepdim=True)
    scale = torch.clamp_min(1.0 - thresh / norms.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
    return x * scale if out is None else torch.mul(x, scale, out=out)


def _random_mask(
    shape: torch.Size, axis: tuple[int, ...], density: float, generator: torch.Generator | None
) -> Tensor:
    """Keep ``max(1, round(density * n))`` random groups; groups index the dims ``axis``."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    group_shape = [shape[d] if (d in axis or not axis) else 1 for d in range(len(shape))]
    n = math.prod(group_shape)
    keep = min(n, max(1, round(density * n)))
    flat = torch.zeros(n, dtype=torch.bool)
    flat[torch.randperm(n, generator=generator)[:keep]] = True
    return flat.view(group_shape).expand(tuple(shape)).clone()


# -- plain data -------------------------------------------------------------------------------
def regularizer_from_dict(d: Mapping[str, Any]) -> Regularizer:
    """Rebuild a regularizer from :meth:`Regularizer.to_dict`; unknown types raise ValueError."""
    if not isinstance(d, Mapping) or "type" not in d:
        raise ValueError(f"a regularizer spec must be a mapping with a 'type' key, got {d!r}")
    kind = d["type"]
    cls = Regularizer._registry.get(kind)
    if cls is None:
        known = ", ".join(sorted(Regularizer._registry))
        raise ValueError(f"unknown regularizer type {kind!r} (known: {known})")
    kwargs = {k: v for k, v in d.items() if k != "type"}
    if cls is Null:
        if kwargs.get("lam", 0.0) != 0.0:
            raise ValueError(f"a null regularizer has lam 0, got {kwargs['lam']!r}")
        return Null()
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for regularizer {kind!r}: {kwargs!r} ({e})") from None


def as_regularizer(reg: Regularizer | Mapping[str, Any] | None, where: str = "reg") -> Regularizer:
    """Accept a :class:`Regularizer`, its dict form, or ``None`` (meaning :class:`Null`)."""
    if reg is None:
        return Null()
    if isinstance(reg, Regularizer):
        return reg
    if isinstance(reg, Mapping):
        return regularizer_from_dict(reg)
    raise ValueError(
        f"{where}: unknown regularizer {reg!r}; expected an archdiscover "
        f"Regularizer (L1, GroupL12, Null), its to_dict() form, or None"
    )
