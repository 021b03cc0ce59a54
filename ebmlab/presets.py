"""Named configurations: the reference papers' settings and CPU-sized defaults.

Sources (file paths are in the authors' repositories):

- ebm-anatomy = point0bar1/ebm-anatomy (Nijkamp, Hill, Han, Zhu, Wu; AAAI 2020), ``config_locker/*.json``,
  ``train_data.py``, ``train_toy.py``, ``nets.py``. Its network f is low on data and its update is
  ``x += −∇f + ε·ξ`` (f = U·ε²/2), i.e. our ``sgld`` with η = 1, σ = ε; its loss is scaled by 2/ε²
  (``train.loss_scale``), and with SGD it multiplies ``lr_init``/``lr_min`` by ε²/2, which we do here
  so the numbers reproduce its d_{s_t} and its updates exactly. All its configs use batch 100.
- short_run = enijkamp/short_run (Nijkamp, Hill, Zhu, Wu; NeurIPS 2019), ``train_cifar10_minimal.py``:
  ascends f with ``x += ∇f + 1e-2·ξ``; with E = −f that is ``sgld`` η = 1, σ = 1e-2.
- CoopNets presets live in :mod:`ebmlab.coopnets`.
"""

from __future__ import annotations

from .config import Config, ConfigError


def _cfg(d: dict) -> Config:
    return Config().with_overrides(d)


def _anatomy_image(data, net, optim, lr, eps, steps, init, noise, channels_iters=100000, lr_min=None,
                   lr_decay=1.0, buffer_size=10000):
    scale = 2.0 / eps**2
    sgd = optim == "sgd"
    return {
        "data.name": data, "data.image_size": 32, "data.noise": noise,
        "model.name": net, "model.n_f": 32, "model.leak": 0.05,
        "sampler.name": "sgld", "sampler.step_size": 1.0, "sampler.noise": eps, "sampler.n_steps": steps,
        "init.name": init, "init.buffer_size": buffer_size,
        "optim.name": optim, "optim.lr": lr * (eps**2 / 2 if sgd else 1.0),
        "optim.lr_min": (lr if lr_min is None else lr_min) * (eps**2 / 2 if sgd else 1.0),
        "optim.lr_decay": lr_decay,
        "train.loss_scale": scale, "train.batch_size": 100, "train.iterations": channels_iters,
        "train.seed": 123, "train.log_every": 10, "train.checkpoint_every": 1000, "train.sample_every": 1000,
    }


def _anatomy_toy(target, convergent: bool):
    # config_locker/{gmm,rings}_{convergent,nonconvergent}.json (toy_sd 0.15, toy_radius 1.0, batch 100)
    if convergent:
        eps, steps, optim, lr, iters = 0.125, 500, "sgd", 1e-1, 200000
        init = {"init.name": "persistent", "init.buffer_size": 10000}
    else:
        eps, steps, optim, lr, iters = 0.01, 100, "adam", 1e-4, 100000
        init = {"init.name": "gaussian", "init.noise_scale": 2.0 if target == "rings" else 1.0}
    sgd = optim == "sgd"
    return {
        "data.name": target, "model.name": "toy", "model.n_f": 32, "model.leak": 0.05,
        "sampler.name": "sgld", "sampler.step_size": 1.0, "sampler.noise": eps, "sampler.n_steps": steps,
        **init,
        "optim.name": optim, "optim.lr": lr * (eps**2 / 2 if sgd else 1.0),
        "train.loss_scale": 2.0 / eps**2, "train.batch_size": 100, "train.iterations": iters,
        "train.seed": 123, "train.log_every": 10, "train.checkpoint_every": 1000, "train.sample_every": 1000,
    }


