"""Discover a DnCNN-style denoiser's widths on natural images; prints JSON, writes a PNG.

Data: the natural photographs scikit-image ships (nothing is downloaded), in grey levels
``[0, 1]``. Training patches are random crops (with flips and 90-degree turns) of
``TRAIN_IMAGES``; the test set is the held-out ``TEST_IMAGES`` (centre crops). Noise:
Gaussian, sigma 25/255, fresh for every training batch, one fixed draw for the test images.
PSNR in dB on the held-out images (output clipped to ``[0, 1]``), FLOPs per test image.

Each network is trained for the same epochs on the same patches, and every one starts as
the identity (``--start identity``, the default: ``models.dncnn(zero_init_residual=True)``,
the last conv's weights zero, so the net starts as ``x - 0``, Fixup-style; at this budget
it is the stronger start for dense nets: 30.21 against 25.61 dB from PyTorch's default
init at 8 epochs, see RESULTS.md section 6; ``--start default`` for PyTorch's init):

* **dense**: the DnCNN supernet (``models.dncnn``: Conv+ReLU, ``depth - 2`` x
  Conv+BN+ReLU, Conv; residual learning), Adam, cosine learning rate, the BatchNorm and
  first-conv tensors at ``--baseline-step`` (default 10) times the learning rate
  (:func:`same_steps`; at 8 epochs 10 trained the dense supernet 0.32 dB better than
  plain Adam);
* **discovered**: the same supernet with the default Bregman recipe
  (``coupled_param_groups`` + ``AdaBreg`` + ``sparse_init_`` from ``--density`` of each
  layer's channels: the channels' BatchNorm scale and shift, the first layer's filters and
  biases are the groups; ``--delta``, default 100, the coupled group's Bregman ``delta``,
  so a BatchNorm scale that enters late can still grow to its natural size 1 in the short
  run: see RESULTS.md section 6), then compiled (dead channels removed, exact);
* **uniform**: a DnCNN whose hidden layers all have the one width whose FLOPs are closest
  to the discovered network's, trained like the dense one (Adam, from a dense start);
* and, to judge the shape itself, the **discovered widths retrained** from scratch (Adam).

    python benchmarks/paper/denoiser_discovery.py            # the full run (see RESULTS.md)
    python benchmarks/paper/denoiser_discovery.py --quick    # seconds: checks the script
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from tqdm import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _common  # noqa: F401  (puts the repository on sys.path)

import archdiscover as ad
from archdiscover import models
from archdiscover.coupling import active_channels, coupled_param_groups
from archdiscover.metrics import psnr

SIGMA = 25.0 / 255.0
TRAIN_IMAGES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle",
    "brick",
    "grass",
    "gravel",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
)
TEST_IMAGES = ("camera", "coins", "moon")
NAMES = ("dense", "discovered", "uniform", "discovered_retrained")


def grey_images(names: Sequence[str]) -> list[Tensor]:
    """The named scikit-image images as ``(H, W)`` float tensors in ``[0, 1]``."""
    from skimage import color, data, util

    out = []
    for name in names:
        img = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        img = util.img_as_float(img)
        if img.ndim == 3:
            img = color.rgb2gray(img[..., :3])
        out.append(torch.as_tensor(np.ascontiguousarray(img), dtype=torch.float32))
    return out


def random_patches(images: Sequence[Tensor], n: int, size: int, gen: torch.Generator) -> Tensor:
    """``n`` random ``size x size`` crops, images drawn by area, random flips and turns."""
    areas = torch.tensor([float(im.numel()) for im in images])
    which = torch.multinomial(areas, n, replacement=True, generator=gen)
    out = torch.empty(n, 1, size, size)
    for i, k in enumerate(which.tolist()):
        im = images[k]
        top = int(torch.randint(0, im.shape[0] - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, im.shape[1] - size + 1, (1,), generator=gen))
        p = im[top : top + size, left : left + size]
        turns, flip = (int(v) for v in torch.randint(0, 4, (2,), generator=gen))
        p = torch.rot90(p, turns)
        out[i, 0] = p.flip(1) if flip % 2 else p
    return out


def centre_crops(images: Sequence[Tensor], size: int) -> Tensor:
    """The ``size x size`` centre crop of each image, ``(N, 1, size, size)``."""
    crops = []
    for im in images:
        top, left = (im.shape[0] - size) // 2, (im.shape[1] - size) // 2
        crops.append(im[top : top + size, left : left + size])
    return torch.stack(crops)[:, None]


@torch.no_grad()
def test_psnr(model: nn.Module, clean: Tensor, noisy: Tensor) -> float:
    """Mean PSNR (dB) over the test images, output clipped to ``[0, 1]``."""
    model.eval()
    out = torch.cat([model(noisy[i : i + 1]) for i in range(len(noisy))]).clamp(0, 1)
    return float(psnr(out, clean).mean())


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    patches: Callable[[int], Tensor],
    epochs: int,
    batch: int,
    seed: int,
    what: str,
    on_epoch: Callable[[int], None] | None = None,
) -> float:
    """MSE between ``model(clean + noise)`` and ``clean``, cosine learning rate; seconds."""
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        clean = patches(epoch)
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        bar = tqdm(
            range(0, len(clean), batch),
            desc=f"{what} {epoch + 1}/{epochs}",
            leave=False,
            file=sys.stderr,
        )
        for i in bar:
            x = clean[i : i + batch]
            noisy = x + SIGMA * torch.randn(x.shape, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(noisy), x)
            loss.backward()
            opt.step()
        sched.step()
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return time.perf_counter() - t0


def same_steps(model: nn.Module, example: Tensor, lr: float, delta: float) -> list[dict]:
    """Adam param groups: the tensors of the coupled group (BatchNorm scales and shifts, the
    first conv) at ``lr * delta``, the rest at ``lr``. AdaBreg's ``theta = delta *
    shrink(v)`` with Adam steps on ``v`` moves an active parameter by ``delta * lr``-sized
    steps; the dense baselines take the factor that trains them best (``--baseline-step``)."""
    coupled, rest = coupled_param_groups(model, example, lam=0.0)
    return [{"params": coupled["params"], "lr": lr * delta}, {"params": rest["params"], "lr": lr}]


def flops(model: nn.Module, example: Tensor) -> int:
    """FLOPs (2 x multiply-accumulates) of one forward pass on ``example`` (one image)."""
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(model.eval(), example)
    return int(2 * macs)


def uniform_width(depth: int, target_flops: int, example: Tensor, max_width: int) -> int:
    """The hidden width of a DnCNN whose FLOPs are closest to ``target_flops``."""
    best = min(
        range(1, max_width + 1),
        key=lambda w: abs(
            flops(models.build("dncnn", depth=depth, width=w), example) - target_flops
        ),
    )
    return best


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_all = time.perf_counter()
    torch.manual_seed(args.seed)
    train_imgs = grey_images(TRAIN_IMAGES[: args.train_images])
    test_imgs = grey_images(TEST_IMAGES)
    clean_t = centre_crops(test_imgs, args.test_size)
    noisy_t = clean_t + SIGMA * torch.randn(
        clean_t.shape, generator=torch.Generator().manual_seed(args.seed + 99)
    )
    example = clean_t[:1]

    def patches(epoch: int) -> Tensor:
        gen = torch.Generator().manual_seed(args.seed * 7919 + epoch)
        return random_patches(train_imgs, args.patches, args.patch_size, gen)

    arch = {"depth": args.depth, "width": args.width}
    start = {"zero_init_residual": args.start == "identity"}
    results: dict[str, dict[str, Any]] = {}

    def dense_run(name: str, **model_args: Any) -> nn.Module:
        torch.manual_seed(args.seed)
        m = models.build("dncnn", **model_args, **start)
        opt = torch.optim.Adam(same_steps(m, example, args.lr, args.baseline_step))
        secs = train(m, opt, patches, args.epochs, args.batch, args.seed, name)
        results[name] = {
            "psnr": test_psnr(m, clean_t, noisy_t),
            "flops": flops(m, example),
            "params": sum(p.numel() for p in m.parameters()),
            "widths": list(m.widths),
            "seconds": secs,
        }
        print(f"{name}: {results[name]['psnr']:.2f} dB", file=sys.stderr, flush=True)
        return m

    # discovery: the default recipe (first: its widths per epoch show at once)
    torch.manual_seed(args.seed)
    sup = models.build("dncnn", **arch, **start)
    pg = coupled_param_groups(sup, example, lam=args.lam, delta=args.delta)
    opt = ad.AdaBreg(pg, lr=args.lr)
    ad.sparse_init_(sup, args.density, reg=opt, generator=torch.Generator().manual_seed(args.seed))
    groups = ad.channel_groups(sup, example)
    layers = [n for n, m in sup.named_modules() if isinstance(m, nn.Conv2d)][:-1]
    growth: list[dict[str, int]] = [dict(active_channels(sup, groups))]
    secs = train(
        sup,
        opt,
        patches,
        args.epochs,
        args.batch,
        args.seed,
        "discover",
        on_epoch=lambda e: _grew(growth, active_channels(sup, groups), layers),
    )
    supernet_psnr = test_psnr(sup, clean_t, noisy_t)
    c = ad.compile(sup.eval(), example)
    rep = c.report
    widths = [rep.layers[n][1] for n in layers]
    results["discovered"] = {
        "psnr": test_psnr(c.model, clean_t, noisy_t),
        "psnr_trained_supernet": supernet_psnr,
        "flops": flops(c.model, example),
        "params": rep.params_after,
        "widths": widths,
        "active_widths": [growth[-1][n] for n in layers],
        "max_rel_error": rep.max_error,
        "seconds": secs,
    }
    print(f"discovered: {results['discovered']['psnr']:.2f} dB {widths}", file=sys.stderr)

    dense_run("dense", **arch)
    u = uniform_width(args.depth, results["discovered"]["flops"], example, args.width)
    dense_run("uniform", depth=args.depth, width=u)
    dense_run("discovered_retrained", depth=args.depth, widths=widths)

    noisy_psnr = float(psnr(noisy_t.clamp(0, 1), clean_t).mean())
    d, disc, uni = results["dense"], results["discovered"], results["uniform"]
    summary = {
        "discovered_minus_dense_db": disc["psnr"] - d["psnr"],
        "discovered_minus_uniform_db": disc["psnr"] - uni["psnr"],
        "discovered_minus_retrained_db": disc["psnr"] - results["discovered_retrained"]["psnr"],
        "discovered_flops_fraction": disc["flops"] / d["flops"],
        "uniform_flops_fraction": uni["flops"] / d["flops"],
        # the target: within 0.2 dB of dense at <= 30% of its FLOPs, above uniform
        "target_met": bool(
            disc["psnr"] >= d["psnr"] - 0.2
            and disc["flops"] <= 0.3 * d["flops"]
            and disc["psnr"] > uni["psnr"]
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    plot = plot_discovery(growth, layers, arch, results, args.out / "denoiser_discovery.png")
    out = {
        "experiment": "denoiser_discovery",
        "data": {
            "train_images": list(TRAIN_IMAGES[: args.train_images]),
            "test_images": list(TEST_IMAGES),
            "test_crop": args.test_size,
            "patch_size": args.patch_size,
            "patches_per_epoch": args.patches,
            "sigma": "25/255",
            "noisy_psnr": noisy_psnr,
        },
        "supernet": {"model": "dncnn", **arch},
        "training": {
            "epochs": args.epochs,
            "batch": args.batch,
            "lr": args.lr,
            "lr_schedule": "cosine",
            "start": args.start,
            "baseline_step": args.baseline_step,
            "discovery": {
                "optimizer": "AdaBreg",
                "lam": args.lam,
                "delta": args.delta,
                "density": args.density,
                "recipe": "coupled_param_groups (auto) + sparse_init_",
            },
        },
        "flops_per": f"one 1x{args.test_size}x{args.test_size} image",
        "dense": d,
        "discovered": disc,
        "uniform": uni,
        "discovered_retrained": results["discovered_retrained"],
        "widths": widths,
        "growth": growth,
        "summary": summary,
        "plots": [str(plot)],
        "seconds": time.perf_counter() - t_all,
    }
    (args.out / "denoiser_discovery.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def _grew(growth: list[dict[str, int]], active: dict[str, int], layers: list[str]) -> None:
    """Record one epoch's active channels and show them (progress of the discovery)."""
    growth.append(dict(active))
    print(f"discover epoch {len(growth) - 1}: {[active[n] for n in layers]}", file=sys.stderr)


