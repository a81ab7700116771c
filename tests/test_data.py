"""Data loaders: the shipped subsets, the file readers (on small files written here in the
official formats), padding, denoising and ``load``."""

import gzip
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from archdiscover import data
from archdiscover.data import (
    DATASETS,
    DatasetNotFoundError,
    DenoisingDataset,
    Split,
    add_noise,
    cifar10,
    data_dir,
    denoising,
    digits,
    fashion_mnist,
    load,
    mnist,
    mnist5k,
    pad_images,
)

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _idx_bytes(a: np.ndarray) -> bytes:
    magic = 2051 if a.ndim == 3 else 2049
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return head + a.astype(np.uint8).tobytes()


def _write_idx_set(folder, n_train=20, n_test=6, gz=(), seed=0):
    """The four IDX files (those named in ``gz`` gzipped); returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, a in arrays.items():
        raw = _idx_bytes(a)
        if key in gz:
            with gzip.open(folder / f"{IDX_NAMES[key]}.gz", "wb") as fh:
                fh.write(raw)
        else:
            (folder / IDX_NAMES[key]).write_bytes(raw)
    return arrays


def _write_cifar(folder, n_per_batch=8, n_test=5, seed=0, protocol=2):
    """Five train batches and a test batch; channel c's pixels lie in [60c, 60c + 100), so
    the channels have different means. Returns the (uint8 (N, 3072), labels) written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_per_batch
        x = rng.integers(0, 100, (n, 3, 1024)) + 60 * np.arange(3)[None, :, None]
        x = x.reshape(n, 3072).astype(np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": x}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
        written[name] = (x, np.array(labels))
    return written


def _one_line_naming(err: pytest.ExceptionInfo, path) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg


# ---------------------------------------------------------------- data_dir


def test_data_dir_explicit_env_and_neither(tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("ARCHDISCOVER_DATA", str(other))
    assert data_dir(tmp_path) == tmp_path  # an explicit path wins over the variable
    assert data_dir(str(tmp_path)) == tmp_path
    assert data_dir(None) == other
    monkeypatch.delenv("ARCHDISCOVER_DATA")
    with pytest.raises(DatasetNotFoundError) as err:
        data_dir(None)
    assert "\n" not in str(err.value)
    assert "ARCHDISCOVER_DATA" in str(err.value)
    assert "--data-dir" in str(err.value)
    monkeypatch.setenv("ARCHDISCOVER_DATA", "")  # empty counts as unset
    with pytest.raises(DatasetNotFoundError):
        data_dir(None)


def test_data_dir_not_a_directory(tmp_path, monkeypatch):
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    for bad in (a_file, tmp_path / "nope"):
        with pytest.raises(DatasetNotFoundError) as err:
            data_dir(bad)
        _one_line_naming(err, bad)
        assert isinstance(err.value, FileNotFoundError)
    monkeypatch.setenv("ARCHDISCOVER_DATA", str(tmp_path / "gone"))
    with pytest.raises(DatasetNotFoundError) as err:
        data_dir(None)
    _one_line_naming(err, tmp_path / "gone")
    assert "ARCHDISCOVER_DATA" in str(err.value)


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


def test_mnist_reads_plain_and_gz_idx(tmp_path):
    arrays = _write_idx_set(tmp_path, gz={"train_labels", "test_images"})
    split = mnist(tmp_path)
    assert isinstance(split, Split)
    assert split.image_shape == (1, 28, 28) and split.num_classes == 10
    xtr, ytr = split.train.tensors
    xte, yte = split.test.tensors
    assert xtr.shape == (20, 1, 28, 28) and xte.shape == (6, 1, 28, 28)  # the files' split
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert torch.equal(ytr, torch.from_numpy(arrays["train_labels"].astype(np.int64)))
    assert torch.equal(yte, torch.from_numpy(arrays["test_labels"].astype(np.int64)))
    assert abs(xtr.mean().item()) < 1e-5 and abs(xtr.std().item() - 1) < 1e-4
    # images in order, pixels /255 and standardized with the *train* statistics
    raw_tr = torch.from_numpy(arrays["train_images"]).float() / 255
    raw_te = torch.from_numpy(arrays["test_images"]).float() / 255
    m, s = raw_tr.mean(), raw_tr.std()
    torch.testing.assert_close(xtr[:, 0], (raw_tr - m) / s, atol=1e-4, rtol=0)
    torch.testing.assert_close(xte[:, 0], (raw_te - m) / s, atol=1e-4, rtol=0)


def test_all_gz_and_torchvision_layout(tmp_path):
    arrays = _write_idx_set(tmp_path / "MNIST" / "raw", gz=set(IDX_NAMES), seed=1)
    fashion = _write_idx_set(tmp_path / "FashionMNIST" / "raw", n_train=12, n_test=4, seed=2)
    a, b = mnist(tmp_path), fashion_mnist(tmp_path)
    assert len(a.train) == 20 and len(a.test) == 6
    assert len(b.train) == 12 and len(b.test) == 4
    assert torch.equal(a.test.tensors[1], torch.from_numpy(arrays["test_labels"].astype(np.int64)))
    assert torch.equal(
        b.train.tensors[1], torch.from_numpy(fashion["train_labels"].astype(np.int64))
    )


def test_mnist_uses_env_var(tmp_path, monkeypatch):
    _write_idx_set(tmp_path)
    monkeypatch.setenv("ARCHDISCOVER_DATA", str(tmp_path))
    assert len(mnist().train) == 20
    assert len(load("mnist").test) == 6
    monkeypatch.delenv("ARCHDISCOVER_DATA")
    with pytest.raises(DatasetNotFoundError, match="ARCHDISCOVER_DATA"):
        mnist()


@pytest.mark.parametrize("loader", [mnist, fashion_mnist])
def test_missing_idx_file(tmp_path, loader):
    _write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        loader(tmp_path)
    _one_line_naming(err, tmp_path / "t10k-labels-idx1-ubyte")
    assert isinstance(err.value, FileNotFoundError)
    assert err.value.path == tmp_path / "t10k-labels-idx1-ubyte"


def test_corrupt_idx_files(tmp_path):
    _write_idx_set(tmp_path, gz={"test_images"})
    path = tmp_path / "train-images-idx3-ubyte"
    good = path.read_bytes()

    path.write_bytes(good[:-100])  # truncated data
    with pytest.raises(ValueError, match="truncated") as err:
        mnist(tmp_path)
    assert str(path) in str(err.value)

    path.write_bytes(good[:10])  # truncated header
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        mnist(tmp_path)

    path.write_bytes((2049).to_bytes(4, "big") + good[4:])  # a labels magic on images
    with pytest.raises(ValueError, match="magic") as err:
        mnist(tmp_path)
    assert str(path) in str(err.value)

    path.write_bytes(good)
    gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-30])  # truncated gzip stream
    with pytest.raises(ValueError) as err:
        mnist(tmp_path)
    assert str(gz) in str(err.value)


