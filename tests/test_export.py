import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from archdiscover.export import (
    OnnxExportError,
    OnnxVerificationError,
    export_onnx,
    ort_session,
    verify_onnx,
)
from archdiscover.latency import Latency, compare_latency, onnx_latency


def mlp(width=32):
    return nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, 10))


def convnet():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def decoder():
    return nn.Sequential(
        nn.Linear(16, 8 * 4 * 4),
        nn.Unflatten(1, (8, 4, 4)),
        nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1),
        nn.Sigmoid(),
    )


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Conv1d(2, 8, 3)

    def forward(self, x, y):
        return self.a(x) + self.b(y).mean(dim=2)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(12, 16)
        self.head1 = nn.Linear(16, 3)
        self.head2 = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.head1(h), [self.head2(h) * 100.0]  # nested list, large scale


def seeded(make, seed=0):
    torch.manual_seed(seed)
    return make()


def run_ort(path, inputs):
    sess = ort_session(path)
    feed = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs, strict=True)}
    return sess.run(None, feed)


@pytest.mark.parametrize(
    ("make", "shape"),
    [(mlp, (4, 20)), (convnet, (2, 3, 16, 16)), (decoder, (3, 16))],
    ids=["mlp", "convnet", "decoder"],
)
def test_export_runs_at_new_batch_and_matches_torch(tmp_path, make, shape):
    model = seeded(make)
    x = torch.randn(shape)
    out = export_onnx(model, tmp_path / "m.onnx", x)
    assert out == tmp_path / "m.onnx" and out.is_file()
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # no temp file left behind
    onnx.checker.check_model(str(out))

    sess = ort_session(out)
    (inp,) = sess.get_inputs()
    assert inp.name == "input" and inp.shape[0] == "batch"
    assert sess.get_outputs()[0].name == "output"

    x_new = torch.randn((shape[0] + 5, *shape[1:]))
    (got,) = run_ort(out, (x_new,))
    model.eval()
    with torch.no_grad():
        want = model(x_new).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-5
    assert verify_onnx(out, model, x_new) < 1e-5


def test_training_flags_and_parameters_unchanged(tmp_path):
    model = seeded(convnet)
    model.train()
    model[1].eval()  # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    export_onnx(model, tmp_path / "c.onnx", x)
    assert [m.training for m in model.modules()] == flags
    after = model.state_dict()
    assert after.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(after[k], v), k  # BN running stats untouched too


