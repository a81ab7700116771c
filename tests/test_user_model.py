"""``archdiscover train --model package.module:factory``: the user's own model, trained and
compiled the same way; a bad import path is one line."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from archdiscover.cli import main
from archdiscover.engine import load_trained

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.fc = nn.Linear(width, 10)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            if y.shape[-1] > 4:  # control flow on a shape: traced with torch.export
                y = y[..., 1:-1, 1:-1]
            return self.fc(y.mean((2, 3)))

    def small_cnn(width=8):
        return Net(width)

    def not_a_model():
        return 3

    NOT_CALLABLE = 5
    """
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory with a module ``usernets`` holding the user's models."""
    (tmp_path / "usernets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    sys.modules.pop("usernets", None)


FLAGS = [
    "--dataset", "digits", "--epochs", "1", "--regularizer", "coupled", "--lam", "0.5",
    "--init-density", "0.5", "--quiet",
]  # fmt: skip


def test_train_and_compile_the_users_own_model(project, capsys):
    run = project / "run"
    args = ["train", "--model", "usernets:small_cnn", "--model-args", '{"width": 6}']
    assert main([*args, "--run-dir", str(run), *FLAGS]) == 0
    model, meta = load_trained(run)
    assert meta["model"] == "usernets:small_cnn" and meta["model_args"] == {"width": 6}
    assert type(model).__name__ == "Net" and model.conv.out_channels == 6
    rc = main(["compile", str(run), "--round-to", "1", "--batch-sizes", "1,4", "--repeats", "2"])
    assert rc == 0, capsys.readouterr().err
    assert "layer width" in capsys.readouterr().out
    assert (run / "model.onnx").is_file()
    import archdiscover as ad

    again = ad.load_compiled(run / "compiled.pt", lambda: model.__class__(6))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-5)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("nosuchpkg.nets:small_cnn", "cannot import 'nosuchpkg.nets' (ModuleNotFoundError"),
        ("usernets:missing", "module 'usernets' has no attribute 'missing'"),
        ("usernets:NOT_CALLABLE", "usernets.NOT_CALLABLE is a int, not a callable"),
        ("usernets:small-cnn", "is not of the form package.module:factory"),
        ("usernets", "unknown model 'usernets'"),
        ("usernets:not_a_model", "returned a int, not an nn.Module"),
    ],
)
def test_a_bad_model_path_is_one_line(project, capsys, name, needle):
    rc = main(["train", "--model", name, "--run-dir", str(project / "r"), *FLAGS])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert needle in err
