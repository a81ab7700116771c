"""Coupled channel groups: every parameter slice that goes when one channel goes.

A group is plain data (:class:`ChannelGroup` of :class:`Slice` s), derived from the slot
components of a traced :class:`~archdiscover.graph.trace.ChannelGraph`: a conv's filter with
its BatchNorm's scale, shift and running statistics and the next layers' input slices; all
producers of a channel across residual additions; exact offsets across ``torch.cat``; a
depthwise conv's filter with its input channel; the ``H*W`` columns a Linear after Flatten
reads per channel. :func:`inspect` says what can shrink and, where nothing can, why.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .._inputs import Inputs
from .trace import ChannelGraph, TraceError, trace

__all__ = [
    "ChannelGroup",
    "InspectReport",
    "Slice",
    "channel_groups",
    "groups_of",
    "inspect",
]


@dataclass(frozen=True)
class Slice:
    """One parameter or buffer slice of a coupled group.

    Attributes:
        module: qualified name of the module (as in ``model.named_modules()``).
        param: ``"weight"``, ``"bias"``, ``"running_mean"`` or ``"running_var"``.
        dim: the dimension indexed by ``index``.
        index: positions along ``dim`` (several for a Linear after Flatten: ``H*W`` columns).
        role: ``"out"`` (a layer producing the channel), ``"norm"`` (a per-channel layer on
            it: BatchNorm, depthwise conv, PReLU), or ``"in"`` (a layer consuming it).
    """

    module: str
    param: str
    dim: int
    index: tuple[int, ...]
    role: str

    def tensor(self, model: nn.Module) -> Tensor:
        """The sliced view ``getattr(module, param).index_select(dim, index)`` (a copy)."""
        t = _get_tensor(model, self.module, self.param)
        return t.detach().index_select(self.dim, torch.as_tensor(self.index, device=t.device))


@dataclass(frozen=True)
class ChannelGroup:
    """A coupled channel group: all slices that go together when one channel is removed.

    ``id`` is stable for a given model structure (groups are numbered in graph order).
    """

    id: int
    slices: tuple[Slice, ...]

    @property
    def layers(self) -> tuple[str, ...]:
        """Names of all modules the group touches, in order of first appearance."""
        return tuple(dict.fromkeys(s.module for s in self.slices))

    @property
    def producers(self) -> tuple[str, ...]:
        """Modules whose output rows make this channel."""
        return tuple(dict.fromkeys(s.module for s in self.slices if s.role == "out"))

    @property
    def consumers(self) -> tuple[str, ...]:
        """Modules that read this channel (their input-side slices)."""
        return tuple(dict.fromkeys(s.module for s in self.slices if s.role == "in"))

    def params(self, roles: Iterable[str] = ("out", "norm")) -> list[Slice]:
        """The slices with the given roles, normalization statistics excluded (the tensors
        that are parameters of the model are the trainable ones)."""
        roles = tuple(roles)
        return [s for s in self.slices if s.role in roles and s.param not in _STATISTICS]

    def norm(self, model: nn.Module, roles: Iterable[str] = ("out", "norm")) -> float:
        """Euclidean norm of the group's parameter slices with the given roles."""
        sq = sum(
            float(s.tensor(model).double().pow(2).sum())
            for s in self.params(roles)
            if _is_param(model, s)
        )
        return math.sqrt(sq)

    def is_zero(self, model: nn.Module, roles: Iterable[str] = ("out", "norm")) -> bool:
        """True when every parameter slice with the given roles is exactly zero."""
        return all(
            not bool(s.tensor(model).any()) for s in self.params(roles) if _is_param(model, s)
        )

    @torch.no_grad()
    def zero_(self, model: nn.Module, roles: Iterable[str] = ("out", "norm")) -> None:
        """Set the group's parameter slices with the given roles to zero, in place.

        With the default roles the channel's output becomes exactly zero: the producers'
        rows and biases and the BatchNorm scale and shift vanish.
        """
        for s in self.params(roles):
            if not _is_param(model, s):
                continue
            t = _get_tensor(model, s.module, s.param)
            t.index_fill_(s.dim, torch.as_tensor(s.index, device=t.device), 0.0)


_STATISTICS = frozenset({"running_mean", "running_var", "num_batches_tracked"})


