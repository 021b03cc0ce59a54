"""Energy networks and CoopNets generators.

**Energy sign (the one place it is stated):** every energy network maps ``x: Tensor[B, ...]`` to
``E(x): Tensor[B]`` and the model density is p(x) ∝ exp(−E(x)): *low energy on data*. Samplers
descend E. ebm-anatomy's f is already low on data (its loss is mean f(x+) − mean f(x−)), so E = f and
its Langevin update ``x ← x − ∇f + ε·ξ`` is our ``sgld`` with η = 1, σ = ε (the step ε²/2 folded into
f = U·ε²/2). short_run's network is ascended (f high on data), so E = −f; see ``ShortRunNet``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from .config import ModelConfig


def activation(name: str, leak: float = 0.05) -> nn.Module:
    return {
        "leaky_relu": lambda: nn.LeakyReLU(leak),
        "relu": nn.ReLU,
        "elu": nn.ELU,
        "silu": nn.SiLU,
        "softplus": nn.Softplus,
        "tanh": nn.Tanh,
    }[name]()


def _final_size(image_size: int) -> int:
    """Spatial size after three stride-2, kernel-4, pad-1 convolutions (32 -> 4, 28 -> 3)."""
    s = image_size
    for _ in range(3):
        s = (s + 2 - 4) // 2 + 1
    return s


class EnergyNet(nn.Module):
    """Base class: forward returns E(x) with shape [B]."""

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


class VanillaNet(EnergyNet):
    """ebm-anatomy's VanillaNet: conv3x3 -> three conv4x4 stride 2 -> conv valid to 1x1.

    Widths n_f, 2n_f, 4n_f, 8n_f. At 32 px the last conv is 4x4 as in the paper; at 28 px it is 3x3
    (the map is 3x3 there), so the head always sees the whole image.
    Input Tensor[B, C, S, S] -> Tensor[B].
    """

    def __init__(self, n_c=3, n_f=32, image_size=32, act="leaky_relu", leak=0.05, sign=1.0):
        super().__init__()
        a = lambda: activation(act, leak)  # noqa: E731
        k = _final_size(image_size)
        self.f = nn.Sequential(
            nn.Conv2d(n_c, n_f, 3, 1, 1), a(),
            nn.Conv2d(n_f, 2 * n_f, 4, 2, 1), a(),
            nn.Conv2d(2 * n_f, 4 * n_f, 4, 2, 1), a(),
            nn.Conv2d(4 * n_f, 8 * n_f, 4, 2, 1), a(),
            nn.Conv2d(8 * n_f, 1, k, 1, 0),
        )
        self.sign = sign

    def forward(self, x):
        out = self.f(x).reshape(x.shape[0])
        return out if self.sign == 1.0 else self.sign * out


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al. 2018) as in ebm-anatomy's nets.py.

    θ, φ, g are 1x1 convs to C/2 channels; φ and g are max-pooled by 2 (cheaper attention);
    softmax(θᵀφ) without 1/√d scaling; W (1x1 conv back to C) starts at zero, so the block starts as
    the identity and returns x + W(y).
    """

    def __init__(self, c: int, sub_sample: bool = True):
        super().__init__()
        self.inter = max(c // 2, 1)
        self.g = nn.Conv2d(c, self.inter, 1)
        self.theta = nn.Conv2d(c, self.inter, 1)
        self.phi = nn.Conv2d(c, self.inter, 1)
        self.W = nn.Conv2d(self.inter, c, 1)
        nn.init.zeros_(self.W.weight)
        nn.init.zeros_(self.W.bias)
        self.sub_sample = sub_sample

    def forward(self, x):
        b, c, h, w = x.shape
        g, phi = self.g(x), self.phi(x)
        if self.sub_sample and h >= 2 and w >= 2:
            g, phi = F.max_pool2d(g, 2), F.max_pool2d(phi, 2)
        g = g.flatten(2).transpose(1, 2)  # [B, M, I]
        theta = self.theta(x).flatten(2).transpose(1, 2)  # [B, N, I]
        attn = torch.softmax(theta @ phi.flatten(2), dim=-1)  # [B, N, M]
        y = (attn @ g).transpose(1, 2).reshape(b, self.inter, h, w)
        return x + self.W(y)


class NonLocalNet(EnergyNet):
    """ebm-anatomy's NonlocalNet (its convergent MNIST/flowers model).

    conv3x3(n_f) -> pool -> [non-local, conv3x3(2n_f)] -> pool -> [non-local, conv3x3(4n_f)] -> pool
    -> linear(8 n_f) -> linear(1), LeakyReLU after every conv and the hidden linear.
    Input Tensor[B, C, S, S] (S = 32 -> 4x4 before the head, 28 -> 3x3) -> Tensor[B].
    """

    def __init__(self, n_c=3, n_f=32, image_size=32, act="leaky_relu", leak=0.05):
        super().__init__()
        a = lambda: activation(act, leak)  # noqa: E731
        k = image_size // 8
        self.convs = nn.Sequential(
            nn.Conv2d(n_c, n_f, 3, 1, 1), a(), nn.MaxPool2d(2),
            NonLocalBlock(n_f), nn.Conv2d(n_f, 2 * n_f, 3, 1, 1), a(), nn.MaxPool2d(2),
            NonLocalBlock(2 * n_f), nn.Conv2d(2 * n_f, 4 * n_f, 3, 1, 1), a(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Linear(4 * n_f * k * k, 8 * n_f), a(), nn.Linear(8 * n_f, 1))

    def forward(self, x):
        return self.head(self.convs(x).flatten(1)).reshape(x.shape[0])


class ShortRunNet(VanillaNet):
    """short_run's energy network (same trunk as VanillaNet, LeakyReLU 0.2 in the paper).

    short_run *ascends* its network f (high on data); we return E = −f so that every sampler and
    loss in ebmlab keeps one sign convention.
    """

    def __init__(self, n_c=3, n_f=64, image_size=32, act="leaky_relu", leak=0.2):
        super().__init__(n_c, n_f, image_size, act, leak, sign=-1.0)


class ToyNet(EnergyNet):
    """ebm-anatomy's ToyNet: 2 -> 32 -> 64 -> 64 -> 64 -> 1 (widths n_f, 2n_f, 2n_f, 2n_f).

    The original stacks 1x1 convolutions on [N, 2, 1, 1]; linear layers on [N, 2] are the same map.

    Input Tensor[B, 2] -> Tensor[B].
    """

    def __init__(self, dim=2, n_f=32, act="leaky_relu", leak=0.05):
        super().__init__()
        a = lambda: activation(act, leak)  # noqa: E731
        self.f = nn.Sequential(
            nn.Linear(dim, n_f), a(),
            nn.Linear(n_f, 2 * n_f), a(),
            nn.Linear(2 * n_f, 2 * n_f), a(),
            nn.Linear(2 * n_f, 2 * n_f), a(),
            nn.Linear(2 * n_f, 1),
        )

    def forward(self, x):
        return self.f(x).reshape(x.shape[0])


class CoopNetsDescriptor(EnergyNet):
    """CoopNets' descriptor (jianwen-xie/CoopNets model/model.py, the "scene" net): conv5x5/2 (n_f) ->
    conv3x3/2 (2n_f) -> conv3x3/1 (4n_f), LeakyReLU 0.2, then a conv over the whole map to 100 outputs.

    The official code ascends f = sum of the 100 outputs with a Gaussian reference; here E = −f and the
    reference is the sampler's ``ref_sigma``. Input Tensor[B, C, S, S] -> Tensor[B].
    """

    def __init__(self, n_c=3, n_f=64, image_size=32, act="leaky_relu", leak=0.2, n_out=100):
        super().__init__()
        a = lambda: activation(act, leak)  # noqa: E731
        k = (image_size + 3) // 4
        self.f = nn.Sequential(
            nn.Conv2d(n_c, n_f, 5, 2, 2), a(),
            nn.Conv2d(n_f, 2 * n_f, 3, 2, 1), a(),
            nn.Conv2d(2 * n_f, 4 * n_f, 3, 1, 1), a(),
            nn.Conv2d(4 * n_f, n_out, k, 1, 0),
        )

    def forward(self, x):
        return -self.f(x).flatten(1).sum(1)


class Generator(nn.Module):
    """DCGAN-style generator g(z) for CoopNets: z [B, latent] -> images [B, C, S, S] in (−1, 1).

    Transposed convolutions with batch normalisation and LeakyReLU 0.2 (as the official code's
    custom_ops), tanh output; widths 8n_f, 4n_f, 2n_f from a 4x4 map. S = 28: 4 -> 7 -> 14 -> 28;
    S = 32: 4 -> 8 -> 16 -> 32 (jianwen-xie/CoopNets model/model.py, generator for mnist).
    """

    def __init__(self, n_c=1, image_size=28, latent_dim=100, n_f=64, leak=0.2):
        super().__init__()
        if image_size not in (28, 32):
            raise ValueError(f"generator supports 28 or 32 pixels, got {image_size}")
        self.latent_dim = latent_dim
        first = (3, 2, 1) if image_size == 28 else (4, 2, 1)  # 4 -> 7 or 4 -> 8

        def block(cin, cout, k, s, p):
            return [nn.ConvTranspose2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(leak)]

        self.net = nn.Sequential(
            *block(latent_dim, 8 * n_f, 4, 1, 0),
            *block(8 * n_f, 4 * n_f, *first),
            *block(4 * n_f, 2 * n_f, 4, 2, 1),
            nn.ConvTranspose2d(2 * n_f, n_c, 4, 2, 1), nn.Tanh(),
        )

    def forward(self, z):
        return self.net(z.view(z.shape[0], self.latent_dim, 1, 1))


def apply_spectral_norm(net: nn.Module) -> nn.Module:
    """Wrap every conv/linear weight in torch's spectral_norm parametrization.

    Power iteration runs only in training mode on a forward pass; samplers run the network in eval
    mode under ``parametrize.cached()``, so sampling changes no buffer.
    """
    for m in list(net.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)) and not parametrize.is_parametrized(m, "weight"):
            _spectral_norm(m)
    return net


def build_energy(cfg: ModelConfig, sample_shape: tuple[int, ...]) -> EnergyNet:
    """Energy network for samples of shape (C, S, S) or (2,)."""
    if cfg.name == "toy":
        if len(sample_shape) != 1:
            raise ValueError(f"model.name=toy needs flat 2D samples, got shape {sample_shape}")
        net = ToyNet(sample_shape[0], cfg.n_f, cfg.activation, cfg.leak)
    else:
        if len(sample_shape) != 3:
            raise ValueError(f"model.name={cfg.name} needs images [C, S, S], got shape {sample_shape}")
        c, s, _ = sample_shape
        if s not in (28, 32):
            raise ValueError(f"image nets support 28 or 32 pixels, got {s}")
        cls = {"anatomy-vanilla": VanillaNet, "anatomy-nonlocal": NonLocalNet, "shortrun": ShortRunNet,
               "coopnets": CoopNetsDescriptor}[cfg.name]
        net = cls(c, cfg.n_f, s, cfg.activation, cfg.leak)
    if cfg.spectral_norm:
        apply_spectral_norm(net)
    return net
