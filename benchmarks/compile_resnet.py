"""Compile a CIFAR ResNet-18 with ~70% of its coupled channel groups zeroed; print JSON.

For ``round_to=1`` and ``round_to="auto"``: compile seconds, parameters and FLOPs before and
after, onnxruntime latency of the dense and the compact model at batch 1 and 64 (measured
interleaved, so that machine noise hits both alike), the measured speed-up and its ratio to
the FLOPs reduction (1.0 = the speed-up the FLOP count promises).

    python benchmarks/compile_resnet.py            # ResNet-18, ~5 minutes on 2 cores
    python benchmarks/compile_resnet.py --quick    # a small ResNet-20, seconds

Targets (issue 4): compile <= 10 s without the auto measurement; with ``"auto"`` the
speed-up at batch 1 and 64 is >= 0.9 of the FLOPs reduction.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys
import tempfile
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import archdiscover as ad
from archdiscover import models
from archdiscover.export import export_onnx
from archdiscover.latency import compare_latency


def sparse_resnet(quick: bool, fraction: float, seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A ResNet whose BatchNorms carry trained-looking statistics, with ``fraction`` of its
    coupled channel groups zeroed at random (filters, biases, BatchNorm scale and shift)."""
    torch.manual_seed(seed)
    if quick:
        model = models.build("resnet20", width_multiplier=1.0)
    else:
        model = models.build("resnet18")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=gen)
    groups = ad.channel_groups(model, x)
    rng = random.Random(seed)
    for g in rng.sample(groups, round(fraction * len(groups))):
        g.zero_(model)
    return model, x


def run(quick: bool, fraction: float, seed: int) -> dict:
    model, x = sparse_resnet(quick, fraction, seed)
    batch_sizes = (1, 8) if quick else (1, 64)
    reps = dict(warmup=2, repeats=6, rounds=2) if quick else dict(warmup=3, repeats=20, rounds=4)
    out: dict = {
        "model": "resnet20" if quick else "resnet18 (CIFAR)",
        "zeroed_group_fraction": fraction,
        "batch_sizes": list(batch_sizes),
        "torch_threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        dense = export_onnx(model, pathlib.Path(tmp) / "dense.onnx", x)
        for round_to in (1, "auto"):
            t = time.perf_counter()
            c = ad.compile(model, x, round_to=round_to, auto_batch_sizes=batch_sizes)
            seconds = time.perf_counter() - t
            r = c.report
            path = c.export_onnx(pathlib.Path(tmp) / f"compact_{round_to}.onnx")
            lat = compare_latency(dense, path, (3, 32, 32), batch_sizes, **reps)
            flops_reduction = r.macs_before / r.macs_after
            entry = {
                "compile_seconds": round(seconds, 3),
                "round_to_chosen": r.round_to,
                "params_before": r.params_before,
                "params_after": r.params_after,
                "flops_before": r.flops_before,
                "flops_after": r.flops_after,
                "flops_reduction": round(flops_reduction, 3),
                "max_error": r.max_error,
                "widths_multiple_of_8": all(
                    b % 8 == 0 for n, (a, b) in r.layers.items() if b != a and n != "fc"
                ),
                "latency_ms": {},
                "speedup": {},
                "speedup_over_flops_reduction": {},
            }
            for b in batch_sizes:
                d = lat[b]
                entry["latency_ms"][str(b)] = {
                    "dense": round(d["dense"]["median_ms"], 3),
                    "compact": round(d["compact"]["median_ms"], 3),
                }
                entry["speedup"][str(b)] = round(d["speedup"], 3)
                entry["speedup_over_flops_reduction"][str(b)] = round(
                    d["speedup"] / flops_reduction, 3
                )
            if r.auto:
                entry["auto_candidates_ms"] = r.auto
            out[f"round_to={round_to}"] = entry
    one, auto = out["round_to=1"], out["round_to=auto"]
    out["targets"] = {
        "compile_seconds_le_10": one["compile_seconds"] <= 10.0,
        "auto_speedup_ge_0.9_flops_reduction": all(
            v >= 0.9 for v in auto["speedup_over_flops_reduction"].values()
        ),
    }
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small ResNet-20, seconds")
    ap.add_argument("--fraction", type=float, default=0.7, help="fraction of groups zeroed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=pathlib.Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    result = run(args.quick, args.fraction, args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
