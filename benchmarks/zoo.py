"""Compile every torchvision classification and segmentation model; compare with Torch-Pruning.

Each model is built with ``weights=None`` (seeded), its normalizations get trained-looking
statistics and every zero-initialized tensor small random values (so that outputs are not
trivially zero), and half of its coupled channel groups (seeded, at random) are zeroed as
training would leave them, in two ways:

* ``filters+bn``: the producing filters and biases and the BatchNorm scale and shift (the
  ``coupled`` regularizer): the channel is exactly zero;
* ``filters``: the producing filters only (``coupled_weights``): the channel is a constant
  (its bias or BatchNorm shift), which compiles exactly only where it folds.

Then, for archdiscover (``compile(strict=True)``) and for Torch-Pruning 1.6 (its dependency
graph, given the same zeroed channels of each of its groups' root layers): channel groups
found, the fraction of output channels (of every Conv / Linear) that the structure lets go,
the fraction removed, whether the result is exact (max |compact - original| /
max(1, max |original|) <= 1e-4 in torch; for archdiscover also minimal: every zeroed
channel gone), whether it exports to ONNX and verifies in onnxruntime (same tolerance), and
seconds. Prints JSON, writes ``docs/results/zoo.json`` and the README table
``docs/results/zoo.md``.

    python benchmarks/zoo.py                    # all models, about an hour on 2 cores
    python benchmarks/zoo.py --models resnet18,vit_b_16
    python benchmarks/zoo.py --quick            # two small models, seconds
    python benchmarks/zoo.py --resume           # go on after a cut run (per-model lines kept)

Inputs are small where the model allows (64 x 64; ViT built for 64 px, 56 px for
ViT-H/14; Inception-v3 96 px; MaxViT needs 224 px). torchvision's PyPI wheel is built
against CUDA torch; on a CPU torch its two C++ op schemas are declared before the import
(none of these models calls them).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import pathlib
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any

import torch
from torch import nn

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch_pruning as tp  # noqa: E402
from tqdm import tqdm  # noqa: E402

import archdiscover as ad  # noqa: E402
from archdiscover.graph.groups import groups_of  # noqa: E402
from archdiscover.graph.ops import producer_widths  # noqa: E402
from archdiscover.graph.trace import trace  # noqa: E402
from archdiscover.verify import fresh_inputs, max_error, outputs  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
ATOL = 1e-4
TP_SECONDS = 30  # Torch-Pruning's dependency graph of Swin grows past 8 GB over minutes
_LIB: Any = None  # keeps the torchvision op schemas alive


class _Timeout(Exception):
    pass


class time_limit:
    """Raise :class:`_Timeout` in this (main) thread after ``seconds`` (SIGALRM)."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def _fire(self, *_: Any) -> None:
        raise _Timeout(f"over {self.seconds} s")

    def __enter__(self) -> None:
        self.old = signal.signal(signal.SIGALRM, self._fire)
        signal.alarm(self.seconds)

    def __exit__(self, *exc: object) -> None:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


def limit_memory(fraction: float = 0.7) -> None:
    """Cap this process's address space (a runaway dependency graph raises MemoryError
    instead of taking the machine's memory)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        cap = int(total * fraction)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (ValueError, OSError):
        pass


def import_torchvision() -> Any:
    """``torchvision.models``, declaring torchvision's C++ op schemas first on a CPU torch."""
    global _LIB
    try:
        import torchvision.models as models

        return models
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    for k in [k for k in sys.modules if k.startswith("torchvision")]:
        del sys.modules[k]
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision.models as models

    return models


