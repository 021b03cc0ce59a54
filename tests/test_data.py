import pickle
import struct

import numpy as np
import pytest
import torch

from ebmlab.config import DataConfig
from ebmlab.data import GMM8, HELDOUT_PER_CLASS, Rings, load_dataset


def test_mnist5k_split_is_fixed_and_disjoint():
    a = load_dataset(DataConfig(name="mnist5k"))
    b = load_dataset(DataConfig(name="mnist5k"))
    assert a.train.shape == (4500, 1, 28, 28) and a.heldout.shape == (500, 1, 28, 28)
    assert torch.equal(a.heldout, b.heldout)
    assert torch.bincount(a.heldout_labels).tolist() == [HELDOUT_PER_CLASS] * 10
    assert a.train.min() >= -1 and a.train.max() <= 1 and a.train.min() == -1
    # no held-out digit appears in the training set
    tr = a.train.flatten(1)
    for x in a.heldout[:20].flatten(1):
        assert not (tr == x).all(1).any()


def test_mnist5k_at_32():
    d = load_dataset(DataConfig(name="mnist5k", image_size=32))
    assert d.train.shape[1:] == (1, 32, 32)


@pytest.mark.parametrize("target", [GMM8(), Rings()])
def test_toy_densities_normalise(target):
    ext = 6.0
    lin = torch.linspace(-ext, ext, 800, dtype=torch.float64)  # even: the grid avoids the 1/r point at 0
    gx, gy = torch.meshgrid(lin, lin, indexing="ij")
    p = target.log_density(torch.stack([gx.flatten(), gy.flatten()], 1)).exp()
    cell = (lin[1] - lin[0]) ** 2
    assert float(p.sum() * cell) == pytest.approx(1.0, abs=2e-3)


def test_toy_samples_match_density():
    g = torch.Generator().manual_seed(0)
    x = GMM8().sample(20000, g)
    # nearest-mean sd along each axis is 0.15
    m = GMM8().means.float()
    k = torch.cdist(x, m).argmin(1)
    assert float((x - m[k]).std()) == pytest.approx(0.15, rel=0.03)
    r = Rings().sample(20000, g).norm(dim=1)
    assert float((r - r.round()).std()) == pytest.approx(0.15, rel=0.03)


def _write_idx(path, arr, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for s in arr.shape:
            f.write(struct.pack(">I", s))
        f.write(arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_digit_formats(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 0x803)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), 0x801)
    d = load_dataset(DataConfig(name=name, root=str(tmp_path), download=False, image_size=32))
    assert d.train.shape == (12, 1, 32, 32) and d.heldout.shape == (5, 1, 32, 32)
    assert d.train.min() >= -1 and d.train.max() <= 1
    d28 = load_dataset(DataConfig(name=name, root=str(tmp_path), download=False))
    img = np.fromfile(raw / "train-images-idx3-ubyte", dtype=np.uint8, offset=16)[:784].reshape(28, 28)
    assert torch.allclose(d28.train[0, 0], torch.from_numpy(img).float() / 127.5 - 1)


def test_torchvision_cifar_format(tmp_path, monkeypatch):
    import torchvision

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8),
                         "labels": rng.integers(0, 10, 4).tolist()}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    # torchvision checks the official files' md5 sums; ours are stand-ins with the same layout
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    d = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False, image_size=32))
    assert d.train.shape == (20, 3, 32, 32) and d.heldout.shape == (4, 3, 32, 32)
    with open(base / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0].reshape(3, 32, 32)
    assert torch.allclose(d.train[0], torch.from_numpy(first).float() / 127.5 - 1)


def test_missing_files_give_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST.*mnist5k"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path / "nowhere"), download=False))
