r"""Bregman optimizers (``LinBreg``, ``AdaBreg``) and the proximal-gradient baseline ``ProxSGD``.

All three are :class:`torch.optim.Optimizer` s regularized by a
:class:`~archdiscover.regularizers.Regularizer` ``J`` per param group (key ``"reg"``).

**Linearized Bregman iterations** (Bungert et al., JMLR 2022, Alg. 1-3) minimize the loss
``L`` while moving in the geometry of the elastic net
``J_delta(theta) = J(theta) + 1/(2 delta) ||theta||^2``. They keep a subgradient
``v in dJ_delta(theta)`` and iterate

.. math::
    v_{k+1} = v_k - \tau\, d_k, \qquad \theta_{k+1} = \mathrm{prox}_{\delta J}(\delta v_{k+1}),

where ``d_k`` is the gradient ``g_k`` (LinBreg), its heavy-ball average (LinBreg with
momentum) or Adam's bias-corrected ``m_hat / (sqrt(s_hat) + eps)`` (AdaBreg). The start is
``v_0 = theta_0 / delta + p_0`` with ``p_0 in dJ(theta_0)``, so ``theta_0`` is a fixed point of
the prox: a sparse initialization stays exactly as sparse until the accumulated gradient
pushes a coordinate (or group) of ``v`` past the threshold ``lam`` -- the *inverse scale
space*: parameters enter one by one, the most significant first.

With ``reg=None`` (``J = 0``) and ``delta = 1`` the iterations are plain SGD / Adam.

**Speed.** Two implementations of each update: the plain path (``torch._foreach_*`` ops
plus one vectorized prox per tensor) and a fused one, compiled with :func:`torch.compile`
into one pass over memory per tensor, one call for all param groups. ``fused=True`` always
compiles, ``fused=False`` never; ``fused=None`` (default) compiles where that measured
faster -- everything on CUDA; on CPU everything but LinBreg's group-sparse param groups,
whose compiled row-norm kernel was slower than the plain path -- when a compiler is
available, and falls back to the plain path, with one warning, if compilation fails.
"""

from __future__ import annotations

import functools
import math
import shutil
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _rowkernel
from .regularizers import (
    L1,
    GroupL12,
    Null,
    Regularizer,
    as_regularizer,
    group_shrink,
    soft_shrink,
)

__all__ = ["AdaBreg", "LinBreg", "ProxSGD", "RegularizedOptimizer"]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


def _check(cond: bool, who: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{who}: {msg}")


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class RegularizedOptimizer(Optimizer):
    """Shared machinery: a regularizer per param group, plain-data ``state_dict`` s,
    validation of every group's hyperparameters, and :meth:`set_reg`.

    Subclasses implement :meth:`_validate_group` and ``step``.
    """

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        defaults = dict(defaults)
        defaults["reg"] = as_regularizer(defaults.get("reg"), where=type(self).__name__)
        super().__init__(params, defaults)

    # -- groups -----------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        where = f"{type(self).__name__} param group {index}"
        group["reg"] = as_regularizer(group["reg"], where=where)
        self._validate_group(group, where)

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        lr = group["lr"]
        _check(
            isinstance(lr, Tensor) or _is_real(lr),
            where,
            f"lr must be a finite real number, got {lr!r}",
        )
        _check(float(lr) >= 0.0, where, f"invalid learning rate lr={float(lr)} (must be >= 0)")
        if "delta" in group:
            delta = group["delta"]
            _check(
                _is_real(delta) and delta > 0,
                where,
                f"invalid delta={delta!r} (must be a finite number > 0)",
            )

    def set_reg(
        self, group: int | dict[str, Any], reg: Regularizer | Mapping[str, Any] | None
    ) -> None:
        """Replace the regularizer of ``group`` (an index or a param group dict).

        Bregman optimizers also rewrite their subgradients ``v`` so that the current
        parameters stay a fixed point of the new prox (see ``LinBreg._reg_changed``).
        """
        g = self.param_groups[group] if isinstance(group, int) else group
        new = as_regularizer(reg, where=f"{type(self).__name__}.set_reg")
        self._reg_changed(g, g["reg"], new)
        g["reg"] = new

    def _reg_changed(self, group: dict[str, Any], old: Regularizer, new: Regularizer) -> None:
        """Hook for optimizers whose state depends on the regularizer."""

    # -- plain-data state dicts -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        for g in sd["param_groups"]:
            if isinstance(g.get("reg"), Regularizer):
                g["reg"] = g["reg"].to_dict()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for i, g in enumerate(self.param_groups):
            g["reg"] = as_regularizer(
                g.get("reg"), where=f"{type(self).__name__} state_dict group {i}"
            )

    # -- helpers ----------------------------------------------------------------------------------
    def _params_with_grad(self, group: dict[str, Any]) -> list[Tensor]:
        joint = _is_joint(group["reg"])
        out = []
        for p in group["params"]:
            if p.grad is None:
                if not joint:
                    continue
                # a coupled regularizer's prox needs every tensor of its group
                p.grad = torch.zeros_like(p)
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients "
                    f"(parameter of shape {tuple(p.shape)})"
                )
            out.append(p)
        return out


