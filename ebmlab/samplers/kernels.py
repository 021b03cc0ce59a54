"""Sampler kernels: one MCMC (or optimisation) transition on a batch of chains.

A kernel's transition is split in two so that every chain-loop path (plain, compiled, CUDA graph)
runs the same arithmetic:

- ``draw(x, generator)`` takes the step's random numbers from the ``torch.Generator``, in a fixed
  order given by ``random_spec(x)`` (the fast paths draw the same numbers into preallocated buffers);
- ``transition(x, state, grad_fn, rand)`` is a pure function of its inputs: it returns the next samples,
  the next auxiliary state and per-chain info, and never modifies an input in place. ``grad_fn(x)``
  returns (E(x) [B], ∇ₓE(x) [B, ...]).

``step(x, state, energy_fn, generator)`` (draw, then transition) and ``init(x, energy_fn)`` are the
one-call forms; the plain and eager chain loops call ``step`` once per transition.

``info`` holds per-chain tensors ``energy`` (E at the state the step started from), ``grad_norm`` (L2
norm of ∇E there, before clipping) and, for MALA, ``accept`` (1.0 where the proposal was accepted).
Kernels never touch network parameter gradients.

Update rules (E the energy, ξ ~ N(0, I)):

- ``langevin``: x ← x − (ε²/2)∇E(x) + ε√T·ξ (textbook unadjusted Langevin, temperature T).
- ``sgld`` ("SGD with noise"): x ← x − η∇E(x) + σ·ξ, η and σ set separately (ebm-anatomy, short_run).
- ``sgd``: v ← μv − η∇E(x); x ← x + v (noise-free descent, heavy-ball momentum μ).
- ``mala``: Langevin proposal with step ε, Metropolis–Hastings accept/reject (exact for exp(−E)).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch

from ..config import SamplerConfig

EnergyFn = Callable[[torch.Tensor], torch.Tensor]
GradFn = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
RandomSpec = tuple  # ((kind, shape), ...), kind "normal" or "uniform"


def autocast_for(x: torch.Tensor, dtype: torch.dtype | None):
    """bf16 autocast around the energy network only; samples and updates stay in x's dtype.

    ``cache_enabled=False``: autocast's weight-cast cache is unsafe inside CUDA graph capture and buys
    nothing when each step runs the network once.
    """
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=dtype, cache_enabled=False)


def energy_and_grad(energy_fn: EnergyFn, x: torch.Tensor,
                    autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """E(x) [B] and ∇ₓE(x) [B, ...], both detached. Only the input gradient is computed."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        with autocast_for(x, autocast_dtype):
            e = energy_fn(xg)
        e = e.to(x.dtype)  # no-op in fp32; under bf16 the sum and the recorded energy are in x's dtype
        (g,) = torch.autograd.grad(e.sum(), xg)
    return e.detach(), g


