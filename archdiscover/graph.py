"""Trace a model into a data-flow graph and derive its coupled channel groups.

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

The connected components of "same slot" form the **coupled channel groups**: every parameter
slice that must go together for one channel to disappear. A group is *frozen* (cannot be
removed) when it reaches the model input or output, or passes an operation the tracer cannot
see through (a channel-mixing op such as LayerNorm or softmax over channels, a grouped
convolution, a reshape that moves channels); the reason is recorded so nothing is skipped
silently (:func:`inspect`).

Tracing uses :mod:`torch.fx` (symbolic tracing plus shape propagation on the example inputs);
the graph is exposed as a :class:`networkx.DiGraph`. Torch-Pruning's own dependency graph is
not used for grouping because it mis-groups concatenations whose inputs also feed other
layers (e.g. ``cat([z, conv(z)])`` is coupled into one group there); its per-layer pruning
functions do the physical removal in :mod:`archdiscover.compile`.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from .regularizers import CoupledGroupL12, Null, Regularizer

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "InspectReport",
    "Slice",
    "TraceError",
    "channel_groups",
    "coupled_param_groups",
    "inspect",
    "trace",
]

Inputs = Tensor | tuple[Tensor, ...]


class TraceError(RuntimeError):
    """The model cannot be traced (its forward is not ``torch.fx``-traceable)."""


# ---------------------------------------------------------------------------------------------
# Public data
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slice:
    """One parameter or buffer slice of a coupled group.

    Attributes:
        module: qualified name of the module (as in ``model.named_modules()``).
        param: ``"weight"``, ``"bias"``, ``"running_mean"`` or ``"running_var"``.
        dim: the dimension indexed by ``index``.
        index: positions along ``dim`` (several for a Linear after Flatten: ``H*W`` columns).
        role: ``"out"`` (a layer producing the channel), ``"norm"`` (a per-channel layer on
            it: BatchNorm, depthwise conv, PReLU), or ``"in"`` (a layer consuming it).
    """

    module: str
    param: str
    dim: int
    index: tuple[int, ...]
    role: str

    def tensor(self, model: nn.Module) -> Tensor:
        """The sliced view ``getattr(module, param).index_select(dim, index)`` (a copy)."""
        t = _get_tensor(model, self.module, self.param)
        return t.detach().index_select(self.dim, torch.as_tensor(self.index, device=t.device))


@dataclass(frozen=True)
class ChannelGroup:
    """A coupled channel group: all slices that go together when one channel is removed.

    ``id`` is stable for a given model structure; ``widths`` maps each producing layer
    to its total width (the group is one of those channels).
    """

    id: int
    slices: tuple[Slice, ...]

    @property
    def layers(self) -> tuple[str, ...]:
        """Names of all modules the group touches, in order of first appearance."""
        return tuple(dict.fromkeys(s.module for s in self.slices))

    @property
    def producers(self) -> tuple[str, ...]:
        """Modules whose output rows make this channel."""
        return tuple(dict.fromkeys(s.module for s in self.slices if s.role == "out"))

    @property
    def consumers(self) -> tuple[str, ...]:
        """Modules that read this channel (their input-side slices)."""
        return tuple(dict.fromkeys(s.module for s in self.slices if s.role == "in"))

    def params(self, roles: Iterable[str] = ("out", "norm")) -> list[Slice]:
        """The trainable-parameter slices with the given roles (buffers excluded)."""
        roles = tuple(roles)
        return [s for s in self.slices if s.role in roles and s.param in ("weight", "bias")]

    def norm(self, model: nn.Module, roles: Iterable[str] = ("out", "norm")) -> float:
        """Euclidean norm of the group's parameter slices with the given roles."""
        sq = sum(float(s.tensor(model).double().pow(2).sum()) for s in self.params(roles))
        return math.sqrt(sq)

    def is_zero(self, model: nn.Module, roles: Iterable[str] = ("out", "norm")) -> bool:
        """True when every parameter slice with the given roles is exactly zero."""
        return all(not bool(s.tensor(model).any()) for s in self.params(roles))

    @torch.no_grad()
    def zero_(self, model: nn.Module, roles: Iterable[str] = ("out", "norm")) -> None:
        """Set the group's parameter slices with the given roles to zero, in place.

        With the default roles the channel's output becomes exactly zero: the producers'
        rows and biases and the BatchNorm scale and shift vanish.
        """
        for s in self.params(roles):
            t = _get_tensor(model, s.module, s.param)
            t.index_fill_(s.dim, torch.as_tensor(s.index, device=t.device), 0.0)


