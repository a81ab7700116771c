import pytest
import torch
import torch.fx
from archdiscover.models import (
    BasicBlock,
    Bottleneck,
    ConvAutoencoder,
    ConvNet,
    DenseAutoencoder,
    ResNet,
)
from torch import nn

from archdiscover import models

NAMES = [
    "conv_autoencoder",
    "convnet",
    "dense_autoencoder",
    "dncnn",
    "mlp",
    "resnet18",
    "resnet20",
    "resnet_bottleneck",
    "skip_autoencoder",
    "skip_conv_autoencoder",
]

# (name, kwargs, input shape, output shape)
CASES = [
    ("convnet", {}, (2, 1, 28, 28), (2, 10)),
    ("convnet", {"in_channels": 3, "image_size": 32}, (2, 3, 32, 32), (2, 10)),
    ("dense_autoencoder", {}, (2, 1, 28, 28), (2, 1, 28, 28)),
    ("dense_autoencoder", {"widths": (50, 20)}, (3, 1, 28, 28), (3, 1, 28, 28)),
    ("conv_autoencoder", {}, (2, 1, 28, 28), (2, 1, 28, 28)),
    ("conv_autoencoder", {"skips": True}, (2, 1, 28, 28), (2, 1, 28, 28)),
    (
        "conv_autoencoder",
        {"in_channels": 3, "enc_widths": (8, 8, 8), "bottleneck": 8, "dec_widths": (4, 4, 4)},
        (2, 3, 16, 16),
        (2, 3, 16, 16),
    ),
    ("resnet18", {}, (2, 3, 32, 32), (2, 10)),
    ("resnet20", {}, (2, 3, 32, 32), (2, 10)),
    ("resnet20", {"in_channels": 1, "num_classes": 7}, (2, 1, 32, 32), (2, 7)),
    ("resnet18", {"in_channels": 1}, (2, 1, 28, 28), (2, 10)),
    ("resnet_bottleneck", {}, (2, 3, 32, 32), (2, 10)),
    ("mlp", {}, (2, 1, 28, 28), (2, 10)),
    ("skip_autoencoder", {}, (2, 1, 28, 28), (2, 1, 28, 28)),
    ("skip_conv_autoencoder", {"widths": (4, 6)}, (2, 1, 12, 10), (2, 1, 12, 10)),
    ("dncnn", {}, (2, 1, 20, 24), (2, 1, 20, 24)),
    ("dncnn", {"depth": 4, "widths": (5, 6, 7), "channels": 3}, (2, 3, 9, 9), (2, 3, 9, 9)),
]


def _nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _convs(m: nn.Module) -> list[nn.Conv2d]:
    return [c for c in m.modules() if isinstance(c, nn.Conv2d)]


def test_available_lists_all_models():
    assert models.available() == NAMES


@pytest.mark.parametrize(("name", "kwargs", "shape_in", "shape_out"), CASES)
def test_output_shapes(name, kwargs, shape_in, shape_out):
    torch.manual_seed(0)
    m = models.build(name, **kwargs).eval()
    with torch.no_grad():
        assert tuple(m(torch.randn(shape_in)).shape) == shape_out


@pytest.mark.parametrize(("name", "kwargs", "shape_in", "shape_out"), CASES)
def test_fx_trace_matches_module(name, kwargs, shape_in, shape_out):
    torch.manual_seed(0)
    m = models.build(name, **kwargs).eval()
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(shape_in)
    with torch.no_grad():
        assert torch.equal(gm(x), m(x))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_kwargs_raise_type_error(name):
    with pytest.raises(TypeError):
        models.build(name, no_such_argument=1)


def test_standard_resnet_parameter_counts():
    assert _nparams(models.build("resnet18")) == 11_173_962
    assert _nparams(ResNet()) == 11_173_962
    assert _nparams(models.build("resnet20")) == 272_474
    assert _nparams(models.build("resnet18", num_classes=100)) == 11_173_962 + 90 * 513


def test_convnet_parameter_count_by_formula():
    m = ConvNet()
    expected = (1 * 64 * 25 + 64) + (64 * 64 * 25 + 64) + (1024 * 128 + 128) + (128 * 10 + 10)
    assert _nparams(m) == expected == 236_618
    assert m.flat_features == 64 * 4 * 4
    assert m.classifier[1].in_features == 1024
    narrow = ConvNet(channels=(5, 7), hidden=9)
    assert _nparams(narrow) == (25 * 5 + 5) + (5 * 7 * 25 + 7) + (7 * 16 * 9 + 9) + (9 * 10 + 10)
    assert ConvNet(image_size=32).flat_features == 64 * 5 * 5


