"""Distances between a toy 2D target and a model: grid KL and sample MMD."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def grid_density(energy_fn, extent: float, res: int = 200, chunk: int = 20000):
    """exp(−E)/Z on a res x res grid over [−extent, extent]² (Z by the grid sum).

    Returns (p [res, res] summing to 1 over the grid, cell area). ``energy_fn`` takes [N, 2] -> [N].
    """
    dev, dt = _device_dtype(energy_fn)
    lin = torch.linspace(-extent, extent, res, device=dev, dtype=dt)
    gx, gy = torch.meshgrid(lin, lin, indexing="ij")
    pts = torch.stack([gx.flatten(), gy.flatten()], 1)
    e = torch.cat([energy_fn(pts[i:i + chunk]).double() for i in range(0, pts.shape[0], chunk)])
    logp = -e - torch.logsumexp(-e, 0)
    return logp.exp().view(res, res), (2 * extent / (res - 1)) ** 2


def _device_dtype(energy_fn):
    params = list(energy_fn.parameters()) if hasattr(energy_fn, "parameters") else []
    if params:
        return params[0].device, params[0].dtype
    return torch.device("cpu"), torch.float32


@torch.no_grad()
def toy_kl(target, energy_fn, extent: float | None = None, res: int = 200) -> float:
    """KL(p_true ‖ p_model) on a grid, both densities normalised over the grid's cells.

    ~0 for the true energy, large for a flat one. ``extent`` defaults to the target's plotting range.
    """
    extent = target.extent if extent is None else extent
    p_model, _ = grid_density(energy_fn, extent, res)
    lin = torch.linspace(-extent, extent, res, dtype=torch.float64)
    gx, gy = torch.meshgrid(lin, lin, indexing="ij")
    logp_true = target.log_density(torch.stack([gx.flatten(), gy.flatten()], 1))
    logp_true = logp_true - torch.logsumexp(logp_true, 0)
    logq = torch.log(p_model.flatten().cpu().clamp_min(1e-300))
    return float((logp_true.exp() * (logp_true - logq)).sum())


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.1, 0.2, 0.5, 1.0, 2.0)) -> float:
    """Unbiased squared MMD between samples x [N, d] and y [M, d] with a sum of Gaussian kernels."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("mmd needs at least two samples on each side")

    def k(a, b):
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def toy_metrics(target, energy_fn, samples: torch.Tensor, n_ref: int = 2000, seed: int = 0) -> dict:
    """KL of the grid density and MMD of `samples` against fresh target samples."""
    g = torch.Generator().manual_seed(seed)
    ref = target.sample(min(n_ref, max(2, samples.shape[0])), g)
    s = samples.detach().cpu()[:n_ref]
    out = {"toy_kl": toy_kl(target, energy_fn), "toy_mmd": mmd(s, ref)}
    if not math.isfinite(out["toy_mmd"]):
        out["toy_mmd"] = float("nan")
    return out
