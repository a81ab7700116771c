"""The paper's architecture-discovery experiment (Sec. 4.6) on the MNIST 5k subset; prints JSON.

Denoising: the network maps ``x + noise`` to ``x`` (MSE), noise std 0.05 of the pixel range
(the paper's setting), 4,000 / 1,000 split. Two supernets:

* **fully connected**: 784 -> 5 hidden layers of 784 -> 784, the default recipe
  (``regularizer = "coupled"``: each hidden neuron's row and bias is a group,
  ``lam * sum sqrt(785) ||(W_row, b)||``, lam 0.07; the output layer dense), AdaBreg (as in
  the paper's code; LinBreg grew no autoencoder shape here) from 1% of each layer's neurons
  (about 8), zero biases (ReLU's subgradient 1 at 0 lets the others enter);
* **convolutional** (``models.conv_autoencoder``, encoder 32-64, bottleneck 128, decoder
  64-32): the default recipe (each channel's BatchNorm scale and shift is a group, the
  transposed convs' channels their rows and biases), AdaBreg (lr 2e-3, ``--conv-lam``
  0.05, the coupled group's ``--conv-delta`` 10) from 5% of each layer's channels.

Each discovered network is compiled (dead units removed, verified exact) and its widths
are the discovered architecture. It is compared on the test split (PSNR and SSIM in the
pixel range [0, 1]) with the dense supernet trained with Adam for the same epochs (and, for
the fully connected net, with dense SGD, the paper's baseline), and with the discovered
shape trained from scratch with Adam (is the discovered architecture itself a good one?).
Plots: the widths layer by layer, and their growth over the epochs.

    python benchmarks/paper/autoencoder_mnist5k.py [--epochs 60] [--conv-epochs 20]
    python benchmarks/paper/autoencoder_mnist5k.py --quick     # seconds: checks the script
    python benchmarks/paper/autoencoder_mnist5k.py --dataset mnist --data-dir DIR  # full MNIST
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import add_data_args, data_keys, train_run

import archdiscover as ad
from archdiscover.engine import TrainConfig, load_split
from archdiscover.metrics import psnr, ssim
from archdiscover.plots import epoch_axis, layer_growth

NOISE_PIXEL_STD = 0.05  # of the pixel range [0, 1], as in the paper


def settings(
    quick: bool, conv_lam: float = 0.05, conv_delta: float | None = None
) -> dict[str, dict]:
    """The two supernets, their discovery runs and baselines (``conv_lam`` / ``conv_delta``:
    the conv supernet's ``lam`` and ``coupled_delta``)."""
    width = 64 if quick else 784
    return {
        "dense": dict(
            supernet=dict(
                model="dense_autoencoder",
                model_args={"in_shape": [1, 28, 28], "widths": [width] * 5},
            ),
            discover=dict(
                optimizer="adabreg",
                lr=1e-3,
                regularizer="coupled",
                lam=0.07,
                init_density=0.01,
            ),
            baselines={
                "dense supernet, Adam": dict(optimizer="adam", lr=1e-3, regularizer="none"),
                "dense supernet, SGD": dict(
                    optimizer="sgd", lr=0.1, momentum=0.9, regularizer="none"
                ),
            },
        ),
        "conv": dict(
            supernet=dict(
                model="conv_autoencoder",
                model_args={"enc_widths": [32, 64], "bottleneck": 128, "dec_widths": [64, 32]}
                if not quick
                else {"enc_widths": [8, 8], "bottleneck": 8, "dec_widths": [8, 8]},
            ),
            discover=dict(
                optimizer="adabreg",
                lr=2e-3,
                regularizer="coupled",
                lam=conv_lam,
                init_density=0.05,
                **({} if conv_delta is None else {"coupled_delta": conv_delta}),
            ),
            baselines={
                "dense supernet, Adam": dict(optimizer="adam", lr=1e-3, regularizer="none"),
            },
        ),
    }


def narrow_args(kind: str, supernet_args: dict, widths: dict[str, int]) -> dict:
    """The supernet's constructor arguments with the discovered widths."""
    if kind == "dense":
        n = len(supernet_args["widths"])
        return {**supernet_args, "widths": [widths[f"layers.{1 + 2 * i}"] for i in range(n)]}
    enc = [widths[f"encoder.{i}.0"] for i in range(len(supernet_args["enc_widths"]))]
    dec = [widths[f"decoder.{j}.0"] for j in range(len(supernet_args["dec_widths"]))]
    up = [widths[f"up.{j}"] for j in range(len(supernet_args["dec_widths"]))]
    return {
        **supernet_args,
        "enc_widths": enc,
        "bottleneck": widths["bottleneck.0"],
        "dec_widths": dec,
        "up_widths": up,
    }


@torch.no_grad()
def quality(model: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor) -> dict[str, float]:
    """Mean PSNR and SSIM on the test split, in the pixel range [0, 1]: the data are
    standardized, and MNIST's pixels span exactly [0, 1], so pixel = (x - min) / (max - min)."""
    model = model.cpu().eval()
    lo, hi = float(x.min()), float(x.max())
    out = torch.cat([model(x[i : i + 500] + noise[i : i + 500]) for i in range(0, len(x), 500)])
    to_px = lambda t: ((t - lo) / (hi - lo)).clamp(0, 1)  # noqa: E731
    clean, den, noisy = to_px(x), to_px(out), to_px(x + noise)
    return {
        "psnr_db": float(psnr(den, clean).mean()),
        "ssim": float(ssim(den, clean).mean()),
        "noisy_psnr_db": float(psnr(noisy, clean).mean()),
        "noisy_ssim": float(ssim(noisy, clean).mean()),
    }


def run(
    epochs: dict[str, int],
    seed: int,
    quick: bool,
    out: pathlib.Path,
    data: dict | None = None,
    conv: dict[str, Any] | None = None,
) -> dict:
    t_all = time.perf_counter()
    base = {
        "dataset": "mnist5k",
        "task": "denoising",
        "batch_size": 64,
        "seed": seed,
        "lr_schedule": "cosine",
        "threads": 1,
    }
    base.update(data or {})
    split = load_split(TrainConfig.from_dict({**base, "model": "mlp"}))
    xs, xt = split.train.tensors[0], split.test.tensors[0]
    span = float(xs.max() - xs.min())  # standardized units per pixel-range unit
    base["noise_std"] = NOISE_PIXEL_STD * span
    noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(seed + 12345))
    noise *= base["noise_std"]
    results: dict[str, dict] = {}
    growth: dict[str, dict[str, list[int]]] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = pathlib.Path(tmp_s)
        for kind, s in settings(quick, **(conv or {})).items():
            if kind not in epochs:  # --supernets
                continue
            base["epochs"] = epochs[kind]
            rows: dict[str, dict] = {}
            cfg = {**base, **s["supernet"], **s["discover"]}
            res, log, secs = train_run(cfg, tmp, f"{kind}-discover")
            compiled = ad.compile(res.model.cpu().eval(), xt[:16])
            rep = compiled.report
            widths = {n: after for n, (_, after) in rep.layers.items()}
            onnx_err = _onnx_check(compiled, xt[:64], tmp / f"{kind}.onnx")
            rows["discovered (Bregman)"] = {
                **quality(compiled.model, xt, noise),
                "params": rep.params_after,
                "flops": rep.flops_after,
                "seconds": secs,
                "onnx_max_abs_error": onnx_err,
            }
            growth[kind] = {
                "widths": log[-1]["widths"],
                "active": {
                    layer: [r["active_units"][layer] for r in [log[0]["initial"], *log]]
                    for layer in log[-1]["active_units"]
                },
            }
            for name, extra in s["baselines"].items():
                bcfg = {**base, **s["supernet"], **extra}
                bres, _, bsecs = train_run(bcfg, tmp, f"{kind}-{name}")
                rows[name] = {
                    **quality(bres.model, xt, noise),
                    "params": rep.params_before,
                    "flops": rep.flops_before,
                    "seconds": bsecs,
                }
            rargs = narrow_args(kind, s["supernet"]["model_args"], widths)
            rcfg = {**base, **s["supernet"], "model_args": rargs}
            rcfg.update(optimizer="adam", lr=1e-3, regularizer="none")
            rres, _, rsecs = train_run(rcfg, tmp, f"{kind}-retrain")
            rows["discovered shape, retrained from scratch (Adam)"] = {
                **quality(rres.model, xt, noise),
                "params": sum(p.numel() for p in rres.model.parameters()),
                "flops": rep.flops_after,
                "seconds": rsecs,
            }
            results[kind] = {
                "supernet": s["supernet"],
                "discover": s["discover"],
                "supernet_widths": {n: before for n, (before, _) in rep.layers.items()},
                "discovered_widths": widths,
                "params_fraction": rep.params_after / rep.params_before,
                "flops_fraction": rep.flops_after / rep.flops_before,
                "runs": rows,
            }
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_widths(results, out / "autoencoder_widths.png"),
        plot_growth(growth, out / "autoencoder_width_growth.png"),
    ]
    return {
        "experiment": "autoencoder_mnist5k",
        "dataset": base["dataset"],
        "task": f"denoising, noise std {NOISE_PIXEL_STD} of the pixel range",
        "epochs": epochs,
        "seed": seed,
        "results": results,
        "plots": [str(p) for p in plots],
        "seconds": time.perf_counter() - t_all,
    }


