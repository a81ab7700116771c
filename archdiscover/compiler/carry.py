r"""Constant channels that cannot be folded into a bias: merged into one *carrier* channel.

A channel that is the same constant ``c_k`` at every sample and position is not a bias once
it enters a zero-padded (or a transposed) convolution: near the borders the kernel sees
padding zeros, so its contribution ``c_k * conv(1, W[:, k])`` (the convolution of an
all-ones image with that kernel) varies with the position and with the input size. It is
still *linear* in ``c_k``, so ``K`` constant channels that reach the same consumers can
travel as one: keep one of them, ``k0`` (the carrier, value ``c_{k0} != 0``), give every
consumer the input weights

.. math::
    W'[:, k_0] = \sum_k \frac{c_k}{c_{k_0}} W[:, k],

and remove the other ``K - 1``. The consumer then computes
``conv(c_{k0} 1, W'[:, k0]) = sum_k conv(c_k 1, W[:, k])`` exactly, at every position and
for every input size, with the same operation (no new module, nothing to export
differently): ``K`` constant channels cost one channel per layer instead of ``K``.

:func:`plan_carriers` finds the groups :func:`~archdiscover.compiler.passes.plan` kept
for this reason and chooses the carriers; :func:`merge_carriers` rewrites the consumers'
weights. The channels are then removed with the others.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import nn

from ..graph import ops
from ..graph.trace import ChannelGraph
from .analysis import ValueAnalysis
from .passes import Plan

__all__ = ["CARRIER_REASON", "KEPT_REASON", "merge_carriers", "plan_carriers"]

#: the reason :func:`~archdiscover.compiler.passes.plan` gives for the groups it keeps
KEPT_REASON = "constant channel entering a zero-padded convolution (not exact to fold)"
#: the reason reported for the carriers that remain
CARRIER_REASON = (
    "carrier of constant channels entering a zero-padded convolution (one per set of "
    "consumers; the others are merged into it exactly)"
)


def _consumers(g: ChannelGraph) -> list:
    """The input-side weight members of the Conv / ConvTranspose / Linear layers."""
    return [m for m in g.members if m.role == "in" and m.param == "weight"]


def plan_carriers(g: ChannelGraph, a: ValueAnalysis, p: Plan) -> dict[int, int]:
    """Choose a carrier for each set of kept constant groups with the same consumers.

    A candidate is a removable-looking group (it has a producer, is not frozen and not
    already removed) that reaches every consumer as a structural constant, through layers
    called once. Candidates are grouped by their consumers (module and input node); in each
    set the carrier is the group whose smallest ``|value|`` over its consumers is largest
    (it must be non-zero at all of them). The others are added to ``p.remove`` and
    ``p.fold`` (so rounding gives them back last) and returned as ``{label: carrier}``;
    ``p.kept`` then counts only the carriers.
    """
    nlab = int(g.labels.max()) + 1 if len(g.labels) else 0
    if not nlab:
        return {}
    has_out = np.zeros(nlab, dtype=bool)
    for mem in g.members:
        if mem.role == "out":
            has_out[g.labels[mem.slots]] = True
    ok = has_out.copy()
    ok[[lab for lab in g.frozen if lab < nlab]] = False
    ok[list(p.remove)] = False
    shared = {mod for mod, calls in g.calls.items() if len(calls) > 1}
    sig: dict[int, set[tuple[str, str]]] = defaultdict(set)
    worst = np.full(nlab, np.inf)  # smallest |value| at a consumer
    for mem in _consumers(g):
        labs = g.labels[mem.slots]
        if mem.module in shared or mem.groups > 1 or mem.rows is not None:
            ok[labs] = False  # grouped convs and attention projections keep their channels
            continue
        c = a.const_of(mem.src, len(mem.slots))
        np.logical_and.at(ok, labs, c)
        if not c.any():
            continue
        vals = np.abs(np.where(c, a.value_of(mem.src), 0.0))
        np.minimum.at(worst, labs, vals)
        for lab in np.unique(labs[ok[labs]]):
            sig[int(lab)].add((mem.module, mem.src))
    sets: dict[frozenset, list[int]] = defaultdict(list)
    for lab in np.flatnonzero(ok):
        if sig.get(int(lab)):
            sets[frozenset(sig[int(lab)])].append(int(lab))
    merges: dict[int, int] = {}
    for labs in sets.values():
        if len(labs) < 2:
            continue
        carrier = max(labs, key=lambda lab: (worst[lab], -lab))
        if not worst[carrier] > 0:
            continue
        for lab in labs:
            if lab != carrier:
                merges[lab] = carrier
    if merges:
        p.remove |= set(merges)
        p.fold |= set(merges)
        left = p.kept.pop(KEPT_REASON, 0) - len(merges)
        if left > 0:
            p.kept[CARRIER_REASON] = left
    return merges


@torch.no_grad()
def merge_carriers(g: ChannelGraph, a: ValueAnalysis, merges: dict[int, int]) -> None:
    """Add each merged group's input weights, scaled by ``c_k / c_carrier``, to its
    carrier's input weights in every consumer (``merges``: only groups still removed)."""
    if not merges:
        return
    for mem in _consumers(g):
        labs = g.labels[mem.slots]
        if not np.isin(labs, list(merges)).any():
            continue
        m = g.gm.get_submodule(mem.module)
        if not isinstance(m, (nn.Linear, *ops.CONV, *ops.CONV_TRANSPOSE)):
            continue  # pragma: no cover - the tracer makes "in" members only for these
        vals = a.value_of(mem.src)
        w = m.weight
        wt = w.detach().double().movedim(mem.dim, 0)  # (in-slots, ...)
        changed = False
        for lab, carrier in merges.items():
            src = np.flatnonzero(labs == lab)
            dst = np.flatnonzero(labs == carrier)
            if not len(src):
                continue
            # several slots per channel (a Linear after Flatten): position by position
            for i, j in zip(src.tolist(), dst.tolist(), strict=True):
                wt[j] += wt[i] * (float(vals[i]) / float(vals[j]))
            changed = True
        if changed:
            w.copy_(wt.movedim(0, mem.dim).to(w.dtype))