# torch.export's own deprecation notice, not ours
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)`:FutureWarning")
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_two_inputs_and_two_outputs(tmp_path, dynamo):
    model = seeded(TwoInputs).eval()
    x, y = torch.randn(3, 6), torch.randn(3, 2, 7)
    path = export_onnx(model, tmp_path / "two_in.onnx", (x, y), dynamo=dynamo)
    sess = ort_session(path)
    assert [i.name for i in sess.get_inputs()] == ["input_0", "input_1"]
    assert [i.shape[0] for i in sess.get_inputs()] == ["batch", "batch"]
    x2, y2 = torch.randn(9, 6), torch.randn(9, 2, 7)
    (got,) = run_ort(path, (x2, y2))
    with torch.no_grad():
        want = model(x2, y2).numpy()
    assert np.abs(got - want).max() < 1e-5

    model2 = seeded(TwoOutputs).eval()
    z = torch.randn(1, 12)  # batch 1: verification at batch 4 proves the batch is dynamic
    path2 = export_onnx(
        model2, tmp_path / "two_out.onnx", z, dynamo=dynamo, output_names=["a", "b"]
    )
    sess2 = ort_session(path2)
    assert [o.name for o in sess2.get_outputs()] == ["a", "b"]
    z2 = torch.randn(6, 12)
    got1, got2 = run_ort(path2, (z2,))
    with torch.no_grad():
        want1, (want2,) = model2(z2)
    assert got1.shape == (6, 3) and got2.shape == (6, 5)
    assert np.abs(got1 - want1.numpy()).max() < 1e-5
    assert np.abs(got2 - want2.numpy()).max() / np.abs(want2.numpy()).max() < 1e-5


def test_static_batch_export(tmp_path):
    model = seeded(mlp)
    path = export_onnx(model, tmp_path / "s.onnx", torch.randn(4, 20), dynamic_batch=False)
    assert ort_session(path).get_inputs()[0].shape == [4, 20]
    with pytest.raises(ValueError, match="fixed batch dim of 4"):
        onnx_latency(path, (20,), batch_sizes=(4, 8), repeats=1, warmup=0)


def test_wrong_model_raises_with_max_error(tmp_path):
    path = export_onnx(seeded(mlp, 0), tmp_path / "m.onnx", torch.randn(4, 20))
    other = seeded(mlp, 1)
    x = torch.randn(5, 20)
    with pytest.raises(OnnxVerificationError, match="max abs error") as info:
        verify_onnx(path, other, x)
    err = info.value
    with torch.no_grad():
        expected = np.abs(run_ort(path, (x,))[0] - other.eval()(x).numpy()).max()
    assert err.max_abs_error == pytest.approx(expected, rel=1e-4)
    assert err.max_abs_error > 1e-2 and err.rel_error > 1e-5
    assert err.output_index == 0 and err.atol == 1e-5
    assert f"{err.max_abs_error:.3g}" in str(err) and str(path) in str(err)
    # a loose enough tolerance accepts it and returns the error
    assert verify_onnx(path, other, x, atol=1e3) == pytest.approx(err.rel_error, rel=1e-4)


class BatchDependent(nn.Module):
    """Exports fine, but the legacy trace freezes a Python constant: wrong at other batches."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) * float(x.shape[0])


def test_failed_verification_leaves_no_file(tmp_path):
    dest = tmp_path / "bad.onnx"
    with pytest.warns(torch.jit.TracerWarning):
        with pytest.raises(OnnxVerificationError, match="batch size 5") as info:
            export_onnx(seeded(BatchDependent), dest, torch.randn(2, 4))
    assert info.value.path == dest and str(dest) in str(info.value)
    assert os.listdir(tmp_path) == []  # neither the file nor the temp file


class FrozenShape(nn.Module):
    """The trace turns ``int(x.shape[0])`` into a constant: onnxruntime fails at other batches."""

    def forward(self, x):
        return x + torch.zeros(int(x.shape[0]), 1)


def test_onnxruntime_failure_at_new_batch_is_a_verification_error(tmp_path):
    with pytest.warns(torch.jit.TracerWarning):
        with pytest.raises(OnnxVerificationError, match="onnxruntime failed to run") as info:
            export_onnx(FrozenShape(), tmp_path / "f.onnx", torch.randn(2, 4))
    assert info.value.output_index == -1 and "batch size 5" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_missing_parent_directory(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        export_onnx(seeded(mlp), missing / "m.onnx", torch.randn(2, 20))


def test_export_error_is_wrapped(tmp_path):
    class Bad(nn.Module):
        def forward(self, x):
            return torch.linalg.eig(x)[0].real  # no ONNX symbolic for eig

    with pytest.raises(OnnxExportError, match="legacy"):
        export_onnx(Bad(), tmp_path / "e.onnx", torch.randn(2, 3, 3))
    assert os.listdir(tmp_path) == []


def test_onnx_latency(tmp_path):
    path = export_onnx(seeded(mlp), tmp_path / "m.onnx", torch.randn(2, 20))
    lat = onnx_latency(path, (20,), batch_sizes=(1, 8), warmup=2, repeats=7, threads=1)
    assert set(lat) == {1, 8}
    for b, entry in lat.items():
        assert isinstance(entry, Latency) and entry.batch_size == b
        assert entry.repeats == 7
        assert 0 < entry.min_ms <= entry.p10_ms <= entry.median_ms <= entry.p90_ms
        assert entry.to_dict()["median_ms"] == entry.median_ms
    more = onnx_latency(path, (20,), batch_sizes=(2,), warmup=0, repeats=3, min_seconds=0.05)
    assert more[2].repeats > 3  # kept going until min_seconds had passed


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_onnx_latency_rejects_bad_batch_size(tmp_path, bad):
    path = export_onnx(seeded(mlp), tmp_path / "m.onnx", torch.randn(2, 20), verify=False)
    with pytest.raises(ValueError, match=f"got {bad!r}"):
        onnx_latency(path, (20,), batch_sizes=(1, bad))


def test_latency_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx"):
        onnx_latency(tmp_path / "nope.onnx", (20,))
    path = export_onnx(seeded(mlp), tmp_path / "m.onnx", torch.randn(2, 20), verify=False)
    with pytest.raises(ValueError, match="repeats"):
        onnx_latency(path, (20,), repeats=0)
    with pytest.raises(ValueError, match="dim 1 is 20"):
        onnx_latency(path, (21,), repeats=1)


def test_compare_latency_sees_the_smaller_model(tmp_path):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(256, 2048), nn.ReLU(), nn.Linear(2048, 2048))
    compact = nn.Sequential(nn.Linear(256, 16), nn.ReLU(), nn.Linear(16, 16))
    x = torch.randn(2, 256)
    d = export_onnx(dense, tmp_path / "dense.onnx", x, verify=False)
    c = export_onnx(compact, tmp_path / "compact.onnx", x, verify=False)
    res = compare_latency(d, c, (256,), batch_sizes=(1, 16), warmup=2, repeats=8, rounds=4)
    assert set(res) == {1, 16}
    for b, row in res.items():
        assert row["dense"]["batch_size"] == b and row["compact"]["repeats"] == 8
        assert row["speedup"] == pytest.approx(
            row["dense"]["median_ms"] / row["compact"]["median_ms"]
        )
        assert row["speedup"] > 3  # ~290x fewer MACs
