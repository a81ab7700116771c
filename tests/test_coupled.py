"""Regularization on coupled channel groups: one prox zeros a whole channel, compile removes it."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from archdiscover.models import BasicBlock, ResNet
from torch import nn

import archdiscover as ad
from archdiscover.coupling import active_channels, coupled_param_groups
from archdiscover.data import digits
from archdiscover.regularizers import CoupledGroupL12, regularizer_from_dict


class Small(nn.Module):
    """Conv+BN+ReLU, a residual pair, pooling, Linear: stream groups span two producers."""

    def __init__(self, w: int = 12, h: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, w, 3, padding=1)
        self.b1 = nn.BatchNorm2d(w)
        self.c2 = nn.Conv2d(w, h, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(h)
        self.c3 = nn.Conv2d(h, w, 3, padding=1, bias=False)
        self.b3 = nn.BatchNorm2d(w)
        self.fc = nn.Linear(w, 10)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        z = self.b3(self.c3(torch.relu(self.b2(self.c2(y)))))
        return self.fc(torch.relu(y + z).mean((2, 3)))


X = torch.randn(2, 1, 8, 8)


def test_param_groups_regularize_batchnorm_scale_and_shift_by_default():
    m = Small()
    pg = coupled_param_groups(m, X, lam=0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    coupled = [names[id(p)] for p in pg[0]["params"]]
    # every group here passes a BatchNorm: its scale and shift, filters dense and free
    assert set(coupled) == {"b1.weight", "b1.bias", "b2.weight", "b2.bias", "b3.weight", "b3.bias"}
    assert {names[id(p)] for p in pg[1]["params"]} == {
        "c1.weight",
        "c1.bias",
        "c2.weight",
        "c3.weight",
        "fc.weight",
        "fc.bias",
    }
    reg = pg[0]["reg"]
    assert isinstance(reg, CoupledGroupL12) and reg.n_groups == 12 + 10
    idx = dict(zip(coupled, reg.index, strict=True))
    # the residual stream: b1's and b3's channel j are one group
    assert idx["b1.weight"][1] == idx["b3.weight"][1] == idx["b1.bias"][1] == idx["b3.bias"][1]
    assert idx["b1.weight"][1] == tuple(range(12))
    assert idx["b2.bias"][1] == tuple(range(12, 22))
    assert regularizer_from_dict(reg.to_dict()) == reg


def test_param_groups_without_batchnorm_regularize_rows_and_biases():
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 9), nn.ReLU(), nn.Linear(9, 3))
    pg = coupled_param_groups(m, torch.randn(2, 1, 8, 8), lam=0.1)
    assert [tuple(p.shape) for p in pg[0]["params"]] == [(9, 64), (9,)]
    assert pg[0]["reg"].index == ((0, tuple(range(9))), (0, tuple(range(9))))


def test_explicit_roles_cover_the_coupled_slices():
    m = Small()
    pg = coupled_param_groups(m, X, lam=0.1, roles=("out", "norm"))
    names = {id(p): n for n, p in m.named_parameters()}
    coupled = {names[id(p)] for p in pg[0]["params"]}
    assert coupled == {
        "c1.weight",
        "c1.bias",
        "b1.weight",
        "b1.bias",
        "c2.weight",
        "b2.weight",
        "b2.bias",
        "c3.weight",
        "b3.weight",
        "b3.bias",
    }
    assert {names[id(p)] for p in pg[1]["params"]} == {"fc.weight", "fc.bias"}
    reg = pg[0]["reg"]
    assert isinstance(reg, CoupledGroupL12) and reg.n_groups == 12 + 10
    # the residual stream: c1's and c3's channel j (and both BatchNorms) are one group
    idx = dict(zip([names[id(p)] for p in pg[0]["params"]], reg.index, strict=True))
    assert idx["c1.weight"][1] == idx["c3.weight"][1] == idx["b1.bias"][1] == idx["b3.bias"][1]
    assert regularizer_from_dict(reg.to_dict()) == reg
    with pytest.raises(ValueError, match="roles"):
        coupled_param_groups(m, X, lam=0.1, roles="filters")


def test_prox_zeros_whole_groups_and_shrinks_the_others():
    torch.manual_seed(0)
    m = Small()
    pg = coupled_param_groups(m, X, lam=1.0, roles=("out", "norm"))
    reg, params = pg[0]["reg"], pg[0]["params"]
    xs = [p.detach().clone() for p in params]
    norms = reg.group_norms_all(xs)
    sizes = torch.zeros(reg.n_groups, dtype=torch.float64)
    for x, (dim, ids) in zip(xs, reg.index, strict=True):
        for g in ids:
            sizes[g] += x.numel() // x.shape[dim]
    # choose tau so that exactly the groups below the median are zeroed
    ratio = (norms.double() / sizes.sqrt()).sort().values
    tau = float((ratio[10] + ratio[11]) / 2)
    out = reg.prox_all(xs, tau)
    for gid in range(reg.n_groups):
        expect = max(0.0, 1 - tau * math.sqrt(sizes[gid]) / float(norms[gid]))
        for x_in, x_out, (dim, ids) in zip(xs, out, reg.index, strict=True):
            sel = [j for j, g in enumerate(ids) if g == gid]
            if sel:
                a = x_in.index_select(dim, torch.tensor(sel))
                b = x_out.index_select(dim, torch.tensor(sel))
                torch.testing.assert_close(b, a * expect)
                if expect == 0:
                    assert not b.any()
    assert sum(1 for g in range(reg.n_groups) if 1 - tau * sizes[g].sqrt() / norms[g] <= 0) == 11
    with pytest.raises(TypeError, match="value_all"):
        reg(xs[0])


@pytest.mark.parametrize("opt_cls", [ad.LinBreg, ad.AdaBreg])
def test_initial_parameters_are_a_fixed_point(opt_cls):
    torch.manual_seed(0)
    m = Small()
    pg = coupled_param_groups(m, X, lam=0.5)
    opt = opt_cls(pg, lr=0.1)
    ad.sparse_init_(m, 0.25, reg=opt, generator=torch.Generator().manual_seed(0))
    before = copy.deepcopy(m.state_dict())
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for k, v in m.state_dict().items():  # zeros stay exactly zero, the rest up to rounding
        assert torch.equal(v == 0, before[k] == 0), k
        torch.testing.assert_close(v, before[k], rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("density", "per_layer"), [(0.25, (3, 2)), (0.01, (1, 1)), (1.0, (12, 10))]
)
def test_sparse_init_keeps_the_requested_channels_in_every_layer(density, per_layer):
    torch.manual_seed(0)
    m = Small()
    opt = ad.LinBreg(coupled_param_groups(m, X, lam=0.5), lr=0.1)
    ad.sparse_init_(m, density, reg=opt, generator=torch.Generator().manual_seed(1))
    # per layer (the stream c1/c3 with 12 channels, c2 with 10): max(1, round(d * n))
    assert not bool(((m.b1.weight != 0) ^ (m.b3.weight != 0)).any())  # one stream group
    assert int((m.b1.weight != 0).sum()) == per_layer[0]
    assert int((m.b2.weight != 0).sum()) == per_layer[1]
    for bn in (m.b1, m.b2, m.b3):  # switched off: scale and shift exactly 0 together
        assert torch.equal(bn.weight == 0, (bn.weight == 0) & (bn.bias == 0))
    # the filters are not regularized: dense Kaiming, whatever the channel's state
    for conv in (m.c1, m.c2, m.c3):
        assert int((conv.weight == 0).sum()) == 0
        std = float(conv.weight.detach().std())
        assert 0.7 < std * math.sqrt(conv.weight[0].numel() / 2) < 1.3
    groups = ad.channel_groups(m, X)
    assert active_channels(m, groups) == {
        "c1": per_layer[0],
        "c2": per_layer[1],
        "c3": per_layer[0],
        "fc": 10,
    }


def _narrow_and_wide():
    """A Conv-BN-ReLU net with a 3-channel layer next to a 500-channel one, and an input."""
    m = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Conv2d(3, 500, 3, padding=1), nn.BatchNorm2d(500), nn.ReLU(),
        nn.Flatten(), nn.Linear(500 * 16, 2),
    )  # fmt: skip
    return m, torch.randn(2, 1, 4, 4)


def test_sparse_init_gives_every_layer_a_unit_however_small_the_density():
    # a layer of 3 channels next to one of 500: a global draw would give the small one 0
    m, x = _narrow_and_wide()
    opt = ad.AdaBreg(coupled_param_groups(m, x, lam=0.1))
    ad.sparse_init_(m, 0.01, reg=opt, generator=torch.Generator().manual_seed(0))
    assert int((m[1].weight != 0).sum()) == 1 and int((m[4].weight != 0).sum()) == 5


@pytest.mark.parametrize(("min_units", "widths"), [(2, (2, 5)), (4, (3, 5)), (600, (3, 500))])
def test_sparse_init_min_units_sets_the_narrowest_start(min_units, widths):
    # density 0.01: 3 channels -> max(min_units, 0), 500 -> max(min_units, 5), capped at n
    m, x = _narrow_and_wide()
    opt = ad.AdaBreg(coupled_param_groups(m, x, lam=0.1))
    gen = torch.Generator().manual_seed(0)
    ad.sparse_init_(m, 0.01, reg=opt, generator=gen, min_units=min_units)
    assert (int((m[1].weight != 0).sum()), int((m[4].weight != 0).sum())) == widths
    assert active_channels(m, ad.channel_groups(m, x))["0"] == widths[0]


def test_sparse_init_min_units_for_row_groups_and_entries():
    lin = nn.Linear(50, 40)
    ad.sparse_init_(lin, 0.01, reg=ad.GroupL12(0.1), min_units=3)
    assert int((lin.weight != 0).any(dim=1).sum()) == 3  # rows: max(3, round(0.4))
    ad.sparse_init_(lin, 0.001, reg=ad.L1(0.1), min_units=7)
    assert int((lin.weight != 0).sum()) == 7  # entries: max(7, round(2.0))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="min_units"):
            ad.sparse_init_(lin, 0.1, min_units=bad)


def test_sparse_init_keeps_working_with_a_users_older_group_mask():
    class Mine(ad.L1):  # a group_mask written before min_groups existed
        kind = "test_older_group_mask"  # its own kind: leaves "l1" registered to L1

        def group_mask(self, shape, density, generator=None):
            return torch.ones(shape, dtype=torch.bool).tril()

    lin = nn.Linear(4, 4)
    ad.sparse_init_(lin, 0.5, reg=Mine(0.1))
    assert torch.equal(lin.weight != 0, torch.ones(4, 4, dtype=torch.bool).tril())


def test_proximal_training_zeros_whole_channels_and_compile_removes_exactly_them():
    # proximal SGD from a dense start: the prox on BatchNorm scale and shift switches whole
    # channels off (network slimming, exactly), and compile removes exactly those
    torch.manual_seed(0)
    data = digits(seed=0)
    m = Small(w=24, h=20)
    xs, ys = data.train.tensors
    xs = xs.view(-1, 1, 8, 8)
    opt = ad.ProxSGD(coupled_param_groups(m, xs[:4], lam=0.1), lr=0.1)
    ad.sparse_init_(m, 1.0, reg=opt, generator=torch.Generator().manual_seed(0))  # dense Kaiming
    groups = ad.channel_groups(m, xs[:4])
    gen = torch.Generator().manual_seed(0)
    for _epoch in range(3):
        perm = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(m(xs[b]), ys[b]).backward()
            opt.step()
    m.eval()
    alive = [g for g in groups if not g.is_zero(m, ("norm",))]
    assert 0 < len(alive) < len(groups)
    for bn in (m.b1, m.b2, m.b3):  # the prox zeroed scale and shift together
        assert torch.equal(bn.weight == 0, (bn.weight == 0) & (bn.bias == 0))
    c = ad.compile(m, xs[:8])
    w1 = sum(1 for g in alive if "c1" in g.producers)
    w2 = sum(1 for g in alive if "c2" in g.producers)
    assert c.report.layers["c1"][1] == w1 == c.report.layers["c3"][1]
    assert c.report.layers["c2"][1] == w2
    assert w1 + w2 == len(alive)
    assert active_channels(m, groups) == {"c1": w1, "c2": w2, "c3": w1, "fc": 10}
    with torch.no_grad():
        ref, got = m(xs[:200]), c.model(xs[:200])
    assert float((ref - got).abs().max()) <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_state_dict_round_trip_with_coupled_groups(tmp_path):
    torch.manual_seed(0)
    m = ResNet(BasicBlock, layers=(1, 1), widths=(4, 8), strides=(1, 2), num_classes=3)
    x = torch.randn(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0])

    def run(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    opt = ad.LinBreg(coupled_param_groups(m, x, lam=0.2), lr=0.05, momentum=0.9)
    run(m, opt, 2)
    m2 = copy.deepcopy(m)
    opt2 = ad.LinBreg(coupled_param_groups(m2, x, lam=0.0), lr=0.05, momentum=0.9)
    sd = opt.state_dict()
    torch.save(sd, tmp_path / "sd.pt")
    opt2.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    assert opt2.param_groups[0]["reg"] == opt.param_groups[0]["reg"]
    run(m, opt, 3)
    run(m2, opt2, 3)
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_delta_sets_how_far_an_entered_batchnorm_scale_moves_per_step():
    """``delta`` goes on the coupled group only; it leaves the start a fixed point and
    multiplies an active BatchNorm scale's AdaBreg step by about ``delta``."""
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="delta must be finite and > 0"):
            coupled_param_groups(Small(), X, lam=0.1, delta=bad)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(2))
    steps = {}
    for delta in (None, 10.0):
        torch.manual_seed(0)
        m = Small()
        pg = coupled_param_groups(m, X, lam=0.01, delta=delta)
        assert ("delta" in pg[0]) == (delta is not None) and "delta" not in pg[1]
        opt = ad.AdaBreg(pg, lr=1e-3)
        ad.sparse_init_(m, 0.5, reg=opt, generator=torch.Generator().manual_seed(0))
        assert opt.param_groups[0]["delta"] == (delta or 1.0)
        before = m.b2.weight.detach().clone()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        live = before != 0
        assert live.any() and (~live).any()
        steps[delta] = (m.b2.weight.detach() - before)[live].abs()
    ratio = steps[10.0] / steps[None]
    assert ratio.min() > 5 and ratio.max() < 20, ratio


def test_engine_passes_coupled_delta_to_the_coupled_group():
    from archdiscover.engine import ConfigError, TrainConfig
    from archdiscover.engine.recipes import param_groups

    with pytest.raises(ConfigError, match="coupled_delta must be > 0"):
        TrainConfig(coupled_delta=-1.0).validate()
    cfg = TrainConfig(regularizer="coupled", lam=0.1, coupled_delta=10.0)
    pg = param_groups(Small(), cfg, X)
    assert pg[0]["name"] == "coupled" and pg[0]["delta"] == 10.0
    assert all("delta" not in g for g in pg[1:])
    assert "delta" not in param_groups(Small(), TrainConfig(regularizer="coupled"), X)[0]
