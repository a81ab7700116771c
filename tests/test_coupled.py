"""Regularization on coupled channel groups: one prox zeros a whole channel, compile removes it."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from archdiscover.models import BasicBlock, ResNet
from torch import nn

import archdiscover as ad
from archdiscover.coupling import coupled_param_groups
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


def test_param_groups_cover_the_coupled_slices():
    m = Small()
    pg = coupled_param_groups(m, X, lam=0.1)
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


def test_prox_zeros_whole_groups_and_shrinks_the_others():
    torch.manual_seed(0)
    m = Small()
    pg = coupled_param_groups(m, X, lam=1.0)
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


def test_sparse_init_keeps_exactly_the_requested_number_of_coupled_groups():
    torch.manual_seed(0)
    m = Small()
    opt = ad.LinBreg(coupled_param_groups(m, X, lam=0.5), lr=0.1)
    ad.sparse_init_(m, 0.25, reg=opt, generator=torch.Generator().manual_seed(1))
    groups = ad.channel_groups(m, X)
    alive = [g for g in groups if not g.is_zero(m)]
    assert len(alive) == round(0.25 * len(groups))
    for g in groups:  # a dead channel has zero filter, bias, BN scale and shift
        if not any(s.tensor(m).any() for s in g.params(("out",)) if s.param == "weight"):
            assert g.is_zero(m)


def test_training_zeros_whole_channels_and_compile_removes_exactly_them():
    # proximal SGD from a dense start: the coupled prox removes whole channels as it goes
    torch.manual_seed(0)
    data = digits(seed=0)
    m = Small(w=24, h=20)
    xs, ys = data.train.tensors
    xs = xs.view(-1, 1, 8, 8)
    opt = ad.ProxSGD(coupled_param_groups(m, xs[:4], lam=0.02), lr=0.1)
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
    alive = [g for g in groups if not g.is_zero(m)]
    assert 0 < len(alive) < len(groups)
    for g in groups:  # the prox zeroed whole groups: zero filters mean zero BN scale and shift
        if not any(s.tensor(m).any() for s in g.params(("out",)) if s.param == "weight"):
            assert g.is_zero(m), "a coupled group is partly zero"
    c = ad.compile(m, xs[:8])
    w1 = sum(1 for g in alive if "c1" in g.producers)
    w2 = sum(1 for g in alive if "c2" in g.producers)
    assert c.report.layers["c1"][1] == w1 == c.report.layers["c3"][1]
    assert c.report.layers["c2"][1] == w2
    assert w1 + w2 == len(alive)
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
