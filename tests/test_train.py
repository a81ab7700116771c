"""The training engine and the command line, end to end on real data (scikit-learn digits)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import archdiscover as ad
import archdiscover.engine
from archdiscover.cli import main
from archdiscover.engine import CheckpointError, ConfigError, TrainConfig, load_trained, train
from archdiscover.export import ort_session
from archdiscover.growth import growth_enabled

BASE = dict(
    model="mlp",
    model_args={"in_features": 64, "widths": [48, 48], "out_features": 10},
    dataset="digits",
    optimizer="linbreg",
    lr=0.1,
    momentum=0.9,
    regularizer="coupled_weights",
    lam=0.3,
    init_density=0.2,
    epochs=4,
    batch_size=64,
    impl="foreach",
)


def states_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.shape == y.shape and torch.equal(x, y)):
                return False
        elif isinstance(x, dict):
            if not (isinstance(y, dict) and states_equal(x, y)):
                return False
        elif isinstance(x, list):
            if len(x) != len(y) or not all(
                states_equal({0: u}, {0: v}) for u, v in zip(x, y, strict=True)
            ):
                return False
        elif x != y:
            return False
    return True


def test_end_to_end_train_compile_export_matches_predictions_and_widths(tmp_path):
    res = train(BASE, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["val_accuracy"] > 80
    units = log[-1]["active_units"]
    # the inverse scale space grew the 20% start
    assert units["layers.1"] > round(0.2 * 48) or units["layers.3"] > round(0.2 * 48)
    model, meta = load_trained(tmp_path / "run")
    assert meta["input_shape"] == [1, 8, 8] and meta["task"] == "classification"
    assert states_equal(model.state_dict(), res.model.state_dict())
    split = ad.engine.load_split(TrainConfig.from_dict(BASE))
    xt = split.test.tensors[0]
    c = ad.compile(model, xt[:32])
    widths = {n: w for n, (_, w) in c.report.layers.items()}
    assert widths == units  # exactly the widths the sparsity report predicted
    path = c.export_onnx(tmp_path / "m.onnx")
    sess = ort_session(path)
    out = sess.run(None, {sess.get_inputs()[0].name: xt.numpy()})[0]
    with torch.no_grad():
        ref = model(xt).numpy()
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert np.abs(out - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_resume_is_bit_for_bit(tmp_path):
    full = train(BASE, tmp_path / "a", progress=False)
    part = train(BASE, tmp_path / "b", progress=False, stop_after=2)
    assert part.last["epoch"] == 2
    rest = train(BASE, tmp_path / "b", progress=False)
    assert rest.resumed_from == 2
    assert states_equal(full.model.state_dict(), rest.model.state_dict())
    ca = torch.load(tmp_path / "a" / "checkpoints" / "epoch_0004.pt", weights_only=True)
    cb = torch.load(tmp_path / "b" / "checkpoints" / "epoch_0004.pt", weights_only=True)
    assert states_equal(ca["optimizer"], cb["optimizer"])
    la = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in la]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lb]


def test_resume_with_adabreg_cosine_and_lam_scheduler(tmp_path):
    cfg = dict(
        BASE,
        optimizer="adabreg",
        lr=1e-3,
        regularizer="l1",
        lam=0.1,
        init_density=0.05,
        lr_schedule="cosine",
        target_density=0.1,
        epochs=3,
    )
    full = train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False, stop_after=1)
    rest = train(cfg, tmp_path / "b", progress=False)
    assert states_equal(full.model.state_dict(), rest.model.state_dict())


def test_truncated_checkpoint_is_a_clear_error_and_the_previous_one_survives(tmp_path):
    run = tmp_path / "run"
    train(BASE, run, progress=False, stop_after=2)
    ck2 = run / "checkpoints" / "epoch_0002.pt"
    ck2.write_bytes(ck2.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"epoch_0002\.pt"):
        train(BASE, run, progress=False)
    ck1 = run / "checkpoints" / "epoch_0001.pt"
    assert torch.load(ck1, weights_only=True)["epoch"] == 1


def test_denoising_run_logs_psnr(tmp_path):
    cfg = dict(
        model="conv_autoencoder",
        model_args={"in_channels": 1, "enc_widths": [8, 8], "bottleneck": 8, "dec_widths": [8, 8]},
        dataset="digits",
        task="denoising",
        noise_std=0.5,
        optimizer="adabreg",
        lr=3e-3,
        regularizer="coupled",
        lam=1e-3,
        init_density=0.5,
        epochs=2,
        impl="foreach",
    )
    res = train(cfg, tmp_path / "run", progress=False)
    assert 5 < res.last["val_psnr"] < 60 and "val_accuracy" not in res.last


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown config key 'epoch'"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="'epochs' must be int"):
        TrainConfig.from_dict({"epochs": "three"})
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'"):
        TrainConfig.from_dict({"model": "resnet9000"})
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        TrainConfig.from_dict({"optimizer": "rmsprop"})


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def write_toml(path, **over):
    cfg = {**BASE, **over}
    lines = []
    for k, v in cfg.items():
        if k == "model_args":
            continue
        lines.append(f"{k} = {json.dumps(v)}")
    lines.append("[model_args]")
    for k, v in cfg["model_args"].items():
        lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_cli_train_compile_report(tmp_path, capsys):
    cfg = write_toml(tmp_path / "run.toml", epochs=2)
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--run-dir", str(run), "--quiet"]) == 0
    assert (run / "model.pt").is_file() and (run / "config.json").is_file()
    assert (
        main(["compile", str(run), "--round-to", "1", "--batch-sizes", "1,8", "--repeats", "4"])
        == 0
    )
    out = capsys.readouterr().out
    assert "layer width" in out and "onnxruntime latency" in out
    assert (run / "model.onnx").is_file() and (run / "compiled.pt").is_file()
    assert main(["report", str(run)]) == 0
    for name in ("metrics.png", "scale_space.png", "widths.png"):
        assert (run / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_cli_flags_override_toml(tmp_path):
    cfg = write_toml(tmp_path / "run.toml", epochs=3)
    run = tmp_path / "run"
    assert (
        main(["train", "--config", str(cfg), "--run-dir", str(run), "--epochs", "1", "--quiet"])
        == 0
    )
    assert json.loads((run / "config.json").read_text())["epochs"] == 1


@pytest.mark.parametrize(
    ("over", "flags", "needle", "code"),
    [
        ({"epoch": 3}, [], "unknown config key 'epoch'", 2),
        ({"epochs": "two"}, [], "'epochs' must be int", 2),
        ({"model": "nope"}, [], "unknown model 'nope'", 2),
        ({"dataset": "mnist", "data_dir": "/nonexistent/dir"}, [], "/nonexistent/dir", 1),
        ({}, ["--lr", "fast"], "--lr: expected float", 2),
    ],
)
def test_cli_config_errors_are_one_line(tmp_path, capsys, over, flags, needle, code):
    cfg = write_toml(tmp_path / "run.toml", **over)
    rc = main(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "r"), "--quiet", *flags])
    assert rc == code
    assert needle in one_line_error(capsys)


def test_cli_corrupted_model_file_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    train(dict(BASE, epochs=1), run, progress=False)
    (run / "model.pt").write_bytes(b"not a checkpoint")
    assert main(["compile", str(run)]) == 1
    assert "model.pt" in one_line_error(capsys)
    assert main(["compile", str(tmp_path / "missing")]) == 1
    assert "missing" in one_line_error(capsys)


def _units_per_epoch(tmp_path, name, **over):
    cfg = {
        **BASE,
        "model_args": {"in_features": 64, "widths": [48], "out_features": 10},
        "regularizer": "group",
        "lam": 0.05,
        "init_density": 0.05,
        "epochs": 3,
        **over,
    }
    log: list[dict] = []
    res = train(cfg, tmp_path / name, progress=False, on_epoch=log.append)
    return res, [r["active_units"]["layers.1"] for r in log]


def test_units_enter_from_zero_biases_through_relu_subgradient(tmp_path):
    # 48 hidden rows, 2 alive at the start (5%), zero biases: a switched-off unit's
    # pre-activation is exactly 0, and only the growth hooks' relu'(0) = 1 lets it enter
    res, zero = _units_per_epoch(tmp_path, "zero", bias_init="zero")
    assert zero[0] > 2 and zero[-1] >= zero[0] and zero[-1] < 48
    assert growth_enabled(res.model)
    _, pos = _units_per_epoch(tmp_path, "pos", bias_init="positive")
    assert pos[-1] > 2


def test_group_regularizer_keeps_the_output_layer_dense(tmp_path):
    # the output units cannot be removed: the last Linear is neither regularized nor thinned
    # (the hidden units grow through its columns)
    res, _ = _units_per_epoch(tmp_path, "g", epochs=1)
    names = {g.get("name"): g for g in res.optimizer.param_groups}
    assert set(names) == {"weights", "output weights", "other"}
    assert isinstance(names["output weights"]["reg"], ad.Null)
    assert names["output weights"]["params"][0] is res.model.layers[3].weight
    assert isinstance(names["weights"]["reg"], ad.GroupL12)
    assert int((res.model.layers[3].weight == 0).sum()) == 0


def test_linear_lam_sets_the_linear_rows_apart_from_the_conv_kernels():
    # the paper's code: lamda_0 on the conv kernels, lamda_1 on the Linear rows
    from archdiscover.engine.recipes import param_groups

    model = ad.models.build("convnet")
    x = torch.zeros(2, 1, 28, 28)

    def lams(**kw):
        cfg = TrainConfig(model="convnet", lam=0.02, **kw)
        return {g["name"]: getattr(g["reg"], "lam", None) for g in param_groups(model, cfg, x)}

    got = lams(regularizer="kernels", linear_lam=0.5)
    assert got["conv kernels"] == 0.02 and got["linear rows"] == 0.5
    assert lams(regularizer="kernels")["linear rows"] == 0.02  # unset: lam
    got = lams(regularizer="group", linear_lam=0.5)
    assert got["weights"] == 0.02 and got["linear rows"] == 0.5
    with pytest.raises(ConfigError, match="linear_lam must be >= 0"):
        TrainConfig(regularizer="kernels", linear_lam=-1.0).validate()
    with pytest.raises(ConfigError, match="not on regularizer 'coupled'"):
        TrainConfig(regularizer="coupled", linear_lam=0.1).validate()


def test_coupled_recipe_logs_active_channels_that_compile_keeps(tmp_path):
    # a BatchNorm net: filters stay dense, the channels are counted on their BN scale/shift
    cfg = {
        **BASE,
        "model": "conv_autoencoder",
        "model_args": {"enc_widths": [8, 8], "bottleneck": 8, "dec_widths": [8, 8]},
        "task": "denoising",
        "regularizer": "coupled",
        "lam": 0.05,
        "init_density": 0.1,
        "epochs": 2,
    }
    log: list[dict] = []
    res = train(cfg, tmp_path / "c", progress=False, on_epoch=log.append)
    c = ad.compile(res.model.eval(), torch.randn(4, 1, 8, 8))
    assert {k: after for k, (_, after) in c.report.layers.items()} == log[-1]["active_units"]
    assert log[-1]["unit_density"] == pytest.approx(
        sum(log[-1]["active_units"].values()) / sum(log[-1]["widths"].values())
    )


def test_measure_hook_is_what_the_lam_scheduler_steers(tmp_path):
    log: list[dict] = []
    cfg = {**BASE, "target_density": 0.5, "epochs": 3}
    train(cfg, tmp_path / "m", progress=False, on_epoch=log.append, measure=lambda m: 0.9)
    assert [r["measured"] for r in log] == [0.9, 0.9, 0.9]
    # 0.9 is above the target and not falling: lam is multiplied by 1.5 after every epoch
    lams = [r["lam"] for r in log]
    assert lams == pytest.approx([BASE["lam"] * 1.5**k for k in (1, 2, 3)])
