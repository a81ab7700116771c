"""Compile a sample of timm models (models archdiscover was not built on): strict, exact,
minimal, ONNX; prints JSON, writes ``docs/results/zoo_timm.json``.

The same protocol as ``zoo.py`` (``pretrained=False``, seeded, trained-looking BatchNorm
statistics, half of the coupled channel groups zeroed with filters, biases and norms), without
Torch-Pruning. Images are 64 x 64 where the model can be built for them, else its default
size. Needs timm (``pip install --no-deps timm==1.0.31`` next to torchvision, see
``zoo.py``); prints ``{"skipped": ...}`` without it.

    python benchmarks/zoo_timm.py                       # the sample below, ~10 minutes
    python benchmarks/zoo_timm.py --models resnet18,vit_tiny_patch16_224
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import pathlib
import sys
import time
import warnings
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import zoo

SAMPLE = (
    "resnet18,efficientnet_b0,mobilenetv3_small_100,mobilenetv4_conv_small,regnety_002,"
    "convnext_atto,vit_tiny_patch16_224,deit_tiny_patch16_224,cait_xxs24_224,"
    "xcit_nano_12_p16_224,pit_ti_224,eva02_tiny_patch14_224,levit_128s,mobilevit_xxs,"
    "efficientvit_b0,ghostnet_100,rexnet_100,dla34,densenet121,cspdarknet53,poolformer_s12,"
    "resmlp_12_224,mixer_s16_224,edgenext_xx_small,efficientformer_l1,fastvit_t8,repvgg_a0,"
    "hrnet_w18_small,mobileone_s0,hgnetv2_b0,inception_next_tiny,coatnet_nano_rw_224,"
    "swin_tiny_patch4_window7_224,nfnet_l0,tinynet_a"
)


def build(timm: Any, name: str) -> tuple[nn.Module, torch.Tensor]:
    """``name`` at 64 px where it runs there, else at its default size (seeded)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = timm.create_model(name, pretrained=False, img_size=64).eval()
            size = 64
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
        except Exception:
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False).eval()
            size = int(model.default_cfg.get("input_size", (3, 224, 224))[-1])
    gen = torch.Generator().manual_seed(1)
    zoo.trained_looking(model, gen)
    return model, torch.randn(2, 3, size, size, generator=gen)


def run_model(timm: Any, name: str, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"model": name}
    try:
        base, x = build(timm, name)
    except Exception as e:
        rec["error"] = f"cannot build: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return rec
    rec["input"] = list(x.shape)
    found = zoo.structure(base, x, seed, rec)
    if found is None:
        return rec
    chosen, zeroed, total = found
    model = copy.deepcopy(base)
    zoo.zero_groups(model, chosen, False)
    rec["archdiscover"] = zoo.run_ours(model, x, zeroed, total, True)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=SAMPLE, help="comma-separated timm model names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=pathlib.Path, default=zoo.ROOT / "docs/results/zoo_timm.json")
    args = ap.parse_args(argv)
    zoo.limit_memory()
    try:
        zoo.import_torchvision()
        with contextlib.redirect_stdout(sys.stderr):  # huggingface_hub prints on import
            import timm
    except Exception as e:
        print(json.dumps({"skipped": f"timm is not importable: {e}"}))
        return 0
    records = []
    for name in zoo.tqdm(args.models.split(","), desc="timm", file=sys.stderr):
        try:
            records.append(run_model(timm, name, args.seed))
        except Exception as e:
            records.append({"model": name, "error": f"{type(e).__name__}: {e}"})
    ok = [r for r in records if r.get("archdiscover", {}).get("strict_exact")]
    result = {
        "experiment": "zoo_timm",
        "timm": timm.__version__,
        "summary": {
            "models": len(records),
            "traceable": sum(bool(r.get("traceable")) for r in records),
            "strict_exact": len(ok),
            "minimal": sum(bool(r["archdiscover"].get("minimal")) for r in ok),
            "onnx": sum(bool(r["archdiscover"].get("onnx")) for r in ok),
            "failed": {
                r["model"]: r.get("error") or r.get("archdiscover", {}).get("error")
                for r in records
                if r not in ok
            },
        },
        "models": records,
    }
    text = json.dumps(result, indent=1, default=str)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