# ---------------------------------------------------------------------------------------------
# The prox of the elastic net, shared by the plain and the compiled paths
# ---------------------------------------------------------------------------------------------
def _prox_spec(reg: Regularizer, p: Tensor) -> tuple[str, float, tuple[int, ...]] | None:
    """``(kind, threshold per unit tau, norm dims)`` for the built-in regularizers, else None."""
    # exact type checks: a subclass may override prox, and then only the plain path is right
    if type(reg) is Null or (type(reg) in (L1, GroupL12) and reg.is_null):
        return ("null", 0.0, ())
    if type(reg) is L1:
        return ("l1", reg.lam, ())
    if type(reg) is GroupL12:
        return ("group", reg.lam * math.sqrt(reg.group_size(p)), reg.norm_dims(p))
    return None


def _shrink(x: Tensor, kind: str, thresh: float | Tensor, dims: tuple[int, ...]) -> Tensor:
    if kind == "null":
        return x
    if kind == "l1":
        return soft_shrink(x, thresh)
    return group_shrink(x, thresh, dims)


def _is_joint(reg: Any) -> bool:
    """True for regularizers coupling all tensors of a param group (``CoupledGroupL12``)."""
    return bool(getattr(reg, "joint", False))


def _apply_prox_(params: list[Tensor], vs: list[Tensor], delta: float, reg: Regularizer) -> None:
    """``theta = prox_{delta J}(delta * v)`` for each tensor, in place in ``params``."""
    if _is_joint(reg) and not reg.is_null:
        xs = vs if delta == 1.0 else torch._foreach_mul(vs, delta)
        reg.prox_all(xs, delta, out=params)  # type: ignore[attr-defined]
        return
    if reg.is_null:
        if delta == 1.0:
            torch._foreach_copy_(params, vs)
        else:
            torch._foreach_copy_(params, torch._foreach_mul(vs, delta))
        return
    xs = vs if delta == 1.0 else torch._foreach_mul(vs, delta)
    for p, x in zip(params, xs, strict=True):
        spec = _prox_spec(reg, p)
        if spec is None:  # a user's regularizer: its own prox
            p.copy_(reg.prox(x, delta))
        elif spec[0] == "l1":  # written straight into p: no temporary, two passes
            soft_shrink(x, delta * spec[1], out=p)
        else:
            group_shrink(x, delta * spec[1], spec[2], out=p)