def test_idx_count_mismatch(tmp_path):
    _write_idx_set(tmp_path)
    labels = np.zeros(19, np.uint8)  # 20 images
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    with pytest.raises(ValueError, match="19 labels for 20 images"):
        mnist(tmp_path)


# ---------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("in_subdir", [True, False])
def test_cifar10_reads_batches(tmp_path, in_subdir):
    folder = tmp_path / "cifar-10-batches-py" if in_subdir else tmp_path
    written = _write_cifar(folder)
    split = cifar10(tmp_path)
    assert split.image_shape == (3, 32, 32) and split.num_classes == 10
    xtr, ytr = split.train.tensors
    xte, yte = split.test.tensors
    assert xtr.shape == (40, 3, 32, 32) and xte.shape == (5, 3, 32, 32)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    train_labels = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert torch.equal(ytr, torch.from_numpy(train_labels))
    assert torch.equal(yte, torch.from_numpy(written["test_batch"][1]))
    # per channel standardized (the raw channel means differ by 60 levels)
    mean, std = xtr.mean(dim=(0, 2, 3)), xtr.std(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(3), atol=1e-4, rtol=0)
    # layout: the row is 1024 red, then green, then blue pixels, each row-major 32x32;
    # the test batch is standardized with the train statistics
    raw_tr = (
        torch.cat([torch.from_numpy(written[f"data_batch_{i}"][0]) for i in range(1, 6)])
        .float()
        .reshape(-1, 3, 32, 32)
        / 255
    )
    m = raw_tr.mean(dim=(0, 2, 3), keepdim=True)
    s = raw_tr.std(dim=(0, 2, 3), keepdim=True)
    raw_te = torch.from_numpy(written["test_batch"][0]).float().reshape(-1, 3, 32, 32) / 255
    torch.testing.assert_close(xte, (raw_te - m) / s, atol=1e-4, rtol=0)
    torch.testing.assert_close(xtr, (raw_tr - m) / s, atol=1e-4, rtol=0)
    assert xtr[0, 2, 0, 1] == xtr[0, 2].flatten()[1]  # sanity of the 32x32 view
    raw0 = written["data_batch_1"][0][0]
    assert raw0[2048 + 1] / 255 == pytest.approx(
        (xtr[0, 2, 0, 1] * s[0, 2] + m[0, 2]).item(), abs=1e-5
    )


