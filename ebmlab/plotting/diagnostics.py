"""ebm-anatomy's learning diagnostic and long-run chain figures (numbers from :mod:`ebmlab.diagnostics`)."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from ..diagnostics import AnatomyDiagnostic, LongRunResult, anatomy_diagnostic
from ._common import finish, plt
from .samples import plot_samples


def plot_anatomy_diagnostics(records, path=None, t_gap_max: int = 2000, max_lag: int = 15, title=None):
    """ebm-anatomy's diagnostic figure (utils.py ``plot_diagnostics``), 2x2.

    records: metrics.jsonl records with ``iteration``, ``d``, ``r`` (or an :class:`AnatomyDiagnostic`).
    Panels: d_{s_t} trace, r_{s_t} trace (the shaded span is the window the correlations use),
    autocorrelations of both at lags 0..max_lag, cross-correlation corr(d_{t+k}, r_t) at lags ±max_lag.
    """
    diag = records if isinstance(records, AnatomyDiagnostic) else anatomy_diagnostic(records, t_gap_max, max_lag)
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.4))
    (ax_d, ax_r), (ax_acf, ax_cc) = axes
    start = diag.window[0]
    for ax, v, name, sym in ((ax_d, diag.d, "energy difference", "$d_{s_t}$"),
                             (ax_r, diag.r, "mean gradient norm", "$r_{s_t}$")):
        ax.plot(diag.iterations, v, lw=0.8)
        ax.axvspan(start, diag.iterations[-1], color="0.9", zorder=0)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.set_ylabel(sym)
    ax_d.axhline(0, color="k", ls="--", lw=0.7)
    w = 0.38
    ax_acf.bar(diag.acf_lags - w / 2, diag.acf_d, w, label="$d_{s_t}$")
    ax_acf.bar(diag.acf_lags + w / 2, diag.acf_r, w, label="$r_{s_t}$")
    ax_acf.set_title(f"autocorrelation (last {diag.window[1]} iterations)")
    ax_acf.legend(fontsize=8)
    ax_cc.bar(diag.cross_lags, diag.cross, 0.8, color="C2")
    ax_cc.set_title("cross-correlation corr($d_{t+k}$, $r_t$)")
    for ax in (ax_acf, ax_cc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axhline(0, color="k", ls="--", lw=0.7)
        ax.set_xlabel("lag k")
        ax.set_ylabel("correlation")
    if title:
        fig.suptitle(title)
    return finish(fig, path)


def _band(ax, steps, trace: torch.Tensor, label, color, log_y=False):
    """Mean over chains with the interquartile band; trace [R, B]."""
    t = trace.double()
    lo, hi = torch.quantile(t, torch.tensor([0.25, 0.75], dtype=t.dtype), dim=1).numpy()
    ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
    ax.plot(steps, t.mean(1).numpy(), color=color, lw=1, label=label)
    if log_y:
        ax.set_yscale("log")


def plot_long_run(result, path=None, n: int = 16, title=None, quality_keys=None):
    """Long-run chains: samples at the log-spaced snapshot steps (one row per run) and, below, the
    energy and gradient-norm traces (mean over chains, interquartile band) against step on a log axis,
    the quality metrics at the snapshots (when ``quality_fn`` was given) and the saturated-pixel fraction
    (images).

    result: a :class:`LongRunResult` or {label: LongRunResult} (e.g. from
    :func:`ebmlab.diagnostics.long_run_from_noise_and_data`) drawn together. ``n`` samples per panel.
    """
    runs = result if isinstance(result, dict) else {result.label or "long run": result}
    runs = {k: v for k, v in runs.items() if isinstance(v, LongRunResult)}
    if not runs:
        raise ValueError("plot_long_run needs a LongRunResult or a dict of them")
    first = next(iter(runs.values()))
    images = next(iter(first.snapshots.values())).dim() >= 3
    has_q = any(r.quality for r in runs.values())
    panels = ["energy", "grad"] + (["quality"] if has_q else []) + (["saturation"] if images else [])
    n_snap = max(len(r.snapshot_steps) for r in runs.values())
    k = len(panels)
    fig = plt.figure(figsize=(max(2.0 * n_snap, 3.3 * k), 2.3 * len(runs) + 3.0))
    # one outer row per run plus one for traces, each split into its own columns: tight_layout then
    # spaces the rows only, which a single grid of n_snap * k columns would make impossible
    outer = fig.add_gridspec(len(runs) + 1, 1, height_ratios=[1.0] * len(runs) + [1.3])
    extent = None
    if not images:  # shared axes, so drift of toy points is visible
        extent = 1.05 * max(float(x.abs().max()) for r in runs.values() for x in r.snapshots.values())
    for row, (label, r) in enumerate(runs.items()):
        cells = outer[row].subgridspec(1, n_snap, wspace=0.1)
        for j, s in enumerate(r.snapshot_steps):
            ax = fig.add_subplot(cells[0, j])
            x = r.snapshots[s]
            plot_samples(x if x.dim() == 2 else x[:n], title=f"{label}: step {s}" if j == 0 else f"step {s}",
                         ax=ax, extent=extent)
    bottom = outer[-1].subgridspec(1, k, wspace=0.3)
    axes = {p: fig.add_subplot(bottom[0, i]) for i, p in enumerate(panels)}
    for i, (label, r) in enumerate(runs.items()):
        color = f"C{i}"
        steps = r.steps.numpy()
        if len(steps):
            _band(axes["energy"], steps, r.energy, label, color)
            _band(axes["grad"], steps, r.grad_norm, label, color, log_y=True)
        if has_q and r.quality:
            keys = quality_keys or list(next(iter(r.quality.values())))
            for j, key in enumerate(keys):
                vals = [r.quality[s].get(key, np.nan) for s in r.snapshot_steps]
                axes["quality"].plot(r.snapshot_steps, vals, marker="o", ms=3, color=color,
                                     ls=["-", "--", ":", "-."][j % 4], label=f"{label}: {key}")
        if images and r.saturation:
            axes["saturation"].plot(r.snapshot_steps, [r.saturation[s] for s in r.snapshot_steps],
                                    marker="o", ms=3, color=color, label=label)
    last_step = max(r.snapshot_steps[-1] for r in runs.values())
    titles = {"energy": "energy E along the chains", "grad": "‖∇E‖ along the chains",
              "quality": "quality at snapshots", "saturation": "fraction of |x| > 0.99"}
    for p, ax in axes.items():
        ax.set_xscale("symlog", linthresh=1)  # log-spaced steps, and step 0 still shows
        ax.set_xlim(0, max(1, last_step))
        ax.set_xlabel("MCMC step")
        ax.set_title(titles[p], fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return finish(fig, path)


__all__ = ["plot_anatomy_diagnostics", "plot_long_run"]
