r"""The update kernels of the Bregman optimizers and the one place that picks among them.

Every update has four implementations (the optimizer's ``impl`` per param group):

* ``"single"`` -- a loop over the tensors, one op at a time (like torch's single-tensor
  optimizers); also what a user's own regularizer gets for its prox;
* ``"foreach"`` -- ``torch._foreach_*`` ops for the linear part, one vectorized prox per
  tensor written straight into the parameter; with a null regularizer and ``delta = 1`` this
  is, op for op, the arithmetic of ``torch.optim.SGD`` / ``torch.optim.Adam``;
* ``"compiled"`` -- one :func:`torch.compile` d pass over memory per tensor, one call for all
  param groups of a step (:class:`Batch`);
* ``"ckernel"`` -- LinBreg only, on the CPU: a small C kernel (:mod:`._rowkernel`) that does the
  momentum, the step on ``v`` and the entrywise or row-group prox in one pass per tensor.

``"auto"`` (the default) chooses per param group and tensor (:func:`linbreg_update`,
:func:`adabreg_update`): an optimizer none of whose groups is regularized (``reg=None``,
``delta = 1``) takes ``"foreach"``, so that LinBreg then *is* ``torch.optim.SGD`` and AdaBreg
*is* ``torch.optim.Adam``, bit for bit; otherwise, on the CPU, LinBreg's tensors take the C kernel
where it covers them and the rest is compiled (but a group prox, whose compiled row norm
measured slower than ``"foreach"`` there) when a compiler is found; AdaBreg is compiled on CPU
and CUDA. A failed compilation falls back to ``"foreach"`` with one warning (``"compiled"``
asked for explicitly raises instead).

Low-precision parameters (bfloat16, float16) are updated in float32 (inside the compiled
kernels, and on float32 copies for AdaBreg's eager paths: float16 cannot hold Adam's
``eps``), with their scalars (``beta2 = 0.999`` would round to 1 in bfloat16) in float32.
"""

from __future__ import annotations

import functools
import math
import shutil
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..regularizers import L1, GroupL12, Null, Regularizer, group_shrink, soft_shrink
from . import _rowkernel
from ._base import is_joint

__all__ = [
    "Batch",
    "CompiledKernel",
    "adabreg_update",
    "apply_prox_",
    "compiled_copy",
    "compiler_available",
    "is_torch_arithmetic",
    "linbreg_update",
    "prox_spec",
]


# ---------------------------------------------------------------------------------------------
# The prox of the elastic net
# ---------------------------------------------------------------------------------------------
def prox_spec(reg: Regularizer, p: Tensor) -> tuple[str, float, tuple[int, ...]] | None:
    """``(kind, threshold per unit tau, norm dims)`` for the built-in regularizers, else None."""
    # exact type checks: a subclass may override prox, and then only its own prox is right
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


def apply_prox_(params: list[Tensor], vs: list[Tensor], delta: float, reg: Regularizer) -> None:
    """``theta = prox_{delta J}(delta * v)`` for each tensor, in place in ``params``."""
    if is_joint(reg) and not reg.is_null:
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
        spec = prox_spec(reg, p)
        if spec is None:  # a user's regularizer: its own prox
            p.copy_(reg.prox(x, delta))
        elif spec[0] == "l1":  # written straight into p: no temporary, two passes
            soft_shrink(x, delta * spec[1], out=p)
        else:
            group_shrink(x, delta * spec[1], spec[2], out=p)


# ---------------------------------------------------------------------------------------------
# torch.compile
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


def compiler_available(device: torch.device) -> bool:
    """Whether ``torch.compile`` can generate code for ``device`` here (looked up once)."""
    return _compiler_available_for(device.type)


