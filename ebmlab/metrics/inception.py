"""FID, KID and Inception Score with Inception-v3 features (CIFAR-10, MNIST, any image dataset).

The network is torch-fidelity's ``FeatureExtractorInceptionV3``: the TensorFlow FID Inception graph ported
to PyTorch with the original 2015-12-05 weights and TensorFlow-1.x-compatible resizing, so its numbers agree
with the reference TF implementation (Heusel et al. 2017) and with torchmetrics, which wraps the same
extractor. ebmlab computes the distances itself (:mod:`.frechet`) so real-data statistics can be cached and
any stand-in feature extractor can be plugged in.

Weights: torch-fidelity's release file (``INCEPTION_URL``, about 92 MB) is fetched on first use where the
network allows (Colab) into torch.hub's cache. Elsewhere download it on a machine with network and give its
path as ``weights=...`` or in the ``EBMLAB_INCEPTION_WEIGHTS`` environment variable. Without weights every
entry point raises :class:`InceptionUnavailableError`, which names the offline alternative for digits,
:func:`ebmlab.metrics.digits.digit_metrics` (LeNet features, shipped with the package).

Images: Tensor[N, C, H, W] in [-1, 1] with C = 1 or 3. Grayscale is repeated to 3 channels; values are
clamped and quantised to uint8 as a saved PNG would be; the extractor resizes to 299x299 itself.

Real-data statistics (mean, covariance and the features themselves, which KID needs) are computed once per
(dataset, split, n, image size, extractor) and cached in
``$EBMLAB_CACHE_DIR/fid_stats`` (default ``~/.cache/ebmlab/fid_stats``) as
``<dataset>_<split>_<n>_<size>px_<extractor>.pt``, loadable with ``torch.load(weights_only=True)``.

FID and KID depend on the number of samples: compare runs at the same N (10,000 is the usual convention for
CIFAR-10 test-split statistics; fewer samples give a larger FID).

A stand-in extractor is any callable ``images [N, 3, H, W] float in [-1, 1] -> features [N, D]`` or
``-> (features [N, D], logits [N, K])``; the Inception Score needs the logits and is left out without them.
Give it a ``name`` attribute so its cached statistics get their own files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from .frechet import feature_stats, frechet_distance, inception_score, kernel_distance

WEIGHTS_ENV = "EBMLAB_INCEPTION_WEIGHTS"
CACHE_ENV = "EBMLAB_CACHE_DIR"
# torch-fidelity's release of the TF FID Inception weights (same file torchmetrics downloads)
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
STATS_VERSION = 1  # bump when the cached file's content or meaning changes
_BATCH = 100  # images per Inception forward pass (299x299 activations: ~1.5 GB at 100 on a GPU)

Extractor = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


class InceptionUnavailableError(RuntimeError):
    """Inception-v3 features cannot be computed here (no weights, no network, or torch-fidelity missing)."""


def _unavailable(why: str) -> InceptionUnavailableError:
    return InceptionUnavailableError(
        f"Inception-v3 features are unavailable: {why}. Download {INCEPTION_URL} on a machine with network "
        f"and pass its path as weights=... or set {WEIGHTS_ENV}=/path/to/file. For digits (mnist5k, MNIST) "
        f"use the offline metrics instead: ebmlab.metrics.digits.digit_metrics (LeNet features: lenet_fid, "
        f"classifier_is, mode_coverage, confident_frac), which need no download.")


def inception_weights_path(weights: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Where the Inception weights are: ``weights``, else ``$EBMLAB_INCEPTION_WEIGHTS``, else torch.hub's
    cache, downloading into it when ``download`` and the network allow. Raises InceptionUnavailableError.
    """
    given = weights if weights is not None else os.environ.get(WEIGHTS_ENV) or None
    if given is not None:
        p = Path(given).expanduser()
        if not p.is_file():
            src = "weights=" if weights is not None else f"{WEIGHTS_ENV}="
            raise _unavailable(f"{src}{given} is not a file")
        return p
    p = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]
    if p.is_file():
        return p
    if not download:
        raise _unavailable(f"no weights given and none cached at {p} (download=False)")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, str(p), progress=False)
    except Exception as e:  # no network, blocked host, disk full: all mean "not here"
        raise _unavailable(f"downloading the weights failed ({type(e).__name__}: {e})") from e
    return p


