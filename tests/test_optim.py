import io
import warnings
from itertools import pairwise

import pytest
import torch
from torch import nn

import archdiscover.optim._functional as optim_mod
from archdiscover import L1, AdaBreg, GroupL12, LinBreg, Null, ProxSGD
from archdiscover.optim import _rowkernel as rowkernel

F64 = torch.float64


def _net(seed=0, dtype=F64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def _data(dtype=F64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 12, generator=g).to(dtype), torch.randn(32, 4, generator=g).to(dtype)


def _train(model, opt, steps, x, y, sched=None):
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        if sched is not None:
            sched.step()


def _groups(model, reg):
    lin = [m for m in model if isinstance(m, nn.Linear)]
    return [
        {"params": [m.weight for m in lin], "reg": reg},
        {"params": [m.bias for m in lin], "reg": Null()},
    ]


# -- the convex sparse-recovery problem -------------------------------------------------------
def _recovery_problem():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(100, 300, generator=g, dtype=F64) / 10
    x_star = torch.zeros(300, dtype=F64)
    support = torch.randperm(300, generator=g)[:10]
    signs = torch.randn(10, generator=g, dtype=F64).sign()
    x_star[support] = signs * (1 + torch.rand(10, generator=g, dtype=F64))
    return A, x_star, support, A @ x_star


@pytest.mark.parametrize("fused", ["foreach", pytest.param("compiled", marks=pytest.mark.needs_cc)])
def test_linbreg_l1_recovers_sparse_vector_along_an_inverse_scale_space(fused):
    A, x_star, support, b = _recovery_problem()
    x = torch.zeros(300, dtype=F64, requires_grad=True)
    lipschitz = torch.linalg.matrix_norm(A, 2).item() ** 2
    opt = LinBreg([x], lr=1.0 / lipschitz, reg=L1(5.0), impl=fused)
    nnz = [0]
    for _ in range(3000):
        opt.zero_grad()
        (0.5 * (A @ x - b).pow(2).sum()).backward()
        opt.step()
        nnz.append(int((x.detach() != 0).sum()))
    off = torch.ones(300, dtype=torch.bool)
    off[support] = False
    assert (x.detach() - x_star).abs().max() < 1e-3
    assert x.detach()[off].abs().max() < 1e-6
    assert torch.equal(
        torch.sort(torch.nonzero(x.detach().abs() > 1e-6).flatten())[0], torch.sort(support)[0]
    )
    # inverse scale space: from zero, coordinates enter one by one over time and never leave
    assert nnz[0] == 0 and nnz[-1] >= 10
    assert all(a <= b for a, b in pairwise(nnz))
    first = next(k for k, n in enumerate(nnz) if n > 0)
    assert nnz[first] <= 2
    assert len(set(nnz)) >= 6  # at least five separate entry events
    # the first to enter is the coordinate most correlated with the data
    opt2 = LinBreg(
        [x2 := torch.zeros(300, dtype=F64, requires_grad=True)],
        lr=1.0 / lipschitz,
        reg=L1(5.0),
        impl="foreach",
    )
    while not (x2 != 0).any():
        opt2.zero_grad()
        (0.5 * (A @ x2 - b).pow(2).sum()).backward()
        opt2.step()
    assert int(x2.detach().abs().argmax()) == int((A.T @ b).abs().argmax())


# -- equal to torch's optimizers without regularization --------------------------------------
SGD_CASES = [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.5),
    dict(lr=0.05, momentum=0.8, nesterov=True),
]


