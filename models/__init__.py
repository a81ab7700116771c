"""Supernets: plain ``nn.Module`` s registered by name; ``models.build(name, **kwargs)``."""

from .mlp import MLP
from .registry import available, build, register

__all__ = ["MLP", "available", "build", "register"]
