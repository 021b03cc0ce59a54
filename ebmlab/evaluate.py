"""Quality evaluation during and after training, with a dataset-specific "good enough" threshold.

An :class:`Evaluator` draws ``train.eval_n`` fresh samples the way training does (the run's chain
initialisation, without writing back and without a replay buffer's restarts from noise, and its
sampler), scores them with the dataset's metrics and says whether the quality threshold behind
``time_to_quality`` is met:

- toy targets: grid KL(p_true ‖ p_model) and sample MMD; threshold ``toy_kl <= TOY_KL_THRESHOLD``.
- digits (``mnist5k``, ``mnist``): the shipped LeNet's metrics (:mod:`ebmlab.metrics.digits`) against the
  held-out digits; "realistic digits" means ``confident_frac >= 0.9``, all 10 classes present and
  ``lenet_fid`` within ``DIGIT_FID_FACTOR`` of the FID between real training and held-out digits.
- other datasets: no offline metric (Inception FID needs its weights; see :mod:`ebmlab.metrics.inception`).
"""

from __future__ import annotations

import torch

from .config import Config
from .data import Dataset
from .samplers import sample

TOY_KL_THRESHOLD = 0.15  # grid KL below which the 8 modes / 4 rings are all clearly in place
DIGIT_CONFIDENT = 0.9  # issue 4: at least 90% of samples confidently classified
DIGIT_FID_FACTOR = 3.0  # lenet_fid at most 3x that of real digits vs the held-out digits


class Evaluator:
    def __init__(self, cfg: Config, data: Dataset, chunk: int = 500):
        self.cfg, self.data, self.chunk = cfg, data, chunk

    def draw(self, net, init, n: int, seed: int) -> torch.Tensor:
        """n samples from ``init.draw_samples`` (no write-back, no restarts) through the configured sampler."""
        gen = torch.Generator(self.data.train.device).manual_seed(seed)
        # chunks no larger than a training batch, so a bank that serves training serves this too
        chunk = min(self.chunk, self.cfg.train.batch_size)
        out = []
        for i in range(0, n, chunk):
            x0 = init.draw_samples(min(chunk, n - i), gen)
            out.append(sample(net, self.cfg.sampler, x0, gen).x)
        return torch.cat(out)

    def score(self, net, samples: torch.Tensor) -> dict:
        raise NotImplementedError

    def quality_met(self, metrics: dict) -> bool:
        raise NotImplementedError

    def __call__(self, net, init, seed: int = 0) -> dict:
        return self.score(net, self.draw(net, init, self.cfg.train.eval_n, seed))


class ToyEvaluator(Evaluator):
    def score(self, net, samples):
        from .metrics import toy_metrics

        with torch.no_grad():
            was = net.training
            net.eval()
            try:
                # the model density is exp(-E/T) with T the sampler's temperature (T = eps^2/2 for the
                # ebm-anatomy presets, whose sgld runs with eta = 1, sigma = eps); noise-free samplers: T = 1
                from .studies import TemperedEnergy, sampler_temperature

                t = sampler_temperature(self.cfg.sampler)
                energy = TemperedEnergy(net, t) if t > 0 and t != 1.0 else net
                return toy_metrics(self.data.target, energy, samples)
            finally:
                net.train(was)

    def quality_met(self, metrics):
        return metrics.get("toy_kl", float("inf")) <= TOY_KL_THRESHOLD


class DigitEvaluator(Evaluator):
    def __init__(self, cfg, data, chunk=500):
        super().__init__(cfg, data, chunk)
        from .metrics.digits import real_data_baseline, reference_stats

        size = data.heldout.shape[-1]
        # mnist5k: the 500 held-out digits (digit_metrics' default); full MNIST: its test split
        self.reference = None if data.name == "mnist5k" else reference_stats(data.heldout[:10000])
        self.baseline = real_data_baseline(n=min(cfg.train.eval_n, 4500), image_size=size)

    def score(self, net, samples):
        from .metrics.digits import digit_metrics

        m = digit_metrics(samples, self.reference)
        m["lenet_fid_ratio"] = m["lenet_fid"] / self.baseline["lenet_fid"]
        return m

    def quality_met(self, metrics):
        return (metrics.get("confident_frac", 0.0) >= DIGIT_CONFIDENT and metrics.get("mode_coverage", 0.0) >= 1.0
                and metrics.get("lenet_fid_ratio", float("inf")) <= DIGIT_FID_FACTOR)


def make_evaluator(cfg: Config, data: Dataset) -> Evaluator | None:
    """The evaluator for ``data`` (None where no offline metric exists)."""
    if data.is_toy:
        return ToyEvaluator(cfg, data)
    if data.name in ("mnist5k", "mnist"):
        return DigitEvaluator(cfg, data)
    return None


def evaluate_run(run_dir, n: int = 1000, sampler: str | None = None, n_steps: int | None = None,
                 device: str = "auto", seed: int = 0) -> dict:
    """Score a trained run's samples and write ``run_dir/eval.json``."""
    from .rundir import RunDir, write_json
    from .train import load_run

    run = load_run(run_dir, device)
    over = {"train.eval_n": n}
    if sampler:
        over["sampler.name"] = sampler
    if n_steps is not None:
        over["sampler.n_steps"] = n_steps
    cfg = run.cfg.with_overrides(over)
    ev = make_evaluator(cfg, run.data)
    if ev is None:
        raise ValueError(f"no offline quality metric for data.name={cfg.data.name}; use "
                         f"ebmlab.metrics.inception (Inception FID) where its weights are available")
    metrics = ev(run.net, run.init, seed=seed)
    result = {"run": str(run_dir), "n": n, "sampler": cfg.sampler.name, "n_steps": cfg.sampler.n_steps,
              "seed": seed, "quality_met": bool(ev.quality_met(metrics)), "metrics": metrics}
    write_json(RunDir(run_dir).root / "eval.json", result)
    return result
