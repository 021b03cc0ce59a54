"""Sweep summaries: one metric over the swept parameters, with failed and diverged runs marked."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np

from ._common import finish, plt

MARKED = ("failed", "diverged")  # runs with no trustworthy value: hatched and labelled, never coloured


def _key(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _label(v) -> str:
    if isinstance(v, str) and v[:1] in "{[":  # a dict/list parameter as results.csv stores it (JSON)
        try:
            v = json.loads(v)
        except ValueError:
            return v
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):  # e.g. an `overrides` axis: one short "key=value" line per entry
        if not v:
            return "(none)"
        lines = [f"{str(k).rsplit('.', 1)[-1]}={_label(x)}" for k, x in v.items()]
        return "\n".join(lines if len(lines) <= 4 else [*lines[:3], f"+{len(lines) - 3} more"])
    if isinstance(v, list):
        s = json.dumps(v, separators=(",", ":"))
        return s if len(s) <= 24 else s[:23] + "…"
    return str(v)


def _num(v) -> float:
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _levels(rows, axis):
    """Distinct values of `axis` in order of first appearance (rows come in grid order)."""
    seen = {}
    for r in rows:
        seen.setdefault(_key(r.get(axis)), r.get(axis))
    return list(seen.values())


def _summarise(cell_rows, metric):
    """(value, label, marked) of one cell: the mean metric of its completed runs, and what went wrong."""
    n = len(cell_rows)
    if n == 0:
        return math.nan, "", False
    done = [_num(r.get(metric)) for r in cell_rows if r.get("status") == "completed"] if metric else []
    done = [v for v in done if math.isfinite(v)]
    value = float(np.mean(done)) if done else math.nan
    bad = [r["status"] for r in cell_rows if r.get("status") in MARKED]
    if n == 1:
        status = cell_rows[0].get("status")
        if status != "completed":
            return math.nan, str(status), bool(bad)
        return value, (f"{value:.3g}" if math.isfinite(value) else "completed" if metric is None else "no value"), False
    text = f"{value:.3g}" if math.isfinite(value) else "–"
    for group in (bad, [r["status"] for r in cell_rows if r.get("status") in ("pending", "running")]):
        if group:
            text += f"\n{len(group)}/{n} {'/'.join(sorted(set(group)))}"
    return value, text, bool(bad)


def _heatmap(ax, rows, ya, xa, metric, norm, cmap):
    ys, xs = _levels(rows, ya), _levels(rows, xa)
    grid = np.full((len(ys), len(xs)), np.nan)
    for (i, y), (j, x) in itertools.product(enumerate(ys), enumerate(xs)):
        cell = [r for r in rows if _key(r.get(ya)) == _key(y) and _key(r.get(xa)) == _key(x)]
        value, text, marked = _summarise(cell, metric)
        grid[i, j] = value
        if marked:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="tab:red",
                                       linewidth=0))
        dark = math.isfinite(value) and norm(value) < 0.55  # viridis is dark at its low end
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="tab:red" if marked else ("white" if dark else "black"),
                fontweight="bold" if marked else "normal",
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1.5) if marked else None)
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(xs)), [_label(v) for v in xs])
    ax.set_yticks(range(len(ys)), [_label(v) for v in ys])
    ax.set_xlabel(xa)
    ax.set_ylabel(ya)
    return im


def _bars(ax, rows, xa, metric):
    xs = _levels(rows, xa) if xa else [None]
    for j, x in enumerate(xs):
        cell = [r for r in rows if xa is None or _key(r.get(xa)) == _key(x)]
        value, text, marked = _summarise(cell, metric)
        if math.isfinite(value):
            ax.bar(j, value, color="tab:blue", hatch="xx" if marked else None, edgecolor="tab:red" if marked else None)
            ax.annotate(text, (j, value), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points", color="tab:red" if marked else "black")
        else:
            if marked:
                ax.plot([j], [0], marker="X", color="tab:red", markersize=12, linestyle="none", clip_on=False)
            ax.annotate(text, (j, 0), ha="center", va="bottom", fontsize=8, xytext=(0, 8), textcoords="offset points",
                        color="tab:red" if marked else "gray", fontweight="bold" if marked else "normal")
    labels = [_label(v) for v in xs] if xa else ["(single run)"]
    longest = max(len(line) for lab in labels for line in lab.split("\n"))
    # long labels (dict-valued axes such as `overrides`) shrink so that neighbours do not overlap
    ax.set_xticks(range(len(xs)), labels, fontsize=7 if longest * len(xs) > 90 else None)
    ax.axhline(0, color="black", linewidth=0.6)
    if xa:
        ax.set_xlabel(xa)
    ax.set_ylabel(metric or "")
    if metric is None:
        ax.set_yticks([])


def plot_sweep_summary(rows: list[dict], axes: list[str], metric: str | None = None, path=None,
                       title: str | None = None, max_facets: int = 12):
    """A metric over a sweep's swept parameters; failed and diverged runs hatched/crossed and labelled.

    rows: one dict per run (``ebmlab.sweep.gather``): the parameter values, ``status``
    (completed | failed | diverged | pending | running) and the `metric` column. Only completed runs give
    values; ``metric=None`` draws the status of every cell only.

    - 0 or 1 axis: a bar per value (one bar for a single run); failed/diverged values are a red X at 0.
    - 2 axes: a heatmap, rows ``axes[0]``, columns ``axes[1]``, each cell labelled with its value or status.
    - more axes: one heatmap per combination of ``axes[2:]`` (facets sharing one colour scale); beyond
      `max_facets` combinations, a single heatmap of the mean over ``axes[2:]`` whose cells say how many
      of their runs failed or diverged.
    """
    axes = list(axes)
    what = metric or "status"
    note = "hatched/X: failed or diverged"
    if len(axes) <= 1:
        fig, ax = plt.subplots(figsize=(max(3.5, 0.9 * len(_levels(rows, axes[0])) + 1.5) if axes else 3.5, 3.2))
        _bars(ax, rows, axes[0] if axes else None, metric)
        fig.suptitle(f"{title + ': ' if title else ''}{what}\n{note}", fontsize=10)
        return finish(fig, path)

    values = [_num(r.get(metric)) for r in rows if r.get("status") == "completed"] if metric else []
    values = [v for v in values if math.isfinite(v)] or [0.0, 1.0]
    lo, hi = min(values), max(values)
    norm = plt.Normalize(lo, hi if hi > lo else lo + 1)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee")  # no value: pending, running, failed, diverged

    rest = axes[2:]
    facets = [()]
    if rest:
        facets = list(dict.fromkeys(tuple(_key(r.get(a)) for a in rest) for r in rows))
        if len(facets) > max_facets:
            facets, note = [()], f"mean over {', '.join(rest)}; {note}"
    ny, nx = len(_levels(rows, axes[0])), len(_levels(rows, axes[1]))
    ncol = min(4, len(facets))
    nrow = math.ceil(len(facets) / ncol)
    # An extra narrow column holds the colour bar: tight_layout (in finish) lays out plain axes only.
    fig, axs = plt.subplots(nrow, ncol + 1, figsize=(ncol * (1.0 * nx + 2.2) + 1, nrow * (0.55 * ny + 1.6) + 0.6),
                            squeeze=False, gridspec_kw={"width_ratios": [1] * ncol + [0.06]})
    im = None
    for ax, facet in itertools.zip_longest(axs[:, :ncol].flat, facets):
        if facet is None:
            ax.set_visible(False)
            continue
        sub = [r for r in rows if not facet or tuple(_key(r.get(a)) for a in rest) == facet]
        im = _heatmap(ax, sub, axes[0], axes[1], metric, norm, cmap)
        if facet:
            ax.set_title(", ".join(f"{a}={_label(json.loads(k))}" for a, k in zip(rest, facet)), fontsize=9)
    for i, cax in enumerate(axs[:, -1]):
        if metric and i == 0:
            fig.colorbar(im, cax=cax, label=metric)
        else:
            cax.set_visible(False)
    fig.suptitle(f"{title + ': ' if title else ''}{what} over {axes[0]} × {axes[1]}\n{note}", fontsize=10)
    return finish(fig, path)


__all__ = ["plot_sweep_summary"]