def _get_tensor(model: nn.Module, module: str, param: str) -> Tensor:
    m = model.get_submodule(module)
    t = getattr(m, param, None)
    if not isinstance(t, Tensor):
        raise KeyError(f"module {module!r} has no tensor {param!r}")
    return t


# ---------------------------------------------------------------------------------------------
# Operation tables
# ---------------------------------------------------------------------------------------------
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
# modules acting on each channel separately (the value of channel c depends only on channel c)
_PER_CHANNEL_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
)
_PER_CHANNEL_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardtanh,
    F.hardswish,
    F.hardsigmoid,
    F.softplus,
    F.softsign,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.interpolate,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.abs,
    torch.neg,
    torch.exp,
    torch.sqrt,
    torch.square,
    F.sigmoid,
    F.tanh,
}
_PER_CHANNEL_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "tanh",
    "clamp",
    "clamp_",
    "abs",
    "neg",
    "exp",
    "sqrt",
    "square",
    "contiguous",
    "clone",
    "detach",
    "float",
    "double",
    "half",
    "to",
    "type_as",
}
_BINARY_FUNCTIONS = {
    operator.add: "add",
    operator.iadd: "add",
    operator.sub: "add",
    operator.isub: "add",
    operator.mul: "mul",
    operator.imul: "mul",
    operator.truediv: "div",
    operator.itruediv: "div",
    torch.add: "add",
    torch.sub: "add",
    torch.mul: "mul",
    torch.div: "div",
}
_BINARY_METHODS = {
    "add": "add",
    "add_": "add",
    "sub": "add",
    "sub_": "add",
    "mul": "mul",
    "mul_": "mul",
    "div": "div",
    "div_": "div",
}
_REDUCE_FUNCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax"}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_FLATTEN_FUNCTIONS = {torch.flatten}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
_NON_TENSOR_OK = {"size", "dim"}


