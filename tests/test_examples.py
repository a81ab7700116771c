"""The example and the benchmark run, and their numbers are sane (the full runs stay out of CI)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_mnist_mlp_example_short_run():
    ex = _load(ROOT / "examples" / "mnist_mlp.py")
    results = ex.compare(names=("SGD", "LinBreg", "AdaBreg"), seeds=(0,), epochs=6, progress=False)
    by = {r.name: r for r in results}
    assert by["SGD"].weight_density == 1.0 and by["SGD"].test_accuracy > 85
    # the Bregman runs start at 1% and grow, but stay far below dense after 6 epochs
    for name in ("LinBreg", "AdaBreg"):
        assert 0.01 < by[name].weight_density < 0.10
        assert by[name].test_accuracy > 80
    table = ex.summarize(results)
    assert table["LinBreg"]["runs"] == 1 and table["SGD"]["nonzero_percent_mean"] == 100.0


@pytest.mark.parametrize("script", ["benchmarks/optim_step.py"])
def test_benchmark_quick_mode_prints_json(script):
    out = subprocess.run(
        [sys.executable, str(ROOT / script), "--quick"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=600,
    )
    data = json.loads(out.stdout)
    assert set(data["results"]) == {"isolated", "in_loop"}
    rows = data["results"]["in_loop"]
    assert "adabreg_l1_compiled_vs_adam" in rows
    assert "linbreg_momentum_group_l12_foreach_vs_sgd_momentum" in rows
    assert "linbreg_momentum_group_l12_ckernel_vs_sgd_momentum" in rows
    assert "linbreg_momentum_group_l12_default_vs_sgd_momentum" in rows
    for row in rows.values():
        assert row["ms"] > 0 and row["baseline_ms"] > 0 and 0.01 < row["ratio"] < 100


def test_end_to_end_demo_quick(tmp_path):
    demo = _load(ROOT / "examples" / "demo.py")
    result = demo.run(epochs=4, widths=(100, 100), out_dir=tmp_path, progress=False)
    assert result["onnxruntime_matches_predictions"] and result["onnxruntime_max_error"] <= 1e-5
    assert result["test_accuracy"] > 75
    # the inverse scale space grew the 5% start, but far from the 100 supernet units
    assert all(5 <= w < 100 for w in result["discovered_widths"])
    assert result["params"][1] < result["params"][0]
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "compiled.pt").is_file()


def test_compile_resnet_benchmark_quick():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compile_resnet.py"), "--quick"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=600,
    )
    data = json.loads(out.stdout)
    for key in ("round_to=1", "round_to=auto"):
        e = data[key]
        assert e["params_after"] < e["params_before"] and e["flops_after"] < e["flops_before"]
        assert e["max_error"] <= 1e-5 and e["compile_seconds"] > 0
        assert set(e["speedup"]) == {"1", "8"} and all(v > 0 for v in e["speedup"].values())
    assert data["round_to=auto"]["round_to_chosen"] in (1, 4, 8, 16)
    assert set(data["targets"]) == {"compile_seconds_le_10", "auto_speedup_ge_0.9_flops_reduction"}


@pytest.mark.parametrize("conv", [False, True])
def test_discover_autoencoder_quick(tmp_path, conv):
    ex = _load(ROOT / "examples" / "discover_autoencoder.py")
    args = ["--quick", "--out", str(tmp_path / "run")] + (["--conv"] if conv else [])
    result = ex.main(args)
    assert 8 < result["test_psnr_db"] < 60
    assert result["params"][1] < result["params"][0]
    widths, full = result["discovered_widths"], result["supernet_widths"]
    assert all(0 < widths[n] <= full[n] for n in full)
    # the shape is discovered: units enter after the sparse start (epoch 0)
    per_epoch = result["widths_per_epoch"]
    assert len(per_epoch) == 3 and sum(per_epoch[-1]) > sum(per_epoch[0])
    assert (tmp_path / "run" / "model.onnx").is_file()


def test_compress_resnet_and_onnx_inference_quick(tmp_path):
    ex = _load(ROOT / "examples" / "compress_resnet.py")
    result = ex.main(["--quick", "--out", str(tmp_path / "run")])
    # two epochs from 5% of the channels: channels entered (the accuracy after so few
    # LinBreg steps on 1,437 images is not what this smoke test checks)
    assert result["channels_per_epoch"][-1] > result["start_channels"]
    assert 0 <= result["test_accuracy"] <= 100
    assert result["round_to"] in (1, 4, 8, 16)
    assert result["flops"][1] <= result["flops"][0]
    inf = _load(ROOT / "examples" / "onnx_inference.py")
    out = inf.main([str(tmp_path / "run")])
    assert out["same_predictions_as_torch"] and out["max_error_vs_torch"] <= 1e-5
    assert abs(out["onnx_accuracy"] - result["test_accuracy"]) < 0.01  # rounded to 2 digits


def test_paper_mlp_script_quick(tmp_path):
    ex = _load(ROOT / "benchmarks" / "paper" / "mlp_mnist5k.py")
    out = ex.main(["--quick", "--out", str(tmp_path)])
    res = out["results"]
    assert set(res) == {"LinBreg lam=1e-1", "ProxSGD lam=1e-4", "SGD (dense)"}
    for r in res.values():
        assert 10 < r["test_accuracy_mean"] <= 100
        assert 0 < r["nonzero_weights_percent_mean"] <= 100
    assert res["SGD (dense)"]["nonzero_weights_percent_mean"] == 100.0
    assert res["LinBreg lam=1e-1"]["nonzero_weights_percent_mean"] < 10  # grows from 1%
    for p in out["plots"]:
        assert Path(p).read_bytes()[:4] == b"\x89PNG"


def _has_torchvision() -> bool:
    probe = "import sys; sys.path.insert(0, 'benchmarks'); import zoo; zoo.import_torchvision()"
    return (
        subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True).returncode == 0
    )


@pytest.mark.skipif(not _has_torchvision(), reason="torchvision is not installed (optional)")
def test_zoo_benchmark_quick():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "zoo.py"), "--quick"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=600,
    )
    data = json.loads(out.stdout)
    assert sorted(r["model"] for r in data["models"]) == ["shufflenet_v2_x0_5", "squeezenet1_1"]
    for r in data["models"]:
        ours = r["filters+bn"]["archdiscover"]
        assert ours["strict_exact"] and ours["minimal"] and ours["onnx"]
        assert ours["removed_fraction"] >= r["zeroed_fraction"] > 0.1  # dead ones go too
        assert r["filters"]["archdiscover"]["strict_exact"]
    assert data["summary"]["filters+bn"]["archdiscover_strict_exact"] == 2


def _has_timm() -> bool:
    probe = (
        "import sys; sys.path.insert(0, 'benchmarks'); import zoo; zoo.import_torchvision(); "
        "import timm"
    )
    return (
        subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True).returncode == 0
    )


@pytest.mark.skipif(not _has_timm(), reason="timm is not installed (optional)")
def test_zoo_timm_benchmark_on_two_models(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "zoo_timm.py"),
            "--models",
            "resnet18,vit_tiny_patch16_224",
            "--out",
            str(tmp_path / "t.json"),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=600,
    )
    data = json.loads(out.stdout)
    assert data["summary"]["strict_exact"] == data["summary"]["minimal"] == 2
    for r in data["models"]:
        assert r["archdiscover"]["onnx"] and r["archdiscover"]["removed_fraction"] > 0.2
