"""Layers a compiled model may hold that plain PyTorch has no narrow form of.

:class:`PrunedMultiheadAttention` is ``nn.MultiheadAttention`` after heads were removed: its
inner width ``num_heads * head_dim`` no longer equals ``embed_dim`` (PyTorch's module ties
the two), and its output width ``out_dim`` may differ from its input width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PrunedMultiheadAttention", "narrow_multihead_attention"]


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with ``num_heads`` heads of ``head_dim`` channels each,
    reading ``embed_dim`` input channels and writing ``out_dim`` output channels.

    The math is PyTorch's (``F.multi_head_attention_forward`` with a packed input
    projection): per head ``softmax(q k^T / sqrt(head_dim) + mask) v``, the heads
    concatenated and projected by ``out_proj``. State-dict keys are those of
    ``nn.MultiheadAttention``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        out_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        out_dim = embed_dim if out_dim is None else out_dim
        inner = num_heads * head_dim
        self.embed_dim = embed_dim
        self.kdim = self.vdim = embed_dim
        # False keeps PyTorch's fused fast paths (nn.TransformerEncoderLayer's among them),
        # which assume num_heads * head_dim == embed_dim, away from this module
        self._qkv_same_embed_dim = False
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.out_dim = out_dim
        self.dropout = dropout
        self.batch_first = batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.register_parameter("q_proj_weight", None)
        self.register_parameter("k_proj_weight", None)
        self.register_parameter("v_proj_weight", None)
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        if not bias:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(inner, out_dim, bias=bias)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        nn.init.xavier_uniform_(self.in_proj_weight)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"out_dim={self.out_dim}, batch_first={self.batch_first}"
        )

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if not batched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        L, N, _ = query.shape
        S = key.shape[0]
        H, D = self.num_heads, self.head_dim
        inner = H * D
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, w[:inner], None if b is None else b[:inner])
        k = F.linear(key, w[inner : 2 * inner], None if b is None else b[inner : 2 * inner])
        v = F.linear(value, w[2 * inner :], None if b is None else b[2 * inner :])
        q = q.reshape(L, N * H, D).transpose(0, 1)
        k = k.reshape(S, N * H, D).transpose(0, 1)
        v = v.reshape(S, N * H, D).transpose(0, 1)
        mask = _float_mask(attn_mask, q.dtype)
        if mask is None and is_causal:
            mask = torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1)
            mask = _float_mask(mask, q.dtype)
        if mask is not None and mask.dim() == 2:
            mask = mask.unsqueeze(0)
        kpm = _float_mask(key_padding_mask, q.dtype)
        if kpm is not None:
            kpm = kpm.view(N, 1, 1, S).expand(-1, H, -1, -1).reshape(N * H, 1, S)
            mask = kpm if mask is None else mask + kpm
        scores = torch.bmm(q * (1.0 / math.sqrt(D)), k.transpose(1, 2))
        if mask is not None:
            scores = scores + mask
        attn = F.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        out = torch.bmm(attn, v).transpose(0, 1).reshape(L * N, inner)
        out = self.out_proj(out).view(L, N, -1)
        weights = None
        if need_weights:
            weights = attn.view(N, H, L, S)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        if not batched:
            out = out.squeeze(1)
            if weights is not None:
                weights = weights.squeeze(0)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _float_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def narrow_multihead_attention(mod: nn.MultiheadAttention, num_heads: int) -> None:
    """Turn ``mod`` (whose tensors were already narrowed) into a
    :class:`PrunedMultiheadAttention` of ``num_heads`` heads, in place."""
    head_dim = mod.head_dim
    mod.__class__ = PrunedMultiheadAttention
    mod._qkv_same_embed_dim = False  # no fused fast path (see PrunedMultiheadAttention)
    mod.num_heads = num_heads
    mod.head_dim = head_dim
    mod.embed_dim = mod.kdim = mod.vdim = int(mod.in_proj_weight.shape[1])
    mod.out_dim = int(mod.out_proj.weight.shape[0])
