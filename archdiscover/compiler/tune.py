"""``round_to="auto"``: compile with widths rounded to 1, 4, 8, 16 and keep the fastest.

Each distinct candidate is exported to ONNX and timed in onnxruntime on this machine,
interleaved so that machine noise hits all alike. The score is the geometric mean over the
batch sizes of the latency relative to the first candidate (batch 1 and batch 64 weigh
alike). Candidates within 3% of the fastest cannot be told apart on a shared machine; among
those the largest multiple wins: a width that is a multiple of 16 is as fast on every SIMD
width up to 16 floats (AVX2 computes in blocks of 8 channels, AVX-512 of 16), so the
exported model keeps its speed on the CPU it is deployed to, not only on this one.
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Sequence

from torch import nn

from .._inputs import Inputs
from .._io import alive
from ..latency import onnx_latency
from .pipeline import Compiled, checked_inputs, compile_once

__all__ = ["PREFIX", "ROUND_CANDIDATES", "compile_auto", "remove_stale_folders"]

ROUND_CANDIDATES = (1, 4, 8, 16)
#: temporary folders of the candidates: ``<tmp>/archdiscover-auto-<pid>-<random>``
PREFIX = "archdiscover-auto-"


def remove_stale_folders() -> list[pathlib.Path]:
    """Delete the candidate folders that killed compiles (their process is gone) left in the
    temporary directory; returns what was removed."""
    removed = []
    for d in pathlib.Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid = d.name[len(PREFIX) :].split("-", 1)[0]
        if not d.is_dir() or not pid.isdigit() or alive(int(pid)):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def compile_auto(
    model: nn.Module,
    example_inputs: Inputs,
    atol: float,
    strict: bool,
    n_random: int,
    batch_sizes: Sequence[int],
) -> Compiled:
    """:func:`archdiscover.compile` with ``round_to="auto"``."""
    t0 = time.perf_counter()
    inputs = checked_inputs(model, example_inputs)
    if len(inputs) != 1:
        raise ValueError("round_to='auto' measures latency for single-input models only")
    results: dict[int, Compiled] = {}
    paths: dict[int, pathlib.Path] = {}
    remove_stale_folders()
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-") as tmp:
        for r in ROUND_CANDIDATES:
            c = compile_once(model, inputs, atol, r, strict, n_random)
            widths = _widths(c)
            dup = next((q for q, d in results.items() if _widths(d) == widths), None)
            results[r] = c
            if dup is None:
                paths[r] = c.export_onnx(pathlib.Path(tmp) / f"r{r}.onnx", atol=atol)
        timings: dict[int, dict[str, float]] = {}
        shape = tuple(inputs[0].shape[1:])
        ordered = list(paths)
        for rnd in range(3):  # interleave candidates so that machine noise hits all alike
            for r in ordered if rnd % 2 == 0 else reversed(ordered):
                lat = onnx_latency(paths[r], shape, batch_sizes, warmup=2, repeats=8)
                for b, v in lat.items():
                    key = str(b)
                    prev = timings.setdefault(r, {}).get(key)
                    timings[r][key] = v.median_ms if prev is None else min(prev, v.median_ms)
    base = timings[ordered[0]]
    score = {
        r: math.exp(sum(math.log(t[k] / base[k]) for k in t) / len(t)) for r, t in timings.items()
    }
    fastest = min(score.values())
    best = max(r for r in score if score[r] <= fastest * 1.03)
    chosen = results[best]
    chosen.report.auto = timings
    chosen.report.seconds = time.perf_counter() - t0
    return chosen


def _widths(c: Compiled) -> tuple[tuple[str, tuple[int, int]], ...]:
    return tuple(sorted(c.report.layers.items()))
