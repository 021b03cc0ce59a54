"""Sample-quality metrics.

- :mod:`.toy`: grid KL divergence and MMD for the 2D targets.
- :mod:`.digits`: offline digit metrics from a shipped LeNet classifier ("FID (LeNet features)",
  classifier Inception Score, mode coverage, confident fraction).
- :mod:`.frechet`: Fréchet distance, KID and Inception Score from features / class probabilities.
- :mod:`.inception`: FID/KID/IS with Inception-v3 features (torch-fidelity's network; weights download
  where the network exists or come from a local file).
"""

from .digits import confident_frac, digit_metrics, mode_coverage, real_data_baseline, reference_stats
from .frechet import (
    feature_stats,
    frechet_distance,
    frechet_distance_features,
    inception_score,
    kernel_distance,
)
from .inception import InceptionUnavailableError, extract_features, inception_metrics, real_stats
from .toy import grid_density, mmd, toy_kl, toy_metrics

__all__ = [
    "InceptionUnavailableError",
    "confident_frac",
    "digit_metrics",
    "extract_features",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_features",
    "grid_density",
    "inception_metrics",
    "inception_score",
    "kernel_distance",
    "mmd",
    "mode_coverage",
    "real_data_baseline",
    "real_stats",
    "reference_stats",
    "toy_kl",
    "toy_metrics",
]
