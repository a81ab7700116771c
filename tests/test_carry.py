"""Constant channels entering zero-padded convolutions: merged exactly into one carrier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import archdiscover as ad
from archdiscover.compiler.carry import CARRIER_REASON


class Padded(nn.Module):
    """Conv-BN-ReLU x 2, then a padded conv and a transposed conv: every consumer of the
    constant channels below sees them through zero padding."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 10, 3, padding=1)
        self.b1 = nn.BatchNorm2d(10)
        self.c2 = nn.Conv2d(10, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 6, 3, padding=2, dilation=2, bias=False)
        self.up = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        z = torch.relu(self.b2(self.c2(y)))
        return self.up(torch.relu(self.c3(z)))


def _constants(m: Padded) -> Padded:
    """b1 channels 1, 3, 4, 7: zero scale, positive shift (constants); 9: zero (dead);
    b2 channels 0, 5 constants; c3 channels 2, 4: zero filter (relu(0) = 0: dead)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for k in (1, 3, 4, 7):
            m.b1.weight[k] = 0
            m.b1.bias[k] = 0.1 * k + 0.05
        m.b1.weight[9] = m.b1.bias[9] = 0
        for k in (0, 5):
            m.b2.weight[k] = 0
            m.b2.bias[k] = 0.3 + k
        m.b1.running_mean.uniform_()
        m.b1.running_var.uniform_(0.5, 2.0)
        m.c3.weight[[2, 4]] = 0
    return m.eval()


@pytest.mark.parametrize("round_to", [1, 4])
def test_constants_into_padded_convs_cost_one_carrier_and_stay_exact(round_to):
    m = _constants(Padded())
    c = ad.compile(m, torch.randn(2, 3, 8, 8), round_to=round_to)
    widths = {k: after for k, (_, after) in c.report.layers.items()}
    if round_to == 1:
        # 5 live + 1 carrier for 4 constants; 6 live + 1 carrier for 2; 4 live; up: output
        assert widths == {"c1": 6, "c2": 7, "c3": 4, "up": 4}
        assert c.report.kept == {CARRIER_REASON: 2}
        assert c.report.folded_groups == 3 + 1  # merged into the carriers
    else:
        assert all(w % 4 == 0 or w == 4 for w in widths.values())
    # exact for every input size: the border terms are computed by the same convolutions
    for side in (5, 8, 11, 16, 31):
        x = torch.randn(3, 3, side, side + 2)
        with torch.no_grad():
            torch.testing.assert_close(c.model(x), m(x), rtol=0, atol=2e-6)


def test_a_zero_carrier_value_is_not_merged_into():
    # both constants of c2 are zero at the consumer (relu of a negative shift): they are
    # zero channels, removed outright; no carrier is needed
    m = _constants(Padded())
    with torch.no_grad():
        m.b2.bias[[0, 5]] = -1.0
    c = ad.compile(m, torch.randn(2, 3, 8, 8))
    assert c.report.layers["c2"][1] == 6
    x = torch.randn(2, 3, 13, 13)
    with torch.no_grad():
        torch.testing.assert_close(c.model(x), m(x), rtol=0, atol=2e-6)


class ToLinear(nn.Module):
    """Constant channels read by a padded conv *and*, after flattening, by a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.b1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        return self.c2(y).mean((2, 3)).sum(1, keepdim=True) + self.fc(y.flatten(1))


def test_carrier_merges_a_linear_after_flatten_position_by_position():
    torch.manual_seed(0)
    m = ToLinear()
    with torch.no_grad():
        for k, v in ((1, 0.4), (2, 1.5), (4, 0.7)):
            m.b1.weight[k] = 0
            m.b1.bias[k] = v
    m.eval()
    c = ad.compile(m, torch.randn(2, 1, 4, 4))
    assert c.report.layers["c1"][1] == 3 + 1
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(c.model(x), m(x), rtol=0, atol=2e-6)
