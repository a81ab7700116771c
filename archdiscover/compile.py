"""The graph compiler: physically remove dead channels, fold constants, drop zero branches.

``compile(model, example_inputs)`` works on a copy of ``model`` in eval mode:

1. **Value analysis.** The model is traced (:mod:`archdiscover.graph`) and every channel of
   every tensor is classified *structurally* as constant (its value is the same at every
   sample and position, whatever the input) or not: a Conv/Linear output channel is constant
   when its weights from non-constant inputs are all zero; per-channel layers keep constants
   constant (a zero-padded average pool does not); sums and products of constants are
   constant. The value of a constant channel is then read from one forward pass.
2. **Depth.** A residual ``a + b`` whose branch ``b`` is constant zero everywhere becomes ``a``:
   the branch's layers disappear and ``Compiled.model`` becomes a ``torch.fx.GraphModule``.
3. **Width.** A coupled channel group (:func:`archdiscover.channel_groups`) is removed when
   (a) it reaches every consumer as exact zeros, (b) every consumer's input weights for it are
   zero (dead downstream), or (c) it reaches every consumer as a constant that can be folded
   exactly: into a Linear's bias, or a Conv's bias (or the following BatchNorm's running mean)
   when the Conv has no zero padding. A constant entering a zero-padded k x k convolution is
   not constant at the borders, so that channel stays.
4. **Rounding.** With ``round_to=r`` each layer keeps just enough of its removable channels
   to make its width a multiple of ``r`` (those channels are zero or unused, so nothing
   changes numerically); ``"auto"`` measures r in (1, 4, 8, 16) in onnxruntime.
5. **Removal** with Torch-Pruning's per-layer pruning functions, then **verification**: the
   compact model must reproduce the original on the example inputs and on fresh random
   inputs to ``atol`` relative to the output scale, else :class:`CompileError`.
"""

from __future__ import annotations

import copy
import importlib
import math
import operator
import os
import pathlib
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch
import torch.fx
import torch_pruning as tp
from torch import Tensor, nn

from . import export as _export
from ._io import save_atomic
from .graph import (
    _CONV,
    _CONVT,
    _NORM,
    ChannelGraph,
    Inputs,
    TraceError,
    _as_tuple,
    producer_widths,
    trace,
)

__all__ = ["CompileError", "CompileReport", "Compiled", "compile", "load_compiled"]

ROUND_CANDIDATES = (1, 4, 8, 16)


class CompileError(RuntimeError):
    """The model cannot be compiled exactly (the message names the layer or operation)."""


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
@dataclass
class CompileReport:
    """What ``compile`` did, with sizes before and after.

    ``macs`` are multiply-accumulates for one sample (FLOPs = 2 x MACs); ``depth`` is the
    largest number of Conv/ConvTranspose/Linear layers on a path from input to output;
    ``layers`` maps each weight layer to ``(width before, width after)`` (``after`` is 0 for
    a layer that was dropped with its residual branch).
    """

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    depth_before: int
    depth_after: int
    layers: dict[str, tuple[int, int]]
    removed_groups: int
    folded_groups: int
    kept: dict[str, int]
    dropped_branches: list[str]
    round_to: int
    max_error: float
    seconds: float
    auto: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def flops_before(self) -> int:
        return 2 * self.macs_before

    @property
    def flops_after(self) -> int:
        return 2 * self.macs_after

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["layers"] = {k: list(v) for k, v in self.layers.items()}
        d["flops_before"], d["flops_after"] = self.flops_before, self.flops_after
        return d

    def __str__(self) -> str:
        def frac(a: int, b: int) -> str:
            return f"{a / b:.1%}" if b else "-"

        rows = [
            ("parameters", self.params_before, self.params_after),
            ("MACs / sample", self.macs_before, self.macs_after),
            ("depth (weight layers)", self.depth_before, self.depth_after),
        ]
        w = max([len(n) for n in self.layers] + [22])
        lines = [f"{'':<{w}}  {'before':>12}  {'after':>12}  {'kept':>6}"]
        lines += [f"{n:<{w}}  {a:>12,}  {b:>12,}  {frac(b, a):>6}" for n, a, b in rows]
        lines.append("")
        lines.append(f"{'layer width':<{w}}  {'before':>12}  {'after':>12}")
        for n, (a, b) in self.layers.items():
            lines.append(f"{n:<{w}}  {a:>12}  {b if b else 'dropped':>12}")
        lines.append("")
        lines.append(
            f"removed {self.removed_groups} channel groups ({self.folded_groups} constant ones "
            f"folded into the next layer), dropped {len(self.dropped_branches)} residual "
            f"branch(es); widths rounded to multiples of {self.round_to}; "
            f"max relative error {self.max_error:.2e}; {self.seconds:.2f} s"
        )
        for reason, n in self.kept.items():
            lines.append(f"kept {n} removable-looking group(s): {reason}")
        if self.auto:
            lines.append("round_to='auto' (onnxruntime median latency, ms):")
            for r, d in self.auto.items():
                cells = ", ".join(f"batch {k}: {v:.3f}" for k, v in d.items())
                lines.append(
                    f"  round_to={r}: {cells}" + ("  <- chosen" if r == self.round_to else "")
                )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Value analysis
