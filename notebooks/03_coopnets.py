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
# # 03 · CoopNets: what does a generator add at equal compute?
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ebmlab/ebmlab/blob/main/notebooks/03_coopnets.ipynb)
#
# CoopNets (Xie, Lu, Gao, Wu, AAAI 2018) trains an EBM and a generator together: the generator proposes
# Ŷ = g(z), the EBM's Langevin dynamics revise Ŷ into Ỹ, the EBM learns from data vs Ỹ and the generator
# learns to produce Ỹ directly ("MCMC teaching"). In ebmlab that is the ordinary trainer with a `generator`
# chain initialisation (`ebmlab.coopnets.GeneratorInit`).
#
# This notebook compares three ways to start the EBM's chains, **at equal compute**: the same energy
# network, the same sampler (the preset's) and the same number of steps per iteration (`n_steps`), i.e. the
# same number of energy-gradient evaluations; only `init.name` differs:
#
# - `generator`: CoopNets (preset `coopnets-mnist5k`); the generator's own update costs extra wall time
#   but no energy gradients;
# - `uniform`: short-run EBM, chains from uniform noise every iteration (short_run, ebm-anatomy's
#   non-convergent setting);
# - `buffer`: persistent replay buffer (chains continue from earlier iterations' samples, 5% restarts).
#
# What the generator adds is measured twice: quality against iterations and wall time while training, and,
# on the trained models, quality against the number of sampler steps (does a generator start need fewer?).
# One execution trains the cell `init`; `compare = True` (the default) trains the other two as well. The
# study's sweep (`ebmlab study coopnets`, grid in `notebooks/grids/coopnets.yaml`) crosses `init` with
# `n_steps`. **Bigger settings:** on a GPU, `preset = "coopnets-mnist"` (full MNIST, official settings) or
# `"coopnets-cifar10"` with `iterations = 0`.

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
preset: str = "coopnets-mnist5k"  # CoopNets preset; the other cells change only init.name
overrides: dict = {}  # dotted config keys applied to every cell; they win over the knobs below
out_dir: str = "runs/03_coopnets"  # in Colab with Drive mounted: the Drive run folder
seed: int = 0
device: str = "auto"  # "auto": CUDA when present
smoke: bool = False  # shrink everything so the notebook runs in seconds (tests)
init: str = "generator"  # chain initialisation of this cell: generator (CoopNets) | uniform | buffer
n_steps: int = 0  # sampler steps per iteration, the same for every cell (0: the preset n_steps)
iterations: int = 200  # training iterations per cell (0: the preset length)
compare: bool = True  # also train the other two initialisations (sweeps: false)
n_samples: int = 500  # samples per evaluation of the trained models
probe_steps: list = [0, 1, 3, 5, 10, 20, 40]  # sampler steps at which the trained models are scored

# %%
import json

import torch

from ebmlab.plotting.studies import (
    plot_quality_curves,
    plot_quality_vs_steps,
    plot_sample_panels,
    plot_training_comparison,
)
from ebmlab.presets import get_preset
from ebmlab.studies import headline, quality_vs_steps, shrink, study_out_dir, train_cell, write_metrics

INITS = ("generator", "uniform", "buffer")
if init not in INITS:
    raise ValueError(f"init={init!r}: choose one of {', '.join(INITS)}")
