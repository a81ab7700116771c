"""A FLOPs budget: the lambda scheduler steers a group-sparse ConvNet to a target fraction of
the dense FLOPs; prints JSON, writes a PNG.

The Table 2 setting of ``convnet_mnist5k.py`` (kernel and neuron groups, LinBreg with the
paper's momentum, 10% of the groups at the start, positive biases; from Table 2's 1%
start at lam 0.01 the network jumps to 15% of the FLOPs in the first epoch and the
scheduler then moves nothing in 20 epochs) on MNIST 5k, with
``target_density`` set to the FLOPs target and the engine's ``measure`` hook returning the
FLOPs fraction of the compiled network (``archdiscover.compile``: dead channels and neurons
removed, exact) after every epoch. The ``LamScheduler`` divides ``lam`` by 1.5 when the
network is below the target and has stopped growing, multiplies it when above and still
growing. Reported: the FLOPs fraction and ``lam`` per epoch, where it lands against the target,
and the accuracy.

    python benchmarks/paper/flops_budget.py [--targets 0.25 0.1] [--epochs 20] [--patience 1]
    python benchmarks/paper/flops_budget.py --quick     # seconds: checks the script
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import add_data_args, data_keys

import archdiscover as ad
from archdiscover.engine import TrainConfig, load_split, train
from archdiscover.plots import epoch_axis, log_axis

CONFIG = dict(
    model="convnet",
    dataset="mnist5k",
    batch_size=64,
    optimizer="linbreg",
    lr=0.07,
    momentum=0.9,
    dampening=0.9,
    regularizer="kernels",
    lam=0.1,
    init_density=0.1,
    bias_init="positive",
)


def flops_fraction(example: torch.Tensor):
    """``measure`` for the engine: FLOPs of the compiled network / FLOPs of the supernet."""

    def measure(model: torch.nn.Module) -> float:
        r = ad.compile(model.eval(), example).report
        return r.macs_after / r.macs_before

    return measure


def run(
    targets: list[float],
    epochs: int,
    seed: int,
    quick: bool,
    out: pathlib.Path,
    patience: int,
    data: dict | None = None,
) -> dict:
    t_all = time.perf_counter()
    base = {**CONFIG, **(data or {})}
    example = load_split(TrainConfig.from_dict({**base, "seed": seed})).test.tensors[0][:8]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            cfg = {**base, "target_density": target, "epochs": epochs, "seed": seed}
            cfg["lam_patience"] = patience
            if quick:
                cfg["model_args"] = {"channels": [16, 16], "hidden": 32}
            log: list[dict] = []
            t0 = time.perf_counter()
            res = train(
                cfg,
                pathlib.Path(tmp) / f"target-{target}",
                progress=False,
                on_epoch=log.append,
                measure=flops_fraction(example),
            )
            secs = time.perf_counter() - t0
            final = ad.compile(res.model.eval(), example).report
            landed = final.macs_after / final.macs_before
            results[f"{target:g}"] = {
                "target_flops_fraction": target,
                "final_flops_fraction": landed,
                "relative_miss": (landed - target) / target,
                "test_accuracy": log[-1]["val_accuracy"],
                "params_fraction": final.params_after / final.params_before,
                "widths": {k: v[1] for k, v in final.layers.items()},
                # epoch 0 (the sparse start) first
                "flops_fraction_per_epoch": [log[0]["initial"]["measured"]]
                + [r["measured"] for r in log],
                "lam_per_epoch": [log[0]["initial"]["lam"]] + [r["lam"] for r in log],
                "accuracy_per_epoch": [r["val_accuracy"] for r in log],  # epochs 1..
                "seconds": secs,
            }
            print(
                f"target {target:.0%}: landed at {landed:.1%} of the dense FLOPs, "
                f"{log[-1]['val_accuracy']:.2f}% ({secs:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_budget(results, out / "flops_budget.png")
    return {
        "experiment": "flops_budget",
        "model": "ConvNet (paper), kernel + neuron groups, LinBreg b=0.9",
        "config": {**base, "lam_patience": patience},
        "epochs": epochs,
        "seed": seed,
        "results": results,
        "plots": [str(plot)],
        "seconds": time.perf_counter() - t_all,
    }


def plot_budget(results: dict[str, dict], path: pathlib.Path) -> pathlib.Path:
    """FLOPs fraction and ``lam`` per epoch, from epoch 0 (the sparse start)."""
    fig = Figure(figsize=(10, 4.2), dpi=120)
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    epochs: list[int] = []
    for k, (name, r) in enumerate(results.items()):
        c = f"C{k}"
        ys = [100 * v for v in r["flops_fraction_per_epoch"]]
        epochs = list(range(len(ys)))
        label = f"target {float(name):.0%}"
        ax.plot(epochs, ys, color=c, marker=".", label=label)
        ax.axhline(100 * r["target_flops_fraction"], color=c, ls="--", lw=1)
        ax2.plot(epochs, r["lam_per_epoch"], color=c, marker=".", label=label)
    for a in (ax, ax2):
        epoch_axis(a, epochs)
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7)
    ax.set_ylabel("FLOPs of the compiled network (% of dense)")
    ax.set_title("FLOPs per epoch (dashed: target)")
    top = max(max(100 * v for v in r["flops_fraction_per_epoch"]) for r in results.values())
    ax.set_ylim(0, 1.1 * max(top, *(100 * r["target_flops_fraction"] for r in results.values())))
    ax2.set_yscale("log")
    log_axis(ax2)
    ax2.set_ylabel("lam (log scale)")
    ax2.set_title("regularization strength set by the LamScheduler")
    fig.tight_layout()
    fig.savefig(path)
    return path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small ConvNet, 2 epochs")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.25, 0.1])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patience", type=int, default=1, help="the LamScheduler's patience")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/results"))
    add_data_args(ap)
    args = ap.parse_args(argv)
    epochs = 2 if args.quick else args.epochs
    result = run(
        args.targets, epochs, args.seed, args.quick, args.out, args.patience, data_keys(args)
    )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
