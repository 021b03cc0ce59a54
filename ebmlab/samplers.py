"""Sampler kernels and the chain loop.

A *kernel* performs one MCMC (or optimisation) transition on a batch of chains::

    state = kernel.init(x, energy_fn)                       # per-chain auxiliary state
    x, state, info = kernel.step(x, state, energy_fn, generator)

``x`` is ``Tensor[B, ...]``; ``energy_fn(x) -> Tensor[B]`` (density ∝ exp(−E)); ``info`` holds
per-chain tensors ``energy`` (E at the state the step started from), ``grad_norm`` (L2 norm of ∇E
there, before clipping) and, for MALA, ``accept`` (1.0 where the proposal was accepted). Kernels never
modify their input in place, never touch network parameter gradients and draw every random number
from the ``torch.Generator`` they are given.

:func:`run_chain` owns the step count, records info every k steps into preallocated device tensors
(no host synchronisation inside the loop) and returns a :class:`ChainResult`. Training, long-run
evaluation and the widget explorer all go through it.

Update rules (E the energy, ξ ~ N(0, I)):

- ``langevin``: x ← x − (ε²/2)∇E(x) + ε√T·ξ (textbook unadjusted Langevin, temperature T).
- ``sgld`` ("SGD with noise"): x ← x − η∇E(x) + σ·ξ, η and σ set separately (ebm-anatomy, short_run).
- ``sgd``: v ← μv − η∇E(x); x ← x + v (noise-free descent, heavy-ball momentum μ).
- ``mala``: Langevin proposal with step ε, Metropolis–Hastings accept/reject (exact for exp(−E)).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .config import SamplerConfig

EnergyFn = Callable[[torch.Tensor], torch.Tensor]


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _per_chain_norm(g: torch.Tensor) -> torch.Tensor:
    return g.flatten(1).norm(dim=1)  # [B]


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] to scale per-chain quantities."""
    return v.view((-1,) + (1,) * (like.dim() - 1))