@pytest.mark.parametrize("kw", SGD_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_linbreg_without_reg_is_sgd_step_for_step(kw, dtype):
    m1, m2 = _net(dtype=dtype), _net(dtype=dtype)
    o1, o2 = LinBreg(m1.parameters(), impl="foreach", **kw), torch.optim.SGD(m2.parameters(), **kw)
    x, y = _data(dtype)
    for _ in range(10):
        _train(m1, o1, 1, x, y)
        _train(m2, o2, 1, x, y)
        for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_adabreg_without_reg_is_adam_step_for_step(dtype):
    m1, m2 = _net(dtype=dtype), _net(dtype=dtype)
    o1 = AdaBreg(m1.parameters(), lr=1e-2, betas=(0.8, 0.99), impl="foreach")
    o2 = torch.optim.Adam(m2.parameters(), lr=1e-2, betas=(0.8, 0.99))
    x, y = _data(dtype)
    for _ in range(10):
        _train(m1, o1, 1, x, y)
        _train(m2, o2, 1, x, y)
        for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
            assert torch.equal(a, b)


@pytest.mark.needs_cc
def test_fused_without_reg_matches_torch_and_lr_schedulers_work():
    x, y = _data()
    m1, m2 = _net(), _net()
    o1 = LinBreg(m1.parameters(), lr=0.1, momentum=0.9, impl="compiled")
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    s1 = torch.optim.lr_scheduler.StepLR(o1, step_size=3, gamma=0.5)
    s2 = torch.optim.lr_scheduler.StepLR(o2, step_size=3, gamma=0.5)
    _train(m1, o1, 12, x, y, s1)
    _train(m2, o2, 12, x, y, s2)
    assert o1.param_groups[0]["lr"] == o2.param_groups[0]["lr"] == 0.1 * 0.5**4
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    m1, m2 = _net(), _net()
    o1 = AdaBreg(m1.parameters(), lr=1e-2, impl="compiled")
    o2 = torch.optim.Adam(m2.parameters(), lr=1e-2)
    s1 = torch.optim.lr_scheduler.CosineAnnealingLR(o1, T_max=10)
    s2 = torch.optim.lr_scheduler.CosineAnnealingLR(o2, T_max=10)
    _train(m1, o1, 10, x, y, s1)
    _train(m2, o2, 10, x, y, s2)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.needs_cc
@pytest.mark.parametrize("reg", [L1(0.2), GroupL12(0.2), GroupL12.kernels(0.2)])
@pytest.mark.parametrize(
    "make",
    [
        lambda p, f: LinBreg(p, lr=0.1, momentum=0.9, delta=2.0, impl=f),
        lambda p, f: AdaBreg(p, lr=1e-2, delta=0.5, impl=f),
    ],
)
def test_fused_and_plain_paths_agree_with_regularization(reg, make):
    torch.manual_seed(0)
    conv1, conv2 = nn.Conv2d(3, 8, 3).double(), nn.Conv2d(3, 8, 3).double()
    with torch.no_grad():  # a sparse start: some whole channels and kernels zero
        conv1.weight.mul_(torch.rand(8, 3, 1, 1) < 0.5)
    conv2.load_state_dict(conv1.state_dict())
    x = torch.randn(4, 3, 6, 6, dtype=F64)
    o1 = make([{"params": [conv1.weight], "reg": reg}, {"params": [conv1.bias]}], "foreach")
    o2 = make([{"params": [conv2.weight], "reg": reg}, {"params": [conv2.bias]}], "compiled")
    for _ in range(8):
        for c, o in ((conv1, o1), (conv2, o2)):
            o.zero_grad()
            (c(x) - 0.5).pow(2).mean().backward()
            o.step()
    torch.testing.assert_close(conv1.weight, conv2.weight, rtol=1e-10, atol=1e-12)
    assert torch.equal(conv1.weight == 0, conv2.weight == 0)
    assert (conv1.weight == 0).any() and (conv1.weight != 0).any()


# -- the sparse start is a fixed point ---------------------------------------------------------
@pytest.mark.parametrize("opt_cls", [LinBreg, AdaBreg])
@pytest.mark.parametrize("reg", [L1(0.3), GroupL12(0.3)])
def test_sparse_init_stays_exactly_sparse_without_gradient_signal(opt_cls, reg):
    torch.manual_seed(0)
    lin = nn.Linear(20, 30).double()
    with torch.no_grad():
        lin.weight.mul_((torch.rand(30, 1) < 0.2).double())  # some whole rows zero
    before = lin.weight.detach().clone()
    opt = opt_cls([{"params": [lin.weight], "reg": reg}], lr=0.1, impl="foreach")
    for _ in range(3):
        lin.weight.grad = torch.zeros_like(lin.weight)
        opt.step()
    assert torch.equal(lin.weight == 0, before == 0)
    torch.testing.assert_close(lin.weight.detach(), before, rtol=1e-14, atol=1e-15)
    # a small gradient moves the non-zero weights but cannot wake a zero one up
    lin.weight.grad = 1e-3 * torch.randn_like(lin.weight)
    opt.step()
    assert torch.all(lin.weight[before == 0] == 0)
    assert not torch.equal(lin.weight.detach(), before)


# -- state dicts ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda m: LinBreg(_groups(m, L1(0.01)), lr=0.05, momentum=0.9, impl="foreach"),
        pytest.param(
            lambda m: LinBreg(_groups(m, GroupL12(0.01)), lr=0.05, momentum=0.9, impl="compiled"),
            marks=pytest.mark.needs_cc,
        ),
        lambda m: AdaBreg(_groups(m, GroupL12(0.01, axis=1)), lr=1e-2, impl="foreach"),
        lambda m: ProxSGD(_groups(m, L1(1e-3)), lr=0.05),
    ],
)
def test_state_dict_round_trip_continues_bit_identically(make):
    x, y = _data()
    model = _net()
    opt = make(model)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    _train(model, opt, 5, x, y, sched)
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf
    )
    sd = opt.state_dict()
    assert isinstance(sd["param_groups"][0]["reg"], dict)  # plain data, no pickled object
    _train(model, opt, 5, x, y, sched)

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = _net(seed=123)
    opt2 = make(model2)
    sched2 = torch.optim.lr_scheduler.ExponentialLR(opt2, gamma=0.9)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert opt2.param_groups[0]["reg"] == opt.param_groups[0]["reg"]
    _train(model2, opt2, 5, x, y, sched2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


# -- changing the regularizer keeps the parameters ------------------------------------------------
@pytest.mark.parametrize("opt_cls", [LinBreg, AdaBreg])
@pytest.mark.parametrize(
    ("old", "new"),
    [
        (L1(0.05), L1(0.2)),
        (L1(0.05), L1(0.01)),
        (GroupL12(0.05), GroupL12(0.5)),
        (Null(), L1(0.1)),
        (L1(0.05), GroupL12(0.05)),
    ],
)
def test_set_reg_keeps_theta_a_fixed_point(opt_cls, old, new):
    x, y = _data()
    model = _net()
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) < 0.3)
    opt = opt_cls(_groups(model, old), lr=0.05, impl="foreach")
    _train(model, opt, 5, x, y)
    before = [p.detach().clone() for p in model.parameters()]
    opt.set_reg(0, new)
    assert opt.param_groups[0]["reg"] == new
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    if opt_cls is AdaBreg:  # Adam's momentum would move theta even with a zero gradient
        for st in opt.state.values():
            st["exp_avg"].zero_()
    opt.step()
    for a, b in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-14)
        assert torch.equal(a == 0, b == 0)