def test_cifar10_reads_protocol_5_pickles(tmp_path):
    _write_cifar(tmp_path, protocol=5)
    assert len(cifar10(tmp_path).train) == 40


def test_cifar10_missing_batch(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    missing = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    missing.unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        cifar10(tmp_path)
    _one_line_naming(err, missing)
    with pytest.raises(DatasetNotFoundError) as err:
        cifar10(tmp_path / "absent")
    _one_line_naming(err, tmp_path / "absent")


def test_cifar10_corrupt_batches(tmp_path):
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_2"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError) as err:
        cifar10(tmp_path)
    assert str(path) in str(err.value)

    with open(path, "wb") as fh:  # right pickle, wrong content
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, fh)
    with pytest.raises(ValueError, match="data_batch_2"):
        cifar10(tmp_path)

    with open(path, "wb") as fh:  # a pickle that would run code is refused, not run
        pickle.dump(print, fh)
    with pytest.raises(ValueError, match="refusing"):
        cifar10(tmp_path)


# ---------------------------------------------------------------- padding


def _small_split(n=6, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g) + 3.0  # no zeros in the images
    y = torch.arange(n) % 3
    return Split(TensorDataset(x, y), TensorDataset(x[:2] * 2, y[:2]), shape, 3)


def test_pad_images_centered_with_zero_border():
    split = _small_split(shape=(2, 8, 8))
    out = pad_images(split, 12)
    assert out.image_shape == (2, 12, 12) and out.num_classes == 3
    for before, after in ((split.train, out.train), (split.test, out.test)):
        x, y = before.tensors
        px, py = after.tensors
        assert px.shape == (len(x), 2, 12, 12)
        assert torch.equal(py, y)
        assert torch.equal(px[..., 2:10, 2:10], x)  # centered
        border = px.clone()
        border[..., 2:10, 2:10] = float("nan")
        rest = border[~border.isnan()]
        assert rest.numel() == len(x) * 2 * (144 - 64) and torch.all(rest == 0)


def test_pad_images_odd_and_errors():
    split = _small_split()
    out = pad_images(split, 11)  # 3 extra: 1 before, 2 after
    px = out.train.tensors[0]
    assert px.shape[-2:] == (11, 11)
    assert torch.equal(px[..., 1:9, 1:9], split.train.tensors[0])
    assert torch.all(px[..., 0, :] == 0) and torch.all(px[..., 9:, :] == 0)
    assert pad_images(split, 8).train.tensors[0].equal(split.train.tensors[0])
    with pytest.raises(ValueError, match="smaller"):
        pad_images(split, 7)
    with pytest.raises(TypeError):
        pad_images(denoising(split, 0.1), 12)


# ---------------------------------------------------------------- denoising


def test_denoising_dataset_fixed_and_fresh_noise():
    split = _small_split()
    fixed = DenoisingDataset(split.train, 0.5, seed=3)
    noisy1, clean = fixed[1]
    noisy2, _ = fixed[1]
    assert torch.equal(clean, split.train.tensors[0][1])
    assert torch.equal(noisy1, noisy2)  # same index, same noise
    assert torch.equal(DenoisingDataset(split.train, 0.5, seed=3)[1][0], noisy1)  # any instance
    assert torch.equal(fixed[-5][0], noisy1)  # negative index, same item
    assert not torch.equal(fixed[2][0] - fixed[2][1], noisy1 - clean)  # other index, other noise
    assert not torch.equal(DenoisingDataset(split.train, 0.5, seed=4)[1][0], noisy1)
    fresh = DenoisingDataset(split.train, 0.5)
    a, b = fresh[1][0], fresh[1][0]
    assert not torch.equal(a, b)
    assert len(fixed) == len(split.train)
    assert not torch.equal(noisy1, clean)


@pytest.mark.parametrize("seed", [None, 7])
def test_denoising_noise_statistics(seed):
    base = TensorDataset(torch.zeros(400, 1, 8, 8), torch.zeros(400, dtype=torch.long))
    ds = DenoisingDataset(base, 0.3, seed=seed)
    noise = torch.stack([ds[i][0] - ds[i][1] for i in range(len(ds))])
    assert noise.std().item() == pytest.approx(0.3, rel=0.03)
    assert abs(noise.mean().item()) < 0.01


