"""Trace a model into a data-flow graph of *channel slots*.

A *channel slot* is one channel of one tensor in the traced graph (one feature of a Linear
output, one channel of a convolution output, one row of a parameter). The channels of a
tensor form a *grid* (:mod:`.layout`): usually one dim (dim 1 of ``(N, C, H, W)``, the last
of a channels-last ``(N, S, C)``), several after a reshape that splits the channel dim
(attention heads, a channel shuffle). Operations tie slots together:

* per-channel operations (BatchNorm, activations, pooling, dropout, stochastic depth in eval
  mode, a depthwise convolution) give their output the *same* slots as their input;
* a residual ``a + b`` (or ``*``, ``-``, ``/``, a per-channel parameter broadcast onto the
  stream) unifies the slots of its operands;
* ``torch.cat`` along the channels lays its inputs' slots side by side; along another dim
  it unifies them;
* reshapes, permutes and indexing move the grid (``flatten`` repeats each channel's slot
  ``H*W`` times, so a Linear after Flatten consumes ``H*W`` columns per channel);
* a Conv / ConvTranspose / Linear (a module, or ``F.linear`` / ``F.conv2d`` / ``x @ W`` on
  a parameter) *consumes* its input slots (its input-side weight slices) and *produces*
  fresh slots (output-side weight rows and bias); a grouped convolution couples the
  channel at the same position of every group, so every group keeps the same width;
* a product over a channel dim (``q @ k^T``, ``attn @ v``, ``einsum``,
  ``scaled_dot_product_attention``) couples everything that goes into one output entry:
  an attention head's queries, keys and values become one group;
* ``nn.MultiheadAttention`` is seen into (:mod:`.attention`): one group per head.

The connected components of "same slot" (found with networkx) are the coupled channel
groups (:mod:`archdiscover.graph.groups`). A component is *frozen* (cannot be removed) when
it reaches the model input or output (``boundary``), an operation that mixes channels
(``blocked``: LayerNorm over the channels, a reduction or softmax over them), or an
operation the tracer cannot see through (``unsupported``); the reason is recorded so
nothing is skipped silently.

Tracing uses :func:`torch.fx.symbolic_trace` (plus shape propagation on the example inputs);
where that fails (Python control flow on shapes, say), :func:`torch.export.export` traces the
model and :mod:`.export_trace` raises its ATen graph back to one over the model's own
modules. ``ChannelGraph.tracer`` says which ran. Torch-Pruning's dependency graph is not used
for grouping because it mis-groups concatenations whose inputs also feed other layers
(``cat([z, conv(z)])`` is coupled into one group there); its per-layer pruning functions do
the physical removal in :mod:`archdiscover.compiler`.
"""

from __future__ import annotations

import inspect as _inspect
import math
import operator
import string
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from .._inputs import Inputs, as_inputs
from . import layout, ops

__all__ = [
    "ChannelGraph",
    "Member",
    "NodeInfo",
    "Producer",
    "TraceError",
    "symbolic_trace",
    "trace",
]

BOUNDARY, BLOCKED, UNSUPPORTED = "boundary", "blocked", "unsupported"


class TraceError(RuntimeError):
    """The model cannot be traced (neither ``torch.fx`` nor ``torch.export`` can trace it)."""


@dataclass
class Producer:
    """A layer that makes new channels from its input's: which weight, how it is laid out.

    ``kind`` is ``linear`` (weight ``(out, in)``), ``conv`` (``(out, in / groups, *k)``),
    ``convt`` (``(in, out / groups, *k)``) or ``matmul`` (``x @ W``, weight ``(in, out)``).
    """

    module: str
    weight: str
    bias: str | None
    kind: str
    groups: int = 1
    zero_padded: bool = False


@dataclass
class NodeInfo:
    """How one fx node treats channels (what the compiler's value analysis reads).

    ``kind`` is one of ``input``, ``output``, ``param`` (a tensor attribute), ``producer``,
    ``depthwise``, ``norm``, ``pointwise``, ``layout`` (reshape / permute / index: the
    output channels are ``detail["gather"]`` of the input's), ``binary``, ``cat``,
    ``reduce``, ``contract`` (matmul, einsum, attention), ``mixed`` (each output channel
    depends on its input channel only, but is not constant when that is), ``opaque`` or
    ``other`` (no tensor output).
    """

    kind: str
    module: str | None = None
    inputs: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Member:
    """A parameter or buffer of a module, sliced along ``dim``, with the slot of each slice.

    ``role`` is ``out`` (produces the channel), ``norm`` (per-channel layer or parameter on
    it) or ``in`` (consumes it); ``node`` is the fx node calling the module, ``src`` the node
    feeding it. ``groups`` > 1 marks the input side of a grouped convolution (``slots`` are
    the positions within a group, the same in every group); ``rows`` restricts an input
    member to a block of weight rows (the query, key or value part of an attention
    projection).
    """

    module: str
    param: str
    dim: int
    slots: np.ndarray
    role: str
    node: str = ""
    src: str = ""
    groups: int = 1
    rows: tuple[int, int] | None = None


class ChannelGraph:
    """A traced model: fx graph, networkx view, channel slots and their components.

    Build it with :func:`trace`. Attributes:
        gm: the ``torch.fx.GraphModule`` (shares submodules with the traced model).
        tracer: ``"torch.fx"`` or ``"torch.export"``.
        nx: a ``networkx.DiGraph`` with one node per fx node (attributes ``op``, ``target``,
            ``kind``, ``module_type``, ``shape``, ``channels``) and data-flow edges carrying
            the source's channel count (``channels``).
        info: per fx node name, its :class:`NodeInfo`.
        slots: per fx node name, the slot id of each channel (its grid, flat; None for
            tensors without tracked channels and for non-tensors).
        axes: per fx node name, the dims its channel grid spans; ``axis`` the first.
        tuples: per tuple-valued node (a module returning several tensors, ``chunk``), the
            ``(slots, axes)`` of each element.
        shapes: per fx node name, its output shape from the example inputs.
        members: every sliced parameter (:class:`Member`).
        labels: per slot, its component (group label) after :meth:`finish`.
        frozen: per frozen label, ``(reason, unsupported)``.
        boundary: frozen labels that reach the model input or output (never removable).
        unsupported: ``(node, op, reason)`` for every operation that blocks channels (one
            that mixes them, or one the tracer could not see through).
        calls: per module name, the fx nodes that call it.
        sizes: per node, where its arguments hold sizes of channel dims (what the compiler
            rewrites after removing channels).
    """

    def __init__(self, gm: torch.fx.GraphModule, tracer: str = "torch.fx") -> None:
        self.gm = gm
        self.tracer = tracer
        self.info: dict[str, NodeInfo] = {}
        self.slots: dict[str, np.ndarray | None] = {}
        self.axis: dict[str, int] = {}
        self.axes: dict[str, tuple[int, ...]] = {}
        self.tuples: dict[str, list[tuple[np.ndarray | None, tuple[int, ...]] | None]] = {}
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        self.untracked: dict[str, tuple[str, str]] = {}
        self.members: list[Member] = []
        self.unsupported: list[tuple[str, str, str]] = []
        self.labels: np.ndarray = np.zeros(0, dtype=np.int64)
        self.frozen: dict[int, tuple[str, bool]] = {}
        self.boundary: set[int] = set()
        self.nx = nx.DiGraph()
        self.calls: dict[str, list[str]] = defaultdict(list)
        self.module_slots: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.sizes: dict[str, list[tuple[Any, ...]]] = {}
        self.grids: list[tuple[str, np.ndarray, tuple[int, ...]]] = []
        self.n_slots = 0
        self._pairs: list[np.ndarray] = []
        self._frozen: list[tuple[np.ndarray, str, str]] = []
        self._out_labels: dict[str, np.ndarray] | None = None

    # -- slot bookkeeping ---------------------------------------------------------------
    def new_slots(self, n: int) -> np.ndarray:
        """``n`` fresh slot ids."""
        s = np.arange(self.n_slots, self.n_slots + n, dtype=np.int64)
        self.n_slots += n
        return s

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        """Slots ``a[i]`` and ``b[i]`` are the same channel (or go together)."""
        a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
        if len(a):
            self._pairs.append(np.stack([a, b]))

    def couple(self, grid: np.ndarray, dims: Sequence[int]) -> None:
        """Entries of the slot array ``grid`` that differ only along ``dims`` go together."""
        for d in dims:
            first = np.take(grid, [0], axis=d)
            self.unify(grid, np.broadcast_to(first, grid.shape))

    def freeze(self, s: np.ndarray | None, reason: str, kind: str | bool) -> None:
        """The components of slots ``s`` cannot be removed, for ``reason``; ``kind`` is
        ``boundary`` (model input / output), ``blocked`` (an op that mixes channels) or
        ``unsupported`` (an op the tracer cannot see through)."""
        if isinstance(kind, bool):
            kind = UNSUPPORTED if kind else BOUNDARY
        if s is not None and len(s):
            self._frozen.append((np.asarray(s).reshape(-1), reason, kind))

    def _components(self) -> np.ndarray:
        same = nx.Graph()
        same.add_nodes_from(range(self.n_slots))
        if self._pairs:
            pairs = np.unique(np.concatenate(self._pairs, axis=1), axis=1)
            same.add_edges_from(zip(pairs[0].tolist(), pairs[1].tolist(), strict=True))
        labels = np.empty(self.n_slots, dtype=np.int64)
        # components in order of their smallest slot: labels follow the graph order
        comps = sorted((min(c), c) for c in nx.connected_components(same))
        for lab, (_, comp) in enumerate(comps):
            labels[list(comp)] = lab
        return labels

    def finish(self) -> None:
        """Label the components of "same slot" (networkx) and resolve the frozen ones.

        A grid over several dims (split channels) must lose whole rows: where its labels
        still vary along more than one dim, they are coupled along all but the one the
        split left free (computed sizes before literal ones, then the largest).
        """
        for _ in range(64):
            self.labels = self._components()
            changed = False
            for _node, grid, pref in self.grids:
                lab = self.labels[grid]
                vary = [d for d in range(lab.ndim) if _varies(lab, d)]
                if len(vary) > 1:
                    keep = max(vary, key=lambda d: (pref[d], lab.shape[d]))
                    self.couple(grid, [d for d in vary if d != keep])
                    changed = True
            if not changed:
                break
        frozen: dict[int, tuple[str, bool]] = {}
        rank = {BOUNDARY: 0, BLOCKED: 1, UNSUPPORTED: 2}
        best: dict[int, int] = {}
        boundary: set[int] = set()
        for s, reason, kind in self._frozen:
            for lab in np.unique(self.labels[s]).tolist():
                if kind == BOUNDARY:
                    boundary.add(lab)
                if lab not in frozen or rank[kind] > best[lab]:
                    frozen[lab] = (reason, kind == UNSUPPORTED)
                    best[lab] = rank[kind]
        self.frozen = frozen
        self.boundary = boundary
        self._out_labels = None

    def label(self, node: str) -> np.ndarray | None:
        """The group label of each channel of ``node``'s output (None without channels)."""
        s = self.slots.get(node)
        return None if s is None else self.labels[s]

    def producer_modules(self) -> list[str]:
        """Modules that produce channels (Conv, ConvTranspose, Linear), in graph order."""
        return list(self._outs())

    def out_labels(self, module: str) -> np.ndarray:
        """Group label of each output channel of a producing module."""
        outs = self._outs()
        if module not in outs:
            raise KeyError(f"{module!r} is not a channel-producing layer of the traced graph")
        return outs[module]

    def _outs(self) -> dict[str, np.ndarray]:
        if self._out_labels is None:
            outs: dict[str, np.ndarray] = {}
            for m in self.members:
                if m.role == "out" and m.module not in outs and not m.param.endswith("bias"):
                    outs[m.module] = self.labels[m.slots]
            self._out_labels = outs
        return self._out_labels

    def node(self, name: str) -> torch.fx.Node:
        """The fx node called ``name``."""
        for n in self.gm.graph.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Tracing
