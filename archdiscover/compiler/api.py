"""``compile``: from a sparse supernet to a compact model that computes the same function.

One rounding (``round_to=r``) runs the pipeline once (:mod:`.pipeline`); ``round_to="auto"``
runs it per candidate and keeps the fastest in onnxruntime (:mod:`.tune`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .._inputs import Inputs
from .pipeline import Compiled, compile_once
from .tune import compile_auto

__all__ = ["compile"]


def compile(
    model: nn.Module,
    example_inputs: Inputs,
    atol: float = 1e-5,
    *,
    round_to: int | str = 1,
    strict: bool = True,
    n_random: int = 2,
    auto_batch_sizes: Sequence[int] = (1, 64),
) -> Compiled:
    """Physically shrink ``model`` to the channels and branches that matter; verify exactness.

    Args:
        model: any ``nn.Module`` traceable by ``torch.fx``; it is not modified.
        example_inputs: a tensor or tuple of tensors (a small batch is enough).
        atol: tolerance on ``max |compact - original| / max(1, max |original|)``.
        round_to: an int r: keep just enough removable (zero or unused) channels to round each
            layer's width up to a multiple of r (1, the default, gives the minimal widths,
            which may run slower than the dense model in onnxruntime when they are not
            multiples of the CPU's vector width: use "auto" or 8 / 16 for deployment);
            ``"auto"``: try 1, 4, 8, 16 and keep the one fastest in onnxruntime on this
            machine (median latency at each of ``auto_batch_sizes`` relative to r=1,
            geometric mean over the batch sizes; among candidates within 3% of the fastest,
            the largest r, whose speed carries over to CPUs with other SIMD widths).
        strict: raise when an unsupported operation blocks the removal of a zero channel
            group; with ``strict=False`` those channels are kept and counted in the report.
        n_random: number of fresh random inputs the result is verified on.

    Returns:
        :class:`Compiled` with ``.model`` (an ordinary ``nn.Module``) and ``.report``.

    Raises:
        CompileError: untraceable model, unsupported operation in the way (``strict``), or a
            compact model that differs from the original beyond ``atol`` (or computes NaN).

    Example:
        >>> c = archdiscover.compile(model.eval(), torch.randn(8, 1, 28, 28))
        >>> print(c.report)
        >>> c.export_onnx("model.onnx")
    """
    if isinstance(round_to, str):
        if round_to != "auto":
            raise ValueError(f"round_to must be a positive int or 'auto', got {round_to!r}")
        return compile_auto(model, example_inputs, atol, strict, n_random, auto_batch_sizes)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive int or 'auto', got {round_to!r}")
    if not (atol >= 0):
        raise ValueError(f"atol must be >= 0, got {atol!r}")
    return compile_once(model, example_inputs, atol, round_to, strict, n_random)
