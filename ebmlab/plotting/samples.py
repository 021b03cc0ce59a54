"""Sample grids, chain snapshots and toy densities."""

from __future__ import annotations

import math

import numpy as np
import torch

from ._common import finish, plt


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Images [N, C, H, W] in [-1, 1] -> one HxWx3 (or HxW) float array in [0, 1] for imshow."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).div(2)
    n, c, h, w = x.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[i]
    arr = grid.permute(1, 2, 0).numpy()
    return arr[..., 0] if c == 1 else arr


def save_image_grid(x: torch.Tensor, path, nrow: int | None = None) -> None:
    """Write a PNG grid of images [N, C, H, W] in [-1, 1] (no matplotlib figure: fast, exact pixels)."""
    import matplotlib.image as mpimg

    arr = image_grid(x, nrow)
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    mpimg.imsave(str(path), arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1)


def _toy_scatter(ax, x, extent, title=None, color="C0"):
    x = x.detach().float().cpu().numpy()
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4, color=color, linewidths=0)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)


def plot_samples(x: torch.Tensor, title: str | None = None, path=None, nrow: int | None = None,
                 extent: float | None = None, ax=None):
    """Images [N, C, H, W] as a grid, or toy points [N, 2] as a scatter plot."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5, 5))
    else:
        fig = ax.figure
    if x.dim() == 2:
        _toy_scatter(ax, x, extent or float(x.abs().max()) * 1.05, title)
    else:
        arr = image_grid(x, nrow)
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
        if title:
            ax.set_title(title)
    return finish(fig, path) if own else fig


def plot_chain_snapshots(snapshots: dict, path=None, n: int = 16, title: str | None = None, extent=None):
    """Samples after several step counts along one chain: {step: [B, ...]} -> one panel per step."""
    steps = sorted(snapshots)
    fig, axes = plt.subplots(1, len(steps), figsize=(2.6 * len(steps), 2.9), squeeze=False)
    for ax, s in zip(axes[0], steps):
        x = snapshots[s]
        plot_samples(x if x.dim() == 2 else x[:n], title=f"step {s}", ax=ax, extent=extent,
                     nrow=int(math.ceil(math.sqrt(min(n, x.shape[0])))))
    if title:
        fig.suptitle(title)
    return finish(fig, path)


def plot_toy_density(energy_fn, target=None, samples: torch.Tensor | None = None, extent: float = 2.0,
                     res: int = 200, path=None, title: str | None = None):
    """Model density exp(−E)/Z on a grid beside the true density (and samples, if given)."""
    from ..metrics import grid_density

    ncols = 1 + (target is not None) + (samples is not None)
    fig, axes = plt.subplots(1, ncols, figsize=(4 * ncols, 4), squeeze=False)
    axes = list(axes[0])
    p_model, _ = grid_density(energy_fn, extent, res)
    ax = axes.pop(0)
    ax.imshow(p_model.T.cpu().numpy(), origin="lower", extent=(-extent, extent, -extent, extent), cmap="viridis")
    ax.set_title("model exp(-E)/Z")
    if target is not None:
        lin = torch.linspace(-extent, extent, res, dtype=torch.float64)
        gx, gy = torch.meshgrid(lin, lin, indexing="ij")
        p_true = target.log_density(torch.stack([gx.flatten(), gy.flatten()], 1)).exp().view(res, res)
        ax = axes.pop(0)
        ax.imshow(p_true.T.numpy(), origin="lower", extent=(-extent, extent, -extent, extent), cmap="viridis")
        ax.set_title("true density")
    if samples is not None:
        _toy_scatter(axes.pop(0), samples, extent, "samples")
    if title:
        fig.suptitle(title)
    return finish(fig, path)