# ---------------------------------------------------------------------------------------------
def symbolic_trace(model: nn.Module) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace`` with a clear :class:`TraceError` naming the model."""
    if isinstance(model, torch.fx.GraphModule):
        return model
    from .fx_tracer import fx_trace

    try:
        return fx_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, AttributeError, ...
        raise TraceError(
            f"cannot trace {type(model).__name__} with torch.fx: {type(e).__name__}: {e}. "
            "archdiscover's compiler needs a forward without Python control flow on tensor "
            "values; move such logic out of forward or wrap it in a leaf module."
        ) from e


def _graph_module(model: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[torch.fx.GraphModule, str]:
    """fx's graph of ``model`` (in eval mode), else ``torch.export``'s raised to its modules."""
    try:
        return symbolic_trace(model), "torch.fx"
    except TraceError as fx_error:
        from .export_trace import export_graph

        try:
            return export_graph(model, inputs), "torch.export"
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise TraceError(
                f"{fx_error} torch.export could not trace it either: {type(e).__name__}: {first}"
            ) from e


def trace(model: nn.Module, example_inputs: Inputs) -> ChannelGraph:
    """Trace ``model`` on ``example_inputs`` into a :class:`ChannelGraph`.

    The model is traced in eval mode (dropout and stochastic depth are the identity there,
    as in the compiled model) and is not modified: the graph shares its submodules, every
    submodule's training flag is restored, and the one forward pass that records shapes
    runs under ``torch.no_grad``.
    """
    inputs = as_inputs(example_inputs)
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        gm, tracer = _graph_module(model, inputs)
        flags |= {m: m.training for m in gm.modules() if m not in flags}
        gm.eval()  # no BatchNorm statistics update, no dropout
        with torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except TraceError:
        raise
    except Exception as e:
        raise TraceError(
            f"running {type(model).__name__} on the example inputs failed during shape "
            f"propagation: {type(e).__name__}: {e}"
        ) from e
    finally:
        for m, flag in flags.items():
            m.training = flag
    g = ChannelGraph(gm, tracer)
    _SlotTracer(g).run()
    g.finish()
    _check_sizes(g)
    _build_nx(g)
    return g


def shape_of(node: Any) -> tuple[int, ...] | None:
    """The output shape shape propagation recorded for ``node`` (None for non-tensors)."""
    if not isinstance(node, torch.fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(d) for d in meta.shape)


def tuple_shapes(node: torch.fx.Node) -> list[tuple[int, ...] | None] | None:
    """Per element, the shape of a node whose output is a tuple of tensors (else None)."""
    meta = node.meta.get("tensor_meta")
    if not isinstance(meta, (tuple, list)):
        return None
    return [tuple(int(d) for d in m.shape) if hasattr(m, "shape") else None for m in meta]


def op_name(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    """A readable name of ``node``'s operation, e.g. ``Conv2d 'layer1.0.conv1'``."""
    if node.op == "call_module":
        return f"{type(gm.get_submodule(node.target)).__name__} '{node.target}'"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', str(node.target))}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    return f"{node.op} {node.target}"


def _arg(node: torch.fx.Node, i: int, key: str, default: Any) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(key, default)


def _owner(gm: torch.fx.GraphModule, target: str) -> tuple[str, str]:
    owner, _, attr = str(target).rpartition(".")
    return owner, attr


_ELEMENTWISE_KINDS = ("input", "pointwise")


