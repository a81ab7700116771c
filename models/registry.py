"""A name -> constructor registry for supernets, with arguments checked against signatures.

``build(name, **kwargs)`` refuses an argument the constructor does not take, or whose value
does not match its type hint (``final_relu = "no"`` for a ``bool``, ``widths = 5`` for a
``Sequence[int]``), with one line naming the argument; ranges (positive widths, ...) are
checked by the constructors themselves.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["available", "build", "check_args", "positive", "register"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_SIGNATURES: dict[str, Callable[..., Any]] = {}


def register(
    name: str, *, signature: Callable[..., Any] | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``build(name, **kwargs)`` call the decorated constructor.

    ``signature``: where the arguments a ``**kwargs`` constructor forwards are declared
    (e.g. the model class), so that :func:`check_args` can check them too.
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = fn
        if signature is not None:
            _SIGNATURES[name] = signature
        return fn

    return deco


def available() -> list[str]:
    """The registered model names."""
    return sorted(_REGISTRY)


def _params(fn: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """``({argument: type hint or None}, takes **kwargs)`` of ``fn``."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    except Exception:  # pragma: no cover - unresolvable annotations: no type checks
        hints = {}
    out: dict[str, Any] = {}
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind is not inspect.Parameter.VAR_POSITIONAL and p.name != "self":
            out[p.name] = hints.get(p.name)
    return out, var_kw


def _matches(value: Any, hint: Any) -> bool:
    """Whether plain data ``value`` (from TOML / JSON / Python) fits type hint ``hint``."""
    if hint is None or hint is Any or hint is object:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (collections.abc.Sequence, list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_matches, value, args))
        item = args[0] if args else None
        return all(_matches(v, item) for v in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return True  # classes and other hints: the constructor checks


def _describe(hint: Any) -> str:
    return (
        str(hint).replace("typing.", "").replace("collections.abc.", "").replace("NoneType", "None")
        if not isinstance(hint, type)
        else hint.__name__
    )


def check_args(name: str, kwargs: dict[str, Any]) -> None:
    """Raise ``TypeError`` (one line naming the argument) for an argument model ``name``
    does not take, or whose value does not fit its type hint."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r} (available: {', '.join(available())})")
    params, var_kw = _params(_REGISTRY[name])
    if var_kw and name in _SIGNATURES:
        extra, var_kw = _params(_SIGNATURES[name])
        params = {**extra, **params}
    for key, value in kwargs.items():
        if key not in params:
            if var_kw:
                continue
            raise TypeError(
                f"model {name!r} takes no argument {key!r} (it takes: {', '.join(params)})"
            )
        hint = params[key]
        if not _matches(value, hint):
            raise TypeError(
                f"model {name!r}: argument {key!r} must be {_describe(hint)}, got "
                f"{type(value).__name__} {value!r}"
            )


def positive(what: str, values: Any) -> None:
    """Raise ``ValueError`` unless ``values`` (an int or a sequence of ints) are all >= 1."""
    seq = values if isinstance(values, (list, tuple)) else [values]
    if not seq or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in seq):
        raise ValueError(f"{what} must be positive integers, got {values!r}")


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build the supernet registered as ``name``; an unknown name or argument, or a value of
    the wrong type, raises ``ValueError`` / ``TypeError`` naming it."""
    check_args(name, kwargs)
    return _REGISTRY[name](**kwargs)