# -- compile fallback ---------------------------------------------------------------------------
def test_compile_failure_falls_back_to_plain_path_with_one_warning(monkeypatch):
    def broken(fn):
        def call(*a, **k):
            raise RuntimeError("no compiler here")

        return call

    monkeypatch.setattr(optim_mod, "compiled_copy", broken)
    monkeypatch.setattr(optim_mod, "compiler_available", lambda device: True)
    x, y = _data()
    m1, m2 = _net(), _net()
    o1 = AdaBreg(_groups(m1, L1(0.01)), lr=0.01)  # impl='auto'
    o2 = AdaBreg(_groups(m2, L1(0.01)), lr=0.01, impl="foreach")
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        _train(m1, o1, 3, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(m1, o1, 3, x, y)  # warned once only
    _train(m2, o2, 6, x, y)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    m3 = _net()
    o3 = LinBreg(_groups(m3, L1(0.01)), lr=0.05, momentum=0.9, impl="compiled")
    with pytest.raises(RuntimeError, match="no compiler here"):
        _train(m3, o3, 3, x, y)


@pytest.mark.needs_cc
def test_default_policy_on_cpu(monkeypatch):
    calls = []

    def spy(fn):
        def run(*args):
            calls.append((fn.__name__, len(args[0])))  # kernel name, number of tensors
            return fn(*args)  # run the kernel eagerly

        return run

    monkeypatch.setattr(optim_mod, "compiled_copy", spy)
    monkeypatch.setattr(optim_mod, "compiler_available", lambda device: True)
    x, y = _data()
    model = _net()
    # LinBreg: every tensor takes the one-pass C kernel, nothing is compiled
    c_calls = []
    real = rowkernel.linbreg_
    monkeypatch.setattr(
        rowkernel,
        "linbreg_",
        lambda lib, mode, *a, **k: (c_calls.append(mode), real(lib, mode, *a, **k))[1],
    )
    _train(model, LinBreg(_groups(model, L1(0.01)), lr=0.05, momentum=0.9), 3, x, y)
    _train(model, LinBreg(_groups(model, GroupL12(0.01)), lr=0.05, momentum=0.9), 3, x, y)
    assert calls == [] and set(c_calls) == {0, 1, 2}  # biases, L1 entries, group rows
    # without the C kernel: L1 compiled, the group prox plain
    monkeypatch.setattr(rowkernel, "load", lambda: None)
    _train(model, LinBreg(_groups(model, L1(0.01)), lr=0.05, momentum=0.9), 3, x, y)
    assert set(calls) == {("_linbreg_kernel", 4)}  # 2 weights + 2 biases, one call per step
    calls.clear()
    _train(model, LinBreg(_groups(model, GroupL12(0.01)), lr=0.05, momentum=0.9), 3, x, y)
    assert set(calls) == {("_linbreg_kernel", 2)}  # the biases only: group prox stays plain
    calls.clear()
    _train(model, AdaBreg(_groups(model, GroupL12(0.01)), lr=0.01), 3, x, y)
    assert set(calls) == {("_adabreg_kernel", 4)}


@pytest.mark.needs_cc
def test_the_c_kernel_is_built_here():
    assert rowkernel.load() is not None


@pytest.mark.needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reg", [L1(0.05), GroupL12(2.0), GroupL12(0.05), Null()], ids=str)
@pytest.mark.parametrize(
    "kw", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
           dict(momentum=0.9, dampening=0.5), dict()], ids=str,
)  # fmt: skip
def test_c_kernel_equals_plain_path(dtype, reg, kw):
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 5)).to(dtype)
            for _ in range(2)]  # fmt: skip
    with torch.no_grad():
        nets[0][0].weight[:10] = 0  # rows that start at zero (a sparse start)
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [
        LinBreg([{"params": [m[0].weight, m[2].weight], "reg": reg},
                 {"params": [m[0].bias, m[2].bias], "reg": L1(0.01)}], lr=0.1, impl=f, **kw)
        for m, f in zip(nets, ("auto", "foreach"), strict=True)
    ]  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    for _ in range(8):
        grads = [torch.randn(p.shape, generator=gen, dtype=dtype) for p in nets[0].parameters()]
        for m in nets:
            for p, g in zip(m.parameters(), grads, strict=True):
                p.grad = g.clone()
        for o in opts:
            o.step()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        assert torch.equal(a == 0, b == 0)  # the same exact zeros
    if isinstance(reg, GroupL12) and reg.lam == 2.0:  # strong: whole rows are zero
        rows = nets[0][0].weight.abs().sum(1) == 0
        assert 0 < int(rows.sum()) < 40