def functional_energy_and_grad(energy_fn: EnergyFn, x: torch.Tensor,
                               autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same values as :func:`energy_and_grad`, written with ``torch.func.grad``.

    torch.compile traces ``torch.func.grad`` into one forward+backward graph; it does not trace
    ``torch.autograd.grad`` (a graph break), so the compiled path uses this form.
    """

    def total(y):
        with autocast_for(y, autocast_dtype):
            e = energy_fn(y)
        e = e.to(y.dtype)
        return e.sum(), e

    g, e = torch.func.grad(total, has_aux=True)(x)
    return e, g


def _per_chain_norm(g: torch.Tensor) -> torch.Tensor:
    return g.flatten(1).norm(dim=1)  # [B]


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] to scale per-chain quantities."""
    return v.view((-1,) + (1,) * (like.dim() - 1))


def draw(spec: RandomSpec, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
    """Fresh tensors for ``spec``. torch.randn/rand fill an empty tensor with normal_/uniform_, so a
    preallocated buffer filled with ``buf.normal_(generator=g)`` gets exactly these numbers."""
    out = []
    for kind, shape in spec:
        f = torch.randn if kind == "normal" else torch.rand
        out.append(f(shape, generator=generator, device=x.device, dtype=x.dtype))
    return tuple(out)


class Kernel:
    """One transition; subclasses implement ``transition``. ``clip_grad`` bounds each chain's ‖∇E‖."""

    name = "kernel"
    records_accept = False

    def __init__(self, clip_grad: float = 0.0, clamp: bool = False):
        self.clip_grad, self.clamp = clip_grad, clamp

    def signature(self) -> tuple:
        """Hashable settings; two kernels with equal signatures compute the same transition."""
        return (type(self).__qualname__, tuple(sorted(vars(self).items())))

    # --- randomness -------------------------------------------------------------------------------
    def random_spec(self, x: torch.Tensor) -> RandomSpec:
        """The random numbers one step takes from the generator, in the order it takes them."""
        return ()

    def draw(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        return draw(self.random_spec(x), x, generator)

    # --- state and transition ---------------------------------------------------------------------
    def start(self, x: torch.Tensor, grad_fn: GradFn) -> dict:
        """Auxiliary per-chain state at the chains' start (MALA keeps E and ∇E of the current state)."""
        return {}

    def transition(self, x, state, grad_fn: GradFn, rand):
        raise NotImplementedError

    def init(self, x: torch.Tensor, energy_fn: EnergyFn) -> dict:
        return self.start(x, lambda y: energy_and_grad(energy_fn, y))

    def step(self, x, state, energy_fn, generator=None, rand=None, grad_fn: GradFn | None = None):
        """One transition. ``rand``: this step's random numbers when already drawn (the fast paths draw
        them into buffers); ``grad_fn``: x -> (E, ∇E) when not plain autograd on ``energy_fn`` (bf16)."""
        if rand is None:
            rand = self.draw(x, generator)
        if grad_fn is None:
            grad_fn = lambda y: energy_and_grad(energy_fn, y)  # noqa: E731
        return self.transition(x, state, grad_fn, rand)

    # --- shared pieces ----------------------------------------------------------------------------
    def _grad(self, grad_fn: GradFn, x):
        e, g = grad_fn(x)
        gn = _per_chain_norm(g)
        if self.clip_grad > 0:
            g = g * _bcast((self.clip_grad / (gn + 1e-12)).clamp(max=1.0), g)
        return e, g, gn

    def _finish(self, x):
        return x.clamp(-1.0, 1.0) if self.clamp else x


class Langevin(Kernel):
    """x ← x − (ε²/2)∇E(x) + ε√T·ξ. Stationary variance on N(0, s²): s²/(1 − ε²/(4s²))."""

    name = "langevin"

    def __init__(self, step_size: float, temperature: float = 1.0, **kw):
        super().__init__(**kw)
        self.eps, self.temperature = step_size, temperature

    @property
    def _noise(self) -> float:
        return self.eps * math.sqrt(self.temperature)

    def random_spec(self, x):
        return (("normal", tuple(x.shape)),) if self._noise > 0 else ()

    def transition(self, x, state, grad_fn, rand):
        e, g, gn = self._grad(grad_fn, x)
        x_new = x - (0.5 * self.eps**2) * g
        if self._noise > 0:
            x_new = x_new + self._noise * rand[0]
        return self._finish(x_new), state, {"energy": e, "grad_norm": gn}


class SGLD(Kernel):
    """"SGD with noise": x ← x − η∇E(x) + σ·ξ with η and σ set independently.

    On N(0, s²) the stationary variance is σ²s²/(η(2 − η/s²)); with σ² = 2η it is Langevin.
    """

    name = "sgld"

    def __init__(self, step_size: float, noise: float, **kw):
        super().__init__(**kw)
        self.eta, self.sigma = step_size, noise

    def random_spec(self, x):
        return (("normal", tuple(x.shape)),) if self.sigma > 0 else ()

    def transition(self, x, state, grad_fn, rand):
        e, g, gn = self._grad(grad_fn, x)
        x_new = x - self.eta * g
        if self.sigma > 0:
            x_new = x_new + self.sigma * rand[0]
        return self._finish(x_new), state, {"energy": e, "grad_norm": gn}


class SGD(Kernel):
    """Noise-free gradient descent on the samples: v ← μv − η∇E(x); x ← x + v."""

    name = "sgd"

    def __init__(self, step_size: float, momentum: float = 0.0, **kw):
        super().__init__(**kw)
        self.eta, self.momentum = step_size, momentum

    def start(self, x, grad_fn):
        return {"velocity": torch.zeros_like(x)} if self.momentum > 0 else {}

    def transition(self, x, state, grad_fn, rand):
        e, g, gn = self._grad(grad_fn, x)
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
    leaves exp(−E) exactly invariant (ebm-anatomy uses it to evaluate long-run samples). The accept
    test is a tensor comparison and ``torch.where``: no host synchronisation, no Python branch.
    """

    name = "mala"
    records_accept = True

    def __init__(self, step_size: float, **kw):
        super().__init__(**kw)
        self.eps = step_size

    def random_spec(self, x):
        return (("normal", tuple(x.shape)), ("uniform", (x.shape[0],)))

    def start(self, x, grad_fn):
        e, g, gn = self._grad(grad_fn, x)
        return {"energy": e, "grad": g, "grad_norm": gn}

    def transition(self, x, state, grad_fn, rand):
        xi, u = rand
        h = 0.5 * self.eps**2
        e_x, g_x, gn_x = state["energy"], state["grad"], state["grad_norm"]
        y = self._finish(x - h * g_x + self.eps * xi)
        e_y, g_y, gn_y = self._grad(grad_fn, y)
        inv = 1.0 / (2 * self.eps**2)
        log_q_xy = -inv * (x - y + h * g_y).flatten(1).pow(2).sum(1)  # log q(x | y)
        log_q_yx = -inv * (y - x + h * g_x).flatten(1).pow(2).sum(1)  # log q(y | x)
        log_alpha = e_x - e_y + log_q_xy - log_q_yx
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


def with_reference(net, c: float, x: torch.Tensor) -> torch.Tensor:
    """net(x) + c·|x|² (c = 1/(2σ²), CoopNets' Gaussian reference); just net(x) when c = 0."""
    return net(x) + c * x.flatten(1).pow(2).sum(1) if c > 0 else net(x)


class ReferenceEnergy:
    """E(x) = net(x) + |x|²/(2σ²): an energy network plus CoopNets' Gaussian reference.

    A small callable rather than a closure so the fast paths can see the network inside (their caches
    and checks are per network) and the constant c = 1/(2σ²).
    """

    def __init__(self, net, ref_sigma: float):
        self.net, self.c = net, 1.0 / (2 * ref_sigma**2)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return with_reference(self.net, self.c, x)
