"""The one table of layer and operation kinds: how each treats channels.

Everything in archdiscover that asks "is this a convolution?", "does this op act on each
channel separately?" or "which axis of this weight holds the output units?" asks here, so a
kind added once is known to the tracer, the compiler, the sparse initialization, the
sparsity report and the training engine alike. Only torch is imported.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ADD_TARGETS",
    "ATTENTION_MODULES",
    "BINARY_FUNCTIONS",
    "BINARY_METHODS",
    "BLOCKING_NORMS",
    "CAT_FUNCTIONS",
    "CONV",
    "CONV_TRANSPOSE",
    "EVAL_IDENTITY_FUNCTIONS",
    "FLATTEN_FUNCTIONS",
    "GROUP_NORM",
    "NORM",
    "PAD_MODULES",
    "PER_CHANNEL_FUNCTIONS",
    "PER_CHANNEL_METHODS",
    "PER_CHANNEL_MODULES",
    "REDUCE_FUNCTIONS",
    "REDUCE_METHODS",
    "RESHAPE_METHODS",
    "SPATIAL_FUNCTIONS",
    "SPATIAL_MODULES",
    "WEIGHTED",
    "fan_in",
    "is_zero_padded",
    "producer_widths",
    "qualified_name",
    "unit_axis",
]

CONV: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSE: tuple[type[nn.Module], ...] = (
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
#: layers whose weight produces output units (rows / filters): what sparsity acts on
WEIGHTED: tuple[type[nn.Module], ...] = (nn.Linear, *CONV, *CONV_TRANSPOSE)
#: per-channel normalizations with (optional) per-channel scale, shift and statistics
NORM: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)

#: modules acting on each channel separately (the value of channel c depends only on channel c)
PER_CHANNEL_MODULES: tuple[type[nn.Module], ...] = (
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
    nn.Hardshrink,
    nn.Softshrink,
    nn.Tanhshrink,
    nn.Threshold,
    nn.RReLU,
    nn.LogSigmoid,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
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
PER_CHANNEL_FUNCTIONS = {
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
    F.hardshrink,
    F.softshrink,
    F.tanhshrink,
    F.threshold,
    F.rrelu,
    F.relu_,
    F.elu_,
    F.leaky_relu_,
    F.hardtanh_,
    F.dropout,
    F.alpha_dropout,
    F.feature_alpha_dropout,
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
    torch.pow,
    torch.erf,
    torch.erfc,
    torch.log,
    torch.log1p,
    torch.expm1,
    torch.rsqrt,
    torch.reciprocal,
    torch.sin,
    torch.cos,
    torch.sign,
    torch.clamp_min,
    torch.clamp_max,
    torch.clip,
    torch.relu_,
    torch.sigmoid_,
    torch.tanh_,
    F.sigmoid,
    F.tanh,
}
PER_CHANNEL_METHODS = {
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
    "pow",
    "erf",
    "erfc",
    "log",
    "log1p",
    "expm1",
    "rsqrt",
    "reciprocal",
    "sin",
    "cos",
    "sign",
    "clamp_min",
    "clamp_max",
    "clip",
    "sigmoid_",
    "tanh_",
    "exp_",
    "sqrt_",
    "abs_",
    "neg_",
    "erf_",
    "pow_",
    "hardtanh_",
    "contiguous",
    "clone",
    "detach",
    "float",
    "double",
    "half",
    "to",
    "type_as",
    "type",
    "bfloat16",
}
#: elementwise binary ops and the kind of their channel algebra
BINARY_FUNCTIONS = {
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
BINARY_METHODS = {
    "add": "add",
    "add_": "add",
    "sub": "add",
    "sub_": "add",
    "mul": "mul",
    "mul_": "mul",
    "div": "div",
    "div_": "div",
}
REDUCE_FUNCTIONS = {
    torch.mean: "mean",
    torch.sum: "sum",
    torch.amax: "amax",
    torch.amin: "amin",
    torch.std: "std",
    torch.var: "var",
    torch.prod: "prod",
    torch.logsumexp: "logsumexp",
}
REDUCE_METHODS = {"mean", "sum", "amax", "amin", "std", "var", "prod", "logsumexp"}
FLATTEN_FUNCTIONS = {torch.flatten}
RESHAPE_METHODS = {"flatten", "view", "reshape"}
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
#: residual additions (what the compiler may drop a zero branch of)
ADD_TARGETS = {operator.add, operator.iadd, torch.add}

#: modules among :data:`PER_CHANNEL_MODULES` that act on the trailing (spatial) dims: the
#: channels must sit before those dims
SPATIAL_MODULES: tuple[type[nn.Module], ...] = tuple(
    t
    for t in PER_CHANNEL_MODULES
    if t.__name__.startswith(("MaxPool", "AvgPool", "Adaptive", "Upsampl"))
)
#: functions among :data:`PER_CHANNEL_FUNCTIONS` that act on the trailing (spatial) dims
SPATIAL_FUNCTIONS = {
    f
    for f in PER_CHANNEL_FUNCTIONS
    if f.__name__.startswith(("max_pool", "avg_pool", "adaptive_", "interpolate"))
}
#: padding modules (zero / constant padding breaks constant channels at the borders)
PAD_MODULES: tuple[type[nn.Module], ...] = tuple(
    getattr(nn, n)
    for n in dir(nn)
    if n.endswith(("Pad1d", "Pad2d", "Pad3d")) and isinstance(getattr(nn, n), type)
)
#: normalizations over trailing dims (they mix channels when the channels are among them)
BLOCKING_NORMS: tuple[type[nn.Module], ...] = tuple(
    t for t in (getattr(nn, "LayerNorm", None), getattr(nn, "RMSNorm", None)) if t is not None
)
GROUP_NORM: tuple[type[nn.Module], ...] = (nn.GroupNorm,)
#: attention modules the tracer sees into (heads)
ATTENTION_MODULES: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)
#: functions of other libraries that are the identity in eval mode, by qualified name, and
#: the name of their ``training`` argument (stochastic depth, drop path, drop block)
EVAL_IDENTITY_FUNCTIONS: dict[str, str] = {
    "torchvision.ops.stochastic_depth.stochastic_depth": "training",
    "torchvision.ops.drop_block.drop_block2d": "training",
    "torchvision.ops.drop_block.drop_block3d": "training",
    "timm.layers.drop.drop_path": "training",
    "timm.layers.drop.drop_block_2d": "training",
    "timm.layers.drop.drop_block_fast_2d": "training",
    "timm.models.layers.drop.drop_path": "training",
}


def qualified_name(fn: object) -> str:
    """``module.qualname`` of a function (what :data:`EVAL_IDENTITY_FUNCTIONS` is keyed by)."""
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


def unit_axis(module: nn.Module) -> int | None:
    """The weight axis that indexes output units: 0 for Linear / Conv, 1 for ConvTranspose
    (``(in, out / groups, *k)``), None for other layers."""
    if isinstance(module, CONV_TRANSPOSE):
        return 1
    if isinstance(module, (nn.Linear, *CONV)):
        return 0
    return None


def fan_in(module: nn.Module) -> int:
    """Inputs summed into one output value (for a transposed conv, per output pixel)."""
    w = module.weight
    if isinstance(module, nn.Linear):
        return w.shape[1]
    receptive = math.prod(w.shape[2:])
    if isinstance(module, CONV_TRANSPOSE):
        # weight (in, out/groups, k...): each output pixel sees about in*k^d/stride^d inputs
        stride = math.prod(module.stride)
        return max(1, round(w.shape[0] * receptive / stride / module.groups))
    return w.shape[1] * receptive


def is_zero_padded(m: nn.Module) -> bool:
    """True for a convolution that pads its input with zeros (a constant input channel is
    then not constant at the borders of its output)."""
    pad = m.padding if not isinstance(m.padding, str) else (1,) if m.padding == "same" else (0,)
    return m.padding_mode == "zeros" and any(p != 0 for p in pad)


def producer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every Conv / ConvTranspose / Linear module, by name (for
    ``nn.MultiheadAttention``: its input projection's rows, ``3 * num_heads * head_dim``)."""
    out: dict[str, int] = {}
    for n, m in model.named_modules():
        if isinstance(m, (*CONV, *CONV_TRANSPOSE)):
            out[n] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[n] = m.out_features
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            out[n] = int(m.in_proj_weight.shape[0])
    return out
