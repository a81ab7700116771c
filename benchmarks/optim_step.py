"""Step time of the Bregman optimizers relative to their dense twins, measured in one run.

Model: MLP 784-1000-1000-10, batch 128, CPU. The gradients are computed once; then
``optimizer.step()`` alone is timed, alternating the optimizer under test and its baseline
(``torch.optim.Adam`` / ``torch.optim.SGD`` with their defaults) round by round, so machine
noise hits both alike. Prints one JSON object; ``ratio`` = median step time / baseline's.

Targets (issue 3): AdaBreg <= 1.1x Adam, LinBreg with momentum <= 1.3x SGD with momentum.

    python benchmarks/optim_step.py [--rounds 30] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from archdiscover.optim import AdaBreg, LinBreg
from archdiscover.regularizers import L1, GroupL12, Regularizer


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 10)
    )
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    nn.functional.cross_entropy(model(x), y).backward()
    return model


def groups(model: nn.Module, reg: Regularizer) -> list[dict]:
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    biases = [m.bias for m in model if isinstance(m, nn.Linear)]
    return [{"params": weights, "reg": reg}, {"params": biases}]


def time_steps(opt: torch.optim.Optimizer, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t0) / steps


def compare(
    make_ours: Callable[[nn.Module], torch.optim.Optimizer],
    make_base: Callable[[nn.Module], torch.optim.Optimizer],
    rounds: int,
    steps: int,
) -> dict:
    ours, base = make_ours(make_model()), make_base(make_model())
    for opt in (ours, base):  # warm-up: state allocation, compilation
        time_steps(opt, 5)
    t_ours, t_base = [], []
    for _ in range(rounds):
        t_ours.append(time_steps(ours, steps))
        t_base.append(time_steps(base, steps))
    mo, mb = statistics.median(t_ours), statistics.median(t_base)
    return {
        "ms": round(mo * 1e3, 4),
        "baseline_ms": round(mb * 1e3, 4),
        "ratio": round(mo / mb, 3),
        "ratio_p25_p75": [
            round(statistics.quantiles(t_ours, n=4)[0] / mb, 3),
            round(statistics.quantiles(t_ours, n=4)[2] / mb, 3),
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--quick", action="store_true", help="a few rounds, to check the script")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, steps = (3, 3) if args.quick else (args.rounds, args.steps)

    adam = lambda m: torch.optim.Adam(m.parameters(), lr=1e-3)  # noqa: E731
    sgdm = lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)  # noqa: E731
    regs = {"l1": L1(1e-4), "group_l12": GroupL12(1e-4)}
    results: dict[str, dict] = {}
    for fused in (True, False):
        tag = "fused" if fused else "plain"
        for rname, reg in regs.items():
            results[f"adabreg_{rname}_{tag}_vs_adam"] = compare(
                lambda m, reg=reg, f=fused: AdaBreg(groups(m, reg), lr=1e-3, fused=f),
                adam,
                rounds,
                steps,
            )
            results[f"linbreg_momentum_{rname}_{tag}_vs_sgd_momentum"] = compare(
                lambda m, reg=reg, f=fused: LinBreg(groups(m, reg), lr=0.1, momentum=0.9, fused=f),
                sgdm,
                rounds,
                steps,
            )
    targets = {
        "adabreg_vs_adam_max_ratio": 1.1,
        "linbreg_momentum_vs_sgd_momentum_max_ratio": 1.3,
    }
    met = all(
        v["ratio"]
        <= (
            targets["adabreg_vs_adam_max_ratio"]
            if k.startswith("adabreg")
            else targets["linbreg_momentum_vs_sgd_momentum_max_ratio"]
        )
        for k, v in results.items()
        if "_fused_" in k
    )
    print(
        json.dumps(
            {
                "benchmark": "optim_step",
                "model": "MLP 784-1000-1000-10",
                "batch": 128,
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "rounds": rounds,
                "steps_per_round": steps,
                "results": results,
                "targets": targets,
                "fused_targets_met": met,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