def test_dense_autoencoder_structure():
    m = DenseAutoencoder()
    lins = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in lins] == [(784, 784)] * 6
    assert _nparams(m) == 6 * (784 * 784 + 784)
    assert not any(isinstance(x, nn.Sigmoid) for x in m.modules())
    narrow = DenseAutoencoder(widths=(100, 30))
    assert _nparams(narrow) == (784 * 100 + 100) + (100 * 30 + 30) + (30 * 784 + 784)
    sig = DenseAutoencoder(widths=(16,), out_activation="sigmoid")
    y = sig(torch.randn(4, 1, 28, 28))
    assert y.shape == (4, 1, 28, 28) and bool(((y >= 0) & (y <= 1)).all())
    with pytest.raises(ValueError):
        DenseAutoencoder(out_activation="tanh")


def test_conv_autoencoder_widths():
    m = ConvAutoencoder()
    assert [
        (c.in_channels, c.out_channels) for c in m.encoder.modules() if isinstance(c, nn.Conv2d)
    ] == [
        (1, 64),
        (64, 128),
    ]
    assert m.bottleneck[0].out_channels == 256
    assert [(u.in_channels, u.out_channels) for u in m.up] == [(256, 128), (128, 64)]
    assert [(d[0].in_channels, d[0].out_channels) for d in m.decoder] == [(128, 128), (64, 64)]
    assert (m.head.in_channels, m.head.out_channels, m.head.kernel_size) == (64, 1, (1, 1))

    odd = ConvAutoencoder(enc_widths=(3, 5), bottleneck=7, dec_widths=(11, 13), up_widths=(2, 4))
    assert [(u.in_channels, u.out_channels) for u in odd.up] == [(7, 2), (11, 4)]
    assert [(d[0].in_channels, d[0].out_channels) for d in odd.decoder] == [(2, 11), (4, 13)]
    assert odd.head.in_channels == 13
    with pytest.raises(ValueError):
        ConvAutoencoder(enc_widths=(8, 8), dec_widths=(8,))


def test_unet_skip_decoder_conv_takes_up_plus_skip_channels():
    m = ConvAutoencoder(enc_widths=(3, 5), bottleneck=7, dec_widths=(11, 13), skips=True)
    # decoder j concatenates up[j] with encoder stage d-1-j
    assert [d[0].in_channels for d in m.decoder] == [11 + 5, 13 + 3]
    m = models.build("conv_autoencoder", skips=True)
    assert [d[0].in_channels for d in m.decoder] == [128 + 128, 64 + 64]
    gm = torch.fx.symbolic_trace(m)
    assert any(n.target is torch.cat for n in gm.graph.nodes)


def test_width_multiplier_scales_widths():
    m = models.build("resnet20", width_multiplier=4)
    assert m.stage_widths == (64, 128, 256)
    assert m.stem[0].out_channels == 64
    assert [s[0].conv1.out_channels for s in m.stages] == [64, 128, 256]
    assert m.fc.in_features == 256
    half = models.build("resnet18", width_multiplier=0.5)
    assert half.stage_widths == (32, 64, 128, 256)
    # every conv weight is ~4x smaller, except the stem's input side
    assert _nparams(half) < _nparams(models.build("resnet18")) / 3.5


def test_resnet_standard_shortcuts():
    m = models.build("resnet20")
    assert [[b.downsample is not None for b in s] for s in m.stages] == [
        [False] * 3,
        [True, False, False],
        [True, False, False],
    ]
    ds = m.stages[1][0].downsample
    assert (ds[0].in_channels, ds[0].out_channels, ds[0].stride, ds[0].kernel_size) == (
        16,
        32,
        (2, 2),
        (1, 1),
    )
    assert all(isinstance(b, BasicBlock) for s in m.stages for b in s)
    assert isinstance(m.pool, nn.AdaptiveAvgPool2d)
    assert not any(isinstance(x, nn.MaxPool2d) for x in m.modules())