def _evaluate(closure: Callable[[], float] | None) -> float | None:
    """The loss from ``closure`` (with gradients enabled), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _initial_v(p: Tensor, delta: float, reg: Regularizer) -> Tensor:
    """``theta / delta + p0`` with ``p0 in dJ(theta)``: theta is a fixed point of the prox."""
    theta = p.detach()
    return (theta / delta + reg.subgradient(theta)).to(p.dtype)


def _initial_vs(params: list[Tensor], delta: float, reg: Regularizer) -> list[Tensor]:
    """:func:`_initial_v` for each tensor; a coupled regularizer sees them all at once."""
    if not _is_joint(reg):
        return [_initial_v(p, delta, reg) for p in params]
    thetas = [p.detach() for p in params]
    if reg.is_null:
        subs = [torch.zeros_like(t) for t in thetas]
    else:
        subs = reg.subgradient_all(thetas)  # type: ignore[attr-defined]
    return [(t / delta + s).to(t.dtype) for t, s in zip(thetas, subs, strict=True)]


def _ensure_v(
    state: Mapping[Tensor, dict[str, Any]], params: list[Tensor], delta: float, reg: Regularizer
) -> list[Tensor]:
    """The missing subgradient variables ``v`` of ``params`` are created (in ``state``)."""
    if any("v" not in state[p] for p in params):
        for p, v in zip(params, _initial_vs(params, delta, reg), strict=True):
            state[p].setdefault("v", v)
    return [state[p]["v"] for p in params]


# ---------------------------------------------------------------------------------------------
# torch.compile support
# ---------------------------------------------------------------------------------------------
@functools.cache
def _compiler_available_for(device_type: str) -> bool:
    if device_type == "cpu":
        return any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "g++", "c++"))
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return False


def _compiler_available(device: torch.device) -> bool:
    """Whether ``torch.compile`` can generate code for ``device`` here (looked up once)."""
    return _compiler_available_for(device.type)


def _own_compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(fn)`` on a private copy of ``fn``'s code object.

    Dynamo keeps its cache of compiled graphs (and its recompile limit) per code object;
    a copy per optimizer keeps optimizers from evicting one another's graphs.
    """
    code = fn.__code__.replace()
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return torch.compile(copy, fullgraph=True, dynamic=False)


