"""Every figure ebmlab draws. Notebooks, the CLI and sweeps call these; nothing is plotted twice.

Functions return a matplotlib Figure (and save it when given ``path``). Matplotlib runs headless
(Agg) unless a notebook backend is already active.
"""

from .diagnostics import plot_anatomy_diagnostics, plot_long_run
from .explore import plot_explorer
from .samples import image_grid, plot_chain_snapshots, plot_samples, plot_toy_density, save_image_grid
from .studies import (
    plot_metric_bars,
    plot_quality_curves,
    plot_quality_vs_steps,
    plot_sample_panels,
    plot_training_comparison,
)
from .sweeps import plot_sweep_summary
from .traces import plot_chain_traces, plot_training_curves

__all__ = [
    "plot_anatomy_diagnostics",
    "plot_long_run",
    "plot_metric_bars",
    "plot_quality_curves",
    "plot_quality_vs_steps",
    "plot_sample_panels",
    "plot_training_comparison",
    "plot_sweep_summary",
    "image_grid",
    "plot_chain_snapshots",
    "plot_chain_traces",
    "plot_explorer",
    "plot_samples",
    "plot_toy_density",
    "plot_training_curves",
    "save_image_grid",
]
