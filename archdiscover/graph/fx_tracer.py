"""``torch.fx`` tracing with the channel tracer's view of PyTorch's own transformer layers.

fx treats every ``torch.nn`` module as a leaf. Two changes to that:

* attention modules (``nn.MultiheadAttention`` and the compiler's
  :class:`~archdiscover.layers.PrunedMultiheadAttention`, a subclass) stay leaves
  wherever they live: the channel tracer sees into them itself (:mod:`.attention`);
* ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` / ``nn.TransformerEncoder``
  / ``nn.TransformerDecoder`` / ``nn.Transformer`` are traced through, with their forward
  replaced during tracing by PyTorch's own slow path (the same computation, without the
  fused fast-path checks that branch on tensor properties): their MLP hidden units and
  attention heads become visible. Masks passed as tensors keep those checks (fx cannot
  trace them; ``torch.export`` then does).
"""

from __future__ import annotations

from typing import Any

import torch.fx
from torch import Tensor, nn

__all__ = ["ChannelFxTracer", "fx_trace"]


def _encoder_layer(
    self: nn.TransformerEncoderLayer,
    src: Tensor,
    src_mask: Tensor | None = None,
    src_key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    x = src
    if self.norm_first:
        x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
        x = x + self._ff_block(self.norm2(x))
    else:
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        x = self.norm2(x + self._ff_block(x))
    return x


def _encoder(
    self: nn.TransformerEncoder,
    src: Tensor,
    mask: Tensor | None = None,
    src_key_padding_mask: Tensor | None = None,
    is_causal: bool | None = None,
) -> Tensor:
    out = src
    for mod in self.layers:
        out = mod(
            out, src_mask=mask, is_causal=bool(is_causal), src_key_padding_mask=src_key_padding_mask
        )
    return self.norm(out) if self.norm is not None else out


def _decoder(
    self: nn.TransformerDecoder,
    tgt: Tensor,
    memory: Tensor,
    tgt_mask: Tensor | None = None,
    memory_mask: Tensor | None = None,
    tgt_key_padding_mask: Tensor | None = None,
    memory_key_padding_mask: Tensor | None = None,
    tgt_is_causal: bool | None = None,
    memory_is_causal: bool = False,
) -> Tensor:
    out = tgt
    for mod in self.layers:
        out = mod(
            out,
            memory,
            tgt_mask=tgt_mask,
            memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask,
            tgt_is_causal=bool(tgt_is_causal),
            memory_is_causal=memory_is_causal,
        )
    return self.norm(out) if self.norm is not None else out


def _transformer(
    self: nn.Transformer,
    src: Tensor,
    tgt: Tensor,
    src_mask: Tensor | None = None,
    tgt_mask: Tensor | None = None,
    memory_mask: Tensor | None = None,
    src_key_padding_mask: Tensor | None = None,
    tgt_key_padding_mask: Tensor | None = None,
    memory_key_padding_mask: Tensor | None = None,
    src_is_causal: bool | None = None,
    tgt_is_causal: bool | None = None,
    memory_is_causal: bool = False,
) -> Tensor:
    memory = self.encoder(
        src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal
    )
    return self.decoder(
        tgt,
        memory,
        tgt_mask=tgt_mask,
        memory_mask=memory_mask,
        tgt_key_padding_mask=tgt_key_padding_mask,
        memory_key_padding_mask=memory_key_padding_mask,
        tgt_is_causal=tgt_is_causal,
        memory_is_causal=memory_is_causal,
    )


_SLOW_PATHS: dict[type[nn.Module], Any] = {
    nn.TransformerEncoderLayer: _encoder_layer,
    nn.TransformerEncoder: _encoder,
    nn.TransformerDecoder: _decoder,
    nn.Transformer: _transformer,
}
_TRACED_THROUGH = (*_SLOW_PATHS, nn.TransformerDecoderLayer)


class ChannelFxTracer(torch.fx.Tracer):
    """fx's tracer; attention modules are leaves, PyTorch's transformer layers are not."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, nn.MultiheadAttention):
            return True
        if isinstance(m, _TRACED_THROUGH):
            return False
        return super().is_leaf_module(m, module_qualified_name)


class _SlowPaths:
    """Within this context PyTorch's transformer modules run their slow path."""

    def __enter__(self) -> None:
        self.saved = {cls: cls.__dict__["forward"] for cls in _SLOW_PATHS}
        for cls, fn in _SLOW_PATHS.items():
            cls.forward = fn  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        for cls, fn in self.saved.items():
            cls.forward = fn  # type: ignore[method-assign]


def fx_trace(model: nn.Module) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace(model)`` with :class:`ChannelFxTracer`."""
    tracer = ChannelFxTracer()
    with _SlowPaths():
        graph = tracer.trace(model)
    name = model.__class__.__name__ if isinstance(model, nn.Module) else model.__name__
    return torch.fx.GraphModule(tracer.root, graph, name)