def _onnx_check(compiled: ad.Compiled, x: torch.Tensor, path: pathlib.Path) -> float:
    """Export the compact model (the export verifies it) and return onnxruntime's max |error|."""
    from archdiscover.export import ort_session

    compiled.export_onnx(path)
    sess = ort_session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = compiled.model(x).numpy()
    return float(abs(got - want).max())


def plot_widths(results: dict[str, dict], path: pathlib.Path) -> pathlib.Path:
    fig = Figure(figsize=(10, 4.5), dpi=120)
    for k, (kind, r) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), k + 1)
        names = list(r["supernet_widths"])
        pos = range(len(names))
        ax.bar(pos, [r["supernet_widths"][n] for n in names], color="0.85", label="supernet")
        ax.bar(pos, [r["discovered_widths"][n] for n in names], color="C0", label="discovered")
        for i, n in enumerate(names):
            ax.text(
                i,
                r["discovered_widths"][n],
                str(r["discovered_widths"][n]),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_xticks(list(pos), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("units / channels")
        ax.set_title(f"{kind} autoencoder: width per layer")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_growth(growth: dict[str, dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
    fig = Figure(figsize=(12, 4.5), dpi=120)
    for k, (kind, g) in enumerate(growth.items()):
        ax = fig.add_subplot(1, len(growth), k + 1)
        epochs = list(range(len(next(iter(g["active"].values())))))
        layer_growth(ax, epochs, g["active"], g["widths"])  # epoch 0: the sparse start
        epoch_axis(ax, epochs)
        ax.set_title(f"{kind} autoencoder: widths per epoch")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small supernets, 1 epoch")
    ap.add_argument("--epochs", type=int, default=60, help="fully connected supernet")
    ap.add_argument("--conv-epochs", type=int, default=20, help="conv supernet")
    ap.add_argument("--supernets", nargs="+", choices=("dense", "conv"), default=["dense", "conv"])
    ap.add_argument("--conv-lam", type=float, default=0.05, help="the conv supernet's lam")
    ap.add_argument(
        "--conv-delta", type=float, default=10.0, help="its coupled_delta (0: unset, i.e. 1)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/results"))
    add_data_args(ap)
    args = ap.parse_args(argv)
    epochs = {"dense": args.epochs, "conv": args.conv_epochs}
    if args.quick:
        epochs = {"dense": 1, "conv": 1}
    epochs = {k: v for k, v in epochs.items() if k in args.supernets}
    conv = {"conv_lam": args.conv_lam, "conv_delta": args.conv_delta or None}
    result = run(epochs, args.seed, args.quick, args.out, data_keys(args), conv)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