def model_names(tv: Any) -> list[str]:
    """Every classification and segmentation model: one of each family first (so that a
    run cut short has covered every structure), then the rest."""
    names = tv.list_models(module=tv) + tv.list_models(module=tv.segmentation)
    first = [
        "resnet18", "resnext50_32x4d", "regnet_x_400mf", "regnet_y_400mf", "mobilenet_v2",
        "mobilenet_v3_small", "mnasnet0_5", "googlenet", "inception_v3", "shufflenet_v2_x0_5",
        "squeezenet1_1", "swin_t", "swin_v2_t", "maxvit_t", "vgg11_bn", "vit_b_32",
        "wide_resnet50_2", "fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large",
        "lraspp_mobilenet_v3_large",
    ]  # fmt: skip
    first = [n for n in first if n in names]
    return first + [n for n in names if n not in first]


def build(tv: Any, name: str, quick: bool) -> tuple[nn.Module, torch.Tensor]:
    """The model with seeded random weights, and its example input (small where possible)."""
    kw: dict[str, Any] = {}
    size = 32 if quick else 64
    if name.startswith("vit_h"):
        kw["image_size"], size = 56, 56
    elif name.startswith("vit"):
        kw["image_size"] = size
    elif name.startswith("maxvit"):
        size = 224
    elif name.startswith("inception"):
        kw.update(aux_logits=False, init_weights=False)
        size = 96
    elif name.startswith("googlenet"):
        kw.update(aux_logits=False, init_weights=False)
    if name in tv.list_models(module=tv.segmentation):
        kw["weights_backbone"] = None
        kw["aux_loss"] = False
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tv.get_model(name, weights=None, **kw)
    gen = torch.Generator().manual_seed(1)
    trained_looking(model, gen)
    x = torch.randn(2, 3, size, size, generator=gen)
    return model.eval(), x


def trained_looking(model: nn.Module, gen: torch.Generator) -> None:
    """Give a freshly built model's affine BatchNorms trained-looking statistics and scales,
    and every all-zero parameter (heads, class tokens, layer scales) small random values, so
    that outputs are not trivially zero (in place, from ``gen``)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
        for p in model.parameters():
            if not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def zero_groups(model: nn.Module, groups: list[ad.ChannelGroup], filters_only: bool) -> None:
    """Zero the groups as training would: filters, biases and norms, or the filters only."""
    with torch.no_grad():
        for g in groups:
            for s in g.params(("out",) if filters_only else ("out", "norm")):
                if filters_only and s.param.endswith("bias"):
                    continue
                t = getattr(model.get_submodule(s.module), s.param)
                if isinstance(t, nn.Parameter):
                    t.index_fill_(s.dim, torch.as_tensor(s.index), 0.0)


def out_channels(model: nn.Module) -> int:
    return sum(producer_widths(model).values())


def onnx_ok(model: nn.Module, x: torch.Tensor) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ad.export_onnx(model, pathlib.Path(tmp) / "m.onnx", x, atol=ATOL)
            return True, ""
        except Exception as e:
            return False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def error_of(model: nn.Module, refs: list[list[torch.Tensor]], checks: list[tuple]) -> float:
    try:
        return max(max_error(outputs(model, c), r).rel for r, c in zip(refs, checks, strict=True))
    except Exception:
        return math.inf


# ---------------------------------------------------------------------------------------------
# archdiscover
# ---------------------------------------------------------------------------------------------
def run_ours(
    model: nn.Module, x: torch.Tensor, zeroed: int, total: int, onnx: bool = True
) -> dict[str, Any]:
    t = time.perf_counter()
    try:
        c = ad.compile(model, x, atol=ATOL, strict=True)
    except Exception as e:
        rec: dict[str, Any] = {
            "strict_exact": False,
            "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
            "seconds": round(time.perf_counter() - t, 2),
        }
        try:
            c = ad.compile(model, x, atol=ATOL, strict=False)
            rec["removed_fraction_non_strict"] = round(
                1 - sum(b for _, b in c.report.layers.values()) / total, 4
            )
        except Exception:
            pass
        return rec
    seconds = time.perf_counter() - t
    after = sum(b for _, b in c.report.layers.values())
    ok, why = onnx_ok(c.model, x) if onnx else (None, "")
    return {
        "strict_exact": c.report.max_error <= ATOL,
        "max_error": c.report.max_error,
        "removed_fraction": round(1 - after / total, 4),
        "minimal": total - after >= zeroed,
        "kept": c.report.kept,
        "onnx": ok,
        **({"onnx_error": why} if why else {}),
        "seconds": round(seconds, 2),
        "tracer": c.report.tracer,
        "compiled_type": type(c.model).__name__,
    }


# ---------------------------------------------------------------------------------------------
# Torch-Pruning
# ---------------------------------------------------------------------------------------------
def tp_groups(model: nn.Module, x: torch.Tensor) -> tuple[Any, list[Any], list[nn.Module]]:
    """Torch-Pruning's dependency graph and its prunable groups (output layers ignored)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        ignored = [m for m in _output_layers(model, x)]
        groups = list(
            dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear])
        )
    return dg, groups, ignored


