"""Trace a model into a data-flow graph of *channel slots*.

A *channel slot* is one channel of one tensor in the traced graph (one feature of a Linear
output, one channel of a convolution output). Operations tie slots together:

* per-channel operations (BatchNorm, activations, pooling, dropout, a depthwise convolution)
  give their output the *same* slots as their input;
* a residual ``a + b`` (or ``*``, ``-``, ``/``) unifies the slots of its operands;
* ``torch.cat`` along channels lays its inputs' slots side by side (offsets are exact by
  construction); along another dimension it unifies them;
* ``flatten`` repeats each channel's slot ``H*W`` times, so a Linear after Flatten consumes
  ``H*W`` columns per channel;
* a Conv / ConvTranspose / Linear *consumes* its input slots (its input-side weight slices)
  and *produces* fresh slots (output-side weight rows and bias).

The connected components of "same slot" (found with networkx) are the coupled channel
groups (:mod:`archdiscover.graph.groups`). A component is *frozen* (cannot be removed) when
it reaches the model input or output, or passes an operation the tracer cannot see through;
the reason is recorded so nothing is skipped silently.

Tracing uses :mod:`torch.fx` (symbolic tracing plus shape propagation on the example inputs);
the graph is also exposed as a :class:`networkx.DiGraph`. Torch-Pruning's dependency graph is
not used for grouping because it mis-groups concatenations whose inputs also feed other
layers (``cat([z, conv(z)])`` is coupled into one group there); its per-layer pruning
functions do the physical removal in :mod:`archdiscover.compiler`.
"""

from __future__ import annotations

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
from . import ops
from .gates import parameter_only

__all__ = [
    "ChannelGraph",
    "Member",
    "NodeInfo",
    "TraceError",
    "symbolic_trace",
    "trace",
]


class TraceError(RuntimeError):
    """The model cannot be traced (its forward is not ``torch.fx``-traceable)."""


@dataclass
class NodeInfo:
    """How one fx node treats channels (what the compiler's value analysis reads).

    ``kind`` is one of ``input``, ``output``, ``producer`` (Conv/ConvT/Linear),
    ``depthwise``, ``norm``, ``pointwise``, ``binary``, ``cat``, ``flatten``, ``reduce``,
    ``const`` (computed from parameters alone), ``opaque`` or ``other`` (no tensor output).
    """

    kind: str
    module: str | None = None
    inputs: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Member:
    """A parameter or buffer of a module, sliced along ``dim``, with the slot of each slice.

    ``role`` is ``out`` (produces the channel), ``norm`` (per-channel layer on it) or ``in``
    (consumes it); ``node`` is the fx node calling the module, ``src`` the node feeding it.
    """

    module: str
    param: str
    dim: int
    slots: np.ndarray
    role: str
    node: str = ""
    src: str = ""