class _FusedMixin:
    """Runs a compiled kernel when asked/possible, else the plain one; falls back once."""

    _fused: bool | None
    #: device types where ``fused=None`` compiles (where compiling measured faster)
    _auto_fused_devices: tuple[str, ...] = ("cpu", "cuda")
    #: prox kinds that ``fused=None`` leaves on the plain path on CPU
    _auto_plain_kinds_on_cpu: tuple[str, ...] = ()

    def _init_fused(self, fused: bool | None, kernel: Callable[..., Any]) -> None:
        if fused not in (None, True, False):
            raise ValueError(
                f"{type(self).__name__}: fused must be None, True or False, got {fused!r}"
            )
        self._fused = fused
        self._kernel_src = kernel
        self._compiled: Callable[..., Any] | None = None
        self._fused_failed = False

    def _use_fused(self, params: list[Tensor], specs: list[Any]) -> bool:
        if self._fused is False or self._fused_failed or any(s is None for s in specs):
            return False
        if torch.compiler.is_compiling():  # the user compiles the whole step: stay traceable
            return False
        device = params[0].device
        if any(p.device != device for p in params):
            return False
        if self._fused is None and (
            device.type not in self._auto_fused_devices
            or not _compiler_available(device)
            or (device.type == "cpu" and any(s[0] in self._auto_plain_kinds_on_cpu for s in specs))
        ):
            return False
        return True

    def _run_fused(self, *args: Any, **kwargs: Any) -> bool:
        """Run the compiled kernel; return False (after one warning) if compilation fails."""
        if self._compiled is None:
            self._compiled = _own_compiled(self._kernel_src)
        try:
            self._compiled(*args, **kwargs)
        except Exception as e:  # compilation errors surface on the first call
            if self._fused is True:
                raise
            self._fused_failed = True
            warnings.warn(
                f"{type(self).__name__}: torch.compile of the update failed "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                f"using the plain path",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        return True

    def _flush(self, batch: _FusedBatch) -> None:
        """Run the step's one compiled call; if compilation fails, each group's plain update."""
        if not batch.groups:
            return
        # the scalars rarely change (LinBreg: only when lr or lam does): reuse their tensor
        params = batch.lists[0]
        key = (tuple(batch.hyper), params[0].dtype, params[0].device)
        if getattr(self, "_hyper_key", None) != key:
            self._hyper_key, self._hyper_tensor = key, _hyper(batch.hyper, params)
        if not self._run_fused(*batch.lists, self._hyper_tensor):
            for group, args in batch.groups:
                self._plain_update(group, *args)  # type: ignore[attr-defined]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # type: ignore[misc]
        state.update(
            _fused=self._fused,
            _kernel_src=self._kernel_src,
            _compiled=None,
            _fused_failed=self._fused_failed,
            _hyper_key=None,
            _hyper_tensor=None,
        )
        return state


# ---------------------------------------------------------------------------------------------
# LinBreg
# ---------------------------------------------------------------------------------------------
def _linbreg_kernel(
    params: list[Tensor],
    grads: list[Tensor],
    vs: list[Tensor],
    bufs: list[Tensor],
    specs: list[tuple[str, tuple[int, ...]]],
    flags: list[tuple[bool, bool]],
    hyper: Tensor,
) -> None:
    """One fused pass per tensor: momentum, ``v -= lr * d``, ``theta = prox(delta v)``.

    Tensor ``i`` (of any param group) reads its scalars from
    ``hyper[5i : 5i + 5] = [lr, delta, momentum, dampening, t]`` (``t``: the prox threshold
    per unit step), a tensor, so new values never trigger a recompile; ``flags[i]`` is
    ``(use_momentum, nesterov)``.
    """
    for i in range(len(params)):
        lr, delta, momentum = hyper[5 * i], hyper[5 * i + 1], hyper[5 * i + 2]
        dampening, t = hyper[5 * i + 3], hyper[5 * i + 4]
        g = grads[i]
        use_momentum, nesterov = flags[i]
        buf = bufs[i] * momentum + g * (1.0 - dampening) if use_momentum else g
        d = g + buf * momentum if use_momentum and nesterov else buf
        v = vs[i] - d * lr
        kind, dims = specs[i]
        theta = _shrink(v * delta, kind, t * delta, dims)
        # every write comes after every read of this tensor's old state
        if use_momentum:
            bufs[i].copy_(buf)
        vs[i].copy_(v)
        params[i].copy_(theta)


def _hyper(values: list[float], params: list[Tensor]) -> Tensor:
    """The scalars of a fused step as one small tensor on the parameters' device."""
    dtype = params[0].dtype if all(p.dtype == params[0].dtype for p in params) else torch.float64
    return torch.tensor(values, dtype=dtype).to(params[0].device, non_blocking=True)


class _FusedBatch:
    """The tensors of every param group that takes the fused path in one step.

    One compiled call per step, over all groups, keeps the per-call overhead (guards,
    launch) from multiplying with the number of param groups.
    """

    def __init__(self) -> None:
        self.groups: list[tuple[dict[str, Any], tuple[Any, ...]]] = []
        self.lists: list[list[Any]] = []
        self.hyper: list[float] = []

    def accepts(self, params: list[Tensor]) -> bool:
        """One compiled call runs on one device: later groups must match the first."""
        return not self.lists or params[0].device == self.lists[0][0].device

    def add(
        self,
        group: dict[str, Any],
        plain_args: tuple[Any, ...],
        lists: list[list[Any]],
        hyper: list[float],
    ) -> None:
        self.groups.append((group, plain_args))
        if not self.lists:
            self.lists = [[] for _ in lists]
        for acc, xs in zip(self.lists, lists, strict=True):
            acc.extend(xs)
        self.hyper.extend(hyper)


class LinBreg(_FusedMixin, RegularizedOptimizer):
    r"""Linearized Bregman iterations, optionally with heavy-ball momentum.

    .. math::
        b_k = \mu b_{k-1} + (1 - \text{dampening}) g_k,\quad
        v_{k+1} = v_k - \tau b_k,\quad
        \theta_{k+1} = \mathrm{prox}_{\delta J}(\delta v_{k+1}).

    ``momentum``, ``dampening`` and ``nesterov`` mean what they mean in
    :class:`torch.optim.SGD` (the first step sets ``b_1 = g_1``); the paper's momentum
    ``m = beta m + (1 - beta) tau g`` is ``momentum=beta, dampening=beta``. With
    ``reg=None`` and ``delta=1`` this *is* ``torch.optim.SGD`` step for step.

    Args:
        params: parameters or param groups; a group may set its own ``lr``, ``delta``,
            ``momentum``, ``dampening``, ``nesterov`` and ``reg``.
        lr: step size ``tau`` of the subgradient variable.
        reg: the default regularizer ``J`` (``None``: no regularization).
        delta: elastic-net parameter ``delta > 0``; the effective step on ``theta`` is
            ``delta * lr``.
        momentum, dampening, nesterov: as in ``torch.optim.SGD``.
        fused: ``True`` compiles the update with ``torch.compile``, ``False`` never;
            ``None`` compiles when a compiler is available (a C compiler on CPU, triton on
            CUDA), except group-sparse param groups on CPU; it falls back with a warning.

    Example:
        >>> model = torch.nn.Linear(784, 10)
        >>> opt = LinBreg([{"params": [model.weight], "reg": L1(1e-2)},
        ...                {"params": [model.bias]}], lr=0.1, momentum=0.9)
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    """

    # On CPU, inductor's kernel for a group prox (a row norm, then a scale) measured slower
    # than the plain path (benchmarks/optim_step.py): fused=None keeps such groups plain there.
    _auto_plain_kinds_on_cpu = ("group",)

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        reg: Regularizer | None = None,
        delta: float = 1.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        *,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, reg=reg, delta=delta, momentum=momentum, dampening=dampening, nesterov=nesterov
        )
        self._init_fused(fused, _linbreg_kernel)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        super()._validate_group(group, where)
        m, d = group["momentum"], group["dampening"]
        _check(_is_real(m) and m >= 0.0, where, f"invalid momentum={m!r} (must be >= 0)")
        _check(
            _is_real(d) and 0.0 <= d <= 1.0, where, f"invalid dampening={d!r} (must be in [0, 1])"
        )
        _check(
            not group["nesterov"] or (m > 0 and d == 0),
            where,
            "nesterov momentum requires momentum > 0 and dampening = 0",
        )

    def _init_group(
        self, group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor | None]]:
        params = self._params_with_grad(group)
        grads, bufs = [], []
        vs = _ensure_v(self.state, params, group["delta"], group["reg"])
        for p in params:
            grads.append(p.grad)
            bufs.append(self.state[p].get("momentum_buffer"))
        return params, grads, vs, bufs

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = _evaluate(closure)
        batch = _FusedBatch()
        for group in self.param_groups:
            params, grads, vs, bufs = self._init_group(group)
            if not params:
                continue
            specs = [_prox_spec(group["reg"], p) for p in params]
            mom = group["momentum"]
            fresh = mom != 0.0 and any(b is None for b in bufs)
            if self._fused is None and not fresh:
                params, grads, vs, bufs, specs = self._c_kernel(
                    group, params, grads, vs, bufs, specs
                )
                if not params:
                    continue
            if not fresh and self._use_fused(params, specs) and batch.accepts(params):
                lr, delta, damp = float(group["lr"]), group["delta"], group["dampening"]
                # without momentum the kernel never reads bufs[i]: any tensor holds the place
                placeholders = [b if b is not None else g for b, g in zip(bufs, grads, strict=True)]
                batch.add(
                    group,
                    (params, grads, vs, bufs),
                    [
                        params,
                        grads,
                        vs,
                        placeholders,
                        [(sp[0], sp[2]) for sp in specs],
                        [(mom != 0.0, group["nesterov"])] * len(params),
                    ],
                    [x for sp in specs for x in (lr, delta, mom, damp, sp[1])],
                )
            else:
                self._plain_update(group, params, grads, vs, bufs)
        self._flush(batch)
        return loss

    def _c_kernel(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        vs: list[Tensor],
        bufs: list[Tensor | None],
        specs: list[Any],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor | None], list[Any]]:
        """CPU tensors the one-pass C kernel covers take it; the rest is returned."""
        if params[0].device.type != "cpu":
            return params, grads, vs, bufs, specs
        lib = _rowkernel.load()
        if lib is None:
            return params, grads, vs, bufs, specs
        mom = group["momentum"]
        rest: tuple[list[Any], ...] = ([], [], [], [], [])
        for p, g, v, b, sp in zip(params, grads, vs, bufs, specs, strict=True):
            buf = b if mom != 0.0 else None
            mode = None if sp is None else _rowkernel.mode(sp[0], sp[2], p)
            if mode is not None and _rowkernel.eligible(p, g, v, buf):
                _rowkernel.linbreg_(
                    lib,
                    mode,
                    p,
                    g,
                    v,
                    buf,
                    lr=float(group["lr"]),
                    delta=group["delta"],
                    momentum=mom,
                    dampening=group["dampening"],
                    nesterov=group["nesterov"],
                    thresh=sp[1],
                )
            else:
                for acc, x in zip(rest, (p, g, v, b, sp), strict=True):
                    acc.append(x)
        return rest  # type: ignore[return-value]

    def _plain_update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        vs: list[Tensor],
        bufs: list[Tensor | None],
    ) -> None:
        """``torch._foreach_*`` for the linear part, one vectorized prox per tensor."""
        lr, delta, mom = float(group["lr"]), group["delta"], group["momentum"]
        damp, nesterov = group["dampening"], group["nesterov"]
        if mom != 0.0:
            old = [i for i, b in enumerate(bufs) if b is not None]
            if old:
                ob = [bufs[i] for i in old]
                torch._foreach_mul_(ob, mom)
                torch._foreach_add_(ob, [grads[i] for i in old], alpha=1.0 - damp)
            for i, p in enumerate(params):
                if bufs[i] is None:
                    bufs[i] = grads[i].detach().clone()
                    self.state[p]["momentum_buffer"] = bufs[i]
            d = torch._foreach_add(grads, bufs, alpha=mom) if nesterov else bufs
        else:
            d = grads
        torch._foreach_add_(vs, d, alpha=-lr)
        _apply_prox_(params, vs, delta, group["reg"])

    def _reg_changed(self, group: dict[str, Any], old: Regularizer, new: Regularizer) -> None:
        """Keep ``theta`` a fixed point: ``v = theta/delta + p`` with ``p in dJ_new(theta)``.

        When only the strength changes, the subgradient part ``p = v - theta/delta`` of the
        non-zero coordinates is rescaled by ``lam_new / lam_old`` (what keeps them fixed).
        Zero coordinates: when ``lam`` falls, their ``p`` is rescaled as well, so they keep
        their progress toward the threshold and none enters at once; when ``lam`` rises,
        their ``p`` is kept, so they are at once farther from the higher threshold (a brake
        that acts now, not after the entries already under way). Another regularizer
        structure replaces ``p`` by ``dJ_new(theta)``.
        """
        _rebase_subgradients(self.state, group, old, new)


