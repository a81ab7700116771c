import pytest
import torch
from torch import nn

from archdiscover import L1, GroupL12, LamScheduler, LinBreg, Null, sparse_init_
from archdiscover.data import digits


def _opt(model, lam=0.1):
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return LinBreg(
        [
            {"params": [m.weight for m in lin], "reg": L1(lam)},
            {"params": [m.bias for m in lin], "reg": Null()},
        ],
        lr=0.1,
        impl="foreach",
    )


def test_raises_lowers_or_keeps_lam_around_the_target():
    model = nn.Linear(10, 10)
    opt = _opt(model, lam=0.1)
    sched = LamScheduler(opt, target=0.2, factor=2.0, tolerance=0.1)
    assert sched.step(density=0.5) == 2.0 and sched.lams() == [0.2]  # too dense
    assert sched.step(density=0.6) == 2.0 and sched.lams() == [0.4]  # and still growing
    assert sched.step(density=0.4) == 1.0 and sched.lams() == [0.4]  # falling: wait
    assert sched.step(density=0.21) == 1.0 and sched.lams() == [0.4]  # in the band
    assert sched.step(density=0.05) == 0.5 and sched.lams() == [0.2]  # too sparse, falling
    assert sched.step(density=0.05) == 0.5 and sched.lams() == [0.1]  # too sparse, stalled
    assert sched.step(density=0.1) == 1.0 and sched.lams() == [0.1]  # growing: wait
    assert opt.param_groups[1]["reg"] == Null()  # unregularized groups untouched
    sched2 = LamScheduler(opt, target=0.2, factor=2.0, min_lam=0.05, max_lam=0.3)
    sched2.step(density=1.0)
    sched2.step(density=1.0)
    assert sched2.lams() == [0.3]


def test_patience_and_brake():
    opt = _opt(nn.Linear(10, 10), lam=0.1)
    sched = LamScheduler(opt, target=0.5, factor=2.0, tolerance=0.1, patience=2)
    assert sched.step(density=0.1) == 1.0  # first step: nothing to compare with
    assert sched.step(density=0.1) == 1.0  # stalled once: patience 2 waits
    assert sched.step(density=0.1) == 0.5 and sched.lams() == [0.05]  # stalled twice
    assert sched.step(density=0.1) == 1.0  # the count starts again after lowering
    assert sched.step(density=0.3) == 1.0  # growing, 0.5 next at this pace: in the band
    # growing by 0.2 again would reach 0.7 > 0.55: brake before the overshoot
    assert sched.step(density=0.5) == 2.0 and sched.lams() == [0.1]
    with pytest.raises(ValueError, match="patience"):
        LamScheduler(opt, target=0.5, patience=0)


def test_measures_density_of_regularized_params_only():
    model = nn.Linear(10, 10)
    with torch.no_grad():
        model.weight[:3] = 0
    sched = LamScheduler(_opt(model), target=0.5)
    assert sched.density() == pytest.approx(0.7)


def _digits_run(use_scheduler, target=0.2):
    split = digits(seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = LinBreg(
        [
            {"params": [model[1].weight, model[3].weight], "reg": L1(0.01)},
            {"params": [model[1].bias, model[3].bias]},
        ],
        lr=0.1,
        impl="foreach",
    )
    sparse_init_(model, 0.01, reg=opt, generator=torch.Generator().manual_seed(0))
    sched = LamScheduler(opt, target=target, factor=1.5, tolerance=0.1)
    loader = torch.utils.data.DataLoader(
        split.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    for _ in range(30):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        if use_scheduler:
            sched.step()
    return sched.density(), sched.lams()[0]


def test_steers_a_real_training_run_toward_the_target_density():
    free, lam_free = _digits_run(False)
    steered, lam_steered = _digits_run(True)
    assert lam_free == 0.01 and free > 0.27  # left alone, the net fills up
    assert abs(steered - 0.2) < 0.02 and lam_steered > 0.01


def test_state_dict_round_trip_and_errors():
    opt = _opt(nn.Linear(4, 4))
    sched = LamScheduler(opt, target=0.3)
    sched.step(density=0.9)
    sd = sched.state_dict()
    other = LamScheduler(opt, target=0.9)
    other.load_state_dict(sd)
    assert other.target == 0.3 and other.steps == 1 and other.last_density == 0.9
    with pytest.raises(ValueError, match="no param group"):
        LamScheduler(LinBreg(nn.Linear(2, 2).parameters(), lr=0.1), target=0.5)
    with pytest.raises(ValueError, match="archdiscover optimizer"):
        LamScheduler(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), target=0.5)
    with pytest.raises(ValueError, match="target must be in"):
        LamScheduler(opt, target=0.0)
    with pytest.raises(ValueError, match="factor"):
        LamScheduler(opt, target=0.5, factor=1.0)


def test_group_reg_strength_change_keeps_weights():
    torch.manual_seed(0)
    lin = nn.Linear(20, 20)
    opt = LinBreg([{"params": [lin.weight], "reg": GroupL12(0.01)}], lr=0.1, impl="foreach")
    x = torch.randn(16, 20)
    for _ in range(3):
        opt.zero_grad()
        lin(x).pow(2).mean().backward()
        opt.step()
    before = lin.weight.detach().clone()
    LamScheduler(opt, target=0.1, factor=3.0).step()
    assert opt.param_groups[0]["reg"].lam == pytest.approx(0.03)
    assert torch.allclose(lin.weight, before, rtol=0, atol=1e-7)
