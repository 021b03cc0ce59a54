"""CoopNets: cooperative learning of an EBM and a generator via MCMC teaching.

Xie, Lu, Gao, Wu, "Cooperative Learning of Energy-Based Model and Latent Variable Model via MCMC
Teaching", AAAI 2018; official code jianwen-xie/CoopNets (TensorFlow). One iteration:

1. z ~ N(0, I); Ŷ = g(z)                                  -> :meth:`GeneratorInit.draw`
2. Ỹ = K Langevin steps on E from Ŷ with the Gaussian reference term
   Y ← Y − (δ²/2)(Y/σ² + ∇E(Y)) + δ·ξ                    -> the ordinary sampler with ``sampler.ref_sigma``
3. optional Langevin inference of z on the generator      -> :meth:`GeneratorInit.update`
4. EBM update, maximum likelihood on data vs Ỹ            -> the ordinary training loop
5. generator update: minimise ‖Ỹ − g(z)‖²/(2σ_G²)         -> :meth:`GeneratorInit.update`

So CoopNets is the ordinary trainer with a ``generator`` chain initialisation whose write-back step
trains the generator; checkpoints carry the generator and its optimizer through ``state_dict``.
"""

from __future__ import annotations

import torch

from .config import Config
from .init import ChainInit
from .nets import Generator


class GeneratorInit(ChainInit):
    """Chains start at g(z); ``update`` regresses g(z) onto the revised samples (MCMC teaching)."""

    name = "generator"

    def __init__(self, cfg: Config, sample_shape, device):
        super().__init__(sample_shape, device)
        ic = cfg.init
        c, s, _ = self.sample_shape
        self.latent_dim, self.sigma = ic.latent_dim, ic.gen_sigma
        self.latent_steps, self.latent_step = ic.gen_latent_steps, ic.gen_latent_step
        self.net = Generator(c, s, ic.latent_dim, ic.gen_n_f).to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=ic.gen_lr, betas=(ic.gen_beta1, 0.999))

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(z)

    def draw(self, n, generator=None):
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.device)
        y_hat = self.generate(z)
        return y_hat, {"z": z, "y_hat": y_hat, "generator": generator}

    def regression_loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """‖Ỹ − g(z)‖²/(2σ_G²), summed over pixels, averaged over the batch (official gen_loss)."""
        return (target - self.net(z)).flatten(1).pow(2).sum(1).mean() / (2 * self.sigma**2)

    def infer_latent(self, z, target, generator=None):
        """Langevin on z for p(z | Ỹ): z ← z − (δ²/2)(z + ∇_z loss) + δ·ξ (official generator Langevin)."""
        d = self.latent_step
        for _ in range(self.latent_steps):
            zg = z.detach().requires_grad_(True)
            # per-sample loss (sum, not mean) so each z gets its own posterior gradient
            loss = (target - self.net(zg)).flatten(1).pow(2).sum() / (2 * self.sigma**2)
            (g,) = torch.autograd.grad(loss, zg)
            z = z - 0.5 * d * d * (z + g) + d * torch.randn(z.shape, generator=generator, device=z.device)
        return z.detach()

    def update(self, ctx, x_final):
        target = x_final.detach()
        z = ctx["z"]
        if self.latent_steps > 0:
            z = self.infer_latent(z, target, ctx["generator"])
        loss = self.regression_loss(z, target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        moved = (target - ctx["y_hat"]).flatten(1).norm(dim=1).mean()
        return {"gen_loss": loss.detach(), "revision_dist": moved.detach()}

    def state_dict(self):
        return {"generator": self.net.state_dict(), "optimizer": self.opt.state_dict()}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["generator"])
        self.opt.load_state_dict(state["optimizer"])


def _coop(data: str, image_size: int, iterations: int, batch: int, n_f: int, gen_n_f: int, extra=None) -> dict:
    d = {
        # main.py flags: des_step_size 0.002, des_refsig 0.016, des_sample_steps 15; Langevin with noise
        "sampler.name": "langevin", "sampler.step_size": 0.002, "sampler.ref_sigma": 0.016,
        "sampler.n_steps": 15,
        "data.name": data, "data.image_size": image_size, "data.noise": 0.0,
        "model.name": "coopnets", "model.n_f": n_f, "model.leak": 0.2,
        # main.py: gen_refsig 0.3, gen_sample_steps 0, gen_step_size 0.1, gen_latent_size 100, g_lr 1e-4,
        # beta1_gen 0.5
        "init.name": "generator", "init.gen_sigma": 0.3, "init.gen_latent_steps": 0, "init.gen_latent_step": 0.1,
        "init.latent_dim": 100, "init.gen_lr": 1e-4, "init.gen_beta1": 0.5, "init.gen_n_f": gen_n_f,
        # main.py: d_lr 0.007, beta1_des 0.5, batch_size 100
        "optim.name": "adam", "optim.lr": 0.007, "optim.betas": [0.5, 0.999],
        "train.batch_size": batch, "train.iterations": iterations, "train.log_every": 10,
        "train.checkpoint_every": 500, "train.sample_every": 500,
    }
    d.update(extra or {})
    return d


COOPNETS_PRESETS: dict[str, tuple[str, dict]] = {
    # jianwen-xie/CoopNets main.py flags (no CIFAR-10 config ships there; its colour "scene" setting is used
    # at 32 px). It draws 144 chains per iteration against 100 images; here both are the batch size.
    "coopnets-cifar10": ("CoopNets, official settings (main.py flags) on CIFAR-10",
                         _coop("cifar10", 32, 50000, 100, 64, 64)),
    "coopnets-mnist": ("CoopNets, official settings on MNIST at 28 px", _coop("mnist", 28, 30000, 100, 64, 64)),
    # CPU-sized: the official descriptor, step 0.002 and lr 0.007 need tens of thousands of iterations; in
    # 600 iterations on 2 cores they gave noise (energies near -2.5e4, no confident digits). This preset
    # keeps CoopNets' structure (generator-initialised chains, generator regressed onto the revisions,
    # sigma_G 0.3, Adam beta1 0.5) but uses the EBM and sampler of quick-mnist5k's first version (anatomy
    # net n_f 16, LeakyReLU 0.2, sgld eta 1 / sigma 0.01, 20 clamped steps, lr 3e-4, no Gaussian reference)
    # and a faster generator (1e-3).
    "coopnets-mnist5k": (
        "CPU CoopNets on the offline digits: a small short-run EBM taught by a generator, minutes on 2 cores",
        _coop("mnist5k", 28, 600, 64, 16, 16, {
            "model.name": "anatomy-vanilla", "data.noise": 0.03,
            "sampler.name": "sgld", "sampler.step_size": 1.0, "sampler.noise": 0.01, "sampler.n_steps": 20,
            "sampler.clamp": True, "sampler.ref_sigma": 0.0,
            "optim.lr": 3e-4, "init.gen_lr": 1e-3,
            "train.log_every": 5, "train.checkpoint_every": 100, "train.sample_every": 100,
            "train.eval_every": 100,
        }),
    ),
}
