"""Shared pieces of the paper-experiment scripts: one training run, counts, compile + latency."""

from __future__ import annotations

import pathlib
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import archdiscover as ad
from archdiscover.engine import RunResult, TrainConfig, load_split, train
from archdiscover.export import export_onnx
from archdiscover.latency import compare_latency
from archdiscover.plots import epoch_axis, log_axis, series_styles


def sd(xs: Sequence[float]) -> float:
    """Sample standard deviation (0 for one value)."""
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def train_run(
    cfg: Mapping[str, Any], root: pathlib.Path, name: str
) -> tuple[RunResult, list[dict], float]:
    """Train ``cfg`` in ``root/name``; return the result, the per-epoch log and the seconds."""
    log: list[dict] = []
    t0 = time.perf_counter()
    res = train(dict(cfg), root / name.replace(" ", "_"), progress=False, on_epoch=log.append)
    seconds = time.perf_counter() - t0
    last = log[-1]
    metric = f"{last['val_psnr']:.2f} dB" if "val_psnr" in last else f"{last['val_accuracy']:.2f}%"
    print(
        f"{name:34s}: {metric} at {100 * last['weight_density']:.2f}% non-zero weights, "
        f"{100 * last['unit_density']:.1f}% of the units active "
        f"{list(last['active_units'].values())} ({seconds:.1f} s)",
        file=sys.stderr,
        flush=True,
    )
    return res, log, seconds


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent (eval mode, batches of 512)."""
    model.eval()
    correct = sum(
        int((model(x[i : i + 512]).argmax(1) == y[i : i + 512]).sum())
        for i in range(0, len(x), 512)
    )
    return 100.0 * correct / len(x)


def train_accuracy(res: RunResult, cfg: Mapping[str, Any]) -> float:
    """Accuracy of a finished run on its own training split."""
    split = load_split(TrainConfig.from_dict(cfg))
    x, y = split.train.tensors
    dev = next(res.model.parameters()).device
    return accuracy(res.model, x.to(dev), y.to(dev))


@torch.no_grad()
def weight_density(model: nn.Module) -> dict[str, float]:
    """Non-zero weights in percent: of the convolutions, of the Linear layers, of all
    weights (``N_conv``, ``N_linear``, ``N_total`` in the paper's tables; biases and
    BatchNorm parameters not counted)."""
    counts = {"conv": [0, 0], "linear": [0, 0]}
    for m in model.modules():
        kind = (
            "linear"
            if isinstance(m, nn.Linear)
            else "conv"
            if isinstance(m, nn.modules.conv._ConvNd)
            else None
        )
        if kind:
            counts[kind][0] += int(torch.count_nonzero(m.weight))
            counts[kind][1] += m.weight.numel()
    nz = counts["conv"][0] + counts["linear"][0]
    tot = counts["conv"][1] + counts["linear"][1]
    return {
        "conv": 100.0 * counts["conv"][0] / max(1, counts["conv"][1]),
        "linear": 100.0 * counts["linear"][0] / max(1, counts["linear"][1]),
        "total": 100.0 * nz / max(1, tot),
    }


def compile_and_time(
    model: nn.Module,
    example: torch.Tensor,
    tmp: pathlib.Path,
    *,
    quick: bool,
    name: str = "model",
    round_to: int | str = 1,
    batch_sizes: Sequence[int] = (1, 64),
) -> tuple[ad.Compiled, dict[str, Any]]:
    """Compile (verified), export both models to ONNX (verified against torch) and time them
    in onnxruntime, interleaved. Returns the compiled model and a JSON-ready summary."""
    model = model.cpu().eval()
    example = example.cpu()
    t0 = time.perf_counter()
    c = ad.compile(model, example, round_to=round_to, auto_batch_sizes=batch_sizes)
    compile_s = time.perf_counter() - t0
    dense = export_onnx(model, tmp / f"{name}_dense.onnx", example)
    compact = c.export_onnx(tmp / f"{name}_compact.onnx")
    lat = compare_latency(
        dense, compact, tuple(example.shape[1:]), tuple(batch_sizes), **latency_reps(quick)
    )
    r = c.report
    summary = {
        "params_dense": r.params_before,
        "params_compact": r.params_after,
        "params_fraction": r.params_after / r.params_before,
        "flops_dense": r.flops_before,
        "flops_compact": r.flops_after,
        "flops_fraction": r.flops_after / r.flops_before,
        "depth": [r.depth_before, r.depth_after],
        "widths": {k: list(v) for k, v in r.layers.items()},
        "round_to": r.round_to,
        "max_rel_error": r.max_error,
        "compile_seconds": compile_s,
        "latency_ms": latency_summary(lat),
    }
    return c, summary


def latency_reps(quick: bool) -> dict[str, int]:
    """``compare_latency`` repetitions: a few for ``--quick``, 60 per model otherwise."""
    return dict(warmup=2, repeats=6, rounds=2) if quick else dict(warmup=5, repeats=60, rounds=6)


def latency_summary(lat: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``compare_latency``'s result as JSON: per batch size, the two medians and the ratio."""
    return {
        str(b): {
            "dense": v["dense"]["median_ms"],
            "compact": v["compact"]["median_ms"],
            "speedup": v["speedup"],
        }
        for b, v in lat.items()
    }


def from_start(log: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    """``scale * record[key]`` per epoch from epoch 0: the sparse start (the ``initial`` entry
    the engine logs with epoch 1), then every epoch."""
    first = log[0].get("initial", {}) if log else {}
    head = [scale * first[key]] if key in first else []
    return head + [scale * r[key] for r in log]


def plot_density_per_epoch(
    curves: Mapping[str, Sequence[float]],
    path: pathlib.Path,
    title: str,
    dashed: Any = lambda name: False,
) -> pathlib.Path:
    """Non-zero weights (%) against the epoch (from 0, the sparse start, when the curves hold
    it: see :func:`from_start`), one line per run (``dashed(name)``: dashed). Coinciding
    curves (several runs at 100%) stay visible: each has its own marker positions."""
    fig = Figure(figsize=(8, 5), dpi=120)
    ax = fig.add_subplot()
    styles = series_styles(len(curves))
    for (name, ys), style in zip(curves.items(), styles, strict=True):
        style = {**style, "ls": "--" if dashed(name) else "-"}
        ax.plot(range(len(ys)), ys, label=name, **style)
    log_axis(ax, "y")
    epoch_axis(ax)
    ax.set_ylabel("non-zero weights (%, log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


MNIST_LIKE = ("mnist5k", "mnist", "fashion_mnist")


def add_data_args(ap: Any, choices: Sequence[str] = MNIST_LIKE) -> None:
    """``--dataset`` and ``--data-dir``: the full sets (MNIST, Fashion-MNIST, CIFAR-10) are
    read from the user's directory (or ``$ARCHDISCOVER_DATA``)."""
    ap.add_argument("--dataset", default="mnist5k", choices=list(choices))
    ap.add_argument("--data-dir", help="folder with the dataset's files (full sets only)")


def data_keys(args: Any) -> dict[str, Any]:
    """The ``TrainConfig`` keys for the chosen data."""
    return {"dataset": args.dataset, "data_dir": args.data_dir}
