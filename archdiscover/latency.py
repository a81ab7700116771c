"""onnxruntime latency: median / p10 / p90 / min per batch size, for any one-input ONNX file.

* :func:`onnx_latency` -- one model;
* :func:`compare_latency` -- two models on the same inputs, measured interleaved (blocks of
  runs alternate between them), so that slow phases of a busy machine hit both alike.

Times are ``time.perf_counter`` around ``session.run`` (the sessions of
:func:`archdiscover.export.ort_session`: CPU provider, all graph optimizations).
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from .export import ort_session

__all__ = ["Latency", "compare_latency", "onnx_latency"]

_PathLike = str | os.PathLike


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
    p = pathlib.Path(path)
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
    dense_p, compact_p = pathlib.Path(dense_path), pathlib.Path(compact_path)
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
