"""Sample-quality metrics.

- :mod:`.toy`: grid KL divergence and MMD for the 2D targets.
"""

from .toy import grid_density, mmd, toy_kl, toy_metrics

__all__ = ["grid_density", "mmd", "toy_kl", "toy_metrics"]