def _rebase_subgradients(
    state: Mapping[Tensor, dict[str, Any]],
    group: dict[str, Any],
    old: Regularizer,
    new: Regularizer,
) -> None:
    delta = group["delta"]
    params = [p for p in group["params"] if "v" in state.get(p, {})]
    with torch.no_grad():
        if old.same_structure(new) and old.lam > 0:
            ratio = new.lam / old.lam
            for p in params:
                v = state[p]["v"]
                base = p.detach() / delta
                scaled = base + (v - base) * ratio
                if ratio > 1:  # zero coordinates keep v: farther from the higher threshold
                    scaled = torch.where(p != 0, scaled, v)
                v.copy_(scaled)
        elif params:
            for p, v0 in zip(params, _initial_vs(params, delta, new), strict=True):
                state[p]["v"].copy_(v0)


# ---------------------------------------------------------------------------------------------
# AdaBreg
# ---------------------------------------------------------------------------------------------
def _adabreg_kernel(
    params: list[Tensor],
    grads: list[Tensor],
    vs: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    specs: list[tuple[str, tuple[int, ...]]],
    hyper: Tensor,
) -> None:
    """One fused pass per tensor: Adam moments, ``v -= step * m / (sqrt(s) + eps)``, prox.

    Tensor ``i`` reads ``hyper[7i : 7i + 7] =
    [beta1, beta2, eps, delta, lr / (1 - beta1^k), sqrt(1 - beta2^k), t]``.
    """
    for i in range(len(params)):
        beta1, beta2 = hyper[7 * i], hyper[7 * i + 1]
        eps, delta = hyper[7 * i + 2], hyper[7 * i + 3]
        step_size, bc2_sqrt, t = hyper[7 * i + 4], hyper[7 * i + 5], hyper[7 * i + 6]
        g = grads[i]
        m = exp_avgs[i] + (g - exp_avgs[i]) * (1.0 - beta1)
        s = exp_avg_sqs[i] * beta2 + g * g * (1.0 - beta2)
        v = vs[i] - m / (s.sqrt() / bc2_sqrt + eps) * step_size
        kind, dims = specs[i]
        theta = _shrink(v * delta, kind, t * delta, dims)
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(s)
        vs[i].copy_(v)
        params[i].copy_(theta)


