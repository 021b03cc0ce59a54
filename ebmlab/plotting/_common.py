"""Shared figure plumbing: headless backend, saving."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

if "MPLBACKEND" not in os.environ and not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "ipympl", "widget")):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def finish(fig, path=None, close: bool | None = None):
    """Save `fig` to `path` (if given). Closes it when saved outside a notebook to free memory."""
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        if close is None:
            close = "inline" not in matplotlib.get_backend()
    if close:
        plt.close(fig)
    return fig


__all__ = ["plt", "finish"]