class ChannelGraph:
    """A traced model: fx graph, networkx view, channel slots and their components.

    Build it with :func:`trace`. Attributes:
        gm: the ``torch.fx.GraphModule`` (shares submodules with the traced model).
        nx: a ``networkx.DiGraph`` with one node per fx node (attributes ``op``, ``target``,
            ``kind``, ``module_type``, ``shape``, ``channels``) and data-flow edges carrying
            the source's channel count (``channels``).
        info: per fx node name, its :class:`NodeInfo`.
        slots: per fx node name, the slot id of each channel (or None for non-tensors).
        axis: per fx node name, the channel axis of its output.
        shapes: per fx node name, its output shape from the example inputs.
        members: every sliced parameter (:class:`Member`).
        labels: per slot, its component (group label) after :meth:`finish`.
        frozen: per frozen label, ``(reason, unsupported)``.
        unsupported: ``(node, op, reason)`` for every operation the tracer could not see
            through.
        calls: per module name, the fx nodes that call it.
    """

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.gm = gm
        self.info: dict[str, NodeInfo] = {}
        self.slots: dict[str, np.ndarray | None] = {}
        self.axis: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        self.members: list[Member] = []
        self.unsupported: list[tuple[str, str, str]] = []
        self.labels: np.ndarray = np.zeros(0, dtype=np.int64)
        self.frozen: dict[int, tuple[str, bool]] = {}
        self.nx = nx.DiGraph()
        self.calls: dict[str, list[str]] = defaultdict(list)
        self.module_slots: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.n_slots = 0
        self._pairs: list[np.ndarray] = []
        self._frozen: list[tuple[np.ndarray, str, bool]] = []

    # -- slot bookkeeping ---------------------------------------------------------------
    def new_slots(self, n: int) -> np.ndarray:
        """``n`` fresh slot ids."""
        s = np.arange(self.n_slots, self.n_slots + n, dtype=np.int64)
        self.n_slots += n
        return s

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        """Slots ``a[i]`` and ``b[i]`` are the same channel."""
        self._pairs.append(np.stack([a, b]))

    def freeze(self, s: np.ndarray | None, reason: str, unsupported: bool) -> None:
        """The components of slots ``s`` cannot be removed, for ``reason``."""
        if s is not None and len(s):
            self._frozen.append((s, reason, unsupported))

    def finish(self) -> None:
        """Label the components of "same slot" (networkx) and resolve the frozen ones."""
        same = nx.Graph()
        same.add_nodes_from(range(self.n_slots))
        if self._pairs:
            pairs = np.concatenate(self._pairs, axis=1)
            same.add_edges_from(zip(pairs[0].tolist(), pairs[1].tolist(), strict=True))
        labels = np.empty(self.n_slots, dtype=np.int64)
        # components in order of their smallest slot: labels follow the graph order
        comps = sorted((min(c), c) for c in nx.connected_components(same))
        for lab, (_, comp) in enumerate(comps):
            labels[list(comp)] = lab
        self.labels = labels
        frozen: dict[int, tuple[str, bool]] = {}
        for s, reason, unsup in self._frozen:
            for lab in np.unique(self.labels[s]):
                old = frozen.get(int(lab))
                if old is None or (unsup and not old[1]):
                    frozen[int(lab)] = (reason, unsup)
        self.frozen = frozen

    def label(self, node: str) -> np.ndarray | None:
        """The group label of each channel of ``node``'s output (None for non-tensors)."""
        s = self.slots.get(node)
        return None if s is None else self.labels[s]

    def producer_modules(self) -> list[str]:
        """Modules that produce channels (Conv, ConvTranspose, Linear), in graph order."""
        return list(dict.fromkeys(m.module for m in self.members if m.role == "out"))

    def out_labels(self, module: str) -> np.ndarray:
        """Group label of each output channel of a producing module."""
        for m in self.members:
            if m.module == module and m.role == "out" and m.param == "weight":
                return self.labels[m.slots]
        raise KeyError(f"{module!r} is not a channel-producing layer of the traced graph")

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
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, AttributeError, ...
        raise TraceError(
            f"cannot trace {type(model).__name__} with torch.fx: {type(e).__name__}: {e}. "
            "archdiscover's compiler needs a forward without Python control flow on tensor "
            "values; move such logic out of forward or wrap it in a leaf module."
        ) from e


def trace(model: nn.Module, example_inputs: Inputs) -> ChannelGraph:
    """Trace ``model`` on ``example_inputs`` into a :class:`ChannelGraph`.

    The model is not modified (the graph shares its submodules; tracing runs one forward
    pass in eval mode under ``torch.no_grad`` to record shapes, then restores every
    submodule's training flag).
    """
    inputs = as_inputs(example_inputs)
    gm = symbolic_trace(model)
    flags = {m: m.training for m in model.modules()} | {m: m.training for m in gm.modules()}
    try:
        gm.eval()  # no BatchNorm statistics update, no dropout
        with torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except Exception as e:
        raise TraceError(
            f"running {type(model).__name__} on the example inputs failed during shape "
            f"propagation: {type(e).__name__}: {e}"
        ) from e
    finally:
        for m, flag in flags.items():
            m.training = flag
    g = ChannelGraph(gm)
    _SlotTracer(g).run()
    g.finish()
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


