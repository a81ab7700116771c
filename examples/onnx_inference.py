"""Export and run an ONNX model: onnxruntime inference on real test images, checked.

Runs the ONNX file of a compiled run (``archdiscover compile RUN_DIR`` writes
``RUN_DIR/model.onnx``; so do the examples) in onnxruntime on the run's test split, checks its
outputs against the trained PyTorch model, and prints accuracy and latency. A run without
``model.onnx`` is an error (compile it first: this script never compiles with other settings
behind your back), and so is any disagreement with PyTorch (exit status 1).

    python examples/onnx_inference.py runs/demo
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
import torch

from archdiscover.engine import TrainConfig, load_split, load_trained
from archdiscover.export import ort_session
from archdiscover.latency import onnx_latency

ATOL = 1e-4  # relative to the output scale, as archdiscover.verify measures it


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=pathlib.Path)
    args = ap.parse_args(argv)
    path = args.run_dir / "model.onnx"
    if not path.is_file():
        sys.exit(f"onnx_inference: no {path}; run `archdiscover compile {args.run_dir}` first")
    model, meta = load_trained(args.run_dir)
    cfg = TrainConfig.from_dict(json.loads((args.run_dir / "config.json").read_text()))
    split = load_split(cfg)
    xt, yt = split.test.tensors
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
    same = result.get("same_predictions_as_torch", True)
    if result["max_error_vs_torch"] > ATOL or not same:
        sys.exit(
            f"onnx_inference: {path} disagrees with the trained model in {args.run_dir} (max "
            f"error {result['max_error_vs_torch']:.3g}, same predictions: {same}); is it from "
            "another run? Recompile with `archdiscover compile`"
        )
    return result


if __name__ == "__main__":
    main()
