"""The Langevin explorer's figure: ebm-anatomy's long-run layout for one chain setting, annotated."""

from __future__ import annotations

from ._common import finish
from .diagnostics import plot_long_run


def plot_explorer(result, path=None, n: int = 16, title: str | None = None):
    """Samples at a few step counts along the chains (top) and the energy, gradient-norm and saturation
    traces (bottom: mean over chains with the interquartile band), from an
    :class:`ebmlab.explore.ExploreResult`.

    The title states the update with its numbers and the temperature it samples at; the energy panel
    gets a dashed line at the mean energy of held-out data when the result carries it, so one sees
    whether the chains end above (not there yet) or below (over-smoothed, saturated) the data.
    """
    s = result.settings
    acc = result.metrics()["acceptance"]
    head = title or (f"{result.description}\n{s['n_chains']} chains from {s['init']}, "
                     f"{s['n_steps']} steps, seed {s['seed']}" + ("" if acc is None else f", acceptance {acc:.2f}"))
    fig = plot_long_run(result.chain, n=n, title=head)
    if result.data_energy is not None:
        # plot_long_run titles its energy panel "energy E along the chains"
        ax = next(a for a in fig.axes if a.get_title().startswith("energy"))
        ax.axhline(result.data_energy, color="k", ls="--", lw=0.8, label="E(held-out data)")
        ax.legend(fontsize=7)
    return finish(fig, path)


__all__ = ["plot_explorer"]
