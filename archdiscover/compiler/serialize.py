"""Saving and loading compact models as plain data: no pickled code, nothing to execute.

A compiled file (``torch.save`` of a dict, read back with ``weights_only=True``) holds:

* ``modules``: per narrowed layer, its type (one of :data:`LAYER_TYPES`) and constructor
  arguments, every one of which is checked on load (names, types, sane bounds; nothing
  else, so no ``device`` or other argument passes through);
* ``graph`` (when the compiler dropped residual branches): the ``torch.fx`` graph as a list
  of nodes. On load every node name and placeholder is a Python identifier, every module
  or attribute target a dotted path that exists in the rebuilt model, every function one of
  an explicit list of exact callables (:func:`allowed_functions`), every method one of an
  explicit list (:data:`ALLOWED_METHODS`), every argument plain data. fx generates its
  ``forward`` source from these names, so an unchecked name would be code: a name that is
  not an identifier, a function not on the list, anything unexpected is a ``ValueError``
  naming the file and the node, before any code is generated;
* ``state_dict``: tensors only.
"""

from __future__ import annotations

import builtins
import keyword
import math
import operator
import os
import pathlib
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .._io import save_atomic
from ..graph import ops
from ..layers import PrunedMultiheadAttention
from .errors import CompileError

__all__ = [
    "ALLOWED_METHODS",
    "FORMAT",
    "LAYER_TYPES",
    "allowed_functions",
    "load_compiled",
    "save_compiled",
]

FORMAT = "archdiscover.compiled/1"

