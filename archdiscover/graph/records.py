"""The records the tracer writes: a layer that produces channels (:class:`Producer`), what a
node does (:class:`NodeInfo`), a tensor sliced along its channels (:class:`Member`), the
kinds of frozen channels, and the shapes shape propagation recorded. Plain data, shared by
:mod:`.trace` and its extensions (:mod:`.attention`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.fx

__all__ = [
    "BLOCKED",
    "BOUNDARY",
    "UNSUPPORTED",
    "Member",
    "NodeInfo",
    "Producer",
    "shape_of",
    "tuple_shapes",
]

BOUNDARY, BLOCKED, UNSUPPORTED = "boundary", "blocked", "unsupported"


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
    ``depthwise``, ``norm``, ``mixnorm`` (a LayerNorm over the channels), ``pointwise``,
    ``layout`` (reshape / permute / index: the output channels are ``detail["gather"]`` of
    the input's), ``binary``, ``cat``,
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
