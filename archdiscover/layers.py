"""Layers a compiled model may hold that plain PyTorch has no narrow form of.

:class:`PrunedMultiheadAttention` is ``nn.MultiheadAttention`` after heads were removed: its
inner width ``num_heads * head_dim`` no longer equals ``embed_dim`` (PyTorch's module ties
the two), and its output width ``out_dim`` may differ from its input width.

:class:`PaddedNorm` (and :func:`padded_layer_norm`, its functional form) is a LayerNorm or
RMSNorm over channels after ``phantom`` of them were removed because they are exactly zero
at its input: it normalizes as if they were still there, so it computes what the original
norm computed on the kept channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PaddedNorm",
    "PrunedMultiheadAttention",
    "narrow_multihead_attention",
    "padded_layer_norm",
]


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


def padded_layer_norm(
    x: Tensor,
    normalized_shape: list[int] | tuple[int, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    phantom: int,
) -> Tensor:
    """``F.layer_norm`` over the last dim of ``x`` (``C`` channels) as if ``phantom`` more
    channels of exact zeros followed: with ``n = C + phantom``,
    ``mean = sum(x) / n``, ``var = (sum((x - mean)^2) + phantom * mean^2) / n`` and
    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` on the ``C`` channels (computed by
    padding, so the arithmetic is LayerNorm's own)."""
    c = int(normalized_shape[-1])
    z = F.pad(x, (0, phantom))
    w = None if weight is None else F.pad(weight, (0, phantom))
    b = None if bias is None else F.pad(bias, (0, phantom))
    return F.layer_norm(z, (c + phantom,), w, b, eps)[..., :c]


class PaddedNorm(nn.Module):
    """LayerNorm (or RMSNorm, ``rms=True``) over the last dim, of ``normalized_shape`` kept
    channels and ``phantom`` removed ones that were exactly zero at its input.

    Over ``n = normalized_shape + phantom`` channels, the kept ``x``:
    LayerNorm: ``mean = sum(x) / n``, ``var = (sum((x - mean)^2) + phantom * mean^2) / n``,
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``; RMSNorm:
    ``y = x / sqrt(sum(x^2) / n + eps) * weight``. Equal to the original norm on the kept
    channels. State-dict keys are those of ``nn.LayerNorm`` / ``nn.RMSNorm``.

    Example:
        >>> ln = nn.LayerNorm(4)
        >>> x = torch.randn(2, 4)
        >>> x[:, 3] = 0
        >>> p = PaddedNorm(3, 1, eps=ln.eps)
        >>> torch.allclose(p(x[:, :3]), ln(x)[:, :3], atol=1e-6)
        True
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        phantom: int,
        eps: float | None = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        rms: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(normalized_shape, int):
            (normalized_shape,) = normalized_shape  # one normalized dim
        self.normalized_shape = (int(normalized_shape),)
        self.phantom = int(phantom)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.rms = rms
        n = self.normalized_shape[0]
        self.weight = nn.Parameter(torch.ones(n)) if elementwise_affine else None
        self.bias = (
            nn.Parameter(torch.zeros(n)) if elementwise_affine and bias and not rms else None
        )

    @classmethod
    def of(cls, norm: nn.Module, phantom: int, kept: int) -> PaddedNorm:
        """``norm`` (an ``nn.LayerNorm`` / ``nn.RMSNorm`` over one dim whose weight and bias
        were already narrowed to ``kept`` channels) as a padded norm that remembers
        ``phantom`` removed channels."""
        rms = isinstance(norm, getattr(nn, "RMSNorm", ()))
        w = getattr(norm, "weight", None)
        b = getattr(norm, "bias", None)
        out = cls(kept, phantom, norm.eps, w is not None, b is not None, rms)
        out.weight, out.bias = w, b
        return out

    def forward(self, x: Tensor) -> Tensor:
        c, p = self.normalized_shape[0], self.phantom
        if not self.rms:
            return padded_layer_norm(
                x, self.normalized_shape, self.weight, self.bias, self.eps or 0.0, p
            )
        z = F.pad(x, (0, p))
        w = None if self.weight is None else F.pad(self.weight, (0, p))
        return F.rms_norm(z, (c + p,), w, self.eps)[..., :c]

    def extra_repr(self) -> str:
        kind = "RMSNorm" if self.rms else "LayerNorm"
        return f"{kind} {self.normalized_shape}, phantom={self.phantom}, eps={self.eps}"
