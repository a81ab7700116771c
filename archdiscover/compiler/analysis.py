"""Value analysis: which channels of which tensors are constant, and what constant.

Every channel of every tensor in the traced graph is classified *structurally* as constant
(its value is the same at every sample and position, whatever the input) or not:

* a Conv / ConvTranspose / Linear output channel is constant when its weights from
  non-constant inputs are all zero (a non-zero constant entering a zero-padded or
  transposed convolution is not constant at the borders, so it counts as non-constant);
* per-channel layers keep constants constant (a zero-padded average pool, or zero / constant
  padding by another value, does not); a normalization with zero scale outputs its shift
  whatever its input; a tensor attribute is constant along the dims that hold no channels
  when its values are;
* reshapes, permutes and indexing move constness with the channels;
* sums and products of constants are constant; a product with an exact zero is zero; a
  softmax row mixing a constant value channel (``attn @ v``, attention heads) keeps it.

The value of a constant channel is then read from one forward pass on the example inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor

from ..graph.trace import ChannelGraph, Producer

__all__ = ["ValueAnalysis", "capture", "producer_weight"]


def capture(gm: torch.fx.GraphModule, inputs: tuple[Tensor, ...]) -> dict[str, Tensor]:
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


def _rows(v: Tensor, axes: tuple[int, ...], n: int) -> Tensor:
    """``v`` with its channel grid (dims ``axes``) flattened last: ``(positions, n)``."""
    if not axes:
        return v.reshape(-1, 1)[:, :0]
    k = len(axes)
    return v.movedim(axes, tuple(range(v.dim() - k, v.dim()))).reshape(-1, n)


def producer_weight(gm: torch.fx.GraphModule, spec: Producer) -> Tensor:
    """The weight of a producer as ``(out, in / groups, *k)`` (detached)."""
    owner = gm.get_submodule(spec.module)
    w = getattr(owner, spec.weight).detach()
    if spec.kind == "convt":
        w = w.transpose(0, 1)
    elif spec.kind == "matmul":
        w = w.t()
    return w


class ValueAnalysis:
    """Structural constness per channel of every node, with the constants' values.

    Attributes:
        g: the traced graph.
        values: each node's output on the example inputs.
        const: per node, a boolean per channel: structurally constant.
        indep: per node, True when its value does not depend on the model's inputs.
    """

    def __init__(self, g: ChannelGraph, inputs: tuple[Tensor, ...]) -> None:
        self.g = g
        self.values = capture(g.gm, inputs)
        self.const: dict[str, np.ndarray] = {}
        self.tconst: dict[str, list[np.ndarray | None]] = {}
        self.indep: dict[str, bool] = {}
        self._val: dict[str, np.ndarray] = {}
        for node in g.gm.graph.nodes:
            self.indep[node.name] = node.op == "get_attr" or (
                node.op not in ("placeholder", "output")
                and bool(node.all_input_nodes)
                and all(self.indep.get(a.name, False) for a in node.all_input_nodes)
            )
            self._visit(node)

    # -- values -----------------------------------------------------------------------
    def value_of(self, name: str) -> np.ndarray:
        """Each channel's value of node ``name`` at the first sample and position (the value
        of the channels that are constant)."""
        if name not in self._val:
            s = self.g.slots[name]
            assert s is not None
            if name not in self.values:  # a virtual node (attention heads)
                self.values[name] = self._virtual_value(name)
            rows = _rows(self.values[name], self.g.axes[name], len(s))
            self._val[name] = rows[0].double().cpu().numpy()
        return self._val[name]

    def zero_tensor(self, name: str) -> bool:
        """True when node ``name`` is structurally constant and exactly zero everywhere."""
        c = self.const.get(name)
        return c is not None and bool(c.all()) and not bool(self.values[name].any())

    def const_of(self, name: str, n: int) -> np.ndarray:
        """:attr:`const` of node ``name``, all False for a tensor whose channels are not
        tracked (``n`` channels: the ones a layer reading it sees)."""
        c = self.const.get(name)
        return c if c is not None and len(c) == n else np.zeros(n, dtype=bool)

    def zero_of(self, name: str, n: int) -> np.ndarray:
        """:meth:`zero` of node ``name``, all False for a tensor whose channels are not
        tracked."""
        c = self.const.get(name)
        return self.zero(name) if c is not None and len(c) == n else np.zeros(n, dtype=bool)

    def zero(self, name: str) -> np.ndarray:
        """Per channel of node ``name``: structurally constant and exactly zero."""
        c = self.const[name]
        if not len(c):
            return c
        return c & (np.where(c, self.value_of(name), np.nan) == 0)

    def uniform(self, name: str) -> bool:
        """True when node ``name`` holds one value everywhere, whatever the input."""
        v = self.values.get(name)
        if v is None:
            return False
        flat = v.reshape(-1)
        if flat.numel() and not bool((flat == flat[0]).all()):
            return False
        if self.indep.get(name, False):
            return True
        c = self.const.get(name)
        return c is not None and len(c) > 0 and bool(c.all())

    def _virtual_value(self, name: str) -> Tensor:
        info = self.g.info[name]
        mod = self.g.gm.get_submodule(info.module)
        x = self.values[info.inputs[0]]
        e = mod.in_proj_weight.shape[0] // 3
        w = mod.in_proj_weight.detach()[2 * e :]
        b = None if mod.in_proj_bias is None else mod.in_proj_bias.detach()[2 * e :]
        return F.linear(x, w, b)

    # -- per node -----------------------------------------------------------------------
    def _visit(self, node: torch.fx.Node) -> None:
        g, name = self.g, node.name
        info = g.info.get(name)
        if info is None:
            return
        if name in g.tuples:
            self.tconst[name] = self._tuple(info, name)
            return
        s = g.slots.get(name)
        if s is None:
            return
        n = len(s)
        kind = info.kind
        false = np.zeros(n, dtype=bool)
        ins = [i for i in info.inputs if g.slots.get(i) is not None or i in g.tuples]
        if kind == "param":
            rows = _rows(self.values[name], g.axes[name], n)
            self.const[name] = (rows == rows[:1]).all(0).cpu().numpy()
            return
        if kind in ("input", "opaque", "output", "other", "mixed"):
            self.const[name] = false
            return
        if kind == "pointwise" and info.inputs and info.inputs[0] in g.tuples:
            item = node.args[1]
            c = self.tconst.get(info.inputs[0], [])
            self.const[name] = (
                c[item] if isinstance(item, int) and c and c[item] is not None else false
            )
            return
        if kind == "producer" and info.inputs:
            self.const[name] = self._producer(info.detail["producer"], info.inputs[0])
            return
        if not ins:
            self.const[name] = false
            return
        if kind == "depthwise":
            spec: Producer = info.detail["producer"]
            w = producer_weight(g.gm, spec)
            mult = w.shape[0] // len(self.const[ins[0]]) if len(self.const[ins[0]]) else 1
            xc = self.const[ins[0]].copy()
            if spec.zero_padded and xc.any():
                xc &= self.value_of(ins[0]) == 0
            wz = w.flatten(1).abs().sum(1).cpu().numpy() == 0
            self.const[name] = np.repeat(xc, mult) | wz
            return
        if kind in ("norm", "pointwise", "reduce"):
            self.const[name] = self._per_channel(info, ins[0], n)
            return
        if kind == "layout":
            gather = info.detail.get("gather")
            xc = self.const[ins[0]]
            self.const[name] = xc[gather] if gather is not None and len(gather) == n else false
            return
        if kind == "cat":
            parts = [self.const[i] for i in info.inputs if i in self.const]
            if len(parts) != len(info.inputs):
                self.const[name] = false
            elif info.detail.get("along_channels"):
                self.const[name] = np.concatenate(parts)
            else:
                self.const[name] = np.logical_and.reduce(parts)
            return
        if kind == "binary":
            self.const[name] = self._binary(node, info, n)
            return
        if kind == "contract":
            self.const[name] = self._contract(info, n)
            return
        self.const[name] = false

    def _tuple(self, info: Any, name: str) -> list[np.ndarray | None]:
        g = self.g
        items = g.tuples[name]
        if info.kind == "attention":
            inner = info.detail["inner"]
            v = info.detail["value"]
            spec = Producer(info.module, "in_proj_weight", None, "linear")
            w = producer_weight(g.gm, spec)
            e = w.shape[0] // 3
            xc = self.const.get(v, np.zeros(w.shape[1], dtype=bool))
            self.const[inner] = self._rows_const(w[2 * e :], xc, v, False)
            return [self._producer(info.detail["producer"], inner), None]
        gathers = info.detail.get("gathers")
        x = info.inputs[0] if info.inputs else None
        xc = self.const.get(x) if x is not None else None
        out: list[np.ndarray | None] = []
        for k, it in enumerate(items):
            if it is None or it[0] is None or xc is None or gathers is None:
                out.append(
                    None if it is None or it[0] is None else np.zeros(len(it[0]), dtype=bool)
                )
                continue
            out.append(xc[gathers[k]])
        return out

    def _rows_const(
        self, w: Tensor, xc: np.ndarray, x: str, padded: bool, groups: int = 1
    ) -> np.ndarray:
        """Output rows of weight ``w`` (out, in / groups, *k) that are constant given input
        constness ``xc``."""
        wabs = w.abs().flatten(2).sum(2) if w.dim() > 2 else w.abs()  # (out, in / groups)
        wabs = wabs.double().cpu().numpy()
        out, a = wabs.shape
        if groups > 1:
            grp = np.arange(out) // (out // groups)
            xcg = xc.reshape(groups, a)[grp]
        else:
            xcg = np.broadcast_to(xc, (out, a))
        varin = (wabs * ~xcg).sum(1) != 0
        if padded and xc.any():  # a non-zero constant is not constant at the borders
            cin = xc & (self.value_of(x) == 0)
            cing = cin.reshape(groups, a)[grp] if groups > 1 else np.broadcast_to(cin, (out, a))
            varin |= (wabs * ~cing).sum(1) != 0
        return ~varin

    def _producer(self, spec: Producer, x: str) -> np.ndarray:
        w = producer_weight(self.g.gm, spec)
        xc = self.const_of(x, w.shape[1] * spec.groups)
        padded = spec.kind == "convt" or (spec.kind == "conv" and spec.zero_padded)
        return self._rows_const(w, xc, x, padded, spec.groups)

    def _per_channel(self, info: Any, x: str, n: int) -> np.ndarray:
        g = self.g
        xc = self.const[x]
        if info.detail.get("padded_avg", False) and xc.any():
            xc = xc & (self.value_of(x) == 0)
        if "pad_value" in info.detail and xc.any():
            xc = xc & (self.value_of(x) == info.detail["pad_value"])
        xc = xc.copy() if len(xc) == n else np.zeros(n, dtype=bool)
        if info.kind == "norm":  # a zero scale makes the output the shift, whatever the input
            for mod, p in info.detail.get("params", []):
                if p == "weight":
                    w = getattr(g.gm.get_submodule(mod), p, None)
                    if w is not None:
                        xc |= w.detach().cpu().numpy() == 0
        return xc

    def _binary(self, node: torch.fx.Node, info: Any, n: int) -> np.ndarray:
        g = self.g
        aligned = list(info.detail.get("aligned", []))
        others = [a.name for a in node.all_input_nodes if a.name not in aligned]
        op = info.detail.get("op")
        if op == "mask":
            return np.zeros(n, dtype=bool)
        parts = [self.const[i] for i in aligned if i in self.const and len(self.const[i]) == n]
        c = np.logical_and.reduce(parts) if parts else np.ones(n, dtype=bool)
        for i in others:
            if i in g.tuples or i not in self.values:  # a scalar: the same for all channels
                continue
            if not self.uniform(i):
                c = np.zeros(n, dtype=bool)
        if op == "mul":  # a zero factor makes the product zero
            for i in aligned:
                if i in self.const and len(self.const[i]) == n:
                    c = c | self.zero(i)
            for i in others:
                if (
                    i in self.values
                    and self.uniform(i)
                    and not bool(self.values[i].reshape(-1)[:1].any())
                ):
                    c = np.ones(n, dtype=bool)
        return c

    def _contract(self, info: Any, n: int) -> np.ndarray:
        """Constant and zero output entries of a matmul / einsum / attention."""
        contrib = info.detail.get("contrib", [])
        stochastic = info.detail.get("stochastic")
        const = np.ones(n, dtype=bool)
        zero = np.zeros(n, dtype=bool)
        for k, (name, idx) in enumerate(contrib):
            if idx is None:
                ok = self.uniform(name)
                if not ok and k != stochastic:
                    const[:] = False
                if ok and not bool(self.values[name].reshape(-1)[:1].any()):
                    zero[:] = True
                continue
            c = self.const.get(name)
            if c is None:
                const[:] = False
                continue
            if k != stochastic:
                const &= c[idx].all(1)
            zero |= self.zero(name)[idx].all(1)
        return const | zero
