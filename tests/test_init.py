import math

import pytest
import torch
from torch import nn

from archdiscover import L1, GroupL12, LinBreg, Null, sparse_init_


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_l1_keeps_exact_fraction_of_entries_and_scales_variance():
    model = nn.Sequential(nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 500))
    sparse_init_(model, 0.01, reg=L1(0.1), generator=_gen())
    for lin in (model[0], model[2]):
        w = lin.weight
        assert int((w != 0).sum()) == round(0.01 * w.numel())
        nz = w[w != 0]
        expected = 2.0 / (lin.in_features * 0.01)  # Kaiming variance divided by the density
        assert nz.var().item() == pytest.approx(expected, rel=0.1)
        assert torch.all(lin.bias == 0)


def test_forward_signal_variance_matches_dense_kaiming():
    torch.manual_seed(0)
    x = torch.randn(2000, 1000)
    dense, sparse = nn.Linear(1000, 1000, bias=False), nn.Linear(1000, 1000, bias=False)
    nn.init.kaiming_normal_(dense.weight, nonlinearity="relu")
    sparse_init_(sparse, 0.02, generator=_gen())
    ratio = sparse(x).var().item() / dense(x).var().item()
    assert ratio == pytest.approx(1.0, rel=0.15)


@pytest.mark.parametrize(
    ("module", "reg", "group_dims", "n_groups"),
    [
        (nn.Linear(64, 200), GroupL12(0.1), (1,), 200),  # neurons
        (nn.Conv2d(8, 100, 3), GroupL12(0.1), (1, 2, 3), 100),  # output channels
        (nn.ConvTranspose2d(100, 50, 3), GroupL12(0.1, axis=1), (0, 2, 3), 50),
        (nn.Conv2d(20, 50, 3), GroupL12.kernels(0.1), (2, 3), 1000),  # kernels
    ],
)
def test_group_regularizers_keep_whole_groups(module, reg, group_dims, n_groups):
    sparse_init_(module, 0.1, reg=reg, generator=_gen())
    alive = (module.weight != 0).any(dim=group_dims)
    full = (module.weight != 0).all(dim=group_dims)
    assert int(alive.sum()) == round(0.1 * n_groups)
    assert torch.equal(alive, full)


def test_regularizers_come_from_the_optimizer_or_a_mapping():
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 30), nn.Linear(30, 3))
    before = model[3].weight.detach().clone()
    opt = LinBreg(
        [
            {"params": [model[0].weight], "reg": GroupL12(0.1)},
            {"params": [model[2].weight], "reg": L1(0.1)},
            {"params": [model[0].bias, model[2].bias], "reg": Null()},
        ],
        lr=0.1,
    )
    sparse_init_(model, 0.25, reg=opt, generator=_gen())
    assert int((model[0].weight != 0).any(1).sum()) == 10  # 25% of 40 rows
    assert int((model[2].weight != 0).sum()) == 300  # 25% of 1200 entries
    assert torch.equal(model[3].weight, before)  # not in the optimizer

    sparse_init_(model, 0.5, reg={"0": Null(), "2": L1(0.0)}, generator=_gen())
    assert bool((model[0].weight != 0).all())  # Null: dense Kaiming
    assert int((model[2].weight != 0).sum()) == 600
    with pytest.raises(ValueError, match="no module named 'encoder'"):
        sparse_init_(model, 0.5, reg={"encoder": L1(0.1)})


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_bad_density(density):
    with pytest.raises(ValueError, match="density must be in"):
        sparse_init_(nn.Linear(3, 3), density)


def test_reproducible_with_generator():
    a, b = nn.Linear(30, 30), nn.Linear(30, 30)
    sparse_init_(a, 0.1, generator=_gen(5))
    sparse_init_(b, 0.1, generator=_gen(5))
    assert torch.equal(a.weight, b.weight)
    assert not math.isnan(a.weight.sum().item())


def test_bias_modes():
    for mode in ("zero", "keep", "positive"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(50, 20), torch.nn.ReLU(), torch.nn.Linear(20, 5)
        )
        before = [model[0].bias.clone(), model[2].bias.clone()]
        sparse_init_(model, 0.1, bias=mode, generator=torch.Generator().manual_seed(1))
        for m, b0 in zip((model[0], model[2]), before, strict=True):
            if mode == "zero":
                assert not m.bias.any()
            elif mode == "keep":
                assert torch.equal(m.bias, b0)
            else:  # U(0, 1/sqrt(fan_in))
                assert (m.bias > 0).all() and (m.bias <= 1 / math.sqrt(m.in_features)).all()
    with pytest.raises(ValueError, match="bias must be one of"):
        sparse_init_(model, 0.1, bias="ones")
