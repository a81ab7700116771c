"""The graph compiler on each structure: exact widths, exact parameter counts, exact outputs."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
from archdiscover.models import MLP, BasicBlock, Bottleneck, ConvAutoencoder, ConvNet, ResNet
from torch import nn

import archdiscover as ad
from archdiscover.compiler import CompileError


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, and nonzero biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=gen))
                m.bias.copy_(0.3 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            elif getattr(m, "bias", None) is not None and isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def zero_channels(model: nn.Module, x: torch.Tensor, which: dict[str, list[int]]) -> None:
    """Zero the coupled groups of the given output channels of the given layers."""
    groups = ad.channel_groups(model, x)
    hit = set()
    for g in groups:
        for s in g.slices:
            if s.role == "out" and s.param == "weight" and s.module in which:
                if set(s.index) & set(which[s.module]):
                    g.zero_(model)
                    hit.add((s.module, s.index))
    want = {(m, (i,)) for m, idx in which.items() for i in idx}
    assert want <= hit, f"some requested channels are not in removable groups: {want - hit}"


def group_of(groups: list[ad.ChannelGroup], module: str, channel: int) -> ad.ChannelGroup:
    """The group that output channel ``channel`` of ``module`` belongs to."""
    return next(
        g
        for g in groups
        if any(s.role == "out" and s.module == module and s.index == (channel,) for s in g.slices)
    )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == snap.keys()
    for k, v in state.items():
        assert v.shape == snap[k].shape and torch.equal(v, snap[k]), k


def check(
    model: nn.Module,
    x: torch.Tensor,
    narrow: nn.Module | None,
    widths: dict[str, int],
    tmp_path,
    **kw,
) -> ad.Compiled:
    """Compile, then check widths, parameter count, torch and onnxruntime outputs."""
    snap = snapshot(model)
    was_training = model.training
    c = ad.compile(model, x, **kw)
    assert_unchanged(model, snap)
    assert model.training == was_training
    for name, w in widths.items():
        assert c.report.layers[name][1] == w, (name, c.report.layers[name])
    if narrow is not None:
        assert n_params(c.model) == n_params(narrow)
        assert c.report.params_after == n_params(narrow)
        assert {k: v.shape for k, v in c.model.state_dict().items()} == {
            k: v.shape for k, v in narrow.state_dict().items()
        }
    fresh = torch.randn((x.shape[0] + 2, *x.shape[1:]), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model.eval()(fresh)
        got = c.model(fresh)
    model.train(was_training)
    scale = max(1.0, float(ref.abs().max()))
    assert float((ref - got).abs().max()) / scale <= 1e-5
    path = c.export_onnx(tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: fresh.numpy()})
    assert float(np.abs(out - ref.numpy()).max()) / scale <= 1e-5
    return c


# ---------------------------------------------------------------------------------------------
# structures
# ---------------------------------------------------------------------------------------------
def test_mlp(tmp_path):
    torch.manual_seed(0)
    m = randomize(MLP(20, (16, 12), 5))
    x = torch.randn(4, 20)
    zero_channels(m, x, {"layers.1": [0, 3, 4, 9, 15], "layers.3": [1, 2, 3, 11]})
    check(m, x, MLP(20, (11, 8), 5), {"layers.1": 11, "layers.3": 8, "layers.5": 5}, tmp_path)


class ConvStack(nn.Module):
    """Conv+BN+ReLU x3 then global pooling and a Linear head."""

    def __init__(self, widths=(12, 10, 8)) -> None:
        super().__init__()
        layers, prev = [], 3
        for w in widths:
            layers += [nn.Conv2d(prev, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
            prev = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(prev, 4)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def test_conv_bn_relu_stack(tmp_path):
    torch.manual_seed(0)
    m = randomize(ConvStack())
    x = torch.randn(2, 3, 8, 8)
    zero_channels(m, x, {"body.0": [0, 5, 11], "body.3": [9], "body.6": [0, 1, 2, 3, 4]})
    check(m, x, ConvStack((9, 9, 3)), {"body.0": 9, "body.3": 9, "body.6": 3}, tmp_path)


def test_resnet_basic_blocks_with_downsample(tmp_path):
    torch.manual_seed(0)
    kw = dict(block=BasicBlock, layers=(2, 1), widths=(8, 16), strides=(1, 2), num_classes=3)
    m = randomize(ResNet(**kw))
    x = torch.randn(2, 3, 16, 16)
    zero_channels(
        m,
        x,
        {
            "stem.0": [0, 1, 2],  # the stage-0 residual stream (stem + both blocks' conv2)
            "stages.0.0.conv1": [1, 3],
            "stages.0.1.conv1": [0, 1, 2, 3, 4, 5, 6],
            "stages.1.0.downsample.0": list(range(6)),  # stage-1 stream
            "stages.1.0.conv1": [2],
        },
    )
    narrow = ResNet(**kw, stage_widths=(5, 10), block_widths=((6, 1), (15,)))
    widths = {
        "stem.0": 5,
        "stages.0.0.conv2": 5,
        "stages.0.1.conv1": 1,
        "stages.1.0.conv2": 10,
        "stages.1.0.downsample.0": 10,
    }
    check(m, x, narrow, widths, tmp_path)


def test_resnet_bottleneck_blocks(tmp_path):
    torch.manual_seed(0)
    kw = dict(block=Bottleneck, layers=(1, 1), widths=(4, 8), strides=(1, 2), num_classes=3)
    m = randomize(ResNet(**kw))
    x = torch.randn(2, 3, 16, 16)
    zero_channels(
        m,
        x,
        {
            "stem.0": [0],
            "stages.0.0.conv3": [0, 1, 2, 3],
            "stages.0.0.conv1": [0],
            "stages.0.0.conv2": [1, 2],
            "stages.1.0.conv3": [5],
            "stages.1.0.conv1": [0, 1, 2, 3],
        },
    )
    narrow = ResNet(
        **kw,
        stage_widths=(12, 31),
        block_widths=(((3, 2),), ((4, 8),)),
        stem_width=3,
        downsample=(True, True),
    )
    check(m, x, narrow, {"stem.0": 3, "stages.0.0.conv2": 2, "stages.1.0.conv3": 31}, tmp_path)


def test_conv_autoencoder_with_conv_transpose(tmp_path):
    torch.manual_seed(0)
    kw = dict(in_channels=1, enc_widths=(6, 8), bottleneck=10, dec_widths=(8, 6))
    m = randomize(ConvAutoencoder(**kw))
    x = torch.randn(2, 1, 8, 8)
    zero_channels(
        m,
        x,
        {
            "encoder.1.0": [7],
            "bottleneck.0": [0, 9],
            "up.0": [1, 2, 3],
            "up.1": [0],
            "decoder.1.0": [5],
        },
    )
    narrow = ConvAutoencoder(
        in_channels=1, enc_widths=(6, 7), bottleneck=8, dec_widths=(8, 5), up_widths=(5, 5)
    )
    check(m, x, narrow, {"up.0": 5, "up.1": 5, "bottleneck.0": 8}, tmp_path)


def test_unet_concat_skips(tmp_path):
    torch.manual_seed(0)
    kw = dict(in_channels=1, enc_widths=(6, 8), bottleneck=10, dec_widths=(8, 6), skips=True)
    m = randomize(ConvAutoencoder(**kw))
    x = torch.randn(2, 1, 8, 8)
    # encoder channels feed both the next stage and a decoder concat at an offset
    zero_channels(m, x, {"encoder.0.0": [0, 5], "encoder.1.0": [3], "up.0": [0, 7], "up.1": [2]})
    narrow = ConvAutoencoder(
        in_channels=1,
        enc_widths=(4, 7),
        bottleneck=10,
        dec_widths=(8, 6),
        up_widths=(6, 5),
        skips=True,
    )
    c = check(m, x, narrow, {"encoder.0.0": 4, "encoder.1.0": 7}, tmp_path)
    # decoder.1.0 reads [up.1 (5 kept), encoder.0 (4 kept)]
    assert c.model.decoder[1][0].in_channels == 9


class DepthwiseSeparable(nn.Module):
    def __init__(self, widths=(8, 12)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(widths[0], widths[0], 3, padding=1, groups=widths[0]),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        self.pw = nn.Sequential(
            nn.Conv2d(widths[0], widths[1], 1), nn.BatchNorm2d(widths[1]), nn.ReLU()
        )
        self.head = nn.Linear(widths[1], 5)

    def forward(self, x):
        return self.head(
            torch.flatten(nn.functional.adaptive_avg_pool2d(self.pw(self.dw(self.stem(x))), 1), 1)
        )


def test_depthwise_separable(tmp_path):
    torch.manual_seed(0)
    m = randomize(DepthwiseSeparable())
    x = torch.randn(2, 3, 8, 8)
    groups = ad.channel_groups(m, x)
    g0 = next(
        g
        for g in groups
        if ("stem.0", (0,)) in {(s.module, s.index) for s in g.slices if s.role == "out"}
    )
    # a channel and its depthwise filter are one group
    assert {(s.module, s.param, s.role) for s in g0.slices} >= {
        ("dw.0", "weight", "norm"),
        ("pw.0", "weight", "in"),
    }
    zero_channels(m, x, {"stem.0": [0, 2, 7], "pw.0": [1, 2, 3, 4]})
    c = check(m, x, DepthwiseSeparable((5, 8)), {"stem.0": 5, "dw.0": 5, "pw.0": 8}, tmp_path)
    assert c.model.dw[0].groups == 5


def test_linear_after_flatten(tmp_path):
    torch.manual_seed(0)
    m = randomize(ConvNet(in_channels=1, channels=(6, 8), hidden=12, num_classes=4))
    x = torch.randn(2, 1, 28, 28)
    groups = ad.channel_groups(m, x)
    g = next(
        g
        for g in groups
        if ("features.3", (2,)) in {(s.module, s.index) for s in g.slices if s.role == "out"}
    )
    fc_in = next(s for s in g.slices if s.role == "in" and s.module == "classifier.1")
    assert fc_in.module == "classifier.1" and fc_in.index == tuple(range(32, 48))  # 4x4 each
    zero_channels(m, x, {"features.0": [1], "features.3": [0, 2, 7], "classifier.1": [0, 11]})
    narrow = ConvNet(in_channels=1, channels=(5, 5), hidden=10, num_classes=4)
    check(m, x, narrow, {"features.0": 5, "features.3": 5, "classifier.1": 10}, tmp_path)


# ---------------------------------------------------------------------------------------------
# constants, padding, branches, rounding
# ---------------------------------------------------------------------------------------------
def test_dead_neurons_with_bias_are_folded_exactly(tmp_path):
    torch.manual_seed(0)
    m = randomize(MLP(10, (8, 6), 3))
    with torch.no_grad():
        m.layers[1].weight[[1, 4]] = 0  # incoming weights zero, biases stay: constant neurons
        m.layers[1].bias[[1, 4]] = torch.tensor([0.7, -0.2])  # relu(0.7) != 0, relu(-0.2) = 0
        m.layers[5].weight[:, 5] = 0  # unit 5 of layer 2 is dead downstream (outgoing zero)
    c = check(m, torch.randn(4, 10), MLP(10, (6, 5), 3), {"layers.1": 6, "layers.3": 5}, tmp_path)
    assert c.report.folded_groups == 1


def test_constant_conv_channel_folds_into_unpadded_conv_and_batchnorm(tmp_path):
    class Net(nn.Module):
        def __init__(self, w=6):
            super().__init__()
            self.c1 = nn.Conv2d(3, w, 3, padding=1)
            self.b1 = nn.BatchNorm2d(w)
            self.c2 = nn.Conv2d(w, 5, 3, padding=0, bias=False)  # no padding: folding is exact
            self.b2 = nn.BatchNorm2d(5)
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return self.fc(torch.relu(y).mean((2, 3)))

    torch.manual_seed(0)
    m = randomize(Net())
    with torch.no_grad():
        m.c1.weight[2] = 0  # channel 2 is the constant relu(bn(bias))
        m.b1.bias[2] = 2.0  # ... and a positive one
    before = m.b2.running_mean.clone()
    c = check(m, torch.randn(2, 3, 8, 8), Net(5), {"c1": 5}, tmp_path)
    assert c.report.folded_groups == 1
    assert not torch.equal(c.model.b2.running_mean, before)  # folded into the next BN's mean
    assert c.model.c2.bias is None


def test_constant_into_zero_padded_conv_is_kept(tmp_path):
    torch.manual_seed(0)
    m = randomize(ConvStack())
    with torch.no_grad():
        m.body[0].weight[4] = 0  # constant channel (bias + BN shift) feeding a padded 3x3 conv
        m.body[1].bias[4] = 1.0  # relu(positive constant): nonzero
    c = check(m, torch.randn(2, 3, 8, 8), None, {"body.0": 12}, tmp_path)
    assert any("zero-padded" in k for k in c.report.kept)
    assert c.report.removed_groups == 0


def test_all_zero_residual_branch_disappears(tmp_path):
    torch.manual_seed(0)
    kw = dict(block=BasicBlock, layers=(2, 1), widths=(8, 16), strides=(1, 2), num_classes=3)
    m = randomize(ResNet(**kw))
    with torch.no_grad():
        m.stages[0][1].bn2.weight.zero_()
        m.stages[0][1].bn2.bias.zero_()  # block 0.1's branch now outputs exactly zero
    x = torch.randn(2, 3, 16, 16)
    c = check(m, x, None, {"stages.0.1.conv1": 0, "stages.0.1.conv2": 0}, tmp_path)
    assert c.report.dropped_branches == ["stages.0.1"]
    assert c.report.depth_after == c.report.depth_before - 2
    assert isinstance(c.model, torch.fx.GraphModule)
    names = {n for n, _ in c.model.named_modules()}
    assert "stages.0.1.conv1" not in names and "stages.0.0.conv1" in names
    # the compact model saves as data and reloads from the supernet constructor
    path = c.save(tmp_path / "c.pt")
    again = ad.load_compiled(path, lambda: ResNet(**kw))
    with torch.no_grad():
        assert torch.equal(again(x), c.model(x))


def test_constant_residual_branch_becomes_a_buffer(tmp_path):
    """A bottleneck whose first layer died (its filters and BN zero) while the second keeps
    positive BN shifts: the branch outputs a per-channel constant. Its layers go, the
    constant stays as one buffer (narrowed with the residual stream), every zeroed channel
    is removed, and the file reloads."""
    torch.manual_seed(0)
    kw = dict(block=Bottleneck, layers=(2,), widths=(4,), strides=(1,), num_classes=3)
    m = randomize(ResNet(**kw))
    blk = m.stages[0][1]
    with torch.no_grad():
        blk.conv1.weight.zero_()
        blk.bn1.weight.zero_()
        blk.bn1.bias.zero_()
        blk.bn2.bias.abs_().add_(0.1)  # relu(bn2(0)) = bn2's shift > 0: constant, not zero
    x = torch.randn(2, 3, 16, 16)
    c = check(m, x, None, {"stages.0.1.conv1": 0, "stages.0.1.conv2": 0}, tmp_path)
    assert c.report.dropped_branches == ["stages.0.1"]
    assert c.report.depth_after == c.report.depth_before - 3
    consts = dict(c.model.named_buffers())
    (name,) = [k for k in consts if k.startswith("_archdiscover_const_")]
    stream = c.report.layers["stages.0.0.conv3"][1]
    assert consts[name].shape == (1, stream, 1, 1)
    path = c.save(tmp_path / "c.pt")
    again = ad.load_compiled(path, lambda: ResNet(**kw))
    with torch.no_grad():
        assert torch.equal(again(x), c.model(x))


def test_save_load_plain_model(tmp_path):
    torch.manual_seed(0)
    m = randomize(ConvNet(in_channels=1, channels=(6, 8), hidden=12, num_classes=4))
    x = torch.randn(2, 1, 28, 28)
    zero_channels(m, x, {"features.0": [1, 2], "classifier.1": [0]})
    c = ad.compile(m, x)
    assert type(c.model) is ConvNet
    path = c.save(tmp_path / "c.pt")
    again = ad.load_compiled(
        path, lambda: ConvNet(in_channels=1, channels=(6, 8), hidden=12, num_classes=4)
    )
    with torch.no_grad():
        assert torch.equal(again(x), c.model(x))
    (tmp_path / "bad.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"bad\.pt"):
        ad.load_compiled(tmp_path / "bad.pt", ConvNet)


@pytest.mark.parametrize("r", [4, 8])
def test_round_to_keeps_exactness(r, tmp_path):
    torch.manual_seed(0)
    m = randomize(ConvStack((24, 20, 16)))
    x = torch.randn(2, 3, 8, 8)
    zero_channels(m, x, {"body.0": list(range(0, 24, 2)), "body.3": list(range(7)), "body.6": [0]})
    c1 = ad.compile(m, x)
    assert [c1.report.layers[n][1] for n in ("body.0", "body.3", "body.6")] == [12, 13, 15]
    c = check(m, x, None, {}, tmp_path, round_to=r)
    for n in ("body.0", "body.3", "body.6"):
        before, after = c.report.layers[n]
        assert after % r == 0 or after == before
        assert after >= c1.report.layers[n][1]


def test_round_to_auto_measures_and_reports(tmp_path):
    torch.manual_seed(0)
    m = randomize(ConvStack((24, 20, 16)))
    x = torch.randn(2, 3, 8, 8)
    zero_channels(m, x, {"body.0": list(range(0, 24, 2))})
    c = ad.compile(m, x, round_to="auto", auto_batch_sizes=(1, 4))
    assert c.report.round_to in (1, 4, 8, 16)
    assert set(c.report.auto) >= {1} and all(set(d) == {"1", "4"} for d in c.report.auto.values())
    assert "chosen" in str(c.report)


# ---------------------------------------------------------------------------------------------
# loud failures and inspection
# ---------------------------------------------------------------------------------------------
class WithGroupNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.norm = nn.GroupNorm(2, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


def test_unsupported_operation_fails_loudly():
    torch.manual_seed(0)
    m = WithGroupNorm().eval()
    with torch.no_grad():
        m.fc1.weight[3] = 0
        m.fc1.bias[3] = 0
        m.norm.weight[3] = 0
        m.norm.bias[3] = 0  # channel 3 is exactly zero before and after the norm
    x = torch.randn(3, 6)
    with pytest.raises(CompileError, match="channel 3 of 'fc1' is exactly zero but GroupNorm"):
        ad.compile(m, x)
    c = ad.compile(m, x, strict=False)  # kept, counted, still exact
    assert c.report.layers["fc1"] == (8, 8)
    assert any("GroupNorm" in k for k in c.report.kept)
    rep = ad.inspect(m, x)
    assert rep.traceable and any("GroupNorm" in op for _, op, _ in rep.unsupported)
    assert rep.layers["fc1"] == (0, 8)
    assert "GroupNorm" in str(rep)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value
            return self.fc(x)
        return x


def test_untraceable_model_raises_naming_it():
    with pytest.raises(CompileError, match="Untraceable"):
        ad.compile(Untraceable().eval(), torch.randn(2, 4))
    rep = ad.inspect(Untraceable(), torch.randn(2, 4))
    assert not rep.traceable and "Untraceable" in rep.error


def test_concat_of_a_tensor_and_its_own_conv_is_grouped_correctly(tmp_path):
    class Net(nn.Module):
        def __init__(self, a=8, b=4):
            super().__init__()
            self.c1 = nn.Conv2d(3, a, 3, padding=1)
            self.c4 = nn.Conv2d(a, b, 1)
            self.fc = nn.Linear((a + b) * 16, 5)

        def forward(self, x):
            z = torch.relu(self.c1(x))
            w = torch.cat([z, self.c4(z)], 1)
            return self.fc(torch.flatten(nn.functional.max_pool2d(w, 2), 1))

    torch.manual_seed(0)
    m = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    groups = ad.channel_groups(m, x)
    g = next(
        g
        for g in groups
        if ("c4", (1,)) in {(s.module, s.index) for s in g.slices if s.role == "out"}
    )
    assert next(s for s in g.slices if s.module == "fc").index == tuple(range(144, 160))
    assert "c1" not in g.layers  # Torch-Pruning 1.6.1 couples c4 with c1 here
    zero_channels(m, x, {"c1": [0, 7], "c4": [1]})
    check(m, x, Net(6, 3), {"c1": 6, "c4": 3}, tmp_path)


def test_training_mode_model_is_compiled_in_eval_and_left_alone(tmp_path):
    torch.manual_seed(0)
    m = randomize(ConvStack())
    m.train()
    x = torch.randn(2, 3, 8, 8)
    zero_channels(m, x, {"body.0": [1]})
    snap = copy.deepcopy(m.state_dict())
    c = ad.compile(m, x)
    assert m.training and not c.model.training
    assert_unchanged(m, snap)


class InvertedResidualSE(nn.Module):
    """MobileNetV2/V3-style: expand 1x1, depthwise 3x3, squeeze-excite gate, project 1x1,
    residual add without an activation; flattened with ``view(x.size(0), -1)``."""

    def __init__(self, c=8, e=24, s=6) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.ReLU6())
        self.dw = nn.Sequential(
            nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e), nn.Hardswish()
        )
        self.se1 = nn.Conv2d(e, s, 1)
        self.se2 = nn.Conv2d(s, e, 1)
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))
        self.head = nn.Linear(c * 4 * 4, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(self.expand(x))
        gate = torch.sigmoid(self.se2(torch.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        x = x + self.project(y * gate)
        x = nn.functional.adaptive_avg_pool2d(x, 4)
        return self.head(x.view(x.size(0), -1))


def test_inverted_residual_with_squeeze_excite(tmp_path):
    torch.manual_seed(0)
    m = randomize(InvertedResidualSE())
    x = torch.randn(2, 3, 8, 8)
    groups = ad.channel_groups(m, x)
    g = group_of(groups, "expand.0", 3)
    # expand channel 3 = its depthwise filter = the gate's channel 3 (se2 row 3) = se1 column 3
    assert {(s.module, s.role) for s in g.slices} >= {
        ("dw.0", "norm"),
        ("se2", "out"),
        ("se1", "in"),
        ("project.0", "in"),
    }
    zero_channels(m, x, {"expand.0": [0, 3, 5], "se1": [1], "stem.0": [2]})
    narrow = randomize(InvertedResidualSE(c=7, e=21, s=5))
    c = check(
        m, x, narrow, {"expand.0": 21, "dw.0": 21, "se1": 5, "se2": 21, "stem.0": 7}, tmp_path
    )
    assert c.report.layers["head"] == (3, 3)