def _output_layers(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """Conv / Linear layers whose outputs are model outputs (their widths must stay)."""
    g = trace(model, x)
    outs = []
    for mod in g.producer_modules():
        labs = g.out_labels(mod)
        if any(g.frozen.get(int(lab), ("",))[0].startswith("model output") for lab in labs):
            outs.append(model.get_submodule(mod))
    return outs


def tp_structural(groups: list[Any]) -> tuple[int, int]:
    """(channel groups, output channels those groups could remove) of Torch-Pruning."""
    n_groups = 0
    chans: set[tuple[int, int]] = set()
    for grp in groups:
        root = grp[0].dep.target.module
        n = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        n_groups += n
        for dep, idxs in grp:
            fn = dep.handler
            if fn in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
                chans.update((id(dep.target.module), int(i)) for i in idxs)
    return n_groups, len(chans)


def run_tp(
    zeroed_model: nn.Module, x: torch.Tensor, total: int, refs, checks, onnx: bool
) -> dict[str, Any]:
    t = time.perf_counter()
    model = copy.deepcopy(zeroed_model)
    try:
        with time_limit(TP_SECONDS):
            dg, groups, _ = tp_groups(model, x)
        n_groups, n_struct = tp_structural(groups)
        plans = []
        for grp in groups:
            root = grp[0].dep.target.module
            w = root.weight.detach()
            dead = [int(i) for i in torch.nonzero(w.flatten(1).abs().sum(1) == 0).flatten()]
            n = w.shape[0]
            if dead and len(dead) < n:
                handler = (
                    tp.prune_conv_out_channels
                    if isinstance(root, nn.Conv2d)
                    else tp.prune_linear_out_channels
                )
                plans.append((root, handler, dead))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for root, handler, dead in plans:
                g = dg.get_pruning_group(root, handler, idxs=dead)
                if dg.check_pruning_group(g):
                    g.prune()
    except (Exception, _Timeout) as e:
        del model
        gc.collect()
        return {
            "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
            "seconds": round(time.perf_counter() - t, 2),
        }
    seconds = time.perf_counter() - t
    err = error_of(model, refs, checks)
    ok, why = onnx_ok(model, x) if onnx else (None, "")
    return {
        "groups": n_groups,
        "removable_fraction": round(n_struct / total, 4),
        "removed_fraction": round(1 - out_channels(model) / total, 4),
        "exact": err <= ATOL,
        "max_error": err,
        "onnx": ok,
        **({"onnx_error": why} if why else {}),
        "seconds": round(seconds, 2),
    }


def _norm_handlers() -> tuple[Any, ...]:
    names = ("batchnorm", "layernorm", "groupnorm", "instancenorm", "prelu", "depthwise_conv")
    return tuple(getattr(tp, f"prune_{n}_{side}_channels") for n in names for side in ("out", "in"))


def run_tp_own(base: nn.Module, x: torch.Tensor, total: int, seed: int) -> dict[str, Any]:
    """Torch-Pruning on its own groups: half of the channels of its groups zeroed (filters,
    biases and the norms of the group), pruned by it; is that exact?"""
    t = time.perf_counter()
    model = copy.deepcopy(base)
    norms = _norm_handlers()
    outs = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
    try:
        with time_limit(TP_SECONDS):
            dg, groups, _ = tp_groups(model, x)
            rng = random.Random(seed)
            plans = []
            for grp in groups:
                root = grp[0].dep.target.module
                n = root.weight.shape[0]
                # as Torch-Pruning's pruners do: the same positions in every group of a
                # grouped convolution in the group
                k = max(
                    [
                        d.target.module.groups
                        for d, _ in grp
                        if isinstance(d.target.module, nn.Conv2d)
                        and 1 < d.target.module.groups < d.target.module.in_channels
                    ],
                    default=1,
                )
                k = k if n % k == 0 else 1
                pos = rng.sample(range(n // k), (n // k) // 2)
                idxs = sorted(p + j * (n // k) for j in range(k) for p in pos)
                handler = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else outs[1]
                plans.append(dg.get_pruning_group(root, handler, idxs=idxs))
            with torch.no_grad():
                for g in plans:
                    for dep, idxs in g:
                        m, fn = dep.target.module, dep.handler
                        if fn not in outs and fn not in norms:
                            continue
                        ii = torch.as_tensor([int(i) for i in idxs])
                        for pname in ("weight", "bias"):
                            w = getattr(m, pname, None)
                            if isinstance(w, nn.Parameter) and w.dim() >= 1 and len(ii):
                                dim = (
                                    1
                                    if isinstance(m, nn.ConvTranspose2d) and pname == "weight"
                                    else 0
                                )
                                if int(ii.max()) < w.shape[dim]:
                                    w.index_fill_(dim, ii, 0.0)
            checks = [(x,), fresh_inputs((x,), 0)]
            refs = [outputs(model, c) for c in checks]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for g in plans:
                    if dg.check_pruning_group(g):
                        g.prune()
    except (Exception, _Timeout) as e:
        return {
            "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
            "seconds": round(time.perf_counter() - t, 2),
        }
    err = error_of(model, refs, checks)
    return {
        "removed_fraction": round(1 - out_channels(model) / total, 4),
        "exact": err <= ATOL,
        "max_error": err,
        "seconds": round(time.perf_counter() - t, 2),
    }


# ---------------------------------------------------------------------------------------------
def structure(
    base: nn.Module, x: torch.Tensor, seed: int, rec: dict[str, Any]
) -> tuple[list[ad.ChannelGroup], int, int] | None:
    """Trace ``base`` and record what the tracer found in ``rec`` (tracer, groups, removable
    fraction, what blocks); pick half of the groups to zero (seeded). Returns the chosen
    groups, their output channels and all output channels, or None (``rec`` says why) when
    the model cannot be traced."""
    t = time.perf_counter()
    try:
        g = trace(base, x)
    except Exception as e:
        rec["traceable"] = False
        rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        return None
    rec["traceable"] = True
    rec["tracer"] = g.tracer
    rec["trace_seconds"] = round(time.perf_counter() - t, 2)
    groups = groups_of(g)
    total = out_channels(base)
    removable = sum(
        int(lab) not in g.frozen for mod in g.producer_modules() for lab in g.out_labels(mod)
    )
    rec.update(
        groups=len(groups),
        out_channels=total,
        removable_fraction=round(removable / total, 4),
        unsupported=sorted({why for _, _, why in g.unsupported})[:8],
    )
    del g
    chosen = random.Random(seed).sample(groups, len(groups) // 2)
    widths = producer_widths(base)
    zeroed = sum(  # output channels in the zeroed groups
        len(s.index)
        for grp in chosen
        for s in grp.slices
        if s.role == "out" and s.module in widths and s.param in ("weight", "in_proj_weight")
    )
    return chosen, zeroed, total


def run_model(tv: Any, name: str, quick: bool, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    base, x = build(tv, name, quick)
    rec: dict[str, Any] = {
        "model": name,
        "input": list(x.shape),
        "params": sum(p.numel() for p in base.parameters()),
    }
    found = structure(base, x, seed, rec)
    if found is None:
        return rec
    chosen, zeroed, total = found
    rec["zeroed_fraction"] = round(zeroed / total, 4)
    for variant, filters_only in (("filters+bn", False), ("filters", True)):
        model = copy.deepcopy(base)
        zero_groups(model, chosen, filters_only)
        checks = [(x,), fresh_inputs((x,), 0)]
        refs = [outputs(model, c) for c in checks]
        ours = run_ours(model, x, zeroed if not filters_only else 0, total, not filters_only)
        failed = rec.get("filters+bn", {}).get("torch_pruning", {}).get("error")
        theirs = (
            {"error": f"skipped: failed with filters+bn ({failed[:80]})"}
            if failed
            else run_tp(model, x, total, refs, checks, onnx=not filters_only)
        )
        rec[variant] = {"archdiscover": ours, "torch_pruning": theirs}
        del model
        gc.collect()
    failed = rec["filters+bn"]["torch_pruning"].get("error")
    rec["torch_pruning_own_groups"] = (
        {"error": f"skipped: failed with filters+bn ({failed[:80]})"}
        if failed
        else run_tp_own(base, x, total, seed)
    )
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def table(records: list[dict[str, Any]]) -> str:
    """The README table: archdiscover and Torch-Pruning side by side."""

    def yn(v: Any) -> str:
        return "-" if v is None else "yes" if v else "no"

    def pct(d: dict, k: str) -> str:
        return f"{100 * d[k]:.1f}" if k in d else "-"

    lines = [
        "| model | channel groups | removable % | removed % | exact | ONNX | seconds "
        "| filters only: removed %, exact | TP on its own groups: removed %, exact |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if not r.get("traceable"):
            lines.append(f"| {r['model']} | not traceable: {r.get('error', '')[:80]} |||||||| ")
            continue
        a, b = r["filters+bn"]["archdiscover"], r["filters+bn"]["torch_pruning"]
        fa, fb = r["filters"]["archdiscover"], r["filters"]["torch_pruning"]
        own = r.get("torch_pruning_own_groups", {})
        exact_a = yn(a.get("strict_exact")) + ("" if a.get("minimal", True) else " (not minimal)")
        fail = " (fails)" if "error" in b else ""
        lines.append(
            f"| {r['model']} | {r['groups']} / {b.get('groups', '-')}{fail} "
            f"| {100 * r['removable_fraction']:.1f} / {pct(b, 'removable_fraction')} "
            f"| {pct(a, 'removed_fraction')} / {pct(b, 'removed_fraction')} "
            f"| {exact_a} / {yn(b.get('exact'))} | {yn(a.get('onnx'))} / {yn(b.get('onnx'))} "
            f"| {a.get('seconds', '-')} / {b.get('seconds', '-')} "
            f"| {pct(fa, 'removed_fraction')} / {pct(fb, 'removed_fraction')}, "
            f"{yn(fa.get('strict_exact'))} / {yn(fb.get('exact'))} "
            f"| {pct(own, 'removed_fraction')}, {yn(own.get('exact'))} |"
        )
    return "\n".join(lines) + "\n"


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if r.get("traceable")]
    fb = [r["filters+bn"] for r in ok]
    fo = [r["filters"] for r in ok]

    def count(rows: list[dict], tool: str, key: str) -> int:
        return sum(bool(x[tool].get(key)) for x in rows)

    removed_ge = sum(
        x["archdiscover"].get("removed_fraction", 0)
        >= (x["torch_pruning"].get("removed_fraction", 0) if x["torch_pruning"].get("exact") else 0)
        for x in fb
    )
    removable_ge = [
        r["model"]
        for r in ok
        if r["removable_fraction"] >= r["filters+bn"]["torch_pruning"].get("removable_fraction", 0)
    ]
    below = [
        {
            "model": r["model"],
            "archdiscover": r["removable_fraction"],
            "torch_pruning": r["filters+bn"]["torch_pruning"]["removable_fraction"],
            "torch_pruning_own_groups_exact": r.get("torch_pruning_own_groups", {}).get("exact"),
        }
        for r in ok
        if r["model"] not in removable_ge
    ]
    return {
        "models": len(records),
        "traceable": len(ok),
        "filters+bn": {
            "archdiscover_strict_exact": count(fb, "archdiscover", "strict_exact"),
            "archdiscover_minimal": count(fb, "archdiscover", "minimal"),
            "archdiscover_onnx": count(fb, "archdiscover", "onnx"),
            "torch_pruning_ran": sum("error" not in x["torch_pruning"] for x in fb),
            "torch_pruning_exact": count(fb, "torch_pruning", "exact"),
            "torch_pruning_onnx": count(fb, "torch_pruning", "onnx"),
            "removed_at_least_exact_torch_pruning": removed_ge,
        },
        "filters": {
            "archdiscover_strict_exact": count(fo, "archdiscover", "strict_exact"),
            "archdiscover_onnx": count(fo, "archdiscover", "onnx"),
            "torch_pruning_exact": count(fo, "torch_pruning", "exact"),
        },
        "removable_at_least_torch_pruning": len(removable_ge),
        "removable_below_torch_pruning": below,
        "torch_pruning_own_groups_exact": sum(
            bool(r.get("torch_pruning_own_groups", {}).get("exact")) for r in ok
        ),
        "seconds": round(sum(r.get("seconds", 0) for r in records), 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two small models at 32 px")
    ap.add_argument("--models", help="comma-separated model names (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=pathlib.Path, help="JSON file (default docs/results/zoo.json)")
    ap.add_argument("--resume", action="store_true", help="keep the models of a cut run")
    ap.add_argument(
        "--report-only", action="store_true", help="write JSON and table from a cut run's lines"
    )
    args = ap.parse_args(argv)
    limit_memory()
    try:
        tv = import_torchvision()
    except Exception as e:
        print(json.dumps({"skipped": f"torchvision is not importable: {e}"}))
        return 0
    names = (
        args.models.split(",")
        if args.models
        else ["squeezenet1_1", "shufflenet_v2_x0_5"]
        if args.quick
        else model_names(tv)
    )
    out = args.out or ROOT / "docs" / "results" / "zoo.json"
    partial = out.with_suffix(".partial.jsonl")  # one line per model, so a cut run keeps them
    done: dict[str, dict[str, Any]] = {}
    if args.resume and partial.is_file():
        for line in partial.read_text().splitlines():
            r = json.loads(line)
            done[r["model"]] = r
    records = []
    if args.report_only:
        for line in partial.read_text().splitlines() if partial.is_file() else []:
            r = json.loads(line)
            done[r["model"]] = r
        names = [n for n in names if n in done]
    for name in tqdm(names, desc="zoo", file=sys.stderr):
        if name in done:
            records.append(done[name])
            continue
        try:
            rec = run_model(tv, name, args.quick, args.seed)
        except Exception as e:
            traceback.print_exc()
            rec = {"model": name, "traceable": False, "error": f"{type(e).__name__}: {e}"}
        records.append(rec)
        if not args.quick:
            with open(partial, "a") as f:
                f.write(json.dumps(rec, default=str) + "\n")
        gc.collect()
    records.sort(key=lambda r: str(r["model"]))
    missing = [n for n in model_names(tv) if n not in {r["model"] for r in records}]
    result = {
        "experiment": "zoo",
        "atol": ATOL,
        "summary": summary(records),
        "not_run": [] if args.models or args.quick else missing,
        "models": records,
    }
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if not args.quick:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        out.with_suffix(".md").write_text(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
