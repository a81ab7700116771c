"""Trace with ``torch.export`` where ``torch.fx`` cannot, and raise the graph to modules.

``torch.fx.symbolic_trace`` runs ``forward`` on proxies, so a forward that branches on a
shape (``if x.shape[-1] > 8``) or loops over one cannot be traced. ``torch.export`` runs it
on real shapes and records ATen operations. The channel tracer reads modules and torch
functions, so :func:`export_graph` *raises* the exported graph back to that level: an
``aten.conv2d`` whose weight and bias are those of an ``nn.Conv2d`` with the same geometry
becomes a call of that module (likewise Linear, BatchNorm, LayerNorm, GroupNorm,
InstanceNorm, PReLU), and other ATen operations become the torch function of the same
meaning (``aten.relu`` -> ``torch.relu``, ``aten.view`` -> ``torch.reshape``, ...). An
operation with no counterpart stays an ATen call, which the tracer treats as unknown (its
channels are frozen): nothing is assumed.

The raised graph holds the user's own modules and parameters (by their qualified names) and
is checked to compute the model's outputs exactly on the example inputs. It is specialized
to their shapes, which is why the compiler keeps the user's module (not this graph) as the
compiled model.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["export_graph"]

aten = torch.ops.aten
_BIG = 2**62  # aten's "to the end" slice bound is 2**63 - 1


def _same(*pairs: tuple[Any, Any]) -> bool:
    def norm(v: Any) -> tuple[Any, ...]:
        return tuple(v) if isinstance(v, (list, tuple)) else (v,)

    return all(
        norm(a) == norm(b) or (len(norm(a)) == 1 and norm(a) * len(norm(b)) == norm(b))
        for a, b in pairs
    )


def _conv_ok(m: nn.Module, args: list[Any], transposed: bool) -> bool:
    k = len(m.kernel_size)
    stride = args[3] if len(args) > 3 else 1
    padding = args[4] if len(args) > 4 else 0
    if (
        transposed
    ):  # conv_transpose{k}d.input(x, w, b, stride, padding, output_padding, groups, dilation)
        out_pad = args[5] if len(args) > 5 else 0
        groups = args[6] if len(args) > 6 else 1
        dilation = args[7] if len(args) > 7 else 1
        return (
            _same(
                (stride, m.stride),
                (padding, m.padding),
                (out_pad, m.output_padding),
                (dilation, m.dilation),
            )
            and groups == m.groups
            and m.padding_mode == "zeros"
            and len(m.stride) == k
        )
    dilation = args[5] if len(args) > 5 else 1
    groups = args[6] if len(args) > 6 else 1
    if isinstance(m.padding, str):
        return False
    return (
        _same((stride, m.stride), (padding, m.padding), (dilation, m.dilation))
        and groups == m.groups
        and m.padding_mode == "zeros"
    )


class _Raiser:
    """Rewrite the exported graph in place: module calls where the parameters say so, torch
    functions for the rest (see the module docstring)."""

    def __init__(self, gm: torch.fx.GraphModule, model: nn.Module) -> None:
        self.gm = gm
        self.graph = gm.graph
        self.model = model
        self.modules = dict(model.named_modules())

    def owner(self, node: Any, attr: str) -> str | None:
        """The module whose tensor ``attr`` the get_attr ``node`` reads, if it is one."""
        if not (isinstance(node, torch.fx.Node) and node.op == "get_attr"):
            return None
        mod, _, name = str(node.target).rpartition(".")
        return mod if name == attr and mod in self.modules else None

    def module_call(self, node: torch.fx.Node, target: str, x: torch.fx.Node) -> None:
        with self.graph.inserting_before(node):
            new = self.graph.call_module(target, (x,))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        self.graph.erase_node(node)

    def function(
        self, node: torch.fx.Node, fn: Callable[..., Any], args: tuple, kwargs: dict | None = None
    ) -> None:
        if isinstance(fn, str):  # a tensor method (expand, clone, ...)
            node.op = "call_method"
        node.target = fn
        node.args = args
        node.kwargs = kwargs or {}

    def run(self) -> None:
        for node in list(self.graph.nodes):
            if node.op == "call_module" and str(node.target).startswith("_guards"):
                self.graph.erase_node(node)
                continue
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
                self.raise_node(node)
        self.graph.eliminate_dead_code()
        self.graph.lint()

    def raise_node(self, node: torch.fx.Node) -> None:
        t = node.target
        a = list(node.args)
        kw = dict(node.kwargs)
        # -- layers with parameters ------------------------------------------------------------
        if t in (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default):
            mod = self.owner(a[1], "weight")
            m = self.modules.get(mod) if mod else None
            bias_ok = (
                (len(a) < 3 or a[2] is None)
                if m is not None and m.bias is None
                else self.owner(a[2] if len(a) > 2 else None, "bias") == mod
            )
            if (
                isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
                and bias_ok
                and _conv_ok(m, a, False)
            ):
                self.module_call(node, mod, a[0])
                return
            fn = {
                aten.conv1d.default: F.conv1d,
                aten.conv2d.default: F.conv2d,
                aten.conv3d.default: F.conv3d,
            }[t]
            self.function(node, fn, tuple(a), kw)
            return
        if t in (
            aten.conv_transpose1d.default,
            aten.conv_transpose2d.input,
            aten.conv_transpose3d.input,
        ):
            mod = self.owner(a[1], "weight")
            m = self.modules.get(mod) if mod else None
            bias_ok = (
                (len(a) < 3 or a[2] is None)
                if m is not None and m.bias is None
                else self.owner(a[2] if len(a) > 2 else None, "bias") == mod
            )
            if (
                isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
                and bias_ok
                and _conv_ok(m, a, True)
            ):
                self.module_call(node, mod, a[0])
            return
        if t is aten.linear.default:
            mod = self.owner(a[1], "weight")
            m = self.modules.get(mod) if mod else None
            b = a[2] if len(a) > 2 else None
            if (
                isinstance(m, nn.Linear)
                and ((b is None) == (m.bias is None))
                and (b is None or self.owner(b, "bias") == mod)
            ):
                self.module_call(node, mod, a[0])
            else:
                self.function(node, F.linear, tuple(a))
            return
        if t in (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default):
            # batch_norm(x, w, b, rm, rv, training, momentum, eps, cudnn); the other form
            # (x, w, b, rm, rv, momentum, eps) returns (out, mean, rstd)
            mod = self.owner(a[3], "running_mean")
            m = self.modules.get(mod) if mod else None
            training = a[5] if t is aten.batch_norm.default else False
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not training:
                if t is aten.batch_norm.default:
                    self.module_call(node, mod, a[0])
                    return
                for u in list(node.users):
                    if u.target is operator.getitem and u.args[1] == 0:
                        self.module_call(u, mod, a[0])
                return
            return
        if t is aten.layer_norm.default:
            mod = self.owner(a[2] if len(a) > 2 else None, "weight")
            m = self.modules.get(mod) if mod else None
            if isinstance(m, nn.LayerNorm) and list(a[1]) == list(m.normalized_shape):
                self.module_call(node, mod, a[0])
            else:
                self.function(node, F.layer_norm, tuple(a[:5]))
            return
        if t is aten.group_norm.default:
            mod = self.owner(a[2] if len(a) > 2 else None, "weight")
            m = self.modules.get(mod) if mod else None
            if isinstance(m, nn.GroupNorm) and a[1] == m.num_groups:
                self.module_call(node, mod, a[0])
            return
        if t is aten.instance_norm.default:
            mod = self.owner(a[3] if len(a) > 3 else None, "running_mean") or self.owner(
                a[1], "weight"
            )
            m = self.modules.get(mod) if mod else None
            if isinstance(m, nn.modules.instancenorm._InstanceNorm):
                self.module_call(node, mod, a[0])
            return
        if t is aten.prelu.default:
            mod = self.owner(a[1], "weight")
            if isinstance(self.modules.get(mod) if mod else None, nn.PReLU):
                self.module_call(node, mod, a[0])
            return
        # -- functions -------------------------------------------------------------------------
        simple = _SIMPLE.get(t)
        if simple is not None:
            self.function(node, simple, tuple(a), kw)
            return
        rule = _RULES.get(t)
        if rule is not None:
            fn, args, kwargs = rule(a, kw)
            self.function(node, fn, args, kwargs)


def _slice(a: list[Any], kw: dict) -> tuple:
    x, dim = a[0], a[1] if len(a) > 1 else 0
    start = a[2] if len(a) > 2 else None
    end = a[3] if len(a) > 3 else None
    step = a[4] if len(a) > 4 else 1
    if isinstance(end, int) and end >= _BIG:
        end = None
    if start == 0:
        start = None
    idx = (slice(None),) * dim + (slice(start, end, None if step == 1 else step),)
    return operator.getitem, (x, idx), {}


_SIMPLE: dict[Any, Callable[..., Any]] = {
    aten.relu.default: torch.relu,
    aten.relu_.default: torch.relu,
    aten.sigmoid.default: torch.sigmoid,
    aten.tanh.default: torch.tanh,
    aten.silu.default: F.silu,
    aten.silu_.default: F.silu,
    aten.mish.default: F.mish,
    aten.hardswish.default: F.hardswish,
    aten.hardswish_.default: F.hardswish,
    aten.hardsigmoid.default: F.hardsigmoid,
    aten.hardtanh.default: F.hardtanh,
    aten.hardtanh_.default: F.hardtanh,
    aten.leaky_relu.default: F.leaky_relu,
    aten.softplus.default: F.softplus,
    aten.exp.default: torch.exp,
    aten.sqrt.default: torch.sqrt,
    aten.rsqrt.default: torch.rsqrt,
    aten.abs.default: torch.abs,
    aten.neg.default: torch.neg,
    aten.erf.default: torch.erf,
    aten.log.default: torch.log,
    aten.clamp.default: torch.clamp,
    aten.pow.Tensor_Scalar: torch.pow,
    aten.mul.Tensor: operator.mul,
    aten.mul.Scalar: operator.mul,
    aten.div.Tensor: operator.truediv,
    aten.div.Scalar: operator.truediv,
    aten.mean.dim: torch.mean,
    aten.sum.dim_IntList: torch.sum,
    aten.amax.default: torch.amax,
    aten.adaptive_avg_pool1d.default: F.adaptive_avg_pool1d,
    aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    aten.adaptive_avg_pool3d.default: F.adaptive_avg_pool3d,
    aten.max_pool1d.default: F.max_pool1d,
    aten.max_pool2d.default: F.max_pool2d,
    aten.max_pool3d.default: F.max_pool3d,
    aten.avg_pool2d.default: F.avg_pool2d,
    aten.cat.default: torch.cat,
    aten.stack.default: torch.stack,
    aten.view.default: torch.reshape,
    aten.reshape.default: torch.reshape,
    aten._unsafe_view.default: torch.reshape,
    aten.flatten.using_ints: torch.flatten,
    aten.permute.default: torch.permute,
    aten.transpose.int: torch.transpose,
    aten.t.default: torch.t,
    aten.unsqueeze.default: torch.unsqueeze,
    aten.squeeze.dim: torch.squeeze,
    aten.matmul.default: torch.matmul,
    aten.bmm.default: torch.bmm,
    aten.mm.default: torch.matmul,
    aten.einsum.default: torch.einsum,
    aten.chunk.default: torch.chunk,
    aten.split.Tensor: torch.split,
    aten.split_with_sizes.default: torch.split,
    aten.unbind.int: torch.unbind,
    aten.roll.default: torch.roll,
    aten.scaled_dot_product_attention.default: F.scaled_dot_product_attention,
}


def _add(a: list[Any], kw: dict) -> tuple:
    if kw.get("alpha", 1) != 1:
        return torch.add, tuple(a), kw
    return operator.add, (a[0], a[1]), {}


def _sub(a: list[Any], kw: dict) -> tuple:
    if kw.get("alpha", 1) != 1:
        return torch.sub, tuple(a), kw
    return operator.sub, (a[0], a[1]), {}


_RULES: dict[Any, Callable[[list[Any], dict], tuple]] = {
    aten.add.Tensor: _add,
    aten.add.Scalar: _add,
    aten.sub.Tensor: _sub,
    aten.sub.Scalar: _sub,
    aten.gelu.default: lambda a, kw: (
        F.gelu,
        (a[0],),
        {"approximate": kw.get("approximate", "none")},
    ),
    aten.dropout.default: lambda a, kw: (F.dropout, (a[0], a[1]), {"training": bool(a[2])}),
    aten.softmax.int: lambda a, kw: (torch.softmax, (a[0], a[1]), {}),
    aten._softmax.default: lambda a, kw: (torch.softmax, (a[0], a[1]), {}),
    aten.log_softmax.int: lambda a, kw: (torch.log_softmax, (a[0], a[1]), {}),
    aten.slice.Tensor: _slice,
    aten.select.int: lambda a, kw: (operator.getitem, (a[0], (slice(None),) * a[1] + (a[2],)), {}),
    aten.expand.default: lambda a, kw: ("expand", (a[0], *a[1]), {}),
    aten.clone.default: lambda a, kw: ("clone", (a[0],), {}),
    aten.contiguous.default: lambda a, kw: ("contiguous", (a[0],), {}),
    aten.alias.default: lambda a, kw: ("clone", (a[0],), {}),
    aten.detach.default: lambda a, kw: ("detach", (a[0],), {}),
    aten.constant_pad_nd.default: lambda a, kw: (
        F.pad,
        (a[0], tuple(a[1])),
        {"value": a[2] if len(a) > 2 else 0.0},
    ),
}


def export_graph(model: nn.Module, inputs: tuple[Tensor, ...]) -> torch.fx.GraphModule:
    """``torch.export`` ``model`` on ``inputs`` and raise the graph to the model's modules
    (see the module docstring). Raises what ``torch.export`` raises, or ``RuntimeError`` if
    the raised graph does not compute the model's outputs."""
    from ..verify import flatten_outputs

    with torch.no_grad():
        ep = torch.export.export(model, tuple(inputs), strict=False)
        exported = ep.module()
    _Raiser(exported, model).run()
    root: dict[str, Any] = {}
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    modules = dict(model.named_modules())
    for node in exported.graph.nodes:
        if node.op == "call_module":
            root[str(node.target)] = modules[str(node.target)]
        elif node.op == "get_attr":
            t = str(node.target)
            root[t] = tensors[t] if t in tensors else _fetch(exported, t)  # a lifted constant
    gm = torch.fx.GraphModule(root, exported.graph, class_name=type(model).__name__)
    gm.graph._codegen = exported.graph._codegen
    gm.recompile()
    with torch.no_grad():
        want = flatten_outputs(model(*inputs))
        got = flatten_outputs(gm(*inputs))
    if len(want) != len(got) or any(
        w.shape != h.shape or not torch.allclose(w, h, rtol=1e-5, atol=1e-6)
        for w, h in zip(want, got, strict=True)
    ):
        raise RuntimeError("the graph raised from torch.export does not reproduce the model")
    return gm


def _fetch(m: nn.Module, target: str) -> Any:
    obj: Any = m
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
