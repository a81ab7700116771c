"""Compress a ResNet for deployment: coupled channel groups, compile, round for speed, ONNX.

A CIFAR-style ResNet-20 (width x ``--width``) on the real MNIST 5k subset padded to 32x32,
trained with the default recipe: coupled channel groups on the BatchNorm scale and shift
(every residual-stream channel is one group across its blocks), LinBreg with momentum,
from 5% of each layer's channels (the rest exactly zero; they enter as the loss asks);
then compiled with ``round_to="auto"`` (widths rounded to what runs fastest in
onnxruntime on this machine), exported, and timed against the dense network. Point
``--dataset cifar10 --data-dir DIR`` at CIFAR-10's python batches to do the same on
CIFAR-10.

    python examples/compress_resnet.py            # ResNet-20 x2, 8 epochs (~12 min here)
    python examples/compress_resnet.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import json
import pathlib

import archdiscover as ad
from archdiscover.engine import TrainConfig, load_split, train
from archdiscover.export import export_onnx
from archdiscover.latency import compare_latency


def _log(run_dir: pathlib.Path) -> list[dict]:
    from archdiscover.plots import read_log

    return read_log(run_dir / "log.jsonl")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ResNet-20 x1, 2 epochs on digits")
    ap.add_argument("--width", type=float, default=2.0, help="ResNet-20 width multiplier")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--data-dir")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/resnet"))
    args = ap.parse_args(argv)
    if args.quick:
        args.dataset = "digits"  # 1,437 8x8 images padded to 32x32: seconds
    mnist = args.dataset in ("mnist5k", "mnist", "fashion_mnist", "digits")
    cfg = TrainConfig(
        model="resnet20",
        model_args={
            "width_multiplier": 1.0 if args.quick else args.width,
            "in_channels": 1 if mnist else 3,
        },
        dataset=args.dataset,
        data_dir=args.data_dir,
        pad_to=32 if mnist else None,
        optimizer="linbreg",
        lr=0.1,
        momentum=0.9,
        regularizer="coupled",
        lam=0.2,
        init_density=0.05,
        epochs=2 if args.quick else args.epochs,
        threads=1,
        batch_size=64,
        lr_schedule="cosine",
    )
    run = train(cfg, args.out, progress=not args.quick)
    x = load_split(cfg).test.tensors[0][:32]
    batch_sizes = (1, 8) if args.quick else (1, 64)
    compiled = ad.compile(run.model.eval(), x, round_to="auto", auto_batch_sizes=batch_sizes)
    print(compiled.report)
    compact = compiled.export_onnx(args.out / "model.onnx")
    dense = export_onnx(run.model, args.out / "supernet.onnx", x[:8])
    lat = compare_latency(dense, compact, tuple(x.shape[1:]), batch_sizes, repeats=20, rounds=4)
    r = compiled.report
    result = {
        "test_accuracy": round(run.last["val_accuracy"], 2),
        # the sparse start: max(1, round(5% of the channels)) per layer; the classifier's
        # outputs are not removable and stay
        "start_channels": sum(
            w if name == "fc" else max(1, round(cfg.init_density * w))
            for name, w in run.last["widths"].items()
        ),
        "channels_per_epoch": [sum(r["active_units"].values()) for r in _log(args.out)],
        "params": [r.params_before, r.params_after],
        "flops": [r.flops_before, r.flops_after],
        "round_to": r.round_to,
        "dropped_branches": r.dropped_branches,
        "speedup_onnxruntime": {str(b): round(d["speedup"], 2) for b, d in lat.items()},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
