"""Export and run an ONNX model: onnxruntime inference on real test images, checked.

Compiles a finished run (``archdiscover train`` or one of the examples) if it has no
``model.onnx`` yet, then runs the ONNX file in onnxruntime on the run's test split, checks
its predictions against the PyTorch model, and prints accuracy and latency.

    python examples/onnx_inference.py runs/demo
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch

import archdiscover as ad
from archdiscover.engine import TrainConfig, load_split, load_trained
from archdiscover.export import ort_session
from archdiscover.latency import onnx_latency


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=pathlib.Path)
    args = ap.parse_args(argv)
    model, meta = load_trained(args.run_dir)
    cfg = TrainConfig.from_dict(json.loads((args.run_dir / "config.json").read_text()))
    split = load_split(cfg)
    xt, yt = split.test.tensors
    path = args.run_dir / "model.onnx"
    if not path.is_file():
        ad.compile(model, xt[:32]).export_onnx(path)
    sess = ort_session(path)
    logits = sess.run(None, {sess.get_inputs()[0].name: xt.numpy()})[0]
    with torch.no_grad():
        ref = model(xt).numpy()
    result = {
        "onnx": str(path),
        "max_error_vs_torch": float(np.abs(logits - ref).max() / max(1.0, np.abs(ref).max())),
        "latency_ms": {
            str(b): round(v.median_ms, 3)
            for b, v in onnx_latency(path, tuple(xt.shape[1:]), (1, 64)).items()
        },
    }
    if meta["task"] == "classification":
        result["onnx_accuracy"] = float((logits.argmax(1) == yt.numpy()).mean() * 100)
        result["same_predictions_as_torch"] = bool((logits.argmax(1) == ref.argmax(1)).all())
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
