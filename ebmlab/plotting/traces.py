"""Training curves and per-step chain traces."""

from __future__ import annotations

import numpy as np

from ._common import finish, plt


def _series(records: list[dict], key: str):
    it = [r["iteration"] for r in records if r.get(key) is not None]
    v = [float(r[key]) for r in records if r.get(key) is not None]
    return np.asarray(it), np.asarray(v)


def plot_training_curves(records: list[dict], path=None, keys=("d", "r", "e_pos", "e_neg"), title=None,
                         axes=None, label=None):
    """metrics.jsonl records -> one panel per key against iterations.

    d: energy difference mean E(data) − mean E(samples) (ebm-anatomy's d_{s_t}); r: mean ‖∇E‖ along the
    chains (r_{s_t}); e_pos/e_neg: mean energy of data and samples. Pass ``axes`` to overlay runs.
    """
    keys = [k for k in keys if any(k in r for r in records)] or list(keys)
    own = axes is None
    if own:
        fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3), squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    names = {"d": "energy difference d", "r": "grad norm r", "e_pos": "E(data)", "e_neg": "E(samples)"}
    for ax, k in zip(axes, keys):
        it, v = _series(records, k)
        ax.plot(it, v, lw=1, label=label)
        ax.set_title(names.get(k, k))
        ax.set_xlabel("iteration")
        if k == "d":
            ax.axhline(0, color="k", lw=0.5)
    if label is not None:
        axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return finish(fig, path) if own else fig


def plot_chain_traces(results: dict, path=None, title=None):
    """{label: ChainResult} -> mean energy and mean gradient norm against MCMC step."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for label, res in results.items():
        steps = res.steps.cpu().numpy()
        axes[0].plot(steps, res.energy.float().mean(1).cpu().numpy(), lw=1, label=label)
        axes[1].plot(steps, res.grad_norm.float().mean(1).cpu().numpy(), lw=1, label=label)
    axes[0].set_title("mean energy along the chain")
    axes[1].set_title("mean ‖∇E‖ along the chain")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("MCMC step")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return finish(fig, path)
