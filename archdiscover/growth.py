r"""Growth through zero: in training, ReLU-type activations take the subgradient 1 at 0.

``relu`` has no derivative at 0; any value in ``[0, 1]`` is a subgradient there, and
PyTorch takes 0. A unit that a sparse start switched off (all of its regularized parameters
exactly zero: a neuron's row and bias, a channel's BatchNorm scale and shift) has a
pre-activation that is *exactly* 0 at every sample and position, so with ``relu'(0) = 0``
its parameters never see a gradient, the Bregman subgradient ``v`` of its group never
moves, and the inverse scale space can never add it: discovery from a sparse start stalls.

With the subgradient 1 at exactly 0 the loss's gradient reaches the switched-off unit as if
it were a linear unit at the origin: ``v_g`` accumulates the evidence ``-lr * grad_g``
and the unit enters once ``||v_g||`` passes its threshold ``lam * sqrt(|g|)``
(larger ``lam``: later, fewer units). A live unit almost never has a pre-activation of
exactly 0, so its gradient is what PyTorch computes.

:func:`enable_growth` installs this on a model with two hooks on the model itself (a forward
pre-hook that enters a :class:`torch.overrides.TorchFunctionMode` and a forward hook that
leaves it, called even when forward raises). The mode is entered only in training mode
with gradients enabled, and only replaces the *backward* of

* ``torch.relu`` / ``F.relu`` / ``Tensor.relu`` and their in-place forms (``nn.ReLU``):
  ``relu'(0) = 1``;
* ``F.relu6`` / ``F.hardtanh`` (``nn.ReLU6``, ``nn.Hardtanh``): derivative 1 at the
  lower kink ``min_val`` (0 for ReLU6);
* ``F.leaky_relu`` (``nn.LeakyReLU``): derivative 1 at 0 (PyTorch takes the slope).

The forward values are those of the original functions, bit for bit (they are called as
they are), and in eval mode or under ``torch.no_grad`` nothing is intercepted, so
inference, :func:`archdiscover.compile` and ONNX export see the unchanged model.
:func:`archdiscover.sparse_init_` calls :func:`enable_growth` (``grow=True``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["GrowthMode", "disable_growth", "enable_growth", "growth_enabled"]


class _Kink(torch.autograd.Function):
    """``out = fn(x)`` with backward ``g * d``, ``d = 1`` on ``[lo, hi)``, ``slope`` below
    ``lo`` and 0 from ``hi`` on (PyTorch's derivative except at the lower kink ``lo``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor], lo: float, hi: float, slope: float
    ) -> Tensor:
        keep = x >= lo
        if hi != math.inf:
            keep &= x < hi
        below = (x < lo) if slope != 0.0 else None
        out = fn(x)
        if out is x:  # in place
            ctx.mark_dirty(x)
        ctx.slope = slope
        ctx.save_for_backward(keep, *(() if below is None else (below,)))
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        keep, *rest = ctx.saved_tensors
        gx = g * keep
        if rest:
            gx = gx + g * rest[0] * ctx.slope
        return gx, None, None, None, None


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, key: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(key, default)


# the functions whose backward changes, with (lower kink, upper kink, slope below) from args
_KINKS: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], tuple[float, float, float]]] = {}
for _f in (torch.relu, torch.relu_, F.relu, F.relu_, Tensor.relu, Tensor.relu_):
    _KINKS[_f] = lambda a, k: (0.0, math.inf, 0.0)
_KINKS[F.relu6] = lambda a, k: (0.0, 6.0, 0.0)
for _f in (F.hardtanh, F.hardtanh_):
    _KINKS[_f] = lambda a, k: (
        float(_arg(a, k, 1, "min_val", -1.0)),
        float(_arg(a, k, 2, "max_val", 1.0)),
        0.0,
    )
for _f in (F.leaky_relu, F.leaky_relu_):
    _KINKS[_f] = lambda a, k: (0.0, math.inf, float(_arg(a, k, 1, "negative_slope", 0.01)))


class GrowthMode(TorchFunctionMode):
    """The torch-function mode that gives ReLU-type functions the subgradient 1 at their
    lower kink (see the module docstring). Usable directly as ``with GrowthMode(): ...``."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        kink = _KINKS.get(func)
        x = args[0] if args else kwargs.get("input")
        if kink is None or not isinstance(x, Tensor) or not x.requires_grad:
            return func(*args, **kwargs)
        if not torch.is_grad_enabled() or x.is_complex():
            return func(*args, **kwargs)
        lo, hi, slope = kink(args, kwargs)
        rest, kw = args[1:], {k: v for k, v in kwargs.items() if k != "input"}

        def fn(t: Tensor) -> Tensor:
            return func(t, *rest, **kw)

        return _Kink.apply(x, fn, lo, hi, slope)


class _State:
    """Per model: the modes entered by the pre-hook, per thread (not copied or pickled)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def stack(self) -> list[GrowthMode | None]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._local = threading.local()


class _Enter:
    """Forward pre-hook: enter :class:`GrowthMode` in training mode with gradients on."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: Any) -> None:
        mode = GrowthMode() if module.training and torch.is_grad_enabled() else None
        if mode is not None:
            mode.__enter__()
        self.state.stack().append(mode)


class _Exit:
    """Forward hook (called even when forward raises): leave what :class:`_Enter` entered."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        stack = self.state.stack()
        mode = stack.pop() if stack else None
        if mode is not None:
            mode.__exit__(None, None, None)


def enable_growth(model: nn.Module) -> nn.Module:
    """Install growth through zero on ``model`` (idempotent); returns ``model``.

    In training mode with gradients enabled, ``model``'s forward runs under
    :class:`GrowthMode`: ReLU, ReLU6, Hardtanh and LeakyReLU (modules or functions) keep
    their forward values and take the derivative 1 at their lower kink, so units that are
    exactly zero (a sparse start) receive gradients and can enter. The hooks are plain
    objects: they are copied, pickled and saved with the model object (not with its
    ``state_dict``). Undo with :func:`disable_growth`.

    Example:
        >>> enable_growth(model)  # sparse_init_(model, ...) does this by default
        >>> model.train(); loss_fn(model(x), y).backward()  # zero units get gradients
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"enable_growth: expected an nn.Module, got {type(model).__name__}")
    if growth_enabled(model):
        return model
    state = _State()
    model.register_forward_pre_hook(_Enter(state))
    model.register_forward_hook(_Exit(state), always_call=True)
    return model


def disable_growth(model: nn.Module) -> nn.Module:
    """Remove what :func:`enable_growth` installed (no-op when absent); returns ``model``."""
    for key, hook in list(model._forward_pre_hooks.items()):
        if isinstance(hook, _Enter):
            del model._forward_pre_hooks[key]
    for key, hook in list(model._forward_hooks.items()):
        if isinstance(hook, _Exit):
            del model._forward_hooks[key]
            model._forward_hooks_always_called.pop(key, None)
    return model


def growth_enabled(model: nn.Module) -> bool:
    """True when :func:`enable_growth` is installed on ``model``."""
    return any(isinstance(h, _Enter) for h in model._forward_pre_hooks.values())
