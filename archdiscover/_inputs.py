"""Example inputs, as the tracer, the compiler and the exporter all take them."""

from __future__ import annotations

from torch import Tensor

__all__ = ["Inputs", "as_inputs"]

Inputs = Tensor | tuple[Tensor, ...]


def as_inputs(example_inputs: object, what: str = "example_inputs") -> tuple[Tensor, ...]:
    """``example_inputs`` (a tensor, or a non-empty tuple or list of tensors) as a tuple of
    tensors; anything else is a ``TypeError`` naming ``what``."""
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs:
        for i, t in enumerate(example_inputs):
            if not isinstance(t, Tensor):
                raise TypeError(f"{what}[{i}] is a {type(t).__name__}, not a torch.Tensor")
        return tuple(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        raise TypeError(f"{what} is empty; pass a tensor or a tuple of tensors")
    raise TypeError(
        f"{what} must be a torch.Tensor or a tuple of tensors, got {type(example_inputs).__name__}"
    )
