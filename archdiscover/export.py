"""ONNX export with verification, and onnxruntime latency measurement.

Works on any ``nn.Module``; imports nothing else from archdiscover.

* :func:`export_onnx` -- ``torch.onnx.export`` (legacy TorchScript exporter by default, the
  ``torch.export``-based one with ``dynamo=True``) to a temporary file beside ``path``, then
  ``onnx.checker``, then a comparison against torch in onnxruntime (on the example inputs and on
  fresh random inputs at another batch size), and only then ``os.replace`` onto ``path``.
* :func:`verify_onnx` -- the same comparison for a file already written.
* :func:`ort_session` -- a CPU onnxruntime session with all graph optimizations.
* :func:`onnx_latency` / :func:`compare_latency` -- median / p10 / p90 / min latency per batch
  size; ``compare_latency`` alternates between two models so that machine noise hits both.

The error of a comparison is ``max |ort - torch| / max(1, max |torch|)``: absolute for outputs of
magnitude up to 1, relative to the output's scale beyond.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import pathlib
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

__all__ = [
    "Latency",
    "OnnxExportError",
    "OnnxVerificationError",
    "compare_latency",
    "export_onnx",
    "onnx_latency",
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


def _as_input_tuple(inputs: _Inputs, what: str = "example_inputs") -> tuple[Tensor, ...]:
    if isinstance(inputs, Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)):
        if not inputs:
            raise ValueError(f"{what} is empty; pass a tensor or a tuple of tensors")
        for i, x in enumerate(inputs):
            if not isinstance(x, Tensor):
                raise TypeError(f"{what}[{i}] is a {type(x).__name__}, not a torch.Tensor")
        return tuple(inputs)
    raise TypeError(
        f"{what} must be a torch.Tensor or a tuple of tensors, got {type(inputs).__name__}"
    )


def _flatten_outputs(out: Any, where: str = "output") -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        flat: list[Tensor] = []
        for i, o in enumerate(out):
            flat.extend(_flatten_outputs(o, f"{where}[{i}]"))
        return flat
    raise TypeError(
        f"model {where} is a {type(out).__name__}; only a tensor or (nested) tuples/lists of "
        "tensors can be exported and verified"
    )


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


def _check_names(names: Sequence[str] | None, n: int, prefix: str, what: str) -> list[str]:
    if names is None:
        return _default_names(prefix, n)
    names = list(names)
    if len(names) != n:
        raise ValueError(f"{what} has {len(names)} names {names} but the model has {n} {prefix}s")
    if len(set(names)) != n:
        raise ValueError(f"{what} {names} contains duplicates")
    return names


def _fresh_inputs(
    inputs: tuple[Tensor, ...], batch: int | None, seed: int = 0
) -> tuple[Tensor, ...]:
    """Random inputs like ``inputs`` (dtype, trailing shape); ``batch`` replaces dim 0.

    Floating inputs are standard normal; other dtypes (indices, masks) are rows drawn from the
    example with replacement, so that they stay valid for the model.
    """
    g = torch.Generator().manual_seed(seed)
    fresh = []
    for x in inputs:
        x = x.detach().cpu()
        shape = tuple(x.shape) if batch is None else (batch, *x.shape[1:])
        if x.is_floating_point():
            fresh.append(torch.randn(shape, generator=g, dtype=torch.float64).to(x.dtype))
        elif batch is None or x.dim() == 0:
            fresh.append(x.clone())
        else:
            idx = torch.randint(0, x.shape[0], (batch,), generator=g)
            fresh.append(x[idx].contiguous())
    return tuple(fresh)


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


def _output_error(ort_out: np.ndarray, ref: Tensor) -> tuple[float, float, str]:
    """(max abs error, error relative to the output scale, note) for one output."""
    want = ref.detach().cpu()
    if want.is_complex() or not isinstance(ort_out, np.ndarray):
        raise TypeError(f"cannot compare an output of dtype {want.dtype}")
    want_np = want.to(torch.float64).numpy()
    got = np.asarray(ort_out).astype(np.float64)
    if got.shape != want_np.shape:
        return math.inf, math.inf, f"shape {got.shape} from onnxruntime, {want_np.shape} from torch"
    if got.size == 0:
        return 0.0, 0.0, ""
    same = (got == want_np) | (np.isnan(got) & np.isnan(want_np))  # equal infs, both NaN
    if not np.all(same | (np.isfinite(got) & np.isfinite(want_np))):
        return math.inf, math.inf, "NaN/inf where the other side has none"
    diff = np.where(same, 0.0, np.abs(got - want_np))
    max_abs = float(diff.max())
    finite = want_np[np.isfinite(want_np)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    return max_abs, max_abs / max(1.0, scale), ""


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
            refs = _flatten_outputs(model(*dev_inputs))
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
                max_abs, rel, note = _output_error(got, ref)
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
    inputs = _as_input_tuple(example_inputs)
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

    tmp = parent / f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with _EvalMode(model), _EvalMode(export_model):
            with torch.no_grad():
                n_out = len(_flatten_outputs(export_model(*cpu_inputs)))
            in_names = _check_names(input_names, len(inputs), "input", "input_names")
            out_names = _check_names(output_names, n_out, "output", "output_names")
            _run_exporter(
                export_model, cpu_inputs, tmp, dynamo, opset, dynamic_batch, in_names, out_names
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
                sets.append((label, _fresh_inputs(cpu_inputs, batch)))
                session = ort_session(tmp)
                _verify(session, export_model, sets, atol, dest, in_names)
                del session
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


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
            kwargs["dynamic_shapes"] = tuple({0: batch} for _ in inputs)
    elif dynamic_batch:
        kwargs["dynamic_axes"] = {n: {0: "batch"} for n in (*in_names, *out_names)}
    with warnings.catch_warnings():
        for pattern in _EXPORT_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            torch.onnx.export(model, inputs, str(tmp), **kwargs)
        except Exception as e:
            which = "dynamo (torch.export)" if dynamo else "legacy (TorchScript)"
            raise OnnxExportError(
                f"torch.onnx.export with the {which} exporter failed for "
                f"{type(model).__name__}: {type(e).__name__}: {e}"
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
    xs = _as_input_tuple(inputs, "inputs")
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


# --------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class Latency:
    """Latency of one batch size, in milliseconds per run."""

    batch_size: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    repeats: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_times(cls, batch_size: int, seconds: Sequence[float]) -> Latency:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p10, med, p90 = np.percentile(ms, [10, 50, 90])
        return cls(batch_size, float(med), float(p10), float(p90), float(ms.min()), len(ms))


def _check_latency_args(
    input_shape: Sequence[int],
    batch_sizes: Sequence[int],
    warmup: int,
    repeats: int,
    min_seconds: float,
) -> tuple[tuple[int, ...], list[int]]:
    def is_int(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    shape = tuple(input_shape)
    for d in shape:
        if not is_int(d) or d < 1:
            raise ValueError(
                f"input_shape {shape} must hold positive ints (no batch dim); got {d!r}"
            )
    sizes = list(batch_sizes)
    if not sizes:
        raise ValueError("batch_sizes is empty")
    for b in sizes:
        if not is_int(b) or b < 1:
            raise ValueError(f"batch sizes must be positive ints, got {b!r} in {sizes}")
    if not is_int(repeats) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not is_int(warmup) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not (isinstance(min_seconds, (int, float)) and min_seconds >= 0):
        raise ValueError(f"min_seconds must be >= 0, got {min_seconds!r}")
    return shape, [int(b) for b in sizes]


def _input_spec(session: ort.InferenceSession, path: pathlib.Path) -> tuple[str, list[Any]]:
    graph_inputs = session.get_inputs()
    if len(graph_inputs) != 1:
        names = [i.name for i in graph_inputs]
        raise ValueError(
            f"{path} has {len(graph_inputs)} inputs {names}; latency is measured for one input"
        )
    return graph_inputs[0].name, list(graph_inputs[0].shape)


def _check_shape(
    path: pathlib.Path, name: str, dims: list[Any], input_shape: tuple[int, ...], batch: int
) -> None:
    if len(dims) != len(input_shape) + 1:
        raise ValueError(
            f"input {name!r} of {path} has rank {len(dims)} ({dims}), but input_shape "
            f"{input_shape} plus a batch dim has rank {len(input_shape) + 1}"
        )
    if isinstance(dims[0], int) and dims[0] != batch:
        raise ValueError(
            f"input {name!r} of {path} has a fixed batch dim of {dims[0]}, so batch size {batch} "
            "cannot be run; export with dynamic_batch=True"
        )
    for i, (d, want) in enumerate(zip(dims[1:], input_shape, strict=True)):
        if isinstance(d, int) and d != want:
            raise ValueError(
                f"input {name!r} of {path} has shape {dims}: dim {i + 1} is {d}, but input_shape "
                f"gives {want}"
            )


def _timed_runs(
    session: ort.InferenceSession, feed: dict[str, np.ndarray], n: int, times: list[float]
) -> None:
    run = session.run
    for _ in range(n):
        t0 = time.perf_counter()
        run(None, feed)
        times.append(time.perf_counter() - t0)


def onnx_latency(
    path: _PathLike,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    *,
    warmup: int = 10,
    repeats: int = 50,
    min_seconds: float = 0.0,
    threads: int | None = None,
    dtype: Any = np.float32,
) -> dict[int, Latency]:
    """onnxruntime latency of a one-input ONNX model for each batch size.

    Parameters
    ----------
    path : str or os.PathLike
        The ONNX file (one graph input).
    input_shape : sequence of int
        Shape of one sample, without the batch dim, e.g. ``(3, 32, 32)``.
    batch_sizes : sequence of int, default (1, 64)
    warmup : int, default 10
        Untimed runs before timing, per batch size.
    repeats : int, default 50
        Timed runs per batch size (at least; see ``min_seconds``).
    min_seconds : float, default 0
        Keep timing until this much time has also passed; ``repeats`` in the result counts
        every timed run.
    threads : int, optional
        onnxruntime ``intra_op_num_threads``.
    dtype : numpy dtype, default float32
        Dtype of the random input.

    Returns
    -------
    dict of int to Latency
        One entry per batch size (``time.perf_counter`` around ``session.run``).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Bad arguments, a model with several inputs, or a fixed batch dim that differs from a
        requested batch size.
    """
    p = _existing_file(path)
    shape, sizes = _check_latency_args(input_shape, batch_sizes, warmup, repeats, min_seconds)
    session = ort_session(p, threads)
    name, dims = _input_spec(session, p)
    for b in sizes:
        _check_shape(p, name, dims, shape, b)
    rng = np.random.default_rng(0)
    result: dict[int, Latency] = {}
    for b in sizes:
        feed = {name: rng.standard_normal((b, *shape)).astype(dtype)}
        _timed_runs(session, feed, warmup, [])
        times: list[float] = []
        start = time.perf_counter()
        _timed_runs(session, feed, repeats, times)
        while time.perf_counter() - start < min_seconds:
            _timed_runs(session, feed, 1, times)
        result[b] = Latency.from_times(b, times)
    return result


def compare_latency(
    dense_path: _PathLike,
    compact_path: _PathLike,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    *,
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 5,
    min_seconds: float = 0.0,
    threads: int | None = None,
    dtype: Any = np.float32,
) -> dict[int, dict[str, Any]]:
    """Latency of two one-input ONNX models on the same inputs, measured interleaved.

    For each batch size both models get ``warmup`` untimed runs, then ``rounds`` rounds; each
    round times a block of about ``repeats / rounds`` runs of one model, then of the other (the
    order alternates between rounds), so that slow phases of a busy machine hit both alike.
    Further rounds run until ``min_seconds`` have passed for that batch size.

    Parameters
    ----------
    dense_path, compact_path : str or os.PathLike
        The two ONNX files; the speed-up is dense over compact.
    input_shape : sequence of int
        Shape of one sample, without the batch dim.
    batch_sizes : sequence of int, default (1, 64)
    warmup, repeats, min_seconds, threads, dtype
        As in :func:`onnx_latency`; ``repeats`` is the total per model and batch size.
    rounds : int, default 5
        Number of alternations (at most ``repeats``).

    Returns
    -------
    dict
        ``{batch_size: {"dense": Latency.to_dict(), "compact": Latency.to_dict(),
        "speedup": dense median / compact median}}``.
    """
    dense_p, compact_p = _existing_file(dense_path), _existing_file(compact_path)
    shape, sizes = _check_latency_args(input_shape, batch_sizes, warmup, repeats, min_seconds)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    rounds = min(rounds, repeats)
    blocks = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    sessions = {"dense": ort_session(dense_p, threads), "compact": ort_session(compact_p, threads)}
    names = {}
    for key, p in (("dense", dense_p), ("compact", compact_p)):
        name, dims = _input_spec(sessions[key], p)
        for b in sizes:
            _check_shape(p, name, dims, shape, b)
        names[key] = name
    rng = np.random.default_rng(0)
    result: dict[int, dict[str, Any]] = {}
    for b in sizes:
        x = rng.standard_normal((b, *shape)).astype(dtype)
        feeds = {k: {names[k]: x} for k in sessions}
        for k in sessions:
            _timed_runs(sessions[k], feeds[k], warmup, [])
        times: dict[str, list[float]] = {"dense": [], "compact": []}
        start = time.perf_counter()
        r = 0
        while r < rounds or time.perf_counter() - start < min_seconds:
            order = ("dense", "compact") if r % 2 == 0 else ("compact", "dense")
            n = blocks[r] if r < rounds else blocks[0]
            for k in order:
                _timed_runs(sessions[k], feeds[k], n, times[k])
            r += 1
        dense = Latency.from_times(b, times["dense"])
        compact = Latency.from_times(b, times["compact"])
        result[b] = {
            "dense": dense.to_dict(),
            "compact": compact.to_dict(),
            "speedup": dense.median_ms / compact.median_ms,
        }
    return result