def test_denoising_validation():
    base = TensorDataset(torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError):
        DenoisingDataset(base, -0.1)
    with pytest.raises(ValueError):
        DenoisingDataset(base, float("nan"))
    noisy, clean = DenoisingDataset(base, 0.0, seed=0)[0]
    assert torch.equal(noisy, clean)


def test_add_noise():
    x = torch.full((64, 1, 16, 16), 2.0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = add_noise(x, 0.2, g1), add_noise(x, 0.2, g2)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert (a - x).std().item() == pytest.approx(0.2, rel=0.03)
    assert not torch.equal(add_noise(x, 0.2, g1), a)  # the generator moves on
    assert not torch.equal(add_noise(x, 0.2), add_noise(x, 0.2))  # global RNG
    assert torch.equal(add_noise(x, 0.0), x)
    assert torch.equal(x, torch.full((64, 1, 16, 16), 2.0))  # not in place


def test_denoising_split():
    split = _small_split()
    d = denoising(split, 0.25, seed=1)
    assert d.image_shape == split.image_shape
    assert isinstance(d.train, DenoisingDataset) and d.train.seed is None
    assert d.test.seed == 1 and d.test.std == 0.25
    assert torch.equal(d.test[0][0], d.test[0][0])
    assert not torch.equal(d.train[0][0], d.train[0][0])
    assert torch.equal(d.test[1][1], split.test.tensors[0][1])


# ---------------------------------------------------------------- load and the shipped sets


def test_load_unknown_name_lists_known():
    assert list(DATASETS) == ["mnist5k", "digits", "mnist", "fashion_mnist", "cifar10"]
    with pytest.raises(ValueError) as err:
        load("imagenet")
    for name in DATASETS:
        assert name in str(err.value)
    assert "imagenet" in str(err.value)


def test_load_files_with_pad_and_noise(tmp_path):
    _write_idx_set(tmp_path)
    _write_cifar(tmp_path / "cifar-10-batches-py")
    split = load("mnist", data_dir=tmp_path, pad_to=32)
    assert split.image_shape == (1, 32, 32) and split.train.tensors[0].shape == (20, 1, 32, 32)
    assert torch.equal(split.train.tensors[0][..., 2:30, 2:30], mnist(tmp_path).train.tensors[0])
    d = load("fashion-mnist", data_dir=tmp_path, noise_std=0.1, seed=2)
    assert isinstance(d.test, DenoisingDataset) and d.test.seed == 2 and d.test.std == 0.1
    noisy, clean = d.test[0]
    assert noisy.shape == clean.shape == (1, 28, 28)
    assert load("cifar10", data_dir=tmp_path).train.tensors[0].shape == (40, 3, 32, 32)


def test_load_shipped_sets_ignore_data_dir(tmp_path):
    split = load("digits", data_dir=tmp_path / "does-not-exist", seed=1)
    assert torch.equal(split.train.tensors[0], digits(seed=1).train.tensors[0])
    padded = load("mnist5k", pad_to=32)
    assert padded.image_shape == (1, 32, 32)
    assert padded.train[0][0].shape == (1, 32, 32) and padded.test[0][0].shape == (1, 32, 32)
    assert len(padded.train) == 4000 and len(padded.test) == 1000
    noisy = load("digits", noise_std=0.2)
    x, target = noisy.train[0]
    assert x.shape == target.shape == (1, 8, 8)
    assert torch.equal(target, digits(seed=0).train.tensors[0][0])


def test_mnist5k_and_digits_unchanged():
    a, b, c = mnist5k(seed=0), mnist5k(seed=0), mnist5k(seed=1)
    assert a.image_shape == (1, 28, 28) and a.num_classes == 10
    assert len(a.train) == 4000 and len(a.test) == 1000
    for x, y in zip(
        a.train.tensors + a.test.tensors, b.train.tensors + b.test.tensors, strict=True
    ):
        assert torch.equal(x, y)
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])  # another seed, another split
    assert torch.bincount(a.test.tensors[1]).tolist() == [100] * 10  # stratified
    xtr = a.train.tensors[0]
    assert abs(xtr.mean().item()) < 1e-4 and abs(xtr.std().item() - 1) < 1e-3
    d1, d2 = digits(seed=3), digits(seed=3)
    assert d1.image_shape == (1, 8, 8) and len(d1.train) == 1437 and len(d1.test) == 360
    assert torch.equal(d1.train.tensors[0], d2.train.tensors[0])
    assert torch.equal(d1.train.tensors[1], d2.train.tensors[1])
    assert not torch.equal(digits(seed=4).test.tensors[0], d1.test.tensors[0])
    assert set(data.__all__) >= {"load", "DATASETS", "pad_images", "denoising", "cifar10"}
