"""End-to-end discovery on real data: train a wide MLP supernet, compile it, export, verify.

1. Supernet 784-400-400-10 on the real MNIST 5k subset (4,000 train / 1,000 test images).
2. The default recipe: ``coupled_param_groups`` (each hidden neuron's incoming weights and
   bias are one group) + ``LinBreg`` with momentum + ``sparse_init_`` from 5% of each
   layer's neurons (the rest exactly zero; its growth hooks let ReLU take the subgradient 1
   at 0, so a switched-off neuron still sees its gradient): the inverse scale space adds
   the neurons the loss asks for.
3. ``archdiscover.compile``: removes the dead neurons (exactly zero), verifies the compact
   model against the trained one; the compact widths are the active neurons.
4. ONNX export, checked by ``onnx.checker`` and run in onnxruntime: its predictions on the
   whole test split must equal the trained model's; latency dense vs compact.

    python examples/demo.py           # about 30 s on 2 CPU cores
    python examples/demo.py --quick   # a few seconds (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import archdiscover as ad
from archdiscover import models
from archdiscover.coupling import active_channels, coupled_param_groups
from archdiscover.data import mnist5k
from archdiscover.export import export_onnx, ort_session
from archdiscover.latency import compare_latency


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100


def run(
    epochs: int = 15,
    widths: tuple[int, ...] = (400, 400),
    lam: float = 0.3,
    density: float = 0.05,
    out_dir: pathlib.Path = pathlib.Path("runs/demo_api"),
    seed: int = 0,
    progress: bool = True,
) -> dict:
    t0 = time.perf_counter()
    data = mnist5k(seed=seed)
    xs, ys = data.train.tensors
    xt, yt = data.test.tensors
    torch.manual_seed(seed)
    model = models.build("mlp", in_features=784, widths=widths, out_features=10)
    opt = ad.LinBreg(coupled_param_groups(model, xs[:2], lam), lr=0.1, momentum=0.9)
    ad.sparse_init_(model, density, reg=opt, generator=torch.Generator().manual_seed(seed))
    groups = ad.channel_groups(model, xs[:2])
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(epochs), desc="train", disable=not progress)
    for _ in bar:
        model.train()
        perm = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[b]), ys[b]).backward()
            opt.step()
        units = active_channels(model, groups)
        bar.set_postfix(acc=f"{accuracy(model, xt, yt):.1f}", units=list(units.values())[:-1])
    model.eval()
    acc = accuracy(model, xt, yt)
    predicted = active_channels(model, groups)

    compiled = ad.compile(model, xt[:64])
    print(compiled.report)
    out_dir.mkdir(parents=True, exist_ok=True)
    dense_path = export_onnx(model, out_dir / "supernet.onnx", xt[:8])
    path = compiled.export_onnx(out_dir / "model.onnx")
    compiled.save(out_dir / "compiled.pt")

    sess = ort_session(path)
    ort_logits = sess.run(None, {sess.get_inputs()[0].name: xt.numpy()})[0]
    with torch.no_grad():
        ref = model(xt).numpy()
    same_predictions = bool((ort_logits.argmax(1) == ref.argmax(1)).all())
    ort_error = float(np.abs(ort_logits - ref).max() / max(1.0, np.abs(ref).max()))
    widths_after = {n: w for n, (_, w) in compiled.report.layers.items()}
    if not same_predictions or ort_error > 1e-5:
        raise SystemExit(f"onnxruntime disagrees with the trained model (error {ort_error:.2e})")
    if widths_after != predicted:
        raise SystemExit(f"compiled widths {widths_after} != active units {predicted}")
    lat = compare_latency(dense_path, path, (1, 28, 28), (1, 64), repeats=40, rounds=4)
    result = {
        "test_accuracy": round(acc, 2),
        "supernet_widths": list(widths),
        "discovered_widths": [widths_after[n] for n in list(widths_after)[:-1]],
        "params": [compiled.report.params_before, compiled.report.params_after],
        "onnx": str(path),
        "onnxruntime_matches_predictions": same_predictions,
        "onnxruntime_max_error": ort_error,
        "speedup_onnxruntime": {str(b): round(v["speedup"], 2) for b, v in lat.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(
        f"\ntest accuracy {acc:.2f}% with widths {result['discovered_widths']} (supernet "
        f"{list(widths)}); onnxruntime reproduces all {len(xt)} test predictions "
        f"(max error {ort_error:.1e}); speed-up in onnxruntime "
        f"{result['speedup_onnxruntime']} at batch 1 / 64; {result['seconds']} s"
    )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 epochs on a narrower supernet")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/demo_api"))
    ap.add_argument("--json", type=pathlib.Path, help="also write the summary JSON here")
    args = ap.parse_args()
    kw = dict(epochs=4, widths=(100, 100)) if args.quick else {}
    result = run(out_dir=args.out, **kw)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
