"""ebmlab: train and study MCMC-trained energy-based models.

Energy networks map x to E(x) with density ∝ exp(−E) (see :mod:`ebmlab.nets`); samplers are small
kernels run by one chain loop (:mod:`ebmlab.samplers`); :func:`ebmlab.train.train` writes one run folder
per run (:mod:`ebmlab.rundir`).
"""

__version__ = "0.1.0"
