"""Value analysis: which channels of which tensors are constant, and what constant.

Every channel of every tensor in the traced graph is classified *structurally* as constant
(its value is the same at every sample and position, whatever the input) or not:

* a Conv / ConvTranspose / Linear output channel is constant when its weights from
  non-constant inputs are all zero (a non-zero constant entering a zero-padded or
  transposed convolution is not constant at the borders, so it counts as non-constant);
* per-channel layers keep constants constant (a zero-padded average pool does not); a
  normalization with zero scale outputs its shift whatever its input;
* sums and products of constants are constant; a product with an exact zero is zero, a
  zero factor computed from parameters alone (a gate ``self.skips[k]``) included.

The value of a constant channel is then read from one forward pass on the example inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx
from torch import Tensor, nn

from ..graph import ops
from ..graph.gates import parameter_only
from ..graph.trace import ChannelGraph

__all__ = ["ValueAnalysis", "capture"]


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


def _first(v: Tensor, axis: int, n: int) -> np.ndarray:
    """The value of each channel at the first sample and position (float64 numpy)."""
    t = v.movedim(axis, -1).reshape(-1, n)[0] if v.dim() > 1 else v.reshape(-1)[:n]
    return t.double().cpu().numpy()


class ValueAnalysis:
    """Structural constness per channel of every node, with the constants' values.

    Attributes:
        g: the traced graph.
        values: each node's output on the example inputs.
        const: per node, a boolean per channel: structurally constant.
        zero_params: the nodes computed from parameters alone whose value is exactly zero
            (a zero gate: a product with one is zero).
    """

    def __init__(self, g: ChannelGraph, inputs: tuple[Tensor, ...]) -> None:
        self.g = g
        self.values = capture(g.gm, inputs)
        self.const: dict[str, np.ndarray] = {}
        self._val: dict[str, np.ndarray] = {}
        # values of parameters alone (no path from an input) that are exactly zero
        self.zero_params = {
            p.name
            for p in parameter_only(g.gm.graph)
            if p.name in self.values and not bool(self.values[p.name].any())
        }
        for node in g.gm.graph.nodes:
            self._visit(node)

    def value_of(self, name: str) -> np.ndarray:
        """Each channel's value of node ``name`` at the first sample and position (the value
        of the channels that are constant)."""
        if name not in self._val:
            s = self.g.slots[name]
            self._val[name] = _first(self.values[name], self.g.axis[name], len(s))
        return self._val[name]

    def zero_tensor(self, name: str) -> bool:
        """True when node ``name`` is structurally constant and exactly zero everywhere."""
        c = self.const.get(name)
        return c is not None and bool(c.all()) and not bool(self.values[name].any())

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
        if kind == "const":  # computed from parameters alone: the same for every input
            self.const[name] = np.ones(n, dtype=bool)
            return
        if kind in ("input", "opaque", "output", "other") or not ins:
            self.const[name] = false
            return
        if kind == "producer":
            self.const[name] = self._producer(info.module, ins[0])
            return
        if kind == "depthwise":
            m = g.gm.get_submodule(info.module)
            xc = self.const[ins[0]].copy()
            if ops.is_zero_padded(m):
                xc &= self.value_of(ins[0]) == 0
            wz = m.weight.detach().flatten(1).abs().sum(1).cpu().numpy() == 0
            self.const[name] = xc | wz
            return
        if kind in ("norm", "pointwise", "flatten", "reduce"):
            self.const[name] = self._per_channel(info, ins[0], n)
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
                    c = c | (self.const[i] & (self.value_of(i) == 0))
                if any(i in self.zero_params for i in info.inputs):  # a zero gate g * x
                    c = np.ones(n, dtype=bool)
            self.const[name] = c
            return
        self.const[name] = false

    def _producer(self, module: str | None, x: str) -> np.ndarray:
        m = self.g.gm.get_submodule(module)
        xc = self.const[x]
        transposed = isinstance(m, ops.CONV_TRANSPOSE)
        w = m.weight.detach()
        if transposed:
            w = w.transpose(0, 1)
        wabs = w.abs().flatten(2).sum(2) if w.dim() > 2 else w.abs()  # (out, in)
        wabs = wabs.double().cpu().numpy()
        varin = wabs[:, ~xc].sum(1) != 0
        cin = xc.copy()
        if transposed or (isinstance(m, ops.CONV) and ops.is_zero_padded(m)):
            cin &= self.value_of(x) == 0  # a nonzero constant is not constant at borders
        varin |= wabs[:, ~cin].sum(1) != 0
        return ~varin

    def _per_channel(self, info: Any, x: str, n: int) -> np.ndarray:
        g = self.g
        xc = self.const[x]
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
            xc = xc & (self.value_of(x) == 0)
        xc = xc.copy() if len(xc) == n else np.zeros(n, dtype=bool)
        if info.kind == "norm":  # a zero scale makes the output the shift, whatever the input
            m = g.gm.get_submodule(info.module)
            if getattr(m, "weight", None) is not None:
                xc |= m.weight.detach().cpu().numpy() == 0
        return xc