class InceptionExtractor:
    """torch-fidelity's Inception-v3 as an extractor: images [N, 3, H, W] in [-1, 1] ->
    (pool features [N, 2048], unbiased logits [N, 1008]), both float32 on the images' device.

    The network follows its input's device (moved on first use there).
    """

    name = "inception2048"

    def __init__(self, weights: str | os.PathLike | None = None):
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as e:
            raise _unavailable("the torch-fidelity package is not installed (pip install torch-fidelity)") from e
        path = inception_weights_path(weights)
        # torch-fidelity unpickles the file with weights_only=False; a weights_only load first guarantees
        # the file holds only tensors, so loading it can run no code.
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise _unavailable(f"{path} is not a plain state_dict of tensors ({type(e).__name__}: {e})") from e
        try:
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                   feature_extractor_weights_path=str(path))
        except Exception as e:  # wrong file: missing or mis-shaped keys
            raise _unavailable(f"{path} does not hold the Inception weights ({type(e).__name__}: {e})") from e
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if next(self.net.parameters()).device != x.device:
            self.net.to(x.device)
        u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        feats, logits = self.net(u8)
        return feats, logits


_EXTRACTORS: dict[str, InceptionExtractor] = {}


def get_inception(weights: str | os.PathLike | None = None) -> InceptionExtractor:
    """The Inception extractor for these weights, built once and cached (see :func:`inception_weights_path`)."""
    key = str(inception_weights_path(weights).resolve())
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = InceptionExtractor(key)
    return _EXTRACTORS[key]


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Images [N, 1 or 3, H, W] -> float [N, 3, H, W] in [-1, 1] (gray repeated; NaN/inf made finite)."""
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"images must be a Tensor[N, 1 or 3, H, W] with N >= 1, got {getattr(x, 'shape', x)}")
    x = x.detach()
    x = x.float() if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16) else x
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


@torch.no_grad()
def extract_features(images: torch.Tensor, extractor: Extractor,
                     batch_size: int = _BATCH) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``extractor`` over images [N, C, H, W] in batches on the images' device.

    Returns (features [N, D] float64, logits [N, K] float64 or None), on the CPU: statistics are
    computed in float64 and accumulating 50,000 x 2048 features on a GPU would waste its memory.
    """
    feats, logits = [], []
    for chunk in images.split(batch_size):
        out = extractor(to_rgb(chunk))
        f, lg = out if isinstance(out, (tuple, list)) else (out, None)
        if not torch.is_tensor(f) or f.ndim != 2 or f.shape[0] != chunk.shape[0]:
            raise ValueError(f"the feature extractor must return features [N, D] for N={chunk.shape[0]} images, "
                             f"got {getattr(f, 'shape', type(f).__name__)}")
        feats.append(f.double().cpu())
        if lg is not None:
            logits.append(lg.double().cpu())
    return torch.cat(feats), (torch.cat(logits) if logits else None)


def _extractor_tag(extractor: Extractor) -> str:
    name = getattr(extractor, "name", None) or getattr(extractor, "__qualname__", type(extractor).__qualname__)
    return re.sub(r"[^A-Za-z0-9.-]+", "-", str(name)).strip("-") or "extractor"


def stats_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$EBMLAB_CACHE_DIR/fid_stats``, else ``~/.cache/ebmlab/fid_stats``."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ebmlab") / "fid_stats"


def _load_real_images(dataset: str, split: str, image_size: int, root: str) -> torch.Tensor:
    from ..config import DataConfig
    from ..data import load_dataset

    ds = load_dataset(DataConfig(name=dataset, root=root, image_size=image_size))
    if ds.is_toy:
        raise ValueError(f"Inception metrics need an image dataset, not the toy target '{dataset}'")
    return ds.train if split == "train" else ds.heldout