out = study_out_dir(out_dir, "runs/03_coopnets")
torch.manual_seed(seed)
n_it = iterations if iterations > 0 else get_preset(preset).train.iterations
# five quality evaluations along each run, 500 samples each
knobs = {"train.seed": seed, "train.device": device, "train.iterations": n_it,
         "train.eval_every": max(1, n_it // 5), "train.eval_n": 500}
if n_steps > 0:
    knobs["sampler.n_steps"] = n_steps
names = [init] + ([k for k in INITS if k != init] if compare else [])
cells = {k: get_preset(preset, {**knobs, "init.name": k, **overrides, **shrink(smoke)}) for k in names}
n = min(n_samples, 64) if smoke else n_samples
probe = sorted({s for s in probe_steps if s <= (3 if smoke else max(probe_steps))})
metric, threshold = headline(cells[init])
c = cells[init]
K = c.sampler.n_steps  # n_steps, or what overrides / smoke made of it
print(f"{len(cells)} cells x {c.train.iterations} iterations; every iteration: {c.train.batch_size} chains x "
      f"{c.sampler.n_steps} steps of {c.sampler.name} (step {c.sampler.step_size:g})")

# %% [markdown]
# ## Train the cells
#
# Each in `out_dir/train/<init>/` (re-running loads or resumes). The CoopNets run also logs the generator's
# regression loss (`gen_loss`) and how far the sampler's revision moved its samples (`revision_dist`,
# mean ‖Ỹ − Ŷ‖).

# %%
results = {k: train_cell(k, cfg, out / "train" / k) for k, cfg in cells.items()}
for k, r in results.items():
    m = r.metrics()
    print(f"{k:10s} {m['status']:9s} wall={m['wall_seconds']}s ({m['seconds_per_iteration']} s/it) "
          f"{metric}={m.get(metric)} time_to_quality={m['time_to_quality_s']}")

# %% [markdown]
# ## Quality against iterations and wall time
#
# `quality.png`: LeNet-feature FID (lower is better) at each evaluation, against iterations (equal energy
# gradients per iteration for all three) and against training wall time (where CoopNets pays for its
# generator update). `training.png`: the EBM's d and r and, for CoopNets, the generator's regression loss
# and the revision distance; a shrinking revision distance means the generator has learned to produce what
# the revision would make of its proposals.

# %%
curves = {k: r.records for k, r in results.items()}
stopped = {k: r.metrics()["diverged_at"] for k, r in results.items()}
if metric is not None:
    plot_quality_curves(curves, metric, path=out / "quality.png", diverged=stopped, threshold=threshold,
                        title=f"equal compute: {K} sampler steps per iteration")
keys = ("d", "r") + (("gen_loss", "revision_dist") if "generator" in results else ())
plot_training_comparison(curves, path=out / "training.png", keys=keys, diverged=stopped, symlog_energy=False)

# %% [markdown]
# ## Generator samples beside their revisions
#
# `revisions.png`: the CoopNets generator's proposals Ŷ = g(z) (left) and the same chains after `n_steps`
# steps of the EBM's sampler, Ỹ (right): sample i on the left becomes sample i on the right, so their
# differences are what the revision does (`revision_dist` in `training.png` is their mean distance).
# Beside them, the other two models' samples after the same number of steps from their own starts.

# %%
probes, snaps = {}, {}
for k, r in results.items():
    if r.run is not None:
        probes[k], snaps[k] = quality_vs_steps(r.run, probe + [K], n=n, seed=seed)
panels = {}
if "generator" in snaps:
    panels["generator: Ŷ = g(z)"] = snaps["generator"][0]
    panels[f"generator: revised Ỹ ({K} steps)"] = snaps["generator"][K]
for k in snaps:
    if k != "generator":
        panels[f"{k}: {K} steps"] = snaps[k][K]
if panels:
    plot_sample_panels(panels, path=out / "revisions.png", panel_size=3.0)

# %% [markdown]
# ## Fewer sampler steps?
#
# `steps.png`: each trained model sampled with 0 to `max(probe_steps)` steps from its own initialisation
# (step 0 is the starting point itself: the generator's output for CoopNets, uniform noise for the short-run
# model, replay-buffer states for the persistent one). Where a curve is already low at few steps, that
# initialisation needs few sampler steps; the gap between the generator's curve at step 0 and at
# `n_steps` is what the revision adds to the generator. Probing beyond the training length shows whether
# a model's chains were still improving when training stopped them.
#
# **What the default run showed** when this was written (200 iterations, 20 steps per iteration, about 4
# minutes for all three on 2 busy CPU cores): at equal energy gradients the persistent buffer learned fastest
# (LeNet FID 273), the short-run model from noise came next (331) and CoopNets last (410); per second of
# training the gap is wider, as the generator update makes each CoopNets iteration about 1.5× slower. What
# the generator adds shows in `steps.png`: its proposals g(z) are digit-like without any sampling (FID 472
# at step 0, against about 1,100 for uniform noise), so it needs few steps, but they are less diverse (pairwise
# distance 0.54 against 0.8 to 0.9, 9 of 10 classes) and the revision improves them only slowly (405 after 20
# steps; `revision_dist` ≈ 2.5, about 0.09 per pixel). The noise-initialised model is best exactly at its
# training length and falls apart beyond it (FID 350 at 20 steps, 720 at 40, diversity collapsing: the
# non-convergent short-run signature), while the buffer model keeps improving with more steps (214 at 40).

# %%
if probes:
    keys = [k for k in (metric, "mode_coverage", "pairwise_diversity") if k]
    plot_quality_vs_steps(probes, keys, path=out / "steps.png", title="trained models, sampled with K steps")
    for k, by_step in probes.items():
        print(k, {s: round(v.get(metric, float("nan")), 1) for s, v in by_step.items()} if metric else "")

# %% [markdown]
# ## metrics.json
#
# The cell's numbers at the top level (headline metric first), its quality after each probe step count
# under `<metric>_at_steps.<K>`, and the other cells under `compare.<init>.*`.

# %%
m = results[init].metrics()
metrics = {metric or "status": m.get(metric) if metric else m["status"], **m}
if metric and init in probes:
    metrics[f"{metric}_at_steps"] = {str(s): v.get(metric) for s, v in probes[init].items()}
if compare:
    metrics["compare"] = {k: r.metrics() for k, r in results.items() if k != init}
write_metrics(out, metrics)
print(json.dumps(metrics, indent=1, default=str))