class _SlotTracer:
    """Assign channel slots to every fx node, one method per kind of operation."""

    def __init__(self, g: ChannelGraph) -> None:
        self.g = g
        self.gm = g.gm
        self.modules = dict(self.gm.named_modules())

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.visit(node)

    # -- per-node state ------------------------------------------------------------------
    def visit(self, node: torch.fx.Node) -> None:
        self.node = node
        self.shape = shape_of(node)
        self.g.shapes[node.name] = self.shape
        out: list[torch.fx.Node] = []
        torch.fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n) or n)
        self.targs = [n for n in out if shape_of(n) is not None]
        if node.op in ("placeholder", "output", "get_attr"):
            getattr(self, node.op)()
        elif (
            node.op == "call_function"
            and node.target is operator.getitem
            and isinstance(node.args[0], torch.fx.Node)
            and node.args[0].name in self.g.tuples
        ):
            self.tuple_item()
        elif self.shape is None and tuple_shapes(node) is None:
            self.set_out(None)  # x.size(), x.shape, ...: no channels flow through
            self.info("other")
        elif node.op == "call_module":
            self.call_module(self.modules[str(node.target)])
        elif node.op in ("call_function", "call_method"):
            self.call_function()
        else:  # pragma: no cover - fx has no other node kinds
            self.opaque("unknown node kind")

    def info(
        self, kind: str, module: str | None = None, inputs: list[str] | None = None
    ) -> NodeInfo:
        ins = [a.name for a in self.targs] if inputs is None else inputs
        self.g.info[self.node.name] = NodeInfo(kind, module, ins)
        return self.g.info[self.node.name]

    def set_out(
        self,
        slots: np.ndarray | None,
        axes: int | Sequence[int] = 1,
        untracked: tuple[str, str] | None = None,
    ) -> None:
        name = self.node.name
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        if slots is None or not axes:
            slots, axes = None, ()
            self.g.untracked[name] = untracked or ("a tensor without tracked channels", BOUNDARY)
        self.g.slots[name] = slots
        self.g.axes[name] = axes
        self.g.axis[name] = axes[0] if axes else 1

    def lay(self, node: Any) -> tuple[np.ndarray | None, tuple[int, ...]]:
        """The channel slots and grid dims of an argument node."""
        if not isinstance(node, torch.fx.Node):
            return None, ()
        return self.g.slots.get(node.name), self.g.axes.get(node.name, ())

    def why(self, node: torch.fx.Node) -> tuple[str, str]:
        return self.g.untracked.get(node.name, ("a tensor without tracked channels", BOUNDARY))

    def pass_through(self, x: torch.fx.Node, kind: str = "pointwise") -> None:
        xs, xa = self.lay(x)
        self.info(kind, inputs=[x.name])
        self.set_out(xs, xa, self.g.untracked.get(x.name))

    def channels_of(self, x: torch.fx.Node, dim: int) -> np.ndarray | None:
        """The slots along dim ``dim`` of ``x`` (fresh frozen ones for a tensor whose channels
        are not tracked), or None when the grid is elsewhere."""
        xs, xa = self.lay(x)
        shape = shape_of(x)
        assert shape is not None
        dim = dim % len(shape)
        if xs is None:
            reason, kind = self.why(x)
            s = self.g.new_slots(shape[dim])
            self.g.freeze(s, reason, kind)
            return s
        if xa != (dim,):
            return None
        return xs

    def opaque(self, reason: str, kind: str = UNSUPPORTED) -> None:
        """Channels through this op cannot be followed: freeze its inputs; its output's
        channels are untracked (frozen where a layer consumes them)."""
        g, node = self.g, self.node
        op = op_name(node, self.gm)
        text = f"{reason} ({op})"
        if kind != BOUNDARY and _only_reaches_output(node, self.gm):
            # e.g. an Unflatten before the output: these channels are output channels anyway
            text, kind = f"model output (through {op})", BOUNDARY
        for a in self.targs:
            g.freeze(g.slots.get(a.name), text, kind)
        for a in _tuple_args(node, g):
            for s, _ in a:
                g.freeze(s, text, kind)
        if kind != BOUNDARY:
            g.unsupported.append((node.name, op, reason))
        self.info("opaque", node.target if node.op == "call_module" else None)
        self.set_out(None, (), (text, kind))
        if tuple_shapes(node) is not None and self.shape is None:
            g.tuples[node.name] = [None] * len(tuple_shapes(node) or [])

    def block(self, reason: str) -> None:
        """A known operation that mixes channels (LayerNorm over them, a softmax over them)."""
        self.opaque(reason, BLOCKED)

    # -- graph boundaries -----------------------------------------------------------------
    def placeholder(self) -> None:
        self.set_out(None, (), ("model input", BOUNDARY))
        self.info("input", inputs=[])

    def output(self) -> None:
        for a in self.targs:
            self.g.freeze(self.g.slots.get(a.name), "model output", BOUNDARY)
        for a in _tuple_args(self.node, self.g):
            for s, _ in a:
                self.g.freeze(s, "model output", BOUNDARY)
        self.set_out(None)
        self.info("output")

    def get_attr(self) -> None:
        """A tensor attribute (a parameter or buffer used directly in forward): its slots lie
        along its last dim of size > 1 (a per-channel scale ``(C, 1, 1)``, a class token
        ``(1, 1, C)``, a position embedding ``(1, S, C)``); a member slices it there."""
        shape = self.shape
        self.info("param", inputs=[])
        if shape is None or not shape or all(d == 1 for d in shape):
            self.set_out(None, (), ("a scalar tensor attribute", BOUNDARY))
            return
        dim = max(i for i, d in enumerate(shape) if d > 1)
        s = self.g.new_slots(shape[dim])
        owner, attr = _owner(self.gm, self.node.target)
        self.g.members.append(Member(owner, attr, dim, s, "norm", self.node.name, self.node.name))
        self.set_out(s, dim)

    def tuple_item(self) -> None:
        src, i = self.node.args[0], self.node.args[1]
        items = self.g.tuples[src.name]
        self.info("pointwise", inputs=[src.name])
        if not isinstance(i, int) or not -len(items) <= i < len(items) or items[i] is None:
            self.set_out(None, (), self.g.untracked.get(src.name))
            return
        s, a = items[i]
        self.set_out(s, a, self.g.untracked.get(src.name))

    def set_tuple(self, items: list[tuple[np.ndarray | None, tuple[int, ...]] | None]) -> None:
        self.g.tuples[self.node.name] = items
        self.g.slots[self.node.name] = None
        self.g.axes[self.node.name] = ()
        self.g.axis[self.node.name] = 1

    # -- modules --------------------------------------------------------------------------
    def add(
        self,
        module: str,
        param: str,
        dim: int,
        slots: np.ndarray,
        role: str,
        src: str = "",
        **kw: Any,
    ) -> None:
        self.g.members.append(Member(module, param, dim, slots, role, self.node.name, src, **kw))

    def call_module(self, mod: nn.Module) -> None:
        g, node, shape = self.g, self.node, self.shape
        target = str(node.target)
        if isinstance(mod, ops.ATTENTION_MODULES):
            from .attention import trace_multihead_attention

            trace_multihead_attention(self, mod)
            return
        if shape is None:
            self.opaque(f"{type(mod).__name__} returns several tensors")
            return
        if len(self.targs) != 1:
            self.opaque(f"module with {len(self.targs)} tensor inputs")
            return
        x = self.targs[0]
        xshape = shape_of(x)
        assert xshape is not None
        g.calls[target].append(node.name)
        if isinstance(mod, (*ops.CONV, *ops.CONV_TRANSPOSE)):
            spatial = {1: 1, 2: 2, 3: 3}[len(mod.kernel_size)]
            ch = 1 if len(xshape) == spatial + 2 else 0
            spec = Producer(
                target,
                "weight",
                "bias" if mod.bias is not None else None,
                "convt" if isinstance(mod, ops.CONV_TRANSPOSE) else "conv",
                mod.groups,
                ops.is_zero_padded(mod),
            )
            self.producer(x, ch, spec, mod.in_channels, mod.out_channels)
            return
        if isinstance(mod, nn.Linear):
            spec = Producer(target, "weight", "bias" if mod.bias is not None else None, "linear")
            self.producer(x, len(xshape) - 1, spec, mod.in_features, mod.out_features)
            return
        xs, xa = self.lay(x)
        if isinstance(mod, ops.NORM) or (
            isinstance(mod, ops.GROUP_NORM) and mod.num_groups == mod.num_channels
        ):
            ch = 1 if len(xshape) > 1 else 0
            if xs is not None and xa != (ch,):
                self.opaque("normalization over a dimension that is not the channel dimension")
                return
            params = [
                p
                for p in ("weight", "bias", "running_mean", "running_var")
                if isinstance(getattr(mod, p, None), Tensor)
            ]
            self.norm(x, ch, [(target, p) for p in params], target)
            return
        if isinstance(mod, ops.GROUP_NORM):
            size = mod.num_channels // mod.num_groups
            self.norm_over(x, [1], f"GroupNorm normalizes groups of {size} channels together")
            return
        if isinstance(mod, ops.BLOCKING_NORMS):
            n = len(mod.normalized_shape)
            self.norm_over(
                x,
                list(range(len(xshape) - n, len(xshape))),
                f"{type(mod).__name__} normalizes over the channels",
            )
            return
        if isinstance(mod, nn.PReLU):
            if mod.num_parameters > 1:
                ch = 1 if len(xshape) > 1 else 0
                if xs is not None and xa != (ch,):
                    self.opaque("PReLU over a dimension that is not the channel dimension")
                    return
                self.norm(x, ch, [(target, "weight")], target, kind="pointwise")
                return
            self.pass_through(x)
            return
        if isinstance(mod, nn.Flatten):
            self.reshape(x, [("auto", None)] * len(shape))
            return
        if isinstance(mod, nn.Unflatten):
            self.reshape(x, None)
            return
        if isinstance(mod, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            self.softmax(x, mod.dim)
            return
        if isinstance(mod, nn.ChannelShuffle):
            self.shuffle(x, mod.groups)
            return
        if isinstance(mod, nn.GLU):
            self.glu(x, mod.dim)
            return
        if isinstance(mod, ops.PAD_MODULES):
            value = getattr(mod, "value", None)
            zero_like = type(mod).__name__.startswith(("Zero", "Constant"))
            self.pad(x, len(mod.padding) // 2, float(value or 0.0) if zero_like else None)
            return
        if isinstance(mod, ops.SPATIAL_MODULES):
            self.spatial(x, len(shape) - 2 if len(shape) > 2 else 1)
            return
        if isinstance(mod, ops.PER_CHANNEL_MODULES):
            self.pass_through(x)
            return
        self.opaque(f"{type(mod).__name__} is not known to act on each channel separately")

    def producer(self, x: torch.fx.Node, ch: int, spec: Producer, cin: int, cout: int) -> None:
        """A Conv / ConvTranspose / Linear (module or functional) reading the channels of
        ``x`` along dim ``ch``: members on its weight (and bias) and fresh output slots."""
        g, node = self.g, self.node
        target = spec.module
        xshape = shape_of(x)
        assert xshape is not None and self.shape is not None
        ch %= len(xshape)
        xs, xa = self.lay(x)
        info = self.info("producer", target if node.op == "call_module" else None, [x.name])
        info.detail["producer"] = spec
        if xs is not None and xa != (ch,):
            if ch == len(xshape) - 1 and spec.kind in ("linear", "matmul") and ch not in xa:
                # a Linear along a dim without channels acts on every channel alike
                info.kind = "mixed"
                info.detail.pop("producer")
                self.set_out(xs, xa)
                return
            what = "convolution" if spec.kind in ("conv", "convt") else "Linear"
            self.opaque(f"{what} over a tensor whose channels are not on dim {ch}")
            return
        xs = self.channels_of(x, ch)
        assert xs is not None
        first = g.module_slots.get(target) if node.op == "call_module" else None
        groups = spec.groups
        w_in = 1 if spec.kind in ("conv", "linear") else 0
        w_out = 1 - w_in
        if spec.kind == "convt" and groups != 1:
            self.opaque(f"grouped transposed convolution (groups={groups})")
            return
        if groups > 1 and cin // groups == 1:
            # each group reads one channel: a depthwise conv (multiplier cout / cin); a
            # group goes with its input channel, whole
            mult = cout // cin
            out = np.repeat(xs, mult)
            info.kind = "depthwise"
            self.add(target, spec.weight, 0, out, "norm", x.name)
            if spec.bias is not None:
                self.add(target, spec.bias, 0, out, "norm", x.name)
            if first is not None:
                g.unify(first[0], xs)
            g.module_slots.setdefault(target, (xs, out))
            self.set_out(out, ch)
            return
        if groups > 1:
            a, b = cin // groups, cout // groups
            grid = xs.reshape(groups, a)
            g.couple(grid, [0])  # the same position in every group goes together
            fresh = g.new_slots(b)
            out = np.tile(fresh, groups)
            in_slots = grid[0]
        else:
            out = g.new_slots(cout)
            in_slots = xs
        if first is not None:  # one set of weights: a module called twice has the same slots
            if len(first[0]) == len(xs):
                g.unify(first[0], xs)
            g.unify(first[1], out)
        g.module_slots.setdefault(target, (xs, out))
        self.add(target, spec.weight, w_in, in_slots, "in", x.name, groups=groups)
        self.add(target, spec.weight, w_out, out, "out", x.name)
        if spec.bias is not None:
            self.add(target, spec.bias, 0, out, "out", x.name)
        self.set_out(out, len(self.shape) - 1 if spec.kind in ("linear", "matmul") else ch)

    def norm(
        self,
        x: torch.fx.Node,
        ch: int,
        params: list[tuple[str, str]],
        module: str | None,
        kind: str = "norm",
    ) -> None:
        """A per-channel layer with per-channel tensors ``params`` (module, name)."""
        xs = self.channels_of(x, ch)
        assert xs is not None
        g = self.g
        if module is not None and self.node.op == "call_module":
            first = g.module_slots.get(module)
            if first is not None and len(first[0]) == len(xs):
                g.unify(first[0], xs)
            g.module_slots.setdefault(module, (xs, xs))
        info = self.info(kind, module if self.node.op == "call_module" else None, [x.name])
        info.detail["params"] = params
        for mod, p in params:
            self.add(mod, p, 0, xs, "norm", x.name)
        self.set_out(xs, ch)

    def norm_over(self, x: torch.fx.Node, dims: list[int], reason: str) -> None:
        """A normalization over ``dims``: it blocks channels among them, and passes others."""
        xs, xa = self.lay(x)
        xshape = shape_of(x)
        assert xshape is not None
        dims = [d % len(xshape) for d in dims]
        if xs is not None and set(xa) & set(dims):
            self.block(reason)
            return
        self.pass_through(x, "mixed")

    def spatial(self, x: torch.fx.Node, k: int) -> None:
        """Pooling / upsampling over the last ``k`` dims."""
        xs, xa = self.lay(x)
        xshape = shape_of(x)
        assert xshape is not None and self.shape is not None
        nd = len(xshape)
        if xs is not None and (
            set(xa) & set(range(nd - k, nd))
            or len(self.shape) != nd
            or any(self.shape[a] != xshape[a] for a in xa)
        ):
            self.opaque("pooling over the channel dimension")
            return
        self.pass_through(x)
        node = self.node
        if node.op == "call_function" and node.target in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d):
            self.g.info[node.name].detail["padded_avg"] = _padded_avg(node)
        if node.op == "call_module":
            m = self.modules[str(node.target)]
            if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
                self.g.info[node.name].detail["padded_avg"] = bool(
                    m.count_include_pad and np.any(np.asarray(m.padding) != 0)
                )

    def pad(self, x: torch.fx.Node, k: int, value: float | None) -> None:
        """Padding of the last ``k`` dims with ``value`` (None: reflect / replicate /
        circular, which keep constant channels constant)."""
        xs, xa = self.lay(x)
        xshape = shape_of(x)
        assert xshape is not None
        nd = len(xshape)
        if xs is not None and set(xa) & set(range(nd - k, nd)):
            self.opaque("padding of the channel dimension")
            return
        self.pass_through(x)
        if value is not None:
            self.g.info[self.node.name].detail["pad_value"] = value

    # -- functions and methods --------------------------------------------------------------
    def call_function(self) -> None:
        node = self.node
        fn = node.target
        is_method = node.op == "call_method"
        name = fn if is_method else getattr(fn, "__name__", "")
        binary = ops.BINARY_METHODS.get(fn) if is_method else ops.BINARY_FUNCTIONS.get(fn)
        if binary is None and not is_method and fn in (torch.maximum, torch.minimum):
            binary = "add"
        if binary is not None:
            self.binary(binary)
            return
        if (not is_method and fn in ops.CAT_FUNCTIONS) or (is_method and fn == "cat"):
            self.cat()
            return
        if not is_method and fn is torch.stack:
            self.stack()
            return
        if not is_method and ops.qualified_name(fn) in ops.EVAL_IDENTITY_FUNCTIONS:
            self.eval_identity()
            return
        if (not is_method and fn in (torch.matmul, torch.bmm, operator.matmul)) or (
            is_method and fn in ("matmul", "bmm", "__matmul__")
        ):
            self.matmul()
            return
        if not is_method and fn is torch.einsum:
            self.einsum()
            return
        if not is_method and fn is F.scaled_dot_product_attention:
            self.sdpa()
            return
        if not is_method and fn in (F.linear, F.conv1d, F.conv2d, F.conv3d):
            self.functional_producer()
            return
        if not is_method and fn in (F.batch_norm, F.instance_norm, F.layer_norm, F.group_norm):
            self.functional_norm()
            return
        if (is_method and fn in ("chunk", "split", "unbind", "tensor_split")) or (
            not is_method and fn in (torch.chunk, torch.split, torch.unbind, torch.tensor_split)
        ):
            self.pieces()
            return
        if not is_method and fn is operator.getitem:
            self.getitem()
            return
        if not self.targs:
            self.opaque("operation with 0 tensor inputs")
            return
        x = self.targs[0]
        if (is_method and fn in ("masked_fill", "masked_fill_")) and len(self.targs) == 2:
            self.binary("mask")
            return
        if len(self.targs) != 1:
            self.opaque(f"operation with {len(self.targs)} tensor inputs")
            return
        xshape = shape_of(x)
        assert xshape is not None and self.shape is not None
        if (
            (not is_method and fn in ops.FLATTEN_FUNCTIONS)
            or (
                is_method
                and fn
                in (
                    "flatten",
                    "view",
                    "reshape",
                    "view_as",
                    "reshape_as",
                    "unflatten",
                    "squeeze",
                    "unsqueeze",
                )
            )
            or (
                not is_method
                and fn in (torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten)
            )
        ):
            self.reshape(x, _shape_refs(node, len(self.shape)))
            return
        if (is_method and fn in ("permute", "transpose", "swapaxes", "movedim", "t")) or (
            not is_method
            and fn in (torch.permute, torch.transpose, torch.swapaxes, torch.movedim, torch.t)
        ):
            self.permute(x)
            return
        if (is_method and fn in ("expand", "expand_as")) or (
            not is_method and fn in (torch.broadcast_to,)
        ):
            self.expand(x)
            return
        if (fn in ops.REDUCE_METHODS) if is_method else (fn in ops.REDUCE_FUNCTIONS):
            self.reduce(x)
            return
        if (is_method and fn in ("softmax", "log_softmax")) or fn in (
            F.softmax,
            F.log_softmax,
            torch.softmax,
            torch.log_softmax,
        ):
            self.softmax(x, _arg(node, 1, "dim", None))
            return
        if not is_method and fn is F.normalize:
            self.norm_over(x, [_arg(node, 2, "dim", 1)], "normalize over the channels")
            return
        if not is_method and fn is F.pad:
            pad = _arg(node, 1, "pad", ())
            mode = _arg(node, 2, "mode", "constant")
            value = _arg(node, 3, "value", None)
            if not isinstance(pad, (list, tuple)) or not all(isinstance(p, int) for p in pad):
                self.opaque("padding with computed sizes")
                return
            self.pad(x, len(pad) // 2, float(value or 0.0) if mode == "constant" else None)
            return
        if not is_method and fn in (F.glu,):
            self.glu(x, _arg(node, 1, "dim", -1))
            return
        if not is_method and fn in (
            torch.channel_shuffle,
            F.channel_shuffle,
            getattr(torch, "native_channel_shuffle", None),
        ):
            self.shuffle(x, _arg(node, 1, "groups", 1))
            return
        if not is_method and fn in ops.SPATIAL_FUNCTIONS:
            self.spatial(x, len(self.shape) - 2 if len(self.shape) > 2 else 1)
            return
        per_channel = (
            (fn in ops.PER_CHANNEL_METHODS) if is_method else (fn in ops.PER_CHANNEL_FUNCTIONS)
        )
        if per_channel and self.shape == xshape:
            self.pass_through(x)
            return
        if is_method and fn == "repeat":
            self.expand(x)
            return
        self.opaque(f"operation not known to act on each channel separately ({name})")

    def eval_identity(self) -> None:
        """Stochastic depth, drop path, drop block: the identity with ``training=False``
        (per sample and per position otherwise: still channel by channel)."""
        node = self.node
        if not self.targs:
            self.opaque("operation with 0 tensor inputs")
            return
        x = self.targs[0]
        train = True
        try:
            bound = _inspect.signature(node.target).bind(*node.args, **node.kwargs)
            bound.apply_defaults()
            train = bool(
                bound.arguments.get(
                    ops.EVAL_IDENTITY_FUNCTIONS[ops.qualified_name(node.target)], True
                )
            )
        except (TypeError, ValueError):
            pass
        self.pass_through(x, "pointwise" if not train else "mixed")

    def binary(self, kind: str) -> None:
        """Elementwise ``a op b`` with broadcasting: operands whose grids sit on the same
        dims as the output's are the same channels; others must not vary across channels."""
        g, shape = self.g, self.shape
        assert shape is not None
        info = self.info("binary")
        info.detail["op"] = kind
        nd = len(shape)
        cands = []
        for a in self.targs:
            s, ax = self.lay(a)
            ash = shape_of(a)
            assert ash is not None
            off = nd - len(ash)
            oax = tuple(x + off for x in ax)
            full = s is not None and all(ash[x] == shape[x + off] for x in ax)
            cands.append((a, s, oax, full))
        grids = [c for c in cands if c[1] is not None and c[3]]
        if not grids:
            self.set_out(None, (), self.g.untracked.get(self.targs[0].name) if self.targs else None)
            info.detail["aligned"] = []
            return
        ref = max(grids, key=lambda c: len(c[2]))
        _, rs, rax, _ = ref
        aligned = []
        for a, s, oax, full in cands:
            ash = shape_of(a)
            assert ash is not None
            off = nd - len(ash)
            if s is not None and full and oax == rax and len(s) == len(rs):
                g.unify(rs, s)
                aligned.append(a.name)
                continue
            if s is not None:
                g.freeze(
                    s,
                    f"a tensor broadcast across channels in {kind} ({op_name(self.node, self.gm)})",
                    BLOCKED,
                )
            # an operand of fixed size along the output's channel dims would not shrink
            if any(d - off >= 0 and ash[d - off] > 1 and (s is None or d not in oax) for d in rax):
                what = op_name(self.node, self.gm)
                g.freeze(
                    rs,
                    f"{kind} with a tensor whose channels are not tracked ({what})",
                    self.why(a)[1] if s is None else BLOCKED,
                )
        info.detail["aligned"] = aligned
        self.set_out(rs, rax)

    def cat(self) -> None:
        g, node, shape = self.g, self.node, self.shape
        assert shape is not None
        seq = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = _arg(node, 1, "dim", 0)
        parts = (
            [a for a in seq if isinstance(a, torch.fx.Node)]
            if isinstance(seq, (list, tuple))
            else []
        )
        if not parts or not isinstance(dim, int) or any(shape_of(a) is None for a in parts):
            self.opaque("concatenation the tracer cannot follow")
            return
        dim %= len(shape)
        info = self.info("cat", inputs=[a.name for a in parts])
        tracked = [self.lay(a) for a in parts]
        axes = next((ax for s, ax in tracked if s is not None), None)
        if axes is None:
            info.detail["along_channels"] = False
            self.set_out(None, (), g.untracked.get(parts[0].name))
            return
        if len(axes) != 1 and dim in axes:
            self.opaque("concatenation along a split channel dimension")
            return
        slots = []
        for a, (s, ax) in zip(parts, tracked, strict=True):
            ash = shape_of(a)
            assert ash is not None
            if s is None:
                if len(axes) != 1:
                    self.opaque("concatenation of tensors with different channel layouts")
                    return
                s = self.channels_of(a, axes[0])
            elif ax != axes:
                self.opaque("concatenation of tensors with different channel dimensions")
                return
            slots.append(s)
        if dim in axes:
            info.detail["along_channels"] = True
            self.set_out(np.concatenate(slots), axes)
        else:
            info.detail["along_channels"] = False
            for s in slots[1:]:
                if len(s) != len(slots[0]):
                    self.opaque("concatenation of tensors with different channel counts")
                    return
                g.unify(slots[0], s)
            self.set_out(slots[0], axes)

    def stack(self) -> None:
        node = self.node
        seq = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = _arg(node, 1, "dim", 0)
        parts = (
            [a for a in seq if isinstance(a, torch.fx.Node)]
            if isinstance(seq, (list, tuple))
            else []
        )
        if not parts or not isinstance(dim, int) or self.shape is None:
            self.opaque("stack the tracer cannot follow")
            return
        dim %= len(self.shape)
        tracked = [self.lay(a) for a in parts]
        axes = next((ax for s, ax in tracked if s is not None), None)
        info = self.info("cat", inputs=[a.name for a in parts])
        info.detail["along_channels"] = False
        if axes is None:
            self.set_out(None, (), self.g.untracked.get(parts[0].name))
            return
        first = None
        for s, ax in tracked:
            if s is None or ax != axes:
                self.opaque("stack of tensors with different channel layouts")
                return
            if first is None:
                first = s
            else:
                self.g.unify(first, s)
        self.set_out(first, tuple(x if x < dim else x + 1 for x in axes))

    # -- layout ------------------------------------------------------------------------------
    def layout_out(self, x: torch.fx.Node, res: layout.Layout | None, what: str) -> bool:
        xs, _ = self.lay(x)
        if res is None:
            self.opaque(what)
            return False
        axes, gather = res
        shape = self.shape
        if (
            shape is None
            or any(a >= len(shape) for a in axes)
            or len(gather) != math.prod(shape[a] for a in axes)
        ):  # the layout does not match the recorded output shape: do not guess
            self.opaque(what)
            return False
        info = self.info("layout", inputs=[x.name])
        info.detail["gather"] = gather
        self.set_out(xs[gather] if xs is not None else None, axes, self.g.untracked.get(x.name))
        return True

    def reshape(self, x: torch.fx.Node, refs: list[tuple[str, Any]] | None) -> None:
        """A reshape: the grid follows (:func:`.layout.reshape`); ``refs`` says where each
        output size comes from (what a rewrite after removal changes), None if unknown."""
        xs, xa = self.lay(x)
        xshape = shape_of(x)
        assert xshape is not None and self.shape is not None
        if xs is None:
            self.pass_through(x, "layout")
            self.g.info[self.node.name].detail["gather"] = np.zeros(0, dtype=np.int64)
            return
        res = layout.reshape(xshape, self.shape, xa)
        if not self.layout_out(x, res, "reshape the tracer cannot follow"):
            return
        axes, _ = res  # type: ignore[misc]
        self.g.sizes[self.node.name] = [("shape" if refs is not None else "unknown", refs, axes)]
        if len(axes) > 1:
            pref = tuple(_pref(refs, a) for a in axes)
            s = self.g.slots[self.node.name]
            assert s is not None
            self.g.grids.append(
                (self.node.name, s.reshape(layout.grid_shape(self.shape, axes)), pref)
            )

    def permute(self, x: torch.fx.Node) -> None:
        node = self.node
        xs, xa = self.lay(x)
        xshape = shape_of(x)
        assert xshape is not None
        nd = len(xshape)
        fn = node.target
        args = [a for a in node.args[1:]]
        if fn in ("permute", torch.permute):
            dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
            if not dims:
                dims = node.kwargs.get("dims", [])
            perm = [int(d) % nd for d in dims]
        elif fn in ("t", torch.t):
            perm = list(range(nd))[::-1]
        elif fn in ("movedim", torch.movedim):
            src = _arg(node, 1, "source", None)
            dst = _arg(node, 2, "destination", None)
            src = [src] if isinstance(src, int) else list(src)
            dst = [dst] if isinstance(dst, int) else list(dst)
            perm = [i for i in range(nd) if i not in [s % nd for s in src]]
            for s, d in sorted(
                zip([s % nd for s in src], [d % nd for d in dst], strict=True), key=lambda t: t[1]
            ):
                perm.insert(d, s)
        else:
            a = _arg(node, 1, "dim0", None)
            b = _arg(node, 2, "dim1", None)
            if not (isinstance(a, int) and isinstance(b, int)):
                self.opaque("transpose of computed dims")
                return
            perm = list(range(nd))
            perm[a % nd], perm[b % nd] = perm[b % nd], perm[a % nd]
        if xs is None:
            self.pass_through(x, "layout")
            self.g.info[node.name].detail["gather"] = np.zeros(0, dtype=np.int64)
            return
        self.layout_out(x, layout.permute(perm, xa, layout.grid_shape(xshape, xa)), "permute")

    def expand(self, x: torch.fx.Node) -> None:
        xs, xa = self.lay(x)
        xshape = shape_of(x)
        assert xshape is not None and self.shape is not None
        off = len(self.shape) - len(xshape)
        if xs is not None and any(self.shape[a + off] != xshape[a] for a in xa):
            self.opaque("expand or repeat along the channel dimension")
            return
        self.info("layout", inputs=[x.name]).detail["gather"] = np.arange(
            len(xs) if xs is not None else 0
        )
        self.set_out(xs, tuple(a + off for a in xa), self.g.untracked.get(x.name))
        if self.node.target in ("expand", torch.broadcast_to):  # sizes (repeat: counts)
            refs = _shape_refs(self.node, len(self.shape))
            if xs is not None and refs is not None:
                self.g.sizes[self.node.name] = [("shape", refs, tuple(a + off for a in xa))]

    def getitem(self) -> None:
        node = self.node
        x, idx = node.args[0], node.args[1]
        if not isinstance(x, torch.fx.Node) or shape_of(x) is None:
            self.opaque("indexing the tracer cannot follow")
            return
        xs, xa = self.lay(x)
        xshape = shape_of(x)
        assert xshape is not None
        items = list(idx) if isinstance(idx, tuple) else [idx]
        norm: list[Any] = []
        for i in items:
            if isinstance(i, torch.fx.Node):
                norm.append("tensor" if shape_of(i) is not None else 0)
            elif isinstance(i, slice) and any(
                isinstance(b, torch.fx.Node) for b in (i.start, i.stop, i.step)
            ):
                norm.append(("computed", i))
            elif isinstance(i, (list, tuple)):
                norm.append("tensor")
            else:
                norm.append(i)
        if xs is None:
            self.pass_through(x, "layout")
            self.g.info[node.name].detail["gather"] = np.zeros(0, dtype=np.int64)
            return
        plain = [slice(None) if isinstance(i, tuple) else i for i in norm]
        res = layout.index(xshape, xa, plain)
        if res is None:
            self.opaque("indexing the tracer cannot follow")
            return
        lay, ints, cuts = res
        # a computed bound or a dynamic int index on a channel dim cannot be followed
        for i, (entry, orig) in enumerate(zip(norm, items, strict=True)):
            dim = _slice_position_dim(norm, i, len(xshape))
            if dim is None or dim not in xa:
                continue
            if isinstance(entry, tuple) or (
                isinstance(orig, torch.fx.Node) and shape_of(orig) is None
            ):
                self.opaque("indexing a channel dimension with computed bounds")
                return
        grid = xs.reshape(layout.grid_shape(xshape, xa))
        self.g.couple(grid, ints)
        if not self.layout_out(x, lay, "indexing"):
            return
        if cuts:
            self.g.sizes[node.name] = [
                (
                    "slice",
                    [(gd, sl, _slice_position(norm, xa[gd], len(xshape))) for gd, sl in cuts],
                    xa,
                )
            ]

    def pieces(self) -> None:
        """``chunk`` / ``split`` / ``unbind`` / ``tensor_split``: a tuple of parts. Along a
        channel dim the parts keep equal widths (``chunk``, equal ``split``) or their
        literal sizes are rewritten (``split`` with a list)."""
        node = self.node
        fn = node.target
        name = fn if isinstance(fn, str) else fn.__name__
        x = node.args[0]
        shapes = tuple_shapes(node)
        if not isinstance(x, torch.fx.Node) or shape_of(x) is None or shapes is None:
            self.opaque(f"{name} the tracer cannot follow")
            return
        xshape = shape_of(x)
        assert xshape is not None
        nd = len(xshape)
        if name == "unbind":
            dim = _arg(node, 1, "dim", 0)
        else:
            dim = _arg(node, 2, "dim", 0)
        if not isinstance(dim, int):
            self.opaque(f"{name} along a computed dim")
            return
        dim %= nd
        xs, xa = self.lay(x)
        info = self.info("layout", inputs=[x.name])
        if xs is None:
            self.set_tuple([(None, ())] * len(shapes))
            self.g.untracked[node.name] = self.why(x)
            return
        gathers: list[np.ndarray] = []
        axes_of: list[tuple[int, ...]] = []
        if dim not in xa or name == "unbind":
            for k in range(len(shapes)):
                if name == "unbind":
                    r = layout.index(xshape, xa, [slice(None)] * dim + [k])
                    if r is None:
                        self.opaque(f"{name} the tracer cannot follow")
                        return
                    (ax, gather), _, _ = r
                else:
                    ax, gather = xa, np.arange(len(xs), dtype=np.int64)
                gathers.append(gather)
                axes_of.append(ax)
            if name == "unbind" and dim in xa:
                self.g.couple(xs.reshape(layout.grid_shape(xshape, xa)), [xa.index(dim)])
        else:
            if len(xa) != 1:
                self.opaque(f"{name} of a split channel dimension")
                return
            sizes = [s[dim] if s is not None else 0 for s in shapes]
            starts = np.cumsum([0, *sizes])
            literal_list = name == "split" and isinstance(
                _arg(node, 1, "split_size_or_sections", None), (list, tuple)
            )
            if not literal_list:
                if len(set(sizes)) != 1:
                    self.opaque(f"{name} into parts of unequal widths along the channels")
                    return
                self.g.couple(xs.reshape(len(sizes), sizes[0]), [0])
                if name == "split":
                    self.g.sizes[node.name] = [("split_size", sizes[0], xa)]
            else:
                self.g.sizes[node.name] = [("split_sizes", sizes, xa)]
            for k in range(len(sizes)):
                gathers.append(np.arange(starts[k], starts[k + 1], dtype=np.int64))
                axes_of.append(xa)
        info.detail["gathers"] = gathers
        self.set_tuple([(xs[gt], ax) for gt, ax in zip(gathers, axes_of, strict=True)])

    def shuffle(self, x: torch.fx.Node, groups: int) -> None:
        """``nn.ChannelShuffle`` / ``channel_shuffle``: out[q * g + j] = in[j * (C / g) + q];
        the channel at position q of every group goes together (every group keeps its
        width, so the shuffle stays a shuffle)."""
        xshape = shape_of(x)
        assert xshape is not None
        xs = self.channels_of(x, 1)
        if xs is None or not isinstance(groups, int) or xshape[1] % groups:
            self.opaque("channel shuffle the tracer cannot follow")
            return
        grid = xs.reshape(groups, -1)
        self.g.couple(grid, [0])
        gather = np.arange(len(xs)).reshape(groups, -1).T.reshape(-1)
        info = self.info("layout", inputs=[x.name])
        info.detail["gather"] = gather
        self.set_out(xs[gather], 1)

    def glu(self, x: torch.fx.Node, dim: int) -> None:
        xs, xa = self.lay(x)
        xshape = shape_of(x)
        assert xshape is not None
        dim %= len(xshape)
        if xs is None or dim not in xa:
            self.pass_through(x, "mixed")
            return
        if len(xa) != 1:
            self.opaque("GLU over a split channel dimension")
            return
        half = len(xs) // 2
        self.g.unify(xs[:half], xs[half:])
        info = self.info("layout", inputs=[x.name])
        info.detail["gather"] = np.arange(half)
        info.kind = "mixed"
        self.set_out(xs[:half], xa)

    def reduce(self, x: torch.fx.Node) -> None:
        node = self.node
        xs, xa = self.lay(x)
        xshape = shape_of(x)
        assert xshape is not None and self.shape is not None
        dims = _arg(node, 1, "dim", None)
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if dims is None:
            if xs is None:
                self.pass_through(x, "mixed")
                return
            self.block("reduction over all dimensions")
            return
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not all(isinstance(d, int) for d in dims):
            self.opaque("reduction over computed dims")
            return
        dims = [d % len(xshape) for d in dims]
        if xs is not None and set(xa) & set(dims):
            self.block("reduction over the channel dimension")
            return
        info = self.info("reduce", inputs=[x.name])
        info.detail["dims"] = dims
        self.set_out(
            xs,
            tuple(a if keep else a - sum(d < a for d in dims) for a in xa),
            self.g.untracked.get(x.name),
        )

    def softmax(self, x: torch.fx.Node, dim: Any) -> None:
        xs, xa = self.lay(x)
        xshape = shape_of(x)
        assert xshape is not None
        if not isinstance(dim, int):
            self.opaque("softmax over an unknown dimension")
            return
        dim %= len(xshape)
        if xs is not None and dim in xa:
            self.block("softmax over the channel dimension")
            return
        self.pass_through(x)
        self.g.info[self.node.name].detail["stochastic_dim"] = dim

    # -- contractions (matmul, einsum, attention) ----------------------------------------------
    def matmul(self) -> None:
        node = self.node
        if len(node.args) < 2:
            self.opaque("matmul the tracer cannot follow")
            return
        a, b = node.args[0], node.args[1]
        if not all(isinstance(t, torch.fx.Node) and shape_of(t) is not None for t in (a, b)):
            self.opaque("matmul the tracer cannot follow")
            return
        sa, sb = shape_of(a), shape_of(b)
        assert sa is not None and sb is not None
        if (
            b.op == "get_attr"
            and len(sb) == 2
            and len(sa) >= 1
            and self.g.info[b.name].kind == "param"
        ):
            owner, attr = _owner(self.gm, b.target)
            self._claim(b)
            spec = Producer(owner, attr, None, "matmul")
            self.producer(a, len(sa) - 1, spec, sb[0], sb[1])
            return
        if len(sa) < 2 or len(sb) < 2:
            self.opaque("matmul with a vector")
            return
        letters = iter(string.ascii_letters)
        nb = max(len(sa), len(sb)) - 2
        batch = [next(letters) for _ in range(nb)]
        i, k, j = next(letters), next(letters), next(letters)
        ea = "".join(batch[nb - (len(sa) - 2) :]) + i + k
        eb = "".join(batch[nb - (len(sb) - 2) :]) + k + j
        eo = "".join(batch) + i + j
        self.contract([a, b], [ea, eb], eo)

    def einsum(self) -> None:
        node = self.node
        eq = node.args[0] if node.args else None
        ops_ = list(node.args[1:])
        if len(ops_) == 1 and isinstance(ops_[0], (list, tuple)):
            ops_ = list(ops_[0])
        if not isinstance(eq, str) or not all(
            isinstance(t, torch.fx.Node) and shape_of(t) is not None for t in ops_
        ):
            self.opaque("einsum the tracer cannot follow")
            return
        eq = eq.replace(" ", "")
        lhs, _, rhs = eq.partition("->")
        ins = lhs.split(",")
        if len(ins) != len(ops_):
            self.opaque("einsum the tracer cannot follow")
            return
        used = set(eq) - set(",->.")
        free = iter(c for c in string.ascii_letters if c not in used)
        nell = max(
            (len(shape_of(t)) - (len(s) - 3) for t, s in zip(ops_, ins, strict=True) if "..." in s),
            default=0,
        )  # type: ignore[arg-type]
        ell = "".join(next(free) for _ in range(nell))
        full = []
        for t, s in zip(ops_, ins, strict=True):
            if "..." in s:
                n = len(shape_of(t)) - (len(s) - 3)  # type: ignore[arg-type]
                s = s.replace("...", ell[nell - n :])
            full.append(s)
        if not _:
            counts: dict[str, int] = defaultdict(int)
            for s in full:
                for c in s:
                    counts[c] += 1
            rhs = "".join(sorted(c for c, n in counts.items() if n == 1))
        rhs = rhs.replace("...", ell)
        self.contract(ops_, full, rhs)

    def contract(self, operands: list[torch.fx.Node], subs: list[str], out: str) -> None:
        """A sum of products (matmul / einsum): every output grid entry goes with all the
        operand channels that enter it."""
        g = self.g
        assert self.shape is not None
        out_grid: dict[str, int] = {}  # letter -> size, for letters that carry channels
        parts = []
        for t, s in zip(operands, subs, strict=True):
            ts, ta = self.lay(t)
            tshape = shape_of(t)
            assert tshape is not None
            if len(s) != len(tshape):
                self.opaque("einsum the tracer cannot follow")
                return
            if ts is None:
                parts.append((t, None, ""))
                continue
            letters = "".join(s[a] for a in ta)
            parts.append((t, ts.reshape(layout.grid_shape(tshape, ta)), letters))
            for c, a in zip(letters, ta, strict=True):
                if c in out and tshape[a] > 1:
                    out_grid[c] = tshape[a]
        info = self.info("contract", inputs=[t.name for t in operands])
        info.detail["subs"] = (subs, out)
        if not out_grid:
            for _, grid, _ in parts:
                if grid is not None:
                    g.freeze(
                        grid.reshape(-1),
                        f"a product over the channels ({op_name(self.node, self.gm)})",
                        BLOCKED,
                    )
            self.set_out(None, (), ("a product over the channels", BLOCKED))
            return
        letters = "".join(c for c in out if c in out_grid)
        sizes = [out_grid[c] for c in letters]
        n_out = math.prod(sizes)
        fresh = g.new_slots(n_out)
        contrib: list[tuple[str, np.ndarray | None]] = []
        for t, grid, tl in parts:
            if grid is None:
                contrib.append((t.name, None))
                continue
            # per output entry, the operand entries that enter it: shared letters index
            # both, output letters the operand lacks broadcast, contracted ones all enter
            keep = sorted(
                (i for i, c in enumerate(tl) if c in out_grid), key=lambda i: letters.index(tl[i])
            )
            drop = [i for i, c in enumerate(tl) if c not in out_grid]
            m = math.prod(grid.shape[i] for i in drop)
            idx = np.arange(grid.size, dtype=np.int64).reshape(grid.shape)
            idx = np.transpose(idx, keep + drop).reshape([grid.shape[i] for i in keep] + [m])
            view = [
                grid.shape[tl.index(c)] if c in tl and tl.index(c) in keep else 1 for c in letters
            ]
            idx = np.broadcast_to(idx.reshape([*view, m]), [*sizes, m]).reshape(n_out, m)
            contrib.append((t.name, idx))
            sl = grid.reshape(-1)[idx]
            g.unify(sl, np.broadcast_to(fresh[:, None], sl.shape))
        info.detail["contrib"] = contrib
        info.detail["stochastic"] = {
            k
            for k, (t, sub) in enumerate(zip(operands, subs, strict=True))
            if _stochastic_letter(g, t, sub, out)
        }
        axes = tuple(out.index(c) for c in letters)
        self.set_out(fresh, axes)
        if len(axes) > 1:
            g.grids.append((self.node.name, fresh.reshape(sizes), (0,) * len(axes)))

    def sdpa(self) -> None:
        """``F.scaled_dot_product_attention(q, k, v, ...)``: each output entry (head, value
        channel) goes with that head's queries, keys and values."""
        node = self.node
        q, k, v = (
            node.args[i] if len(node.args) > i else node.kwargs.get(n)
            for i, n in enumerate(("query", "key", "value"))
        )
        if not all(isinstance(t, torch.fx.Node) and shape_of(t) is not None for t in (q, k, v)):
            self.opaque("attention the tracer cannot follow")
            return
        nq = len(shape_of(q))  # type: ignore[arg-type]
        letters = string.ascii_lowercase[: nq - 2]
        self.contract([q, k, v], [letters + "LE", letters + "SE", letters + "SV"], letters + "LV")
        info = self.g.info[node.name]
        info.detail["sdpa"] = True
        info.detail["stochastic"] = {0, 1}  # softmax(q k^T) rows sum to one
        info.inputs = [t.name for t in (q, k, v)]

    # -- functional layers -------------------------------------------------------------------
    def _claim(self, p: torch.fx.Node) -> None:
        """A parameter used as a layer's weight: its generic per-dim member goes; a parameter
        with other uses is frozen there."""
        self.g.members = [
            m
            for m in self.g.members
            if not (m.node == p.name and m.role == "norm" and m.src == p.name)
        ]
        if len(p.users) > 1:
            self.g.freeze(
                self.g.slots.get(p.name),
                f"parameter '{p.target}' used by several operations",
                BLOCKED,
            )

    def functional_producer(self) -> None:
        node = self.node
        fn = node.target
        x = node.args[0] if node.args else node.kwargs.get("input")
        w = _arg(node, 1, "weight", None)
        b = _arg(node, 2, "bias", None)
        ok = isinstance(x, torch.fx.Node) and isinstance(w, torch.fx.Node) and w.op == "get_attr"
        if ok and b is not None:
            ok = isinstance(b, torch.fx.Node) and b.op == "get_attr"
        wshape = shape_of(w) if isinstance(w, torch.fx.Node) else None
        if not ok or wshape is None or shape_of(x) is None:
            self.opaque(f"{fn.__name__} with a weight that is not a parameter")
            return
        owner, attr = _owner(self.gm, w.target)
        bias = _owner(self.gm, b.target)[1] if b is not None else None
        if b is not None and _owner(self.gm, b.target)[0] != owner:
            self.opaque(f"{fn.__name__} with weight and bias of different modules")
            return
        self._claim(w)
        if b is not None:
            self._claim(b)
        if fn is F.linear:
            spec = Producer(owner, attr, bias, "linear")
            self.producer(x, len(shape_of(x)) - 1, spec, wshape[1], wshape[0])  # type: ignore[arg-type]
            return
        groups = _arg(node, 6, "groups", 1)
        padding = _arg(node, 4, "padding", 0)
        if not isinstance(groups, int):
            self.opaque("convolution with computed groups")
            return
        pads = padding if isinstance(padding, (tuple, list)) else (padding,)
        zero_padded = padding == "same" or any(p != 0 for p in pads if isinstance(p, int))
        spec = Producer(owner, attr, bias, "conv", groups, bool(zero_padded))
        k = len(wshape) - 2
        xshape = shape_of(x)
        assert xshape is not None
        ch = 1 if len(xshape) == k + 2 else 0
        self.producer(x, ch, spec, wshape[1] * groups, wshape[0])

    def functional_norm(self) -> None:
        node = self.node
        fn = node.target
        x = node.args[0] if node.args else node.kwargs.get("input")
        if not isinstance(x, torch.fx.Node) or shape_of(x) is None:
            self.opaque(f"{fn.__name__} the tracer cannot follow")
            return
        xshape = shape_of(x)
        assert xshape is not None
        if fn is F.layer_norm:
            shp = _arg(node, 1, "normalized_shape", ())
            n = len(shp) if isinstance(shp, (list, tuple)) else 1
            self.norm_over(
                x,
                list(range(len(xshape) - n, len(xshape))),
                "layer_norm normalizes over the channels",
            )
            return
        if fn is F.group_norm:
            groups = _arg(node, 1, "num_groups", None)
            if groups != xshape[1]:
                self.norm_over(x, [1], "group_norm normalizes groups of channels together")
                return
            names = [("weight", 2), ("bias", 3)]
        elif fn is F.batch_norm:
            names = [("running_mean", 1), ("running_var", 2), ("weight", 3), ("bias", 4)]
        else:
            names = [("running_mean", 1), ("running_var", 2), ("weight", 3), ("bias", 4)]
        params = []
        for key, i in names:
            p = _arg(node, i, key, None)
            if p is None:
                continue
            if not (isinstance(p, torch.fx.Node) and p.op == "get_attr"):
                self.opaque(f"{fn.__name__} with statistics that are not tensor attributes")
                return
            params.append(p)
        xs, xa = self.lay(x)
        ch = 1 if len(xshape) > 1 else 0
        if xs is not None and xa != (ch,):
            self.opaque("normalization over a dimension that is not the channel dimension")
            return
        for p in params:
            self._claim(p)
        self.norm(x, ch, [_owner(self.gm, p.target) for p in params], None)
        self.g.info[node.name].inputs = [x.name]


_IDENTITY_LIKE = {"contiguous", "clone", "detach", "to", "float", "type_as"}


def _stochastic_letter(g: ChannelGraph, t: torch.fx.Node, sub: str, out: str) -> bool:
    """True when operand ``t`` (subscripts ``sub``) is a softmax along a contracted letter:
    its rows sum to one, so a constant it mixes stays that constant."""
    n = t
    for _ in range(8):
        info = g.info.get(n.name)
        if info is None:
            return False
        dim = info.detail.get("stochastic_dim")
        if dim is not None:
            return 0 <= dim < len(sub) and sub[dim] not in out
        ins = n.all_input_nodes
        ident = (
            (n.op == "call_method" and n.target in _IDENTITY_LIKE)
            or (n.op == "call_function" and n.target in (F.dropout, F.dropout1d, F.dropout2d))
            or (
                n.op == "call_module"
                and type(g.gm.get_submodule(n.target)).__name__.startswith(("Dropout", "Identity"))
            )
        )
        if not ident or len(ins) != 1:
            return False
        n = ins[0]
    return False


def _tuple_args(
    node: torch.fx.Node, g: ChannelGraph
) -> list[list[tuple[np.ndarray, tuple[int, ...]]]]:
    """The tracked elements of tuple-valued arguments of ``node`` (e.g. a returned chunk)."""
    out: list[list[tuple[np.ndarray, tuple[int, ...]]]] = []
    seen: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda n: seen.append(n) or n)
    for n in seen:
        items = g.tuples.get(n.name)
        if items:
            out.append([it for it in items if it is not None and it[0] is not None])  # type: ignore[misc]
    return out


def _slice_position_dim(norm: list[Any], pos: int, nd: int) -> int | None:
    """The input dim that entry ``pos`` of the index tuple indexes (None for None / ...)."""
    n_real = sum(1 for i in norm if i is not None and i is not Ellipsis)
    d = 0
    for p, i in enumerate(norm):
        if i is None or i is Ellipsis:
            if p == pos:
                return None
            if i is Ellipsis:
                d += nd - n_real
            continue
        if p == pos:
            return d
        d += 1
    return None


def _slice_position(norm: list[Any], dim: int, nd: int) -> int:
    """The position in the index tuple that indexes input dim ``dim``."""
    n_real = sum(1 for i in norm if i is not None and i is not Ellipsis)
    d = 0
    for p, i in enumerate(norm):
        if i is None:
            continue
        if i is Ellipsis:
            d += nd - n_real
            continue
        if d == dim:
            return p
        d += 1
    return -1


def _shape_refs(node: torch.fx.Node, n_out: int) -> list[tuple[str, Any]] | None:
    """Per output dim of a reshape / view / expand, where its size comes from: ``("lit", v)``
    (a literal int, rewritable), ``("infer", -1)``, ``("node", n)`` (a computed size) or
    ``("fixed", v)`` (part of a computed tuple); None when the sizes cannot be located."""
    fn = node.target
    if fn in (
        "flatten",
        torch.flatten,
        "squeeze",
        "unsqueeze",
        torch.squeeze,
        torch.unsqueeze,
        "view_as",
        "reshape_as",
        "expand_as",
    ):
        return [("auto", None)] * n_out
    if fn in ("unflatten", torch.unflatten):
        return None
    if node.op == "call_function" and fn is torch.reshape:
        args = [_arg(node, 1, "shape", None)]
    else:
        args = list(node.args[1:]) or [node.kwargs.get("shape", node.kwargs.get("size"))]
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    refs: list[tuple[str, Any]] = []
    for a in args:
        if isinstance(a, int):
            refs.append(("infer", -1) if a == -1 else ("lit", a))
        elif isinstance(a, torch.fx.Node):
            if (
                a.op == "call_function"
                and a.target is operator.add
                and len(a.args) == 2
                and isinstance(a.args[1], tuple)
            ):
                # x.size()[:-1] + (heads, head_dim): a computed prefix and literal dims
                prefix = shape_of(a)  # not a tensor
                tail = a.args[1]
                head = n_out - len(tail)
                if head < 0 or prefix is not None:
                    return None
                refs.extend([("fixed", None)] * head)
                refs.extend(
                    ("lit", t) if isinstance(t, int) and t != -1 else ("infer", -1) for t in tail
                )
            elif a.op == "call_method" and a.target == "size" and len(a.args) == 1:
                refs.extend([("fixed", None)] * n_out)
            else:
                refs.append(("node", a))
        else:
            return None
    if len(refs) != n_out:
        return None
    return refs


def _pref(refs: list[tuple[str, Any]] | None, dim: int) -> int:
    """How free a split dim is to shrink: 2 inferred / computed, 1 literal, 0 unknown."""
    if refs is None or dim >= len(refs):
        return 0
    kind = refs[dim][0]
    return 2 if kind in ("infer", "node", "auto") else 1 if kind == "lit" else 0


def _varies(lab: np.ndarray, d: int) -> bool:
    """True when the labels of grid ``lab`` differ along dim ``d``."""
    return lab.shape[d] > 1 and not np.array_equal(
        lab, np.broadcast_to(np.take(lab, [0], axis=d), lab.shape)
    )


def _check_sizes(g: ChannelGraph) -> None:
    """Freeze channel dims whose size a rewrite after removal could not follow: a reshape
    with sizes that cannot be located, a size that comes from a computed tuple, or more
    than one computed or inferred size among dims that may shrink."""
    for name, entries in g.sizes.items():
        s = g.slots.get(name)
        shape = g.shapes.get(name)
        if s is None or shape is None:
            continue
        axes = g.axes[name]
        lab = g.labels[s].reshape(layout.grid_shape(shape, axes))
        may = [a for d, a in enumerate(axes) if _varies(lab, d)]
        if not may:
            continue
        for kind, refs, _ in entries:
            if kind == "unknown":
                g.freeze(s, f"reshape with sizes the compiler cannot rewrite ({name})", BLOCKED)
            elif kind == "shape":
                computed = sum(1 for a in may if refs[a][0] == "node")
                computed += sum(1 for r in refs if r[0] == "infer")
                if any(refs[a][0] == "fixed" for a in may) or computed > 1:
                    g.freeze(
                        s, f"reshape with computed sizes on the channel dimension ({name})", BLOCKED
                    )


def _only_reaches_output(node: torch.fx.Node, gm: torch.fx.GraphModule) -> bool:
    """True when every path from ``node`` reaches the model output through ops without
    parameters of their own (reshapes, activations): its channels are output channels."""
    stack, seen = list(node.users), set()
    while stack:
        u = stack.pop()
        if u in seen:
            continue
        seen.add(u)
        if u.op == "output":
            continue
        if u.op == "call_module" and any(True for _ in gm.get_submodule(u.target).parameters()):
            return False
        if u.op == "get_attr":
            return False
        if any(a.op == "get_attr" for a in u.all_input_nodes):
            return False
        stack.extend(u.users)
    return True


def _padded_avg(node: torch.fx.Node) -> bool:
    pad = _arg(node, 3, "padding", 0)
    return any(p != 0 for p in (pad if isinstance(pad, (tuple, list)) else (pad,)))


def _build_nx(g: ChannelGraph) -> None:
    G, gm = g.nx, g.gm
    for node in gm.graph.nodes:
        shape = g.shapes.get(node.name)
        ax = g.axis.get(node.name, 1)
        mtype = type(gm.get_submodule(node.target)).__name__ if node.op == "call_module" else None
        G.add_node(
            node.name,
            op=node.op,
            target=str(node.target),
            kind=g.info[node.name].kind,
            module_type=mtype,
            shape=shape,
            channels=None if shape is None or len(shape) <= ax else shape[ax],
        )
        for a in node.all_input_nodes:
            G.add_edge(a.name, node.name, channels=G.nodes[a.name].get("channels"))


def weight_depth(g: ChannelGraph) -> int:
    """The largest number of Conv / ConvTranspose / Linear layers on a path input -> output."""
    weight = {n for n, d in g.nx.nodes(data=True) if d["kind"] in ("producer", "depthwise")}
    best: dict[str, int] = {}
    for n in nx.topological_sort(g.nx):
        preds: Sequence[int] = [best[p] for p in g.nx.predecessors(n)]
        best[n] = (max(preds) if preds else 0) + (n in weight)
    return max(best.values()) if best else 0