def test_no_compiler_means_plain_path(monkeypatch):
    monkeypatch.setattr(optim_mod, "compiler_available", lambda device: False)

    def never(fn):
        raise AssertionError("must not compile")

    monkeypatch.setattr(optim_mod, "compiled_copy", never)
    x, y = _data()
    model = _net()
    _train(model, AdaBreg(_groups(model, L1(0.01)), lr=1e-2), 3, x, y)


# -- ProxSGD and details -------------------------------------------------------------------------
def test_proxsgd_step_is_prox_of_gradient_step():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, 7, dtype=F64))
    w0 = w.detach().clone()
    w.grad = torch.randn_like(w)
    ProxSGD([w], lr=0.3, reg=GroupL12(0.5)).step()
    expected = GroupL12(0.5).prox(w0 - 0.3 * w.grad, 0.3)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-14, atol=1e-15)
    assert torch.equal(w == 0, expected == 0)


def test_params_without_grad_are_left_alone_and_closure_returns_loss():
    model = _net()
    x, _ = _data()
    before = model[2].weight.detach().clone()
    opt = LinBreg(model.parameters(), lr=0.1, reg=L1(1e-3), impl="foreach")

    def closure():
        opt.zero_grad()
        loss = ((model[0](x)) ** 2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor)
    assert torch.equal(model[2].weight, before)
    assert model[2].weight not in opt.state


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: LinBreg(p, lr=-0.1), r"invalid learning rate lr=-0.1"),
        (lambda p: LinBreg(p, lr=0.1, delta=0.0), r"invalid delta=0.0"),
        (lambda p: LinBreg(p, lr=0.1, momentum=-1), r"invalid momentum=-1"),
        (lambda p: LinBreg(p, lr=0.1, nesterov=True), r"nesterov"),
        (lambda p: AdaBreg(p, betas=(0.9, 1.0)), r"beta parameter at index 1: 1.0"),
        (lambda p: AdaBreg(p, betas=(-0.1, 0.9)), r"beta parameter at index 0"),
        (lambda p: AdaBreg(p, eps=-1.0), r"invalid eps"),
        (lambda p: AdaBreg(p, reg="l1"), r"unknown regularizer 'l1'"),
        (lambda p: LinBreg(p, lr=0.1, reg={"type": "nope"}), r"unknown regularizer type 'nope'"),
        (
            lambda p: LinBreg([{"params": p, "lr": -1.0}], lr=0.1),
            r"param group 0: invalid learning",
        ),
        (
            lambda p: LinBreg([{"params": p, "reg": object()}], lr=0.1),
            r"LinBreg param group 0: unknown regularizer",
        ),
        (lambda p: ProxSGD(p, lr=-1.0), r"ProxSGD param group 0: invalid learning rate"),
        (lambda p: LinBreg(p, lr=0.1, impl="yes"), r"impl must be one of 'auto', 'single'"),
    ],
)
def test_invalid_hyperparameters_raise_precise_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make(list(_net().parameters()))


