"""A name -> constructor registry for supernets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``build(name, **kwargs)`` call the decorated constructor."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    """The registered model names."""
    return sorted(_REGISTRY)


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build the supernet registered as ``name``; an unknown name raises ValueError."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r} (available: {', '.join(available())})")
    return _REGISTRY[name](**kwargs)
