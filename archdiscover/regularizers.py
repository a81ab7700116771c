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
    "CoupledGroupL12",
    "GroupL12",
    "Null",
    "Regularizer",
    "as_regularizer",
    "kept_groups",
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
        self,
        shape: torch.Size,
        density: float,
        generator: torch.Generator | None = None,
        min_groups: int = 1,
    ) -> Tensor:
        """A boolean mask of ``shape`` keeping a random ``density`` fraction of the groups.

        The number of kept groups is ``max(min_groups, round(density * n_groups))`` (at most
        ``n_groups``); used by :func:`archdiscover.init.sparse_init_`.
        """
        return _random_mask(shape, (), density, generator, min_groups)

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
        self,
        shape: torch.Size,
        density: float,
        generator: torch.Generator | None = None,
        min_groups: int = 1,
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
        self,
        shape: torch.Size,
        density: float,
        generator: torch.Generator | None = None,
        min_groups: int = 1,
    ) -> Tensor:
        if len(shape) <= self.axis[-1]:
            raise ValueError(
                f"GroupL12(axis={self.axis}) cannot group a tensor of shape {tuple(shape)}"
            )
        return _random_mask(shape, self.axis, density, generator, min_groups)


class CoupledGroupL12(Regularizer):
    """Group sparsity over *coupled* groups that span several tensors of one param group.

    ``J(x_1, ..., x_k) = lam * sum_g sqrt(|g|) * ||(x_1)_g, ..., (x_k)_g||_2``: group ``g``
    collects, in every tensor ``x_i`` of the param group, the slices along ``dim_i`` whose
    group id is ``g`` (e.g. a conv's output filter, its bias, the BatchNorm scale and shift
    of that channel, and the same stream channel's filters in other residual blocks). Its
    prox scales each whole group by ``max(0, 1 - tau * lam * sqrt(|g|) / ||x_g||)``, so one
    prox zeros all of a channel's slices at once and the channel outputs exactly zero.

    ``index[i] = (dim_i, ids_i)`` belongs to the ``i``-th tensor of the param group (same
    order), ``ids_i[j]`` the group of slice ``j`` along ``dim_i`` or ``-1`` for none (left
    unregularized). Build it with :func:`archdiscover.graph.coupled_param_groups` rather
    than by hand. It acts on a whole param group: use :meth:`value_all`,
    :meth:`prox_all` and :meth:`subgradient_all` (the optimizers do).
    """

    kind = "coupled_group_l12"
    joint = True

    def __init__(self, lam: float = 0.0, index: Sequence[Sequence[Any]] = ()) -> None:
        super().__init__(lam)
        norm: list[tuple[int, tuple[int, ...]]] = []
        for i, item in enumerate(index):
            try:
                dim, ids = item
                dim, ids = int(dim), tuple(int(j) for j in ids)
            except (TypeError, ValueError):
                raise ValueError(
                    f"CoupledGroupL12: index[{i}] must be (dim, [group ids]), got {item!r}"
                ) from None
            if dim < 0 or any(j < -1 for j in ids):
                raise ValueError(f"CoupledGroupL12: index[{i}] has a negative dim or group id")
            norm.append((dim, ids))
        self.index: tuple[tuple[int, tuple[int, ...]], ...] = tuple(norm)
        self.n_groups = 1 + max((max(ids, default=-1) for _, ids in norm), default=-1)
        self._cache: dict[Any, list[Tensor]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "lam": self.lam,
            "index": [[d, list(ids)] for d, ids in self.index],
        }

    def __hash__(self) -> int:
        return hash((self.kind, self.lam, self.index))

    def __repr__(self) -> str:
        n, k = self.n_groups, len(self.index)
        return f"CoupledGroupL12(lam={self.lam!r}, {n} groups over {k} tensors)"

    # -- single tensors: not meaningful --------------------------------------------------
    def _single(self, *_: Any) -> Tensor:
        raise TypeError(
            "CoupledGroupL12 couples all tensors of a param group: call value_all / prox_all "
            "/ subgradient_all with the group's tensors in order"
        )

    __call__ = prox = subgradient = _single  # type: ignore[assignment]

    def group_mask(
        self,
        shape: torch.Size,
        density: float,
        generator: torch.Generator | None = None,
        min_groups: int = 1,
    ) -> Tensor:
        raise TypeError("CoupledGroupL12 masks are drawn per param group by sparse_init_")

    # -- the joint maps -----------------------------------------------------------------
    def _check(self, xs: Sequence[Tensor]) -> None:
        if len(xs) != len(self.index):
            raise ValueError(
                f"CoupledGroupL12 was built for {len(self.index)} tensors, got {len(xs)}"
            )
        for i, (x, (dim, ids)) in enumerate(zip(xs, self.index, strict=True)):
            if x.dim() <= dim or x.shape[dim] != len(ids):
                raise ValueError(
                    f"CoupledGroupL12: tensor {i} of shape {tuple(x.shape)} does not have "
                    f"{len(ids)} slices along dim {dim}"
                )

    def _ids(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """Per tensor, the group id of each slice with ``n_groups`` standing for "none"."""
        key = (xs[0].device, len(xs))
        if key not in self._cache:
            self._cache[key] = [
                torch.tensor([j if j >= 0 else self.n_groups for j in ids], device=xs[0].device)
                for _, ids in self.index
            ]
        return self._cache[key]

    def _sizes(self, xs: Sequence[Tensor]) -> Tensor:
        sizes = torch.zeros(self.n_groups + 1, dtype=torch.float64, device=xs[0].device)
        for x, (dim, _), ids in zip(xs, self.index, self._ids(xs), strict=True):
            per = x.numel() // max(1, x.shape[dim])
            sizes.index_add_(
                0, ids, torch.full(ids.shape, float(per), device=x.device, dtype=torch.float64)
            )
        return sizes[: self.n_groups]

    def group_norms_all(self, xs: Sequence[Tensor]) -> Tensor:
        """``||x_g||_2`` for every group ``g`` (a vector of length ``n_groups``)."""
        self._check(xs)
        sq = torch.zeros(self.n_groups + 1, dtype=xs[0].dtype, device=xs[0].device)
        for x, (dim, _), ids in zip(xs, self.index, self._ids(xs), strict=True):
            red = (
                x.pow(2).sum(dim=[d for d in range(x.dim()) if d != dim])
                if x.dim() > 1
                else (x.pow(2))
            )
            sq.index_add_(0, ids, red.to(sq.dtype))
        return sq[: self.n_groups].sqrt()

    def value_all(self, xs: Sequence[Tensor]) -> Tensor:
        """``J`` of the whole param group."""
        norms = self.group_norms_all(xs)
        return self.lam * (self._sizes(xs).to(norms.dtype).sqrt() * norms).sum()

    def _scales(self, xs: Sequence[Tensor], factor: Tensor) -> list[Tensor]:
        """``factor[g]`` broadcast along each tensor's dim (1 for unregularized slices)."""
        ext = torch.cat([factor, factor.new_ones(1)])
        out = []
        for x, (dim, _), ids in zip(xs, self.index, self._ids(xs), strict=True):
            shape = [1] * x.dim()
            shape[dim] = x.shape[dim]
            out.append(ext[ids].view(shape).to(x.dtype))
        return out

    def prox_all(
        self, xs: Sequence[Tensor], tau: float, out: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        """The joint prox: each group scaled by ``max(0, 1 - tau lam sqrt(|g|) / ||x_g||)``."""
        norms = self.group_norms_all(xs)
        thresh = tau * self.lam * self._sizes(xs).to(norms.dtype).sqrt()
        factor = torch.clamp_min(1.0 - thresh / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
        scales = self._scales(xs, factor)
        if out is None:
            return [x * s for x, s in zip(xs, scales, strict=True)]
        for x, s, o in zip(xs, scales, out, strict=True):
            torch.mul(x, s, out=o)
        return list(out)

    def subgradient_all(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """``lam sqrt(|g|) x_g / ||x_g||`` on non-zero groups, zero elsewhere."""
        norms = self.group_norms_all(xs)
        w = self.lam * self._sizes(xs).to(norms.dtype).sqrt()
        factor = torch.where(norms > 0, w / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
        out = []
        zero_none = torch.cat([factor, factor.new_zeros(1)])  # unregularized slices: 0
        for x, (dim, _), ids in zip(xs, self.index, self._ids(xs), strict=True):
            shape = [1] * x.dim()
            shape[dim] = x.shape[dim]
            out.append(x * zero_none[ids].view(shape).to(x.dtype))
        return out


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


def kept_groups(n: int, density: float, min_groups: int = 1) -> int:
    """How many of ``n`` groups a sparse start keeps: ``min(n, max(min_groups, round(density
    * n)))`` (the one rule of :func:`archdiscover.init.sparse_init_` and ``group_mask``)."""
    return min(n, max(min_groups, round(density * n)))


def _random_mask(
    shape: torch.Size,
    axis: tuple[int, ...],
    density: float,
    generator: torch.Generator | None,
    min_groups: int = 1,
) -> Tensor:
    """Keep ``min(n, max(min_groups, round(density * n)))`` random groups of the ``n``;
    groups index the dims ``axis``."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    group_shape = [shape[d] if (d in axis or not axis) else 1 for d in range(len(shape))]
    n = math.prod(group_shape)
    keep = kept_groups(n, density, min_groups)
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
