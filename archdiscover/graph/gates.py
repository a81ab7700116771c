"""Gated connections: scalar parameters that scale a whole tensor.

A *gate* is a product ``g * x`` (``operator.mul``, ``torch.mul`` or ``.mul()``) in a traced
graph where ``x`` depends on the model input and ``g`` is a single number computed from
parameters only (no path from an input): ``self.skips[k] * x`` in a skip-gated supernet, a
ReZero / layer-scale scalar, ... Each gate is one candidate *connection*: with ``g = 0``
exactly the product is zero whatever the input, and the connection does not exist.

* :func:`parameter_only` -- the nodes of an fx graph whose value depends on no input;
* :func:`find_gates` -- every gate of a traced graph (shapes from shape propagation), with
  the parameter and element it reads;
* :func:`gate_parameters` -- the parameters that gates read (what a regularizer recipe puts
  in its own param group);
* :func:`drop_gated_terms` -- rewrite ``a + g * x`` to ``a`` for chosen gates (the graph
  with those connections removed; :mod:`archdiscover.compiler.topology` does the rest).

This module depends on torch.fx only (no channel slots), so the tracer can use it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

__all__ = [
    "ADD_TARGETS",
    "MUL_TARGETS",
    "Gate",
    "drop_gated_terms",
    "find_gates",
    "gate_parameters",
    "is_add",
    "is_mul",
    "parameter_only",
]

MUL_TARGETS = {operator.mul, operator.imul, torch.mul}
ADD_TARGETS = {operator.add, operator.iadd, torch.add}


def is_mul(node: torch.fx.Node) -> bool:
    """``node`` is a product of two operands (``a * b``, ``torch.mul``, ``a.mul(b)``)."""
    if node.op == "call_function":
        return node.target in MUL_TARGETS and len(node.args) == 2 and not node.kwargs
    return node.op == "call_method" and node.target in ("mul", "mul_") and len(node.args) == 2


def is_add(node: torch.fx.Node) -> bool:
    """``node`` is a sum of two operands without ``alpha`` (``a + b``, ``torch.add``)."""
    if node.op == "call_function":
        return node.target in ADD_TARGETS and len(node.args) == 2 and not node.kwargs
    return node.op == "call_method" and node.target in ("add", "add_") and len(node.args) == 2


def parameter_only(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """The nodes whose value depends on no placeholder: parameters and buffers read with
    ``get_attr`` and everything computed from them alone (e.g. ``self.skips[k]``)."""
    out: set[torch.fx.Node] = set()
    for n in graph.nodes:
        if n.op == "get_attr":
            out.add(n)
        elif n.op in ("call_function", "call_method", "call_module"):
            ins = n.all_input_nodes
            if n.op != "call_module" and ins and all(i in out for i in ins):
                out.add(n)
    return out


def _shape(node: object) -> tuple[int, ...] | None:
    if not isinstance(node, torch.fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(d) for d in meta.shape)


@dataclass(frozen=True)
class Gate:
    """One gated connection ``node = factor * source`` of a traced graph.

    Attributes:
        node: the product's fx node name.
        factor: the fx node of the gate value (a single number, parameters only).
        source: the fx node of the gated tensor.
        param: the qualified name of the parameter the gate reads (``blocks.3.skips``), or
            None when the gate is computed otherwise (e.g. ``sigmoid(alpha)``).
        index: the element of ``param`` it reads (``skips[k]``), or None for a
            one-element parameter used whole.
    """

    node: str
    factor: str
    source: str
    param: str | None
    index: int | None

    @property
    def name(self) -> str:
        """``param[index]`` (or ``param``, or the product's node name)."""
        if self.param is None:
            return self.node
        return self.param if self.index is None else f"{self.param}[{self.index}]"


def _gate_param(factor: torch.fx.Node) -> tuple[str | None, int | None]:
    if factor.op == "get_attr":
        return str(factor.target), None
    if (
        factor.op == "call_function"
        and factor.target is operator.getitem
        and isinstance(factor.args[0], torch.fx.Node)
        and factor.args[0].op == "get_attr"
        and isinstance(factor.args[1], int)
        and not isinstance(factor.args[1], bool)
    ):
        return str(factor.args[0].target), int(factor.args[1])
    return None, None


def find_gates(gm: torch.fx.GraphModule) -> list[Gate]:
    """Every gate of ``gm``, in graph order. ``gm`` must carry shape-propagation metadata
    (:func:`archdiscover.graph.trace.trace` returns such a graph as ``.gm``)."""
    consts = parameter_only(gm.graph)
    gates = []
    for n in gm.graph.nodes:
        if not is_mul(n):
            continue
        a, b = n.args
        for factor, source in ((a, b), (b, a)):
            if not (isinstance(factor, torch.fx.Node) and isinstance(source, torch.fx.Node)):
                continue
            if factor not in consts or source in consts:
                continue
            fshape, sshape = _shape(factor), _shape(source)
            if fshape is None or math.prod(fshape) != 1 or sshape != _shape(n):
                continue
            param, index = _gate_param(factor)
            gates.append(Gate(n.name, factor.name, source.name, param, index))
            break
    return gates


def gate_parameters(model: nn.Module, example_inputs: object) -> dict[str, nn.Parameter]:
    """The parameters that gates of ``model`` read (each element is one connection), by
    qualified name; empty for a model without gates or one that cannot be traced."""
    from .trace import TraceError, trace

    try:
        g = trace(model, example_inputs)  # type: ignore[arg-type]
    except TraceError:
        return {}
    params = dict(model.named_parameters())
    out: dict[str, nn.Parameter] = {}
    for gate in find_gates(g.gm):
        if gate.param is not None and gate.param in params:
            out[gate.param] = params[gate.param]
    return out


def drop_gated_terms(gm: torch.fx.GraphModule, gates: Iterable[Gate]) -> list[Gate]:
    """Rewrite every ``a + g * x`` (either order) of the given gates to ``a``; returns the
    gates whose product then has no user left (their connection is gone). Products used
    otherwise (in a concatenation, as an output, ...) are left alone. Call
    ``gm.graph.eliminate_dead_code()`` and ``gm.recompile()`` afterwards."""
    nodes = {n.name: n for n in gm.graph.nodes}
    gone = []
    for gate in gates:
        prod = nodes.get(gate.node)
        if prod is None:
            continue
        for user in list(prod.users):
            if not is_add(user):
                continue
            lhs, rhs = user.args
            other = rhs if lhs is prod else lhs
            if (
                not isinstance(other, torch.fx.Node)
                or other is prod
                or _shape(other) != _shape(user)
            ):
                continue
            user.replace_all_uses_with(other)
            gm.graph.erase_node(user)
        if not prod.users:
            gone.append(gate)
    return gone
