"""The paper's MNIST MLP (784-200-80-10) on the real MNIST 5k subset: Bregman vs dense SGD.

LinBreg and AdaBreg start from a 1% sparse initialization with an L1 regularizer on the
weights (biases unregularized) and add only the weights the loss asks for; dense SGD and
Adam train the same network, from the same seed, the same way (same batches, epochs, lr
schedule), dense. The script prints a table (test accuracy, non-zero weights) and the
sparsity report of the LinBreg network.

    python examples/mnist_mlp.py            # the full comparison (about a minute on 2 cores)
    python examples/mnist_mlp.py --demo     # LinBreg only, its sparsity report
    python examples/mnist_mlp.py --json     # also print the results as JSON
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import models
from archdiscover import L1, AdaBreg, LinBreg, sparse_init_, sparsity_report
from archdiscover.data import Split, mnist5k


@dataclass
class Result:
    name: str
    test_accuracy: float
    weight_density: float
    seconds: float


def evaluate(model: nn.Module, split: Split) -> float:
    model.eval()
    x, y = split.test.tensors
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return 100.0 * acc


def train(
    name: str,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    split: Split,
    *,
    sparse: bool,
    epochs: int,
    seed: int,
    batch_size: int = 128,
    progress: bool = True,
    cosine: bool = True,
) -> tuple[nn.Module, Result]:
    """Train the paper's MLP; ``sparse`` starts from the 1% sparse init."""
    torch.manual_seed(seed)
    model = models.build("mlp", preset="mnist")
    opt = make_optimizer(model)
    if sparse:
        sparse_init_(model, density=0.01, reg=opt, generator=torch.Generator().manual_seed(seed))
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        if cosine
        else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    )
    loader = DataLoader(
        split.train,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc=f"{name:>8}", disable=not progress, leave=False)
    for _ in bar:
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()
        bar.set_postfix(density=f"{sparsity_report(model).weight_density:.3f}")
    seconds = time.perf_counter() - t0
    return model, Result(
        name, evaluate(model, split), sparsity_report(model).weight_density, seconds
    )


def weight_groups(model: nn.Module, reg: L1) -> list[dict]:
    """L1 on the Linear weights, nothing on the biases."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return [
        {"params": [m.weight for m in linears], "reg": reg},
        {"params": [m.bias for m in linears]},
    ]


# The settings of the comparison (paper: lr 0.1, delta 1, lam 0.1 for LinBreg).
RUNS: dict[str, tuple[Callable[[nn.Module], torch.optim.Optimizer], bool]] = {
    "SGD": (lambda m: torch.optim.SGD(m.parameters(), lr=0.1), False),
    "LinBreg": (lambda m: LinBreg(weight_groups(m, L1(0.1)), lr=0.1), True),
    "Adam": (lambda m: torch.optim.Adam(m.parameters(), lr=1e-3), False),
    "AdaBreg": (lambda m: AdaBreg(weight_groups(m, L1(0.1)), lr=1e-3), True),
}


def compare(
    epochs: int = 40, seed: int = 0, names: tuple[str, ...] = tuple(RUNS), progress: bool = True
) -> dict[str, Result]:
    split = mnist5k(seed=seed)
    out = {}
    for name in names:
        make, sparse = RUNS[name]
        out[name] = train(
            name, make, split, sparse=sparse, epochs=epochs, seed=seed, progress=progress
        )[1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo", action="store_true", help="LinBreg only, with its sparsity report")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    split = mnist5k(seed=args.seed)
    print(f"MNIST 5k subset: {len(split.train)} train / {len(split.test)} test images")
    if args.demo:
        make, _ = RUNS["LinBreg"]
        model, res = train("LinBreg", make, split, sparse=True, epochs=args.epochs, seed=args.seed)
        print(sparsity_report(model))
        print(
            f"LinBreg: test accuracy {res.test_accuracy:.1f}%, "
            f"{100 * res.weight_density:.1f}% of weights non-zero ({res.seconds:.0f} s)"
        )
        return
    results = compare(args.epochs, args.seed)
    print(f"{'optimizer':<10}{'test acc':>10}{'non-zero weights':>18}{'seconds':>9}")
    for r in results.values():
        print(
            f"{r.name:<10}{r.test_accuracy:>9.1f}%{100 * r.weight_density:>17.1f}%{r.seconds:>9.1f}"
        )
    if args.json:
        print(json.dumps({k: vars(v) for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
