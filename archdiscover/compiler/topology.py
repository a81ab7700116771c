"""Topology passes: connections whose gate is exactly zero go, the others fold where exact,
and layers that no longer reach the output go with everything that only feeds them.

A *gate* (:mod:`archdiscover.graph.gates`) is a product ``g * x`` with ``g`` one number
computed from parameters alone: one candidate connection. On a traced graph
(:func:`simplify`, run by :func:`archdiscover.compile` before the width passes):

1. **zero gates** -- with ``g == 0`` exactly the product is zero for every input, so
   ``a + g * x`` becomes ``a``, and a part ``g * x`` of a channel concatenation read only
   by Linear / Conv layers leaves the concatenation together with the consumers' input
   columns (channels) that read it. The connection is gone from the graph.
2. **folding** -- a non-zero gate whose product is read only by Linear / Conv /
   ConvTranspose layers (directly or through a channel concatenation) is multiplied into
   those layers' input columns, ``W (g x) = (g W) x`` (zero padding commutes with the
   scaling), and the product disappears; a gate of exactly 1 is dropped wherever it is.
   A gate added to other tensors (``a + g * x``) stays a multiplication: no layer reads
   it alone.
3. **depth** -- a Linear whose weight is entirely zero outputs its bias whatever its
   input: it becomes the constant ``bias.expand(batch, -1)`` (its weight shrinks to one
   zero column). Then every node whose output reaches no output any more is deleted (dead
   code), which removes each layer that only fed removed connections or constant layers,
   with everything that only fed it.

:func:`layer_graph` describes a model's topology for pictures and reports: its weight
layers (and the input and output) as nodes with their widths, and the connections between
them as edges, gated or not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx
import torch
import torch.fx
from torch import Tensor, nn

from .._inputs import Inputs, as_inputs
from ..graph import ops
from ..graph.gates import Gate, drop_gated_terms, find_gates
from ..graph.trace import ChannelGraph, shape_of, trace
from .analysis import ValueAnalysis

__all__ = [
    "Connection",
    "TopologyResult",
    "delete_unused_tensors",
    "layer_graph",
    "simplify",
    "summarize",
]

_LAYERS = (nn.Linear, *ops.CONV, *ops.CONV_TRANSPOSE)


@dataclass
class Connection:
    """One gated connection and what the compiler did with it.

    Attributes:
        gate: the gate's name (``blocks.3.skips[1]``: element 1 of that parameter).
        source: the weight layer (or ``input``) whose output the gate scales.
        targets: the weight layers (or ``output``) that read the gated tensor.
        value: the gate's value.
        status: ``removed`` (exactly zero: the connection is gone), ``folded`` (multiplied
            into its consumers' weights; the connection stays), ``kept`` (a multiplication
            in the compact graph) or ``dropped`` (non-zero, but it fed only layers that
            no longer reach the output, and went with them). A zero gate is ``kept`` only
            when its product feeds something the pass cannot rewrite (it computes zeros).
    """

    gate: str
    source: str
    targets: list[str]
    value: float
    status: str


@dataclass
class TopologyResult:
    """What :func:`simplify` changed."""

    connections: list[Connection] = field(default_factory=list)
    dropped_layers: list[str] = field(default_factory=list)
    constant_layers: list[str] = field(default_factory=list)
    changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "connections": [asdict(c) for c in self.connections],
            "dropped_layers": list(self.dropped_layers),
            "constant_layers": list(self.constant_layers),
        }


# ---------------------------------------------------------------------------------------------
# Layers and the connections between them
# ---------------------------------------------------------------------------------------------
def _layer_of(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str | None:
    """The layer name of a node that is a layer (a weight layer call, an input, the output)."""
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), _LAYERS):
        return str(node.target)
    if node.op == "placeholder":
        return "input" if _n_placeholders(gm) == 1 else f"input:{node.target}"
    if node.op == "output":
        return "output"
    return None


def _n_placeholders(gm: torch.fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "placeholder")


def _upstream(node: torch.fx.Node, gm: torch.fx.GraphModule, stop: set[str]) -> list[str]:
    """The layers whose outputs reach ``node`` without passing another layer or a gate
    product (``stop``)."""
    out: list[str] = []
    seen: set[torch.fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        name = _layer_of(n, gm)
        if name is not None:
            out.append(name)
            continue
        if n.name in stop and n is not node:
            continue
        stack.extend(n.all_input_nodes)
    return list(dict.fromkeys(out))


def _downstream(node: torch.fx.Node, gm: torch.fx.GraphModule, stop: set[str]) -> list[str]:
    """The layers (or ``output``) that read ``node`` without passing another layer or a
    gate product (``stop``)."""
    out: list[str] = []
    seen: set[torch.fx.Node] = set()
    stack = list(node.users)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        name = _layer_of(n, gm)
        if name is not None:
            out.append(name)
            continue
        if n.name in stop:
            continue
        stack.extend(n.users)
    return list(dict.fromkeys(out))


def _gate_value(gate: Gate, values: dict[str, Tensor]) -> float:
    v = values.get(gate.factor)
    return float(v.reshape(-1)[0]) if v is not None else math.nan


def layer_graph(model: nn.Module, example_inputs: Inputs) -> nx.DiGraph:
    """The topology of ``model``: weight layers as nodes, connections as edges.

    Nodes: ``input``, every Linear / Conv / ConvTranspose layer that is called (by module
    name), ``output``; attributes ``width`` (output features / channels; for ``input`` and
    ``output`` the channel count of the tensor, and ``shape``, one sample's shape as text),
    ``kind`` (``input``, ``layer``, ``output``) and ``type`` (the module class). Edges
    ``a -> b``: ``b`` reads ``a``'s output through operations without weights
    (activations, sums, concatenations, reshapes); a gated connection is an edge with
    attributes ``gate`` (its name) and ``value``, an ungated one has ``gate = None``.
    Several edges between the same pair are merged (``gates`` lists them all; one ungated
    path makes the edge ungated).
    """
    inputs = as_inputs(example_inputs)
    g = trace(model, inputs)
    gm = g.gm
    gates = find_gates(gm)
    from .analysis import capture

    values = capture(gm, inputs) if gates else {}
    stop = {gt.node for gt in gates}
    G = nx.DiGraph()
    for n in gm.graph.nodes:
        name = _layer_of(n, gm)
        if name is None:
            continue
        if n.op == "call_module":
            m = gm.get_submodule(n.target)
            width = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            G.add_node(name, width=int(width), kind="layer", type=type(m).__name__)
        else:
            src = n if n.op == "placeholder" else n.args[0]
            shape = shape_of(src) if isinstance(src, torch.fx.Node) else None
            ax = g.axis.get(src.name, 1) if isinstance(src, torch.fx.Node) else 1
            width = shape[ax] if shape is not None and len(shape) > ax else 0
            kind = "input" if n.op == "placeholder" else "output"
            sample = "x".join(str(d) for d in shape[1:]) if shape is not None else ""
            G.add_node(name, width=int(width), kind=kind, type=kind, shape=sample)

    def edge(a: str, b: str, gate: str | None, value: float | None) -> None:
        if G.has_edge(a, b):
            d = G.edges[a, b]
            if gate is not None:
                d["gates"].append(gate)
                if d["gate"] is None:
                    d["gate"], d["value"] = gate, value
            else:
                d["gate"], d["value"] = None, None  # an ungated path makes it ungated
            return
        G.add_edge(a, b, gate=gate, value=value, gates=[gate] if gate else [])

    nodes = {n.name: n for n in gm.graph.nodes}
    for n in gm.graph.nodes:
        a = _layer_of(n, gm)
        if a is None or n.op == "output":
            continue
        for b in _downstream(n, gm, stop):
            edge(a, b, None, None)
    for gt in gates:
        prod = nodes[gt.node]
        for a in _upstream(nodes[gt.source], gm, stop):
            for b in _downstream(prod, gm, stop):
                edge(a, b, gt.name, _gate_value(gt, values))
    return G


# ---------------------------------------------------------------------------------------------
# The pass
# ---------------------------------------------------------------------------------------------
def _single_call(g: ChannelGraph, node: torch.fx.Node) -> nn.Module | None:
    """The weight layer ``node`` calls, if it is one called exactly once."""
    if node.op != "call_module":
        return None
    m = g.gm.get_submodule(node.target)
    if not isinstance(m, _LAYERS) or len(g.calls.get(str(node.target), [])) != 1:
        return None
    if isinstance(m, (*ops.CONV, *ops.CONV_TRANSPOSE)) and m.groups != 1:
        return None
    return m


def _in_dim(m: nn.Module) -> int:
    """The dim of ``m.weight`` that indexes input features / channels."""
    return 0 if isinstance(m, ops.CONV_TRANSPOSE) else 1


def _channel_cat(node: torch.fx.Node) -> list[torch.fx.Node] | None:
    """The parts of a concatenation along the channel dim (dim 1, or the last dim of a
    2-D tensor), or None."""
    is_cat = (node.op == "call_function" and node.target in ops.CAT_FUNCTIONS) or (
        node.op == "call_method" and node.target == "cat"
    )
    if not is_cat:
        return None
    seq = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    shape = shape_of(node)
    if not isinstance(seq, (list, tuple)) or not isinstance(dim, int) or shape is None:
        return None
    if len(shape) < 2 or dim % len(shape) != 1:
        return None
    if not all(isinstance(p, torch.fx.Node) and shape_of(p) is not None for p in seq):
        return None
    return list(seq)


def _readers(g: ChannelGraph, node: torch.fx.Node) -> list[tuple[nn.Module, torch.fx.Node]] | None:
    """The weight layers reading ``node`` (a channel concatenation) directly along its
    dim 1, each called once, if those are all of its users (else None): a Linear on a 2-D
    tensor, a convolution on an image batch."""
    shape = shape_of(node)
    out = []
    for u in node.users:
        m = _single_call(g, u)
        if m is None or shape is None or (isinstance(m, nn.Linear) != (len(shape) == 2)):
            return None
        out.append((m, u))
    return out


def _offsets(parts: list[torch.fx.Node], part: torch.fx.Node) -> list[int]:
    """The channel indices that ``part`` occupies in the concatenation of ``parts``."""
    start = 0
    for p in parts:
        c = shape_of(p)[1]  # type: ignore[index]
        if p is part:
            return list(range(start, start + c))
        start += c
    raise KeyError(part.name)  # pragma: no cover - part is one of parts


@torch.no_grad()
def _drop_inputs(m: nn.Module, idx: list[int]) -> None:
    """Remove input features / channels ``idx`` from a weight layer."""
    dim = _in_dim(m)
    n = m.weight.shape[dim]
    keep = torch.tensor([i for i in range(n) if i not in set(idx)], device=m.weight.device)
    m.weight = nn.Parameter(m.weight.index_select(dim, keep).clone())
    if isinstance(m, nn.Linear):
        m.in_features = len(keep)
    else:
        m.in_channels = len(keep)


@torch.no_grad()
def _scale_inputs(m: nn.Module, idx: list[int], value: float) -> None:
    dim = _in_dim(m)
    index = torch.tensor(idx, device=m.weight.device)
    m.weight.index_copy_(dim, index, m.weight.index_select(dim, index) * value)


def _remove_zero(g: ChannelGraph, gate: Gate, prod: torch.fx.Node) -> bool:
    """Remove the connection of a zero gate; True when its product has no user left."""
    gm = g.gm
    drop_gated_terms(gm, [gate])
    for cat in [u for u in prod.users if _channel_cat(u) is not None]:
        parts = _channel_cat(cat)
        readers = _readers(g, cat)
        if not parts or readers is None or not readers or len(parts) < 2:
            continue
        idx = []
        for p in parts:
            if p is prod:
                idx += _offsets(parts, p)
        for m, _ in readers:
            _drop_inputs(m, idx)
        rest = [p for p in parts if p is not prod]
        if len(rest) == 1:
            cat.replace_all_uses_with(rest[0])
            gm.graph.erase_node(cat)
        else:
            args = list(cat.args)
            if args:
                args[0] = rest
                cat.args = tuple(args)
            else:
                cat.kwargs = {**cat.kwargs, "tensors": rest}
    return not prod.users


def _source(prod: torch.fx.Node, factor: str) -> torch.fx.Node:
    """The gated tensor of a product (its operand that is not the gate): the gate's
    ``source`` may have been replaced since the gates were found."""
    a, b = prod.args
    return b if isinstance(a, torch.fx.Node) and a.name == factor else a  # type: ignore[return-value]


def _fold(g: ChannelGraph, prod: torch.fx.Node, factor: str, value: float) -> list[str] | None:
    """Fold a non-zero gate into the layers that read its product; returns their names
    (empty for a gate of 1, dropped wherever it is), or None when it cannot be folded."""
    source = _source(prod, factor)
    if value == 1.0:
        prod.replace_all_uses_with(source)
        return []
    plan: list[tuple[nn.Module, list[int] | None]] = []
    names: list[str] = []
    for u in prod.users:
        m = _single_call(g, u)
        if m is not None:
            plan.append((m, None))
            names.append(str(u.target))
            continue
        parts = _channel_cat(u)
        readers = _readers(g, u) if parts is not None else None
        if parts is None or not readers or sum(p is prod for p in parts) != 1:
            return None
        for rm, ru in readers:
            plan.append((rm, _offsets(parts, prod)))
            names.append(str(ru.target))
    if not plan:
        return None
    for m, idx in plan:
        if idx is None:
            with torch.no_grad():
                m.weight.mul_(value)
        else:
            _scale_inputs(m, idx, value)
    prod.replace_all_uses_with(source)
    return names


def _constant_linears(g: ChannelGraph) -> list[str]:
    """Replace each called-once Linear whose weight is all zero (on a 2-D input whose batch
    is the model input's) by ``bias.expand(batch, -1)``; returns their names."""
    gm = g.gm
    places = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not places or shape_of(places[0]) is None:
        return []
    batch = shape_of(places[0])[0]  # type: ignore[index]
    done = []
    for n in list(gm.graph.nodes):
        m = _single_call(g, n)
        if not isinstance(m, nn.Linear) or m.bias is None or bool(m.weight.any()):
            continue
        x = n.args[0] if n.args else None
        xs = shape_of(x)
        if xs is None or len(xs) != 2 or xs[0] != batch:
            continue
        with gm.graph.inserting_before(n):
            size = gm.graph.call_method("size", (places[0], 0))
            bias = gm.graph.get_attr(f"{n.target}.bias")
            const = gm.graph.call_method("expand", (bias, size, -1))
        n.replace_all_uses_with(const)
        gm.graph.erase_node(n)
        with torch.no_grad():
            m.weight = nn.Parameter(m.weight.new_zeros(m.out_features, 1))
        m.in_features = 1
        done.append(str(n.target))
    return done


def delete_unused_tensors(gm: torch.fx.GraphModule) -> None:
    """Delete the parameters and buffers no node uses any more (e.g. the gates of a block
    whose connections all went): neither read by ``get_attr`` nor owned by a called module.
    The compact model's state dict then holds only what it computes with."""
    called = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    read = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}

    def inside_called(owner: str) -> bool:
        parts = owner.split(".") if owner else []
        return any(".".join(parts[:i]) in called for i in range(1, len(parts) + 1))

    names = [n for n, _ in gm.named_parameters()] + [n for n, _ in gm.named_buffers()]
    for name in names:
        owner, _, attr = name.rpartition(".")
        if name in read or inside_called(owner):
            continue
        delattr(gm.get_submodule(owner) if owner else gm, attr)


def simplify(g: ChannelGraph, a: ValueAnalysis) -> TopologyResult:
    """Remove zero-gated connections, fold gates where exact, drop what no longer reaches
    the output (see the module doc). Rewrites ``g.gm`` in place (its submodules too);
    re-trace it afterwards when ``changed``."""
    gm = g.gm
    gates = find_gates(gm)
    res = TopologyResult()
    stop = {gt.node for gt in gates}
    nodes = {n.name: n for n in gm.graph.nodes}
    ends = {
        gt.node: (
            (_upstream(nodes[gt.source], gm, stop) or ["?"])[0],
            _downstream(nodes[gt.node], gm, stop),
        )
        for gt in gates
    }
    before = {str(n.target) for n in gm.graph.nodes if _layer_of(n, gm) and n.op == "call_module"}
    folded_into: dict[str, list[str]] = {}
    for gt in gates:
        value = _gate_value(gt, a.values)
        prod = nodes[gt.node]
        if value == 0.0:
            status = "removed" if _remove_zero(g, gt, prod) else "kept"
        else:
            into = _fold(g, prod, gt.factor, value)
            status = "kept" if into is None else "folded"
            folded_into[gt.name] = into or []
        src, targets = ends[gt.node]
        res.connections.append(Connection(gt.name, src, targets, value, status))
    res.constant_layers = _constant_linears(g)
    changed = any(c.status != "kept" for c in res.connections) or bool(res.constant_layers)
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
        gm.delete_all_unused_submodules()
        delete_unused_tensors(gm)
        alive = {n.name for n in gm.graph.nodes}
        after = {
            str(n.target) for n in gm.graph.nodes if _layer_of(n, gm) and n.op == "call_module"
        }
        res.dropped_layers = sorted(before - after - set(res.constant_layers))
        for c, gt in zip(res.connections, gates, strict=True):  # went with their layers
            into = folded_into.get(c.gate)
            if c.status == "kept" and c.value != 0.0 and gt.node not in alive:
                c.status = "dropped"
            elif c.status == "folded" and into and not set(into) & after:
                c.status = "dropped"
    res.changed = changed
    return res


def summarize(connections: Iterable[Connection | dict[str, Any]]) -> dict[str, int]:
    """Counts per status (``removed``, ``folded``, ``kept``, ``dropped``) and ``total``;
    the connections of the compact network are ``folded + kept``."""
    out = {"total": 0, "removed": 0, "folded": 0, "kept": 0, "dropped": 0}
    for c in connections:
        status = c["status"] if isinstance(c, dict) else c.status
        out[status] = out.get(status, 0) + 1
        out["total"] += 1
    return out
