"""Who is zero: per-layer non-zero counts, active neurons/channels and network density.

A *unit* is a neuron of a ``Linear`` (a row of its weight), an output channel of a
``Conv`` (``weight[c]``) or of a ``ConvTranspose`` (``weight[:, c]``); it is *active* when its
weight slice has a non-zero entry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .graph import ops

__all__ = ["LayerSparsity", "SparsityReport", "report"]


@dataclass(frozen=True)
class LayerSparsity:
    """One module with parameters of its own."""

    name: str
    kind: str
    params: int
    nonzero: int
    weight_params: int
    weight_nonzero: int
    units: int | None
    active_units: int | None

    @property
    def density(self) -> float:
        return self.nonzero / self.params if self.params else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Per-layer rows and network totals; ``str(report)`` is a table."""

    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def nonzero(self) -> int:
        return sum(r.nonzero for r in self.layers)

    @property
    def density(self) -> float:
        """Non-zero fraction of all parameters."""
        return self.nonzero / self.params if self.params else 0.0

    @property
    def weight_density(self) -> float:
        """Non-zero fraction of the weights of Linear/Conv/ConvTranspose layers."""
        total = sum(r.weight_params for r in self.layers)
        return sum(r.weight_nonzero for r in self.layers) / total if total else 0.0

    def active_units(self) -> dict[str, int]:
        """``{layer name: active units}`` for the layers that have units."""
        return {r.name: r.active_units for r in self.layers if r.active_units is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "nonzero": self.nonzero,
            "density": self.density,
            "weight_density": self.weight_density,
            "layers": [asdict(r) for r in self.layers],
        }

    def __str__(self) -> str:
        head = ("layer", "type", "non-zero / params", "density", "active units")
        rows = [head]
        for r in self.layers:
            units = f"{r.active_units} / {r.units}" if r.units is not None else "-"
            rows.append(
                (
                    r.name or "(root)",
                    r.kind,
                    f"{r.nonzero:,} / {r.params:,}",
                    f"{100 * r.density:.2f}%",
                    units,
                )
            )
        rows.append(
            ("total", "", f"{self.nonzero:,} / {self.params:,}", f"{100 * self.density:.2f}%", "")
        )
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = [
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        lines.append(f"weights non-zero: {100 * self.weight_density:.2f}%")
        return "\n".join(lines)


@torch.no_grad()
def report(model: nn.Module) -> SparsityReport:
    """Count non-zeros per module of ``model`` (modules owning parameters, in order).

    Example:
        >>> rep = report(model)
        >>> rep.weight_density, rep.active_units()["0"]
        >>> print(rep)
    """
    rows = []
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        params = sum(p.numel() for _, p in own)
        nonzero = sum(int(torch.count_nonzero(p)) for _, p in own)
        axis = ops.unit_axis(module)
        w = getattr(module, "weight", None) if axis is not None else None
        if isinstance(w, torch.Tensor):
            dims = tuple(d for d in range(w.dim()) if d != axis)
            alive = torch.count_nonzero(w, dim=dims) if dims else (w != 0).long()
            units, active = w.shape[axis], int((alive > 0).sum())
            wp, wnz = w.numel(), int(torch.count_nonzero(w))
        else:
            units = active = None
            wp = wnz = 0
        rows.append(
            LayerSparsity(name, type(module).__name__, params, nonzero, wp, wnz, units, active)
        )
    return SparsityReport(rows)