class _SlotTracer:
    """Assign channel slots to every fx node, one method per kind of operation."""

    def __init__(self, g: ChannelGraph) -> None:
        self.g = g
        self.gm = g.gm

    def run(self) -> None:
        self.param_only = parameter_only(self.gm.graph)
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
        elif self.shape is None:  # x.size(), x.shape, ...: no channels flow through
            self.set_out(None)
            self.info("other")
        elif node.op == "call_module":
            self.call_module(self.gm.get_submodule(node.target))
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

    def set_out(self, slots: np.ndarray | None, axis: int = 1) -> None:
        self.g.slots[self.node.name] = slots
        self.g.axis[self.node.name] = axis

    def slots_of(self, node: torch.fx.Node) -> tuple[np.ndarray | None, int]:
        return self.g.slots.get(node.name), self.g.axis.get(node.name, 1)

    def opaque(self, reason: str, unsupported: bool = True) -> None:
        """Channels through this op cannot be followed: freeze its inputs and output."""
        g, node, shape = self.g, self.node, self.shape
        op = op_name(node, self.gm)
        text = f"{reason} ({op})"
        if unsupported and _only_reaches_output(node, self.gm):
            # e.g. an Unflatten before the output: these channels are output channels anyway
            text, unsupported = f"model output (through {op})", False
        for a in self.targs:
            g.freeze(g.slots.get(a.name), text, unsupported)
        if shape is not None and len(shape) >= 2:
            s = g.new_slots(shape[1])
            g.freeze(s, text, unsupported)
            self.set_out(s)
        else:
            self.set_out(None)
        if unsupported:
            g.unsupported.append((node.name, op, reason))
        self.info("opaque", node.target if node.op == "call_module" else None)

    # -- graph boundaries -----------------------------------------------------------------
    def placeholder(self) -> None:
        if self.shape is not None and len(self.shape) >= 2:
            s = self.g.new_slots(self.shape[1])
            self.g.freeze(s, "model input", False)
            self.set_out(s)
        else:
            self.set_out(None)
        self.info("input", inputs=[])

    def output(self) -> None:
        for a in self.targs:
            self.g.freeze(self.g.slots.get(a.name), "model output", False)
        self.set_out(None)
        self.info("output")

    def get_attr(self) -> None:
        if self.shape is not None and len(self.shape) >= 2:
            s = self.g.new_slots(self.shape[1])
            reason = f"tensor attribute '{self.node.target}' used directly in forward"
            self.g.freeze(s, reason, True)
            self.set_out(s)
        else:
            self.set_out(None)
        self.info("opaque")

    # -- modules --------------------------------------------------------------------------
    def call_module(self, mod: nn.Module) -> None:
        g, node, shape = self.g, self.node, self.shape
        assert shape is not None
        target = str(node.target)
        if len(self.targs) != 1:
            self.opaque(f"module with {len(self.targs)} tensor inputs")
            return
        x = self.targs[0]
        xs, xa = self.slots_of(x)
        xshape = shape_of(x)
        info = self.info("pointwise", target, [x.name])
        if xs is None or xshape is None:
            self.opaque("input without a channel dimension")
            return
        g.calls[target].append(node.name)
        first = g.module_slots.get(target)

        def add(param: str, dim: int, slots: np.ndarray, role: str) -> None:
            g.members.append(Member(target, param, dim, slots, role, node.name, x.name))

        def fresh(n: int) -> np.ndarray:
            # a module called twice has one set of weights: its channels are the same slots
            out = g.new_slots(n)
            if first is not None:
                if len(first[0]) == len(xs):
                    g.unify(first[0], xs)
                g.unify(first[1], out)
            g.module_slots.setdefault(target, (xs, out))
            return out

        def same() -> None:
            if first is not None and len(first[0]) == len(xs):
                g.unify(first[0], xs)
            g.module_slots.setdefault(target, (xs, xs))

        if isinstance(mod, (*ops.CONV, *ops.CONV_TRANSPOSE)):
            transposed = isinstance(mod, ops.CONV_TRANSPOSE)
            if xa != 1:
                self.opaque("convolution over a tensor whose channels are not on dim 1")
                return
            depthwise = (
                not transposed
                and mod.groups > 1
                and mod.groups == mod.in_channels == mod.out_channels
            )
            if depthwise:
                info.kind = "depthwise"
                same()
                add("weight", 0, xs, "norm")
                if mod.bias is not None:
                    add("bias", 0, xs, "norm")
                self.set_out(xs)
                return
            if mod.groups != 1:
                self.opaque(
                    f"grouped convolution (groups={mod.groups}) cannot lose single channels"
                )
                return
            out = fresh(mod.out_channels)
            info.kind = "producer"
            add("weight", 0 if transposed else 1, xs, "in")
            add("weight", 1 if transposed else 0, out, "out")
            if mod.bias is not None:
                add("bias", 0, out, "out")
            self.set_out(out)
            return
        if isinstance(mod, nn.Linear):
            if xa != len(xshape) - 1:
                self.opaque("Linear applied along a dimension that is not the channel dimension")
                return
            out = fresh(mod.out_features)
            info.kind = "producer"
            add("weight", 1, xs, "in")
            add("weight", 0, out, "out")
            if mod.bias is not None:
                add("bias", 0, out, "out")
            self.set_out(out, len(shape) - 1)
            return
        if isinstance(mod, ops.NORM):
            if xa != 1:
                self.opaque("normalization over a dimension that is not the channel dimension")
                return
            info.kind = "norm"
            same()
            for p in ("weight", "bias", "running_mean", "running_var"):
                if isinstance(getattr(mod, p, None), Tensor):
                    add(p, 0, xs, "norm")
            self.set_out(xs, xa)
            return
        if isinstance(mod, nn.PReLU):
            if mod.num_parameters > 1:
                if xa != 1:
                    self.opaque("PReLU over a dimension that is not the channel dimension")
                    return
                same()
                add("weight", 0, xs, "norm")
            self.set_out(xs, xa)
            return
        if isinstance(mod, nn.Flatten):
            self.flatten(xs, xa, xshape, mod.start_dim, mod.end_dim)
            return
        if isinstance(mod, ops.PER_CHANNEL_MODULES) and len(shape) > xa and shape[xa] == len(xs):
            self.set_out(xs, xa)
            return
        self.opaque(f"{type(mod).__name__} is not known to act on each channel separately")

    def flatten(
        self, xs: np.ndarray, xa: int, xshape: tuple[int, ...], start: int, end: int
    ) -> None:
        nd = len(xshape)
        start, end = start % nd, end % nd
        info = self.info("flatten", None, [self.node.args[0].name])
        if xa < start or xa > end:  # channels untouched (e.g. flatten of the spatial dims)
            new_axis = xa if xa < start else xa - (end - start)
            self.set_out(xs, new_axis)
            return
        if xa == start:
            rep = int(np.prod(xshape[start + 1 : end + 1])) if end > start else 1
            self.set_out(np.repeat(xs, rep), start)
            info.detail["repeat"] = rep
            return
        self.opaque("flatten that merges the channel dimension with a preceding one")

    # -- functions and methods --------------------------------------------------------------
    def call_function(self) -> None:
        node, shape = self.node, self.shape
        assert shape is not None
        fn = node.target
        is_method = node.op == "call_method"
        binary = ops.BINARY_METHODS.get(fn) if is_method else ops.BINARY_FUNCTIONS.get(fn)
        if binary is not None:
            self.binary(binary)
            return
        if (not is_method and fn in ops.CAT_FUNCTIONS) or (is_method and fn == "cat"):
            self.cat()
            return
        self.info("pointwise")
        if len(self.targs) != 1:
            self.opaque(f"operation with {len(self.targs)} tensor inputs")
            return
        x = self.targs[0]
        xs, xa = self.slots_of(x)
        xshape = shape_of(x)
        if xs is None or xshape is None:
            if all(a in self.param_only for a in self.targs):
                # computed from parameters alone (a gate self.skips[k], a constant layer's
                # bias.expand(n, -1)): the same value for every input. Its channels are
                # kept like an input's (a parameter-made tensor is not sliced), quietly.
                s = self.g.new_slots(shape[1]) if len(shape) >= 2 else None
                self.g.freeze(s, "a tensor computed from parameters alone", False)
                self.set_out(s)
                self.info("const")
                return
            self.opaque("input without a channel dimension")
            return
        if (not is_method and fn in ops.FLATTEN_FUNCTIONS) or (is_method and fn == "flatten"):
            self.flatten(
                xs, xa, xshape, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
            )
            return
        if is_method and fn in ops.RESHAPE_METHODS:
            self.reshape(xs, xa, xshape)
            return
        if (fn in ops.REDUCE_METHODS) if is_method else (fn in ops.REDUCE_FUNCTIONS):
            self.reduce(xs, xa, xshape)
            return
        per_channel = (
            (fn in ops.PER_CHANNEL_METHODS) if is_method else (fn in ops.PER_CHANNEL_FUNCTIONS)
        )
        if per_channel and len(shape) == len(xshape) and shape[xa] == xshape[xa]:
            if not is_method and fn in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d):
                self.g.info[node.name].detail["padded_avg"] = _padded_avg(node)
            self.set_out(xs, xa)
            return
        if (is_method and fn in ("softmax", "log_softmax")) or fn in (F.softmax, F.log_softmax):
            dim = _arg(node, 1, "dim", None)
            if isinstance(dim, int) and dim % len(xshape) != xa:
                self.set_out(xs, xa)
                return
            self.opaque("softmax over the channel dimension")
            return
        self.opaque("operation not known to act on each channel separately")

    def binary(self, kind: str) -> None:
        g, shape = self.g, self.shape
        assert shape is not None
        info = self.info("binary")
        info.detail["op"] = kind
        full = [a for a in self.targs if shape_of(a) == shape]
        if not full:
            self.opaque(f"broadcasting {kind} that changes the shape")
            return
        ref = full[0]
        rs, ra = self.slots_of(ref)
        for a in self.targs:
            s, ax = self.slots_of(a)
            ash = shape_of(a)
            assert ash is not None
            if a is ref or s is None:
                continue
            if ash == shape and ax == ra:
                g.unify(rs, s)
            elif (
                len(ash) == len(shape)
                and ax == ra
                and ash[ra] == shape[ra]
                and all(d in (1, o) for d, o in zip(ash, shape, strict=True))
            ):  # per-channel values broadcast over the other dims (a squeeze-excite gate)
                g.unify(rs, s)
            elif len(ash) == len(shape) and ash[ra] == 1:
                g.freeze(s, f"a size-1 channel broadcast across channels in {kind}", True)
            elif len(ash) < len(shape) - ra:  # broadcast over trailing dims only: no channels
                continue
            else:
                self.opaque(f"{kind} of tensors with different channel layouts")
                return
        self.set_out(rs, ra)

    def cat(self) -> None:
        g, node, shape = self.g, self.node, self.shape
        assert shape is not None
        info = self.info("pointwise")
        seq = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = _arg(node, 1, "dim", 0)
        parts = (
            [a for a in seq if isinstance(a, torch.fx.Node)]
            if isinstance(seq, (list, tuple))
            else []
        )
        if not parts or any(g.slots.get(a.name) is None for a in parts) or not isinstance(dim, int):
            self.opaque("concatenation the tracer cannot follow")
            return
        ax = g.axis[parts[0].name]
        if any(g.axis[a.name] != ax for a in parts):
            self.opaque("concatenation of tensors with different channel dimensions")
            return
        dim = dim % len(shape)
        info.kind = "cat"
        info.inputs = [a.name for a in parts]
        if dim == ax:
            info.detail["along_channels"] = True
            self.set_out(np.concatenate([g.slots[a.name] for a in parts]), ax)
        else:
            info.detail["along_channels"] = False
            first = g.slots[parts[0].name]
            for a in parts[1:]:
                g.unify(first, g.slots[a.name])
            self.set_out(first, ax)

    def reshape(self, xs: np.ndarray, xa: int, xshape: tuple[int, ...]) -> None:
        shape = self.shape
        assert shape is not None
        # judged from the shapes: (N, C, *rest) -> (N, C * prod(rest)) is a flatten
        if len(shape) == 2 and shape[0] == xshape[0] and xa == 1:
            if shape[1] == int(np.prod(xshape[1:])):
                self.flatten(xs, xa, xshape, 1, -1)
                return
        if shape[: xa + 1] == xshape[: xa + 1]:  # leading dims incl. channels unchanged
            self.set_out(xs, xa)
            return
        self.opaque("reshape that moves the channel dimension")

    def reduce(self, xs: np.ndarray, xa: int, xshape: tuple[int, ...]) -> None:
        node = self.node
        dims = _arg(node, 1, "dim", None)
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if dims is None:
            self.opaque("reduction over all dimensions")
            return
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % len(xshape) for d in dims]
        if xa in dims:
            self.opaque("reduction over the channel dimension")
            return
        self.g.info[node.name].kind = "reduce"
        self.set_out(xs, xa if keep else xa - sum(d < xa for d in dims))


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
    weight = {
        n
        for n, d in g.nx.nodes(data=True)
        if d["kind"] in ("producer", "depthwise") and d["op"] == "call_module"
    }
    best: dict[str, int] = {}
    for n in nx.topological_sort(g.nx):
        preds: Sequence[int] = [best[p] for p in g.nx.predecessors(n)]
        best[n] = (max(preds) if preds else 0) + (n in weight)
    return max(best.values()) if best else 0
