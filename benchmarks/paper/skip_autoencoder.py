"""Topology discovery (the authors' Skip-Encoder notebook) on the MNIST 5k subset; prints JSON.

The supernet is ``models.skip_autoencoder``: 6 fully connected blocks of 784 units (the
notebook's ``7 * [784]``), block ``i`` computing
``x_{i+1} = relu(W_i x_i + b_i) + sum_{k <= i} s_{i,k} x_k`` (no ReLU in the last block,
whose output is floored at the background, ``max(x_6, pixel 0)`` in standardized units,
as the notebook's ReLU output floors pixels in [0, 1]): 21 candidate skip connections,
each with a gate ``s_{i,k}`` that starts at zero. Two tasks on the 4,000 / 1,000 split:

* **denoising** -- the input is ``x + noise``, noise std 0.05 of the pixel range (the
  paper's setting);
* **deblurring** -- the input is ``blur(x) + noise``, a Gaussian blur of 9 x 9 pixels and
  std 5 (the notebook's second task), the same noise.

Per task, the same supernet is trained twice, the same epochs, batch 32, cosine learning
rate:

* ``dense`` -- Adam (lr 1e-3, the notebook's), every weight and every gate free, from
  PyTorch's dense initialization with the gates at zero;
* ``discovered`` -- AdaBreg (lr 5e-3) from a sparse start (1% of the rows, positive
  biases, every gate zero): row groups on the hidden Linear weights (``--lam``, default
  0.07, the notebook's), the output layer dense (the recipe's model-output layer), plain
  L1 on the gates (``--gate-lam``, default 2 ``lam``: under AdaBreg's per-coordinate
  steps a gate then enters on about twice the time scale of a row; the notebook's 28
  ``lam`` makes it 28 times slower, see ``--ablations``), biases free (docs/RESULTS.md
  section 7 lists the small sweep behind ``gate_lam``). The trained net is compiled
  (``archdiscover.compile``: connections whose gate is exactly zero are removed, layers
  that no longer reach the output dropped, dead units removed; verified exact) and
  exported to ONNX, verified in onnxruntime; its quality is the compiled network's.

PSNR and SSIM are measured on the 1,000 test images in the pixel range [0, 1] (one fixed
noise draw), ``noisy`` being the degraded input itself. ``--ablations`` adds, for the
denoising task, the discovered net with the notebook's gate cost and both
nets without the output floor. Plots: the architectures (supernet beside the compiled
networks), the connections and widths per epoch (the inverse scale space), test images.

    python benchmarks/paper/skip_autoencoder.py [--epochs 100] [--ablations]
    python benchmarks/paper/skip_autoencoder.py --quick     # seconds: checks the script
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import add_data_args, data_keys

import archdiscover as ad
from archdiscover.compiler.topology import layer_graph, summarize
from archdiscover.data import gaussian_blur
from archdiscover.engine import TrainConfig, load_split, train
from archdiscover.graph.gates import gate_parameters
from archdiscover.metrics import psnr, ssim
from archdiscover.plots import plot_architecture

NOISE_PIXEL_STD = 0.05  # of the pixel range [0, 1], as in the paper
BLUR = {"blur_kernel": 9, "blur_sigma": 5.0}  # the notebook's deblurring task
LAM = 0.07  # the notebook's row-group strength
GATE_FACTOR = 2.0  # gate_lam = GATE_FACTOR * lam
TASKS = ("denoising", "deblurring")


def settings(
    quick: bool, lr: float, floor: float, lam: float = LAM, gate_lam: float | None = None
) -> dict[str, dict[str, Any]]:
    """The supernet and the two training recipes (``gate_lam`` unset: ``GATE_FACTOR * lam``)."""
    supernet = {
        "model": "skip_autoencoder",
        "model_args": {"in_shape": [1, 28, 28], "depth": 3 if quick else 6, "out_floor": floor},
    }
    return {
        "supernet": supernet,
        "dense": {"optimizer": "adam", "lr": 1e-3, "regularizer": "none"},
        "discovered": {
            "optimizer": "adabreg",
            "lr": lr,
            "regularizer": "group",
            "lam": lam,
            "gate_lam": GATE_FACTOR * lam if gate_lam is None else gate_lam,
            "init_density": 0.01,
            "bias_init": "positive",
        },
    }


def ablations(s: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Variants of the denoising runs: (supernet, recipe) per name."""
    no_floor = {**s["supernet"], "model_args": {**s["supernet"]["model_args"], "out_floor": None}}
    return {
        "discovered, the notebook's gate cost (gate_lam = 28 lam)": (
            s["supernet"],
            {**s["discovered"], "gate_lam": 28 * s["discovered"]["lam"]},
        ),
        "dense, no output floor": (no_floor, s["dense"]),
        "discovered, no output floor": (no_floor, s["discovered"]),
    }


