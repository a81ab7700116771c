"""The paper's MNIST MLP (784-200-80-10) on the real MNIST 5k subset: Bregman vs dense.

LinBreg and AdaBreg start from a 1% sparse initialization with an ``L1`` regularizer on the
weights (biases unregularized) and add only the weights the loss asks for; dense SGD and
Adam train the same network, from the same seed, the same way (same batches, epochs and
learning rate), dense. Each run is repeated over seeds (each seed: its own stratified
4,000/1,000 split, initialization and batch order); the script prints the mean and
standard deviation of test accuracy and of the non-zero weight fraction.

    python examples/mnist_mlp.py                # the comparison, 3 seeds (a few minutes)
    python examples/mnist_mlp.py --seeds 0      # one seed
    python examples/mnist_mlp.py --demo         # LinBreg only, one seed, sparsity report
    python examples/mnist_mlp.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from archdiscover import L1, AdaBreg, LinBreg, models, sparse_init_, sparsity_report
from archdiscover.data import Split, mnist5k

EPOCHS, BATCH = 40, 32


@dataclass
class Result:
    name: str
    seed: int
    test_accuracy: float
    weight_density: float
    seconds: float


def evaluate(model: nn.Module, split: Split) -> float:
    """Test accuracy in percent."""
    model.eval()
    x, y = split.test.tensors
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return 100.0 * acc


def weight_groups(model: nn.Module, reg: L1) -> list[dict]:
    """``reg`` on the Linear weights, nothing on the biases."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return [
        {"params": [m.weight for m in linears], "reg": reg},
        {"params": [m.bias for m in linears]},
    ]


# name -> (optimizer factory, sparse start?). Paper: lr 0.1 and delta 1 for LinBreg,
# lr 1e-3 for AdaBreg; lam chosen here so both end below 10% non-zero weights.
RUNS: dict[str, tuple[Callable[[nn.Module], torch.optim.Optimizer], bool]] = {
    "SGD": (lambda m: torch.optim.SGD(m.parameters(), lr=0.1), False),
    "LinBreg": (lambda m: LinBreg(weight_groups(m, L1(0.038)), lr=0.1), True),
    "Adam": (lambda m: torch.optim.Adam(m.parameters(), lr=1e-3), False),
    "AdaBreg": (lambda m: AdaBreg(weight_groups(m, L1(0.4)), lr=1e-3), True),
}


def train(
    name: str,
    split: Split,
    *,
    epochs: int = EPOCHS,
    seed: int = 0,
    batch_size: int = BATCH,
    progress: bool = True,
) -> tuple[nn.Module, Result]:
    """Train the paper's MLP with the optimizer ``RUNS[name]``."""
    make_optimizer, sparse = RUNS[name]
    torch.manual_seed(seed)
    model = models.build("mlp", preset="mnist")
    opt = make_optimizer(model)
    if sparse:
        sparse_init_(model, density=0.01, reg=opt, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(
        split.train,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    t0 = time.perf_counter()
    bar = tqdm(
        range(epochs),
        desc=f"{name:>8} seed {seed}",
        disable=not progress,
        leave=False,
        mininterval=1.0,
    )
    for _ in bar:
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        bar.set_postfix(density=f"{sparsity_report(model).weight_density:.3f}")
    seconds = time.perf_counter() - t0
    res = Result(name, seed, evaluate(model, split), sparsity_report(model).weight_density, seconds)
    return model, res


def compare(
    names: Sequence[str] = tuple(RUNS),
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = EPOCHS,
    progress: bool = True,
) -> list[Result]:
    out = []
    for seed in seeds:
        split = mnist5k(seed=seed)
        for name in names:
            out.append(train(name, split, epochs=epochs, seed=seed, progress=progress)[1])
    return out


def summarize(results: list[Result]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation per optimizer."""
    table: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.name for r in results):
        rs = [r for r in results if r.name == name]
        acc = [r.test_accuracy for r in rs]
        dens = [100.0 * r.weight_density for r in rs]
        sd = statistics.stdev if len(rs) > 1 else (lambda _: 0.0)
        table[name] = {
            "accuracy_mean": statistics.mean(acc),
            "accuracy_std": sd(acc),
            "nonzero_percent_mean": statistics.mean(dens),
            "nonzero_percent_std": sd(dens),
            "seconds_mean": statistics.mean(r.seconds for r in rs),
            "runs": len(rs),
        }
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--demo", action="store_true", help="LinBreg only, with its sparsity report")
    ap.add_argument("--json", metavar="PATH", help="also write every run and the summary")
    args = ap.parse_args()

    if args.demo:
        split = mnist5k(seed=args.seeds[0])
        print(
            f"MNIST 5k subset: {len(split.train)} train / {len(split.test)} test images; "
            f"MLP 784-200-80-10, LinBreg (L1, lam 0.038), 1% sparse start"
        )
        model, res = train("LinBreg", split, epochs=args.epochs, seed=args.seeds[0])
        print(sparsity_report(model))
        print(
            f"LinBreg: test accuracy {res.test_accuracy:.1f}%, "
            f"{100 * res.weight_density:.1f}% of weights non-zero ({res.seconds:.0f} s)"
        )
        return
    results = compare(seeds=args.seeds, epochs=args.epochs)
    table = summarize(results)
    print(
        f"MNIST 5k subset, MLP 784-200-80-10, {args.epochs} epochs, batch {BATCH}, "
        f"seeds {args.seeds}"
    )
    print(f"{'optimizer':<10}{'test accuracy %':>18}{'non-zero weights %':>22}{'s/run':>8}")
    for name, row in table.items():
        print(
            f"{name:<10}{row['accuracy_mean']:>11.2f} +- {row['accuracy_std']:.2f}"
            f"{row['nonzero_percent_mean']:>15.2f} +- {row['nonzero_percent_std']:.2f}"
            f"{row['seconds_mean']:>8.1f}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"runs": [asdict(r) for r in results], "summary": table}, fh, indent=2)


if __name__ == "__main__":
    main()