@pytest.mark.parametrize("opt_cls", [LinBreg, AdaBreg])
def test_raising_lam_keeps_the_subgradient_of_zero_coordinates(opt_cls):
    # lowering lam rescales every subgradient (no coordinate jumps in at once); raising it
    # keeps the zero coordinates' v, so they are at once farther from the new threshold
    x, y = _data()
    model = _net()
    opt = opt_cls(_groups(model, L1(0.05)), lr=0.05, impl="foreach")
    _train(model, opt, 5, x, y)
    w = model[0].weight
    zero = w.detach() == 0
    assert zero.any() and (~zero).any()
    v0 = opt.state[w]["v"].clone()
    opt.set_reg(0, L1(0.2))
    v1 = opt.state[w]["v"]
    assert torch.equal(v1[zero], v0[zero])
    opt.set_reg(0, L1(0.1))  # lower: everything rescaled by 1/2 around theta / delta
    torch.testing.assert_close(opt.state[w]["v"][zero], v0[zero] / 2)


# -- hardening: torch's arithmetic by default, dtypes, autograd, validated state dicts -----------
@pytest.mark.parametrize(
    "kw",
    [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True)],
    ids=str,
)
def test_default_linbreg_without_reg_is_sgd_bit_for_bit(kw):
    m1, m2 = _net(dtype=torch.float32), _net(dtype=torch.float32)
    o1, o2 = LinBreg(m1.parameters(), **kw), torch.optim.SGD(m2.parameters(), **kw)
    x, y = _data(torch.float32)
    for _ in range(20):
        _train(m1, o1, 1, x, y)
        _train(m2, o2, 1, x, y)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_default_adabreg_without_reg_is_adam_bit_for_bit():
    m1, m2 = _net(dtype=torch.float32), _net(dtype=torch.float32)
    o1, o2 = AdaBreg(m1.parameters(), lr=1e-2), torch.optim.Adam(m2.parameters(), lr=1e-2)
    x, y = _data(torch.float32)
    for _ in range(20):
        _train(m1, o1, 1, x, y)
        _train(m2, o2, 1, x, y)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)