def _gates(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    params = gate_parameters(model, x[:2])
    return torch.cat([p.detach().reshape(-1) for p in params.values()]).cpu()


@torch.no_grad()
def quality(
    model: torch.nn.Module | None,
    x: torch.Tensor,
    noise: torch.Tensor,
    degrade: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, float]:
    """Mean PSNR and SSIM on the test split in the pixel range [0, 1] (MNIST's pixels span
    exactly [0, 1] before standardization: pixel = (x - min) / (max - min)). With
    ``model=None``, of the degraded input itself."""
    lo, hi = float(x.min()), float(x.max())
    inp = degrade(x) + noise
    if model is None:
        out = inp
    else:
        model = model.cpu().eval()
        out = torch.cat([model(inp[i : i + 500]) for i in range(0, len(x), 500)])

    def to_px(t: torch.Tensor) -> torch.Tensor:
        return ((t - lo) / (hi - lo)).clamp(0, 1)

    clean, got = to_px(x), to_px(out)
    return {"psnr": float(psnr(got, clean).mean()), "ssim": float(ssim(got, clean).mean())}


def _onnx_error(compiled: ad.Compiled, x: torch.Tensor, path: pathlib.Path) -> float:
    """Export the compact model (the export verifies it) and return onnxruntime's max
    |error| against the compiled torch model on ``x``."""
    from archdiscover.export import ort_session

    compiled.export_onnx(path)
    sess = ort_session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = compiled.model(x).numpy()
    return float(abs(got - want).max())


def _train(
    cfg: dict[str, Any], root: pathlib.Path, name: str, xt: torch.Tensor
) -> tuple[Any, list[dict[str, Any]], float]:
    """One engine run; the per-epoch log also counts the non-zero gates (``measured``)."""
    log: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    res = train(
        cfg,
        root / name,
        progress=False,
        on_epoch=log.append,
        measure=lambda m: float((_gates(m, xt) != 0).sum()),
    )
    secs = time.perf_counter() - t0
    last = log[-1]
    print(
        f"{name:24s}: {last['val_psnr']:.2f} dB (standardized), {int(last['measured'])} gates "
        f"non-zero, units {list(last['active_units'].values())} ({secs:.1f} s)",
        file=sys.stderr,
        flush=True,
    )
    return res, log, secs


def run_task(
    task: str,
    base: dict[str, Any],
    s: dict[str, dict[str, Any]],
    xt: torch.Tensor,
    noise: torch.Tensor,
    tmp: pathlib.Path,
    extra: dict[str, tuple[dict[str, Any], dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Train the dense and the discovered net for one task (and the ``extra`` variants),
    compile the discovered one; quality, sizes, connections and curves."""
    cfg_task = {**base, "task": task, **(BLUR if task == "deblurring" else {})}

    def degrade(t: torch.Tensor) -> torch.Tensor:
        if task == "deblurring":
            return gaussian_blur(t, BLUR["blur_kernel"], BLUR["blur_sigma"])
        return t

    out: dict[str, Any] = {"noisy": quality(None, xt, noise, degrade)}
    dres, dlog, dsecs = _train(
        {**cfg_task, **s["supernet"], **s["dense"]}, tmp, f"{task}-dense", xt
    )
    dense = dres.model.cpu().eval()
    out["dense"] = {
        **quality(dense, xt, noise, degrade),
        "params": sum(p.numel() for p in dense.parameters()),
        "gates_nonzero": int((_gates(dense, xt) != 0).sum()),
        "seconds": dsecs,
        "recipe": s["dense"],
    }
    bres, blog, bsecs = _train(
        {**cfg_task, **s["supernet"], **s["discovered"]}, tmp, f"{task}-discovered", xt
    )
    model = bres.model.cpu().eval()
    t0 = time.perf_counter()
    compiled = ad.compile(model, xt[:64])
    compile_s = time.perf_counter() - t0
    rep = compiled.report
    counts = summarize(rep.connections)
    onnx_err = _onnx_error(compiled, xt[:64], tmp / f"{task}.onnx")
    widths = {n: after for n, (_before, after) in rep.layers.items()}
    out["discovered"] = {
        **quality(compiled.model, xt, noise, degrade),
        "skips_kept": counts["folded"] + counts["kept"],
        "skips_total": counts["total"],
        "widths": widths,
        "connections": [
            {k: c[k] for k in ("gate", "source", "targets", "value", "status")}
            for c in rep.connections
        ],
        "dropped_layers": rep.dropped_layers,
        "params": rep.params_after,
        "params_supernet": rep.params_before,
        "flops": rep.flops_after,
        "flops_supernet": rep.flops_before,
        "depth": [rep.depth_before, rep.depth_after],
        "compile_max_rel_error": rep.max_error,
        "compile_seconds": compile_s,
        "onnx_max_abs_error": onnx_err,
        "seconds": bsecs,
        "recipe": s["discovered"],
    }
    out["_curves"] = {
        "dense": [r["measured"] for r in dlog],
        "discovered": [r["measured"] for r in blog],
        "widths": {
            layer: [r["active_units"][layer] for r in blog] for layer in blog[-1]["active_units"]
        },
        "val_psnr": {
            "dense": [r["val_psnr"] for r in dlog],
            "discovered": [r["val_psnr"] for r in blog],
        },
    }
    out["_models"] = {
        "supernet": model,
        "compiled": compiled.model,
        "dense": dense,
        "degrade": degrade,
    }
    if extra:
        out["ablations"] = {}
        for name, (supernet, recipe) in extra.items():
            tag = f"{task}-ablation-{len(out['ablations'])}"
            res, _log, secs = _train({**cfg_task, **supernet, **recipe}, tmp, tag, xt)
            m = res.model.cpu().eval()
            gates = _gates(m, xt)
            out["ablations"][name] = {
                **quality(m, xt, noise, degrade),
                "gates_nonzero": int((gates != 0).sum()),
                "gates_total": len(gates),
                "seconds": secs,
                "recipe": recipe,
                "model_args": supernet["model_args"],
            }
    return out


def run(
    epochs: int,
    seed: int,
    quick: bool,
    out_dir: pathlib.Path,
    lr: float,
    tasks: tuple[str, ...] = TASKS,
    data: dict | None = None,
    with_ablations: bool = False,
    lam: float = LAM,
    gate_lam: float | None = None,
) -> dict[str, Any]:
    t_all = time.perf_counter()
    torch.set_num_threads(1)
    base: dict[str, Any] = {
        "dataset": "mnist5k",
        "batch_size": 32,
        "lr_schedule": "cosine",
        "seed": seed,
        "epochs": epochs,
        "impl": "foreach" if quick else "auto",
        **(data or {}),
    }
    split = load_split(TrainConfig.from_dict({**base, "model": "mlp"}))
    xs, (xt, yt) = split.train.tensors[0], split.test.tensors
    if quick:
        xt, yt = xt[:200], yt[:200]
    base["noise_std"] = NOISE_PIXEL_STD * float(xs.max() - xs.min())
    noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(seed + 12345))
    noise *= base["noise_std"]
    floor = float(xs.min())  # pixel 0 (the background) in standardized units
    s = settings(quick, lr, floor, lam, gate_lam)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        for task in tasks:
            extra = ablations(s) if with_ablations and task == "denoising" else None
            results[task] = run_task(task, base, s, xt, noise, pathlib.Path(tmp_s), extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_topologies(results, xt, out_dir / "skip_autoencoder_architecture.png"),
        plot_growth(results, out_dir / "skip_autoencoder_growth.png"),
        plot_examples(results, xt, yt, noise, out_dir / "skip_autoencoder_examples.png"),
    ]
    for r in results.values():
        r.pop("_models")
        r["curves"] = r.pop("_curves")
    first = results[tasks[0]]
    return {
        "experiment": "skip_autoencoder",
        "dataset": base["dataset"],
        "task": f"{tasks[0]}, noise std {NOISE_PIXEL_STD} of the pixel range",
        "supernet": s["supernet"],
        "epochs": epochs,
        "batch_size": base["batch_size"],
        "lr_schedule": base["lr_schedule"],
        "seed": seed,
        "noisy": first["noisy"],
        "dense": first["dense"],
        "discovered": first["discovered"],
        **({"ablations": first["ablations"]} if "ablations" in first else {}),
        **{t: results[t] for t in tasks[1:]},
        "curves": {t: results[t].pop("curves") for t in tasks},
        "plots": [str(p) for p in plots],
        "seconds": time.perf_counter() - t_all,
    }


def plot_topologies(results: dict[str, dict], xt: torch.Tensor, path: pathlib.Path) -> pathlib.Path:
    """The supernet's topology beside each task's compiled network."""
    first = next(iter(results.values()))["_models"]
    x = xt[:8]
    graphs = {"supernet (candidate connections dashed)": layer_graph(first["supernet"], x)}
    for task, r in results.items():
        d = r["discovered"]
        graphs[
            f"discovered, {task}: {d['psnr']:.2f} dB, {d['skips_kept']} of {d['skips_total']} skips"
        ] = layer_graph(r["_models"]["compiled"], x)
    return plot_architecture(graphs, path, title="skip autoencoder: supernet and discovered nets")


def plot_growth(results: dict[str, dict], path: pathlib.Path) -> pathlib.Path:
    """Non-zero gates and active units per epoch (the inverse scale space)."""
    fig = Figure(figsize=(5.5 * len(results), 5.0), dpi=120, layout="constrained")
    for k, (task, r) in enumerate(results.items()):
        c = r["_curves"]
        ax = fig.add_subplot(1, len(results), k + 1)
        epochs = range(1, len(c["discovered"]) + 1)
        for name, ys in c["widths"].items():
            ax.plot(epochs, ys, marker=".", lw=1, label=f"units {name.removesuffix('.linear')}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("active units (non-zero rows, log scale)")
        ax2 = ax.twinx()
        ax2.plot(epochs, c["discovered"], color="k", lw=2, label="non-zero gates (discovered)")
        ax2.plot(epochs, c["dense"], color="0.6", lw=2, ls="--", label="non-zero gates (dense)")
        ax2.set_ylabel("non-zero gates (connections)")
        ax2.set_ylim(0, max(c["dense"] + c["discovered"] + [1]) + 1)
        ax.set_title(f"{task}: growth of units and connections", fontsize="small")
        ax.grid(True, alpha=0.3)
        if k == 0:
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            fig.legend(h1 + h2, l1 + l2, fontsize=7, loc="outside lower center", ncols=4)
    fig.savefig(path)
    return path


@torch.no_grad()
def plot_examples(
    results: dict[str, dict],
    xt: torch.Tensor,
    yt: torch.Tensor,
    noise: torch.Tensor,
    path: pathlib.Path,
) -> pathlib.Path:
    """Six test images of different digits per task: clean, input, dense, discovered."""
    first: dict[int, int] = {}
    for i, y in enumerate(yt.tolist()):
        first.setdefault(int(y), i)
    idx = torch.tensor([first[c] for c in sorted(first)][:6])  # one image per class
    n = len(idx)
    lo, hi = float(xt.min()), float(xt.max())
    rows = []
    for task, r in results.items():
        m = r["_models"]
        inp = m["degrade"](xt[idx]) + noise[idx]
        rows += [
            (f"{task}: input", inp),
            (f"dense ({r['dense']['psnr']:.1f} dB)", m["dense"](inp)),
            (f"discovered ({r['discovered']['psnr']:.1f} dB)", m["compiled"](inp)),
        ]
    rows = [("clean", xt[idx]), *rows]
    fig = Figure(figsize=(1.3 * n + 1.8, 1.3 * len(rows)), dpi=120, layout="tight")
    for i, (label, imgs) in enumerate(rows):
        for j in range(n):
            ax = fig.add_subplot(len(rows), n, i * n + j + 1)
            img = ((imgs[j, 0] - lo) / (hi - lo)).clamp(0, 1).numpy()
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    fig.savefig(path)
    return path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 blocks, 1 epoch, 200 test images")
    ap.add_argument("--epochs", type=int, default=100, help="the notebook's 100")
    ap.add_argument(
        "--ablations",
        action="store_true",
        help="also the notebook's gate cost and both nets without the output floor (denoising)",
    )
    ap.add_argument("--lr", type=float, default=5e-3, help="AdaBreg's learning rate")
    ap.add_argument("--lam", type=float, default=LAM, help="row-group strength")
    ap.add_argument(
        "--gate-lam", type=float, default=None, help=f"the gates' L1 (default {GATE_FACTOR} lam)"
    )
    ap.add_argument("--tasks", default=",".join(TASKS), help="denoising,deblurring")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/results"))
    add_data_args(ap)
    args = ap.parse_args(argv)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    if not tasks or any(t not in TASKS for t in tasks):
        ap.error(f"--tasks must name some of {', '.join(TASKS)}, got {args.tasks!r}")
    epochs = 1 if args.quick else args.epochs
    result = run(
        epochs,
        args.seed,
        args.quick,
        args.out,
        args.lr,
        tasks,
        data_keys(args),
        args.ablations,
        args.lam,
        args.gate_lam,
    )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
