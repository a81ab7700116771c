"""Topology discovery: gated connections, their removal and folding, depth, the layer graph,
the skip-gated supernets, the gate recipe and the deblurring task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import archdiscover as ad
from archdiscover import models
from archdiscover.compiler.analysis import ValueAnalysis
from archdiscover.compiler.topology import layer_graph, summarize
from archdiscover.graph.gates import find_gates, gate_parameters
from archdiscover.graph.trace import trace


def _fc(depth: int = 3, seed: int = 0) -> models.SkipAutoencoder:
    """A small skip autoencoder with random weights and random non-zero gates."""
    torch.manual_seed(seed)
    m = models.build("skip_autoencoder", in_shape=[1, 4, 4], depth=depth).eval()
    with torch.no_grad():
        for b in m.blocks:
            b.skips.copy_(torch.randn(b.skips.shape).sign() * (0.5 + torch.rand(b.skips.shape)))
    return m


def _conv(widths=(4, 4, 4), seed: int = 0) -> models.SkipConvAutoencoder:
    torch.manual_seed(seed)
    m = models.build("skip_conv_autoencoder", widths=list(widths)).eval()
    with torch.no_grad():
        for b in [*m.blocks, m.head]:
            b.gates.copy_(0.5 + torch.rand(b.gates.shape))
    return m


def _edges(G) -> set[tuple[str, str, str | None]]:
    return {(a, b, d["gate"]) for a, b, d in G.edges(data=True)}


def _same(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


X16 = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
X8 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))


# -- models ------------------------------------------------------------------------------------
def test_skip_models_start_with_zero_gates_and_keep_shapes():
    fc = models.build("skip_autoencoder")
    assert [tuple(b.skips.shape) for b in fc.blocks] == [(i + 1,) for i in range(6)]
    assert all(not b.skips.any() for b in fc.blocks)
    x = torch.randn(2, 1, 28, 28)
    assert fc(x).shape == x.shape
    conv = models.build("skip_conv_autoencoder", widths=[5, 6, 7])
    assert [b.conv.in_channels for b in conv.blocks] == [1, 5 + 1, 6 + 1 + 5]
    assert conv.head.conv.in_channels == 1 + 5 + 6 + 7
    assert conv(X8).shape == X8.shape
    # with every gate zero the skip net is the plain chain: x_{i+1} = act(W_i x_i + b_i)
    chain = fc.blocks[0].act(fc.blocks[0].linear(x.flatten(1)))
    for b in fc.blocks[1:]:
        chain = b.act(b.linear(chain))
    assert torch.equal(fc(x), chain.view_as(x))
    with pytest.raises(ValueError, match="activation"):
        models.build("skip_autoencoder", activation="tanh")


def test_gates_are_found_with_their_parameter_and_element():
    m = _fc(depth=3)
    gates = find_gates(trace(m, X16).gm)
    assert [g.name for g in gates] == [
        "blocks.0.skips[0]",
        "blocks.1.skips[0]",
        "blocks.1.skips[1]",
        "blocks.2.skips[0]",
        "blocks.2.skips[1]",
        "blocks.2.skips[2]",
    ]
    assert set(gate_parameters(m, X16)) == {f"blocks.{i}.skips" for i in range(3)}
    assert gate_parameters(models.build("mlp"), torch.randn(2, 784)) == {}
    # a gate is a number, not an operation the compiler cannot see through
    assert ad.inspect(m, X16).unsupported == []


def test_a_zero_scalar_gate_makes_its_product_a_known_zero():
    m = _fc(depth=2)
    with torch.no_grad():
        m.blocks[1].skips[0] = 0.0
    g = trace(m, X16)
    a = ValueAnalysis(g, (X16,))
    by_name = {gt.name: gt.node for gt in find_gates(g.gm)}
    assert a.zero_tensor(by_name["blocks.1.skips[0]"])
    assert not a.zero_tensor(by_name["blocks.1.skips[1]"])


# -- zero gates --------------------------------------------------------------------------------
def test_a_zero_gate_removes_exactly_its_connection_fc():
    m = _fc(depth=3)
    with torch.no_grad():
        m.blocks[2].skips[1] = 0.0  # x_1 (blocks.0's output) -> the output
    before = layer_graph(m, X16)
    c = ad.compile(m, X16)
    after = layer_graph(c.model, X16)
    assert _edges(before) - _edges(after) == {("blocks.0.linear", "output", "blocks.2.skips[1]")}
    assert _edges(after) <= _edges(before)
    status = {k["gate"]: k["status"] for k in c.report.connections}
    assert status.pop("blocks.2.skips[1]") == "removed"
    assert set(status.values()) == {"kept"}  # added to other tensors: multiplications stay
    assert summarize(c.report.connections) == {
        "total": 6,
        "removed": 1,
        "folded": 0,
        "kept": 5,
        "dropped": 0,
    }
    muls = [n for n in c.model.graph.nodes if n.op == "call_function" and "mul" in str(n.target)]
    assert len(muls) == 5
    assert _same(c.model, m, X16) < 1e-6


def test_a_zero_gate_removes_exactly_its_connection_conv():
    m = _conv(widths=(4, 5, 6))
    with torch.no_grad():
        m.blocks[2].gates[1] = 0.0  # h_1 (blocks.0's output, 4 channels) -> blocks.2
    before = layer_graph(m, X8)
    c = ad.compile(m, X8)
    after = layer_graph(c.model, X8)
    removed = {(a, b) for a, b, _ in _edges(before)} - {(a, b) for a, b, _ in _edges(after)}
    assert removed == {("blocks.0.conv", "blocks.2.conv")}
    conv2 = c.model.get_submodule("blocks.2.conv")
    assert conv2.in_channels == m.blocks[2].conv.in_channels - 4
    # the other gates read by one conv each are folded into its input channels
    status = {k["gate"]: k["status"] for k in c.report.connections}
    assert status.pop("blocks.2.gates[1]") == "removed"
    assert set(status.values()) == {"folded"}
    assert not [n for n in c.model.graph.nodes if n.op == "get_attr"]
    assert _same(c.model, m, X8) < 1e-5


class _CatMLP(nn.Module):
    """A Linear reading a gated concatenation of 2-D tensors (DenseNet style, fully
    connected): ``out = c(cat([h2, g0 * x, g1 * h1]))``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 3), nn.Linear(3, 4)
        self.c = nn.Linear(4 + 5 + 3, 2)
        self.g = nn.Parameter(torch.tensor([0.0, -1.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = torch.relu(self.a(x))
        h2 = torch.relu(self.b(h1))
        return self.c(torch.cat([h2, self.g[0] * x, self.g[1] * h1], dim=1))


def test_gated_concatenation_into_a_linear_loses_its_columns_or_folds():
    torch.manual_seed(0)
    m = _CatMLP().eval()
    x = torch.randn(6, 5)
    c = ad.compile(m, x)
    status = {k["gate"]: (k["status"], k["source"], k["targets"]) for k in c.report.connections}
    assert status == {
        "g[0]": ("removed", "input", ["c"]),
        "g[1]": ("folded", "a", ["c"]),
    }
    assert c.model.get_submodule("c").in_features == 4 + 3  # the 5 columns of x went
    assert _same(c.model, m, x) < 1e-6


# -- depth -------------------------------------------------------------------------------------
def test_a_layer_that_no_longer_reaches_the_output_is_dropped_conv():
    m = _conv(widths=(4, 4, 4))
    with torch.no_grad():
        m.head.gates[2] = 0.0  # h_2 (blocks.1) no longer read by the head
        m.head.gates[3] = 0.0  # h_3 (blocks.2) neither: blocks.2 is unreachable, then blocks.1
    c = ad.compile(m, X8)
    r = c.report
    assert r.dropped_layers == ["blocks.1.conv", "blocks.2.conv"]
    assert r.layers["blocks.1.conv"] == (4, 0) and r.layers["blocks.2.conv"] == (4, 0)
    assert r.layers["blocks.0.conv"] == (4, 4)
    assert (r.depth_before, r.depth_after) == (4, 2)
    assert set(layer_graph(c.model, X8).nodes) == {"input", "blocks.0.conv", "head.conv", "output"}
    assert c.model.get_submodule("head.conv").in_channels == 1 + 4
    status = {k["gate"]: k["status"] for k in r.connections}
    assert status == {
        "blocks.1.gates[0]": "dropped",
        "blocks.2.gates[0]": "dropped",
        "blocks.2.gates[1]": "dropped",
        "head.gates[0]": "folded",
        "head.gates[1]": "folded",
        "head.gates[2]": "removed",
        "head.gates[3]": "removed",
    }
    assert _same(c.model, m, X8) < 1e-5


def test_a_zero_weight_layer_becomes_its_bias_and_what_only_fed_it_goes_fc():
    m = _fc(depth=3)
    with torch.no_grad():
        m.blocks[1].linear.weight.zero_()  # x_2 = relu(b_1) + s10 x_0 + s11 x_1
        m.blocks[1].skips[1] = 0.0  # x_1 -> blocks.1's output
        m.blocks[2].skips[1] = 0.0  # x_1 -> the output: now x_1 reaches nothing
    c = ad.compile(m, X16)
    r = c.report
    assert r.constant_layers == ["blocks.1.linear"]
    assert r.dropped_layers == ["blocks.0.linear"]
    assert r.layers["blocks.0.linear"] == (16, 0)
    assert "blocks.0.linear" not in layer_graph(c.model, X16)
    assert _same(c.model, m, X16) < 1e-6
    assert _same(c.model, m, torch.randn(3, 1, 4, 4)) < 1e-6  # another batch size
    assert r.params_after < r.params_before - 16 * 16


def test_compiled_skip_models_save_load_and_export(tmp_path):
    fc = _fc(depth=3)
    with torch.no_grad():
        fc.blocks[2].skips[0] = 0.0
        fc.blocks[1].linear.weight.zero_()
    conv = _conv(widths=(4, 4))
    with torch.no_grad():
        conv.head.gates[1] = 0.0
    for m, x, build in [
        (fc, X16, lambda: models.build("skip_autoencoder", in_shape=[1, 4, 4], depth=3)),
        (conv, X8, lambda: models.build("skip_conv_autoencoder", widths=[4, 4])),
    ]:
        c = ad.compile(m, x)
        c.save(tmp_path / "m.pt")
        back = ad.load_compiled(tmp_path / "m.pt", build)
        assert _same(back, m, x) < 1e-5
        c.export_onnx(tmp_path / "m.onnx")  # raises unless onnxruntime reproduces it


# -- training: gates as parameters with their own regularizer ------------------------------------
def test_gate_recipe_puts_gates_in_their_own_l1_group_and_keeps_hidden_rows():
    from archdiscover.engine import TrainConfig
    from archdiscover.engine.recipes import param_groups
    from archdiscover.regularizers import L1, GroupL12

    m = models.build("skip_autoencoder", in_shape=[1, 4, 4], depth=3)
    cfg = TrainConfig(model="skip_autoencoder", regularizer="group", lam=0.07, gate_lam=1.96)
    groups = {g["name"]: g for g in param_groups(m, cfg, X16)}
    assert isinstance(groups["gates"]["reg"], L1) and groups["gates"]["reg"].lam == 1.96
    assert {id(p) for p in groups["gates"]["params"]} == {id(b.skips) for b in m.blocks}
    # the candidate skips from the input do not freeze the hidden layers: rows there
    assert isinstance(groups["weights"]["reg"], GroupL12)
    assert {id(p) for p in groups["weights"]["params"]} == {
        id(m.blocks[0].linear.weight),
        id(m.blocks[1].linear.weight),
    }
    assert [id(p) for p in groups["output weights"]["params"]] == [id(m.blocks[2].linear.weight)]
    assert all(id(b.skips) not in {id(p) for p in groups["other"]["params"]} for b in m.blocks)
    cfg.gate_lam = None
    groups = {g["name"]: g for g in param_groups(m, cfg, X16)}
    assert groups["gates"]["reg"].lam == 0.07
    cfg.regularizer = "none"
    assert [g["name"] for g in param_groups(m, cfg, X16)] == ["all"]


def test_trained_skip_net_compiles_to_what_it_computes(tmp_path):
    """Bregman training on real images grows gates from zero; compile keeps what matters."""
    from archdiscover.engine import TrainConfig, load_split, train

    cfg = {
        "model": "skip_autoencoder",
        "model_args": {"in_shape": [1, 8, 8], "depth": 3},
        "dataset": "digits",
        "task": "denoising",
        "noise_std": 0.3,
        "optimizer": "adabreg",
        "lr": 3e-2,
        "regularizer": "group",
        "lam": 0.02,
        "gate_lam": 0.5,
        "impl": "foreach",
        "init_density": 0.1,
        "bias_init": "positive",
        "epochs": 3,
        "batch_size": 64,
        "device": "cpu",
    }
    res = train(cfg, tmp_path / "run", progress=False)
    m = res.model.eval()
    gates = torch.cat([b.skips.detach() for b in m.blocks])
    assert 0 < int((gates != 0).sum()) < len(gates)  # some entered, some are still zero
    x = load_split(TrainConfig.from_dict(cfg)).test.tensors[0][:64]
    c = ad.compile(m, x)
    removed = {k["gate"] for k in c.report.connections if k["status"] == "removed"}
    zero = {
        f"blocks.{i}.skips[{k}]"
        for i, b in enumerate(m.blocks)
        for k in range(len(b.skips))
        if b.skips[k] == 0
    }
    assert removed == zero
    assert c.report.max_error < 1e-5
    with torch.no_grad():
        assert float((c.model(x) - m(x)).abs().max()) < 1e-4
    c.export_onnx(tmp_path / "m.onnx")


def test_cli_trains_a_skip_net_and_reports_its_architecture(tmp_path, capsys):
    from archdiscover.cli import main

    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--model", "skip_conv_autoencoder",
            "--model-args", '{"widths": [4, 4]}',
            "--dataset", "digits",
            "--task", "deblurring",
            "--blur-kernel", "3",
            "--blur-sigma", "1.0",
            "--noise-std", "0.1",
            "--optimizer", "adabreg",
            "--lr", "0.01",
            "--impl", "foreach",
            "--regularizer", "group",
            "--gate-lam", "0.01",
            "--epochs", "1",
            "--run-dir", str(run),
            "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    assert "test PSNR" in capsys.readouterr().out
    assert main(["report", str(run)]) == 0
    png = run / "plots" / "architecture.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert str(png) in capsys.readouterr().out


def test_config_rejects_bad_gate_and_blur_values():
    from archdiscover.engine import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="gate_lam must be >= 0"):
        TrainConfig(gate_lam=-1.0).validate()
    with pytest.raises(ConfigError, match="blur_kernel must be an odd number"):
        TrainConfig(blur_kernel=4).validate()
    with pytest.raises(ConfigError, match="blur_sigma must be > 0"):
        TrainConfig(blur_sigma=0.0).validate()


# -- data and plots ----------------------------------------------------------------------------
def test_gaussian_blur_is_a_normalized_gaussian_with_replicate_borders():
    from archdiscover.data import gaussian_blur

    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0
    y = gaussian_blur(x, 9, 5.0)[0, 0].double()
    t = torch.arange(9, dtype=torch.float64) - 4
    k = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 50.0)
    assert torch.allclose(y[3:12, 3:12], k / k.sum(), atol=1e-7)  # the impulse response
    assert float(y.sum()) == pytest.approx(1.0, abs=1e-6)
    c = torch.full((2, 3, 10, 10), 0.7)
    assert torch.allclose(gaussian_blur(c), c)  # constant images stay constant at the borders
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(x, 4)


def test_plot_architecture_draws_both_graphs(tmp_path):
    from archdiscover.plots import plot_architecture

    m = _conv(widths=(4, 4))
    with torch.no_grad():
        m.head.gates[2] = 0.0
    c = ad.compile(m, X8)
    G0, G1 = layer_graph(m, X8), layer_graph(c.model, X8)
    assert G0.nodes["blocks.1.conv"]["width"] == 4 and "blocks.1.conv" not in G1
    value = G0.edges["blocks.0.conv", "head.conv"]["value"]
    assert np.isclose(value, float(m.head.gates[1].detach()))
    p = plot_architecture({"supernet": G0, "discovered": G1}, tmp_path / "a.png")
    assert p.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError):
        plot_architecture({}, tmp_path / "b.png")


def test_the_example_config_is_a_valid_run():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")

    from archdiscover.engine import TrainConfig
    from archdiscover.engine.loop import build_model

    path = Path(__file__).resolve().parents[1] / "examples/configs/skip_autoencoder_mnist5k.toml"
    cfg = TrainConfig.from_dict(tomllib.loads(path.read_text()), where=str(path))
    m = build_model(cfg)
    assert isinstance(m, models.SkipAutoencoder) and m.out_floor == pytest.approx(-0.4252)
    assert (cfg.task, cfg.lam, cfg.gate_lam) == ("denoising", 0.07, 0.14)  # as the benchmark