class AdaBreg(_FusedMixin, RegularizedOptimizer):
    r"""Bregmanized Adam: Adam's preconditioned direction steps the subgradient variable.

    .. math::
        m_k = \beta_1 m_{k-1} + (1-\beta_1) g_k,\quad s_k = \beta_2 s_{k-1} + (1-\beta_2) g_k^2,

        v_{k+1} = v_k - \tau \frac{m_k / (1-\beta_1^k)}{\sqrt{s_k / (1-\beta_2^k)} + \epsilon},
        \quad \theta_{k+1} = \mathrm{prox}_{\delta J}(\delta v_{k+1}).

    With ``reg=None`` and ``delta=1`` this *is* ``torch.optim.Adam`` step for step.

    Args:
        params: parameters or param groups (a group may set ``lr``, ``delta``, ``betas``,
            ``eps`` and ``reg``).
        lr: step size ``tau``.
        reg: default regularizer (``None``: no regularization).
        delta: elastic-net parameter ``delta > 0``.
        betas: moment coefficients, each in ``[0, 1)``.
        eps: added to the denominator, ``>= 0``.
        fused: ``True`` compiles the update with ``torch.compile``, ``False`` never;
            ``None`` compiles on CPU (when a C compiler is found) and CUDA (with triton),
            falling back with a warning.

    Example:
        >>> opt = AdaBreg(model.parameters(), lr=1e-3, reg=GroupL12(0.05))
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        reg: Regularizer | None = None,
        delta: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(lr=lr, reg=reg, delta=delta, betas=betas, eps=eps)
        self._init_fused(fused, _adabreg_kernel)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        super()._validate_group(group, where)
        betas = group["betas"]
        _check(
            isinstance(betas, (tuple, list)) and len(betas) == 2,
            where,
            f"betas must be a pair (beta1, beta2), got {betas!r}",
        )
        for i, b in enumerate(betas):
            _check(
                _is_real(b) and 0.0 <= b < 1.0,
                where,
                f"invalid beta parameter at index {i}: {b!r} (must be in [0, 1))",
            )
        _check(
            _is_real(group["eps"]) and group["eps"] >= 0.0,
            where,
            f"invalid eps={group['eps']!r} (must be >= 0)",
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = _evaluate(closure)
        batch = _FusedBatch()
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if not params:
                continue
            reg, delta = group["reg"], group["delta"]
            beta1, beta2 = group["betas"]
            lr, eps = float(group["lr"]), group["eps"]
            grads, ms, ss, steps = [], [], [], []
            vs = _ensure_v(self.state, params, delta, reg)
            for p in params:
                st = self.state[p]
                if "step" not in st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                grads.append(p.grad)
                ms.append(st["exp_avg"])
                ss.append(st["exp_avg_sq"])
                steps.append(st["step"])
            torch._foreach_add_(steps, 1.0)
            ks = [float(s.item()) for s in steps]  # CPU scalars: no device sync
            step_sizes = [lr / (1.0 - beta1**k) for k in ks]
            bc2_sqrts = [(1.0 - beta2**k) ** 0.5 for k in ks]
            specs = [_prox_spec(reg, p) for p in params]
            plain_args = (params, grads, vs, ms, ss, step_sizes, bc2_sqrts)
            if self._use_fused(params, specs) and batch.accepts(params):
                batch.add(
                    group,
                    plain_args,
                    [params, grads, vs, ms, ss, [(sp[0], sp[2]) for sp in specs]],
                    [
                        x
                        for sp, st, bc in zip(specs, step_sizes, bc2_sqrts, strict=True)
                        for x in (beta1, beta2, eps, delta, st, bc, sp[1])
                    ],
                )
            else:
                self._plain_update(group, *plain_args)
        self._flush(batch)
        return loss

    def _plain_update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        vs: list[Tensor],
        ms: list[Tensor],
        ss: list[Tensor],
        step_sizes: list[float],
        bc2_sqrts: list[float],
    ) -> None:
        """The same arithmetic as ``torch.optim.Adam``'s, applied to ``v``, then the prox."""
        beta1, beta2 = group["betas"]
        torch._foreach_lerp_(ms, grads, 1.0 - beta1)
        torch._foreach_mul_(ss, beta2)
        torch._foreach_addcmul_(ss, grads, grads, 1.0 - beta2)
        denom = torch._foreach_sqrt(ss)
        torch._foreach_div_(denom, bc2_sqrts)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_addcdiv_(vs, ms, denom, [-s for s in step_sizes])
        _apply_prox_(params, vs, group["delta"], group["reg"])

    def _reg_changed(self, group: dict[str, Any], old: Regularizer, new: Regularizer) -> None:
        """As :meth:`LinBreg._reg_changed`: rescale or reset ``v`` so ``theta`` stays fixed."""
        _rebase_subgradients(self.state, group, old, new)


# ---------------------------------------------------------------------------------------------
# ProxSGD
# ---------------------------------------------------------------------------------------------
class ProxSGD(RegularizedOptimizer):
    r"""Proximal gradient descent, the baseline: ``theta = prox_{tau J}(theta - tau g)``.

    Starts from whatever the parameters are (dense or sparse) and removes what the prox
    zeros -- the forward scale space, the opposite of Bregman's.

    Example:
        >>> opt = ProxSGD(model.parameters(), lr=0.1, reg=L1(1e-4))
    """

    def __init__(self, params: ParamsT, lr: float, reg: Regularizer | None = None) -> None:
        super().__init__(params, dict(lr=lr, reg=reg))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = _evaluate(closure)
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if not params:
                continue
            lr, reg = float(group["lr"]), group["reg"]
            torch._foreach_add_(params, [p.grad for p in params], alpha=-lr)
            if _is_joint(reg) and not reg.is_null:
                reg.prox_all([p.clone() for p in params], lr, out=params)  # type: ignore[attr-defined]
            elif not reg.is_null:
                for p in params:
                    p.copy_(reg.prox(p, lr))
        return loss