def _op_name(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"{type(gm.get_submodule(node.target)).__name__} '{node.target}'"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', str(node.target))}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    return f"{node.op} {node.target}"


# ---------------------------------------------------------------------------------------------
# The traced graph
# ---------------------------------------------------------------------------------------------
@dataclass
class NodeInfo:
    """How one fx node treats channels (what the value analysis in ``compile`` needs).

    ``kind`` is one of ``input``, ``output``, ``producer`` (Conv/ConvT/Linear),
    ``depthwise``, ``norm``, ``pointwise``, ``binary``, ``cat``, ``flatten``, ``reduce``,
    ``opaque`` or ``other`` (no tensor output).
    """

    kind: str
    module: str | None = None
    inputs: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Member:
    module: str
    param: str
    dim: int
    slots: np.ndarray  # slot id per position along ``dim``
    role: str
    node: str = ""  # the fx node calling the module
    src: str = ""  # the fx node feeding it


class ChannelGraph:
    """A traced model: fx graph, networkx view, channel slots and coupled groups.

    Build it with :func:`trace`. Attributes:
        gm: the ``torch.fx.GraphModule`` (shares submodules with the traced model).
        nx: a ``networkx.DiGraph`` with one node per fx node (attributes ``op``, ``target``,
            ``kind``, ``module_type``, ``shape``, ``channels``) and data-flow edges carrying
            the source's channel count (``channels``).
        info: per fx node name, its :class:`NodeInfo`.
        slots: per fx node name, the slot id of each channel (or None for non-tensors).
        axis: per fx node name, the channel axis of its output.
        shapes: per fx node name, its output shape from the example inputs.
    """

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.gm = gm
        self.info: dict[str, NodeInfo] = {}
        self.slots: dict[str, np.ndarray | None] = {}
        self.axis: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        self.members: list[_Member] = []
        self._n = 0
        self._pairs: list[np.ndarray] = []
        self._frozen: list[tuple[np.ndarray, str, bool]] = []  # slots, reason, unsupported?
        self.unsupported: list[tuple[str, str, str]] = []  # (node, op, reason)
        self.labels: np.ndarray = np.zeros(0, dtype=np.int64)
        self.frozen: dict[int, tuple[str, bool]] = {}
        self.nx = nx.DiGraph()
        self.calls: dict[str, list[str]] = defaultdict(list)  # module -> fx nodes calling it
        self._module_slots: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # -- slot bookkeeping ---------------------------------------------------------------
    def _new(self, n: int) -> np.ndarray:
        s = np.arange(self._n, self._n + n, dtype=np.int64)
        self._n += n
        return s

    def _unify(self, a: np.ndarray, b: np.ndarray) -> None:
        self._pairs.append(np.stack([a, b]))

    def _freeze(self, s: np.ndarray | None, reason: str, unsupported: bool) -> None:
        if s is not None and len(s):
            self._frozen.append((s, reason, unsupported))

    def _finish(self) -> None:
        n = self._n
        if self._pairs:
            pairs = np.concatenate(self._pairs, axis=1)
        else:
            pairs = np.zeros((2, 0), dtype=np.int64)
        adj = coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])), shape=(n, n))
        _, labels = connected_components(adj, directed=False)
        self.labels = labels.astype(np.int64)
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

    # -- groups -------------------------------------------------------------------------
    def groups(self, include_frozen: bool = False) -> list[ChannelGroup]:
        """The coupled channel groups (by default only those that can be removed)."""
        per: dict[int, list[Slice]] = defaultdict(list)
        for m in self.members:
            labs = self.labels[m.slots]
            order = np.argsort(labs, kind="stable")
            labs_sorted = labs[order]
            cuts = np.flatnonzero(np.diff(labs_sorted)) + 1
            for chunk in np.split(order, cuts):
                lab = int(labs[chunk[0]])
                if not include_frozen and lab in self.frozen:
                    continue
                per[lab].append(
                    Slice(m.module, m.param, m.dim, tuple(int(i) for i in chunk), m.role)
                )
        out = [ChannelGroup(lab, tuple(sl)) for lab, sl in per.items()]
        out = [g for g in out if any(s.role == "out" for s in g.slices)]
        out.sort(key=lambda g: g.id)
        return out

    def producer_modules(self) -> list[str]:
        """Modules that produce channels (Conv, ConvTranspose, Linear), in graph order."""
        return list(dict.fromkeys(m.module for m in self.members if m.role == "out"))

    def out_labels(self, module: str) -> np.ndarray:
        """Group label of each output channel of a producing module."""
        for m in self.members:
            if m.module == module and m.role == "out" and m.param == "weight":
                return self.labels[m.slots]
        raise KeyError(f"{module!r} is not a channel-producing layer of the traced graph")


