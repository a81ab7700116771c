"""The compiler's one error type."""

from __future__ import annotations

__all__ = ["CompileError"]


class CompileError(RuntimeError):
    """The model cannot be compiled exactly (the message names the layer or operation)."""