CC = pytest.mark.needs_cc
OPT_IMPLS = [
    *(("linbreg", i) for i in ("single", "foreach")),
    pytest.param("linbreg", "compiled", marks=CC),
    pytest.param("linbreg", "ckernel", marks=CC),
    *(("adabreg", i) for i in ("single", "foreach")),
    pytest.param("adabreg", "compiled", marks=CC),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize(("opt_name", "impl"), OPT_IMPLS)
def test_every_dtype_follows_the_float64_path(dtype, impl, opt_name):
    ref_net, net = _net(dtype=F64), _net(dtype=F64).to(dtype)

    def make(m, i):
        kw = dict(lr=0.05, momentum=0.9) if opt_name == "linbreg" else dict(lr=1e-2)
        cls = LinBreg if opt_name == "linbreg" else AdaBreg
        return cls(_groups(m, L1(1e-3)), impl=i, **kw)

    ref, opt = make(ref_net, "foreach"), make(net, impl)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen, dtype=F64) for p in ref_net.parameters()]
        for p, g in zip(ref_net.parameters(), grads, strict=True):
            p.grad = g.clone()
        for p, g in zip(net.parameters(), grads, strict=True):
            p.grad = g.to(dtype)
        ref.step()
        opt.step()
    # bfloat16 keeps 8 bits of mantissa: every weight within a few of its ulps of float64's
    tol = {torch.bfloat16: 3e-2, torch.float16: 4e-3, torch.float32: 1e-5, F64: 1e-12}[dtype]
    for a, b in zip(net.parameters(), ref_net.parameters(), strict=True):
        assert a.dtype == dtype and bool(torch.isfinite(a).all())
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "impl", ["single", "foreach", pytest.param("ckernel", marks=pytest.mark.needs_cc)]
)
def test_an_update_in_place_is_seen_by_autograd_as_after_sgd(impl):
    # a graph that saved the old weight must refuse to backpropagate after the step, as
    # torch.optim.SGD makes it refuse; the C kernel writes behind autograd's back
    for opt_cls, kw in ((torch.optim.SGD, {}), (LinBreg, {"impl": impl, "reg": L1(1e-3)})):
        w = nn.Parameter(torch.randn(64, 64))
        x = torch.randn(8, 64, requires_grad=True)
        y = (x @ w).sum()  # saves w for the gradient of x
        w.grad = torch.randn_like(w)
        opt_cls([w], lr=0.1, **kw).step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.backward()


def test_load_state_dict_refuses_what_init_refuses_and_keeps_the_old_state():
    model = _net()
    opt = LinBreg(model.parameters(), lr=0.1, momentum=0.5)
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = -5.0
    with pytest.raises(ValueError, match=r"state_dict group 0: invalid learning rate lr=-5"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.1
    sd["param_groups"][0]["lr"] = 0.1
    sd["param_groups"][0]["momentum"] = 5
    with pytest.raises(ValueError, match=r"invalid momentum=5"):
        opt.load_state_dict(sd)
    with pytest.raises(ValueError, match=r"invalid momentum=5"):
        LinBreg(model.parameters(), lr=0.1, momentum=5)
    with pytest.raises(ValueError, match="not an optimizer state dict"):
        opt.load_state_dict({"nothing": 1})
