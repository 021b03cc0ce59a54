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
# # 02 · Can noise-free SGD replace Langevin dynamics?
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ebmlab/ebmlab/blob/main/notebooks/02_sgd_sampling.ipynb)
#
# Short-run EBM training lowers the energy of synthesised samples with a few steps of
# x ← x − η∇E(x) + noise. Four ways to take those steps, all with the same drift η and the same number of
# steps, i.e. the **same number of energy-gradient evaluations**:
#
# | `sampler` | update | noise |
# |---|---|---|
# | `langevin` | textbook Langevin, ε = √(2η) at temperature `temperature` | √(2η·T): tied to the step |
# | `sgld` | "SGD with noise" (ebm-anatomy, short_run) | `noise`, independent of the step |
# | `sgd` | gradient descent on the samples | none |
# | `sgd+momentum` | heavy ball, μ = `momentum`, step η(1−μ) | none |
#
# At η = 1 the defaults make `langevin` and `sgld` identical (T = σ²/2); away from η = 1 they differ in
# exactly the way the two families differ: Langevin keeps the temperature and rescales its noise with the
# step, SGD-with-noise keeps the noise and so changes the temperature.
#
# The question has two halves:
#
# - **for training**: the notebook trains one model with `sampler` at `step_size`; the study's sweep
#   (`ebmlab study sgd-sampling`: every sampler × two step sizes, `notebooks/grids/sgd-sampling.yaml`)
#   puts the trained models side by side in `results.csv` and `summary.png`;
# - **for sampling**: the trained model is sampled with *every* sampler from the same starts at the same
#   cost, and long-run chains show what happens far beyond the training chain length.
#
# The cost is measured in diversity (mode coverage and classifier Inception Score from the shipped LeNet,
# and the mean pairwise distance between samples) and in long-run behaviour (do samples stay realistic,
# drift or saturate?). **Bigger settings:** on a GPU, `iterations = 0` (the preset's full length),
# `long_run_steps = 5000`, or `overrides = {"data.name": "mnist"}`.

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
preset: str = "quick-mnist5k"  # a name from `ebmlab presets`; its sampler is replaced by the one below
overrides: dict = {}  # dotted config keys; they win over the knobs below
out_dir: str = "runs/02_sgd_sampling"  # in Colab with Drive mounted: the Drive run folder
seed: int = 0
device: str = "auto"  # "auto": CUDA when present
smoke: bool = False  # shrink everything so the notebook runs in seconds (tests)
sampler: str = "sgd"  # the training sampler: langevin | sgld | sgd | sgd+momentum
step_size: float = 1.0  # drift eta of x <- x - eta * grad E (+ noise), the same meaning for every sampler
noise: float = 0.01  # noise sigma of sgld (independent of the step)
temperature: float = 5e-5  # temperature T of langevin, noise sqrt(2 eta T); 5e-5 is sigma^2 / 2 at sigma 0.01
momentum: float = 0.9  # heavy-ball momentum of sgd+momentum
n_steps: int = 30  # sampler steps per training iteration: energy-gradient evaluations per chain
iterations: int = 200  # training iterations (0: the preset length)
n_samples: int = 500  # samples per sampler for the quality and diversity metrics
long_run_steps: int = 300  # long-run chain length (ebm-anatomy uses 100,000; hundreds already tell)
long_run_chains: int = 64
compare_samplers: bool = True  # sample the trained model with every sampler too (no extra training)

# %%
import json

import torch

from ebmlab.diagnostics import long_run, long_run_from_noise_and_data
from ebmlab.plotting import plot_chain_traces, plot_long_run, plot_training_curves
from ebmlab.plotting.studies import plot_metric_bars, plot_quality_curves, plot_sample_panels
from ebmlab.presets import get_preset
from ebmlab.studies import SAMPLER_KINDS, headline, pairwise_diversity, quality_fn, sampler_config, \
    sampler_settings, shrink, study_out_dir, train_cell, write_metrics
from ebmlab.studies import compare_samplers as sample_with_each

out = study_out_dir(out_dir, "runs/02_sgd_sampling")
torch.manual_seed(seed)
settings = {k: sampler_settings(k, step_size, noise, temperature, momentum) for k in SAMPLER_KINDS}
if sampler not in settings:
    raise ValueError(f"sampler={sampler!r}: choose one of {', '.join(SAMPLER_KINDS)}")
