import math

import pytest
import torch

from archdiscover.regularizers import (
    L1,
    GroupL12,
    Null,
    as_regularizer,
    regularizer_from_dict,
)


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_l1_prox_is_soft_shrinkage_with_exact_zeros():
    x = torch.tensor([3.0, -0.2, 0.0, 0.5, -2.0])
    y = L1(0.5).prox(x, tau=1.0)
    assert torch.equal(y, torch.tensor([2.5, 0.0, 0.0, 0.0, -1.5]))
    assert (y == 0).sum() == 3


def test_l1_value_and_subgradient():
    x = torch.tensor([3.0, -0.2, 0.0])
    assert L1(2.0)(x).item() == pytest.approx(6.4)
    assert torch.equal(L1(2.0).subgradient(x), torch.tensor([2.0, -2.0, 0.0]))


def _loop_group_value(x, axis, lam):
    """Reference: iterate over groups one by one (slow, obviously right)."""
    moved = x.movedim(axis, tuple(range(len(axis))))
    groups = moved.reshape(math.prod(moved.shape[: len(axis)]), -1)
    n = groups.shape[1]
    return lam * math.sqrt(n) * sum(g.norm() for g in groups)


@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        ((6, 5), (0,)),  # Linear: rows are neurons
        ((6, 3, 3, 3), (0,)),  # Conv: output channels
        ((3, 6, 3, 3), (1,)),  # ConvTranspose: output channels are dim 1
        ((6, 3, 3, 3), (0, 1)),  # kernel-wise groups
    ],
)
def test_group_value_scaled_by_sqrt_group_size(shape, axis):
    torch.manual_seed(0)
    x = torch.randn(shape)
    reg = GroupL12(0.3, axis=axis)
    assert reg(x).item() == pytest.approx(_loop_group_value(x, axis, 0.3).item(), rel=1e-12)


@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        ((8, 5), (0,)),
        ((8, 3, 3, 3), (0,)),
        ((3, 8, 3, 3), (1,)),
        ((8, 4, 3, 3), (0, 1)),
    ],
)
def test_group_prox_zeros_whole_groups_and_nothing_else(shape, axis):
    torch.manual_seed(1)
    x = torch.randn(shape)
    reg = GroupL12(1.0, axis=axis)
    dims = reg.norm_dims(x)
    n = reg.group_size(x)
    norms = torch.linalg.vector_norm(x, dim=dims, keepdim=True)
    tau = float(norms.median()) / math.sqrt(n)  # about half the groups fall below threshold
    y = reg.prox(x, tau)
    dead = (norms <= tau * math.sqrt(n)).expand_as(x)
    assert dead.any() and (~dead).any()
    assert torch.all(y[dead] == 0)
    assert torch.all(y[~dead] != 0)  # surviving groups keep every entry
    # surviving groups are shrunk toward zero by exactly tau * sqrt(n) in norm
    ynorm = torch.linalg.vector_norm(y, dim=dims, keepdim=True)
    alive = norms > tau * math.sqrt(n)
    torch.testing.assert_close(ynorm[alive], norms[alive] - tau * math.sqrt(n))
    # and stay parallel to the input
    torch.testing.assert_close(
        y[~dead] / ynorm.expand_as(x)[~dead], x[~dead] / norms.expand_as(x)[~dead]
    )


@pytest.mark.parametrize("reg", [L1(0.7), GroupL12(0.7), GroupL12.kernels(0.7), Null()])
def test_prox_optimality_and_fixed_point(reg):
    torch.manual_seed(2)
    x = torch.randn(6, 4, 3, 3)
    tau = 0.4
    y = reg.prox(x, tau)
    # prox_{tau J}(x) minimizes 1/2||y - x||^2 + tau J(y): check against random perturbations
    obj = lambda z: 0.5 * (z - x).pow(2).sum() + tau * reg(z)  # noqa: E731
    for _ in range(20):
        z = y + 1e-3 * torch.randn_like(y)
        assert obj(z) >= obj(y) - 1e-12
    # theta is a fixed point of prox(theta + tau * p) for p in dJ(theta)
    torch.testing.assert_close(reg.prox(y + tau * reg.subgradient(y), tau), y)


def test_plain_data_round_trip_and_errors():
    for reg in (L1(0.1), GroupL12(0.2, axis=(0, 1)), GroupL12(0.3, axis=1), Null()):
        d = reg.to_dict()
        assert all(isinstance(v, (str, float, list)) for v in d.values())
        assert regularizer_from_dict(d) == reg
    with pytest.raises(ValueError, match="unknown regularizer type 'l3'"):
        regularizer_from_dict({"type": "l3", "lam": 1.0})
    with pytest.raises(ValueError, match="unknown regularizer 'l1'"):
        as_regularizer("l1")
    with pytest.raises(ValueError, match="lam must be finite and >= 0"):
        L1(-1.0)
    with pytest.raises(ValueError, match="axis"):
        GroupL12(1.0, axis=-1)
    with pytest.raises(ValueError, match=r"GroupL12\(axis=\(1,\)\) needs a tensor"):
        GroupL12(1.0, axis=1).prox(torch.randn(5), 1.0)


def test_with_lam_keeps_structure():
    reg = GroupL12(0.1, axis=(0, 1))
    new = reg.with_lam(0.4)
    assert new.lam == 0.4 and new.axis == (0, 1) and reg.same_structure(new)
    assert not reg.same_structure(GroupL12(0.1, axis=0))


def test_group_masks_keep_exact_group_counts():
    g = torch.Generator().manual_seed(0)
    m = GroupL12(1.0, axis=1).group_mask(torch.Size((4, 50, 3, 3)), 0.1, g)
    per_channel = m.any(dim=(0, 2, 3))
    assert per_channel.sum() == 5
    assert torch.equal(m.all(dim=(0, 2, 3)), per_channel)  # whole channels
    m = L1(1.0).group_mask(torch.Size((100, 30)), 0.01, g)
    assert m.sum() == 30
