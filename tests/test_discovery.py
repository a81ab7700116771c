"""Channel discovery with the default recipe on a Conv-BN-ReLU net with a residual stream:
``coupled_param_groups`` + LinBreg / AdaBreg + ``sparse_init_`` grow channels from a sparse
start, fewer for a larger lam, and the compiled widths are the active ones."""

from __future__ import annotations

import functools

import pytest
import torch
from test_coupled import Small
from torch import nn

import archdiscover as ad
from archdiscover.coupling import active_channels, coupled_param_groups
from archdiscover.data import digits


@functools.cache
def _data() -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = digits(seed=0).train.tensors
    return xs.view(-1, 1, 8, 8), ys


def _discover(
    opt: str, lam: float, lr: float, momentum: float = 0.0, grow: bool = True, epochs: int = 3
) -> tuple[list[dict[str, int]], nn.Module]:
    """Train ``Small(24, 20)`` from 5% of each layer's channels; active channels per epoch."""
    torch.set_num_threads(1)
    xs, ys = _data()
    torch.manual_seed(0)
    m = Small(w=24, h=20)
    pg = coupled_param_groups(m, xs[:4], lam)
    o = ad.LinBreg(pg, lr=lr, momentum=momentum) if opt == "linbreg" else ad.AdaBreg(pg, lr=lr)
    ad.sparse_init_(m, 0.05, reg=o, generator=torch.Generator().manual_seed(0), grow=grow)
    groups = ad.channel_groups(m, xs[:4])
    history = [active_channels(m, groups)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        m.train()
        perm = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), 64):
            b = perm[i : i + 64]
            o.zero_grad()
            nn.functional.cross_entropy(m(xs[b]), ys[b]).backward()
            o.step()
        history.append(active_channels(m, groups))
    return history, m.eval()


START = {"c1": 1, "c2": 1, "c3": 1, "fc": 10}  # max(1, round(0.05 * 24)), round(0.05 * 20)


@pytest.mark.parametrize(
    ("opt", "lam", "lr", "momentum"),
    [("linbreg", 0.1, 0.1, 0.9), ("linbreg", 0.03, 0.1, 0.0), ("adabreg", 0.1, 1e-2, 0.0)],
    ids=["linbreg-momentum", "linbreg", "adabreg"],
)
def test_channels_enter_from_the_sparse_start_and_compile_keeps_exactly_them(
    opt, lam, lr, momentum
):
    history, m = _discover(opt, lam, lr, momentum)
    assert history[0] == START
    final = history[-1]
    # every layer grew, and the residual stream (c1 and c3) stays one set of channels
    assert final["c1"] > 1 and final["c2"] > 1 and final["c1"] == final["c3"]
    assert sum(history[1].values()) < sum(final.values())  # gradually, not all at once
    c = ad.compile(m, _data()[0][:8])
    assert {k: after for k, (_, after) in c.report.layers.items()} == final
    with torch.no_grad():
        x = _data()[0][:64]
        torch.testing.assert_close(c.model(x), m(x), rtol=0, atol=1e-5)


def test_a_larger_lam_admits_fewer_channels():
    small, _ = _discover("linbreg", 0.1, 0.1, 0.9)
    large, _ = _discover("linbreg", 1.0, 0.1, 0.9)
    for layer in ("c1", "c2"):
        assert START[layer] <= large[-1][layer] < small[-1][layer]
    assert sum(large[-1].values()) < sum(small[-1].values())


def test_without_growth_through_zero_no_channel_enters():
    history, _ = _discover("linbreg", 0.1, 0.1, 0.9, grow=False)
    assert all(h == START for h in history)