def test_resnet_narrow_build_layer_shapes():
    bw = ((5, 6, 7), (8, 9, 10), (11, 12, 13))
    m = models.build("resnet20", stage_widths=(10, 20, 30), block_widths=bw)
    assert m.stem[0].out_channels == 10
    for s, (stream, inner) in enumerate(zip((10, 20, 30), bw, strict=True)):
        prev = (10, 10, 20)[s]
        for b, blk in enumerate(m.stages[s]):
            assert blk.conv1.in_channels == (prev if b == 0 else stream)
            assert blk.conv1.out_channels == inner[b] == blk.conv2.in_channels
            assert blk.conv2.out_channels == stream
            assert blk.bn1.num_features == inner[b] and blk.bn2.num_features == stream
    assert m.fc.in_features == 30
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_narrow_build_keeps_supernet_shortcut_types():
    # supernet: stage 2 goes 16 -> 32 at stride 1, so it has a projection shortcut
    sup = ResNet(BasicBlock, layers=(1, 1), widths=(16, 32), strides=(1, 1))
    assert [s[0].downsample is not None for s in sup.stages] == [False, True]
    # narrowed to equal widths: the shortcut type still follows the supernet
    narrow = ResNet(BasicBlock, layers=(1, 1), widths=(16, 32), strides=(1, 1), stage_widths=(8, 8))
    assert [s[0].downsample is not None for s in narrow.stages] == [False, True]
    # ... unless set explicitly
    ident = ResNet(
        BasicBlock,
        layers=(1, 1),
        widths=(16, 32),
        strides=(1, 1),
        stage_widths=(8, 8),
        downsample=(False, False),
    )
    assert [s[0].downsample is not None for s in ident.stages] == [False, False]
    # an identity shortcut between different shapes is impossible
    with pytest.raises(ValueError):
        models.build("resnet20", downsample=(False, False, True))
    # a stem narrowed differently from stage 1 forces a projection there
    m = models.build("resnet20", stem_width=12, stage_widths=(14, 32, 64))
    assert m.stages[0][0].downsample is not None
    assert m.stages[0][0].downsample[0].in_channels == 12


def test_bottleneck_resnet_narrow_build():
    m = models.build("resnet_bottleneck")
    assert isinstance(m.stages[0][0], Bottleneck)
    assert m.stem[0].out_channels == 16
    assert m.stage_widths == (64, 128, 256)
    assert [s[0].downsample is not None for s in m.stages] == [True, True, True]
    bw = (((3, 4), 5), ((6, 7), (8, 9)), ((10, 11), (12, 13)))
    n = models.build("resnet_bottleneck", stem_width=9, stage_widths=(20, 30, 40), block_widths=bw)
    b = n.stages[0][0]
    assert (b.conv1.in_channels, b.conv1.out_channels) == (9, 3)
    assert (b.conv2.in_channels, b.conv2.out_channels, b.conv2.stride) == (3, 4, (1, 1))
    assert (b.conv3.in_channels, b.conv3.out_channels) == (4, 20)
    b = n.stages[0][1]
    assert (b.conv1.out_channels, b.conv2.out_channels) == (5, 5)
    b = n.stages[2][0]
    assert (b.conv1.in_channels, b.conv2.stride, b.conv3.out_channels) == (30, (2, 2), 40)
    assert b.downsample[0].in_channels == 30
    assert n(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def _slice_into(sup: nn.Module, narrow: nn.Module) -> None:
    """Load the leading channels of every supernet tensor into ``narrow`` (strict)."""
    src = sup.state_dict()
    sliced = {}
    for k, v in narrow.state_dict().items():
        sliced[k] = src[k][tuple(slice(0, d) for d in v.shape)] if v.dim() else src[k]
    narrow.load_state_dict(sliced, strict=True)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet20", {"stage_widths": (9, 17, 33), "block_widths": ((3, 4, 5),) * 3}),
        (
            "resnet_bottleneck",
            {
                "stem_width": 7,
                "stage_widths": (20, 30, 40),
                "block_widths": (((3, 4), 5), (6, 7), (8, (9, 10))),
            },
        ),
        (
            "conv_autoencoder",
            {
                "skips": True,
                "enc_widths": (5, 6),
                "bottleneck": 7,
                "dec_widths": (8, 9),
                "up_widths": (3, 4),
            },
        ),
        ("convnet", {"channels": (5, 6), "hidden": 7}),
        ("dense_autoencoder", {"widths": (10, 20, 30, 40, 50)}),
    ],
)
def test_narrow_build_has_supernet_structure(name, kwargs):
    # same parameter names and buffers, every tensor no larger than the supernet's
    sup, narrow = models.build(name), models.build(name, **kwargs)
    _slice_into(sup, narrow)
    assert _nparams(narrow) < _nparams(sup)


def test_dncnn_zero_init_residual_starts_as_the_identity_and_still_learns():
    torch.manual_seed(0)
    m = models.build("dncnn", depth=4, width=6, zero_init_residual=True)
    x = torch.randn(2, 1, 9, 9)
    assert torch.equal(m(x), x)  # x - 0 exactly
    assert not torch.equal(models.build("dncnn", depth=4, width=6)(x), x)
    loss = (m(x) - 0.5 * x).pow(2).mean()
    loss.backward()
    assert m.body[-1].weight.grad.abs().sum() > 0  # the zero last conv gets a gradient
