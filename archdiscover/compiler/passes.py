"""The compiler's passes over a traced graph: drop zero branches, plan, round, fold.

* :func:`drop_zero_branches` -- a residual ``a + b`` whose branch ``b`` is constant zero
  everywhere becomes ``a``; the branch's layers disappear (depth).
* :func:`plan` -- per coupled channel group: remove it when (a) it reaches every consumer as
  exact zeros, (b) every consumer's input weights for it are zero (dead downstream), or
  (c) it reaches every consumer as a constant that folds exactly: into a Linear's bias, or a
  Conv's bias (or the following BatchNorm's running mean) when the Conv has no zero
  padding. A constant entering a zero-padded k x k convolution is not constant at the
  borders, so that channel stays.
* :func:`round_widths` -- keep just enough removable channels to make every width a
  multiple of ``r`` (they are zero or unused: nothing changes numerically).
* :func:`fold_constants` -- add the folded constants' contributions to the consumers' biases.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
from torch import Tensor, nn

from ..graph import ops
from ..graph.trace import ChannelGraph
from .analysis import ValueAnalysis

__all__ = ["Plan", "drop_zero_branches", "fold_constants", "plan", "round_widths"]


# ---------------------------------------------------------------------------------------------
# Depth: drop residual branches that are exactly zero
# ---------------------------------------------------------------------------------------------
def drop_zero_branches(g: ChannelGraph, a: ValueAnalysis) -> list[str]:
    """Rewrite ``keep + zero`` to ``keep`` in ``g.gm``; returns the dropped branches' names."""
    gm = g.gm
    dropped: list[str] = []
    for node in list(gm.graph.nodes):
        is_add = (node.op == "call_function" and node.target in ops.ADD_TARGETS) or (
            node.op == "call_method" and node.target in ("add", "add_")
        )
        if not is_add or len(node.args) != 2 or node.kwargs:
            continue
        lhs, rhs = node.args
        for keep, zero in ((lhs, rhs), (rhs, lhs)):
            if not (isinstance(keep, torch.fx.Node) and isinstance(zero, torch.fx.Node)):
                continue
            if g.shapes.get(keep.name) != g.shapes.get(node.name):
                continue
            if a.zero_tensor(zero.name):
                node.replace_all_uses_with(keep)
                gm.graph.erase_node(node)
                dropped.append(_branch_name(zero))
                break
    if dropped:
        gm.graph.eliminate_dead_code()
        gm.recompile()
        gm.delete_all_unused_submodules()
    return dropped


def _branch_name(node: torch.fx.Node) -> str:
    """A readable name for the branch ending at ``node``: its last module's parent."""
    seen = [node]
    while seen:
        n = seen.pop()
        if n.op == "call_module":
            return str(n.target).rsplit(".", 1)[0] if "." in str(n.target) else str(n.target)
        seen.extend(n.all_input_nodes)
    return node.name


