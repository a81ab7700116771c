"""The paper-experiment scripts (benchmarks/paper/) in --quick mode: they run end to end and
their JSON has the expected keys and sane values. The full runs stay out of CI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    path = ROOT / "benchmarks" / "paper" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"paper_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _pngs(out: dict) -> None:
    assert out["plots"]
    for p in out["plots"]:
        assert Path(p).read_bytes()[:4] == b"\x89PNG"


def _latency(lat: dict, sizes=("1", "64")) -> None:
    assert set(lat) == set(sizes)
    for v in lat.values():
        assert v["dense"] > 0 and v["compact"] > 0
        assert abs(v["speedup"] - v["dense"] / v["compact"]) < 1e-9


def test_convnet_script_quick(tmp_path):
    out = _load("convnet_mnist5k").main(["--quick", "--out", str(tmp_path)])
    t1, t2 = out["table1_l1"], out["table2_group"]
    assert set(t1) == {"Adam (dense)", "LinBreg"} and set(t2) == {"LinBreg"}
    assert t1["Adam (dense)"]["nonzero_total_percent"] == 100.0
    assert 0 < t1["LinBreg"]["nonzero_total_percent"] < 10  # grows from 1%
    for row in (*t1.values(), *t2.values()):
        assert 10 <= row["test_accuracy"] <= 100 and 0 <= row["train_accuracy"] <= 100
        assert 0 < row["nonzero_conv_percent"] <= 100 and 0 < row["nonzero_linear_percent"] <= 100
    c = out["compiled"]
    assert c["run"] == "group: LinBreg" and c["max_rel_error"] < 1e-4
    assert c["params_compact"] < c["params_dense"] and c["flops_compact"] < c["flops_dense"]
    assert c["widths"]["classifier.3"] == [10, 10]  # the outputs stay
    assert all(after <= before for before, after in c["widths"].values())
    _latency(c["latency_ms"])
    _pngs(out)


def test_autoencoder_script_quick(tmp_path):
    out = _load("autoencoder_mnist5k").main(["--quick", "--out", str(tmp_path)])
    assert set(out["results"]) == {"dense", "conv"}
    for kind, r in out["results"].items():
        runs = r["runs"]
        assert {"discovered (Bregman)", "dense supernet, Adam"} <= set(runs)
        assert r["discovered_widths"].keys() == r["supernet_widths"].keys()
        for name, w in r["discovered_widths"].items():
            assert 0 <= w <= r["supernet_widths"][name]
        # the retrained network is built from the discovered widths: exactly the compact size
        retrained = runs["discovered shape, retrained from scratch (Adam)"]
        assert retrained["params"] == runs["discovered (Bregman)"]["params"], kind
        assert runs["discovered (Bregman)"]["onnx_max_abs_error"] < 1e-4
        for row in runs.values():
            assert -1 <= row["ssim"] <= 1 and 0 < row["psnr_db"] < 60
            assert abs(row["noisy_psnr_db"] - runs["dense supernet, Adam"]["noisy_psnr_db"]) < 1e-6
    _pngs(out)


def test_skip_autoencoder_script_quick(tmp_path):
    out = _load("skip_autoencoder").main(["--quick", "--ablations", "--out", str(tmp_path)])
    tasks = [out, out["deblurring"]]
    for r in tasks:
        assert set(r) >= {"noisy", "dense", "discovered"}
        for row in (r["noisy"], r["dense"], r["discovered"]):
            assert -1 <= row["ssim"] <= 1 and 0 < row["psnr"] < 60
        d = r["discovered"]
        assert d["skips_total"] == 1 + 2 + 3 == len(d["connections"])  # 3 blocks in --quick
        kept = [c for c in d["connections"] if c["status"] in ("folded", "kept")]
        assert d["skips_kept"] == len(kept)
        assert all(c["value"] == 0 for c in d["connections"] if c["status"] == "removed")
        assert set(d["widths"]) == {f"blocks.{i}.linear" for i in range(3)}
        assert d["onnx_max_abs_error"] < 1e-4 and d["compile_max_rel_error"] < 1e-5
        assert d["params"] <= d["params_supernet"]
    assert out["deblurring"]["noisy"]["psnr"] < out["noisy"]["psnr"]  # blur + noise is worse
    ab = out["ablations"]
    assert len(ab) == 3 and "ablations" not in out["deblurring"]
    assert all(r["gates_total"] == 6 and 0 < r["psnr"] < 60 for r in ab.values())
    assert {r["model_args"]["out_floor"] is None for r in ab.values()} == {True, False}
    assert set(out["curves"]) == {"denoising", "deblurring"}
    _pngs(out)


def test_resnet_vs_torch_pruning_script_quick(tmp_path):
    out = _load("resnet_vs_torch_pruning").main(["--quick", "--out", str(tmp_path)])
    ours = out["results"]["archdiscover (coupled groups, compiled)"]
    theirs = out["results"]["Torch-Pruning (MetaPruner, group magnitude) + fine-tune"]
    assert ours["max_rel_error"] < 1e-4
    assert ours["params_compact"] < ours["params_dense"] == theirs["params_dense"]
    # Torch-Pruning is pruned to at most our parameter count
    assert theirs["params_compact"] <= ours["params_compact"]
    assert theirs["epochs_dense"] + theirs["epochs_finetune"] == out["epochs"]
    fast = out["results"]["archdiscover, widths rounded for speed (round_to='auto')"]
    assert fast["round_to"] in (1, 4, 8, 16) and fast["max_rel_error"] < 1e-4
    assert fast["params_compact"] >= ours["params_compact"]  # rounding keeps zero channels
    for r in (ours, fast, theirs):
        assert 0 <= r["test_accuracy"] <= 100 and 0 < r["flops_fraction"] <= 1
        _latency(r["latency_ms"], sizes=("1", "8"))
    # the compiled widths are the channels the training left active (no dead one kept)
    for layer, active in out["active_channels_last_epoch"].items():
        assert 0 <= out["compiled_widths"][layer] - active <= 1, layer
    # every layer starts from max(1, round(4% of its channels))
    start = out["active_channels_per_epoch"][0]
    assert start["stages.0.0.conv1"] == 1 and start["stages.2.0.conv2"] == 3
    # the per-seed comparison (one seed in --quick) repeats the rows above
    seeds = out["seeds"]
    assert seeds["archdiscover (coupled groups, compiled)"]["params"] == [ours["params_compact"]]
    assert seeds["Torch-Pruning (MetaPruner, group magnitude) + fine-tune"]["test_accuracy"] == [
        theirs["test_accuracy"]
    ]
    abl = out["ablation"]
    assert set(abl) == {"discovered widths", "uniform widths"}
    for row in abl.values():
        assert len(row["test_accuracy"]) == 1 and 0 <= row["mean"] <= 100
    assert abs(abl["uniform widths"]["params"] / abl["discovered widths"]["params"] - 1) < 0.25
    _pngs(out)


def test_denoiser_script_quick(tmp_path):
    out = _load("denoiser_discovery").main(["--quick", "--out", str(tmp_path)])
    d, disc, uni = out["dense"], out["discovered"], out["uniform"]
    for r in (d, disc, uni, out["discovered_retrained"]):
        assert 0 < r["psnr"] < 60 and r["flops"] > 0
    assert disc["flops"] <= d["flops"] and disc["max_rel_error"] < 1e-4
    assert out["widths"] == disc["widths"] == out["discovered_retrained"]["widths"]
    assert disc["widths"] == disc["active_widths"]  # compiled widths = active channels
    assert out["discovered_retrained"]["flops"] == disc["flops"]
    assert len(out["growth"]) == out["training"]["epochs"] + 1
    assert out["training"]["start"] == "identity"  # every net starts as x - 0
    assert out["summary"]["target_met"] in (True, False)
    assert (tmp_path / "denoiser_discovery.json").exists()
    _pngs(out)


def test_flops_budget_script_quick(tmp_path):
    out = _load("flops_budget").main(["--quick", "--targets", "0.3", "--out", str(tmp_path)])
    r = out["results"]["0.3"]
    # epoch 0 (the sparse start) and the two epochs
    assert len(r["flops_fraction_per_epoch"]) == len(r["lam_per_epoch"]) == 3
    assert r["lam_per_epoch"][0] == 0.1  # the configured lam at the start
    assert 0 < r["flops_fraction_per_epoch"][0] < 1  # the compiled sparse start
    assert 0 < r["final_flops_fraction"] <= 1
    assert r["final_flops_fraction"] == r["flops_fraction_per_epoch"][-1]
    assert abs(r["relative_miss"] - (r["final_flops_fraction"] - 0.3) / 0.3) < 1e-12
    _pngs(out)


def test_scripts_read_a_users_full_dataset(tmp_path):
    # a tiny MNIST in IDX files stands in for the user's full set
    from test_data import _write_idx_set

    _write_idx_set(tmp_path / "data", n_train=40, n_test=8)
    out = _load("flops_budget").main(
        [
            "--quick",
            "--targets",
            "0.3",
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert out["config"]["dataset"] == "mnist"
    assert out["config"]["data_dir"] == str(tmp_path / "data")
    assert len(out["results"]["0.3"]["flops_fraction_per_epoch"]) == 3  # epoch 0 and 2 epochs


def test_scripts_name_the_missing_dataset(tmp_path, monkeypatch):
    from archdiscover.data import DatasetNotFoundError

    monkeypatch.delenv("ARCHDISCOVER_DATA", raising=False)
    mod = _load("convnet_mnist5k")
    with pytest.raises(DatasetNotFoundError, match=r"train-images|t10k-images|data-dir"):
        mod.main(
            [
                "--quick",
                "--dataset",
                "fashion_mnist",
                "--data-dir",
                str(tmp_path),
                "--out",
                str(tmp_path),
            ]
        )