PRESETS: dict[str, tuple[str, dict]] = {
    "quick-mnist5k": (
        "CPU default: short-run EBM on the 5,000 offline MNIST digits; realistic digit strokes in minutes on 2 cores",
        {
            # Tuned for time to quality on 2 CPU cores (`ebmlab study quick-tuning` reruns the ablation).
            # Against the first version (LeakyReLU, lr 3e-4, 20 steps, a 10,000-chain buffer):
            # - SiLU instead of LeakyReLU 0.2: a smooth energy whose gradients steer the chains better;
            #   at lr 1e-3 with 20 steps, 1,000 iterations gave LeNet-FID 3.9x real instead of 6.7x and
            #   confident 0.74 instead of 0.67 (at the final settings the gain is smaller: 2.3x vs 2.6x);
            # - Adam lr 2e-3, halved over the run (3e-4 was 3x slower to the same FID and 1e-3 1.5x; at a
            #   constant 2e-3 one run's FID jumped from 2.8x to 7.8x real at iteration 1400 and had not
            #   recovered by 2000; clamping keeps every setting stable);
            # - 10 sampler steps instead of 20: the persistent buffer carries the chains, so halving the
            #   steps doubles the model updates per second (5 steps is too few: slower per wall second;
            #   15 steps: no better per wall second);
            # - a 2,000-chain buffer (every chain revisited about every 30 iterations; 10,000 chains did as
            #   well in the ablation). Its 5% restarts from noise cost nothing in quality and keep the model
            #   able to make digits from fresh noise (confident 0.86 after 100 steps; 0.49 at 1% restarts);
            # - bf16 for the energy net while sampling where the CPU has it natively ("auto"): 1.24x the
            #   iterations per second on an AVX512-BF16 CPU, same quality per iteration; fp32 elsewhere;
            # - 3,000 iterations: quality still rises at 2,000 (confident 0.81 -> 0.85, FID 2.3x -> 1.6x
            #   real at 3,000). Not changed by: data noise 0.01, sampler noise 0.03, an EMA of the weights
            #   for sampling, a final lr of 2e-4. n_f 24 halves the iterations per second.
            "data.name": "mnist5k", "data.image_size": 28, "data.noise": 0.03,
            "model.name": "anatomy-vanilla", "model.n_f": 16, "model.activation": "silu",
            # clamping the chains to the data range keeps training stable: without it the unclamped step-1
            # chains ran off and the energy of the samples diverged near iteration 180
            "sampler.name": "sgld", "sampler.step_size": 1.0, "sampler.noise": 0.01, "sampler.n_steps": 10,
            "sampler.clamp": True, "sampler.precision": "auto",
            "init.name": "buffer", "init.buffer_size": 2000, "init.reinit_prob": 0.05,
            "optim.name": "adam", "optim.lr": 2e-3, "optim.betas": [0.5, 0.999],
            "optim.lr_decay": 0.99977, "optim.lr_min": 5e-4,
            "reg.l2_energy": 0.0,
            "train.iterations": 3000, "train.batch_size": 64, "train.log_every": 10,
            "train.checkpoint_every": 250, "train.sample_every": 250, "train.eval_every": 250,
        },
    ),
    "quick-gmm8": (
        "CPU toy: 8 Gaussians on the unit circle, learned in about a minute",
        {
            "data.name": "gmm8", "model.name": "toy", "model.n_f": 32, "model.leak": 0.05,
            # Langevin eps 0.1 mixes within a mode in ~25 steps (h = 5e-3 against sd^2 = 0.0225); the
            # replay buffer carries chains across iterations; lr decays so the density settles.
            "sampler.name": "langevin", "sampler.step_size": 0.1, "sampler.n_steps": 25,
            "init.name": "buffer", "init.buffer_size": 10000, "init.reinit_prob": 0.05, "init.noise_scale": 1.6,
            "optim.name": "adam", "optim.lr": 1e-3, "optim.betas": [0.9, 0.999], "optim.lr_decay": 0.997,
            "optim.lr_min": 1e-4,
            "train.iterations": 800, "train.batch_size": 256, "train.log_every": 5,
            "train.checkpoint_every": 200, "train.sample_every": 200, "train.eval_every": 100,
        },
    ),
    # ebm-anatomy config_locker/cifar10_nonconvergent.json: vanilla net, Adam 1e-4, eps 1e-2, 150 steps
    # from uniform noise, data noise 3e-2, 100k iterations.
    "anatomy-nonconvergent-cifar10": (
        "ebm-anatomy: non-convergent short-run EBM on CIFAR-10 (realistic short-run samples, bad long-run)",
        _anatomy_image("cifar10", "anatomy-vanilla", "adam", 1e-4, 1e-2, 150, "uniform", 3e-2),
    ),
    # ebm-anatomy config_locker/mnist_convergent.json: nonlocal net, SGD 1e-2 (x eps^2/2), eps 7.5e-3,
    # 500 steps from a persistent bank (one chain per training image), data noise 1.5e-2.
    "anatomy-convergent-mnist": (
        "ebm-anatomy: convergent EBM on MNIST (persistent chains, realistic long-run samples)",
        _anatomy_image("mnist", "anatomy-nonlocal", "sgd", 1e-2, 7.5e-3, 500, "persistent", 1.5e-2,
                       buffer_size=0),
    ),
    "anatomy-gmm8-convergent": ("ebm-anatomy toy: convergent learning of 8 Gaussians (SGD, persistent, 500 steps)",
                                _anatomy_toy("gmm8", True)),
    "anatomy-gmm8-nonconvergent": ("ebm-anatomy toy: non-convergent learning of 8 Gaussians (Adam, 100 steps)",
                                   _anatomy_toy("gmm8", False)),
    "anatomy-rings-convergent": ("ebm-anatomy toy: convergent learning of 4 rings", _anatomy_toy("rings", True)),
    "anatomy-rings-nonconvergent": ("ebm-anatomy toy: non-convergent learning of 4 rings",
                                    _anatomy_toy("rings", False)),
    # short_run train_cifar10_minimal.py: K=100 from uniform noise, step 1 on f, noise 1e-2, data noise 3e-2,
    # Adam 1e-4 (0.9, 0.999), batch 64, 1e5 iterations; n_f 128 is the paper's CIFAR-10 width (the minimal
    # script uses 64), LeakyReLU 0.2.
    "shortrun-cifar10": (
        "short_run: non-convergent non-persistent short-run MCMC (K=100) on CIFAR-10",
        {
            "data.name": "cifar10", "data.image_size": 32, "data.noise": 3e-2,
            "model.name": "shortrun", "model.n_f": 128, "model.leak": 0.2,
            "sampler.name": "sgld", "sampler.step_size": 1.0, "sampler.noise": 1e-2, "sampler.n_steps": 100,
            "init.name": "uniform",
            "optim.name": "adam", "optim.lr": 1e-4, "optim.betas": [0.9, 0.999],
            "train.batch_size": 64, "train.iterations": 100000, "train.seed": 1, "train.log_every": 10,
            "train.checkpoint_every": 1000, "train.sample_every": 1000,
        },
    ),
}

DEFAULT_PRESET = "quick-mnist5k"


def _all() -> dict[str, tuple[str, dict]]:
    from .coopnets import COOPNETS_PRESETS

    return {**PRESETS, **COOPNETS_PRESETS}


def preset_names() -> list[str]:
    return list(_all())


def describe_presets() -> list[tuple[str, str]]:
    return [(k, v[0]) for k, v in _all().items()]


def get_preset(name: str | None = None, overrides: dict | None = None) -> Config:
    """The preset's Config with ``overrides`` (dotted keys) applied and validated."""
    import difflib

    name = name or DEFAULT_PRESET
    presets = _all()
    if name not in presets:
        close = difflib.get_close_matches(name, presets, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown preset '{name}'.{hint} Known presets: {', '.join(presets)}")
    return _cfg(presets[name][1]).with_overrides(overrides)