# ---------------------------------------------------------------------------------------------
# Layer specs
# ---------------------------------------------------------------------------------------------
_MAX_WIDTH = 1 << 20  # channels / features
_MAX_GEOMETRY = 4096  # kernel size, stride, padding, dilation
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _int(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _ints(lo: int, hi: int) -> Callable[[Any], bool]:
    one = _int(lo, hi)
    return lambda v: (
        one(v) or (isinstance(v, (list, tuple)) and 1 <= len(v) <= 3 and all(map(one, v)))
    )


def _real(lo: float, hi: float, none: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if v is None:
            return none
        return (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and lo <= v <= hi
        )

    return ok


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _padding(v: Any) -> bool:
    return v in ("same", "valid") or _ints(0, _MAX_GEOMETRY)(v)


_CONV_SPEC: dict[str, Callable[[Any], bool]] = {
    "in_channels": _int(1, _MAX_WIDTH),
    "out_channels": _int(1, _MAX_WIDTH),
    "kernel_size": _ints(1, _MAX_GEOMETRY),
    "stride": _ints(1, _MAX_GEOMETRY),
    "padding": _padding,
    "dilation": _ints(1, _MAX_GEOMETRY),
    "groups": _int(1, _MAX_WIDTH),
    "padding_mode": lambda v: v in _PADDING_MODES,
    "bias": _bool,
}
_NORM_SPEC: dict[str, Callable[[Any], bool]] = {
    "num_features": _int(1, _MAX_WIDTH),
    "eps": _real(0.0, 1.0),
    "momentum": _real(0.0, 1.0, none=True),
    "affine": _bool,
    "track_running_stats": _bool,
}
_SPECS: dict[type[nn.Module], dict[str, Callable[[Any], bool]]] = {
    nn.Linear: {
        "in_features": _int(1, _MAX_WIDTH),
        "out_features": _int(1, _MAX_WIDTH),
        "bias": _bool,
    },
    **{t: _CONV_SPEC for t in ops.CONV},
    **{t: {**_CONV_SPEC, "output_padding": _ints(0, _MAX_GEOMETRY)} for t in ops.CONV_TRANSPOSE},
    **{t: _NORM_SPEC for t in ops.NORM},
    nn.PReLU: {"num_parameters": _int(1, _MAX_WIDTH)},
    nn.GroupNorm: {
        "num_groups": _int(1, _MAX_WIDTH),
        "num_channels": _int(1, _MAX_WIDTH),
        "eps": _real(0.0, 1.0),
        "affine": _bool,
    },
    PrunedMultiheadAttention: {
        "embed_dim": _int(1, _MAX_WIDTH),
        "num_heads": _int(1, _MAX_WIDTH),
        "head_dim": _int(1, _MAX_WIDTH),
        "out_dim": _int(1, _MAX_WIDTH),
        "dropout": _real(0.0, 1.0),
        "batch_first": _bool,
        "bias": _bool,
    },
}
#: a saved layer of the key's type may replace a layer of one of these types in the model
_REPLACES: dict[type[nn.Module], tuple[type[nn.Module], ...]] = {
    PrunedMultiheadAttention: (nn.MultiheadAttention,)
}
#: the layer types a compiled file may rebuild, by name
LAYER_TYPES: dict[str, type[nn.Module]] = {t.__name__: t for t in _SPECS}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PATH = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")


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
        spec = _SPECS.get(type(m))
        if spec is None or not name:
            continue
        args = {k: _plain(getattr(m, k)) for k in spec if k != "bias"}
        if "bias" in spec:  # Linear / Conv / ConvTranspose / attention take a bias flag
            args["bias"] = getattr(m, "in_proj_bias" if "head_dim" in spec else "bias") is not None
        specs[name] = {"type": type(m).__name__, "args": args}
    return specs


def _build_module(where: str, name: str, spec: Any, existing: nn.Module) -> nn.Module:
    if not isinstance(spec, dict) or set(spec) != {"type", "args"}:
        raise ValueError(f"{where}: layer {name!r}: a layer spec must be {{'type', 'args'}}")
    cls = LAYER_TYPES.get(spec["type"]) if isinstance(spec["type"], str) else None
    if cls is None:
        raise ValueError(f"{where}: layer {name!r}: layer type {spec['type']!r} is not allowed")
    if type(existing) is not cls and not isinstance(existing, _REPLACES.get(cls, ())):
        raise ValueError(
            f"{where}: layer {name!r} is a {type(existing).__name__} in the model, the file "
            f"makes it a {cls.__name__}"
        )
    args, checks = spec["args"], _SPECS[cls]
    if not isinstance(args, dict) or set(args) != set(checks):
        got = sorted(args) if isinstance(args, dict) else args
        raise ValueError(
            f"{where}: layer {name!r}: arguments must be exactly {sorted(checks)}, got {got}"
        )
    for key, ok in checks.items():
        if not ok(args[key]):
            raise ValueError(f"{where}: layer {name!r}: bad value {args[key]!r} for {key!r}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    groups = kw.get("groups", 1)
    if "in_channels" in kw and (kw["in_channels"] % groups or kw["out_channels"] % groups):
        raise ValueError(f"{where}: layer {name!r}: channels are not divisible by groups={groups}")
    return cls(**kw)


# ---------------------------------------------------------------------------------------------
# Graphs
# ---------------------------------------------------------------------------------------------
_EXTRA_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    operator.getitem,
    operator.neg,
    operator.matmul,
    operator.floordiv,
    operator.pow,
    builtins.getattr,
    torch.reshape,
    torch.permute,
    torch.transpose,
    torch.squeeze,
    torch.unsqueeze,
    torch.chunk,
    torch.split,
    torch.stack,
    torch.unbind,
    torch.t,
    torch.swapaxes,
    torch.movedim,
    torch.einsum,
    torch.maximum,
    torch.minimum,
    torch.matmul,
    torch.bmm,
    torch.softmax,
    torch.sigmoid,
    torch.mean,
    F.linear,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.batch_norm,
    F.instance_norm,
    F.layer_norm,
    F.group_norm,
    F.softmax,
    F.log_softmax,
    F.scaled_dot_product_attention,
    F.pad,
    F.normalize,
    F.glu,
)
#: attribute names ``getattr`` may read in a saved graph (``x.shape`` traces to getattr)
_GETATTR_NAMES = frozenset({"shape", "dtype", "device", "ndim"})
#: tensor methods a saved graph may call
ALLOWED_METHODS = frozenset(
    ops.PER_CHANNEL_METHODS
    | set(ops.BINARY_METHODS)
    | ops.RESHAPE_METHODS
    | ops.REDUCE_METHODS
    | {
        "size",
        "dim",
        "permute",
        "transpose",
        "unsqueeze",
        "squeeze",
        "expand",
        "expand_as",
        "chunk",
        "split",
        "softmax",
        "log_softmax",
        "matmul",
        "sum",
        "amax",
        "sub",
        "pow",
        "unflatten",
        "unbind",
        "t",
        "swapaxes",
        "movedim",
        "view_as",
        "reshape_as",
        "repeat",
        "masked_fill",
    }
)
_DTYPES = frozenset(
    {
        "float32",
        "float64",
        "float16",
        "bfloat16",
        "int64",
        "int32",
        "int16",
        "int8",
        "uint8",
        "bool",
    }
)


def allowed_functions() -> dict[str, Callable[..., Any]]:
    """The exact callables a saved graph may call, by ``"module:name"``."""
    table: dict[str, Callable[..., Any]] = {}
    fns = (
        *ops.PER_CHANNEL_FUNCTIONS,
        *ops.BINARY_FUNCTIONS,
        *ops.REDUCE_FUNCTIONS,
        *ops.FLATTEN_FUNCTIONS,
        *ops.CAT_FUNCTIONS,
        *_EXTRA_FUNCTIONS,
    )
    for fn in fns:
        table[_key(fn)] = fn
    return table


_HOMES = (
    ("operator", operator),
    ("torch.nn.functional", F),
    ("torch", torch),
    ("builtins", builtins),
)


def _key(fn: Callable[..., Any]) -> str:
    """``"module:name"`` of an allowed callable: the first home that holds it under its name."""
    name = fn.__name__
    for home, mod in _HOMES:
        if getattr(mod, name, None) is fn:
            return f"{home}:{name}"
    raise ValueError(
        f"{fn!r} is not reachable as operator / torch / torch.nn.functional / builtins"
    )


def _encode_target(target: Any, table: dict[str, Callable[..., Any]]) -> Any:
    if isinstance(target, str):
        return target
    for key, fn in table.items():
        if fn is target:
            return {"fn": key}
    raise CompileError(
        f"cannot save a graph that calls {getattr(target, '__name__', target)!r}: only the "
        "functions of archdiscover.compiler.serialize.allowed_functions() can be saved"
    )


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


def _encode_graph(graph: torch.fx.Graph) -> list[dict[str, Any]]:
    table = allowed_functions()
    out = []
    for n in graph.nodes:
        if n.op == "call_method" and n.target not in ALLOWED_METHODS:
            raise CompileError(f"cannot save a graph that calls the method .{n.target}()")
        out.append(
            {
                "name": n.name,
                "op": n.op,
                "target": _encode_target(n.target, table),
                "args": _encode_arg(n.args),
                "kwargs": _encode_arg(n.kwargs),
            }
        )
    return out


class _Decoder:
    """Rebuild and check a saved graph, node by node; every refusal names the node."""

    def __init__(self, where: str, model: nn.Module) -> None:
        self.where = where
        self.model = model
        self.table = allowed_functions()
        self.modules = dict(model.named_modules())
        self.env: dict[str, torch.fx.Node] = {}

    def fail(self, node: Any, msg: str) -> ValueError:
        return ValueError(f"{self.where}: graph node {node!r}: {msg}")

    def arg(self, a: Any, node: str, depth: int = 0) -> Any:
        if depth > 32:
            raise self.fail(node, "arguments nested too deeply")
        if isinstance(a, list):
            return [self.arg(x, node, depth + 1) for x in a]
        if isinstance(a, dict):
            if len(a) != 1:
                raise self.fail(node, f"malformed argument {a!r}")
            ((kind, v),) = a.items()
            if kind == "node":
                if not isinstance(v, str) or v not in self.env:
                    raise self.fail(node, f"refers to an unknown node {v!r}")
                return self.env[v]
            if kind == "tuple" and isinstance(v, list):
                return tuple(self.arg(x, node, depth + 1) for x in v)
            if kind == "dict" and isinstance(v, dict):
                for k in v:
                    if not isinstance(k, str) or not _NAME.match(k):
                        raise self.fail(node, f"keyword {k!r} is not an identifier")
                return {k: self.arg(x, node, depth + 1) for k, x in v.items()}
            if kind == "slice" and isinstance(v, list) and len(v) == 3:
                return slice(*(self.arg(x, node, depth + 1) for x in v))
            if kind == "dtype" and v in _DTYPES:
                return getattr(torch, v)
            if kind == "ellipsis" and v is True:
                return Ellipsis
            raise self.fail(node, f"malformed argument {a!r}")
        if isinstance(a, (int, float, str, bool)) or a is None:
            return a
        raise self.fail(node, f"argument of type {type(a).__name__} is not plain data")

    def target(self, d: dict[str, Any]) -> Any:
        name, op, t = d["name"], d["op"], d["target"]
        if op == "call_function":
            key = t.get("fn") if isinstance(t, dict) and set(t) == {"fn"} else None
            fn = self.table.get(key) if isinstance(key, str) else None
            if fn is None:
                raise self.fail(name, f"calls {t!r}, which is not an allowed function")
            return fn
        if not isinstance(t, str):
            raise self.fail(name, f"target {t!r} is not a name")
        if op == "placeholder" or op == "output":
            if not _is_identifier(t):
                raise self.fail(name, f"target {t!r} is not an identifier")
        elif op == "call_method":
            if t not in ALLOWED_METHODS:
                raise self.fail(name, f"calls the method {t!r}, which is not allowed")
        elif op == "call_module":
            if not _PATH.match(t) or t not in self.modules or not t:
                raise self.fail(name, f"module {t!r} does not exist in the rebuilt model")
        elif op == "get_attr":
            owner, _, attr = t.rpartition(".")
            if (
                not _PATH.match(t)
                or owner not in self.modules
                or not isinstance(getattr(self.modules[owner], attr, None), Tensor)
            ):
                raise self.fail(name, f"attribute {t!r} is not a tensor of the rebuilt model")
        return t

    def graph(self, nodes: Any) -> torch.fx.Graph:
        if not isinstance(nodes, list) or not nodes:
            raise ValueError(f"{self.where}: the graph must be a non-empty list of nodes")
        graph = torch.fx.Graph()
        outputs = 0
        for d in nodes:
            keys = {"name", "op", "target", "args", "kwargs"}
            if not isinstance(d, dict) or set(d) != keys:
                raise ValueError(
                    f"{self.where}: a graph node must have exactly the keys {sorted(keys)}"
                )
            name, op = d["name"], d["op"]
            if not isinstance(name, str) or not _is_identifier(name) or name in self.env:
                raise self.fail(name, "node names must be distinct Python identifiers")
            if op not in (
                "placeholder",
                "get_attr",
                "call_function",
                "call_method",
                "call_module",
                "output",
            ):
                raise self.fail(name, f"unknown op {op!r}")
            target = self.target(d)
            args = self.arg(d["args"], name)
            kwargs = self.arg(d["kwargs"], name)
            if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                raise self.fail(name, "args must be a tuple and kwargs a dict")
            if op == "call_function" and target is builtins.getattr:
                if len(args) != 2 or kwargs or args[1] not in _GETATTR_NAMES:
                    raise self.fail(name, f"getattr may only read {sorted(_GETATTR_NAMES)}")
            if op == "placeholder" and (args or kwargs):
                raise self.fail(
                    name, "a placeholder with arguments (a default value) is not allowed"
                )
            if op == "output":
                if len(args) != 1 or kwargs:
                    raise self.fail(name, "the output node takes one argument")
                graph.output(args[0])
                outputs += 1
                continue
            self.env[name] = graph.create_node(op, target, args, kwargs, name=name)
        if outputs != 1:
            raise ValueError(f"{self.where}: the graph must have exactly one output node")
        if any(
            n.name != d["name"]
            for n, d in zip(graph.nodes, nodes, strict=False)
            if n.op != "output"
        ):
            raise ValueError(f"{self.where}: the graph's node names are not the saved ones")
        return graph


def _is_identifier(s: str) -> bool:
    return s.isidentifier() and s.isascii() and not keyword.iskeyword(s) and bool(_NAME.match(s))


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def save_compiled(
    model: nn.Module, report: dict[str, Any], path: str | os.PathLike
) -> pathlib.Path:
    """Write ``model``'s narrowed layer shapes, its graph (for a ``GraphModule``) and weights."""
    specs = _module_specs(model)
    owned = tuple(f"{n}." for n in specs)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "modules": specs,
        "graph": _encode_graph(model.graph) if isinstance(model, torch.fx.GraphModule) else None,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        # tensors outside the rebuilt layers (a per-channel scale, a class token): shapes
        "tensors": {
            k: list(v.shape) for k, v in model.state_dict().items() if not k.startswith(owned)
        },
        "attributes": _plain(report.get("attributes", {})),
        "report": _plain(report),
    }
    return save_atomic(payload, path)


def _resize_tensors(where: str, model: nn.Module, shapes: Any) -> None:
    """Give tensors outside the rebuilt layers their saved shapes (values come with the
    state dict); every name must be a parameter or buffer of the model, every size an int."""
    if not isinstance(shapes, dict):
        raise ValueError(f"{where}: 'tensors' must map tensor names to shapes")
    for name, shape in shapes.items():
        ok = (
            isinstance(name, str)
            and _PATH.match(name)
            and isinstance(shape, list)
            and len(shape) <= 8
            and all(_int(0, _MAX_WIDTH)(d) for d in shape)
        )
        if not ok:
            raise ValueError(f"{where}: bad tensor shape entry {name!r}: {shape!r}")
        owner, _, attr = name.rpartition(".")
        try:
            m = model.get_submodule(owner)
        except AttributeError:
            raise ValueError(f"{where}: tensor {name!r} does not exist in the model") from None
        t = m._parameters.get(attr) if attr in m._parameters else m._buffers.get(attr)
        if not isinstance(t, Tensor):
            raise ValueError(f"{where}: {name!r} is not a parameter or buffer of the model")
        if list(t.shape) == shape:
            continue
        new = torch.empty(shape, dtype=t.dtype)
        if attr in m._parameters:
            m._parameters[attr] = nn.Parameter(new, requires_grad=t.requires_grad)
        else:
            m._buffers[attr] = new


def _set_attributes(where: str, model: nn.Module, attrs: Any) -> None:
    """Head counts the compiler updated (``num_heads`` and the like): each one an int
    attribute the module already has, set to an int within bounds."""
    from .rewrite import HEAD_ATTRIBUTES

    if not isinstance(attrs, dict):
        raise ValueError(f"{where}: 'attributes' must map module names to attributes")
    for name, values in attrs.items():
        if not isinstance(name, str) or not (name == "" or _PATH.match(name)):
            raise ValueError(f"{where}: {name!r} is not a module name")
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{where}: module {name!r} does not exist in the model") from None
        if not isinstance(values, dict):
            raise ValueError(f"{where}: attributes of {name!r} must be a dict")
        for attr, v in values.items():
            cur = getattr(m, attr, None) if attr in HEAD_ATTRIBUTES else None
            if not isinstance(cur, int) or isinstance(cur, bool) or not _int(1, _MAX_WIDTH)(v):
                raise ValueError(f"{where}: attribute {attr!r} of {name!r} cannot be set to {v!r}")
            setattr(m, attr, v)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def load_compiled(path: str | os.PathLike, build: Callable[[], nn.Module]) -> nn.Module:
    """Rebuild a compact model saved by :meth:`Compiled.save`.

    ``build()`` constructs the supernet (e.g. ``lambda: archdiscover.models.build("resnet18")``);
    its layers are replaced by ones of the saved shapes (each checked: type, arguments,
    bounds), residual branches dropped by the compiler are removed again (the saved graph is
    checked node by node before fx generates code from it), and the weights are loaded with
    ``torch.load(weights_only=True)``. A file that is not a compiled model, or that was
    tampered with, raises ``ValueError`` naming the file and what is wrong with it.
    """
    path = pathlib.Path(path)
    where = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"no compiled model at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(
            f"{where}: not a readable compiled model ({type(e).__name__}: {first})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{where}: not an archdiscover compiled model (missing format tag)")
    missing = {"modules", "graph", "state_dict"} - set(payload)
    if missing:
        raise ValueError(f"{where}: the file lacks {sorted(missing)}")
    specs, state = payload["modules"], payload["state_dict"]
    if not isinstance(specs, dict):
        raise ValueError(f"{where}: 'modules' must be a dict of layer specs")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and _PATH.match(k) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{where}: 'state_dict' must map parameter names to tensors")
    model = build()
    for name, spec in specs.items():
        if not isinstance(name, str) or not _PATH.match(name):
            raise ValueError(f"{where}: {name!r} is not a layer name")
        try:
            existing = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"{where}: layer {name!r} does not exist in the model built by {build!r}"
            ) from None
        _set_submodule(model, name, _build_module(where, name, spec, existing))
    _resize_tensors(where, model, payload.get("tensors", {}))
    _set_attributes(where, model, payload.get("attributes", {}))
    if payload["graph"] is not None:
        graph = _Decoder(where, model).graph(payload["graph"])
        model = torch.fx.GraphModule(model, graph)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{where}: the weights do not fit the rebuilt model: {first}") from None
    return model.eval()
