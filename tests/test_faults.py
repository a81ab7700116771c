"""Faults and bad input: tampered files, divergence, concurrent runs, kills during writes,
and the inputs a new user gets wrong. Every failure must be one clear line, never a
traceback, and nothing may be lost or silently wrong."""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from archdiscover.models import BasicBlock, ResNet
from torch import nn

import archdiscover as ad
from archdiscover.cli import main
from archdiscover.engine import CheckpointError, ConfigError, TrainConfig, train
from archdiscover.engine.loop import DivergenceError

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BASE = dict(
    model="mlp",
    model_args={"in_features": 64, "widths": [24], "out_features": 10},
    dataset="digits",
    optimizer="linbreg",
    lr=0.1,
    momentum=0.9,
    regularizer="coupled_weights",
    lam=0.3,
    init_density=0.3,
    epochs=2,
    batch_size=64,
    impl="foreach",
)


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err, "nothing on stderr"
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err


def _toml_value(v) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    return json.dumps(v)


def toml(path: pathlib.Path, **over) -> pathlib.Path:
    cfg = {**BASE, **over}
    lines, tables = [], []
    for k, v in cfg.items():
        if isinstance(v, dict):
            body = "".join(f"{a} = {_toml_value(b)}\n" for a, b in v.items())
            tables.append(f"[{k}]\n{body}")
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    path.write_text("\n".join(lines) + "\n" + "\n".join(tables))
    return path


def cli_train(tmp_path: pathlib.Path, run: pathlib.Path, *flags: str, **over) -> int:
    cfg = toml(tmp_path / "c.toml", **over)
    return main(["train", "--config", str(cfg), "--run-dir", str(run), "--quiet", *flags])


# ---------------------------------------------------------------------------------------------
# Security: a compiled file is data, never code
# ---------------------------------------------------------------------------------------------
RES_KW = dict(block=BasicBlock, layers=(2, 1), widths=(8, 16), strides=(1, 2), num_classes=3)


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory):
    """A compiled ResNet whose zero residual branch was dropped (the file holds a graph)."""
    torch.manual_seed(0)
    m = ResNet(**RES_KW).eval()
    with torch.no_grad():
        m.stages[0][1].bn2.weight.zero_()
        m.stages[0][1].bn2.bias.zero_()
    c = ad.compile(m, torch.randn(2, 3, 16, 16))
    path = c.save(tmp_path_factory.mktemp("graph") / "c.pt")
    return path, torch.load(path, weights_only=True)


def _tampered(tmp_path, payload, edit) -> pathlib.Path:
    p = copy.deepcopy(payload)
    edit(p)
    path = tmp_path / "tampered.pt"
    torch.save(p, path)
    return path


def _node(p, op):
    return next(n for n in p["graph"] if n["op"] == op)


MARK = "archdiscover-pwned"  # a file the injected code would create


