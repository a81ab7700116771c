"""A one-pass CPU kernel for LinBreg with row-group sparsity (C, built on first use).

For a weight whose groups are its rows (``GroupL12(axis=0)`` on a Linear or Conv weight:
the norm runs over every dim but the first), one call does, row by row and in parallel
over rows (OpenMP, the same runtime torch uses)::

    b = momentum * b + (1 - dampening) * g          (if momentum)
    d = g + momentum * b  (nesterov)  or  b         (or g without momentum)
    v = v - lr * d
    theta = (delta v) * max(0, 1 - delta t / ||delta v||_row)

The row is still in the L1 cache when its norm is known, so the prox costs no second pass
over memory: 3 reads and 3 writes per entry, against the 5 reads and 2 writes of
``torch.optim.SGD``'s default momentum step on the CPU. torch's inductor generates two
passes for the row norm (measured slower than the plain path), hence this kernel.

It is built with the system C compiler (``cc``/``gcc``/``clang``) into
``$XDG_CACHE_HOME/archdiscover`` (default ``~/.cache/archdiscover``) the first time it is
needed; if that fails, :func:`load` returns None and the optimizer keeps its plain path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import warnings

import torch
from torch import Tensor

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
/* the linear part: momentum, direction, v -= lr d (writes b and v) */
#define LINEAR(T, n, g, b, v)                                                                  \
    if (use_mom && !nesterov) {                                                                \
        _Pragma("omp simd")                                                                    \
        for (int64_t j = 0; j < n; ++j) {                                                      \
            T bi = mom * b[j] + keep * g[j]; b[j] = bi; v[j] = v[j] - lr * bi; }              \
    } else if (use_mom) {                                                                      \
        _Pragma("omp simd")                                                                    \
        for (int64_t j = 0; j < n; ++j) {                                                      \
            T gi = g[j]; T bi = mom * b[j] + keep * gi; b[j] = bi;                             \
            v[j] = v[j] - lr * (gi + mom * bi); }                                              \
    } else {                                                                                   \
        _Pragma("omp simd")                                                                    \
        for (int64_t j = 0; j < n; ++j) v[j] = v[j] - lr * g[j];                              \
    }

/* row groups: theta_row = (delta v_row) max(0, 1 - thresh / ||delta v_row||) */
#define ROWS(NAME, T, SQRT)                                                                    \
void NAME(T* restrict p, const T* restrict g, T* restrict b, T* restrict v, int64_t rows,     \
          int64_t cols, T lr, T delta, T mom, T damp, int use_mom, int nesterov, T thresh,     \
          int nthreads) {                                                                      \
    const T keep = 1 - damp;                                                                   \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                        \
    for (int64_t r = 0; r < rows; ++r) {                                                       \
        T* restrict pr = p + r * cols;                                                         \
        const T* restrict gr = g + r * cols;                                                   \
        T* restrict br = b + r * cols;                                                         \
        T* restrict vr = v + r * cols;                                                         \
        LINEAR(T, cols, gr, br, vr)                                                            \
        T sumsq = 0;                                                                           \
        _Pragma("omp simd reduction(+:sumsq)")                                                \
        for (int64_t j = 0; j < cols; ++j) sumsq += vr[j] * vr[j];                            \
        T norm = delta * SQRT(sumsq);                                                          \
        T scale = norm > thresh ? delta * (1 - thresh / norm) : 0;                             \
        _Pragma("omp simd")                                                                    \
        for (int64_t j = 0; j < cols; ++j) pr[j] = vr[j] * scale;                             \
    }                                                                                          \
}

/* entries: theta = soft(delta v, thresh) (mode 1) or delta v (mode 0), in cache-sized blocks */
#define ENTRIES(NAME, T)                                                                       \
void NAME(T* restrict p, const T* restrict g, T* restrict b, T* restrict v, int64_t n,        \
          T lr, T delta, T mom, T damp, int use_mom, int nesterov, T thresh, int mode,         \
          int nthreads) {                                                                      \
    const T keep = 1 - damp;                                                                   \
    const int64_t blk = 2048;                                                                  \
    const int64_t nblk = (n + blk - 1) / blk;                                                  \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if(n > 65536)")         \
    for (int64_t k = 0; k < nblk; ++k) {                                                       \
        int64_t s = k * blk, m = n - s < blk ? n - s : blk;                                    \
        T* restrict pk = p + s;                                                                \
        const T* restrict gk = g + s;                                                          \
        T* restrict bk = b + s;                                                                \
        T* restrict vk = v + s;                                                                \
        LINEAR(T, m, gk, bk, vk)                                                               \
        if (mode == 1) {                                                                       \
            _Pragma("omp simd")                                                                \
            for (int64_t j = 0; j < m; ++j) {                                                  \
                T x = delta * vk[j];                                                           \
                T c = x < -thresh ? -thresh : (x > thresh ? thresh : x);                       \
                pk[j] = x - c; }                                                               \
        } else {                                                                               \
            _Pragma("omp simd")                                                                \
            for (int64_t j = 0; j < m; ++j) pk[j] = delta * vk[j];                            \
        }                                                                                      \
    }                                                                                          \
}
ROWS(linbreg_rows_f32, float, sqrtf)
ROWS(linbreg_rows_f64, double, sqrt)
ENTRIES(linbreg_entries_f32, float)
ENTRIES(linbreg_entries_f64, double)
"""


