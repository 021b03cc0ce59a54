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
# # 05 · Langevin explorer: what step size and noise do to an EBM's samples
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ebmlab/ebmlab/blob/main/notebooks/05_langevin_explorer.ipynb)
#
# An energy-based model defines a density p(x) ∝ exp(−E(x)); its samples come from a Markov chain that
# moves down the energy with some noise. Here you drag sliders and watch what the chain does on a
# trained model: the samples at a few step counts, the energy E(x) and the gradient norm ‖∇E(x)‖ along
# the chains. It works the moment it opens: a small model trained on 4,500 MNIST digits
# (`quick-mnist5k`) ships with ebmlab. Set `run_dir` to one of your own run folders to explore that
# model instead.
#
# Run all cells; the panel appears at the end. On Colab choose a GPU runtime for quick redraws (the
# first cell installs ebmlab there); on a laptop CPU a redraw of 36 chains × 100 steps takes a few
# seconds.

# %%
# Google Colab only: install ebmlab and switch on Colab's widget support. Does nothing anywhere else.
import os
import sys

if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
    # !test -f colab_setup.sh || wget -q https://raw.githubusercontent.com/ebmlab/ebmlab/main/colab_setup.sh
    # !bash colab_setup.sh
    import importlib

    importlib.invalidate_caches()
    from ebmlab.colab import setup

    # No Google Drive here: the explorer writes one small figure, not worth a consent prompt.
    setup()

# %% tags=["parameters"]
run_dir: str = ""  # a run folder or checkpoint to explore; "" = the quick-mnist5k model shipped with ebmlab
sampler: str = "sgld"  # sgld | langevin | sgd | mala (see the table below)
step_size: float = 1.0  # sampler.step_size: η for sgld and sgd, ε for langevin and mala
noise: float = 0.01  # σ, std of the noise added per step (sgld, langevin); 0 switches it off
n_steps: int = 100  # steps of every chain
init: str = "uniform"  # where chains start: uniform | gaussian | data | persistent (runs that saved a chain bank)
seed: int = 0  # same seed, same starting points and noise: settings compare on equal terms
n_chains: int = 36
device: str = "auto"  # "auto": CUDA when present
out_dir: str = ""  # "" = ebmlab.colab.default_out_dir("05_langevin_explorer"): Google Drive when mounted
smoke: bool = False  # tiny sizes so that tests and CI run the notebook in seconds

# %%
from pathlib import Path

from IPython.display import display

from ebmlab import colab, explore

if smoke:
    n_steps, n_chains = min(n_steps, 10), min(n_chains, 8)
out = Path(out_dir) if out_dir else colab.default_out_dir("05_langevin_explorer")

model = explore.load_model(run_dir or None, device)  # cached: the sliders below never reload it
if not smoke:
    model.load_data()  # for the E(held-out data) line and the 'data' start (mnist5k: a few seconds)
print(f"model: {model.source}\n  {model.cfg.data.name}, {model.cfg.model.name}, trained with "
      f"{explore.describe_update(model.cfg.sampler)} for {model.cfg.sampler.n_steps} steps per iteration, "
      f"chains from '{model.cfg.init.name}'; here: starts {', '.join(model.inits)}, on {model.device}")

# %% [markdown]
# ## One setting, as a static figure
#
# The parameters above, run once. The figure and `metrics.json` go to `out_dir`, so this notebook also
# runs in batch (`papermill`, `ebmlab sweep`) to compare settings side by side.
#
# Top: 16 of the chains after 0, 1, … steps (log-spaced). Bottom: mean energy and gradient norm over
# the chains with their interquartile band, and the fraction of pixels at the ends of the data range
# (|x| > 0.99; 83% for real digits, whose background is black). The dashed line is the mean energy of
# held-out digits: chains that end far below it have gone past the data into over-saturated images.

# %%
result = explore.explore(model, sampler, step_size, noise, n_steps, init, seed, n_chains)
paths = result.save(out)
print(result.description)
print("to train with it: ebmlab train", result.set_args)
print(f"wrote {paths['figure']} and {paths['metrics']}")

# %% [markdown]
# ## The explorer
#
# Every slider is a real setting of the library; the readout under the controls shows the update that
# ran and the `--set` keys that make a training run use it. With ξ ~ N(0, I) a step is
#
# | sampler | one step | step-size slider | noise slider |
# |---|---|---|---|
# | `sgld` ("SGD with noise") | x ← x − η∇E(x) + σξ | η | σ |
# | `langevin` (textbook) | x ← x − (ε²/2)∇E(x) + σξ | ε | σ, via the temperature T = (σ/ε)² |
# | `sgd` | x ← x − η∇E(x) | η | not used (no noise) |
# | `mala` (Metropolis-adjusted) | propose x − (ε²/2)∇E(x) + εξ, accept or reject | ε | not used (fixed at ε) |
#
# **How to read the noise.** Any of these steps is x ← x − h∇E(x) + σξ for some drift h and noise σ.
# Unadjusted Langevin then samples, for small h, approximately from exp(−E(x)/T) with temperature
# T = σ²/(2h): textbook Langevin is T = 1 (σ = ε, or σ = √(2η)). The short-run EBMs of the literature
# (and the shipped model) train with η = 1, σ = 0.01, i.e. T = 5·10⁻⁵: the samples they produce are
# those of a nearly noise-free descent, not draws from exp(−E) (Nijkamp et al., *On the Anatomy of
# MCMC-based Maximum Likelihood Learning of EBMs*, AAAI 2020). MALA shows the other side: it is exact
# for exp(−E) at T = 1, and on this model its chains barely leave the noise they start from.
#
# Things to try:
#
# - **noise** on `sgld`: up to about 0.1 the chains end at the same energy, because the gradient step
#   dominates; at 0.3 the digits are speckled and many chains end as 8-like shapes. Untick *noise on*
#   for plain gradient descent (`sgd` gives the same chains).
# - **step size**: with small steps (0.1) strokes appear only after about 20 steps and are still rough at
#   100; large ones (10) reach saturated, ragged digit shapes within about 5 steps.
# - **steps**: the model was trained with 10-step chains continued from a replay buffer, so from fresh
#   noise it needs more (about 20 at step 1); past a few hundred steps the energy keeps falling below
#   the data's and the strokes thicken.
# - **start from** `data`: do real digits stay digits under the sampler, or drift? (ebm-anatomy's test
#   of whether a model learned a density or only a short-run sampler. On the shipped model they hold for a
#   few tens of steps; by 500 many have thinned into 1s while the energy falls below the data's.)
# - **fresh chains**: new starting points and noise (the next seed).
#
# Widgets need a live kernel: under papermill, or in a static view of the notebook on GitHub, the panel
# shows nothing and the figure above is the record. `state.result` holds the latest run (its samples,
# traces, `metrics()`), and `state.save(folder)` writes what the panel shows.

# %%
panel, state = explore.build_explorer(model, result=result)  # starts from the figure above, no rerun
display(panel)