def energy_and_grad(energy_fn: EnergyFn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E(x) [B] and ∇ₓE(x) [B, ...], both detached. Only the input gradient is computed."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        e = energy_fn(xg)
        (g,) = torch.autograd.grad(e.sum(), xg)
    return e.detach(), g


class Kernel:
    """One transition; subclasses implement ``_move``. ``clip_grad`` bounds each chain's ‖∇E‖."""

    name = "kernel"

    def __init__(self, clip_grad: float = 0.0, clamp: bool = False):
        self.clip_grad, self.clamp = clip_grad, clamp

    def init(self, x: torch.Tensor, energy_fn: EnergyFn) -> dict:
        return {}

    def _grad(self, energy_fn, x):
        e, g = energy_and_grad(energy_fn, x)
        gn = _per_chain_norm(g)
        if self.clip_grad > 0:
            g = g * _bcast((self.clip_grad / (gn + 1e-12)).clamp(max=1.0), g)
        return e, g, gn

    def _finish(self, x):
        return x.clamp(-1.0, 1.0) if self.clamp else x

    def step(self, x, state, energy_fn, generator=None):
        raise NotImplementedError


class Langevin(Kernel):
    """x ← x − (ε²/2)∇E(x) + ε√T·ξ. Stationary variance on N(0, s²): s²/(1 − ε²/(4s²))."""

    name = "langevin"

    def __init__(self, step_size: float, temperature: float = 1.0, **kw):
        super().__init__(**kw)
        self.eps, self.temperature = step_size, temperature

    def step(self, x, state, energy_fn, generator=None):
        e, g, gn = self._grad(energy_fn, x)
        noise = self.eps * math.sqrt(self.temperature)
        x_new = x - (0.5 * self.eps**2) * g
        if noise > 0:
            x_new = x_new + noise * _randn_like(x, generator)
        return self._finish(x_new), state, {"energy": e, "grad_norm": gn}


class SGLD(Kernel):
    """"SGD with noise": x ← x − η∇E(x) + σ·ξ with η and σ set independently.

    On N(0, s²) the stationary variance is σ²s²/(η(2 − η/s²)); with σ² = 2η it is Langevin.
    """

    name = "sgld"

    def __init__(self, step_size: float, noise: float, **kw):
        super().__init__(**kw)
        self.eta, self.sigma = step_size, noise

    def step(self, x, state, energy_fn, generator=None):
        e, g, gn = self._grad(energy_fn, x)
        x_new = x - self.eta * g
        if self.sigma > 0:
            x_new = x_new + self.sigma * _randn_like(x, generator)
        return self._finish(x_new), state, {"energy": e, "grad_norm": gn}


class SGD(Kernel):
    """Noise-free gradient descent on the samples: v ← μv − η∇E(x); x ← x + v."""

    name = "sgd"

    def __init__(self, step_size: float, momentum: float = 0.0, **kw):
        super().__init__(**kw)
        self.eta, self.momentum = step_size, momentum

    def init(self, x, energy_fn):
        return {"velocity": torch.zeros_like(x)} if self.momentum > 0 else {}

    def step(self, x, state, energy_fn, generator=None):
        e, g, gn = self._grad(energy_fn, x)
        if self.momentum > 0:
            v = self.momentum * state["velocity"] - self.eta * g
            state = {"velocity": v}
            x_new = x + v
        else:
            x_new = x - self.eta * g
        return self._finish(x_new), state, {"energy": e, "grad_norm": gn}


class MALA(Kernel):
    """Metropolis-adjusted Langevin: proposal y = x − (ε²/2)∇E(x) + ε·ξ, accepted with probability
    min(1, exp(E(x) − E(y)) q(x|y)/q(y|x)), q(a|b) = N(a; b − (ε²/2)∇E(b), ε²I).

    Keeps E and ∇E of the current state, so each step costs one energy gradient. Without clipping it
    leaves exp(−E) exactly invariant (ebm-anatomy uses it to evaluate long-run samples).
    """

    name = "mala"

    def __init__(self, step_size: float, **kw):
        super().__init__(**kw)
        self.eps = step_size

    def init(self, x, energy_fn):
        e, g, gn = self._grad(energy_fn, x)
        return {"energy": e, "grad": g, "grad_norm": gn}

    def step(self, x, state, energy_fn, generator=None):
        h = 0.5 * self.eps**2
        e_x, g_x, gn_x = state["energy"], state["grad"], state["grad_norm"]
        y = self._finish(x - h * g_x + self.eps * _randn_like(x, generator))
        e_y, g_y, gn_y = self._grad(energy_fn, y)
        inv = 1.0 / (2 * self.eps**2)
        log_q_xy = -inv * (x - y + h * g_y).flatten(1).pow(2).sum(1)  # log q(x | y)
        log_q_yx = -inv * (y - x + h * g_x).flatten(1).pow(2).sum(1)  # log q(y | x)
        log_alpha = e_x - e_y + log_q_xy - log_q_yx
        u = torch.rand(log_alpha.shape, generator=generator, device=x.device, dtype=x.dtype)
        accept = torch.log(u) < log_alpha  # NaN proposals are rejected
        a = _bcast(accept, x)
        x_new = torch.where(a, y, x)
        new_state = {"energy": torch.where(accept, e_y, e_x), "grad": torch.where(a, g_y, g_x),
                     "grad_norm": torch.where(accept, gn_y, gn_x)}
        return x_new, new_state, {"energy": e_x, "grad_norm": gn_x, "accept": accept.to(x.dtype)}


def make_kernel(cfg: SamplerConfig) -> Kernel:
    """The kernel named by ``cfg.name`` with its settings."""
    kw = {"clip_grad": cfg.clip_grad, "clamp": cfg.clamp}
    if cfg.name == "langevin":
        return Langevin(cfg.step_size, cfg.temperature, **kw)
    if cfg.name == "sgld":
        return SGLD(cfg.step_size, cfg.noise, **kw)
    if cfg.name == "sgd":
        return SGD(cfg.step_size, cfg.momentum, **kw)
    if cfg.name == "mala":
        return MALA(cfg.step_size, **kw)
    raise ValueError(f"sampler.name: unknown sampler '{cfg.name}'; choose langevin, sgld, sgd or mala")


# ---------------------------------------------------------------------------------------------
# the chain loop
# ---------------------------------------------------------------------------------------------

@dataclass
class ChainResult:
    """Output of :func:`run_chain`.

    x: final samples [B, ...]. steps: [R] step index of each record (0 = the initial state).
    energy, grad_norm: [R, B] per-chain traces; accept: [R, B] for MALA, else None.
    snapshots: {step: samples [B, ...]} for the requested steps (on the chains' device).
    """

    x: torch.Tensor
    steps: torch.Tensor
    energy: torch.Tensor
    grad_norm: torch.Tensor
    accept: torch.Tensor | None = None
    snapshots: dict = field(default_factory=dict)

    def cpu(self) -> ChainResult:
        c = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
        return ChainResult(c(self.x), c(self.steps), c(self.energy), c(self.grad_norm), c(self.accept),
                           {k: c(v) for k, v in self.snapshots.items()})

    @property
    def mean_energy(self) -> torch.Tensor:
        return self.energy.mean(1)

    @property
    def mean_grad_norm(self) -> torch.Tensor:
        return self.grad_norm.mean(1)

    @property
    def acceptance_rate(self) -> float | None:
        return None if self.accept is None else float(self.accept.mean())


def run_chain(kernel: Kernel, energy_fn: EnergyFn, x0: torch.Tensor, n_steps: int,
              generator: torch.Generator | None = None, record_every: int = 1,
              snapshot_steps: Iterable[int] = ()) -> ChainResult:
    """Run ``n_steps`` transitions of ``kernel`` from ``x0`` (not modified).

    Records the info of every ``record_every``-th step (steps 0, k, 2k, ...; the info describes the
    state each step started from) into preallocated device tensors; nothing is copied to the host
    inside the loop. ``snapshot_steps`` keeps copies of the samples after those many steps.
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    record_every = max(1, int(record_every))
    n_rec = (n_steps + record_every - 1) // record_every
    B, dev, dt = x0.shape[0], x0.device, x0.dtype
    energy = torch.empty(n_rec, B, device=dev, dtype=dt)
    grad_norm = torch.empty(n_rec, B, device=dev, dtype=dt)
    accept = torch.empty(n_rec, B, device=dev, dtype=dt) if isinstance(kernel, MALA) else None
    snaps = sorted({int(s) for s in snapshot_steps if 0 <= int(s) <= n_steps})
    snapshots = {}
    x = x0.detach()
    if 0 in snaps:
        snapshots[0] = x.clone()
    state = kernel.init(x, energy_fn)
    for t in range(n_steps):
        x, state, info = kernel.step(x, state, energy_fn, generator)
        if t % record_every == 0:
            r = t // record_every
            energy[r] = info["energy"]
            grad_norm[r] = info["grad_norm"]
            if accept is not None:
                accept[r] = info["accept"]
        if t + 1 in snaps:
            snapshots[t + 1] = x.detach().clone()
    steps = torch.arange(0, n_steps, record_every)
    return ChainResult(x.detach(), steps, energy, grad_norm, accept, snapshots)


# ---------------------------------------------------------------------------------------------
# the network while it is sampled
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def sampling_mode(net: nn.Module):
    """Eval mode, parameters out of autograd, parametrizations (spectral norm) computed once.

    Nothing the sampler does changes a parameter's ``.grad`` or a module buffer; training mode and
    ``requires_grad`` flags are restored on exit.
    """
    was_training = net.training
    flags = [(p, p.requires_grad) for p in net.parameters()]
    try:
        net.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        with parametrize.cached():
            yield net
    finally:
        for p, rg in flags:
            p.requires_grad_(rg)
        net.train(was_training)


def energy_function(net: nn.Module, ref_sigma: float = 0.0) -> EnergyFn:
    """E(x) from an energy network, plus CoopNets' Gaussian reference |x|²/(2σ²) when σ > 0."""
    if ref_sigma <= 0:
        return net
    c = 1.0 / (2 * ref_sigma**2)

    def energy(x):
        return net(x) + c * x.flatten(1).pow(2).sum(1)

    return energy


def sample(net: nn.Module, cfg: SamplerConfig, x0: torch.Tensor, generator: torch.Generator | None = None,
           n_steps: int | None = None, snapshot_steps: Iterable[int] = ()) -> ChainResult:
    """Run the sampler of ``cfg`` on ``net`` from ``x0`` for ``n_steps`` (default ``cfg.n_steps``)."""
    kernel = make_kernel(cfg)
    steps = cfg.n_steps if n_steps is None else n_steps
    with sampling_mode(net):
        return run_chain(kernel, energy_function(net, cfg.ref_sigma), x0, steps, generator,
                         cfg.record_every, snapshot_steps)
