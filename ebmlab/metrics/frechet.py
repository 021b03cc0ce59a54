"""Feature-space sample-quality statistics: Fréchet distance, KID and Inception Score.

These functions know nothing about which network made the features: :mod:`.inception` feeds them
Inception-v3 features, :mod:`.digits` LeNet features. Everything is computed in float64 on the
features' device, and every function returns Python floats.

- Fréchet distance between N(mu1, S1) and N(mu2, S2) (Heusel et al., *GANs Trained by a Two Time-Scale
  Update Rule Converge to a Local Nash Equilibrium*, NeurIPS 2017):
  ``|mu1 - mu2|² + tr S1 + tr S2 - 2 tr (S1 S2)^{1/2}``.
- Kernel Inception Distance (Bińkowski et al., *Demystifying MMD GANs*, ICLR 2018): the unbiased MMD²
  with the cubic polynomial kernel ``k(x, y) = (xᵀy / D + 1)³``, averaged over random subsets.
- Inception Score (Salimans et al., *Improved Techniques for Training GANs*, NeurIPS 2016):
  ``exp E_x KL(p(y|x) ‖ p(y))``, the mean and std over splits.
"""

from __future__ import annotations

import math

import torch


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of a feature set.

    features: Tensor[N, D] (N >= 2). Returns (mu [D], sigma [D, D]), float64 on the features' device;
    sigma is the unbiased (N - 1) covariance, as in the reference FID code (``np.cov``).
    """
    f = _check_features(features, "features").double()
    if f.shape[0] < 2:
        raise ValueError(f"feature_stats needs at least 2 feature vectors, got {f.shape[0]}")
    mu = f.mean(0)
    c = f - mu
    sigma = c.T @ c / (f.shape[0] - 1)
    return mu, sigma


def _check_features(f: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.is_tensor(f) or f.ndim != 2:
        raise ValueError(f"{name} must be a Tensor[N, D], got {getattr(f, 'shape', type(f))}")
    if not torch.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return f


def _drop_rounding(lam: torch.Tensor) -> torch.Tensor:
    """Eigenvalues [D] of a PSD matrix with those below the eigensolver's noise floor set to 0.

    A symmetric eigensolver returns each eigenvalue to within ~D·eps·max|λ|, so a true zero (rank deficiency,
    the usual case with fewer samples than features) comes back as ±1e-16-ish, and its square root as 1e-8:
    summed over many zero eigenvalues that error would dominate a small distance.
    """
    tol = lam.shape[-1] * torch.finfo(lam.dtype).eps * lam.abs().max()
    return torch.where(lam > tol, lam, torch.zeros_like(lam))


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix [D, D] via its eigen-decomposition."""
    lam, v = torch.linalg.eigh(s)
    return (v * _drop_rounding(lam).sqrt()) @ v.T


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """tr (S1 S2)^{1/2} for PSD S1, S2 [D, D] (float64 scalar tensor).

    S1 S2 is not symmetric, and its general matrix square root (``scipy.linalg.sqrtm``) goes complex or
    inaccurate when a covariance is (near-)singular, the usual case with fewer samples than feature
    dimensions. S1 S2 = S1^{1/2} (S1^{1/2} S2) has the same eigenvalues as M = S1^{1/2} S2 S1^{1/2}, which is
    symmetric PSD, so the trace is the sum of sqrt(eig(M)) from a symmetric eigensolver: no inverse, no
    complex arithmetic, no epsilon added to the diagonal.
    """
    s1, s2 = sigma1.double(), sigma2.double()
    r = _sqrt_psd((s1 + s1.T) / 2)
    m = r @ ((s2 + s2.T) / 2) @ r
    return _drop_rounding(torch.linalg.eigvalsh((m + m.T) / 2)).sqrt().sum()


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet (2-Wasserstein²) distance between N(mu1, sigma1) and N(mu2, sigma2).

    mu1, mu2: Tensor[D]; sigma1, sigma2: Tensor[D, D] PSD (may be singular). Returns a float >= 0
    (clamped: rounding can make a distance between equal Gaussians come out at -1e-13).
    """
    mu1, mu2 = torch.as_tensor(mu1).double(), torch.as_tensor(mu2).double().to(torch.as_tensor(mu1).device)
    sigma1 = torch.as_tensor(sigma1).double().to(mu1.device)
    sigma2 = torch.as_tensor(sigma2).double().to(mu1.device)
    d = mu1.shape[-1]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {tuple(mu1.shape)}, sigma1 {tuple(sigma1.shape)}, "
                         f"mu2 {tuple(mu2.shape)}, sigma2 {tuple(sigma2.shape)}; expected [D] and [D, D]")
    for name, t in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf values")
    dist = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product(sigma1, sigma2)
    return max(float(dist), 0.0)


def frechet_distance_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets f1 [N1, D] and f2 [N2, D]."""
    return frechet_distance(*feature_stats(f1), *feature_stats(f2.to(f1.device)))


