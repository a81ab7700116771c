"""Growth through zero: ReLU-type backward takes 1 at exactly 0 in training, nothing else."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archdiscover.growth import GrowthMode, disable_growth, enable_growth, growth_enabled


class Acts(nn.Module):
    """One Linear, then every ReLU-type activation the mode knows, modules and functions."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 6)
        self.out = nn.Linear(6 * 7, 1)
        self.acts = nn.ModuleList([nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU6(), nn.LeakyReLU()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        outs = [a(h.clone()) for a in self.acts]
        outs += [F.relu(h), h.relu(), F.hardtanh(h, 0.0, 2.0)]
        return self.out(torch.cat(outs, 1))


def _dead_unit_model() -> Acts:
    torch.manual_seed(0)
    m = Acts()
    with torch.no_grad():  # unit 0 is switched off: its pre-activation is exactly 0
        m.lin.weight[0] = 0
        m.lin.bias[0] = 0
    return m


def _grads(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m.zero_grad()
    y = m(x)
    y.sum().backward()
    return y.detach(), m.lin.weight.grad.clone()


def test_a_switched_off_unit_gets_a_gradient_only_with_growth():
    m = _dead_unit_model()
    x = torch.randn(5, 3)
    y0, g0 = _grads(m, x)
    # leaky_relu's slope 0.01 is the only path PyTorch leaves open
    assert torch.allclose(g0[0], torch.zeros(3), atol=0.05 * float(g0[1:].abs().max()))
    enable_growth(m)
    y1, g1 = _grads(m, x)
    assert torch.equal(y0, y1)  # forward bit for bit
    # every one of the 7 activations now passes the gradient at 0: d out / d h_0 summed
    w = m.out.weight.detach().view(7, 6)[:, 0].sum()
    torch.testing.assert_close(g1[0], w * x.sum(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1[1:], g0[1:])  # the live units: PyTorch's gradient


def test_no_change_in_eval_mode_or_without_grad():
    m = enable_growth(_dead_unit_model())
    x = torch.randn(5, 3)
    m.eval()
    _, g = _grads(m, x)
    ref = _dead_unit_model().eval()
    _, g_ref = _grads(ref, x)
    assert torch.equal(g, g_ref)
    m.train()
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))


def test_gradient_of_each_kink_matches_the_subgradient():
    x = torch.tensor([-2.0, -0.0, 0.0, 0.5, 2.0, 6.0, 7.0], requires_grad=True)
    cases = [
        (torch.relu, [0, 1, 1, 1, 1, 1, 1]),
        (F.relu6, [0, 1, 1, 1, 1, 0, 0]),
        (lambda t: F.hardtanh(t, -1.0, 1.0), [0, 1, 1, 1, 0, 0, 0]),
        (lambda t: F.leaky_relu(t, 0.1), [0.1, 1, 1, 1, 1, 1, 1]),
    ]
    for fn, expect in cases:
        with GrowthMode():
            (g,) = torch.autograd.grad(fn(x).sum(), x)
        torch.testing.assert_close(g, torch.tensor(expect, dtype=torch.float32))
        assert torch.equal(fn(x.detach()), fn(x).detach())


def test_in_place_relu_on_a_view_keeps_values_and_gradients():
    a = torch.randn(4, 6, requires_grad=True)
    with GrowthMode():
        h = a * 2
        h[:, :3].relu_()
        (g,) = torch.autograd.grad(h.sum(), a)
    ref = a.detach() * 2
    ref[:, :3].relu_()
    assert torch.equal(h.detach(), ref)
    expect = torch.full((4, 6), 2.0)
    expect[:, :3] *= (a.detach()[:, :3] >= 0).float()
    torch.testing.assert_close(g, expect)


def test_hooks_copy_pickle_remove_and_survive_an_exception():
    m = enable_growth(_dead_unit_model())
    assert growth_enabled(m) and growth_enabled(copy.deepcopy(m))
    assert growth_enabled(pickle.loads(pickle.dumps(m)))
    enable_growth(m)  # idempotent: one pair of hooks
    assert len(m._forward_pre_hooks) == 1 and len(m._forward_hooks) == 1
    assert set(m.state_dict()) == set(_dead_unit_model().state_dict())
    with pytest.raises(RuntimeError):
        m(torch.randn(2, 4))  # wrong shape: forward raises inside the mode
    assert torch._C._len_torch_function_stack() == 0  # the mode was left anyway
    c = copy.deepcopy(m)
    disable_growth(c)
    assert not growth_enabled(c) and growth_enabled(m)
    assert not c._forward_pre_hooks and not c._forward_hooks
    with pytest.raises(TypeError, match=r"nn\.Module"):
        enable_growth("model")  # type: ignore[arg-type]
