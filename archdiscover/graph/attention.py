"""Attention heads of ``nn.MultiheadAttention``: traced as one group per head.

``nn.MultiheadAttention`` is a leaf for ``torch.fx`` (its forward branches on tensor
properties), so the tracer sees into it here: the packed input projection ``in_proj_weight``
``(3E, E)`` reads the embedding channels of query, key and value (the same columns for all
three, so their channels are unified), and its rows make ``num_heads`` heads of ``head_dim``
query, key and value channels each; the output projection ``out_proj`` reads the heads'
value channels and makes the output embedding. One group per head holds the head's query,
key and value rows (and biases) and ``out_proj``'s columns for it: a head whose value rows
are zero (or whose output columns are) contributes nothing and goes whole, with the
module's head count updated (:class:`archdiscover.layers.PrunedMultiheadAttention`
computes with ``num_heads * head_dim != embed_dim``).

The heads' output channels before ``out_proj`` are a virtual node ``<node>.heads`` for the
value analysis: a head's output is its value projection mixed by a softmax whose rows sum
to one, so a constant value channel gives a constant output channel (folded into
``out_proj``'s bias).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch.fx
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .trace import _SlotTracer

__all__ = ["inner_name", "trace_multihead_attention"]


def inner_name(node: str) -> str:
    """The name of the virtual node holding the heads' outputs of attention node ``node``."""
    return f"{node}.heads"


def _arg(node: torch.fx.Node, i: int, key: str, default: Any) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(key, default)


def trace_multihead_attention(t: _SlotTracer, mod: nn.MultiheadAttention) -> None:
    """Slots and members of one ``nn.MultiheadAttention`` call (see the module docstring)."""
    from .trace import BLOCKED, Member, NodeInfo, Producer, shape_of

    g, node = t.g, t.node
    target = str(node.target)
    q, k, v = (_arg(node, i, n, None) for i, n in enumerate(("query", "key", "value")))
    if not all(isinstance(x, torch.fx.Node) and shape_of(x) is not None for x in (q, k, v)):
        t.opaque("MultiheadAttention with inputs the tracer cannot follow")
        return
    from ..layers import PrunedMultiheadAttention

    why = None
    if not mod._qkv_same_embed_dim and not isinstance(mod, PrunedMultiheadAttention):
        why = "separate query / key / value projections (kdim, vdim)"
    elif mod.bias_k is not None or mod.add_zero_attn:
        why = "add_bias_kv or add_zero_attn"
    elif mod.in_proj_weight is None:
        why = "no packed input projection"
    if why is not None:
        t.opaque(f"MultiheadAttention with {why}")
        return
    shp = shape_of(q)
    assert shp is not None
    last = len(shp) - 1
    E, H, D = mod.embed_dim, mod.num_heads, mod.head_dim
    ins = []
    for x in (q, k, v):
        s = t.channels_of(x, -1)
        if s is None:
            t.opaque("MultiheadAttention over a tensor whose channels are not last")
            return
        ins.append(s)
    g.unify(ins[0], ins[1])  # the same columns of in_proj_weight read all three
    g.unify(ins[0], ins[2])
    g.calls[target].append(node.name)
    g.calls[f"{target}.out_proj"].append(node.name)
    heads = g.new_slots(H)
    per_head = np.repeat(heads, D)
    rows = np.tile(per_head, 3)
    for part, (x, s) in enumerate(zip((q, k, v), ins, strict=True)):
        g.members.append(
            Member(
                target,
                "in_proj_weight",
                1,
                s,
                "in",
                node.name,
                x.name,
                rows=(part * E, (part + 1) * E),
            )
        )
    g.members.append(Member(target, "in_proj_weight", 0, rows, "out", node.name, q.name))
    if mod.in_proj_bias is not None:
        g.members.append(Member(target, "in_proj_bias", 0, rows, "out", node.name, q.name))
    inner = inner_name(node.name)
    g.slots[inner] = per_head
    g.axes[inner] = (last,)
    g.axis[inner] = last
    g.shapes[inner] = shp
    g.info[inner] = NodeInfo("attention_heads", target, [v.name], {"module": target})
    out_mod = f"{target}.out_proj"
    out = g.new_slots(E)
    g.members.append(Member(out_mod, "weight", 1, per_head, "in", node.name, inner))
    g.members.append(Member(out_mod, "weight", 0, out, "out", node.name, inner))
    if mod.out_proj.bias is not None:
        g.members.append(Member(out_mod, "bias", 0, out, "out", node.name, inner))
    info = t.info("attention", target, [q.name, k.name, v.name])
    info.detail.update(
        inner=inner,
        value=v.name,
        producer=Producer(
            out_mod, "weight", "bias" if mod.out_proj.bias is not None else None, "linear"
        ),
    )
    # attention weights averaged over the heads, if used, change when a head goes
    need = _arg(node, 4, "need_weights", True)
    used = any(
        u.op == "call_function" and len(u.args) > 1 and u.args[1] == 1 and len(u.users) > 0
        for u in node.users
    )
    if need is not False and used:
        g.freeze(heads, f"attention weights of all heads are used ({target})", BLOCKED)
    t.set_tuple([(out, (last,)), None])