def kernel_distance(f1: torch.Tensor, f2: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                    degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
                    seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with a polynomial kernel, mean and std over subsets.

    f1: Tensor[N1, D], f2: Tensor[N2, D]. Each of ``subsets`` rounds draws ``m = min(subset_size, N1, N2)``
    rows from each side without replacement and computes
    ``sum_{i≠j} k(x_i, x_j) / (m(m-1)) + sum_{i≠j} k(y_i, y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i, y_j) / m²``
    with ``k(x, y) = (gamma xᵀy + coef0)^degree``, gamma = 1/D by default (Bińkowski et al. 2018; the
    defaults match torch-fidelity's and torchmetrics'). The subsets come from a generator seeded with
    ``seed``, so the same features give the same numbers. Unbiased: it can be slightly negative.
    """
    f1 = _check_features(f1, "f1").double()
    f2 = _check_features(f2, "f2").double().to(f1.device)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError("kernel_distance needs at least 2 feature vectors on each side")
    gamma = 1.0 / f1.shape[1] if gamma is None else gamma
    g = torch.Generator().manual_seed(seed)  # CPU generator: same subsets on every device
    vals = []
    for _ in range(subsets):
        x = f1[torch.randperm(f1.shape[0], generator=g)[:m].to(f1.device)]
        y = f2[torch.randperm(f2.shape[0], generator=g)[:m].to(f1.device)]
        kxx = (gamma * x @ x.T + coef0) ** degree
        kyy = (gamma * y @ y.T + coef0) ** degree
        kxy = (gamma * x @ y.T + coef0) ** degree
        off = m * (m - 1)
        vals.append((kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off
                    - 2 * kxy.mean())
    v = torch.stack(vals)
    return float(v.mean()), float(v.std(unbiased=False))


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score from class probabilities, mean and std over ``splits`` consecutive chunks.

    probs: Tensor[N, K], rows p(y|x) summing to 1 (softmax of a classifier's logits). For each chunk,
    ``exp(mean_x KL(p(y|x) ‖ mean_x p(y|x)))``. Ranges from 1 (every sample gets the same prediction,
    or every prediction is uniform) to K (confident and evenly spread over the K classes).
    """
    p = _check_features(probs, "probs").double()
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones_like(p[:, 0]), atol=1e-4):
        raise ValueError("probs must be rows of class probabilities (softmax the logits first)")
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in 1..N={n}, got {splits}")
    scores = []
    for chunk in torch.tensor_split(p, splits):
        py = chunk.mean(0, keepdim=True)
        # xlogy: 0 log 0 = 0, so one-hot predictions are fine
        kl = (torch.xlogy(chunk, chunk) - torch.xlogy(chunk, py.expand_as(chunk))).sum(1)
        scores.append(math.exp(float(kl.mean())))
    s = torch.tensor(scores, dtype=torch.float64)
    return float(s.mean()), float(s.std(unbiased=False))
