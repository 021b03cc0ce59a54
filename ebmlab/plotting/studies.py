"""Cross-run figures of a study: several runs or samplers side by side (numbers from :mod:`ebmlab.studies`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ._common import finish, plt
from .samples import plot_samples
from .traces import plot_training_curves

_LOWER_IS_BETTER = ("fid", "kl", "mmd", "kid")


def _log_scale(metric: str) -> bool:
    return any(tag in metric.lower() for tag in _LOWER_IS_BETTER)


def _mark_divergence(ax, at, color, label=None):
    ax.axvline(at, color=color, ls=":", lw=1.2)
    ax.annotate(f"{label + ' ' if label else ''}diverged @ {at}", (at, 0.98), xycoords=("data", "axes fraction"),
                rotation=90, ha="right", va="top", fontsize=7, color=color)


def plot_quality_curves(curves: dict[str, list[dict]], metric: str, path=None, diverged: dict | None = None,
                        threshold: float | None = None, title: str | None = None, log_y: bool | None = None):
    """A quality metric of several runs against training iterations and against training wall time.

    curves: {label: metrics.jsonl records}; the evaluation records (``"eval": true``, with ``iteration``,
    ``wall`` and ``metric``) are drawn. diverged: {label: iteration or None}: a dotted vertical line where
    a run diverged. threshold: a horizontal dashed line (e.g. the quality threshold of time_to_quality).
    ``log_y`` defaults to True for distances (FID, KL, MMD), whose early values dwarf the late ones.
    """
    diverged = diverged or {}
    log_y = _log_scale(metric) if log_y is None else log_y
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (label, recs) in enumerate(curves.items()):
        color = f"C{i % 10}"
        pts = [r for r in recs if r.get("eval") and r.get(metric) is not None]
        it = np.array([r["iteration"] for r in pts], dtype=float)
        wall = np.array([r.get("wall", np.nan) for r in pts], dtype=float)
        v = np.array([float(r[metric]) for r in pts], dtype=float)
        for ax, x in zip(axes, (it, wall)):
            ax.plot(x, v, marker="o", ms=3, lw=1.2, color=color, label=label)
        at = diverged.get(label)
        if at is not None:
            _mark_divergence(axes[0], at, color)
            if len(pts):  # an X on the last value seen before the divergence
                for ax, x in zip(axes, (it, wall)):
                    ax.plot(x[-1:], v[-1:], marker="X", ms=9, color="tab:red", ls="none")
    for ax, xl in zip(axes, ("iteration", "training wall time (s)")):
        ax.set_xlabel(xl)
        ax.set_ylabel(metric)
        if log_y:
            ax.set_yscale("log")
        if threshold is not None:
            ax.axhline(threshold, color="k", ls="--", lw=0.8)
    handles = axes[0].get_legend_handles_labels()[0]
    if handles:
        axes[0].legend(fontsize=7)
    axes[0].set_title(f"{metric} against iterations")
    axes[1].set_title(f"{metric} against wall time")
    if title:
        fig.suptitle(title)
    return finish(fig, path)


def plot_training_comparison(curves: dict[str, list[dict]], path=None, keys=("d", "r", "e_pos", "e_neg"),
                             diverged: dict | None = None, title: str | None = None, symlog_energy: bool = True,
                             symlog_above: float = 1e3):
    """Training curves of several runs overlaid (:func:`plot_training_curves` per run, one panel per key).

    Energies of a run on its way to divergence grow by orders of magnitude, so a panel of ``d``, ``e_pos`` or
    ``e_neg`` whose values exceed ``symlog_above`` in magnitude gets a symmetric-log axis (when
    ``symlog_energy``); r (a norm) is always on a log axis. diverged: {label: iteration or None} marks where
    runs stopped.
    """
    diverged = diverged or {}
    keys = list(keys)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    axes = axes[0]
    for i, (label, recs) in enumerate(curves.items()):
        train = [r for r in recs if not r.get("eval")]
        # the colour cycle gives run i the colour C{i} on every panel (reference lines use explicit colours)
        plot_training_curves(train, keys=keys, axes=axes, label=label)
        if diverged.get(label) is not None:
            for ax in axes:
                ax.axvline(diverged[label], color=f"C{i % 10}", ls=":", lw=1.2)
    for ax, k in zip(axes, keys):
        big = max((abs(float(r[k])) for recs in curves.values() for r in recs
                   if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])), default=0.0)
        if symlog_energy and k in ("d", "e_pos", "e_neg") and big > symlog_above:
            ax.set_yscale("symlog", linthresh=1.0)
        if k == "r":
            ax.set_yscale("log")
    if any(v is not None for v in diverged.values()):
        axes[-1].annotate("dotted: diverged", (0.99, 0.02), xycoords="axes fraction", ha="right", fontsize=7)
    if title:
        fig.suptitle(title)
    return finish(fig, path)


def plot_sample_panels(panels: dict[str, torch.Tensor], path=None, n: int = 36, ncols: int | None = None,
                       title: str | None = None, extent: float | None = None, panel_size: float = 2.6):
    """Samples side by side, one titled panel per entry of {label: Tensor[N, C, H, W] or [N, 2]}.

    Images show their first ``n``; toy points share one ``extent`` (default: the largest |x| of all panels)
    so that spread and drift compare across panels. A ``None`` value leaves its panel empty with its label
    (e.g. a run that diverged before producing a model).
    """
    labels = list(panels)
    ncols = ncols or min(len(labels), 5)
    nrows = math.ceil(len(labels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, (panel_size + 0.35) * nrows), squeeze=False)
    toy = [x for x in panels.values() if x is not None and x.dim() == 2]
    if toy and extent is None:
        finite = [x[torch.isfinite(x).all(1)] for x in toy]
        extent = 1.05 * max((float(x.abs().max()) for x in finite if len(x)), default=1.0)
    for ax, label in zip(axes.flat, labels):
        x = panels[label]
        if x is None:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes, color="tab:red")
            ax.set_title(label, fontsize=9)
            ax.axis("off")
            continue
        plot_samples(x if x.dim() == 2 else x[:n], ax=ax, extent=extent)
        ax.set_title(label, fontsize=9)
    for ax in list(axes.flat)[len(labels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return finish(fig, path)


def plot_metric_bars(table: dict[str, dict], metrics: list[str], path=None, title: str | None = None,
                     reference: dict | None = None):
    """One bar chart per metric over the rows of ``table`` ({label: {metric: value}}).

    reference: {metric: value} drawn as a dashed line (e.g. real digits' scores). Missing or non-finite
    values show as "n/a".
    """
    labels = list(table)
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(3.0, 0.55 * len(labels) + 1.2) * len(metrics), 3.4),
                             squeeze=False)
    for ax, m in zip(axes[0], metrics):
        vals = [table[k].get(m) for k in labels]
        v = np.array([float(x) if x is not None else np.nan for x in vals])
        ok = np.isfinite(v)
        ax.bar(np.arange(len(labels))[ok], v[ok], color=[f"C{i % 10}" for i in np.flatnonzero(ok)])
        for j, x in enumerate(v):
            ax.annotate("n/a" if not np.isfinite(x) else f"{x:.3g}", (j, x if np.isfinite(x) else 0),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        if reference and reference.get(m) is not None:
            ax.axhline(reference[m], color="k", ls="--", lw=0.8, label="real data")
            ax.legend(fontsize=7)
        if _log_scale(m) and ok.any() and (v[ok] > 0).all():
            ax.set_yscale("log")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(m, fontsize=10)
    if title:
        fig.suptitle(title)
    return finish(fig, path)


def plot_quality_vs_steps(curves: dict[str, dict], metrics: list[str], path=None, title: str | None = None,
                          reference: dict | None = None):
    """Sample quality against the number of sampler steps, one line per model.

    curves: {label: {step: {metric: value}}} (e.g. :func:`ebmlab.studies.quality_vs_steps`); one panel per
    metric, steps on a symmetric-log axis so step 0 (the chains' starting points) shows. reference:
    {metric: value} as a dashed line (e.g. real digits).
    """
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.3), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for i, (label, by_step) in enumerate(curves.items()):
            st = sorted(by_step)
            ax.plot(st, [by_step[s].get(m, np.nan) for s in st], marker="o", ms=3, color=f"C{i % 10}", label=label)
        if reference and reference.get(m) is not None:
            ax.axhline(reference[m], color="k", ls="--", lw=0.8, label="real data")
        ax.set_xscale("symlog", linthresh=1)
        if _log_scale(m):
            ax.set_yscale("log")
        ax.set_xlabel("sampler steps")
        ax.set_title(m, fontsize=10)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return finish(fig, path)


__all__ = ["plot_metric_bars", "plot_quality_curves", "plot_quality_vs_steps", "plot_sample_panels", "plot_training_comparison"]
