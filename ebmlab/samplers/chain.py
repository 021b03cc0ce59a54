"""The chain loop: step counts, per-step records, snapshots, and the choice of fast path.

:func:`run_chain` owns the step count, records info every k steps into preallocated device tensors
(no host synchronisation inside the loop) and returns a :class:`ChainResult`. Training, long-run
evaluation and the widget explorer all go through it (through :func:`sample` when they hold a network).
How the steps run (plain loop, buffers and channels_last, torch.compile, CUDA graphs, bf16) is the
business of :mod:`ebmlab.samplers.fast`; every path computes the same chain.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..config import SamplerConfig
from . import fast as _fast
from .kernels import EnergyFn, Kernel, ReferenceEnergy, make_kernel


@dataclass
class ChainResult:
    """Output of :func:`run_chain`.

    x: final samples [B, ...]. steps: [R] step index of each record (0 = the initial state).
    energy, grad_norm: [R, B] per-chain traces; accept: [R, B] for MALA, else None.
    snapshots: {step: samples [B, ...]} for the requested steps (on the chains' device).
    path: how the loop ran, e.g. ``plain``, ``eager+channels_last``, ``compile``, ``cuda_graph+bf16``.
    """

    x: torch.Tensor
    steps: torch.Tensor
    energy: torch.Tensor
    grad_norm: torch.Tensor
    accept: torch.Tensor | None = None
    snapshots: dict = field(default_factory=dict)
    path: str = "plain"

    def cpu(self) -> ChainResult:
        c = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
        return ChainResult(c(self.x), c(self.steps), c(self.energy), c(self.grad_norm), c(self.accept),
                           {k: c(v) for k, v in self.snapshots.items()}, self.path)

    @property
    def mean_energy(self) -> torch.Tensor:
        return self.energy.mean(1)

    @property
    def mean_grad_norm(self) -> torch.Tensor:
        return self.grad_norm.mean(1)

    @property
    def acceptance_rate(self) -> float | None:
        return None if self.accept is None else float(self.accept.mean())


class Records:
    """Per-step info of every ``k``-th step, written into tensors allocated once on the chains' device."""

    def __init__(self, n_steps: int, k: int, like: torch.Tensor, accept: bool):
        self.k = k
        n_rec = (n_steps + k - 1) // k
        B, dev, dt = like.shape[0], like.device, like.dtype
        self.out = {"energy": torch.empty(n_rec, B, device=dev, dtype=dt),
                    "grad_norm": torch.empty(n_rec, B, device=dev, dtype=dt)}
        if accept:
            self.out["accept"] = torch.empty(n_rec, B, device=dev, dtype=dt)

    def put(self, t: int, info: dict) -> None:
        """Info of step t (Python int: the test is on the host counter, never on a tensor)."""
        if t % self.k == 0:
            r = t // self.k
            for name, buf in self.out.items():
                buf[r] = info[name]

    def put_block(self, t0: int, block: dict) -> None:
        """Info of steps t0 .. t0+C-1 held as [C, B] tensors: copy the recorded rows in one slice each."""
        C = next(iter(block.values())).shape[0]
        j0 = (-t0) % self.k
        if j0 >= C:
            return
        r0, n = (t0 + j0) // self.k, len(range(j0, C, self.k))
        for name, buf in self.out.items():
            buf[r0:r0 + n] = block[name][j0::self.k]


def run_chain(kernel: Kernel, energy_fn: EnergyFn, x0: torch.Tensor, n_steps: int,
              generator: torch.Generator | None = None, record_every: int = 1,
              snapshot_steps: Iterable[int] = (), fast: str = "off", precision: str = "fp32") -> ChainResult:
    """Run ``n_steps`` transitions of ``kernel`` from ``x0`` (not modified).

    Records the info of every ``record_every``-th step (steps 0, k, 2k, ...; the info describes the
    state each step started from) into preallocated device tensors; nothing is copied to the host
    inside the loop. ``snapshot_steps`` keeps copies of the samples after those many steps.
    ``fast`` and ``precision`` are ``sampler.fast`` and ``sampler.precision`` (see
    :mod:`ebmlab.samplers.fast`); called directly, the loop defaults to the plain path.
    """
    plan = _fast.make_plan(fast, precision, energy_fn, x0, n_steps)
    return _run(kernel, energy_fn, x0, n_steps, generator, record_every, snapshot_steps, plan)


def _run(kernel, energy_fn, x0, n_steps, generator, record_every, snapshot_steps, plan) -> ChainResult:
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    record_every = max(1, int(record_every))
    rec = Records(n_steps, record_every, x0, kernel.records_accept)
    snaps = sorted({int(s) for s in snapshot_steps if 0 <= int(s) <= n_steps})
    snapshots = {}
    if 0 in snaps:
        snapshots[0] = x0.detach().clone()
    # Segments end where a snapshot is due, so snapshots are taken between segments, on the host's count.
    ends = [s for s in snaps if 0 < s < n_steps] + [n_steps]
    stepper = _fast.make_stepper(plan, kernel, energy_fn, [b - a for a, b in zip([0] + ends, ends)])
    x, state = stepper.start(x0.detach())
    t = 0
    for end in ends:
        if end > t:
            x, state = stepper.advance(x, state, t, end - t, rec, generator)
            t = end
        if t in snaps and t not in snapshots:
            snapshots[t] = x.clone(memory_format=torch.contiguous_format)
    x = stepper.finish(x)
    steps = torch.arange(0, n_steps, record_every)
    out = rec.out
    return ChainResult(x, steps, out["energy"], out["grad_norm"], out.get("accept"), snapshots, stepper.path)


# ---------------------------------------------------------------------------------------------
# the network while it is sampled
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def sampling_mode(net: nn.Module, cache_parametrizations: bool = True):
    """Eval mode, parameters out of autograd, parametrizations (spectral norm) computed once.

    Nothing the sampler does changes a parameter's ``.grad`` or a module buffer; training mode and
    ``requires_grad`` flags are restored on exit. The compiled and CUDA-graph paths pass
    ``cache_parametrizations=False``: a cached weight is a new tensor on every call, which a compiled
    graph would guard on (recompiling every call) and a CUDA graph would read from a stale address; in
    eval mode spectral norm recomputes W/σ from its stored vectors without power iteration, so the
    values are the same.
    """
    was_training = net.training
    flags = [(p, p.requires_grad) for p in net.parameters()]
    try:
        net.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        with parametrize.cached() if cache_parametrizations else contextlib.nullcontext():
            yield net
    finally:
        for p, rg in flags:
            p.requires_grad_(rg)
        net.train(was_training)


def energy_function(net: nn.Module, ref_sigma: float = 0.0) -> EnergyFn:
    """E(x) from an energy network, plus CoopNets' Gaussian reference |x|²/(2σ²) when σ > 0."""
    if ref_sigma <= 0:
        return net
    return ReferenceEnergy(net, ref_sigma)


def sample(net: nn.Module, cfg: SamplerConfig, x0: torch.Tensor, generator: torch.Generator | None = None,
           n_steps: int | None = None, snapshot_steps: Iterable[int] = ()) -> ChainResult:
    """Run the sampler of ``cfg`` on ``net`` from ``x0`` for ``n_steps`` (default ``cfg.n_steps``).

    The loop takes the path of ``cfg.fast`` with the energy network in ``cfg.precision``.
    """
    kernel = make_kernel(cfg)
    steps = cfg.n_steps if n_steps is None else n_steps
    energy = energy_function(net, cfg.ref_sigma)
    plan = _fast.make_plan(cfg.fast, cfg.precision, energy, x0, steps)
    with sampling_mode(net, cache_parametrizations=plan.path in ("plain", "eager")):
        return _run(kernel, energy, x0, steps, generator, cfg.record_every, snapshot_steps, plan)