# ---------------------------------------------------------------------------------------------
def _capture(gm: torch.fx.GraphModule, inputs: tuple[Tensor, ...]) -> dict[str, Tensor]:
    """Every tensor-valued node's output on ``inputs``."""
    values: dict[str, Tensor] = {}

    class _Rec(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            if isinstance(out, Tensor):
                values[n.name] = out.detach()
            return out

    with torch.no_grad():
        _Rec(gm).run(*inputs)
    return values


def _first(v: Tensor, axis: int, n: int) -> np.ndarray:
    """The value of each channel at the first sample and position (float64 numpy)."""
    t = v.movedim(axis, -1).reshape(-1, n)[0] if v.dim() > 1 else v.reshape(-1)[:n]
    return t.double().cpu().numpy()


def _zero_padded(m: nn.Module) -> bool:
    pad = m.padding if not isinstance(m.padding, str) else (1,) if m.padding == "same" else (0,)
    return m.padding_mode == "zeros" and any(p != 0 for p in pad)


class _Analysis:
    """Structural constness per channel of every node, with the constants' values."""

    def __init__(self, g: ChannelGraph, inputs: tuple[Tensor, ...]) -> None:
        self.g = g
        self.values = _capture(g.gm, inputs)
        self.const: dict[str, np.ndarray] = {}
        self.val: dict[str, np.ndarray] = {}
        for node in g.gm.graph.nodes:
            self._visit(node)

    def _vals(self, name: str) -> np.ndarray:
        if name not in self.val:
            s = self.g.slots[name]
            self.val[name] = _first(self.values[name], self.g.axis[name], len(s))
        return self.val[name]

    def _visit(self, node: torch.fx.Node) -> None:
        g, name = self.g, node.name
        s = g.slots.get(name)
        if s is None:
            return
        info = g.info[name]
        n = len(s)
        kind = info.kind
        false = np.zeros(n, dtype=bool)
        ins = [i for i in info.inputs if g.slots.get(i) is not None]
        if kind in ("input", "opaque", "output", "other") or not ins:
            self.const[name] = false
            return
        if kind == "producer":
            m = g.gm.get_submodule(info.module)
            x = ins[0]
            xc = self.const[x]
            transposed = isinstance(m, _CONVT)
            w = m.weight.detach()
            if transposed:
                w = w.transpose(0, 1)
            wabs = w.abs().flatten(2).sum(2) if w.dim() > 2 else w.abs()  # (out, in)
            wabs = wabs.double().cpu().numpy()
            varin = wabs[:, ~xc].sum(1) != 0
            cin = xc.copy()
            if transposed or (isinstance(m, _CONV) and _zero_padded(m)):
                cin &= self._vals(x) == 0  # a nonzero constant is not constant at borders
            varin |= wabs[:, ~cin].sum(1) != 0
            self.const[name] = ~varin
            return
        if kind == "depthwise":
            m = g.gm.get_submodule(info.module)
            xc = self.const[ins[0]].copy()
            if _zero_padded(m):
                xc &= self._vals(ins[0]) == 0
            wz = m.weight.detach().flatten(1).abs().sum(1).cpu().numpy() == 0
            self.const[name] = xc | wz
            return
        if kind in ("norm", "pointwise", "flatten", "reduce"):
            xc = self.const[ins[0]]
            rep = info.detail.get("repeat")
            if rep:
                xc = np.repeat(xc, rep)
            padded = info.detail.get("padded_avg", False)
            if info.module is not None:
                m = g.gm.get_submodule(info.module)
                padded = isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)) and (
                    m.count_include_pad and np.any(np.asarray(m.padding) != 0)
                )
            if padded:
                xc = xc & (self._vals(ins[0]) == 0)
            xc = xc.copy() if len(xc) == n else false
            if kind == "norm":  # a zero scale makes the output the shift, whatever the input
                m = g.gm.get_submodule(info.module)
                if getattr(m, "weight", None) is not None:
                    xc |= m.weight.detach().cpu().numpy() == 0
            self.const[name] = xc
            return
        if kind == "cat":
            parts = [self.const[i] for i in info.inputs]
            if info.detail.get("along_channels"):
                self.const[name] = np.concatenate(parts)
            else:
                self.const[name] = np.logical_and.reduce(parts)
            return
        if kind == "binary":
            # operands with one value per channel (full tensors, or per-channel gates
            # broadcast over the other dims) act channel by channel; the rest (size-1
            # channel dims, trailing-dim vectors) must be constant everywhere
            aligned = [i for i in ins if len(g.slots[i]) == n and g.axis[i] == g.axis[name]]
            others = [i for i in ins if i not in aligned]
            c = np.logical_and.reduce([self.const[i] for i in aligned])
            for i in others:
                c = c & bool(self.const[i].all()) if len(self.const[i]) else c
            if info.detail.get("op") == "mul":  # a zero factor makes the product zero
                for i in aligned:
                    zero = self.const[i] & (self._vals(i) == 0)
                    c = c | zero
            self.const[name] = c
            return
        self.const[name] = false

    def zero_tensor(self, name: str) -> bool:
        """True when node ``name`` is structurally constant and exactly zero everywhere."""
        c = self.const.get(name)
        return c is not None and bool(c.all()) and not bool(self.values[name].any())


