"""The compiler on the structures of published models, built here (no torchvision): grouped
and depthwise convolutions, stochastic depth and dropout variants, functional norms, library
activations, channel-mixing norms, channels-last and transformer blocks (MLP hidden units,
attention heads), channel shuffle, control flow on shapes, dict outputs, adaptive pooling.
Every test asserts exact widths and exact outputs (torch and onnxruntime)."""

from __future__ import annotations

import collections
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archdiscover as ad
from archdiscover.compiler import CompileError
from archdiscover.graph import ops


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norm statistics and affine parameters, non-zero biases and scales."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=gen))
                m.bias.copy_(0.3 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            for name, p in m.named_parameters(recurse=False):
                if name == "bias" or (
                    p.dim() == 1 and not isinstance(m, nn.modules.batchnorm._BatchNorm)
                ):
                    p.copy_(
                        0.1 * torch.randn(p.shape, generator=gen)
                        + (1.0 if "scale" in name else 0.0)
                    )
    return model.eval()


def groups_of(model: nn.Module, x: torch.Tensor, module: str) -> list[ad.ChannelGroup]:
    """The removable groups produced by ``module``, in channel order."""
    return [g for g in ad.channel_groups(model, x) if module in g.producers]


def zero(model: nn.Module, groups: list[ad.ChannelGroup], roles=("out", "norm")) -> None:
    for g in groups:
        g.zero_(model, roles)


def flat(out) -> list[torch.Tensor]:
    from archdiscover.verify import flatten_outputs

    return flatten_outputs(out)


def check(model: nn.Module, x: torch.Tensor, widths: dict[str, int], tmp_path, **kw) -> ad.Compiled:
    """Compile (strict), then the widths, and torch / onnxruntime against the original."""
    c = ad.compile(model, x, **kw)
    for name, w in widths.items():
        assert c.report.layers[name][1] == w, (name, c.report.layers[name])
    fresh = torch.randn((x.shape[0] + 1, *x.shape[1:]), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = flat(model.eval()(fresh))
        got = flat(c.model(fresh))
    for r, o in zip(ref, got, strict=True):
        scale = max(1.0, float(r.abs().max()))
        assert float((r - o).abs().max()) / scale <= 1e-5
    path = c.export_onnx(tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: fresh.numpy()})
    for r, o in zip(ref, outs, strict=True):
        scale = max(1.0, float(r.abs().max()))
        assert float(np.abs(o - r.numpy()).max()) / scale <= 1e-5
    return c


# ---------------------------------------------------------------------------------------------
# strict mode: only exactly-zero channels that cannot go
# ---------------------------------------------------------------------------------------------
@torch.fx.wrap
def _opaque_mix(x: torch.Tensor) -> torch.Tensor:
    """A function fx cannot see into (a leaf): its channels are frozen."""
    return x * torch.sigmoid(x.mean(1, keepdim=True))


class OpaqueConsumer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = _opaque_mix(self.c2(y))  # c2's channels only feed the leaf
        return self.fc(self.c3(y).mean((2, 3)))


def test_strict_does_not_blame_channels_that_are_not_zero(tmp_path):
    torch.manual_seed(0)
    m = randomize(OpaqueConsumer())
    x = torch.randn(2, 3, 8, 8)
    rep = ad.inspect(m, x)
    assert rep.layers["c2"] == (0, 6) and rep.layers["c1"] == (8, 8)
    check(m, x, {"c1": 8, "c2": 6}, tmp_path)  # nothing zero: strict passes
    zero(m, groups_of(m, x, "c1")[:3])
    check(m, x, {"c1": 5, "c2": 6}, tmp_path)  # zeros elsewhere: removed, strict passes
    with torch.no_grad():
        m.c2.weight[4] = 0
        m.c2.bias[4] = 0
    with pytest.raises(CompileError, match=r"channel 4 of 'c2' is exactly zero"):
        ad.compile(m, x)
    c = ad.compile(m, x, strict=False)
    assert c.report.layers["c2"] == (6, 6) and any("blocked" in k for k in c.report.kept)


# ---------------------------------------------------------------------------------------------
# grouped convolutions
# ---------------------------------------------------------------------------------------------
class ResNeXtBlock(nn.Module):
    def __init__(self, c=16, width=24, groups=4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.conv1 = nn.Conv2d(c, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 3)

    def forward(self, x):
        s = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(s)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = torch.relu(self.bn3(self.conv3(y)) + s)
        return self.fc(y.mean((2, 3)))


def test_grouped_conv_loses_the_same_positions_in_every_group(tmp_path):
    torch.manual_seed(0)
    m = randomize(ResNeXtBlock(c=16, width=24, groups=4))  # 4 groups of 6 channels
    x = torch.randn(2, 3, 8, 8)
    g1 = groups_of(m, x, "conv1")
    g2 = groups_of(m, x, "conv2")
    assert len(g1) == 6 and len(g2) == 6  # a group: one position of every group
    conv1_rows = next(s for s in g1[0].slices if s.module == "conv1" and s.role == "out")
    assert conv1_rows.index == (0, 6, 12, 18)
    zero(m, [g1[1], g1[4], g2[0]])
    c = check(m, x, {"conv1": 16, "conv2": 20}, tmp_path)
    conv2 = c.model.conv2
    assert (conv2.in_channels, conv2.out_channels, conv2.groups) == (16, 20, 4)
    assert tuple(conv2.weight.shape) == (20, 4, 3, 3)


class DepthwiseMultiplier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 12, 3, padding=1, groups=6)  # channel multiplier 2
        self.bn2 = nn.BatchNorm2d(12)
        self.pw = nn.Conv2d(12, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = torch.relu(self.bn1(self.c1(x)))
        y = torch.relu(self.bn2(self.dw(y)))
        return self.fc(self.pw(y).mean((2, 3)))


def test_depthwise_conv_with_multiplier_loses_whole_groups(tmp_path):
    torch.manual_seed(0)
    m = randomize(DepthwiseMultiplier())
    x = torch.randn(2, 3, 8, 8)
    g = groups_of(m, x, "c1")
    assert len(g) == 6
    dw = next(s for s in g[2].slices if s.module == "dw" and s.param == "weight")
    assert dw.index == (4, 5)  # channel 2 of c1 and the dw filters that read it
    zero(m, [g[2], g[5]])
    c = check(m, x, {"c1": 4, "dw": 8}, tmp_path)
    assert (c.model.dw.in_channels, c.model.dw.out_channels, c.model.dw.groups) == (4, 8, 4)


# ---------------------------------------------------------------------------------------------
# ops that act per channel or are the identity in eval mode
# ---------------------------------------------------------------------------------------------
def stochastic_depth(x: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision's stochastic depth (the identity in eval mode), an fx leaf like there."""
    if not training or p == 0.0:
        return x
    keep = torch.empty([x.shape[0]] + [1] * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


torch.fx.wrap("stochastic_depth")


class BNAct(nn.Module):
    """A BatchNorm + activation module that calls ``F.batch_norm`` on its own tensors."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, 1e-5
        )
        return F.silu(x)


class GELUTanh(nn.Module):  # timm / Hugging Face style activation modules
    def forward(self, x):
        return (
            0.5
            * x
            * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
        )


class HardSigmoidGate(nn.Module):
    def forward(self, x):
        return x * (F.relu6(x + 3.0) / 6.0)


class Swish(nn.Module):
    def forward(self, x):
        return x.mul(x.sigmoid())


class EvalIdentities(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.n1 = BNAct(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.drop = nn.Dropout2d(0.2)
        self.alpha = nn.AlphaDropout(0.1)
        self.act1, self.act2, self.act3 = GELUTanh(), HardSigmoidGate(), Swish()
        self.c3 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        y = self.act1(self.n1(self.c1(x)))
        z = self.drop(self.act2(self.inorm(self.c2(y))))
        y = y + stochastic_depth(z, 0.2, "row", self.training)
        y = F.dropout(self.alpha(self.act3(y)), 0.1, self.training)
        return self.fc(F.instance_norm(self.c3(y)).mean((2, 3)) + 1)


def test_per_channel_and_eval_identity_ops_pass_channels(tmp_path, monkeypatch):
    monkeypatch.setitem(
        ops.EVAL_IDENTITY_FUNCTIONS, ops.qualified_name(stochastic_depth), "training"
    )
    torch.manual_seed(0)
    m = randomize(EvalIdentities())
    x = torch.randn(2, 3, 8, 8)
    rep = ad.inspect(m, x)
    assert not rep.unsupported, rep.unsupported
    assert rep.layers["c1"] == (8, 8) and rep.layers["c2"] == (8, 8)
    stream = groups_of(m, x, "c1")
    assert all("c2" in g.producers for g in stream)  # the residual couples c1 and c2
    bn = next(s for s in stream[0].slices if s.module == "n1" and s.param == "running_var")
    assert bn.index == (0,)
    zero(m, [stream[1], stream[6]])
    zero(m, groups_of(m, x, "c3")[2:3])
    c = check(m, x, {"c1": 6, "c2": 6, "c3": 5}, tmp_path)
    assert c.model.n1.weight.shape == (6,) and c.model.n1.running_var.shape == (6,)
    assert c.model.inorm.num_features == 6


# ---------------------------------------------------------------------------------------------
# normalizations that mix channels block the stream, not the hidden units around them
# ---------------------------------------------------------------------------------------------
class NormMix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.c2 = nn.Conv2d(8, 10, 1)
        self.c3 = nn.Conv2d(10, 8, 1)
        self.fc1 = nn.Linear(8, 12)
        self.ln = nn.LayerNorm(12)
        self.fc2 = nn.Linear(12, 16)
        self.fc3 = nn.Linear(16, 3)

    def forward(self, x):
        y = self.gn(self.c1(x))
        y = y + self.c3(F.gelu(self.c2(y)))  # hidden units between c2 and c3
        h = self.ln(self.fc1(y.mean((2, 3))))
        return self.fc3(F.gelu(self.fc2(h)))


def test_channel_mixing_norms_block_the_stream_only(tmp_path):
    torch.manual_seed(0)
    m = randomize(NormMix())
    x = torch.randn(2, 3, 8, 8)
    rep = ad.inspect(m, x)
    assert rep.layers["c1"] == (0, 8) and rep.layers["c3"] == (0, 8)
    assert rep.layers["fc1"] == (0, 12)
    assert rep.layers["c2"] == (10, 10) and rep.layers["fc2"] == (16, 16)
    assert any("GroupNorm" in k for k in rep.frozen) and any("LayerNorm" in k for k in rep.frozen)
    zero(m, groups_of(m, x, "c2")[:4] + groups_of(m, x, "fc2")[::2])
    check(m, x, {"c2": 6, "fc2": 8, "c1": 8, "fc1": 12}, tmp_path)
    with torch.no_grad():
        m.fc1.weight[5] = 0
        m.fc1.bias[5] = 0
    with pytest.raises(CompileError, match=r"channel 5 of 'fc1' is exactly zero but LayerNorm"):
        ad.compile(m, x)


# ---------------------------------------------------------------------------------------------
# transformer and channels-last blocks
# ---------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """timm's ViT attention: one qkv Linear, heads split by reshape, permute, unbind."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class SDPAAttention(nn.Module):
    """Hugging Face style: separate q, k, v Linears, view / transpose, SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_attention_heads = num_heads
        self.attention_head_size = dim // num_heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def split(self, x):
        shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)  # noqa: RUF005
        return x.view(shape).transpose(1, 2)

    def forward(self, x):
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.transpose(1, 2).flatten(2)
        return self.o(y)


class UnpackedSDPAAttention(SDPAAttention):
    """The same, with the new shape unpacked: fx cannot iterate a proxy, torch.export traces."""

    def split(self, x):
        return x.view(*x.size()[:-1], self.num_attention_heads, -1).transpose(1, 2)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, attn: type[nn.Module], hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, attn: type[nn.Module], dim=32, heads=4, hidden=48, depth=2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, 17, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, attn, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def _heads(model, x, block: int, proj: str) -> list[ad.ChannelGroup]:
    return groups_of(model, x, f"blocks.{block}.attn.{proj}")


@pytest.mark.parametrize("attn", [Attention, SDPAAttention, UnpackedSDPAAttention])
def test_transformer_mlp_units_and_attention_heads_go(attn, tmp_path):
    torch.manual_seed(0)
    m = ViT(attn).eval()
    with torch.no_grad():
        m.cls.normal_()
        m.pos.normal_()
    m = randomize(m)
    x = torch.randn(2, 3, 16, 16)
    qkv = "qkv" if attn is Attention else "v"
    assert ad.inspect(m, x).tracer == (
        "torch.export" if attn is UnpackedSDPAAttention else "torch.fx"
    )
    heads = _heads(m, x, 0, qkv)
    assert len(heads) == 4  # one group per head: 8 query, key and value channels each
    rows = [s for s in heads[1].slices if s.role == "out" and s.param == "weight"]
    assert sum(len(s.index) for s in rows) == 3 * 8
    mlp = groups_of(m, x, "blocks.1.fc1")
    assert len(mlp) == 48
    zero(m, [heads[1], heads[3], *mlp[:20]])
    zero(m, _heads(m, x, 1, qkv)[2:3])
    if attn is Attention:
        widths = {"blocks.0.attn.qkv": 48, "blocks.1.attn.qkv": 72, "blocks.1.fc1": 28}
    else:
        widths = {"blocks.0.attn.v": 16, "blocks.0.attn.q": 16, "blocks.1.attn.k": 24}
    c = check(
        m,
        x,
        {**widths, "blocks.0.attn.proj" if attn is Attention else "blocks.0.attn.o": 32},
        tmp_path,
    )
    a0, a1 = c.model.blocks[0].attn, c.model.blocks[1].attn
    count = "num_heads" if attn is Attention else "num_attention_heads"
    assert (getattr(a0, count), getattr(a1, count)) == (2, 3)  # the head counts follow
    assert type(c.model) is ViT or type(c.model).__name__ == "ViT"  # a graph when the class cannot


class MHABlockViT(nn.Module):
    """torchvision's ViT encoder block: nn.MultiheadAttention between LayerNorms."""

    def __init__(self, dim=24, heads=3, hidden=40) -> None:
        super().__init__()
        self.embed = nn.Linear(10, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, dim)
        )
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        x = self.embed(x)
        y = self.ln1(x)
        y, _ = self.attn(y, y, y, need_weights=False)
        x = x + y
        x = x + self.mlp(self.ln2(x))
        return self.head(x.mean(1))


def test_multihead_attention_module_loses_heads(tmp_path):
    torch.manual_seed(0)
    m = randomize(MHABlockViT())
    x = torch.randn(2, 6, 10)
    heads = groups_of(m, x, "attn")
    assert len(heads) == 3
    rows = next(s for s in heads[1].slices if s.param == "in_proj_weight" and s.role == "out")
    assert rows.index == (*range(8, 16), *range(32, 40), *range(56, 64))
    zero(m, heads[1:2] + groups_of(m, x, "mlp.0")[:15])
    c = check(m, x, {"mlp.0": 25}, tmp_path)
    attn = c.model.attn
    assert isinstance(attn, nn.MultiheadAttention) and attn.num_heads == 2
    assert tuple(attn.in_proj_weight.shape) == (48, 24) and tuple(attn.out_proj.weight.shape) == (
        24,
        16,
    )
    path = c.save(tmp_path / "c.pt")
    again = ad.load_compiled(path, MHABlockViT)
    with torch.no_grad():
        assert torch.equal(again(x), c.model(x))


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, permute to channels-last, LayerNorm, MLP, layer scale, permute back."""

    def __init__(self, dim=16, hidden=32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 2, stride=2)
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, hidden)
        self.pw2 = nn.Linear(hidden, dim)
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 0.5))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))).permute(0, 3, 1, 2)
        x = x + self.layer_scale * y
        return self.head(x.mean((2, 3)))


def test_channels_last_block_hidden_units_go(tmp_path):
    torch.manual_seed(0)
    m = randomize(ConvNeXtBlock())
    x = torch.randn(2, 3, 16, 16)
    rep = ad.inspect(m, x)
    assert rep.layers["pw1"] == (32, 32) and rep.layers["stem"] == (0, 16)
    zero(m, groups_of(m, x, "pw1")[5:17])
    check(m, x, {"pw1": 20, "pw2": 16}, tmp_path)


class LayerScaleStream(nn.Module):
    """A stream whose channels can go: a per-channel scale parameter broadcast onto it."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.ones(8, 1, 1))
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = self.c1(x)
        y = y + self.gamma * torch.relu(self.c2(y))
        return self.fc(y.mean((2, 3)))


def test_per_channel_parameter_is_sliced_with_its_channels(tmp_path):
    torch.manual_seed(0)
    m = randomize(LayerScaleStream())
    x = torch.randn(2, 3, 8, 8)
    g = groups_of(m, x, "c1")
    assert len(g) == 8
    assert any(s.module == "" and s.param == "gamma" and s.index == (3,) for s in g[3].slices)
    zero(m, [g[3], g[6]])
    c = check(m, x, {"c1": 6, "c2": 6}, tmp_path)
    assert tuple(c.model.gamma.shape) == (6, 1, 1)
    path = c.save(tmp_path / "c.pt")
    again = ad.load_compiled(path, LayerScaleStream)
    with torch.no_grad():
        assert torch.equal(again(x), c.model(x))


class EinsumAttention(nn.Module):
    """MaxViT style: chunk into q, k, v, einsum, a per-head position bias table."""

    def __init__(self, dim=24, head_dim=6, tokens=9) -> None:
        super().__init__()
        self.n_heads = dim // head_dim
        self.head_dim = head_dim
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.merge = nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.randn(tokens, tokens, self.n_heads))
        self.embed = nn.Linear(5, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        x = self.embed(x)
        B, P, D = x.shape
        q, k, v = torch.chunk(self.to_qkv(x), 3, dim=-1)
        q = q.reshape(B, P, self.n_heads, self.head_dim).permute(0, 2, 1, 3)
        k = k.reshape(B, P, self.n_heads, self.head_dim).permute(0, 2, 1, 3)
        v = v.reshape(B, P, self.n_heads, self.head_dim).permute(0, 2, 1, 3)
        dot = torch.einsum("bhid,bhjd->bhij", q, k * D**-0.5)
        dot = F.softmax(dot + self.bias.permute(2, 0, 1).unsqueeze(0), dim=-1)
        out = torch.einsum("bhij,bhjd->bhid", dot, v).permute(0, 2, 1, 3).reshape(B, P, D)
        return self.head(self.merge(out).mean(1))


def test_einsum_attention_heads_go_with_their_bias(tmp_path):
    torch.manual_seed(0)
    m = randomize(EinsumAttention())
    x = torch.randn(2, 9, 5)
    heads = groups_of(m, x, "to_qkv")
    assert len(heads) == 4
    assert any(s.param == "bias" and s.module == "" and s.dim == 2 for s in heads[0].slices)
    zero(m, heads[2:3])
    c = check(m, x, {"to_qkv": 54}, tmp_path)
    assert c.model.bias.shape == (9, 9, 3) or c.model.get_parameter("bias").shape == (9, 9, 3)


def test_attention_heads_with_constant_values_fold(tmp_path):
    """Filters zeroed, biases kept (what the coupled_weights regularizer leaves): a head's
    value is its bias, softmax rows sum to one, so the head folds into the projection."""
    torch.manual_seed(0)
    m = randomize(ViT(Attention, depth=1))
    x = torch.randn(2, 3, 16, 16)
    heads = _heads(m, x, 0, "qkv")
    zero(m, heads[:2], roles=("out",))
    with torch.no_grad():  # keep the value biases of the zeroed heads non-zero
        m.blocks[0].attn.qkv.bias[64:80] = torch.linspace(-1, 1, 16)
    c = check(m, x, {"blocks.0.attn.qkv": 48}, tmp_path)
    assert c.report.folded_groups >= 2


# ---------------------------------------------------------------------------------------------
# channel shuffle
# ---------------------------------------------------------------------------------------------
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: split in halves, a branch on one, concat, shuffle."""

    def __init__(self, c=16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        h = c // 2
        self.b1 = nn.Sequential(nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(h, h, 3, padding=1, groups=h), nn.BatchNorm2d(h))
        self.b3 = nn.Sequential(nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU())
        self.shuffle = nn.ChannelShuffle(2)
        self.fc = nn.Linear(c, 3)

    def unit(self, x):
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.b3(self.b2(self.b1(b)))], 1), 2)

    def forward(self, x):
        y = self.shuffle(self.unit(self.stem(x)))
        return self.fc(y.mean((2, 3)))


def test_channel_shuffle_keeps_groups_equal(tmp_path):
    torch.manual_seed(0)
    m = randomize(ShuffleUnit())
    x = torch.randn(2, 3, 8, 8)
    rep = ad.inspect(m, x)
    assert not rep.unsupported
    stem = groups_of(m, x, "stem.0")
    rows = [
        next(s for s in g.slices if s.module == "stem.0" and s.role == "out").index for g in stem
    ]
    # chunk: channel i goes with i + 8; shuffles: the same position in both halves
    assert rows == [(0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15)]
    inner = groups_of(m, x, "b1.0")
    assert len(inner) == 8
    zero(m, stem[2:3] + inner[:3])
    check(m, x, {"stem.0": 12, "b1.0": 5, "b3.0": 6}, tmp_path)


# ---------------------------------------------------------------------------------------------
# control flow on shapes: torch.export traces what torch.fx cannot
# ---------------------------------------------------------------------------------------------
class ShapeBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        if y.shape[-1] > 4:  # fx cannot trace a branch on a shape
            y = F.max_pool2d(y, 2)
        for _ in range(y.shape[-1] // 4):
            y = y + 0.5 * y
        return self.fc(self.c2(y).mean((2, 3)))


def test_control_flow_on_shapes_traces_with_torch_export(tmp_path):
    torch.manual_seed(0)
    m = randomize(ShapeBranches())
    x = torch.randn(2, 3, 16, 16)
    rep = ad.inspect(m, x)
    assert rep.traceable and rep.tracer == "torch.export" and "torch.export" in str(rep)
    assert rep.layers["c1"] == (8, 8) and rep.layers["c2"] == (6, 6)
    zero(m, groups_of(m, x, "c1")[1:4] + groups_of(m, x, "c2")[:1])
    c = check(m, x, {"c1": 5, "c2": 5}, tmp_path)
    assert type(c.model) is ShapeBranches and c.report.tracer == "torch.export"


# ---------------------------------------------------------------------------------------------
# outputs and export
# ---------------------------------------------------------------------------------------------
class DictOut(nn.Module):
    """A segmentation-style model: a dict of outputs, adaptive pooling to 7x7 of a 2x2 map."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((7, 7))
        self.c2 = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4 * 49, 3)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        p = self.pool(y)
        Out = collections.namedtuple("Out", "logits feats")
        return {"out": self.c2(y), "aux": [Out(self.fc(self.c2(p).flatten(1)), p)]}


def test_dict_outputs_and_adaptive_pooling_export(tmp_path):
    torch.manual_seed(0)
    m = randomize(DictOut())
    x = torch.randn(2, 3, 4, 4)
    zero(m, groups_of(m, x, "c2")[1:2])
    c = ad.compile(m, x)
    assert c.report.layers["c1"] == (8, 8)  # c1's channels reach the output (feats)
    path = c.export_onnx(tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert len(sess.get_outputs()) == 3
    fresh = torch.randn(5, 3, 4, 4)
    with torch.no_grad():
        ref = flat(m(fresh))
    for r, o in zip(ref, sess.run(None, {sess.get_inputs()[0].name: fresh.numpy()}), strict=True):
        assert float(np.abs(o - r.numpy()).max()) <= 1e-5 * max(1.0, float(r.abs().max()))


class TorchTransformer(nn.Module):
    """PyTorch's own encoder and decoder layers (fx leaves, traced through their slow path)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoderLayer(16, 2, 24, batch_first=True, norm_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        memory = self.encoder(self.embed(x))
        return self.head(self.decoder(memory, memory).mean(1))


def test_pytorch_transformer_layers_lose_hidden_units_and_heads(tmp_path):
    torch.manual_seed(0)
    m = randomize(TorchTransformer())
    x = torch.randn(2, 5, 6)
    rep = ad.inspect(m, x)
    assert rep.layers["encoder.layers.0.linear1"] == (32, 32)
    assert rep.layers["encoder.layers.1.self_attn"] == (48, 48)  # 4 heads of 4 (q, k, v)
    assert rep.layers["decoder.multihead_attn"] == (48, 48)
    heads = groups_of(m, x, "encoder.layers.1.self_attn")
    assert len(heads) == 4
    zero(m, heads[1:3] + groups_of(m, x, "encoder.layers.0.linear1")[:10])
    zero(m, groups_of(m, x, "decoder.linear1")[3:9])
    c = check(
        m,
        x,
        {"encoder.layers.0.linear1": 22, "encoder.layers.1.self_attn": 24, "decoder.linear1": 18},
        tmp_path,
    )
    attn = c.model.encoder.layers[1].self_attn
    assert attn.num_heads == 2 and attn.head_dim == 4