# ---------------------------------------------------------------------------------------------
# Tracing
# ---------------------------------------------------------------------------------------------
def _as_tuple(example_inputs: Inputs) -> tuple[Tensor, ...]:
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(
        isinstance(t, Tensor) for t in example_inputs
    ):
        return tuple(example_inputs)
    raise TypeError(
        "example_inputs must be a tensor or a tuple of tensors, got "
        f"{type(example_inputs).__name__}"
    )


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
    pass under ``torch.no_grad`` to record shapes).
    """
    inputs = _as_tuple(example_inputs)
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
    for node in gm.graph.nodes:
        _visit(g, gm, node)
    g._finish()
    _build_nx(g, gm)
    return g


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, torch.fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(d) for d in meta.shape)


def _tensor_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    out: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n) or n)
    return [n for n in out if _shape(n) is not None]


def _visit(g: ChannelGraph, gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    name = node.name
    shape = _shape(node)
    g.shapes[name] = shape
    targs = _tensor_args(node)
    ins = [a.name for a in targs]

    def set_out(slots: np.ndarray | None, axis: int = 1) -> None:
        g.slots[name] = slots
        g.axis[name] = axis

    def opaque(reason: str, unsupported: bool = True) -> None:
        op = _op_name(node, gm)
        text = f"{reason} ({op})"
        if unsupported and _only_reaches_output(node, gm):
            # e.g. an Unflatten before the output: these channels are output channels anyway
            text, unsupported = f"model output (through {op})", False
        for a in targs:
            g._freeze(g.slots.get(a.name), text, unsupported)
        if shape is not None and len(shape) >= 2:
            s = g._new(shape[1])
            g._freeze(s, text, unsupported)
            set_out(s)
        else:
            set_out(None)
        if unsupported:
            g.unsupported.append((name, op, reason))
        g.info[name] = NodeInfo("opaque", node.target if node.op == "call_module" else None, ins)

    if node.op == "placeholder":
        if shape is not None and len(shape) >= 2:
            s = g._new(shape[1])
            g._freeze(s, "model input", False)
            set_out(s)
        else:
            set_out(None)
        g.info[name] = NodeInfo("input")
        return
    if node.op == "output":
        for a in targs:
            g._freeze(g.slots.get(a.name), "model output", False)
        set_out(None)
        g.info[name] = NodeInfo("output", inputs=ins)
        return
    if node.op == "get_attr":
        if shape is not None and len(shape) >= 2:
            s = g._new(shape[1])
            g._freeze(s, f"tensor attribute '{node.target}' used directly in forward", True)
            set_out(s)
        else:
            set_out(None)
        g.info[name] = NodeInfo("opaque", inputs=ins)
        return
    if shape is None:  # x.size(), x.shape, ...: no channels flow through
        set_out(None)
        g.info[name] = NodeInfo("other", inputs=ins)
        return

    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        _visit_module(g, node, mod, targs, shape, set_out, opaque)
        return
    if node.op in ("call_function", "call_method"):
        _visit_function(g, node, targs, shape, set_out, opaque)
        return
    opaque("unknown node kind")


def _in(g: ChannelGraph, node: torch.fx.Node) -> tuple[np.ndarray | None, int]:
    return g.slots.get(node.name), g.axis.get(node.name, 1)


def _visit_module(g, node, mod, targs, shape, set_out, opaque) -> None:
    name, target = node.name, str(node.target)
    if len(targs) != 1:
        opaque(f"module with {len(targs)} tensor inputs")
        return
    x = targs[0]
    xs, xa = _in(g, x)
    xshape = _shape(x)
    info = NodeInfo("pointwise", target, [x.name])
    g.info[name] = info
    if xs is None or xshape is None:
        opaque("input without a channel dimension")
        return
    ndim = len(xshape)
    g.calls[target].append(name)
    first = g._module_slots.get(target)

    def add(param: str, dim: int, slots: np.ndarray, role: str) -> None:
        g.members.append(_Member(target, param, dim, slots, role, name, x.name))

    def fresh(n: int) -> np.ndarray:
        # a module called twice has one set of weights: its channels are the same slots
        out = g._new(n)
        if first is not None:
            if len(first[0]) == len(xs):
                g._unify(first[0], xs)
            g._unify(first[1], out)
        g._module_slots.setdefault(target, (xs, out))
        return out

    def same() -> None:
        if first is not None and len(first[0]) == len(xs):
            g._unify(first[0], xs)
        g._module_slots.setdefault(target, (xs, xs))

    if isinstance(mod, _CONV + _CONVT):
        transposed = isinstance(mod, _CONVT)
        if xa != 1:
            opaque("convolution over a tensor whose channels are not on dim 1")
            return
        depthwise = (
            not transposed and mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
        )
        if depthwise:
            info.kind = "depthwise"
            same()
            add("weight", 0, xs, "norm")
            if mod.bias is not None:
                add("bias", 0, xs, "norm")
            set_out(xs)
            return
        if mod.groups != 1:
            opaque(f"grouped convolution (groups={mod.groups}) cannot lose single channels")
            return
        out = fresh(mod.out_channels)
        info.kind = "producer"
        add("weight", 0 if transposed else 1, xs, "in")
        add("weight", 1 if transposed else 0, out, "out")
        if mod.bias is not None:
            add("bias", 0, out, "out")
        set_out(out)
        return
    if isinstance(mod, nn.Linear):
        if xa != ndim - 1:
            opaque("Linear applied along a dimension that is not the channel dimension")
            return
        out = fresh(mod.out_features)
        info.kind = "producer"
        add("weight", 1, xs, "in")
        add("weight", 0, out, "out")
        if mod.bias is not None:
            add("bias", 0, out, "out")
        set_out(out, len(shape) - 1)
        return
    if isinstance(mod, _NORM):
        if xa != 1:
            opaque("normalization over a dimension that is not the channel dimension")
            return
        info.kind = "norm"
        same()
        for p in ("weight", "bias", "running_mean", "running_var"):
            if isinstance(getattr(mod, p, None), Tensor):
                add(p, 0, xs, "norm")
        set_out(xs, xa)
        return
    if isinstance(mod, nn.PReLU):
        if mod.num_parameters > 1:
            if xa != 1:
                opaque("PReLU over a dimension that is not the channel dimension")
                return
            same()
            add("weight", 0, xs, "norm")
        set_out(xs, xa)
        return
    if isinstance(mod, nn.Flatten):
        _flatten(g, node, xs, xa, xshape, shape, mod.start_dim, mod.end_dim, set_out, opaque)
        return
    if isinstance(mod, _PER_CHANNEL_MODULES):
        if len(shape) > xa and shape[xa] == len(xs):
            set_out(xs, xa)
            return
    opaque(f"{type(mod).__name__} is not known to act on each channel separately")


def _flatten(g, node, xs, xa, xshape, shape, start, end, set_out, opaque) -> None:
    nd = len(xshape)
    start, end = start % nd, end % nd
    g.info[node.name] = NodeInfo("flatten", None, [node.args[0].name])
    if xa < start or xa > end:  # channels untouched (e.g. flatten of the spatial dims)
        new_axis = xa if xa < start else xa - (end - start)
        set_out(xs, new_axis)
        return
    if xa == start:
        rep = int(np.prod(xshape[start + 1 : end + 1])) if end > start else 1
        set_out(np.repeat(xs, rep), start)
        g.info[node.name].detail["repeat"] = rep
        return
    opaque("flatten that merges the channel dimension with a preceding one")


def _visit_function(g, node, targs, shape, set_out, opaque) -> None:
    name = node.name
    fn = node.target
    is_method = node.op == "call_method"
    info = NodeInfo("pointwise", None, [a.name for a in targs])
    g.info[name] = info

    binary = _BINARY_METHODS.get(fn) if is_method else _BINARY_FUNCTIONS.get(fn)
    if binary is not None:
        info.kind = "binary"
        info.detail["op"] = binary
        full = [a for a in targs if _shape(a) == shape]
        if not full:
            opaque(f"broadcasting {binary} that changes the shape")
            return
        ref = full[0]
        rs, ra = _in(g, ref)
        for a in targs:
            s, ax = _in(g, a)
            ash = _shape(a)
            if a is ref or s is None:
                continue
            if ash == shape and ax == ra:
                g._unify(rs, s)
            elif (
                len(ash) == len(shape)
                and ax == ra
                and ash[ra] == shape[ra]
                and all(d in (1, o) for d, o in zip(ash, shape, strict=True))
            ):  # per-channel values broadcast over the other dims (a squeeze-excite gate)
                g._unify(rs, s)
            elif len(ash) == len(shape) and ash[ra] == 1:
                g._freeze(s, f"a size-1 channel broadcast across channels in {binary}", True)
            elif len(ash) < len(shape) - ra:  # broadcast over trailing dims only: no channels
                continue
            else:
                opaque(f"{binary} of tensors with different channel layouts")
                return
        set_out(rs, ra)
        return

    if (not is_method and fn in _CAT_FUNCTIONS) or (is_method and fn == "cat"):
        seq = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        parts = (
            [a for a in seq if isinstance(a, torch.fx.Node)]
            if isinstance(seq, (list, tuple))
            else []
        )
        if not parts or any(g.slots.get(a.name) is None for a in parts) or not isinstance(dim, int):
            opaque("concatenation the tracer cannot follow")
            return
        ax = g.axis[parts[0].name]
        if any(g.axis[a.name] != ax for a in parts):
            opaque("concatenation of tensors with different channel dimensions")
            return
        dim = dim % len(shape)
        info.kind = "cat"
        info.inputs = [a.name for a in parts]
        if dim == ax:
            info.detail["along_channels"] = True
            set_out(np.concatenate([g.slots[a.name] for a in parts]), ax)
        else:
            info.detail["along_channels"] = False
            first = g.slots[parts[0].name]
            for a in parts[1:]:
                g._unify(first, g.slots[a.name])
            set_out(first, ax)
        return

    if len(targs) != 1:
        opaque(f"operation with {len(targs)} tensor inputs")
        return
    x = targs[0]
    xs, xa = _in(g, x)
    xshape = _shape(x)
    if xs is None or xshape is None:
        opaque("input without a channel dimension")
        return

    if (not is_method and fn in _FLATTEN_FUNCTIONS) or (is_method and fn == "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        _flatten(g, node, xs, xa, xshape, shape, start, end, set_out, opaque)
        return
    if is_method and fn in _RESHAPE_METHODS:
        # judged from the shapes: (N, C, *rest) -> (N, C * prod(rest)) is a flatten
        if len(shape) == 2 and shape[0] == xshape[0] and xa == 1:
            if shape[1] == int(np.prod(xshape[1:])):
                _flatten(g, node, xs, xa, xshape, shape, 1, -1, set_out, opaque)
                return
        if shape[: xa + 1] == xshape[: xa + 1]:  # leading dims incl. channels unchanged
            set_out(xs, xa)
            return
        opaque("reshape that moves the channel dimension")
        return
    red = (fn in _REDUCE_METHODS) if is_method else (fn in _REDUCE_FUNCTIONS)
    if red:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if dims is None:
            opaque("reduction over all dimensions")
            return
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % len(xshape) for d in dims]
        if xa in dims:
            opaque("reduction over the channel dimension")
            return
        info.kind = "reduce"
        new_axis = xa if keep else xa - sum(d < xa for d in dims)
        set_out(xs, new_axis)
        return
    per_channel = (fn in _PER_CHANNEL_METHODS) if is_method else (fn in _PER_CHANNEL_FUNCTIONS)
    if per_channel and len(shape) == len(xshape) and shape[xa] == xshape[xa]:
        if not is_method and fn in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d):
            info.detail["padded_avg"] = _padded_avg(node)
        set_out(xs, xa)
        return
    if (is_method and fn in ("softmax", "log_softmax")) or fn in (F.softmax, F.log_softmax):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if isinstance(dim, int) and dim % len(xshape) != xa:
            set_out(xs, xa)
            return
        opaque("softmax over the channel dimension")
        return
    opaque("operation not known to act on each channel separately")


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
    pad = node.kwargs.get("padding", node.args[3] if len(node.args) > 3 else 0)
    return any(p != 0 for p in (pad if isinstance(pad, (tuple, list)) else (pad,)))


def _build_nx(g: ChannelGraph, gm: torch.fx.GraphModule) -> None:
    G = g.nx
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


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------
def channel_groups(model: nn.Module, example_inputs: Inputs) -> list[ChannelGroup]:
    """The removable coupled channel groups of ``model``.

    Example:
        >>> groups = archdiscover.channel_groups(model, torch.randn(1, 3, 32, 32))
        >>> groups[0].slices[0]
        Slice(module='conv1', param='weight', dim=0, index=(0,), role='out')
    """
    return trace(model, example_inputs).groups()


@dataclass
class InspectReport:
    """What can shrink and what cannot, with the reason.

    Attributes:
        traceable: whether torch.fx could trace the model (``error`` says why not).
        groups: number of removable coupled channel groups.
        layers: per producing layer, ``(removable channels, total channels)``.
        frozen: per reason, the number of channel groups it blocks.
        unsupported: ``(node, operation, reason)`` for every operation the tracer could not
            see through; channels touching them are never removed.
    """

    traceable: bool
    error: str = ""
    groups: int = 0
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    frozen: dict[str, int] = field(default_factory=dict)
    unsupported: list[tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.traceable:
            return f"not traceable: {self.error}"
        lines = [f"{self.groups} removable coupled channel groups", ""]
        w = max([len(n) for n in self.layers] + [5])
        lines.append(f"{'layer':<{w}}  removable / channels")
        for n, (a, b) in self.layers.items():
            lines.append(f"{n:<{w}}  {a:>9} / {b}")
        if self.frozen:
            lines += ["", "channels that cannot be removed:"]
            lines += [f"  {k}: {v} group(s)" for k, v in self.frozen.items()]
        if self.unsupported:
            lines += ["", "operations the compiler cannot shrink through:"]
            lines += [f"  {node}: {op}: {why}" for node, op, why in self.unsupported]
        return "\n".join(lines)


def inspect(model: nn.Module, example_inputs: Inputs) -> InspectReport:
    """Report what can shrink and what cannot (and why), without changing anything."""
    try:
        g = trace(model, example_inputs)
    except TraceError as e:
        return InspectReport(traceable=False, error=str(e))
    report = InspectReport(traceable=True, unsupported=list(g.unsupported))
    report.groups = len(g.groups())
    for mod in g.producer_modules():
        labs = g.out_labels(mod)
        removable = sum(int(lab) not in g.frozen for lab in labs)
        report.layers[mod] = (removable, len(labs))
    counts: dict[str, int] = defaultdict(int)
    for _lab, (reason, _u) in g.frozen.items():
        counts[reason] += 1
    report.frozen = dict(counts)
    return report


def producer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every Conv / ConvTranspose / Linear module, by name."""
    out: dict[str, int] = {}
    for n, m in model.named_modules():
        if isinstance(m, _CONV + _CONVT):
            out[n] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[n] = m.out_features
    return out