# ---------------------------------------------------------------------------------------------
# Depth: drop residual branches that are exactly zero
# ---------------------------------------------------------------------------------------------
_ADD_TARGETS = {operator.add, operator.iadd, torch.add}


def _drop_zero_branches(g: ChannelGraph, a: _Analysis) -> list[str]:
    gm = g.gm
    dropped: list[str] = []
    for node in list(gm.graph.nodes):
        is_add = (node.op == "call_function" and node.target in _ADD_TARGETS) or (
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
class _Plan:
    remove: set[int]
    fold: set[int]
    kept: dict[str, int]
    blocked: list[str]


def _plan(g: ChannelGraph, a: _Analysis) -> _Plan:
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
        z = c & (np.where(c, a._vals(mem.src), np.nan) == 0)
        w = getattr(m, mem.param).detach()
        wz = w.transpose(0, mem.dim).flatten(1).abs().sum(1).cpu().numpy() == 0
        # a constant folds into a Linear or an unpadded Conv (called once); else only zeros do
        folds = isinstance(m, nn.Linear) or (isinstance(m, _CONV) and not _zero_padded(m))
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
    return _Plan(
        set(np.flatnonzero(removable).tolist()) | set(np.flatnonzero(fold).tolist()),
        set(np.flatnonzero(fold).tolist()),
        dict(kept),
        blocked,
    )


def _round_widths(g: ChannelGraph, plan: _Plan, r: int) -> int:
    """Give back removable groups until every producing layer's width is a multiple of r
    (and at least 1). Returns the number of groups given back."""
    back = 0
    mods = g.producer_modules()
    changed = True
    while changed:
        changed = False
        for mod in mods:
            labs = g.out_labels(mod)
            removed = np.array([int(x) in plan.remove for x in labs])
            kept = int((~removed).sum())
            target = max(math.ceil(kept / r) * r, min(r, len(labs)), 1)
            target = min(target, len(labs))
            need = target - kept
            if need <= 0:
                continue
            # prefer groups that need no folding (zero / dead); deterministic order
            cand = list(dict.fromkeys(int(x) for x in labs[removed]))
            cand.sort(key=lambda lab: (lab in plan.fold, lab))
            for lab in cand:
                if need <= 0:
                    break
                plan.remove.discard(lab)
                plan.fold.discard(lab)
                need -= int((labs == lab).sum())
                back += 1
                changed = True
    return back


# ---------------------------------------------------------------------------------------------
# Folding and removal
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def _fold_constants(g: ChannelGraph, a: _Analysis, fold: set[int]) -> None:
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
        vals = torch.as_tensor(a._vals(mem.src)[pos], dtype=torch.float64)
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
    node = next(n for n in g.gm.graph.nodes if n.name == calls[0])
    if len(node.users) != 1:
        return None
    (user,) = node.users
    if user.op != "call_module":
        return None
    bn = g.gm.get_submodule(user.target)
    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.track_running_stats:
        return bn
    return None


def _prune(g: ChannelGraph, remove: set[int]) -> None:
    """Physically remove the channels of the groups in ``remove`` (Torch-Pruning functions)."""
    if not remove:
        return
    rem = np.array(sorted(remove))
    todo: dict[tuple[str, str], set[int]] = defaultdict(set)
    for mem in g.members:
        if mem.param != "weight" and mem.role != "norm":
            continue
        pos = np.flatnonzero(np.isin(g.labels[mem.slots], rem))
        if len(pos):
            todo[(mem.module, mem.role)].update(int(p) for p in pos)
    done: set[tuple[str, str]] = set()
    for (mod, role), pos in todo.items():
        key = (mod, "norm" if role == "norm" else role)
        if key in done:
            continue
        done.add(key)
        m = g.gm.get_submodule(mod)
        idxs = sorted(pos)
        if isinstance(m, _CONV + _CONVT):
            if role == "norm":
                tp.prune_depthwise_conv_out_channels(m, idxs)
            elif role == "out":
                tp.prune_conv_out_channels(m, idxs)
            else:
                tp.prune_conv_in_channels(m, idxs)
        elif isinstance(m, nn.Linear):
            if role == "out":
                tp.prune_linear_out_channels(m, idxs)
            else:
                tp.prune_linear_in_channels(m, idxs)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            tp.prune_batchnorm_out_channels(m, idxs)
        elif isinstance(m, nn.modules.instancenorm._InstanceNorm):
            keep = sorted(set(range(m.num_features)) - set(idxs))
            tp.prune_instancenorm_out_channels(m, idxs)
            if m.track_running_stats:
                m.running_mean = m.running_mean[keep]
                m.running_var = m.running_var[keep]
        elif isinstance(m, nn.PReLU):
            tp.prune_prelu_out_channels(m, idxs)
        else:  # pragma: no cover - graph.py only creates members for the types above
            raise CompileError(f"no pruning function for {type(m).__name__} '{mod}'")


# ---------------------------------------------------------------------------------------------
# Verification and sizes
# ---------------------------------------------------------------------------------------------
def _outputs(model: nn.Module, inputs: tuple[Tensor, ...]) -> list[Tensor]:
    with torch.no_grad():
        out = model(*inputs)
    flat: list[Tensor] = []

    def walk(o: Any) -> None:
        if isinstance(o, Tensor):
            flat.append(o.detach())
        elif isinstance(o, (tuple, list)):
            for x in o:
                walk(x)
        elif isinstance(o, dict):
            for x in o.values():
                walk(x)

    walk(out)
    return flat


def _fresh_inputs(inputs: tuple[Tensor, ...], seed: int) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in inputs:
        if t.is_floating_point():
            out.append(torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device))
        else:
            out.append(t.clone())
    return tuple(out)


