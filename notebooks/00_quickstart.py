# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     gpuType: T4
#     provenance: []
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator,colab
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Quick start: train an EBM, look at it, sample it five ways
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ebmlab/ebmlab/blob/main/notebooks/00_quickstart.ipynb)
#
# Trains the default preset (`quick-mnist5k`: a small energy network on the 5,000 offline MNIST digits,
# short-run "SGD with noise" chains restarted from a replay buffer), then shows
#
# 1. its samples,
# 2. the two numbers ebm-anatomy watches during training: the energy difference
#    $d_{s_t} = \overline{E}(\text{data}) - \overline{E}(\text{samples})$ and the mean gradient norm
#    $r_{s_t} = \overline{\lVert\nabla_x E\rVert}$ along the chains,
# 3. sample quality during training (offline LeNet metrics, see `ebmlab.metrics.digits`),
# 4. the same trained model sampled with each sampler (Langevin, SGD with noise, noise-free SGD with and
#    without momentum, MALA) from the same starting points and for the same number of energy-gradient
#    evaluations.
#
# Everything it computes lands in `out_dir`: `metrics.json` (one row of a sweep table), the figures as PNG,
# and the run folder `train/model/` (config, metrics.jsonl, summary.json, checkpoints). Running the notebook
# again in the same `out_dir` loads the trained model instead of training again; after a disconnect it
# resumes from the last checkpoint.
#
# **Settings.** By default the preset trains its full length (`quick-mnist5k`: 3,000 iterations, about 4.5
# minutes on 2 CPU cores; `iterations = 200` gives a first look in 20 seconds); `preset = "quick-gmm8"`
# is the toy 2D target; `overrides = {"data.name": "mnist"}` uses full MNIST (downloaded by torchvision).

# %%
# Google Colab only: install ebmlab and keep runs on Google Drive. Does nothing anywhere else.
import os
import sys

if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
    # !test -f colab_setup.sh || wget -q https://raw.githubusercontent.com/ebmlab/ebmlab/main/colab_setup.sh
    # !bash colab_setup.sh
    import importlib

    importlib.invalidate_caches()
    from ebmlab.colab import setup

    # Mounting Drive asks for consent in the browser, which only Colab's own kernel can show.
    setup(drive="google.colab" in sys.modules)

# %% tags=["parameters"]
preset: str = "quick-mnist5k"  # a name from `ebmlab presets` ("quick-gmm8": toy 2D target)
overrides: dict = {}  # dotted config keys, e.g. {"sampler.n_steps": 40}; they win over the knobs below
out_dir: str = "runs/00_quickstart"  # in Colab with Drive mounted: the Drive run folder
seed: int = 0
device: str = "auto"  # "auto": CUDA when present
smoke: bool = False  # shrink everything so the notebook runs in seconds (tests)
iterations: int = 0  # training iterations (0: the preset length; quick-mnist5k: 3,000, ~4.5 min on 2 cores)
eval_every: int = 0  # evaluate sample quality every k iterations (0: the preset's, or 5 times in a shorter run)
eval_n: int = 500  # samples per evaluation (the thresholds of ebmlab.evaluate were set at 1,000)
n_samples: int = 500  # samples per sampler for the quality metrics (1000 is the reporting convention)
compare_steps: int = 0  # chain length of the sampler comparison (0: the training chain length)

# %%
import json

import torch

from ebmlab.plotting import plot_chain_traces, plot_samples, plot_training_curves
from ebmlab.plotting.studies import plot_metric_bars, plot_quality_curves, plot_sample_panels
from ebmlab.presets import get_preset
from ebmlab.studies import (
    compare_samplers,
    headline,
    matched_samplers,
    shrink,
    study_out_dir,
    train_cell,
    write_metrics,
)