# ---------------------------------------------------------------------------------------------
# Width: which groups go
# ---------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Group labels to remove (``remove``, which includes ``fold``: constants folded into
    their consumers), what was kept and why (``kept``), and the reasons that block the
    removal of zero channels (``blocked``)."""

    remove: set[int]
    fold: set[int]
    kept: dict[str, int]
    blocked: list[str]


def plan(g: ChannelGraph, a: ValueAnalysis) -> Plan:
    """Decide per group label: zero at consumers, dead downstream, foldable constant, or keep."""
    nlab = int(g.labels.max()) + 1 if len(g.labels) else 0
    zero_ok = np.ones(nlab, dtype=bool)
    dead_ok = np.ones(nlab, dtype=bool)
    fold_ok = np.ones(nlab, dtype=bool)
    const_ok = np.ones(nlab, dtype=bool)
    has_out = np.zeros(nlab, dtype=bool)
    shared = {mod for mod, calls in g.calls.items() if len(calls) > 1}
    for mem in g.members:
        labs = g.labels[mem.slots]
        if mem.role == "out":
            has_out[labs] = True
            continue
        if mem.role != "in" or mem.param != "weight":
            continue
        m = g.gm.get_submodule(mem.module)
        c = a.const[mem.src]
        z = c & (np.where(c, a.value_of(mem.src), np.nan) == 0)
        w = getattr(m, mem.param).detach()
        wz = w.transpose(0, mem.dim).flatten(1).abs().sum(1).cpu().numpy() == 0
        # a constant folds into a Linear or an unpadded Conv (called once); else only zeros do
        folds = isinstance(m, nn.Linear) or (isinstance(m, ops.CONV) and not ops.is_zero_padded(m))
        absorb = c if folds and mem.module not in shared else z
        np.logical_and.at(zero_ok, labs, z)
        np.logical_and.at(dead_ok, labs, wz)
        np.logical_and.at(fold_ok, labs, absorb)
        np.logical_and.at(const_ok, labs, c)
    candidates = has_out.copy()
    kept: dict[str, int] = defaultdict(int)
    blocked: list[str] = []
    for lab, (reason, unsupported) in g.frozen.items():
        if lab < nlab and candidates[lab]:
            candidates[lab] = False
            if unsupported and (zero_ok[lab] or dead_ok[lab]):
                kept[f"blocked by {reason}"] += 1
                blocked.append(reason)
    removable = candidates & (zero_ok | dead_ok)
    fold = candidates & ~removable & fold_ok
    # groups that are constant at every consumer but cannot be folded exactly
    n_const_kept = int((candidates & ~removable & ~fold & const_ok).sum())
    if n_const_kept:
        kept["constant channel entering a zero-padded convolution (not exact to fold)"] = (
            n_const_kept
        )
    return Plan(
        set(np.flatnonzero(removable).tolist()) | set(np.flatnonzero(fold).tolist()),
        set(np.flatnonzero(fold).tolist()),
        dict(kept),
        blocked,
    )


def round_widths(g: ChannelGraph, p: Plan, r: int) -> int:
    """Give back removable groups until every producing layer's width is a multiple of r
    (and at least 1). Returns the number of groups given back."""
    back = 0
    mods = g.producer_modules()
    changed = True
    while changed:
        changed = False
        for mod in mods:
            labs = g.out_labels(mod)
            removed = np.array([int(x) in p.remove for x in labs])
            kept = int((~removed).sum())
            target = max(math.ceil(kept / r) * r, min(r, len(labs)), 1)
            target = min(target, len(labs))
            need = target - kept
            if need <= 0:
                continue
            # prefer groups that need no folding (zero / dead); deterministic order
            cand = list(dict.fromkeys(int(x) for x in labs[removed]))
            cand.sort(key=lambda lab: (lab in p.fold, lab))
            for lab in cand:
                if need <= 0:
                    break
                p.remove.discard(lab)
                p.fold.discard(lab)
                need -= int((labs == lab).sum())
                back += 1
                changed = True
    return back


# ---------------------------------------------------------------------------------------------
# Folding
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def fold_constants(g: ChannelGraph, a: ValueAnalysis, fold: set[int]) -> None:
    """Add each folded constant channel's contribution to its consumers' biases."""
    if not fold:
        return
    fold_arr = np.array(sorted(fold))
    deltas: dict[str, Tensor] = {}
    for mem in g.members:
        if mem.role != "in" or mem.param != "weight":
            continue
        pos = np.flatnonzero(np.isin(g.labels[mem.slots], fold_arr))
        if not len(pos):
            continue
        m = g.gm.get_submodule(mem.module)
        vals = torch.as_tensor(a.value_of(mem.src)[pos], dtype=torch.float64)
        w = m.weight.detach().double()
        if isinstance(m, nn.Linear):
            d = w[:, pos] @ vals
        else:  # Conv without zero padding: every output sees the full kernel
            d = (w[:, pos].flatten(2).sum(2) * vals).sum(1)
        deltas[mem.module] = deltas.get(mem.module, 0) + d
    for mod, d in deltas.items():
        m = g.gm.get_submodule(mod)
        bn = _only_user_batchnorm(g, mod)
        if m.bias is not None:
            m.bias.add_(d.to(m.bias))
        elif bn is not None:
            bn.running_mean.sub_(d.to(bn.running_mean))
        else:
            m.bias = nn.Parameter(d.to(m.weight))


def _only_user_batchnorm(g: ChannelGraph, mod: str) -> nn.Module | None:
    calls = g.calls.get(mod, [])
    if len(calls) != 1:
        return None
    node = g.node(calls[0])
    if len(node.users) != 1:
        return None
    (user,) = node.users
    if user.op != "call_module":
        return None
    bn = g.gm.get_submodule(user.target)
    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.track_running_stats:
        return bn
    return None
