"""Sampler kernels and the chain loop.

A *kernel* performs one MCMC (or optimisation) transition on a batch of chains::

    state = kernel.init(x, energy_fn)                       # per-chain auxiliary state
    x, state, info = kernel.step(x, state, energy_fn, generator)

``x`` is ``Tensor[B, ...]``; ``energy_fn(x) -> Tensor[B]`` (density ∝ exp(−E)). Kernels never modify
their input in place, never touch network parameter gradients and draw every random number from the
``torch.Generator`` they are given (:mod:`ebmlab.samplers.kernels`).

:func:`run_chain` owns the step count, records info every k steps and returns a :class:`ChainResult`;
:func:`sample` runs a config's sampler on a network (:mod:`ebmlab.samplers.chain`). How the loop runs
(plain, channels_last with buffers, torch.compile, CUDA graphs, bf16) is ``sampler.fast`` /
``sampler.precision`` (:mod:`ebmlab.samplers.fast`).
"""

from .chain import ChainResult, Records, energy_function, run_chain, sample, sampling_mode
from .kernels import (
    MALA,
    SGD,
    SGLD,
    EnergyFn,
    Kernel,
    Langevin,
    ReferenceEnergy,
    energy_and_grad,
    functional_energy_and_grad,
    make_kernel,
)

__all__ = ["Kernel", "Langevin", "SGLD", "SGD", "MALA", "make_kernel", "run_chain", "ChainResult", "sample",
           "sampling_mode", "energy_function", "energy_and_grad", "functional_energy_and_grad", "EnergyFn",
           "ReferenceEnergy", "Records"]
