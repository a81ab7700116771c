"""Discover an autoencoder's shape: denoise the real MNIST 5k subset with a wide supernet.

The paper's experiment: a fully connected denoising network with several hidden layers of
784 units, trained with a Bregman optimizer and row sparsity (lam about 0.07) from about 1%
of the neurons; the widths it ends with are the discovered architecture (typically narrow
in the middle: an autoencoder). Here the supernet has ``--layers`` hidden layers of 784
units and the default recipe (``regularizer = "coupled"``: each neuron's row and bias is a
group; ``--conv``: each channel's BatchNorm scale and shift) with AdaBreg, from 1% of each
layer's neurons (5% of the channels); the widths per epoch show the shape growing. After
training the dead units are removed by ``archdiscover.compile`` (exactly), the compact
model is exported to ONNX, and the discovered widths, PSNR and parameter counts printed.

    python examples/discover_autoencoder.py                 # 4 x 784 supernet, ~2 minutes
    python examples/discover_autoencoder.py --quick         # seconds
    python examples/discover_autoencoder.py --conv          # the conv autoencoder instead
"""

from __future__ import annotations

import argparse
import json
import pathlib

import archdiscover as ad
from archdiscover.engine import TrainConfig, load_split, train


def config(quick: bool, conv: bool, layers: int, epochs: int | None) -> TrainConfig:
    if conv:
        return TrainConfig(
            model="conv_autoencoder",
            model_args={
                "in_channels": 1,
                "enc_widths": [32, 64],
                "bottleneck": 128,
                "dec_widths": [64, 32],
            }
            if not quick
            else {"in_channels": 1, "enc_widths": [8, 8], "bottleneck": 8, "dec_widths": [8, 8]},
            dataset="mnist5k",
            task="denoising",
            noise_std=0.5,
            optimizer="adabreg",
            lr=2e-3,
            regularizer="coupled",
            lam=0.1,
            init_density=0.05,
            epochs=epochs or (2 if quick else 15),
            batch_size=64,
        )
    width = 784 if not quick else 128
    return TrainConfig(
        model="dense_autoencoder",
        model_args={"in_shape": [1, 28, 28], "widths": [width] * layers},
        dataset="mnist5k",
        task="denoising",
        noise_std=0.5,
        optimizer="adabreg",
        lr=1e-3,
        regularizer="coupled",
        # two quick epochs of a 128-wide net: a lower threshold, and 5 start units a layer
        # (one start unit whose weight is negative would cut the only path to the output)
        lam=0.07 if not quick else 0.02,
        init_density=0.01 if not quick else 0.04,
        epochs=epochs or (2 if quick else 20),
        batch_size=64,
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small supernet, 2 epochs")
    ap.add_argument("--conv", action="store_true", help="conv autoencoder (channel groups)")
    ap.add_argument("--layers", type=int, default=4, help="hidden layers of the dense supernet")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/autoencoder"))
    args = ap.parse_args(argv)
    cfg = config(args.quick, args.conv, args.layers, args.epochs)
    run = train(cfg, args.out, progress=not args.quick)
    x = load_split(cfg).test.tensors[0][:32]
    compiled = ad.compile(run.model.eval(), x)
    print(compiled.report)
    compiled.export_onnx(args.out / "model.onnx")
    widths = {n: w for n, (_, w) in compiled.report.layers.items()}
    from archdiscover.plots import read_log

    log = read_log(args.out / "log.jsonl")
    per_epoch = [list(log[0]["initial"]["active_units"].values())]
    per_epoch += [list(r["active_units"].values()) for r in log]
    print("active units per epoch (epoch 0: the sparse start; the shape growing):")
    for epoch, units in enumerate(per_epoch):
        print(f"  epoch {epoch:3d}: {units}")
    result = {
        "widths_per_epoch": per_epoch,
        "test_psnr_db": round(run.last["val_psnr"], 2),
        "supernet_widths": {n: w for n, (w, _) in compiled.report.layers.items()},
        "discovered_widths": widths,
        "params": [compiled.report.params_before, compiled.report.params_after],
        "onnx": str(args.out / "model.onnx"),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
