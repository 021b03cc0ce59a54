"""Chain initialisation: where each training iteration's MCMC chains start.

Every initialiser has the same three calls::

    x0, ctx = init.draw(n, generator)        # starting samples [n, ...] on the data's device
    info = init.update(ctx, x_final)         # write back (persistent bank, replay buffer, generator)
    init.state_dict() / init.load_state_dict(d)   # saved with checkpoints

and one for drawing the trained model's samples (evaluation, figures, sampler comparisons)::

    x0 = init.draw_samples(n, generator)     # like draw, without training-only restarts

- ``uniform``: U(−s, s) with s = ``init.noise_scale`` (ebm-anatomy, short_run: fresh noise each time).
- ``gaussian``: s·N(0, I).
- ``data``: random training points plus ``init.data_noise`` Gaussian noise (contrastive-divergence style).
- ``persistent``: ebm-anatomy's bank of chains started from uniform noise and never reset; each
  iteration continues a random subset (independent of the data batch). ``init.buffer_size = 0`` means
  one chain per training image.
- ``buffer``: a replay buffer (JEM/IGEBM): like ``persistent`` but each chain restarts from uniform
  noise with probability ``init.reinit_prob``.
- ``generator``: CoopNets; see :mod:`ebmlab.coopnets`.
"""

from __future__ import annotations

import torch

from .config import Config
from .data import Dataset


def _uniform(shape, generator, device, scale=1.0):
    return scale * (2 * torch.rand(shape, generator=generator, device=device) - 1)


class ChainInit:
    name = "init"

    def __init__(self, sample_shape: tuple[int, ...], device):
        self.sample_shape, self.device = tuple(sample_shape), torch.device(device)

    def draw(self, n: int, generator: torch.Generator | None = None):
        raise NotImplementedError

    def draw_samples(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Starting points for the model's samples: ``draw`` without the training-only exploration."""
        return self.draw(n, generator)[0]

    def update(self, ctx, x_final: torch.Tensor) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class UniformInit(ChainInit):
    name = "uniform"

    def __init__(self, sample_shape, device, scale=1.0):
        super().__init__(sample_shape, device)
        self.scale = scale

    def draw(self, n, generator=None):
        return _uniform((n, *self.sample_shape), generator, self.device, self.scale), None


class GaussianInit(UniformInit):
    name = "gaussian"

    def draw(self, n, generator=None):
        x = torch.randn((n, *self.sample_shape), generator=generator, device=self.device)
        return self.scale * x, None


class DataInit(ChainInit):
    name = "data"

    def __init__(self, data: torch.Tensor, noise: float = 0.0):
        super().__init__(data.shape[1:], data.device)
        self.data, self.noise = data, noise

    def draw(self, n, generator=None):
        idx = torch.randint(0, self.data.shape[0], (n,), generator=generator, device=self.device)
        x = self.data[idx]
        if self.noise > 0:
            x = x + self.noise * torch.randn(x.shape, generator=generator, device=self.device)
        return x, None


class ReplayBuffer(ChainInit):
    """A bank of chains; ``reinit_prob = 0`` gives ebm-anatomy's persistent initialisation."""

    name = "buffer"

    def __init__(self, sample_shape, device, size: int, reinit_prob: float = 0.05, scale: float = 1.0,
                 generator: torch.Generator | None = None):
        super().__init__(sample_shape, device)
        if size < 1:
            raise ValueError(f"init.buffer_size must be >= 1 for a replay buffer, got {size}")
        self.size, self.reinit_prob, self.scale = size, reinit_prob, scale
        self.bank = _uniform((size, *self.sample_shape), generator, self.device, scale)

    def _pick(self, n, generator):
        if n > self.size:
            raise ValueError(f"batch of {n} chains is larger than the bank (init.buffer_size={self.size})")
        return torch.randperm(self.size, generator=generator, device=self.device)[:n]

    def draw(self, n, generator=None):
        idx = self._pick(n, generator)
        x = self.bank[idx]
        if self.reinit_prob > 0:
            fresh = _uniform(x.shape, generator, self.device, self.scale)
            restart = torch.rand(n, generator=generator, device=self.device) < self.reinit_prob
            x = torch.where(restart.view((-1,) + (1,) * (x.dim() - 1)), fresh, x)
        return x, idx

    def draw_samples(self, n, generator=None):
        # The bank is the model's sample set. A restarted chain is noise plus one iteration's steps: it
        # keeps training exploring, but scoring it would cap every quality figure at 1 - reinit_prob.
        return self.bank[self._pick(n, generator)].clone()

    def update(self, idx, x_final):
        self.bank[idx] = x_final.detach().to(self.bank.dtype)
        return {}

    def state_dict(self):
        return {"bank": self.bank}

    def load_state_dict(self, state):
        bank = state["bank"].to(self.device)
        if bank.shape != self.bank.shape:
            raise ValueError(f"saved chain bank has shape {tuple(bank.shape)}, expected {tuple(self.bank.shape)}")
        self.bank = bank


def make_init(cfg: Config, data: Dataset, generator: torch.Generator | None = None) -> ChainInit:
    """The initialiser named by ``cfg.init.name`` for chains shaped like ``data``'s samples."""
    ic, shape, dev = cfg.init, data.sample_shape, data.train.device
    if ic.name == "uniform":
        return UniformInit(shape, dev, ic.noise_scale)
    if ic.name == "gaussian":
        return GaussianInit(shape, dev, ic.noise_scale)
    if ic.name == "data":
        return DataInit(data.train, ic.data_noise)
    if ic.name == "persistent":
        size = ic.buffer_size or data.train.shape[0]
        init = ReplayBuffer(shape, dev, size, 0.0, ic.noise_scale, generator)
        init.name = "persistent"
        return init
    if ic.name == "buffer":
        return ReplayBuffer(shape, dev, ic.buffer_size, ic.reinit_prob, ic.noise_scale, generator)
    if ic.name == "generator":
        from .coopnets import GeneratorInit

        return GeneratorInit(cfg, shape, dev)
    raise ValueError(f"init.name: unknown initialisation '{ic.name}'")