def compiled_copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(fn)`` on a private copy of ``fn``'s code object.

    Dynamo keeps its cache of compiled graphs (and its recompile limit) per code object;
    a copy per optimizer keeps optimizers from evicting one another's graphs.
    """
    code = fn.__code__.replace()
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return torch.compile(copy, fullgraph=True, dynamic=False)


def _scalar_dtype(params: list[Tensor]) -> torch.dtype:
    """float64 when a parameter is float64, else float32 (never a low-precision dtype)."""
    return torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32


def _low(t: Tensor) -> bool:
    return t.dtype in (torch.bfloat16, torch.float16)


def _acc(t: Tensor) -> Tensor:
    """``t`` in at least float32 (the arithmetic type of low-precision parameters)."""
    return t.float() if _low(t) else t


class CompiledKernel:
    """One optimizer's compiled update: compiled on first use, fallen back from once.

    ``forced`` (the user asked for ``impl="compiled"``) re-raises a compilation error
    instead of falling back.
    """

    def __init__(self, source: Callable[..., Any], owner: str) -> None:
        self.source = source
        self.owner = owner
        self.fn: Callable[..., Any] | None = None
        self.failed = False
        self._key: Any = None
        self._hyper: Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source, "owner": self.owner, "fn": None, "failed": self.failed,
                "_key": None, "_hyper": None}  # fmt: skip

    def hyper(self, values: list[float], params: list[Tensor]) -> Tensor:
        """The step's scalars as one small tensor (reused while they do not change)."""
        key = (tuple(values), _scalar_dtype(params), params[0].device)
        if self._key != key or self._hyper is None:
            t = torch.tensor(values, dtype=key[1]).to(params[0].device, non_blocking=True)
            self._key, self._hyper = key, t
        return self._hyper

    def run(self, forced: bool, *args: Any) -> bool:
        """Run the compiled kernel; False (after one warning) if compilation failed."""
        if self.fn is None:
            self.fn = compiled_copy(self.source)
        try:
            self.fn(*args)
        except Exception as e:  # compilation errors surface on the first call
            if forced:
                raise
            self.failed = True
            first = str(e).splitlines()[0] if str(e) else ""
            warnings.warn(
                f"{self.owner}: torch.compile of the update failed ({type(e).__name__}: "
                f"{first}); using the foreach path",
                RuntimeWarning,
                stacklevel=4,
            )
            return False
        return True


class Batch:
    """The tensors of every param group that takes the compiled path in one step.

    One compiled call per step, over all groups, keeps the per-call overhead (guards,
    launch) from multiplying with the number of param groups. If it cannot run, each
    group's ``fallback`` (its foreach update) runs instead.
    """

    def __init__(self) -> None:
        self.fallbacks: list[Callable[[], None]] = []
        self.lists: list[list[Any]] = []
        self.hyper: list[float] = []
        self.forced = False

    def accepts(self, params: list[Tensor]) -> bool:
        """One compiled call runs on one device: later groups must match the first."""
        return not self.lists or params[0].device == self.lists[0][0].device

    def add(
        self, fallback: Callable[[], None], lists: list[list[Any]], hyper: list[float], forced: bool
    ) -> None:
        self.fallbacks.append(fallback)
        if not self.lists:
            self.lists = [[] for _ in lists]
        for acc, xs in zip(self.lists, lists, strict=True):
            acc.extend(xs)
        self.hyper.extend(hyper)
        self.forced = self.forced or forced

    def flush(self, kernel: CompiledKernel) -> None:
        if not self.fallbacks:
            return
        hyper = kernel.hyper(self.hyper, self.lists[0])
        if not kernel.run(self.forced, *self.lists, hyper):
            for fallback in self.fallbacks:
                fallback()


def _wants_compiled(impl: str, kernel: CompiledKernel, params: list[Tensor]) -> bool:
    """Whether tensors whose implementation is still open take the compiled path."""
    if impl == "compiled":
        return True
    if impl != "auto" or kernel.failed or torch.compiler.is_compiling():
        return False  # torch.compile of the whole step: stay traceable, no nested compile
    device = params[0].device
    if any(p.device != device for p in params):
        return False
    return device.type in ("cpu", "cuda") and compiler_available(device)


