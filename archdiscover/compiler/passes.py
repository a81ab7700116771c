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
from ..graph.trace import ChannelGraph, Member, Producer
from .analysis import ValueAnalysis, producer_weight

__all__ = [
    "Plan",
    "drop_zero_branches",
    "fold_constants",
    "folds_into",
    "plan",
    "producer_of",
    "round_widths",
]


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
    their consumers), what was kept and why (``kept``), and the exactly-zero channels that
    cannot be removed, one line each naming the channel and what blocks it (``blocked``)."""

    remove: set[int]
    fold: set[int]
    kept: dict[str, int]
    blocked: list[str]


def producer_of(g: ChannelGraph, mem: Member) -> Producer | None:
    """The producer spec of the layer an input member belongs to."""
    info = g.info.get(mem.node)
    if info is None:
        return None
    if info.kind == "attention" and mem.param == "in_proj_weight":
        mod = g.gm.get_submodule(mem.module)
        bias = "in_proj_bias" if mod.in_proj_bias is not None else None
        return Producer(mem.module, "in_proj_weight", bias, "linear")
    return info.detail.get("producer")


def in_weight(g: ChannelGraph, mem: Member, spec: Producer) -> Tensor:
    """The weight an input member reads, as ``(out rows, in / groups, *k)`` (its rows)."""
    w = producer_weight(g.gm, spec)
    if mem.rows is not None:
        w = w[mem.rows[0] : mem.rows[1]]
    return w


def folds_into(g: ChannelGraph, spec: Producer, shared: set[str]) -> bool:
    """True when a constant input channel of ``spec`` folds exactly into a bias: a Linear
    (or ``x @ W``), or a Conv without zero padding, whose weights are used once, and which
    has a bias (or is a module that can get one)."""
    if spec.module in shared:
        return False
    if not (spec.kind in ("linear", "matmul") or (spec.kind == "conv" and not spec.zero_padded)):
        return False
    if spec.bias is not None:
        return True
    mod = g.gm.get_submodule(spec.module)
    return isinstance(mod, (nn.Linear, *ops.CONV)) and spec.kind != "matmul"


def _columns(mem: Member, v: np.ndarray) -> np.ndarray:
    """Per input member slot, a per-channel property ``v`` of its source (for a grouped
    convolution: true at a position only if true in every group)."""
    if mem.groups > 1:
        return v.reshape(mem.groups, -1).all(0)
    return v


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
        if mem.role != "in":
            continue
        spec = producer_of(g, mem)
        if spec is None or mem.param != spec.weight:
            continue
        n = len(mem.slots) * mem.groups
        c = _columns(mem, a.const_of(mem.src, n))
        z = _columns(mem, a.zero_of(mem.src, n))
        w = in_weight(g, mem, spec)
        wz = w.transpose(0, 1).flatten(1).abs().sum(1).cpu().numpy() == 0
        absorb = c if folds_into(g, spec, shared) else z
        np.logical_and.at(zero_ok, labs, z)
        np.logical_and.at(dead_ok, labs, wz)
        np.logical_and.at(fold_ok, labs, absorb)
        np.logical_and.at(const_ok, labs, c)
    candidates = has_out.copy()
    kept: dict[str, int] = defaultdict(int)
    blocked = _blocked_zeros(g, a, has_out, kept)
    for lab in g.frozen:
        if lab < nlab:
            candidates[lab] = False
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


def _blocked_zeros(
    g: ChannelGraph, a: ValueAnalysis, has_out: np.ndarray, kept: dict[str, int]
) -> list[str]:
    """Frozen groups whose channels are exactly zero wherever they flow (every activation
    carrying them is structurally zero), that reach neither the model input nor its output:
    one line per blocking reason, naming the first such channel."""
    nlab = len(has_out)
    zero_all = np.ones(nlab, dtype=bool)
    seen = np.zeros(nlab, dtype=bool)
    for name, s in g.slots.items():
        if s is None or name not in a.const or g.info[name].kind == "param":
            continue
        labs = g.labels[s]
        seen[labs] = True
        np.logical_and.at(zero_all, labs, a.zero(name))
    first: dict[int, tuple[str, int]] = {}
    for mem in g.members:
        if mem.role == "out":
            for i, lab in enumerate(g.labels[mem.slots].tolist()):
                first.setdefault(lab, (mem.module, i))
    by_reason: dict[str, list[int]] = defaultdict(list)
    for lab, (reason, _unsupported) in g.frozen.items():
        if lab < nlab and has_out[lab] and seen[lab] and zero_all[lab] and lab not in g.boundary:
            by_reason[reason].append(lab)
    lines = []
    for reason, labs in by_reason.items():
        kept[f"blocked by {reason}"] += len(labs)
        mod, i = first[labs[0]]
        more = f" (and {len(labs) - 1} more zero channel group(s))" if len(labs) > 1 else ""
        lines.append(f"channel {i} of '{mod}' is exactly zero but {reason}{more}")
    return lines


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
    deltas: dict[tuple[str, str | None, tuple[int, int] | None], Tensor] = {}
    specs: dict[str, Producer] = {}
    for mem in g.members:
        if mem.role != "in":
            continue
        spec = producer_of(g, mem)
        if spec is None or mem.param != spec.weight:
            continue
        pos = np.flatnonzero(np.isin(g.labels[mem.slots], fold_arr))
        if not len(pos):
            continue
        vals = torch.as_tensor(a.value_of(mem.src), dtype=torch.float64)
        w = in_weight(g, mem, spec).double()
        wsum = w.flatten(2).sum(2) if w.dim() > 2 else w  # (out, in / groups)
        if mem.groups > 1:  # each row reads its own group's input channels
            v = vals.reshape(mem.groups, -1)[torch.arange(w.shape[0]) // (w.shape[0] // mem.groups)]
            d = (wsum[:, pos] * v[:, pos]).sum(1)
        else:
            d = wsum[:, pos] @ vals[pos]
        key = (spec.module, spec.bias, mem.rows)
        deltas[key] = deltas.get(key, 0) + d
        specs[spec.module] = spec
    for (mod, bias, rows), d in deltas.items():
        m = g.gm.get_submodule(mod)
        if bias is not None:
            b = getattr(m, bias)
            target = b if rows is None else b[rows[0] : rows[1]]
            target.add_(d.to(b))
            continue
        bn = _only_user_batchnorm(g, mod)
        if bn is not None:
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