out = study_out_dir(out_dir, "runs/00_quickstart")
torch.manual_seed(seed)
# evaluations: the preset's cadence at its full length, else five along the run; eval_n samples each (the
# metrics depend on N: compare like with like)
base = get_preset(preset)
n_it = iterations if iterations > 0 else base.train.iterations
every = eval_every or (base.train.eval_every if n_it == base.train.iterations and base.train.eval_every
                       else max(1, n_it // 5))
knobs = {"train.iterations": n_it, "train.eval_every": every, "train.eval_n": eval_n,
         "train.seed": seed, "train.device": device}
cfg = get_preset(preset, {**knobs, **overrides, **shrink(smoke)})
n = min(n_samples, 64) if smoke else n_samples
metric, threshold = headline(cfg)
print(f"out_dir: {out}\npreset {preset}: {cfg.train.iterations} iterations, sampler {cfg.sampler.name} "
      f"(step {cfg.sampler.step_size:g}, noise {cfg.sampler.noise:g}, {cfg.sampler.n_steps} steps), "
      f"init {cfg.init.name}; quality metric {metric} (threshold {threshold})")

# %% [markdown]
# ## Train
#
# `train_cell` trains into `out_dir/train/model/`, or loads what is already there (re-running this cell does
# not train again). A run whose energies blow up stops with `status: diverged`; the notebook reports it and
# continues with the last checkpoint before the divergence (or skips what needs a model when there is none).

# %%
cell = train_cell("model", cfg, out / "train" / "model")
run = cell.run
m = cell.metrics()
print(json.dumps({k: m[k] for k in ("status", "diverged_at", "iterations_done", "wall_seconds",
                                    "time_to_quality_s", metric) if k in m}, indent=1))

# %% [markdown]
# ## Samples
#
# `samples.png`: fresh short-run samples, drawn exactly as training draws them: chains start from the
# model's own initialisation (here the replay buffer, without writing back) and run the training sampler for
# `sampler.n_steps` steps. After a divergence the model is the last checkpoint before it.

# %%
if run is not None:
    x = run.sample(64, seed=seed).x
    plot_samples(x, title=f"{preset}: samples after {cell.metrics()['iterations_done']} iterations",
                 path=out / "samples.png", extent=getattr(run.data.target, "extent", None))

# %% [markdown]
# ## Training diagnostics
#
# `training_curves.png`, left to right:
#
# - **d** ($d_{s_t}$): mean energy of data minus mean energy of the sampled negatives. Training lowers
#   the energy of data and raises that of samples, so d is negative while the samples are still worse than
#   data and oscillates around 0 once the sampler's output is as "good" as data in the model's eyes
#   (ebm-anatomy Sec. 3). A d that runs away by orders of magnitude is the signature of divergence.
# - **r** ($r_{s_t}$): mean gradient norm along the chains; the sampler's step is proportional to it, so r
#   says how far the chains move per step. A steadily growing r means the energy surface keeps sharpening.
# - **E(data)**, **E(samples)**: the energy magnitudes themselves; their level is arbitrary (only differences
#   matter) but a drift to large magnitudes is an early warning.
#
# `quality.png` shows the quality metric (`eval_n` samples per evaluation) against iterations and against
# training wall time (evaluation time excluded); the dashed line is the "realistic digits" threshold behind
# `time_to_quality`. A dotted line and a red X mark a divergence: the X is the last quality reached before.
#
# A run that diverges shows it at once in these curves: d, r and both energies grow by orders of magnitude
# within a few iterations and squash everything before onto the axis. `01_regularization` is about exactly
# that; a smaller `optim.lr` (e.g. `overrides = {"optim.lr": 1e-4}`) or `model.spectral_norm` avoid it.

# %%
plot_training_curves(cell.train_records, keys=("d", "r", "e_pos", "e_neg"), path=out / "training_curves.png",
                     title=f"{preset}: training diagnostics")

# %%
if metric is not None:
    plot_quality_curves({preset: cell.records}, metric, path=out / "quality.png", threshold=threshold,
                        diverged={preset: m["diverged_at"]}, title=f"{preset}: sample quality during training")

# %% [markdown]
# ## One model, five samplers
#
# The trained model sampled with each sampler, matched to the training sampler's drift $\eta$ and noise
# $\sigma$ (x ← x − η∇E + σξ; `ebmlab.studies.matched_samplers`): `langevin` is the textbook form of the
# very same moves (ε = √(2η) at temperature σ²/(2η)), `sgld` is the training sampler itself, `sgd` drops
# the noise, `sgd+momentum` adds heavy-ball momentum μ = 0.9 with step η(1−μ), and `mala` is exact
# Metropolis-adjusted Langevin on exp(−E) at temperature 1 with proposal noise σ. Every chain starts from
# the same draws of the model's initialisation and takes the same number of steps, i.e. the same number of
# energy-gradient evaluations.
#
# - `samplers.png`: the first 36 samples of each.
# - `sampler_traces.png`: mean energy and gradient norm along the chains. With the preset's sampler (sgld,
#   η = 1, σ = 0.01 when this was written) the noise is small against the drift, so within a training-length
#   chain it hardly matters: `langevin` and `sgld` make the very same moves (their curves coincide) and noise-free
#   `sgd` lies on top of them. `sgd+momentum` starts slower (its step is η(1−μ) until the velocity has built
#   up over about 1/(1−μ) = 10 steps), so at the same number of gradient evaluations its chains are less far
#   down in energy, and chains that the replay buffer restarted from noise are visibly unfinished. `mala`
#   hardly moves at all (its drift ε²/2·∇E is negligible), and its energy even rises a little: at temperature
#   1 the learned energy describes a far flatter density than the tempered one the other samplers target.
# - `sampler_metrics.png`: quality (LeNet-feature FID, lower is better; fraction of confidently classified
#   samples) and diversity (classifier Inception Score, mode coverage, mean pairwise distance between
#   samples) of `n_samples` samples per sampler; dashed: real held-out digits. A pairwise distance *above*
#   real digits' is not more diversity but leftover noise (unfinished chains).

# %%
outcomes = {}
if run is not None:
    outcomes = compare_samplers(run, matched_samplers(run.cfg.sampler), n=n, n_steps=compare_steps or None,
                                seed=seed)
    steps = compare_steps or run.cfg.sampler.n_steps
    plot_sample_panels({k: o.samples for k, o in outcomes.items()}, path=out / "samplers.png",
                       title=f"the same model, {steps} steps of each sampler from the same starts")
    plot_chain_traces({k: o.chain for k, o in outcomes.items()}, path=out / "sampler_traces.png")
    keys = [k for k in ("lenet_fid", "confident_frac", "classifier_is", "mode_coverage", "toy_kl", "toy_mmd",
                        "pairwise_diversity") if k in next(iter(outcomes.values())).metrics]
    reference = None
    if metric == "lenet_fid":
        from ebmlab.metrics.digits import real_data_baseline
        from ebmlab.studies import pairwise_diversity

        reference = real_data_baseline(n=min(n, 4500), image_size=cfg.data.image_size)
        reference["pairwise_diversity"] = pairwise_diversity(run.data.heldout)
    plot_metric_bars({k: o.metrics for k, o in outcomes.items()}, keys, path=out / "sampler_metrics.png",
                     reference=reference, title="quality and diversity per sampler (same model, same cost)")
    for k, o in outcomes.items():
        print(f"{k:13s}", {mk: round(v, 3) for mk, v in o.metrics.items()}, f"{o.seconds:.1f}s")

# %% [markdown]
# ## metrics.json
#
# The numbers a sweep table needs: the headline quality metric first, then status, timing and
# time-to-quality, the final metrics of the trained model, and the per-sampler metrics under
# `samplers.<name>.<metric>`.

# %%
metrics = {metric or "status": m.get(metric) if metric else m["status"], **m,
           "samplers": {k: {**o.metrics, "seconds": o.seconds} for k, o in outcomes.items()}}
write_metrics(out, metrics)
print(json.dumps({k: v for k, v in metrics.items() if k != "samplers"}, indent=1, default=str))
