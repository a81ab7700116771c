"""ONNX export with verification in onnxruntime.

Works on any ``nn.Module``; from the rest of archdiscover it uses only the verification
metric the compiler uses too (:mod:`archdiscover.verify`), so both judge alike.

* :func:`export_onnx` -- ``torch.onnx.export`` (legacy TorchScript exporter by default, the
  ``torch.export``-based one with ``dynamo=True``) to a temporary file beside ``path``, then
  ``onnx.checker``, then a comparison against torch in onnxruntime (on the example inputs and on
  fresh random inputs at another batch size), and only then ``os.replace`` onto ``path``.
* :func:`verify_onnx` -- the same comparison for a file already written.
* :func:`ort_session` -- a CPU onnxruntime session with all graph optimizations.

Latency in onnxruntime is measured by :mod:`archdiscover.latency`.

The error of a comparison is ``max |ort - torch| / max(1, max |torch|)``: absolute for outputs of
magnitude up to 1, relative to the output's scale beyond; a NaN on either side fails.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import pathlib
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from ._inputs import as_inputs
from .verify import flatten_outputs, fresh_inputs, output_error

__all__ = [
    "OnnxExportError",
    "OnnxVerificationError",
    "export_onnx",
    "ort_session",
    "verify_onnx",
]

_PathLike = str | os.PathLike
_Inputs = Tensor | tuple[Tensor, ...] | list[Tensor]

# Warnings torch emits for choices made here on purpose (the legacy exporter is the default
# because it is fast; the shared "batch" name is the point of the dynamic shapes).
_EXPORT_NOISE = (
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
    r"# The axis name: batch will not be used",
)


class OnnxExportError(RuntimeError):
    """``torch.onnx.export`` failed, or ``onnx.checker`` rejected the exported file."""


class OnnxVerificationError(RuntimeError):
    """onnxruntime's outputs disagree with torch's beyond the tolerance.

    Attributes
    ----------
    path : pathlib.Path
        The ONNX file (for :func:`export_onnx`: the destination, which was not written).
    output_index : int
        Index of the worst output (in the flattened output tuple); -1 when onnxruntime failed
        to run the file at all.
    max_abs_error : float
        ``max |ort - torch|`` on that output (``inf`` for a shape or NaN mismatch).
    rel_error : float
        ``max_abs_error / max(1, max |torch|)``.
    atol : float
        The tolerance that ``rel_error`` exceeded.
    """

    def __init__(
        self,
        message: str,
        *,
        path: pathlib.Path,
        output_index: int,
        max_abs_error: float,
        rel_error: float,
        atol: float,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.output_index = output_index
        self.max_abs_error = max_abs_error
        self.rel_error = rel_error
        self.atol = atol


# --------------------------------------------------------------------------- helpers


def _model_device(model: nn.Module) -> torch.device | None:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if first is None else first.device


def _on_cpu(model: nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in itertools.chain(model.parameters(), model.buffers()))


class _EvalMode:
    """Puts every submodule in eval mode; restores each module's own flag on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, flag in self.flags:
            m.training = flag


def _default_names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


class _FlatOutputs(nn.Module):
    """``model`` with its output flattened to a tuple of tensors (dicts, lists and named
    tuples become ONNX outputs in :func:`~archdiscover.verify.flatten_outputs` order)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        return tuple(flatten_outputs(self.model(*inputs)))


def _output_names(out: Any, n: int) -> list[str]:
    """Default output names: a dict's keys (when they are distinct plain names), else
    ``output`` / ``output_0``, ``output_1``, ..."""
    if isinstance(out, Mapping) and len(out) == n:
        keys = [str(k) for k in out]
        if all(k.isidentifier() for k in keys) and len(set(keys)) == n:
            return keys
    return _default_names("output", n)


def _bins(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins: ``[floor(i n_in / n_out), ceil((i + 1) n_in / n_out))``."""
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


def _adaptive(original: Any, reduce: str, k: int) -> Any:
    """An adaptive pooling that the legacy exporter can export at any input size: where the
    output size does not divide the input size, one slice and reduction per output bin
    (the same bins, the same arithmetic)."""

    def pool(x: Tensor, output_size: Any, *args: Any, **kwargs: Any) -> Any:
        size = [output_size] * k if isinstance(output_size, int) else list(output_size)
        with warnings.catch_warnings():  # constants on purpose: the bins are fixed at export
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            dims = [int(d) for d in x.shape[-k:]]
        size = [d if s is None else int(s) for s, d in zip(size, dims, strict=True)]
        if all(d % s == 0 for s, d in zip(size, dims, strict=True)) or kwargs.get("return_indices"):
            return original(x, tuple(size) if k > 1 else size[0], *args, **kwargs)
        out = x
        for axis in range(k):  # separable: one dim at a time
            dim = x.dim() - k + axis
            parts = []
            for a, b in _bins(dims[axis], size[axis]):
                piece = out.narrow(dim, a, b - a)
                parts.append(
                    piece.mean(dim, keepdim=True)
                    if reduce == "mean"
                    else piece.amax(dim, keepdim=True)
                )
            out = torch.cat(parts, dim)
        return out

    return pool