knobs = {f"sampler.{k}": v for k, v in settings[sampler].items()}
n_it = iterations if iterations > 0 else get_preset(preset).train.iterations
# four quality evaluations along the run, 500 samples each
knobs.update({"sampler.n_steps": n_steps, "train.seed": seed, "train.device": device, "train.iterations": n_it,
              "train.eval_every": max(1, n_it // 4), "train.eval_n": 500})
cfg = get_preset(preset, {**knobs, **overrides, **shrink(smoke)})
n = min(n_samples, 64) if smoke else n_samples
long_steps = 10 if smoke else long_run_steps
metric, threshold = headline(cfg)
print(f"training sampler {sampler}: {cfg.sampler}\n{cfg.train.iterations} iterations x {cfg.sampler.n_steps} "
      f"steps x batch {cfg.train.batch_size} = {cfg.train.iterations * cfg.sampler.n_steps * cfg.train.batch_size:,} "
      f"energy-gradient evaluations of one sample")

# %% [markdown]
# ## Train with the chosen sampler
#
# Everything but the sampler comes from the preset. The run lives in `out_dir/train/model/`; re-running
# the notebook loads it (or resumes it after an interruption).

# %%
cell = train_cell(sampler, cfg, out / "train" / "model")
run = cell.run
m = cell.metrics()
print(json.dumps({k: m.get(k) for k in ("status", "diverged_at", "wall_seconds", "time_to_quality_s", metric,
                                        "mode_coverage", "classifier_is")}, indent=1))

# %% [markdown]
# `training.png`: the learning diagnostics d (energy of data minus energy of samples; near 0 once the
# samples look like data to the model) and r (mean gradient norm along the chains), and `quality.png`, the
# quality metric (500 samples per evaluation) against iterations and wall time (dashed: the "realistic
# digits" threshold). Whatever the sampler, d should oscillate around 0 once learning is under way (the
# samples are as low in energy as data); r, how far the chains move per step, grows as the energy surface
# sharpens. A d that runs away by orders of magnitude marks a run on its way to divergence.

# %%
plot_training_curves(cell.train_records, keys=("d", "r", "e_pos", "e_neg"), path=out / "training.png",
                     title=f"trained with {sampler} (eta {step_size:g})")
if metric is not None:
    plot_quality_curves({sampler: cell.records}, metric, path=out / "quality.png", threshold=threshold,
                        diverged={sampler: m["diverged_at"]}, title=f"trained with {sampler}")

# %% [markdown]
# ## The trained model, sampled with every sampler
#
# Same model, same starting points (draws of the model's own chain initialisation), same number of steps
# and the same drift η for all four, plus MALA (exact Metropolis-adjusted Langevin on exp(−E) at temperature
# 1, proposal noise σ) as a reference.
#
# - `samplers.png`: samples of each;
# - `sampler_traces.png`: mean energy and gradient norm along the chains;
# - `sampler_metrics.png`: quality (LeNet-feature FID, lower is better) and diversity (mode coverage,
#   classifier Inception Score, mean pairwise distance between samples); dashed lines: real held-out digits.
#   A sampler that drops modes or collapses samples onto a few prototypes loses coverage, IS and pairwise
#   distance even when its samples look clean.
#
# What to expect at the defaults: σ = 0.01 is small against the drift (η·r is several pixels' worth per
# step), so over 30 steps `langevin`, `sgld` and `sgd` give practically the same samples and scores
# whichever sampler trained the model (at η = 1, `langevin` and `sgld` are even the same moves). Momentum
# pays for its slow start at equal cost (chains restarted from noise are unfinished), and MALA, exact at
# temperature 1, hardly moves. For *sampling* a trained short-run model, dropping the noise costs nothing
# at this noise level; the differences that matter come from training (the sweep) and from long runs.

# %%
outcomes = {}
if run is not None and compare_samplers:
    kinds = {k: v for k, v in settings.items()}
    if noise > 0:
        kinds["mala"] = {"name": "mala", "step_size": noise}
    outcomes = sample_with_each(run, kinds, n=n, seed=seed)
    plot_sample_panels({k: o.samples for k, o in outcomes.items()}, path=out / "samplers.png",
                       title=f"model trained with {sampler}: {cfg.sampler.n_steps} steps of each sampler")
    plot_chain_traces({k: o.chain for k, o in outcomes.items()}, path=out / "sampler_traces.png")
    keys = [k for k in ("lenet_fid", "mode_coverage", "classifier_is", "pairwise_diversity", "toy_kl", "toy_mmd")
            if k in next(iter(outcomes.values())).metrics]
    reference = None
    if metric == "lenet_fid":
        from ebmlab.metrics.digits import real_data_baseline

        reference = real_data_baseline(n=min(n, 4500), image_size=cfg.data.image_size)
        reference["pairwise_diversity"] = pairwise_diversity(run.data.heldout)
    plot_metric_bars({k: o.metrics for k, o in outcomes.items()}, keys, path=out / "sampler_metrics.png",
                     reference=reference, title="quality and diversity per sampler (same model, same cost)")
    for k, o in outcomes.items():
        print(f"{k:13s}", {mk: round(v, 3) for mk, v in o.metrics.items()})

# %% [markdown]
# ## Long-run behaviour
#
# ebm-anatomy's test of what a model has learned: run its sampler far beyond the training chain length.
# A *convergent* model's long-run samples stay realistic; a *non-convergent* short-run model's drift
# (towards smooth blobs or saturated, over-sharpened strokes) even though its short-run samples look fine.
#
# `long_run.png` (the training sampler, `long_run_steps` steps from uniform noise and from held-in data):
# samples at log-spaced steps, then energy and gradient norm along the chains, the quality metric of each
# snapshot and the fraction of saturated pixels (|x| > 0.99). `long_run_samplers.png`: every sampler from
# the same data starts. The verdicts printed below compare each chain's last snapshot with its best one.
#
# In the default run (trained with noise-free SGD for 200 iterations) chains from noise become digit-like
# after 20 to 50 steps and then keep descending into a few thick prototypes (many 0-like loops): quality
# first improves and then diversity collapses. Chains from data stay digits but thicken (the saturated
# fraction rises) and some change class (a 3 closing into a 9): a short-run, non-convergent model, whose
# energy minima are not the data. The noisy samplers at σ = 0.01 do not change that picture.

# %%
long_runs, verdicts = {}, {}
if run is not None:
    gen = torch.Generator(run.device).manual_seed(seed + 17)
    q = quality_fn(run)
    k_chains = min(long_run_chains, 16) if smoke else long_run_chains
    long_runs = long_run_from_noise_and_data(run.net, run.cfg.sampler, run.data.train, k_chains, long_steps, gen,
                                             quality_fn=q)
    qk = [metric] if metric else None
    plot_long_run(long_runs, path=out / "long_run.png", quality_keys=qk,
                  title=f"long run: {sampler}, {long_steps} steps")
    if compare_samplers:
        starts = long_runs["data"].snapshots[0].to(run.device)
        per_sampler = {}
        for k, s in settings.items():
            per_sampler[k] = long_run(run.net, sampler_config(run.cfg.sampler, s), starts, long_steps,
                                      torch.Generator(run.device).manual_seed(seed + 18), quality_fn=q, label=k)
        plot_long_run(per_sampler, path=out / "long_run_samplers.png", quality_keys=qk,
                      title=f"every sampler for {long_steps} steps from the same data")
        long_runs.update({f"data, {k}": v for k, v in per_sampler.items()})
    v_metric = "lenet_fid" if metric == "lenet_fid" else ("toy_mmd" if metric else None)
    for k, r in long_runs.items():
        verdicts[k] = r.verdict(metric=v_metric) if v_metric else r.verdict()
        print(f"{k:18s} {verdicts[k].summary}")

# %% [markdown]
# ## Reading the sweep
#
# `ebmlab study sgd-sampling --out DIR` trains one model per sampler × step size (η 0.5 and 2, 160
# iterations each, 30 steps per iteration for every sampler) and writes `DIR/results.csv` and
# `DIR/summary.png` (LeNet FID of each trained model; lower is better). Read the heatmap's rows against each
# other: if the `sgd` rows are no worse than `langevin` and `sgld`, noise-free SGD replaces Langevin for
# *training* at that step size; then check the diversity columns (`mode_coverage`, `classifier_is`,
# `pairwise_diversity`) for a hidden cost, `long_run_*` for the long-run behaviour, and the
# `samplers.<kind>.lenet_fid` columns (every model sampled with every sampler) for *sampling*. When this
# was written, on the offline digits (with `quick-mnist5k`'s first settings: LeakyReLU, Adam 3e-4, a
# 10,000-chain buffer; the tuned preset learns faster, so expect lower FIDs): noise-free `sgd` trained as well as or slightly better than the noisy
# samplers at both step sizes (FID 322 vs 352 at η = 0.5, 278 vs 286 to 290 at η = 2), with the same mode
# coverage (all 10 classes) and Inception Score and no less pairwise distance; `langevin` and `sgld` were
# indistinguishable, the larger step helped every sampler, and every model sampled as well with `sgd` as with
# `sgld` (momentum worse at equal cost, MALA worst). At σ ≈ 0.01 the noise does not matter for short-run
# training. The 200-step long runs did not separate the samplers either: from noise every model's chains
# were at or near their best quality at the end, and from data five of the eight drifted (FID up by more
# than 25%), at least one per sampler.

# %% [markdown]
# ## metrics.json
#
# Top level (the sweep table's columns): the trained model's quality (`lenet_fid` first: the summary
# heatmap draws it), status and timing, then diversity (`pairwise_diversity` of its samples) and the
# long-run verdicts; `samplers.<kind>.*`: the same model sampled with each sampler.

# %%
own = outcomes.get(sampler)
metrics = {metric or "status": m.get(metric) if metric else m["status"], **m,
           "pairwise_diversity": own.metrics["pairwise_diversity"] if own else None,
           "gradient_evals_per_chain": cfg.train.iterations * cfg.sampler.n_steps}
for k, v in verdicts.items():
    key = k.replace(", ", "_").replace(" ", "_").replace("+", "_")
    metrics[f"long_run_{key}_convergent"] = v.convergent
    metrics[f"long_run_{key}_end"] = v.quality_end
    metrics[f"long_run_{key}_saturation_end"] = v.saturation_end
metrics["samplers"] = {k: o.metrics for k, o in outcomes.items()}
write_metrics(out, metrics)
print(json.dumps({k: v for k, v in metrics.items() if k != "samplers"}, indent=1, default=str))