def is_torch_arithmetic(groups: list[dict[str, Any]]) -> bool:
    """Every group unregularized with ``delta = 1``: the optimizer is torch's SGD / Adam, and
    ``"auto"`` runs it on torch's own arithmetic (``"foreach"``), bit for bit."""
    return all(
        g["reg"].is_null and not is_joint(g["reg"]) and g.get("delta", 1.0) == 1.0 for g in groups
    )


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

    Tensor ``i`` (of any param group) reads ``hyper[5i : 5i + 5] = [lr, delta, momentum,
    dampening, t]`` (``t``: the prox threshold per unit step), a tensor, so new values never
    trigger a recompile; ``flags[i]`` is ``(use_momentum, nesterov)``.
    """
    for i in range(len(params)):
        lr, delta, momentum = hyper[5 * i], hyper[5 * i + 1], hyper[5 * i + 2]
        dampening, t = hyper[5 * i + 3], hyper[5 * i + 4]
        g = _acc(grads[i])
        use_momentum, nesterov = flags[i]
        buf = _acc(bufs[i]) * momentum + g * (1.0 - dampening) if use_momentum else g
        d = g + buf * momentum if use_momentum and nesterov else buf
        v = _acc(vs[i]) - d * lr
        kind, dims = specs[i]
        theta = _shrink(v * delta, kind, t * delta, dims)
        # every write comes after every read of this tensor's old state
        if use_momentum:
            bufs[i].copy_(buf)
        vs[i].copy_(v)
        params[i].copy_(theta)


def _linbreg_linear(
    grads: list[Tensor],
    vs: list[Tensor],
    bufs: list[Tensor | None],
    state: Mapping[Tensor, dict[str, Any]],
    params: list[Tensor],
    hp: Mapping[str, Any],
    foreach: bool,
) -> None:
    """Momentum and ``v -= lr * d`` (SGD's arithmetic), with torch's ``_foreach`` ops or not."""
    lr, mom, damp, nesterov = float(hp["lr"]), hp["momentum"], hp["dampening"], hp["nesterov"]
    if mom != 0.0:
        old = [i for i, b in enumerate(bufs) if b is not None]
        if old:
            ob = [bufs[i] for i in old]
            og = [grads[i] for i in old]
            if foreach:
                torch._foreach_mul_(ob, mom)
                torch._foreach_add_(ob, og, alpha=1.0 - damp)
            else:
                for b, g in zip(ob, og, strict=True):
                    b.mul_(mom).add_(g, alpha=1.0 - damp)
        for i, p in enumerate(params):
            if bufs[i] is None:
                bufs[i] = grads[i].detach().clone()
                state[p]["momentum_buffer"] = bufs[i]
        if nesterov:
            d = (
                torch._foreach_add(grads, bufs, alpha=mom)
                if foreach
                else [g.add(b, alpha=mom) for g, b in zip(grads, bufs, strict=True)]
            )
        else:
            d = bufs
    else:
        d = grads
    if foreach:
        torch._foreach_add_(vs, d, alpha=-lr)
    else:
        for v, di in zip(vs, d, strict=True):
            v.add_(di, alpha=-lr)


def _prox(params: list[Tensor], vs: list[Tensor], hp: Mapping[str, Any], foreach: bool) -> None:
    """``theta = prox(delta v)`` for the whole group at once, or one tensor at a time."""
    reg, delta = hp["reg"], hp["delta"]
    if foreach or is_joint(reg):  # a coupled regularizer needs every tensor of its group
        apply_prox_(params, vs, delta, reg)
    else:
        for p, v in zip(params, vs, strict=True):
            apply_prox_([p], [v], delta, reg)


def _linbreg_eager(
    params: list[Tensor],
    grads: list[Tensor],
    vs: list[Tensor],
    bufs: list[Tensor | None],
    state: Mapping[Tensor, dict[str, Any]],
    hp: Mapping[str, Any],
    foreach: bool,
) -> None:
    _linbreg_linear(grads, vs, bufs, state, params, hp, foreach)
    _prox(params, vs, hp, foreach)


def _ckernel(
    params: list[Tensor],
    grads: list[Tensor],
    vs: list[Tensor],
    bufs: list[Tensor | None],
    specs: list[Any],
    hp: Mapping[str, Any],
    lib: Any,
) -> list[int]:
    """The tensors the C kernel covers take it; returns the indices of the others."""
    mom = hp["momentum"]
    rest = []
    for i, (p, g, v, b, sp) in enumerate(zip(params, grads, vs, bufs, specs, strict=True)):
        buf = b if mom != 0.0 else None
        mode = None if sp is None else _rowkernel.mode(sp[0], sp[2], p)
        if mode is None or not _rowkernel.eligible(p, g, v, buf):
            rest.append(i)
            continue
        _rowkernel.linbreg_(
            lib,
            mode,
            p,
            g,
            v,
            buf,
            lr=float(hp["lr"]),
            delta=hp["delta"],
            momentum=mom,
            dampening=hp["dampening"],
            nesterov=hp["nesterov"],
            thresh=sp[1],
        )
    return rest


def linbreg_update(
    params: list[Tensor],
    grads: list[Tensor],
    vs: list[Tensor],
    bufs: list[Tensor | None],
    state: Mapping[Tensor, dict[str, Any]],
    hp: Mapping[str, Any],
    kernel: CompiledKernel,
    batch: Batch,
    torch_arithmetic: bool = False,
) -> None:
    r"""One LinBreg step of one param group: ``b = mu b + (1 - damp) g``,
    ``v -= lr d`` (``d = b``, ``g + mu b`` with Nesterov, or ``g``),
    ``theta = prox_{delta J}(delta v)``, on the implementation ``hp["impl"]`` picks.

    ``hp`` is the param group (``lr``, ``delta``, ``momentum``, ``dampening``, ``nesterov``,
    ``reg``, ``impl``). Compiled work is added to ``batch`` (run by :meth:`Batch.flush`);
    ``torch_arithmetic`` (:func:`is_torch_arithmetic` of the optimizer) makes ``"auto"`` take
    ``"foreach"``.
    """
    impl, reg, mom = hp["impl"], hp["reg"], hp["momentum"]
    fresh = mom != 0.0 and any(b is None for b in bufs)  # the first momentum step sets b = g
    if impl == "single":
        _linbreg_eager(params, grads, vs, bufs, state, hp, foreach=False)
        return
    if impl == "foreach" or fresh or (impl == "auto" and torch_arithmetic):
        _linbreg_eager(params, grads, vs, bufs, state, hp, foreach=True)
        return
    specs = [prox_spec(reg, p) for p in params]
    if impl in ("auto", "ckernel") and params[0].device.type == "cpu":
        lib = _rowkernel.load()
        if lib is None and impl == "ckernel":
            raise RuntimeError(
                f"{kernel.owner}: impl='ckernel' but the C kernel could not be built here "
                f"({_rowkernel.failure() or 'no C compiler'})"
            )
        if lib is not None:
            rest = _ckernel(params, grads, vs, bufs, specs, hp, lib)
            params, grads, vs, bufs, specs = (
                [xs[i] for i in rest] for xs in (params, grads, vs, bufs, specs)
            )
            if not params:
                return
    if impl == "ckernel":  # what the C kernel does not cover
        _linbreg_eager(params, grads, vs, bufs, state, hp, foreach=True)
        return
    on_cpu = params[0].device.type == "cpu"
    compiled = (
        all(s is not None for s in specs)
        and _wants_compiled(impl, kernel, params)
        and (impl == "compiled" or not (on_cpu and any(s[0] == "group" for s in specs)))
        and batch.accepts(params)
    )
    if not compiled:
        _linbreg_eager(params, grads, vs, bufs, state, hp, foreach=True)
        return
    lr, delta, damp = float(hp["lr"]), hp["delta"], hp["dampening"]
    # without momentum the kernel never reads bufs[i]: any tensor holds the place
    holders = [b if b is not None else g for b, g in zip(bufs, grads, strict=True)]
    args = (list(params), list(grads), list(vs), list(bufs))
    batch.add(
        lambda: _linbreg_eager(*args, state, hp, foreach=True),
        [
            list(params),
            list(grads),
            list(vs),
            holders,
            [(sp[0], sp[2]) for sp in specs],
            [(mom != 0.0, hp["nesterov"])] * len(params),
        ],
        [x for sp in specs for x in (lr, delta, mom, damp, sp[1])],
        impl == "compiled",
    )


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
        g = _acc(grads[i])
        m0 = _acc(exp_avgs[i])
        m = m0 + (g - m0) * (1.0 - beta1)
        s = _acc(exp_avg_sqs[i]) * beta2 + g * g * (1.0 - beta2)
        v = _acc(vs[i]) - m / (s.sqrt() / bc2_sqrt + eps) * step_size
        kind, dims = specs[i]
        theta = _shrink(v * delta, kind, t * delta, dims)
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(s)
        vs[i].copy_(v)
        params[i].copy_(theta)


def _adabreg_eager(
    params: list[Tensor],
    grads: list[Tensor],
    vs: list[Tensor],
    ms: list[Tensor],
    ss: list[Tensor],
    step_sizes: list[float],
    bc2_sqrts: list[float],
    hp: Mapping[str, Any],
    foreach: bool,
) -> None:
    """The same arithmetic as ``torch.optim.Adam``'s, applied to ``v``, then the prox."""
    beta1, beta2 = hp["betas"]
    eps = hp["eps"]
    if foreach:
        torch._foreach_lerp_(ms, grads, 1.0 - beta1)
        torch._foreach_mul_(ss, beta2)
        torch._foreach_addcmul_(ss, grads, grads, 1.0 - beta2)
        denom = torch._foreach_sqrt(ss)
        torch._foreach_div_(denom, bc2_sqrts)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(vs, ms, denom, [-s for s in step_sizes])
    else:
        for g, v, m, s, st, bc in zip(grads, vs, ms, ss, step_sizes, bc2_sqrts, strict=True):
            m.lerp_(g, 1.0 - beta1)
            s.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            v.addcdiv_(m, (s.sqrt() / bc).add_(eps), value=-st)
    _prox(params, vs, hp, foreach)


def adabreg_update(
    params: list[Tensor],
    grads: list[Tensor],
    vs: list[Tensor],
    ms: list[Tensor],
    ss: list[Tensor],
    step_sizes: list[float],
    bc2_sqrts: list[float],
    hp: Mapping[str, Any],
    kernel: CompiledKernel,
    batch: Batch,
    torch_arithmetic: bool = False,
) -> None:
    r"""One AdaBreg step of one param group (Adam's moments, ``v`` and the prox) on the
    implementation ``hp["impl"]`` picks; compiled work is added to ``batch``."""
    impl, reg, delta = hp["impl"], hp["reg"], hp["delta"]
    if impl in ("single", "foreach") and any(_low(p) for p in params):
        # float16 cannot hold Adam's eps (1e-8 is 0 there) nor small second moments: do the
        # step in float32 on copies, as the compiled kernel does, and write the results back
        up = [[_acc(t) for t in xs] for xs in (params, grads, vs, ms, ss)]
        _adabreg_eager(*up, step_sizes, bc2_sqrts, hp, foreach=impl == "foreach")
        for xs, ys in zip((params, vs, ms, ss), (up[0], up[2], up[3], up[4]), strict=True):
            for x, y in zip(xs, ys, strict=True):
                if x is not y:
                    x.copy_(y)
        return
    if impl == "single":
        _adabreg_eager(params, grads, vs, ms, ss, step_sizes, bc2_sqrts, hp, foreach=False)
        return
    specs = [prox_spec(reg, p) for p in params]
    compiled = (
        impl != "foreach"
        and not (impl == "auto" and torch_arithmetic)
        and all(s is not None for s in specs)
        and _wants_compiled(impl, kernel, params)
        and batch.accepts(params)
    )
    args = (params, grads, vs, ms, ss, step_sizes, bc2_sqrts, hp)
    if not compiled:
        _adabreg_eager(*args, foreach=True)
        return
    beta1, beta2 = hp["betas"]
    batch.add(
        lambda: _adabreg_eager(*args, foreach=True),
        [params, grads, vs, ms, ss, [(sp[0], sp[2]) for sp in specs]],
        [
            x
            for sp, st, bc in zip(specs, step_sizes, bc2_sqrts, strict=True)
            for x in (beta1, beta2, hp["eps"], delta, st, bc, sp[1])
        ],
        impl == "compiled",
    )


#: the compiled kernels, by optimizer
KERNELS = {"linbreg": _linbreg_kernel, "adabreg": _adabreg_kernel}