def plot_discovery(
    growth: list[dict[str, int]],
    layers: list[str],
    arch: dict[str, int],
    results: dict[str, dict[str, Any]],
    path: pathlib.Path,
) -> pathlib.Path:
    fig = Figure(figsize=(13, 4.2), dpi=120)
    ax = fig.add_subplot(1, 3, 1)
    from matplotlib import colormaps

    shade = colormaps["viridis"]  # by depth: one distinct colour per layer, input to output
    for i, name in enumerate(layers):
        color = shade(i / max(1, len(layers) - 1))
        ax.plot(range(len(growth)), [g[name] for g in growth], color=color, lw=1, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("active channels")
    ax.set_title("inverse scale space: channels entering", fontsize=9)
    ax.legend(fontsize=5, ncol=2)
    ax = fig.add_subplot(1, 3, 2)
    pos = np.arange(len(layers))
    ax.bar(pos, [arch["width"]] * len(layers), color="0.85", label="supernet")
    ax.bar(pos, results["discovered"]["widths"], color="C0", label="discovered")
    ax.axhline(results["uniform"]["widths"][0], color="C3", ls="--", label="uniform (same FLOPs)")
    ax.set_xticks(pos, [str(i + 1) for i in pos], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("width")
    ax.set_title("widths per layer", fontsize=9)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 3, 3)
    names = [n for n in NAMES if n in results]
    for i, n in enumerate(names):
        r = results[n]
        ax.scatter(100 * r["flops"] / results["dense"]["flops"], r["psnr"], color=f"C{i}", label=n)
    ax.set_xlabel("FLOPs (% of dense)")
    ax.set_ylabel("PSNR on held-out images (dB)")
    ax.set_title("quality against cost", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(
        f"DnCNN-style supernet ({arch['depth']} layers x {arch['width']}), sigma 25/255, "
        "natural images",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 4-layer x 8 net, tiny data: seconds")
    ap.add_argument("--depth", type=int, default=17)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--patches", type=int, default=1024, help="training patches per epoch")
    ap.add_argument("--patch-size", type=int, default=24)
    ap.add_argument("--test-size", type=int, default=256, help="centre crop of each test image")
    ap.add_argument("--train-images", type=int, default=len(TRAIN_IMAGES))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lam", type=float, default=0.0075)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=100.0, help="the coupled group's delta")
    ap.add_argument(
        "--baseline-step",
        type=float,
        default=10.0,
        help="the baselines' BatchNorm and first-conv tensors train at this times lr",
    )
    ap.add_argument(
        "--start",
        choices=("identity", "default"),
        default="identity",
        help="every net's start: the last conv zero (x - 0), or PyTorch's default init",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.depth, args.width, args.epochs, args.patches = 4, 8, 1, 32
        args.patch_size, args.test_size, args.train_images = 16, 48, 2
    torch.set_num_threads(1)
    result = run(args)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