def _is_param(model: nn.Module, s: Slice) -> bool:
    return isinstance(_get_tensor(model, s.module, s.param), nn.Parameter)


def _get_tensor(model: nn.Module, module: str, param: str) -> Tensor:
    m = model.get_submodule(module)
    t = getattr(m, param, None)
    if not isinstance(t, Tensor):
        raise KeyError(f"module {module!r} has no tensor {param!r}")
    return t


def groups_of(g: ChannelGraph, include_frozen: bool = False) -> list[ChannelGroup]:
    """The coupled channel groups of a traced graph (by default only removable ones)."""
    per: dict[int, list[Slice]] = defaultdict(list)
    for m in g.members:
        labs = g.labels[m.slots]
        order = np.argsort(labs, kind="stable")
        cuts = np.flatnonzero(np.diff(labs[order])) + 1
        for chunk in np.split(order, cuts):
            lab = int(labs[chunk[0]])
            if not include_frozen and lab in g.frozen:
                continue
            per[lab].append(Slice(m.module, m.param, m.dim, tuple(int(i) for i in chunk), m.role))
    out = [ChannelGroup(lab, tuple(sl)) for lab, sl in per.items()]
    out = [grp for grp in out if any(s.role == "out" for s in grp.slices)]
    out.sort(key=lambda grp: grp.id)
    return out


def channel_groups(model: nn.Module, example_inputs: Inputs) -> list[ChannelGroup]:
    """The removable coupled channel groups of ``model``.

    Example:
        >>> groups = archdiscover.channel_groups(model, torch.randn(1, 3, 32, 32))
        >>> groups[0].slices[0]
        Slice(module='conv1', param='weight', dim=0, index=(0,), role='out')
    """
    return groups_of(trace(model, example_inputs))


@dataclass
class InspectReport:
    """What can shrink and what cannot, with the reason.

    Attributes:
        traceable: whether the model could be traced (``error`` says why not).
        tracer: which tracer ran: ``"torch.fx"`` (symbolic tracing), or ``"torch.export"``
            where fx failed (Python control flow on shapes, say).
        groups: number of removable coupled channel groups.
        layers: per producing layer, ``(removable channels, total channels)``.
        frozen: per reason, the number of channel groups it blocks.
        unsupported: ``(node, operation, reason)`` for every operation that blocks channels:
            one that mixes them (a LayerNorm over the channels) or one the tracer cannot see
            through; channels touching them are never removed.
    """

    traceable: bool
    error: str = ""
    tracer: str = ""
    groups: int = 0
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    frozen: dict[str, int] = field(default_factory=dict)
    unsupported: list[tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.traceable:
            return f"not traceable: {self.error}"
        lines = [f"{self.groups} removable coupled channel groups (traced with {self.tracer})", ""]
        w = max([len(n) for n in self.layers] + [5])
        lines.append(f"{'layer':<{w}}  removable / channels")
        for n, (a, b) in self.layers.items():
            lines.append(f"{n:<{w}}  {a:>9} / {b}")
        if self.frozen:
            lines += ["", "channels that cannot be removed:"]
            lines += [f"  {k}: {v} group(s)" for k, v in self.frozen.items()]
        if self.unsupported:
            lines += ["", "operations that block channels (mix them, or unknown to the tracer):"]
            lines += [f"  {node}: {op}: {why}" for node, op, why in self.unsupported]
        return "\n".join(lines)


def inspect(model: nn.Module, example_inputs: Inputs) -> InspectReport:
    """Report what can shrink and what cannot (and why), without changing anything."""
    try:
        g = trace(model, example_inputs)
    except TraceError as e:
        return InspectReport(traceable=False, error=str(e))
    report = InspectReport(traceable=True, tracer=g.tracer, unsupported=list(g.unsupported))
    report.groups = len(groups_of(g))
    for mod in g.producer_modules():
        labs = g.out_labels(mod)
        removable = sum(int(lab) not in g.frozen for lab in labs)
        report.layers[mod] = (removable, len(labs))
    counts: dict[str, int] = defaultdict(int)
    for reason, _unsupported in g.frozen.values():
        counts[reason] += 1
    report.frozen = dict(counts)
    return report
