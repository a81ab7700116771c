"""After removal: rewrite the sizes a graph holds for channel dims, and the head counts.

A forward that reshapes by literal sizes (``x.reshape(B, N, 3, 8, 64)`` for 8 heads of 64
channels, ``x[..., :128]``, ``x.split([64, 32], 1)``) holds the old widths as constants. The
tracer recorded where (``ChannelGraph.sizes``); :func:`rewrite_sizes` puts the new widths
there in the fx graph (a computed size on a dim that shrank becomes ``-1``, the tracer made
sure there is at most one per reshape). The user's own module class computes those sizes
from its attributes, so :func:`update_attributes` sets attributes such as ``num_heads`` of the
modules around a rewritten reshape to the new value; whether that suffices is checked by
running it (the pipeline falls back to the rewritten graph).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch.fx
from torch import nn

from ..graph import layout
from ..graph.trace import ChannelGraph
from .errors import CompileError

__all__ = ["HEAD_ATTRIBUTES", "rewrite_sizes", "update_attributes"]

#: int attributes of a module that may hold a head count used in its reshapes
HEAD_ATTRIBUTES = (
    "num_heads",
    "n_heads",
    "heads",
    "nheads",
    "n_head",
    "num_head",
    "num_attention_heads",
    "all_head_size",
    "inner_dim",
)


def _kept_sizes(g: ChannelGraph, node: str, remove: np.ndarray) -> tuple[int, ...] | None:
    s = g.slots.get(node)
    shape = g.shapes.get(node)
    if s is None or shape is None:
        return None
    axes = g.axes[node]
    lab = g.labels[s].reshape(layout.grid_shape(shape, axes))
    kept = ~np.isin(lab, remove)
    new = list(shape)
    for d, a in enumerate(axes):
        other = tuple(i for i in range(lab.ndim) if i != d)
        new[a] = int(kept.any(axis=other).sum()) if other else int(kept.sum())
    return tuple(new)


def _new_shape_args(
    node: torch.fx.Node, new: dict[int, int], n_out: int, literal: bool = False
) -> list[tuple[str, int, int]]:
    """Rewrite the size arguments of a reshape / view / expand: ``new`` maps output dims to
    their new sizes (a literal becomes the new size, a computed size ``-1``, or with
    ``literal`` the new size too). Returns ``(kind, dim, value)`` per rewritten dim."""
    args = list(node.args)
    in_kwargs = node.op == "call_function" and node.target is torch.reshape and len(args) < 2
    if in_kwargs:
        seq = node.kwargs["shape"]
    elif len(args) == 2 and isinstance(args[1], (list, tuple)):
        seq = args[1]
    else:
        seq = args[1:]
    flat = list(seq)
    done: list[tuple[str, int, int]] = []
    if len(flat) == 1 and isinstance(flat[0], torch.fx.Node) and flat[0].target is operator.add:
        add = flat[0]  # x.size()[:-1] + (heads, head_dim)
        tail = list(add.args[1])
        head = n_out - len(tail)
        for d, v in new.items():
            if d < head:
                raise CompileError(f"cannot rewrite dim {d} of {node.name}: its size is computed")
            tail[d - head] = v
            done.append(("lit", d, v))
        add.args = (add.args[0], tuple(tail))
        return done
    for d, v in new.items():
        cur = flat[d]
        if isinstance(cur, torch.fx.Node):
            flat[d] = v if literal else -1
            done.append(("node", d, v))
        elif isinstance(cur, int) and cur != -1:
            flat[d] = v
            done.append(("lit", d, v))
    if in_kwargs:
        node.kwargs = {**node.kwargs, "shape": tuple(flat)}
    elif len(args) == 2 and isinstance(args[1], (list, tuple)):
        node.args = (args[0], type(args[1])(flat))
    else:
        node.args = (args[0], *flat)
    return done


def _size_source(n: Any) -> tuple[torch.fx.Node, int] | None:
    """``(tensor, dim)`` when ``n`` computes ``tensor.size(dim)`` (``x.size()[d]``,
    ``x.shape[d]``, ``x.size(d)``)."""
    if not isinstance(n, torch.fx.Node):
        return None
    if n.op == "call_method" and n.target == "size" and len(n.args) == 2:
        t, d = n.args
        return (t, d) if isinstance(t, torch.fx.Node) and isinstance(d, int) else None
    if n.op == "call_function" and n.target is operator.getitem and len(n.args) == 2:
        src, d = n.args
        if not (isinstance(src, torch.fx.Node) and isinstance(d, int)):
            return None
        if src.op == "call_method" and src.target == "size" and len(src.args) == 1:
            t = src.args[0]
        elif src.op == "call_function" and src.target is getattr and src.args[1:] == ("shape",):
            t = src.args[0]
        else:
            return None
        return (t, d) if isinstance(t, torch.fx.Node) else None
    return None


_ARITH = {
    operator.floordiv: operator.floordiv,
    operator.mul: operator.mul,
    operator.add: operator.add,
    operator.sub: operator.sub,
}


def _computed(g: ChannelGraph, n: Any, rem: np.ndarray) -> tuple[int | None, bool]:
    """The value a computed size ``n`` takes after removal (None if it cannot be told) and
    whether it reads a channel dim that changes (``x.size(-1)``, ``C // num_heads``)."""
    if isinstance(n, int) and not isinstance(n, bool):
        return n, False
    src = _size_source(n)
    if src is not None:
        t, k = src
        old, new = g.shapes.get(t.name), _kept_sizes(g, t.name, rem)
        if old is None or not -len(old) <= k < len(old):
            return None, False
        if new is None:
            return int(old[k]), False
        return int(new[k]), new[k] != old[k]
    if isinstance(n, torch.fx.Node) and n.op == "call_function" and n.target in _ARITH:
        if len(n.args) != 2 or n.kwargs:
            return None, False
        (x, cx), (y, cy) = (_computed(g, v, rem) for v in n.args)
        if x is None or y is None or (n.target is operator.floordiv and y == 0):
            return None, cx or cy
        return int(_ARITH[n.target](x, y)), cx or cy
    return None, False


def _stale_computed(
    g: ChannelGraph, refs: Any, new: tuple[int, ...], axes: tuple[int, ...], rem: np.ndarray
) -> dict[int, int]:
    """Channel dims of a reshape whose size is computed from another tensor's channel dim
    that changed, to a value that is no longer this dim's new size (MaxViT's
    ``reshape(B, G, P, D)`` after the heads with ``D`` read from the stream; CaiT's
    ``reshape(B, N, 3, heads, C // heads)``): dim -> the size it must be now."""
    out: dict[int, int] = {}
    for d, (kind, ref) in enumerate(refs or []):
        if kind != "node" or d >= len(new) or d not in axes:
            continue
        value, changes = _computed(g, ref, rem)
        if changes and value != new[d]:
            out[d] = new[d]
    return out


def rewrite_sizes(g: ChannelGraph, remove: set[int]) -> dict[str, list[tuple[int, int]]]:
    """Put the new widths into the size arguments of ``g.gm``'s nodes after ``remove``
    went; returns, per rewritten node, ``(old, new)`` per changed literal."""
    if not remove or not g.sizes:
        return {}
    rem = np.array(sorted(remove))
    nodes = {n.name: n for n in g.gm.graph.nodes}
    changed: dict[str, list[tuple[int, int]]] = {}
    for name, entries in g.sizes.items():
        node = nodes.get(name)
        if node is None:  # dropped with a zero branch
            continue
        for kind, refs, axes in entries:
            if kind == "shape":
                new = _kept_sizes(g, name, rem)
                old = g.shapes[name]
                if new is None or old is None:
                    continue
                stale = _stale_computed(g, refs, new, axes, rem)
                if stale:
                    _new_shape_args(node, stale, len(old), literal=True)
                if new == old:
                    continue
                diff = {d: v for d, (o, v) in enumerate(zip(old, new, strict=True)) if o != v}
                diff = {d: v for d, v in diff.items() if refs[d][0] not in ("auto", "infer")}
                if not diff:
                    continue
                for kind2, d, v in _new_shape_args(node, diff, len(old)):
                    if kind2 == "lit":
                        changed.setdefault(name, []).append((int(old[d]), v))
            elif kind == "slice":
                x = node.args[0]
                xs = g.slots[x.name]
                xshape = g.shapes[x.name]
                xa = g.axes[x.name]
                assert xs is not None and xshape is not None
                lab = g.labels[xs].reshape(layout.grid_shape(xshape, xa))
                kept = ~np.isin(lab, rem)
                idx = list(node.args[1]) if isinstance(node.args[1], tuple) else [node.args[1]]
                for gd, sl, pos in refs:
                    other = tuple(i for i in range(lab.ndim) if i != gd)
                    along = kept.any(axis=other) if other else kept
                    before = np.concatenate([[0], np.cumsum(along)])
                    start, stop, step = sl.indices(lab.shape[gd])
                    if step != 1:
                        raise CompileError(f"cannot rewrite the strided slice of {name}")
                    new_sl = slice(int(before[start]), int(before[stop]))
                    idx[pos] = new_sl
                    changed.setdefault(name, []).append((stop - start, new_sl.stop - new_sl.start))
                node.args = (x, tuple(idx) if isinstance(node.args[1], tuple) else idx[0])
            elif kind in ("split_size", "split_sizes"):
                x = node.args[0]
                starts = g.info[name].detail["gathers"]
                xs = g.slots[x.name]
                assert xs is not None
                kept = ~np.isin(g.labels[xs], rem)
                sizes = [int(kept[gt].sum()) for gt in starts]
                value: Any = sizes[0] if kind == "split_size" else sizes
                args = list(node.args)
                if len(args) > 1:
                    args[1] = value
                    node.args = tuple(args)
                else:
                    node.kwargs = {**node.kwargs, "split_size_or_sections": value}
                changed.setdefault(name, []).append(
                    (int(refs if kind == "split_size" else sum(refs)), int(sum(sizes)))
                )
    if changed or any(k == "shape" for e in g.sizes.values() for k, *_ in e):
        g.gm.recompile()
    return changed


def update_attributes(
    g: ChannelGraph, model: nn.Module, changed: dict[str, list[tuple[int, int]]]
) -> dict[str, dict[str, int]]:
    """Set head-count attributes (:data:`HEAD_ATTRIBUTES`) of the modules whose forward holds
    a rewritten literal from its old value to its new one; returns what was set."""
    nodes = {n.name: n for n in g.gm.graph.nodes}
    done: dict[str, dict[str, int]] = {}
    for name, pairs in changed.items():
        stack = nodes[name].meta.get("nn_module_stack") if name in nodes else None
        if not stack:
            continue
        for path in reversed(list(stack)):
            try:
                m = model.get_submodule(
                    str(stack[path][0]) if isinstance(stack[path], tuple) else path
                )
            except AttributeError:
                continue
            hit = False
            for attr in HEAD_ATTRIBUTES:
                v = getattr(m, attr, None)
                if isinstance(v, int) and not isinstance(v, bool):
                    for old, new in pairs:
                        if v == old and old != new:
                            setattr(m, attr, new)
                            done.setdefault(path, {})[attr] = new
                            hit = True
                            break
            if hit:
                break
    return done
