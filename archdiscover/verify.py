"""Is it the same function? One error metric, used by the compiler and the ONNX exporter.

The error of one output is ``max |got - ref| / max(1, max |ref|)``: absolute for outputs of
magnitude up to 1, relative to the output's scale beyond. It is NaN-aware: a NaN on either
side, or an infinity that the other side does not have at the same place, is an infinite
error, so a network that computes NaN never verifies (``max(0.0, nan)`` is 0.0 in Python,
which is how a NaN network once passed). Only torch and numpy are imported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "OutputError",
    "flatten_outputs",
    "fresh_inputs",
    "max_error",
    "output_error",
    "outputs",
]


def flatten_outputs(out: Any, where: str = "output") -> list[Tensor]:
    """The tensors of a model output, in order: a tensor, or (nested) tuples, lists, named
    tuples and dicts (values in insertion order) of tensors; ``None`` entries are skipped.
    Anything else is a ``TypeError`` naming where it sits."""
    if isinstance(out, Tensor):
        return [out]
    if out is None:
        return []
    if isinstance(out, Mapping):
        items = [(f"{where}[{k!r}]", v) for k, v in out.items()]
    elif isinstance(out, (tuple, list)):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(out)]
    else:
        raise TypeError(
            f"model {where} is a {type(out).__name__}; only tensors and (nested) tuples, lists "
            "and dicts of tensors can be compiled, exported and verified"
        )
    flat: list[Tensor] = []
    for w, v in items:
        flat.extend(flatten_outputs(v, w))
    return flat


def outputs(model: nn.Module, inputs: tuple[Tensor, ...]) -> list[Tensor]:
    """``flatten_outputs(model(*inputs))`` under ``torch.no_grad``, detached."""
    with torch.no_grad():
        return [t.detach() for t in flatten_outputs(model(*inputs))]


def fresh_inputs(
    inputs: tuple[Tensor, ...], seed: int = 0, batch: int | None = None
) -> tuple[Tensor, ...]:
    """Random inputs like ``inputs`` (dtype, device, trailing shape); ``batch`` replaces dim 0.

    Floating inputs are standard normal (drawn in float64 on the CPU from a generator seeded
    with ``seed``, then cast); other dtypes (indices, masks) are rows drawn from the example
    with replacement, so that they stay valid for the model.
    """
    g = torch.Generator().manual_seed(seed)
    fresh = []
    for x in inputs:
        shape = tuple(x.shape) if batch is None else (batch, *x.shape[1:])
        if x.is_floating_point():
            t = torch.randn(shape, generator=g, dtype=torch.float64).to(x.dtype)
        elif batch is None or x.dim() == 0:
            t = x.detach().cpu().clone()
        else:
            idx = torch.randint(0, x.shape[0], (batch,), generator=g)
            t = x.detach().cpu()[idx].contiguous()
        fresh.append(t.to(x.device))
    return tuple(fresh)


class OutputError(tuple):
    """``(max_abs, rel, note)`` of one comparison; ``rel`` is what tolerances apply to."""

    __slots__ = ()

    def __new__(cls, max_abs: float, rel: float, note: str = "") -> OutputError:
        return super().__new__(cls, (max_abs, rel, note))

    @property
    def max_abs(self) -> float:
        return self[0]

    @property
    def rel(self) -> float:
        return self[1]

    @property
    def note(self) -> str:
        return self[2]


def output_error(got: Tensor | np.ndarray, ref: Tensor | np.ndarray) -> OutputError:
    """The NaN-aware error of one output ``got`` against its reference ``ref``."""
    want = ref.detach().cpu() if isinstance(ref, Tensor) else torch.as_tensor(np.asarray(ref))
    have = got.detach().cpu() if isinstance(got, Tensor) else torch.as_tensor(np.asarray(got))
    if want.is_complex() or have.is_complex():
        raise TypeError(f"cannot compare an output of dtype {want.dtype}")
    w = want.to(torch.float64).numpy()
    h = have.to(torch.float64).numpy()
    if w.shape != h.shape:
        return OutputError(math.inf, math.inf, f"shape {h.shape}, expected {w.shape}")
    if w.size == 0:
        return OutputError(0.0, 0.0)
    if np.isnan(w).any() or np.isnan(h).any():
        where = "reference" if np.isnan(w).any() else "result"
        return OutputError(math.inf, math.inf, f"NaN in the {where} output")
    same = w == h  # equal values, equal infinities included
    if not np.all(same | (np.isfinite(w) & np.isfinite(h))):
        return OutputError(math.inf, math.inf, "an infinity where the other side has none")
    diff = np.where(same, 0.0, np.abs(h - w))
    max_abs = float(diff.max())
    finite = w[np.isfinite(w)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    return OutputError(max_abs, max_abs / max(1.0, scale))


def max_error(gots: Sequence[Tensor], refs: Sequence[Tensor]) -> OutputError:
    """The worst :func:`output_error` over paired outputs (infinite if the counts differ)."""
    if len(gots) != len(refs):
        return OutputError(math.inf, math.inf, f"{len(gots)} outputs, expected {len(refs)}")
    worst = OutputError(0.0, 0.0)
    for i, (g, r) in enumerate(zip(gots, refs, strict=True)):
        e = output_error(g, r)
        if e.rel > worst.rel or (math.isinf(e.rel) and not math.isinf(worst.rel)):
            worst = OutputError(e.max_abs, e.rel, f"output {i}" + (f": {e.note}" if e.note else ""))
    return worst
