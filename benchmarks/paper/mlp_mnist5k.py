"""The paper's MLP experiment (Sec. 4.2-4.3) on the MNIST 5k subset; prints JSON, writes PNGs.

MLP 784-200-80-10, L1 on the weights, sparse init 1% for the Bregman runs:
LinBreg at lam 1e-3 / 1e-2 / 1e-1, LinBreg with (the paper's) momentum, AdaBreg, ProxSGD at
lam 1e-5 / 1e-4 / 1e-3 from a dense start, dense SGD and Adam. Three seeds each (each its
own stratified 4,000/1,000 split, initialization and batch order). Plots: test accuracy
against the non-zero fraction, and the non-zero fraction per epoch (the inverse scale
space grows from 1%; ProxSGD's forward scale space shrinks from 100%).

    python benchmarks/paper/mlp_mnist5k.py [--out docs/results] [--epochs 40]
    python benchmarks/paper/mlp_mnist5k.py --quick     # seconds: checks the script
    python benchmarks/paper/mlp_mnist5k.py --dataset mnist --data-dir DIR   # full MNIST
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile

from matplotlib.figure import Figure

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import (
    add_data_args,
    data_keys,
    from_start,
    plot_density_per_epoch,
    sd,
    train_run,
)

MLP = {"in_features": 784, "widths": [200, 80], "out_features": 10}
BASE = dict(model="mlp", model_args=MLP, dataset="mnist5k", batch_size=64, impl="auto")
RUNS: dict[str, dict] = {
    "LinBreg lam=1e-3": dict(optimizer="linbreg", lr=0.1, momentum=0.0, lam=1e-3),
    "LinBreg lam=1e-2": dict(optimizer="linbreg", lr=0.1, momentum=0.0, lam=1e-2),
    "LinBreg lam=1e-1": dict(optimizer="linbreg", lr=0.1, momentum=0.0, lam=1e-1),
    "LinBreg momentum lam=1e-1": dict(
        optimizer="linbreg", lr=0.1, momentum=0.9, dampening=0.9, lam=1e-1
    ),
    "AdaBreg lam=1e-1": dict(optimizer="adabreg", lr=1e-3, lam=1e-1),
    "ProxSGD lam=1e-5": dict(optimizer="proxsgd", lr=0.1, lam=1e-5, init_density=1.0),
    "ProxSGD lam=1e-4": dict(optimizer="proxsgd", lr=0.1, lam=1e-4, init_density=1.0),
    "ProxSGD lam=1e-3": dict(optimizer="proxsgd", lr=0.1, lam=1e-3, init_density=1.0),
    "SGD (dense)": dict(optimizer="sgd", lr=0.1, momentum=0.0, regularizer="none"),
    "Adam (dense)": dict(optimizer="adam", lr=1e-3, regularizer="none"),
}
QUICK = ("LinBreg lam=1e-1", "ProxSGD lam=1e-4", "SGD (dense)")


def run(
    epochs: int, seeds: list[int], names: list[str], out: pathlib.Path, data: dict | None = None
) -> dict:
    results: dict[str, dict] = {}
    curves: dict[str, list[list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            accs, dens, secs, per_epoch = [], [], [], []
            for seed in seeds:
                cfg = {
                    **BASE,
                    **(data or {}),
                    "regularizer": "l1",
                    "init_density": 0.01,
                    **RUNS[name],
                    "epochs": epochs,
                    "seed": seed,
                }
                _, log, seconds = train_run(cfg, pathlib.Path(tmp), f"{name} seed {seed}")
                secs.append(seconds)
                accs.append(log[-1]["val_accuracy"])
                dens.append(100 * log[-1]["weight_density"])
                per_epoch.append(from_start(log, "weight_density", 100))
            results[name] = {
                "test_accuracy_mean": statistics.mean(accs),
                "test_accuracy_std": sd(accs),
                "nonzero_weights_percent_mean": statistics.mean(dens),
                "nonzero_weights_percent_std": sd(dens),
                "per_seed": [
                    {"seed": s, "test_accuracy": a, "nonzero_weights_percent": d}
                    for s, a, d in zip(seeds, accs, dens, strict=True)
                ],
                "seconds_per_run": statistics.mean(secs),
            }
            curves[name] = per_epoch
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_accuracy(results, out / "mlp_accuracy_vs_density.png"),
        plot_density_per_epoch(
            {name: _mean_curve(runs) for name, runs in curves.items()},
            out / "mlp_density_per_epoch.png",
            "non-zero weights per epoch (mean over seeds)",
        ),
    ]
    return {
        "experiment": "mlp_mnist5k",
        "dataset": (data or {}).get("dataset", BASE["dataset"]),
        "model": "MLP 784-200-80-10",
        "epochs": epochs,
        "seeds": seeds,
        "batch_size": BASE["batch_size"],
        "results": results,
        "plots": [str(p) for p in plots],
    }


def plot_accuracy(results: dict[str, dict], path: pathlib.Path) -> pathlib.Path:
    fig = Figure(figsize=(8, 5), dpi=120)
    ax = fig.add_subplot()
    for name, r in results.items():
        ax.errorbar(
            r["nonzero_weights_percent_mean"],
            r["test_accuracy_mean"],
            xerr=r["nonzero_weights_percent_std"],
            yerr=r["test_accuracy_std"],
            fmt="o",
            capsize=3,
            label=name,
        )
    ax.set_xscale("log")
    ax.set_xlabel("non-zero weights (%, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MLP 784-200-80-10 on MNIST 5k: accuracy vs density (mean +- std over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _mean_curve(runs: list[list[float]]) -> list[float]:
    n = min(len(r) for r in runs)
    return [statistics.mean(r[i] for r in runs) for i in range(n)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 epochs, 1 seed, 3 runs")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/results"))
    add_data_args(ap)
    args = ap.parse_args(argv)
    if args.quick:
        result = run(2, [0], list(QUICK), args.out, data_keys(args))
    else:
        result = run(args.epochs, [0, 1, 2], list(RUNS), args.out, data_keys(args))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