def _channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """``F.channel_shuffle`` as reshape, transpose, reshape (which ONNX has)."""
    b, c = x.shape[0], x.shape[1]
    rest = x.shape[2:]
    y = x.reshape(b, groups, c // groups, *rest).transpose(1, 2)
    return y.reshape(b, c, *rest)


class _ExactAdaptivePooling:
    """Within this context, ``F.adaptive_avg_pool{1,2,3}d`` / ``F.adaptive_max_pool{1,2,3}d``
    are the sliced versions of :func:`_adaptive` (what nn.Adaptive*Pool* modules call), and
    ``F.channel_shuffle`` (``nn.ChannelShuffle``) is a reshape and a transpose: the same
    values, in operations the legacy exporter has."""

    names = tuple((f"adaptive_{r}_pool{k}d", r, k) for r in ("avg", "max") for k in (1, 2, 3))

    def __enter__(self) -> None:
        import torch.nn.functional as F

        self.saved = {n: getattr(F, n) for n, _, _ in self.names}
        for n, r, k in self.names:
            setattr(F, n, _adaptive(self.saved[n], "mean" if r == "avg" else "max", k))
        for n in ("channel_shuffle", "native_channel_shuffle"):
            if hasattr(F, n):
                self.saved[n] = getattr(F, n)
                setattr(F, n, _channel_shuffle)

    def __exit__(self, *exc: object) -> None:
        import torch.nn.functional as F

        for n, fn in self.saved.items():
            setattr(F, n, fn)


def _check_names(names: Sequence[str] | None, n: int, prefix: str, what: str) -> list[str]:
    if names is None:
        return _default_names(prefix, n)
    names = list(names)
    if len(names) != n:
        raise ValueError(f"{what} has {len(names)} names {names} but the model has {n} {prefix}s")
    if len(set(names)) != n:
        raise ValueError(f"{what} {names} contains duplicates")
    return names


def _to_numpy(x: Tensor) -> np.ndarray:
    return x.detach().cpu().contiguous().numpy()


def _feed(
    session: ort.InferenceSession, inputs: tuple[Tensor, ...], names: Sequence[str] | None
) -> dict[str, np.ndarray]:
    graph_inputs = [i.name for i in session.get_inputs()]
    if names is not None and set(graph_inputs) <= set(names):
        # The exporter drops inputs the graph does not use; feed the others by name.
        by_name = dict(zip(names, inputs, strict=True))
        return {n: _to_numpy(by_name[n]) for n in graph_inputs}
    if len(graph_inputs) != len(inputs):
        raise ValueError(
            f"the ONNX graph has {len(graph_inputs)} inputs {graph_inputs} but {len(inputs)} "
            "tensors were given"
        )
    return {n: _to_numpy(x) for n, x in zip(graph_inputs, inputs, strict=True)}


def _verify(
    session: ort.InferenceSession,
    model: nn.Module,
    input_sets: Sequence[tuple[str, tuple[Tensor, ...]]],
    atol: float,
    display_path: pathlib.Path,
    input_names: Sequence[str] | None = None,
) -> float:
    """Largest relative error over all input sets and outputs; raises beyond ``atol``."""
    device = _model_device(model)
    worst = (-1.0, 0.0, 0, "")  # rel, abs, output index, label
    with _EvalMode(model), torch.no_grad():
        for label, inputs in input_sets:
            feed = _feed(session, inputs, input_names)
            try:
                ort_outs = session.run(None, feed)
            except Exception as e:  # e.g. a shape the trace froze, run at another batch size
                raise OnnxVerificationError(
                    f"onnxruntime failed to run {display_path} on {label}: {type(e).__name__}: {e}",
                    path=display_path,
                    output_index=-1,
                    max_abs_error=math.inf,
                    rel_error=math.inf,
                    atol=atol,
                ) from e
            dev_inputs = tuple(x.to(device) for x in inputs) if device is not None else inputs
            refs = flatten_outputs(model(*dev_inputs))
            if len(ort_outs) != len(refs):
                raise OnnxVerificationError(
                    f"{display_path}: onnxruntime returned {len(ort_outs)} outputs, torch "
                    f"{len(refs)} (on {label})",
                    path=display_path,
                    output_index=min(len(ort_outs), len(refs)),
                    max_abs_error=math.inf,
                    rel_error=math.inf,
                    atol=atol,
                )
            for k, (got, ref) in enumerate(zip(ort_outs, refs, strict=True)):
                max_abs, rel, note = output_error(got, ref)
                if rel > worst[0]:
                    worst = (rel, max_abs, k, f"{label}{'; ' + note if note else ''}")
    rel, max_abs, k, label = worst
    if rel > atol:
        raise OnnxVerificationError(
            f"onnxruntime disagrees with torch on output {k} of {display_path}: max abs error "
            f"{max_abs:.3g}, relative error {rel:.3g} (max abs error / max(1, max |torch "
            f"output|)) > atol {atol:g}, on {label}",
            path=display_path,
            output_index=k,
            max_abs_error=max_abs,
            rel_error=rel,
            atol=atol,
        )
    return max(rel, 0.0)


def _check_atol(atol: float) -> None:
    if not (isinstance(atol, (int, float)) and atol >= 0 and math.isfinite(atol)):
        raise ValueError(f"atol must be a finite number >= 0, got {atol!r}")


def _existing_file(path: _PathLike) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ONNX file {p} does not exist")
    return p


# --------------------------------------------------------------------------- export


def export_onnx(
    model: nn.Module,
    path: _PathLike,
    example_inputs: _Inputs,
    *,
    dynamic_batch: bool = True,
    atol: float = 1e-5,
    opset: int | None = None,
    dynamo: bool = False,
    verify: bool = True,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> pathlib.Path:
    """Export ``model`` to ONNX, check it, verify it in onnxruntime, then write it atomically.

    Parameters
    ----------
    model : nn.Module
        Any module whose forward takes tensors and returns a tensor or a (nested) tuple/list of
        tensors. It is put in eval mode for the export and each submodule's training flag is
        restored afterwards; nothing else is changed. A model with parameters off the CPU is
        exported (and verified) from a CPU deep copy.
    path : str or os.PathLike
        Destination file. Its parent directory must exist.
    example_inputs : Tensor or tuple of Tensor
        One tensor per positional argument of ``forward``.
    dynamic_batch : bool, default True
        Make dim 0 of every input and output dynamic, named ``"batch"``.
    atol : float, default 1e-5
        Tolerance on ``max |ort - torch| / max(1, max |torch|)``.
    opset : int, optional
        ONNX opset; the exporter's default when None.
    dynamo : bool, default False
        Use the ``torch.export``-based exporter instead of the legacy TorchScript one (about
        ten times slower here, but the one torch develops).
    verify : bool, default True
        Run the file in onnxruntime on the example inputs and on seeded random inputs (at batch
        size ``batch + 3`` with ``dynamic_batch``) and compare with torch.
    input_names, output_names : sequence of str, optional
        Graph names; default ``"input"`` / ``"output"``, or ``"input_0"``, ``"input_1"``, ...
        when there are several.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FileNotFoundError
        The parent directory of ``path`` does not exist.
    OnnxExportError
        ``torch.onnx.export`` failed or ``onnx.checker`` rejected the file.
    OnnxVerificationError
        onnxruntime disagrees with torch beyond ``atol``; nothing is written to ``path``.

    Notes
    -----
    The model is written as a single file (no external data), so it must stay under ONNX's
    2 GB protobuf limit. A file already at ``path`` is only replaced once the new one passed
    every check.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_atol(atol)
    inputs = as_inputs(example_inputs)
    dest = pathlib.Path(path)
    parent = dest.parent
    if not parent.is_dir():
        raise FileNotFoundError(
            f"cannot write {dest}: its parent directory {parent} does not exist"
        )
    if dest.is_dir():
        raise IsADirectoryError(f"cannot write the ONNX file {dest}: it is a directory")
    if dynamic_batch:
        for i, x in enumerate(inputs):
            if x.dim() == 0:
                raise ValueError(
                    f"dynamic_batch=True needs a batch dim on every input, but input {i} is 0-d"
                )
    cpu_inputs = tuple(x.detach().cpu() for x in inputs)
    export_model = model if _on_cpu(model) else copy.deepcopy(model).cpu()
    flat_model = _FlatOutputs(export_model)
    flat_model.training = False  # the wrapper only; _EvalMode below handles the model

    tmp = parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.{os.getpid()}.tmp"
    try:
        with _EvalMode(model), _EvalMode(export_model):
            with torch.no_grad():
                raw = export_model(*cpu_inputs)
                n_out = len(flatten_outputs(raw))
            in_names = _check_names(input_names, len(inputs), "input", "input_names")
            out_names = (
                _check_names(output_names, n_out, "output", "output_names")
                if output_names is not None
                else _output_names(raw, n_out)
            )
            _export_any(
                flat_model, cpu_inputs, tmp, dynamo, opset, dynamic_batch, in_names, out_names
            )
            if not tmp.is_file():
                raise OnnxExportError(f"torch.onnx.export wrote no file for {dest}")
            try:
                onnx.checker.check_model(str(tmp))
            except Exception as e:
                raise OnnxExportError(
                    f"onnx.checker rejected the model exported for {dest}: {e}"
                ) from e
            if verify:
                sets = [("the example inputs", cpu_inputs)]
                batch = inputs[0].shape[0] + 3 if dynamic_batch else None
                label = f"random inputs at batch size {batch}" if dynamic_batch else "random inputs"
                sets.append((label, fresh_inputs(cpu_inputs, 0, batch)))
                session = ort_session(tmp)
                _verify(session, export_model, sets, atol, dest, in_names)
                del session
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _export_any(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    tmp: pathlib.Path,
    dynamo: bool,
    opset: int | None,
    dynamic_batch: bool,
    in_names: list[str],
    out_names: list[str],
) -> None:
    """The chosen exporter. The legacy one runs with adaptive pooling sliced into its bins
    where they are unequal (it cannot export those); if it still fails, the dynamo one."""
    args = (model, inputs, tmp, dynamo, opset, dynamic_batch, in_names, out_names)
    if dynamo:
        _run_exporter(*args)
        return
    try:
        with _ExactAdaptivePooling():
            _run_exporter(*args)
        return
    except OnnxExportError as e:
        first = e
    try:
        _run_exporter(model, inputs, tmp, True, opset, dynamic_batch, in_names, out_names)
    except OnnxExportError:
        raise first from None


def _run_exporter(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    tmp: pathlib.Path,
    dynamo: bool,
    opset: int | None,
    dynamic_batch: bool,
    in_names: list[str],
    out_names: list[str],
) -> None:
    kwargs: dict[str, Any] = {
        "input_names": in_names,
        "output_names": out_names,
        "dynamo": dynamo,
    }
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamo:
        kwargs["external_data"] = False  # one self-contained file, so os.replace moves it all
        kwargs["verbose"] = False
        if dynamic_batch:
            batch = torch.export.Dim("batch")
            shapes = tuple({0: batch} for _ in inputs)
            # _FlatOutputs takes *inputs: one parameter holding all of them
            kwargs["dynamic_shapes"] = (shapes,) if isinstance(model, _FlatOutputs) else shapes
    elif dynamic_batch:
        kwargs["dynamic_axes"] = {n: {0: "batch"} for n in (*in_names, *out_names)}
    with warnings.catch_warnings():
        for pattern in _EXPORT_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            torch.onnx.export(model, inputs, str(tmp), **kwargs)
        except Exception as e:
            which = "dynamo (torch.export)" if dynamo else "legacy (TorchScript)"
            name = type(model.model if isinstance(model, _FlatOutputs) else model).__name__
            raise OnnxExportError(
                f"torch.onnx.export with the {which} exporter failed for "
                f"{name}: {type(e).__name__}: {e}"
            ) from e


def verify_onnx(path: _PathLike, model: nn.Module, inputs: _Inputs, atol: float = 1e-5) -> float:
    """Compare an ONNX file in onnxruntime against ``model`` on ``inputs``.

    Parameters
    ----------
    path : str or os.PathLike
        The ONNX file; its graph inputs are fed in order.
    model : nn.Module
        Reference, run under ``torch.no_grad`` in eval mode (each submodule's training flag is
        restored afterwards) on the device of its parameters. On CUDA, TF32 may add errors of
        about 1e-3; export from or compare against a CPU copy for a tight tolerance.
    inputs : Tensor or tuple of Tensor
        One tensor per positional argument of ``forward``.
    atol : float, default 1e-5
        Tolerance on ``max |ort - torch| / max(1, max |torch|)``.

    Returns
    -------
    float
        The largest such error over all outputs.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    OnnxVerificationError
        The error exceeds ``atol`` (or output counts/shapes differ).
    """
    _check_atol(atol)
    p = _existing_file(path)
    xs = as_inputs(inputs, "inputs")
    session = ort_session(p)
    return _verify(session, model, [("the given inputs", xs)], atol, p)


def ort_session(path: _PathLike, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime session on the CPU with all graph optimizations on.

    Parameters
    ----------
    path : str or os.PathLike
        The ONNX file.
    threads : int, optional
        ``intra_op_num_threads``; onnxruntime's default (one per physical core) when None.

    Returns
    -------
    onnxruntime.InferenceSession
    """
    p = _existing_file(path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])
