"""Tests of autotrainonce.data: datasets, transforms and the held-out split."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from autotrainonce import data
from autotrainonce.data import transforms as T
from autotrainonce.data.idx import read_idx
from autotrainonce.data.safe_pickle import safe_load
from autotrainonce.errors import ConfigError, DatasetError, UnknownNameError

FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------- helpers writing tiny files


def idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_fmnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            name = f"{prefix}-{kind}-ubyte"
            raw = idx_bytes(arr)
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
        out[prefix] = (x, y)
    return out


def write_pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(parent: Path, n: int = 20) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        write_pickle(
            folder / name, {b"batch_label": b"x", b"data": x, b"labels": y, b"filenames": [b"a"] * n}
        )
        out[name] = (x, y)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return out


def write_cifar100(folder: Path, n: int = 20) -> dict[str, dict[str, object]]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    out = {}
    for name in ("train", "test"):
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),  # str keys: both kinds must work
            "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
            "coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
        }
        write_pickle(folder / name, batch)
        out[name] = batch
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}  # fmt: skip
    write_pickle(folder / "meta", meta)
    return out


def check_items(ds, n: int, shape: tuple[int, ...], num_classes: int) -> None:
    assert len(ds) == n
    x, y = ds[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == shape
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert isinstance(y, int)
    labels = [ds[i][1] for i in range(len(ds))] if n <= 2000 else ds.labels.tolist()
    assert min(labels) >= 0 and max(labels) < num_classes


# ----------------------------------------------------------------------------- registry


def test_registry_lists_and_rejects_unknown_names():
    assert data.list_datasets() == [
        "cifar10",
        "cifar100",
        "digits",
        "fashion-mnist",
        "imagefolder",
        "synthetic",
    ]
    with pytest.raises(UnknownNameError, match="choose one of: cifar10, cifar100, digits"):
        data.create("mnist-ish")
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        data.info("nope")


def test_bad_split_and_option_are_config_errors():
    with pytest.raises(ConfigError, match="train, test"):
        data.create("synthetic", "val")
    with pytest.raises(ConfigError, match="num_samples"):
        data.create("synthetic", bogus=1)
    with pytest.raises(ConfigError, match="transform"):
        data.create("synthetic", transform="fancy")


# ----------------------------------------------------------------------------- fashion-mnist


@pytest.mark.skipif(
    not FMNIST.is_dir(), reason=f"{FMNIST} absent: sudo apt-get install dataset-fashion-mnist"
)
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("ATO_DATA_ROOT", raising=False)
    train, test = data.create("fashion-mnist", "train"), data.create("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.labels.unique().tolist() == list(range(10))
    assert test.labels.bincount().tolist() == [1000] * 10
    check_items(test, 10000, (1, 28, 28), 10)
    assert train.info == data.info("fashion-mnist")
    assert train.info.mean == (0.2860,) and train.info.class_names[9] == "Ankle boot"
    # The cache makes a second creation share the same storage.
    assert data.create("fashion-mnist", "train").images.data_ptr() == train.images.data_ptr()


@pytest.mark.parametrize("layout", ["direct", "parent", "plain"])
def test_fashion_mnist_env_root(tmp_path, monkeypatch, layout):
    folder = tmp_path / "fashion-mnist" if layout == "parent" else tmp_path
    written = write_fmnist(folder, gz=layout != "plain")
    monkeypatch.setenv("ATO_DATA_ROOT", str(tmp_path))
    train, test = data.create("fashion-mnist"), data.create("fashion-mnist", "test")
    check_items(train, 12, (1, 28, 28), 10)
    x, y = written["t10k"]
    assert len(test) == 5
    assert torch.equal(test.images[:, 0], torch.from_numpy(x))
    assert test.labels.tolist() == y.tolist()
    assert torch.allclose(test[3][0][0], torch.from_numpy(x[3]).float() / 255)


def test_fashion_mnist_root_argument_beats_env(tmp_path, monkeypatch):
    write_fmnist(tmp_path / "mine", n_train=7)
    monkeypatch.setenv("ATO_DATA_ROOT", str(tmp_path / "elsewhere"))
    assert len(data.create("fashion-mnist", root=tmp_path / "mine")) == 7


def test_fashion_mnist_missing_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as err:
        data.create("fashion-mnist", root=missing)
    msg = str(err.value)
    assert str(missing) in msg and "apt-get install dataset-fashion-mnist" in msg and "ATO_DATA_ROOT" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("damage", ["truncated-gzip", "bad-magic", "short-data", "not-gzip-garbage"])
def test_fashion_mnist_corrupt(tmp_path, damage):
    write_fmnist(tmp_path)
    target = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    if damage == "truncated-gzip":
        target.write_bytes(target.read_bytes()[:200])
    elif damage == "bad-magic":
        target.write_bytes(gzip.compress(b"\x00\x00\x07\x03" + raw[4:]))
    elif damage == "short-data":
        target.write_bytes(gzip.compress(raw[:-10]))
    else:
        target.write_bytes(b"hello, not an idx file")
    with pytest.raises(DatasetError, match="corrupt") as err:
        data.create("fashion-mnist", root=tmp_path)
    assert str(target) in str(err.value) and "--reinstall dataset-fashion-mnist" in str(err.value)


def test_fashion_mnist_count_mismatch(tmp_path):
    write_fmnist(tmp_path)
    labels = np.zeros(11, np.uint8)  # 12 images, 11 labels
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DatasetError, match="12 images but .* 11 labels"):
        data.create("fashion-mnist", root=tmp_path)


def test_read_idx_big_endian_types(tmp_path):
    values = np.array([[1, -2], [300, 40000]], dtype=">i4")
    path = tmp_path / "x.idx"
    path.write_bytes(struct.pack(">HBB", 0, 0x0C, 2) + struct.pack(">2I", 2, 2) + values.tobytes())
    out = read_idx(path)
    assert out.dtype == np.int32 and out.tolist() == [[1, -2], [300, 40000]]


# ----------------------------------------------------------------------------- digits and synthetic


def test_digits():
    pytest.importorskip("sklearn")
    train, test = data.create("digits"), data.create("digits", "test")
    check_items(train, 1437, (1, 8, 8), 10)
    check_items(test, 360, (1, 8, 8), 10)
    assert train.info == data.info("digits") and not train.info.flip_augment
    # Deterministic, and the grey levels are the 17 values k/16.
    assert torch.equal(data.create("digits").images, train.images)
    assert torch.allclose(train.images * 16, (train.images * 16).round())


def test_synthetic_is_deterministic_and_learnable():
    ds = data.create("synthetic", num_classes=4, image_size=16, in_channels=2, seed=3)
    check_items(ds, 512, (2, 16, 16), 4)
    assert ds.info == data.info("synthetic", num_classes=4, image_size=16, in_channels=2, seed=3)
    assert torch.equal(
        ds.images, data.create("synthetic", num_classes=4, image_size=16, in_channels=2, seed=3).images
    )
    test = data.create("synthetic", "test", num_classes=4, image_size=16, in_channels=2, seed=3)
    assert len(test) == 128 and not torch.equal(test.images[:10], ds.images[:10])
    # Learnable: nearest class mean (from train) classifies the test split well.
    x, xt = ds.images.float().flatten(1), test.images.float().flatten(1)
    means = torch.stack([x[ds.labels == c].mean(0) for c in range(4)])
    accuracy = (torch.cdist(xt, means).argmin(1) == test.labels).float().mean()
    assert accuracy > 0.9


# ----------------------------------------------------------------------------- cifar


def test_cifar10_round_trip(tmp_path):
    written = write_cifar10(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        train = data.create("cifar10", root=root)
        check_items(train, 100, (3, 32, 32), 10)
    test = data.create("cifar10", "test", root=tmp_path)
    x, y = written["test_batch"]
    assert test.labels.tolist() == y
    img, _ = test[7]
    row = x[7]
    # 1024 R, then 1024 G, then 1024 B, each row-major 32×32.
    assert round(float(img[0, 0, 1]) * 255) == row[1]
    assert round(float(img[1, 2, 5]) * 255) == row[1024 + 2 * 32 + 5]
    assert round(float(img[2, 31, 31]) * 255) == row[3071]
    assert torch.equal(test.images.reshape(len(test), -1), torch.from_numpy(x))
    # Training batches are concatenated in order 1..5.
    assert torch.equal(train.images[20:40].reshape(20, -1), torch.from_numpy(written["data_batch_2"][0]))
    assert train.info.class_names[0] == "airplane" == data.info("cifar10", root=tmp_path).class_names[0]


def test_cifar100_fine_and_coarse(tmp_path):
    written = write_cifar100(tmp_path / "cifar-100-python")
    fine = data.create("cifar100", "test", root=tmp_path)
    coarse = data.create("cifar100", "test", root=tmp_path / "cifar-100-python", label_type="coarse")
    assert fine.labels.tolist() == written["test"]["fine_labels"]
    assert coarse.labels.tolist() == written["test"]["coarse_labels"]
    assert torch.equal(fine.images.reshape(20, -1), torch.from_numpy(written["test"]["data"]))
    assert (fine.info.num_classes, coarse.info.num_classes) == (100, 20)
    assert coarse.info.class_names[3] == "c3"
    assert data.info("cifar100", label_type="coarse").num_classes == 20  # no files needed
    with pytest.raises(ConfigError, match="fine, coarse"):
        data.create("cifar100", root=tmp_path, label_type="medium")


def test_cifar_missing_files(tmp_path, monkeypatch):
    monkeypatch.delenv("ATO_DATA_ROOT", raising=False)
    with pytest.raises(DatasetError, match="ATO_DATA_ROOT"):
        data.create("cifar10")
    with pytest.raises(DatasetError, match="cifar-100-python"):
        data.create("cifar100", root=tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    write_pickle(folder / "test_batch", {b"data": _Evil(), b"labels": [0]})
    with pytest.raises(DatasetError, match=r"system"):
        data.create("cifar10", "test", root=tmp_path)
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps(_Evil(), protocol=4))
    with pytest.raises(DatasetError, match="refusing"):
        safe_load(bad)
    trunc = tmp_path / "trunc.pkl"
    trunc.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2)[:100])
    with pytest.raises(DatasetError, match="corrupt"):
        safe_load(trunc)


# ----------------------------------------------------------------------------- imagefolder


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(4)
    pixels = {}
    for split, per_class in (("train", 3), ("test", 2)):
        for cls in ("dog", "cat"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / split / cls / f"{i}.png")
                pixels[split, cls, i] = arr
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = data.create("imagefolder", root=tmp_path)
    check_items(ds, 6, (3, 6, 5), 2)
    assert ds.info.class_names == ("cat", "dog") and ds.info.image_size == (6, 5)
    img, label = ds[3]  # sorted: cat/0..2, dog/0..2
    assert label == 1
    assert torch.equal(
        (img * 255).round().to(torch.uint8), torch.from_numpy(pixels["train", "dog", 0]).permute(2, 0, 1)
    )
    grey = data.create("imagefolder", "test", root=tmp_path, channels=1, image_size=8)
    check_items(grey, 4, (1, 8, 8), 2)
    assert (
        data.info("imagefolder", root=tmp_path, channels=1)
        == data.create("imagefolder", root=tmp_path, channels=1).info
    )
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match=str(tmp_path / "empty" / "train")):
        data.create("imagefolder", root=tmp_path / "empty")


# ----------------------------------------------------------------------------- transforms


def test_transforms_shapes_and_math():
    x = torch.rand(3, 8, 6)
    assert torch.equal(T.RandomHorizontalFlip(p=1.0)(x)[:, :, 0], x[:, :, -1])
    assert torch.equal(T.RandomHorizontalFlip(p=0.0)(x), x)
    assert T.RandomCrop(8, padding=2)(torch.rand(3, 8, 8)).shape == (3, 8, 8)
    assert torch.equal(T.RandomCrop((8, 6))(x), x)  # no padding, same size: identity
    norm = T.Normalize((0.5, 0.25, 0.0), (0.5, 0.5, 2.0))(x)
    assert torch.allclose(norm[1], (x[1] - 0.25) / 0.5) and torch.allclose(norm[2], x[2] / 2)
    assert T.Resize(4)(x).shape == (3, 4, 4) and T.Resize((16, 12))(x).shape == (3, 16, 12)
    padded = T.PadTo(12)(x)
    assert padded.shape == (3, 12, 12) and torch.equal(padded[:, 2:10, 3:9], x)
    assert torch.allclose(padded.sum(), x.sum())
    assert torch.equal(T.RepeatChannels(3)(x[:1]), x[:1].expand(3, 8, 6))
    assert T.ToFloat()(torch.full((1, 2, 2), 255, dtype=torch.uint8)).eq(1.0).all()
    with pytest.raises(ConfigError):
        T.PadTo(4)(x)
    with pytest.raises(ConfigError):
        T.Normalize((0.5,), (0.5,))(x)


def test_random_crop_content_is_a_shifted_window():
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8) + 1
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    windows = [padded[:, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
    torch.manual_seed(0)
    for _ in range(20):  # each output is one window of the zero-padded image, the same for every channel
        out = T.RandomCrop(8, padding=2)(x)
        assert any(torch.equal(out, w) for w in windows)


def test_transforms_are_reproducible_with_torch_seed():
    pipe = T.Compose([T.RandomCrop(8, padding=4), T.RandomHorizontalFlip()])
    x = torch.rand(3, 8, 8)
    torch.manual_seed(5)
    first = [pipe(x) for _ in range(10)]
    torch.manual_seed(5)
    second = [pipe(x) for _ in range(10)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert any(not torch.equal(first[0], f) for f in first[1:])


def test_build_transform():
    info = data.info("synthetic", image_size=28, in_channels=1)
    pipe = data.build_transform(info, train=True, image_size=32, in_channels=3)
    names = [type(t).__name__ for t in pipe.transforms]
    assert names == ["Resize", "RepeatChannels", "RandomCrop", "RandomHorizontalFlip", "Normalize"]
    assert pipe.transforms[2].padding == 4 and pipe(torch.rand(1, 28, 28)).shape == (3, 32, 32)
    padded = data.build_transform(info, train=False, image_size=32, fit="pad")
    assert [type(t).__name__ for t in padded.transforms] == ["PadTo", "Normalize"]
    digits_info = data.info("digits")
    assert [type(t).__name__ for t in data.build_transform(digits_info, True).transforms] == [
        "RandomCrop",
        "Normalize",
    ]
    assert data.build_transform(digits_info, True).transforms[0].padding == 1
    assert T.crop_padding((28, 28)) == 2
    ev = data.create("synthetic", "test", transform="default")
    raw = data.create("synthetic", "test")
    mean, std = torch.tensor(ev.info.mean).view(-1, 1, 1), torch.tensor(ev.info.std).view(-1, 1, 1)
    assert torch.allclose(ev[0][0], (raw[0][0] - mean) / std)
    with pytest.raises(ConfigError):
        data.build_transform(data.info("cifar10"), True, in_channels=1)


def test_transforms_in_dataloader_workers_are_seeded():
    ds = data.create("synthetic", num_samples=16, image_size=8, transform="train")

    def run() -> torch.Tensor:
        torch.manual_seed(11)
        return torch.cat([x for x, _ in DataLoader(ds, batch_size=4, num_workers=2)])

    assert torch.equal(run(), run())


# ----------------------------------------------------------------------------- held-out split


def test_split_holdout():
    ds = data.create("synthetic", num_samples=200)
    train, hold = data.split_holdout(ds, fraction=0.1, seed=3)
    assert len(hold) == 20 and len(train) == 180
    assert set(train.indices).isdisjoint(hold.indices)
    assert sorted(train.indices + hold.indices) == list(range(200))
    again = data.split_holdout(ds, fraction=0.1, seed=3)
    assert again[1].indices == hold.indices
    assert data.split_holdout(ds, fraction=0.1, seed=4)[1].indices != hold.indices
    for bad in (0, 1, -0.1, 1.5, True):
        with pytest.raises(ConfigError):
            data.split_holdout(ds, fraction=bad)


def test_infinite_loader_cycles():
    ds = data.create("synthetic", num_samples=10, image_size=8)
    it = data.infinite_loader(DataLoader(ds, batch_size=4))
    sizes = [len(next(it)[1]) for _ in range(7)]
    assert sizes == [4, 4, 2, 4, 4, 2, 4]
    with pytest.raises(ConfigError, match="no batches"):
        next(data.infinite_loader([]))