def real_stats(dataset: str, split: str = "heldout", n: int | None = None, *, image_size: int | None = None,
               images: torch.Tensor | None = None, extractor: Extractor | None = None,
               weights: str | os.PathLike | None = None, device: torch.device | str = "cpu",
               root: str = "data", cache_dir: str | os.PathLike | None = None, seed: int = 0,
               overwrite: bool = False) -> dict:
    """Feature statistics of real data, computed once and cached on disk.

    dataset, split ("train" or "heldout"): which real images (loaded with :func:`ebmlab.data.load_dataset`
    at ``image_size``, default 32 for CIFAR-10 and 28 otherwise), or ``images`` [M, C, H, W] in [-1, 1]
    given directly (then ``dataset`` only names the cache file). n: a fixed-seed random subset of that many
    images (None = all). extractor: None = Inception-v3 (``weights`` as in :func:`inception_weights_path`).
    device: where features are computed.
    Returns {"mu": [D] float64, "sigma": [D, D] float64, "features": [n, D] float32, "n", "dataset",
    "split", "image_size", "extractor", "version"}.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got '{split}'")
    if images is not None:
        image_size = images.shape[-1]
    image_size = image_size or (32 if dataset == "cifar10" else 28)
    # resolve the extractor before any loading, so a missing download fails fast
    extractor = get_inception(weights) if extractor is None else extractor
    tag = _extractor_tag(extractor)
    if images is None:
        if n is None:  # the split's size is only known after loading; load once and name the file by it
            images = _load_real_images(dataset, split, image_size, root)
        else:
            path = stats_cache_dir(cache_dir) / f"{dataset}_{split}_{n}_{image_size}px_{tag}.pt"
            cached = _read_stats(path) if not overwrite else None
            if cached is not None:
                return cached
            images = _load_real_images(dataset, split, image_size, root)
    total = images.shape[0]
    n = total if n is None else n
    if not 2 <= n <= total:
        raise ValueError(f"n must be in 2..{total} (the {dataset} {split} split's size), got {n}")
    path = stats_cache_dir(cache_dir) / f"{dataset}_{split}_{n}_{image_size}px_{tag}.pt"
    if not overwrite and (cached := _read_stats(path)) is not None:
        return cached
    if n < total:
        images = images[torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]]
    feats, _ = extract_features(images.to(device), extractor)
    mu, sigma = feature_stats(feats)
    stats = {"mu": mu, "sigma": sigma, "features": feats.float(), "n": n, "dataset": dataset, "split": split,
             "image_size": int(image_size), "extractor": tag, "version": STATS_VERSION}
    from ..rundir import save_checkpoint  # atomic: an interrupted run never leaves a truncated cache file

    save_checkpoint(path, stats)
    return stats


def _read_stats(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        stats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable or foreign file: recompute and replace it
        return None
    return stats if isinstance(stats, dict) and stats.get("version") == STATS_VERSION else None


def inception_metrics(samples: torch.Tensor, dataset: str = "cifar10", split: str = "heldout",
                      n_real: int | None = None, *, reference: dict | None = None,
                      extractor: Extractor | None = None, weights: str | os.PathLike | None = None,
                      kid: bool = True, kid_subsets: int = 100, kid_subset_size: int = 1000,
                      is_splits: int = 10, root: str = "data",
                      cache_dir: str | os.PathLike | None = None) -> dict:
    """FID, KID and Inception Score of samples [N, C, H, W] in [-1, 1] against a real dataset.

    Real statistics come from :func:`real_stats` (``dataset``, ``split``, ``n_real``, at the samples'
    resolution, cached) unless ``reference`` (a :func:`real_stats` dict) is given. Features are computed on
    the samples' device. extractor: None = Inception-v3; a stand-in as described in the module docstring.
    Returns {"inception_fid", "inception_kid", "inception_kid_std", "inception_is", "inception_is_std",
    "inception_n"}; the KID keys are left out with ``kid=False``, the IS keys when the extractor gives no
    logits.
    """
    if not torch.is_tensor(samples) or samples.ndim != 4 or samples.shape[0] < 2:
        raise ValueError(f"samples must be a Tensor[N, C, H, W] with N >= 2, got {getattr(samples, 'shape', samples)}")
    extractor = get_inception(weights) if extractor is None else extractor
    if reference is None:
        reference = real_stats(dataset, split, n_real, image_size=samples.shape[-1], extractor=extractor,
                               device=samples.device, root=root, cache_dir=cache_dir)
    feats, logits = extract_features(samples, extractor)
    if feats.shape[1] != reference["mu"].shape[0]:
        raise ValueError(f"sample features have D={feats.shape[1]} but the reference has "
                         f"D={reference['mu'].shape[0]}: were they made by different extractors?")
    mu, sigma = feature_stats(feats)
    out = {"inception_fid": frechet_distance(mu, sigma, reference["mu"], reference["sigma"]),
           "inception_n": int(samples.shape[0])}
    if kid:  # 100 subsets of 1000 x 2048 kernels in float64: seconds on a GPU, a minute on a CPU
        dev = samples.device
        out["inception_kid"], out["inception_kid_std"] = kernel_distance(
            feats.to(dev), reference["features"].to(dev), subsets=kid_subsets, subset_size=kid_subset_size)
    if logits is not None:
        out["inception_is"], out["inception_is_std"] = inception_score(
            logits.softmax(1), splits=min(is_splits, feats.shape[0]))
    return out
