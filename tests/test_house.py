"""The shape of the package: light imports, no generic top-level names, one name per thing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import archdiscover as ad
from archdiscover.optim import LinBreg
from archdiscover.optim import _rowkernel as rowkernel
from archdiscover.regularizers import L1

HEAVY = ("onnx", "onnxruntime", "torch_pruning", "networkx", "scipy", "matplotlib", "mlxtend")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _loaded_after(code: str, cwd: str | None = None) -> list[str]:
    prog = (
        code + f"\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", prog], capture_output=True, text=True, check=True, cwd=cwd, env=ENV
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_training_core_imports_torch_only():
    assert (
        _loaded_after("from archdiscover import LinBreg, AdaBreg, L1, GroupL12, sparse_init_") == []
    )
    assert _loaded_after("import archdiscover, archdiscover.optim, archdiscover.schedule") == []
    assert _loaded_after("import archdiscover.graph.ops, archdiscover.verify") == []
    # the compiler loads its graph library and Torch-Pruning when it is used
    assert set(_loaded_after("import archdiscover as ad; ad.compile")) >= {
        "networkx",
        "torch_pruning",
    }


def test_compile_is_a_function_and_no_module_shadows_it():
    assert callable(ad.compile) and ad.compile.__module__ == "archdiscover.compiler.api"
    with pytest.raises(ModuleNotFoundError):
        __import__("archdiscover.compile")
    assert callable(ad.train) and ad.train.__module__ == "archdiscover.engine.loop"
    assert ad.models.build("mlp").__class__.__name__ == "MLP"


def test_a_users_own_models_package_does_not_shadow_the_library(tmp_path):
    pkg = tmp_path / "models"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("available = None  # the user's own package\n")
    code = textwrap.dedent(
        """
        import torch, models
        import archdiscover as ad
        from archdiscover.engine import TrainConfig, train
        assert models.available is None  # the user's package is the one named models
        cfg = TrainConfig(model="mlp", model_args={"in_features": 64, "widths": [16],
                          "out_features": 10}, dataset="digits", epochs=1, impl="foreach",
                          regularizer="coupled_weights", lam=0.1, init_density=0.3)
        res = train(cfg, "run", progress=False)
        x = torch.randn(4, 1, 8, 8)
        c = ad.compile(res.model.eval(), x)
        import archdiscover.models as am
        assert am.available() and am.__name__ == "archdiscover.models"
        print("OK", c.report.layers["layers.1"])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=ENV
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK")
    # the command line too, started from the same folder
    cli = [sys.executable, "-m", "archdiscover.cli"]
    args = ["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--quiet"]
    args += ["--model-args", '{"in_features": 64, "widths": [8], "out_features": 10}']
    out = subprocess.run(
        [*cli, *args, "--run-dir", "r2"], capture_output=True, text=True, cwd=tmp_path, env=ENV
    )
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [*cli, "compile", "r2", "--round-to", "1", "--repeats", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=ENV,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r2" / "model.onnx").is_file()


def test_impl_is_a_param_group_default_that_state_dict_keeps():
    w = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(torch.randn(4))
    opt = LinBreg([{"params": [w], "reg": L1(0.1)}, {"params": [b], "impl": "single"}], lr=0.1)
    assert [g["impl"] for g in opt.param_groups] == ["auto", "single"]
    sd = opt.state_dict()
    assert [g["impl"] for g in sd["param_groups"]] == ["auto", "single"]
    opt2 = LinBreg([{"params": [w], "reg": L1(0.1)}, {"params": [b]}], lr=0.1)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[1]["impl"] == "single"


def test_a_failed_c_kernel_build_is_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("ARCHDISCOVER_NO_CKERNEL", raising=False)

    def broken(target):
        raise RuntimeError("cc: no such compiler")

    monkeypatch.setattr(rowkernel, "_build", broken)
    rowkernel.load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="no such compiler"):
            assert rowkernel.load() is None
        assert "no such compiler" in rowkernel.failure()
        rowkernel.load.cache_clear()  # a new process: neither a rebuild nor a warning

        def never(target):
            raise AssertionError("must not rebuild")

        monkeypatch.setattr(rowkernel, "_build", never)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert rowkernel.load() is None
    finally:
        rowkernel.load.cache_clear()