def _rel_error(ref: list[Tensor], got: list[Tensor]) -> float:
    if len(ref) != len(got):
        return math.inf
    err = 0.0
    for r, o in zip(ref, got, strict=True):
        if r.shape != o.shape:
            return math.inf
        scale = max(1.0, float(r.abs().max())) if r.numel() else 1.0
        d = float((r.double() - o.double()).abs().max()) if r.numel() else 0.0
        err = max(err, d / scale)
    return err


def _depth(g: ChannelGraph) -> int:
    weight = {
        n
        for n, d in g.nx.nodes(data=True)
        if d["kind"] in ("producer", "depthwise") and d["op"] == "call_module"
    }
    best: dict[str, int] = {}
    for n in nx.topological_sort(g.nx):
        preds = [best[p] for p in g.nx.predecessors(n)]
        best[n] = (max(preds) if preds else 0) + (n in weight)
    return max(best.values()) if best else 0


def _count(model: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(model, inputs[0] if len(inputs) == 1 else inputs)
    return int(macs), int(params)


# ---------------------------------------------------------------------------------------------
# The compiled model
# ---------------------------------------------------------------------------------------------
class Compiled:
    """A compact model produced by :func:`compile`.

    Attributes:
        model: the compact ``nn.Module`` (the input model's class with narrower layers, or a
            ``torch.fx.GraphModule`` when residual branches were dropped).
        report: a :class:`CompileReport`.
        example_inputs: the inputs it was verified on.
    """

    def __init__(
        self, model: nn.Module, report: CompileReport, example_inputs: tuple[Tensor, ...]
    ) -> None:
        self.model = model
        self.report = report
        self.example_inputs = example_inputs

    def __repr__(self) -> str:
        r = self.report
        return (
            f"Compiled(params {r.params_before:,} -> {r.params_after:,}, "
            f"MACs {r.macs_before:,} -> {r.macs_after:,}, depth {r.depth_before} -> "
            f"{r.depth_after})"
        )

    def export_onnx(
        self,
        path: str | os.PathLike,
        dynamic_batch: bool = True,
        *,
        atol: float = 1e-5,
        dynamo: bool = False,
    ) -> pathlib.Path:
        """Export the compact model to ONNX, check it and verify it in onnxruntime.

        Runs ``onnx.checker``, then compares onnxruntime (CPU provider) with the compact torch
        model on the example inputs and on fresh inputs at another batch size; raises
        :class:`archdiscover.export.OnnxVerificationError` with the max error beyond ``atol``.
        Returns the path.
        """
        return _export.export_onnx(
            self.model,
            path,
            self.example_inputs,
            dynamic_batch=dynamic_batch,
            atol=atol,
            dynamo=dynamo,
        )

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write the compact shapes and weights (plain data and tensors, no pickled code).

        Reload with :func:`load_compiled` and the supernet's constructor.
        """
        payload: dict[str, Any] = {
            "format": "archdiscover.compiled/1",
            "modules": _module_specs(self.model),
            "graph": _encode_graph(self.model.graph)
            if isinstance(self.model, torch.fx.GraphModule)
            else None,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "report": _plain(self.report.to_dict()),
        }
        return save_atomic(payload, path)


# ---------------------------------------------------------------------------------------------
# compile
# ---------------------------------------------------------------------------------------------
def compile(
    model: nn.Module,
    example_inputs: Inputs,
    atol: float = 1e-5,
    *,
    round_to: int | str = 1,
    strict: bool = True,
    n_random: int = 2,
    auto_batch_sizes: Sequence[int] = (1, 64),
) -> Compiled:
    """Physically shrink ``model`` to the channels and branches that matter; verify exactness.

    Args:
        model: any ``nn.Module`` traceable by ``torch.fx``; it is not modified.
        example_inputs: a tensor or tuple of tensors (a small batch is enough).
        atol: tolerance on ``max |compact - original| / max(1, max |original|)``.
        round_to: an int r: keep just enough removable (zero or unused) channels to round each
            layer's width up to a multiple of r; ``"auto"``: try 1, 4, 8, 16 and keep the one
            fastest in onnxruntime on this machine (median latency at each of
            ``auto_batch_sizes`` relative to r=1, geometric mean over the batch sizes; among
            candidates within 3% of the fastest, the largest r, whose speed carries over to
            CPUs with other SIMD widths).
        strict: raise when an unsupported operation blocks the removal of a zero channel
            group; with ``strict=False`` those channels are kept and counted in the report.
        n_random: number of fresh random inputs the result is verified on.

    Returns:
        :class:`Compiled` with ``.model`` (an ordinary ``nn.Module``) and ``.report``.

    Raises:
        CompileError: untraceable model, unsupported operation in the way (``strict``), or a
            compact model that differs from the original beyond ``atol``.

    Example:
        >>> c = archdiscover.compile(model.eval(), torch.randn(8, 1, 28, 28))
        >>> print(c.report)
        >>> c.export_onnx("model.onnx")
    """
    if isinstance(round_to, str):
        if round_to != "auto":
            raise ValueError(f"round_to must be a positive int or 'auto', got {round_to!r}")
        return _compile_auto(model, example_inputs, atol, strict, n_random, auto_batch_sizes)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive int or 'auto', got {round_to!r}")
    if not (atol >= 0):
        raise ValueError(f"atol must be >= 0, got {atol!r}")
    return _compile(model, example_inputs, atol, round_to, strict, n_random)


def _compile(
    model: nn.Module,
    example_inputs: Inputs,
    atol: float,
    round_to: int,
    strict: bool,
    n_random: int,
) -> Compiled:
    t0 = time.perf_counter()
    inputs = _as_tuple(example_inputs)
    work = copy.deepcopy(model).eval()
    checks = [inputs] + [_fresh_inputs(inputs, seed) for seed in range(n_random)]
    refs = [_outputs(work, x) for x in checks]
    macs0, params0 = _count(work, inputs)
    widths0 = producer_widths(work)
    try:
        g = trace(work, inputs)
    except TraceError as e:
        raise CompileError(str(e)) from e
    depth0 = _depth(g)
    dropped: list[str] = []
    for _ in range(64):  # each pass drops at least one branch
        a = _Analysis(g, inputs)
        new = _drop_zero_branches(g, a)
        if not new:
            break
        dropped += new
        g = trace(g.gm, inputs)
    plan = _plan(g, a)
    if strict and plan.blocked:
        reasons = "; ".join(sorted(set(plan.blocked)))
        raise CompileError(
            f"zero channels cannot be removed through an unsupported operation: {reasons}. "
            "Pass strict=False to keep them (see archdiscover.inspect)."
        )
    _round_widths(g, plan, round_to)
    _fold_constants(g, a, plan.fold)
    _prune(g, plan.remove)
    out_model: nn.Module = g.gm if dropped else work
    if dropped:
        out_model.graph.lint()
    errors = [_rel_error(r, _outputs(out_model, x)) for r, x in zip(refs, checks, strict=True)]
    err = max(errors)
    if not err <= atol:
        raise CompileError(
            f"the compact model differs from the original by {err:.3e} (relative to the output "
            f"scale; atol={atol:g}); nothing was returned. Please report this model."
        )
    macs1, params1 = _count(out_model, inputs)
    widths1 = producer_widths(out_model)
    layers = {n: (w, widths1.get(n, 0)) for n, w in widths0.items()}
    g_after = trace(out_model, inputs)
    report = CompileReport(
        params_before=params0,
        params_after=params1,
        macs_before=macs0,
        macs_after=macs1,
        depth_before=depth0,
        depth_after=_depth(g_after),
        layers=layers,
        removed_groups=len(plan.remove),
        folded_groups=len(plan.fold),
        kept=plan.kept,
        dropped_branches=dropped,
        round_to=round_to,
        max_error=err,
        seconds=time.perf_counter() - t0,
    )
    return Compiled(out_model, report, inputs)


def _compile_auto(
    model: nn.Module,
    example_inputs: Inputs,
    atol: float,
    strict: bool,
    n_random: int,
    batch_sizes: Sequence[int],
) -> Compiled:
    t0 = time.perf_counter()
    inputs = _as_tuple(example_inputs)
    if len(inputs) != 1:
        raise ValueError("round_to='auto' measures latency for single-input models only")
    results: dict[int, Compiled] = {}
    paths: dict[int, pathlib.Path] = {}
    with tempfile.TemporaryDirectory(prefix="archdiscover-auto-") as tmp:
        for r in ROUND_CANDIDATES:
            c = _compile(model, inputs, atol, r, strict, n_random)
            widths = tuple(sorted(c.report.layers.items()))
            dup = next((q for q, d in results.items() if _widths(d) == widths), None)
            results[r] = c
            if dup is None:
                paths[r] = c.export_onnx(pathlib.Path(tmp) / f"r{r}.onnx", atol=atol)
        timings: dict[int, dict[str, float]] = {}
        shape = tuple(inputs[0].shape[1:])
        ordered = list(paths)
        for rnd in range(3):  # interleave candidates so that machine noise hits all alike
            for r in ordered if rnd % 2 == 0 else reversed(ordered):
                lat = _export.onnx_latency(paths[r], shape, batch_sizes, warmup=2, repeats=8)
                for b, v in lat.items():
                    key = str(b)
                    prev = timings.setdefault(r, {}).get(key)
                    timings[r][key] = v.median_ms if prev is None else min(prev, v.median_ms)
    # geometric mean over batch sizes of the latency relative to the first candidate, so
    # that batch 1 and batch 64 weigh alike. Candidates within 3% of the fastest cannot be
    # told apart on a shared machine; among those the largest multiple wins: a width that
    # is a multiple of 16 is as fast on every SIMD width up to 16 floats (AVX2 computes in
    # blocks of 8 channels, AVX-512 of 16), so the exported model keeps its speed on the
    # CPU it is deployed to, not only on this one.
    base = timings[ordered[0]]
    score = {
        r: math.exp(sum(math.log(t[k] / base[k]) for k in t) / len(t)) for r, t in timings.items()
    }
    fastest = min(score.values())
    best = max(r for r in score if score[r] <= fastest * 1.03)
    chosen = results[best]
    chosen.report.auto = timings
    chosen.report.seconds = time.perf_counter() - t0
    return chosen


def _widths(c: Compiled) -> tuple[Any, ...]:
    return tuple(sorted(c.report.layers.items()))


# ---------------------------------------------------------------------------------------------
# Saving and loading without pickled code
# ---------------------------------------------------------------------------------------------
_CONV_SPEC = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)
_NORM_SPEC = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_SPEC_ATTRS: dict[type, tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features"),
    **{t: _CONV_SPEC for t in _CONV},
    **{t: (*_CONV_SPEC, "output_padding") for t in _CONVT},
    **{t: _NORM_SPEC for t in _NORM},
    nn.PReLU: ("num_parameters",),
}
_SPEC_TYPES = {t.__name__: t for t in _SPEC_ATTRS}


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (int, float, str, bool)) or x is None:
        return x
    return str(x)


def _module_specs(model: nn.Module) -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = _SPEC_ATTRS.get(type(m))
        if attrs is None or not name:
            continue
        args = {k: _plain(getattr(m, k)) for k in attrs}
        # Linear / Conv / ConvTranspose take a bias flag (norms and PReLU do not)
        if isinstance(m, (nn.Linear, *_CONV, *_CONVT)):
            args["bias"] = m.bias is not None
        specs[name] = {"type": type(m).__name__, "args": args}
    return specs


def _build_module(name: str, spec: dict[str, Any]) -> nn.Module:
    cls = _SPEC_TYPES.get(spec.get("type", ""))
    if cls is None:
        raise ValueError(f"module {name!r}: unknown layer type {spec.get('type')!r} in the file")
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["args"].items()}
    return cls(**args)


_FN_MODULES = ("operator", "torch", "torch.nn.functional", "builtins", "math")


def _encode_target(target: Any) -> Any:
    if isinstance(target, str):
        return target
    name = getattr(target, "__name__", None)
    for modname in _FN_MODULES:
        mod = importlib.import_module(modname)
        if name and getattr(mod, name, None) is target:
            return {"fn": f"{modname}:{name}"}
    raise CompileError(f"cannot save a graph calling {target!r} (not in {', '.join(_FN_MODULES)})")


def _decode_target(t: Any) -> Any:
    if isinstance(t, str):
        return t
    modname, name = t["fn"].split(":")
    if modname not in _FN_MODULES:
        raise ValueError(f"refusing to load function {t['fn']!r} from the file")
    return getattr(importlib.import_module(modname), name)


def _encode_arg(a: Any) -> Any:
    if isinstance(a, torch.fx.Node):
        return {"node": a.name}
    if isinstance(a, tuple):
        return {"tuple": [_encode_arg(x) for x in a]}
    if isinstance(a, list):
        return [_encode_arg(x) for x in a]
    if isinstance(a, dict):
        return {"dict": {k: _encode_arg(v) for k, v in a.items()}}
    if isinstance(a, slice):
        return {"slice": [_encode_arg(a.start), _encode_arg(a.stop), _encode_arg(a.step)]}
    if isinstance(a, torch.dtype):
        return {"dtype": str(a).removeprefix("torch.")}
    if a is Ellipsis:
        return {"ellipsis": True}
    if isinstance(a, (int, float, str, bool)) or a is None:
        return a
    raise CompileError(f"cannot save a graph argument of type {type(a).__name__}: {a!r}")


def _decode_arg(a: Any, env: dict[str, torch.fx.Node]) -> Any:
    if isinstance(a, list):
        return [_decode_arg(x, env) for x in a]
    if isinstance(a, dict):
        if "node" in a:
            return env[a["node"]]
        if "tuple" in a:
            return tuple(_decode_arg(x, env) for x in a["tuple"])
        if "dict" in a:
            return {k: _decode_arg(v, env) for k, v in a["dict"].items()}
        if "slice" in a:
            return slice(*(_decode_arg(x, env) for x in a["slice"]))
        if "dtype" in a:
            return getattr(torch, a["dtype"])
        if "ellipsis" in a:
            return Ellipsis
    return a


def _encode_graph(graph: torch.fx.Graph) -> list[dict[str, Any]]:
    return [
        {
            "name": n.name,
            "op": n.op,
            "target": _encode_target(n.target),
            "args": _encode_arg(n.args),
            "kwargs": _encode_arg(n.kwargs),
        }
        for n in graph.nodes
    ]


def _decode_graph(nodes: list[dict[str, Any]]) -> torch.fx.Graph:
    graph = torch.fx.Graph()
    env: dict[str, torch.fx.Node] = {}
    for d in nodes:
        args = _decode_arg(d["args"], env)
        kwargs = _decode_arg(d["kwargs"], env)
        target = _decode_target(d["target"])
        if d["op"] == "output":
            graph.output(args[0])
            continue
        node = graph.create_node(d["op"], target, tuple(args), dict(kwargs), name=d["name"])
        env[d["name"]] = node
    return graph


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def load_compiled(path: str | os.PathLike, build: Callable[[], nn.Module]) -> nn.Module:
    """Rebuild a compact model saved by :meth:`Compiled.save`.

    ``build()`` constructs the supernet (e.g. ``lambda: models.build("resnet18")``); its layers
    are replaced by ones of the saved shapes, residual branches dropped by the compiler are
    removed again, and the weights are loaded with ``torch.load(weights_only=True)``.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no compiled model at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable compiled model ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != "archdiscover.compiled/1":
        raise ValueError(f"{path}: not an archdiscover compiled model (missing format tag)")
    model = build()
    for name, spec in payload["modules"].items():
        try:
            model.get_submodule(name)
        except AttributeError as e:
            raise ValueError(
                f"{path}: layer {name!r} does not exist in the model built by {build!r}"
            ) from e
        _set_submodule(model, name, _build_module(name, spec))
    if payload["graph"] is not None:
        model = torch.fx.GraphModule(model, _decode_graph(payload["graph"]))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: the weights do not fit the rebuilt model: {e}") from e
    return model.eval()