ATTACKS = {
    "placeholder target is code": lambda p: _node(p, "placeholder").update(
        target=f"x=__import__('os').system('touch {MARK}')"
    ),
    "node name is code": lambda p: _node(p, "call_module").update(
        name=f"x; __import__('os').system('touch {MARK}'); y"
    ),
    "builtins exec": lambda p: _node(p, "call_function").update(target={"fn": "builtins:exec"}),
    "builtins open": lambda p: _node(p, "call_function").update(target={"fn": "builtins:open"}),
    "torch.save": lambda p: _node(p, "call_function").update(target={"fn": "torch:save"}),
    "os.system": lambda p: _node(p, "call_function").update(target={"fn": "os:system"}),
    "dunder method": lambda p: p["graph"].insert(
        1,
        {"name": "evil", "op": "call_method", "target": "__reduce_ex__", "args": [], "kwargs": {}},
    ),
    "getattr of a dunder": lambda p: p["graph"].insert(
        1,
        {
            "name": "evil",
            "op": "call_function",
            "target": {"fn": "builtins:getattr"},
            "args": {"tuple": [{"node": _node(p, "placeholder")["name"]}, "__class__"]},
            "kwargs": {"dict": {}},
        },
    ),
    "a dtype that is a function": lambda p: _node(p, "call_function").update(
        args={"tuple": [{"dtype": "save"}]}
    ),
    "unknown module target": lambda p: _node(p, "call_module").update(target="no.such.layer"),
    "malformed node": lambda p: p["graph"].insert(1, {"name": "x"}),
    "layer passes a device through": lambda p: next(iter(p["modules"].values()))["args"].update(
        device="meta"
    ),
    "layer of a foreign type": lambda p: next(iter(p["modules"].values())).update(type="Module"),
    "layer of absurd size": lambda p: next(iter(p["modules"].values()))["args"].update(
        out_channels=10**9
    ),
    "layer size of the wrong type": lambda p: next(iter(p["modules"].values()))["args"].update(
        out_channels="8"
    ),
    "state dict holds a non-tensor": lambda p: p["state_dict"].update({"evil": [1, 2]}),
    "no format tag": lambda p: p.pop("format"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_tampered_compiled_file_is_one_clear_error(graph_file, tmp_path, attack, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, payload = graph_file
    path = _tampered(tmp_path, payload, ATTACKS[attack])
    with pytest.raises(ValueError, match=str(path).replace(".", r"\.")) as err:
        ad.load_compiled(path, lambda: ResNet(**RES_KW))
    assert len(str(err.value).splitlines()) == 1
    assert not (tmp_path / MARK).exists(), "the file ran code"


def test_the_untampered_file_loads_and_computes_the_same(graph_file):
    path, _ = graph_file
    m = ad.load_compiled(path, lambda: ResNet(**RES_KW))
    assert isinstance(m, torch.fx.GraphModule)
    x = torch.randn(2, 3, 16, 16)
    assert m(x).shape == (2, 3)


def test_a_pickled_object_is_refused_without_torchs_advice(tmp_path, capsys):
    run = tmp_path / "run"
    train(dict(BASE, epochs=1), run, progress=False)
    torch.save({"format": "archdiscover.model/1", "obj": nn.Linear(2, 2)}, run / "model.pt")
    assert main(["compile", str(run)]) == 1
    err = one_line(capsys)
    assert "model.pt" in err and "pickled" in err and "weights_only=False" not in err


# ---------------------------------------------------------------------------------------------
# Silent wrong results
# ---------------------------------------------------------------------------------------------
def test_divergence_stops_at_once_and_saves_nothing_of_it(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(DivergenceError, match=r"epoch 1, batch \d+.*lr = 1e\+06"):
        train(dict(BASE, lr=1e6), run, progress=False)
    assert not list((run / "checkpoints").glob("*.pt")) and not (run / "model.pt").exists()
    assert cli_train(tmp_path, tmp_path / "cli", lr=1e6) == 1
    assert "diverged in epoch 1" in one_line(capsys)
    for line in (run / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in log.jsonl"))


def test_divergence_in_a_later_epoch_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    real = torch.optim.SGD.step
    calls = {"n": 0}

    def poisoned(self, *a, **k):  # epoch 2, batch 5: a weight becomes NaN
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 23 + 5:  # 1437 training images / 64 = 23 batches per epoch
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", poisoned)
    cfg = dict(BASE, optimizer="sgd", regularizer="none", epochs=3)
    with pytest.raises(DivergenceError, match=r"epoch 2, batch 6"):
        train(cfg, tmp_path / "run", progress=False)
    cks = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert [c.name for c in cks] == ["epoch_0001.pt"]
    ck = torch.load(cks[0], weights_only=True)
    assert all(bool(torch.isfinite(t).all()) for t in ck["model"].values())


def test_a_nan_checkpoint_does_not_resume(tmp_path):
    run = tmp_path / "run"
    train(dict(BASE, epochs=2), run, progress=False, stop_after=1)
    ck_path = run / "checkpoints" / "epoch_0001.pt"
    ck = torch.load(ck_path, weights_only=True)
    next(iter(ck["model"].values())).view(-1)[0] = float("nan")
    torch.save(ck, ck_path)
    with pytest.raises(CheckpointError, match=r"epoch_0001\.pt.*not finite"):
        train(dict(BASE, epochs=2), run, progress=False)


def test_compile_refuses_a_nan_network():
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    with pytest.raises(ad.CompileError, match="NaN"):
        ad.compile(m, torch.randn(3, 4))


def test_two_trains_on_one_run_directory(tmp_path):
    run = tmp_path / "run"
    cfg = toml(tmp_path / "c.toml", epochs=1_000_000)
    cmd = [sys.executable, "-m", "archdiscover.cli", "train", "--config", str(cfg)]
    cmd += ["--run-dir", str(run), "--quiet"]
    first = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        # a test run started as a background job inherits SIGINT ignored: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120
        while not list((run / "checkpoints").glob("*.pt")) and time.time() < deadline:
            time.sleep(0.1)  # the first one is training
        other = toml(tmp_path / "other.toml", epochs=1_000_000, lr=0.05)
        second = subprocess.run(
            [*cmd[:5], str(other), *cmd[6:]], capture_output=True, text=True, env=ENV, timeout=120
        )
        assert first.poll() is None, "the first run ended too early to test the lock"
        assert second.returncode != 0
        err = second.stderr.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1
        assert "in use by another archdiscover train" in err
    finally:
        first.send_signal(signal.SIGINT)  # stop it as a user would: the last epoch is kept
        first.communicate(timeout=120)
    assert first.returncode == 130
    assert json.loads((run / "config.json").read_text())["lr"] == 0.1  # the first's config
    epochs = [json.loads(x)["epoch"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 1


def test_kills_during_training_resume_bit_for_bit_and_leave_no_temporaries(tmp_path):
    cfg = toml(tmp_path / "c.toml", epochs=12, model_args={"in_features": 64, "widths": [200],
               "out_features": 10}, keep_checkpoints=1)  # fmt: skip
    ref, run = tmp_path / "ref", tmp_path / "run"
    base = [sys.executable, "-m", "archdiscover.cli", "train", "--config", str(cfg), "--quiet"]
    subprocess.run([*base, "--run-dir", str(ref)], check=True, env=ENV, capture_output=True)
    rng = random.Random(0)
    kills = 0
    for _ in range(12):
        p = subprocess.Popen([*base, "--run-dir", str(run)], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(1.0, 3.0))  # python and torch start in about 1 s
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
    assert kills >= 2
    done = subprocess.run([*base, "--run-dir", str(run)], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a = torch.load(ref / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    left = [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert left == []


def test_temporaries_of_killed_writes_are_removed_on_the_next_start(tmp_path):
    run = tmp_path / "run"
    train(dict(BASE, epochs=2), run, progress=False, stop_after=1)
    stale = [run / "checkpoints" / ".epoch_0002.pt.99999.tmp", run / ".log.jsonl.99999.tmp"]
    for s in stale:
        s.write_bytes(b"x" * 1000)
    train(dict(BASE, epochs=2), run, progress=False)
    assert not any(s.exists() for s in stale)
    # and round_to="auto"'s candidate folders of a killed compile
    dead = pathlib.Path(tempfile.gettempdir()) / "archdiscover-auto-999999999-stale"
    dead.mkdir(exist_ok=True)
    from archdiscover.compiler.tune import remove_stale_folders

    assert dead in remove_stale_folders() and not dead.exists()


# ---------------------------------------------------------------------------------------------
# One line, never a traceback
# ---------------------------------------------------------------------------------------------
def test_run_directory_of_the_wrong_kind(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert cli_train(tmp_path, f) == 2
    assert "afile is a file" in one_line(capsys)
    assert cli_train(tmp_path, f / "run") == 2
    assert "afile is a file" in one_line(capsys)
    run = tmp_path / "r1"
    (run / "checkpoints").parent.mkdir()
    (run / "checkpoints").write_text("x")
    assert cli_train(tmp_path, run) == 2
    assert "checkpoints must be a directory" in one_line(capsys)
    run = tmp_path / "r2"
    (run / "log.jsonl").mkdir(parents=True)
    assert cli_train(tmp_path, run) == 2
    assert "log.jsonl must be a file" in one_line(capsys)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_is_one_line(tmp_path, capsys, monkeypatch, code):
    import archdiscover.engine.loop as loop

    def refuse(obj, path):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(loop, "save_atomic", refuse)
    assert cli_train(tmp_path, tmp_path / "run") == 1
    err = one_line(capsys)
    assert os.strerror(code) in err and "epoch_0001.pt" in err


def test_run_dir_in_toml_must_be_a_path(tmp_path, capsys):
    cfg = toml(tmp_path / "c.toml", run_dir=5)
    assert main(["train", "--config", str(cfg), "--quiet"]) == 2
    assert "run_dir must be a path" in one_line(capsys)


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"model_args": {"widths": [0]}}, "widths must be positive"),
        ({"model_args": {"widths": [-5]}}, "widths must be positive"),
        ({"model_args": {"final_relu": "no"}}, "'final_relu' must be bool"),
        ({"model_args": {"in_features": 784}}, "cannot run on digits images of shape (1, 8, 8)"),
        ({"model_args": {"in_features": 64, "out_features": 3}}, "needs 10 class scores"),
        ({"model": "resnet20", "model_args": {}}, "cannot run on digits images"),
        ({"task": "denoising"}, "denoising needs an image of the input's shape"),
        ({"pad_to": 100000}, "pad_to must be between 1 and 1024"),
        ({"pad_to": 4}, "cannot pad 8x8 images to the smaller 4x4"),
        ({"optimizer": "sgd"}, "would ignore regularizer"),
        ({"momentum": 5}, "momentum must be in [0, 1)"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"noise_std": float("inf"), "task": "denoising"}, "'noise_std' must be a finite"),
        ({"model_args": {"nope": 1}}, "takes no argument 'nope'"),
    ],
)
def test_bad_config_values_are_one_line_naming_the_key(tmp_path, capsys, over, needle):
    assert cli_train(tmp_path, tmp_path / "run", **over) in (1, 2)
    assert needle in one_line(capsys)


def test_seed_flag_and_binary_toml(tmp_path, capsys):
    cfg = toml(tmp_path / "c.toml")
    assert main(["train", "--config", str(cfg), "--seed", "-1", "--run-dir", "x"]) == 2
    assert "seed" in one_line(capsys)
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\xff\xfe\x00\x81binary")
    assert main(["train", "--config", str(binary)]) == 2
    assert "b.toml" in one_line(capsys)


def test_a_changed_config_names_the_keys(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_train(tmp_path, run, epochs=1) == 0
    capsys.readouterr()
    assert cli_train(tmp_path, run, epochs=1, lr=0.2, lam=0.5) == 2
    err = one_line(capsys)
    assert "lam (0.3 -> 0.5)" in err and "lr (0.1 -> 0.2)" in err


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda ck: ck.pop("optimizer"), "lacks the key 'optimizer'"),
        (lambda ck: ck.update(epoch="three"), "'epoch' is a str"),
        (lambda ck: ck.update(epoch=7), "is at epoch 7, outside this run's 1..2"),
        (lambda ck: ck.update(model={"layers.1.weight": "x"}), "is not a tensor"),
        (lambda ck: ck.update(rng={}), "lacks torch's RNG state"),
    ],
)
def test_a_malformed_checkpoint_is_one_line(tmp_path, capsys, edit, needle):
    run = tmp_path / "run"
    train(BASE, run, progress=False, stop_after=1)
    ck_path = run / "checkpoints" / "epoch_0001.pt"
    ck = torch.load(ck_path, weights_only=True)
    edit(ck)
    torch.save(ck, ck_path)
    assert cli_train(tmp_path, run) == 1
    assert needle in one_line(capsys)


def test_a_finished_run_without_its_log_reports_again(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_train(tmp_path, run) == 0
    first = capsys.readouterr().out
    (run / "log.jsonl").unlink()
    assert cli_train(tmp_path, run) == 0
    again = capsys.readouterr().out
    assert (
        "test accuracy" in again
        and again.split("test accuracy")[1][:8] == first.split("test accuracy")[1][:8]
    )


def test_out_paths_that_are_files(tmp_path, capsys):
    run = tmp_path / "run"
    train(dict(BASE, epochs=1), run, progress=False)
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["report", str(run), "--out", str(f)]) == 2
    assert "afile is a file" in one_line(capsys)
    assert main(["demo", "--out", str(f), "--quick", "--quiet"]) == 2
    assert "afile is a file" in one_line(capsys)


def test_compile_onnx_path_is_relative_to_the_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(dict(BASE, epochs=1), run, progress=False)
    monkeypatch.chdir(tmp_path)
    assert main(["compile", str(run), "--onnx", "small.onnx", "--round-to", "1",
                 "--repeats", "2", "--batch-sizes", "1"]) == 0  # fmt: skip
    assert (run / "small.onnx").is_file() and not (tmp_path / "small.onnx").exists()


@pytest.mark.parametrize(
    ("x", "needle"),
    [
        (torch.randn(3, 5), "cannot run on the example inputs ((3, 5) float32)"),
        (torch.randn(3, 4, 1), "cannot run on the example inputs"),
        (torch.randint(0, 5, (3, 4)), "cannot run on the example inputs ((3, 4) int64)"),
        (torch.randn(0, 4), "has no samples"),
        ([], "empty"),
        ("not a tensor", "must be a torch.Tensor"),
    ],
)
def test_compile_with_bad_inputs_is_a_compile_error(x, needle):
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ad.CompileError) as err:
        ad.compile(m, x)
    assert needle in str(err.value) and len(str(err.value).splitlines()) == 1


def test_small_models_train_on_one_thread_and_the_count_is_restored(tmp_path):
    seen = []
    torch.set_num_threads(2)
    try:
        train(dict(BASE, epochs=1), tmp_path / "a", progress=False,
              on_epoch=lambda r: seen.append(torch.get_num_threads()))  # fmt: skip
        assert seen == [1] and torch.get_num_threads() == 2
        train(dict(BASE, epochs=1, threads=2), tmp_path / "b", progress=False,
              on_epoch=lambda r: seen.append(torch.get_num_threads()))  # fmt: skip
        assert seen[-1] == 2
    finally:
        torch.set_num_threads(1)


def test_train_accepts_only_a_path_for_the_run_directory():
    with pytest.raises(ConfigError, match="must be a path"):
        train(BASE, 5, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'epochs' must be int"):
        TrainConfig(epochs="2").validate()  # type: ignore[arg-type]