def coupled_param_groups(
    model: nn.Module,
    example_inputs: Inputs,
    lam: float,
    *,
    groups: Sequence[ChannelGroup] | None = None,
    roles: Sequence[str] = ("out", "norm"),
    params: Sequence[str] = ("weight", "bias"),
    others: Regularizer | None = None,
) -> list[dict[str, Any]]:
    """Optimizer param groups whose regularizer acts on whole coupled channel groups.

    The first param group holds every parameter with a slice in a removable coupled group
    (by default the producing rows and biases and the per-channel BatchNorm / depthwise
    parameters, ``roles=("out", "norm")``) under one
    :class:`~archdiscover.regularizers.CoupledGroupL12` of strength ``lam``: one prox zeros
    a channel's conv filter, bias, BatchNorm scale and shift together (and, across residual
    additions, every producer of that stream channel), which makes its output exactly zero
    so that :func:`archdiscover.compile` removes it. The second holds all other parameters
    with ``others`` (default :class:`~archdiscover.regularizers.Null`).

    Growth versus pruning: a channel whose *whole* group is zero, bias and BatchNorm shift
    included, feeds exactly 0 into its ReLU, and ``relu'(0) = 0`` in PyTorch, so it gets no
    gradient and the inverse scale space can never add it back: with the default roles,
    start from the channels you are willing to keep (a denser ``sparse_init_``). To let
    Bregman iterations *add* channels from a very sparse start, regularize the filters
    only (``roles=("out",), params=("weight",)``) and keep biases non-zero
    (``sparse_init_(..., bias="keep")``): a dead channel then outputs a constant,
    which ``compile`` folds into the next layer where that is exact.

    Example:
        >>> pg = coupled_param_groups(model, torch.randn(1, 3, 32, 32), lam=0.05)
        >>> opt = archdiscover.LinBreg(pg, lr=0.1, momentum=0.9)
        >>> archdiscover.sparse_init_(model, 0.1, reg=opt)  # 10% of the channels alive
    """
    roles = tuple(roles)
    if not set(roles) <= {"out", "norm", "in"} or not roles:
        raise ValueError(f"roles must be a non-empty subset of ('out', 'norm', 'in'), got {roles}")
    if groups is None:
        groups = channel_groups(model, example_inputs)
    index: dict[int, tuple[int, np.ndarray]] = {}  # id(param) -> (dim, ids)
    tensors: dict[int, nn.Parameter] = {}
    for gid, grp in enumerate(groups):
        for s in grp.params(roles):
            if s.param not in params:
                continue
            p = getattr(model.get_submodule(s.module), s.param)
            if not isinstance(p, nn.Parameter):
                continue
            key = id(p)
            if key not in index:
                index[key] = (s.dim, np.full(p.shape[s.dim], -1, dtype=np.int64))
                tensors[key] = p
            dim, ids = index[key]
            if dim != s.dim:
                raise ValueError(
                    f"{s.module}.{s.param} is sliced along dims {dim} and {s.dim} by the "
                    f"chosen roles {roles}; a coupled group regularizer needs one dim per tensor"
                )
            ids[list(s.index)] = gid
    order = [k for k in tensors]  # insertion order: graph order
    coupled = [tensors[k] for k in order]
    reg = CoupledGroupL12(lam, [(index[k][0], index[k][1].tolist()) for k in order])
    chosen = set(order)
    rest = [p for p in model.parameters() if id(p) not in chosen]
    out: list[dict[str, Any]] = [{"params": coupled, "reg": reg, "name": "coupled"}]
    if rest:
        out.append(
            {"params": rest, "reg": others if others is not None else Null(), "name": "other"}
        )
    return out