def _cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "archdiscover"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return os.uname().machine if hasattr(os, "uname") else ""


def _build(target: pathlib.Path) -> None:
    cc = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = pathlib.Path(tmp) / "rowkernel.c"
        src.write_text(_SOURCE)
        out = pathlib.Path(tmp) / target.name
        cmd = [
            cc,
            "-O3",
            "-march=native",
            "-fopenmp",
            "-shared",
            "-fPIC",
            str(src),
            "-o",
            str(out),
            "-lm",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()[:500]}")
        os.replace(out, target)  # atomic: concurrent builders never see a partial file


def _paths() -> tuple[pathlib.Path, pathlib.Path]:
    # -march=native: the file is specific to this CPU (a shared home may see several)
    digest = hashlib.sha256((_SOURCE + _cpu_flags()).encode()).hexdigest()[:16]
    base = _cache_dir() / f"rowkernel-{digest}"
    return base.with_suffix(".so"), base.with_suffix(".failed")


def failure() -> str | None:
    """Why the kernel could not be built here (remembered on disk), or None."""
    _, failed = _paths()
    try:
        return failed.read_text().strip() or "unknown error"
    except OSError:
        return None


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernels, or None when they cannot be built here.

    A failed build warns once and is remembered beside the would-be library
    (``rowkernel-<hash>.failed``): later processes and ranks neither rebuild nor warn again
    (delete that file to retry). ``ARCHDISCOVER_NO_CKERNEL=1`` turns the kernel off.
    """
    if os.environ.get("ARCHDISCOVER_NO_CKERNEL"):
        return None
    target, failed = _paths()
    if failed.exists() and not target.exists():
        return None
    try:
        if not target.exists():
            _build(target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        try:
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.write_text(f"{type(e).__name__}: {e}\n")
        except OSError:
            pass
        warnings.warn(
            f"archdiscover: LinBreg's C kernel could not be built ({e}); using the foreach "
            f"path (remembered in {failed})",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix, ct in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        rows = getattr(lib, f"linbreg_rows_{suffix}")
        rows.restype = None
        rows.argtypes = [p, p, p, p, i64, i64, ct, ct, ct, ct, i32, i32, ct, i32]
        entries = getattr(lib, f"linbreg_entries_{suffix}")
        entries.restype = None
        entries.argtypes = [p, p, p, p, i64, ct, ct, ct, ct, i32, i32, ct, i32, i32]
    return lib


def mode(kind: str, dims: tuple[int, ...], p: Tensor) -> int | None:
    """Kernel mode for a prox spec: 0 none, 1 entries (L1), 2 rows; None if not covered."""
    if kind == "null":
        return 0
    if kind == "l1" or (kind == "group" and dims == ()):
        return 1  # a group per entry is the entrywise soft threshold
    if kind == "group" and p.dim() >= 2 and dims == tuple(range(1, p.dim())):
        return 2
    return None


def eligible(p: Tensor, g: Tensor, v: Tensor, b: Tensor | None) -> bool:
    """Whether the kernel can run on these tensors: CPU, float32/64, contiguous."""
    if p.device.type != "cpu" or p.dtype not in (torch.float32, torch.float64):
        return False
    ts = (p, g, v) if b is None else (p, g, v, b)
    return all(t.dtype == p.dtype and t.is_contiguous() and t.device == p.device for t in ts)


def linbreg_(
    lib: ctypes.CDLL,
    kernel_mode: int,
    p: Tensor,
    g: Tensor,
    v: Tensor,
    b: Tensor | None,
    *,
    lr: float,
    delta: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    thresh: float,
) -> None:
    """One LinBreg step of one tensor, in place (``p``, ``v`` and ``b``).

    ``thresh`` is the prox threshold per unit step (``lam`` or ``lam sqrt(|g|)``); the
    kernel shrinks ``delta v`` by ``delta * thresh``.
    """
    suffix = "f32" if p.dtype == torch.float32 else "f64"
    use_mom = b is not None
    ptrs = (p.data_ptr(), g.data_ptr(), (b if use_mom else v).data_ptr(), v.data_ptr())
    common = (lr, delta, momentum, dampening, int(use_mom), int(nesterov), delta * thresh)
    threads = torch.get_num_threads()
    if kernel_mode == 2:
        rows = p.shape[0]
        cols = p.numel() // rows if rows else 0
        getattr(lib, f"linbreg_rows_{suffix}")(*ptrs, rows, cols, *common, threads)
    else:
        entries = getattr(lib, f"linbreg_entries_{suffix}")
        entries(*ptrs, p.numel(), *common, kernel_mode, threads)
    # the kernel wrote behind autograd's back: bump the version counters, so that a graph
    # that saved the old values raises "modified by an inplace operation" as after SGD
    torch.autograd.graph.increment_version(p)
    torch.autograd.graph.increment_version(v)
    if use_mom:
        torch.autograd.graph.increment_version(b)
