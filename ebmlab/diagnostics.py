"""Diagnostics that tell how an MCMC-trained EBM learns and what its sampler does.

- :func:`anatomy_diagnostic`: ebm-anatomy's learning diagnostic (Nijkamp et al., AAAI 2020, Sec. 3 and
  the ``plot_diagnostics`` figure of its code): autocorrelations of the energy difference d_{s_t} and the
  mean gradient norm r_{s_t}, and their cross-correlation, over the last iterations of training.
- :func:`ess`, :func:`split_rhat`, :func:`mcmc_summary`: MCMC summaries of a per-chain trace
  ``[n_steps, n_chains]`` (usually the energy along long-run chains).
- :func:`long_run` and :func:`long_run_verdict`: run the trained model's sampler far beyond the training
  chain length and report whether samples stay realistic (convergent learning) or drift and
  oversaturate (non-convergent learning, ebm-anatomy Sec. 4).

Everything here returns numpy arrays, floats or small dataclasses on the CPU, ready for plotting and JSON.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .config import SamplerConfig
from .samplers import sample
from .samplers.fast import for_traces

# ---------------------------------------------------------------------------------------------
# ebm-anatomy's d / r correlation diagnostic
# ---------------------------------------------------------------------------------------------


@dataclass
class AnatomyDiagnostic:
    """Output of :func:`anatomy_correlations` / :func:`anatomy_diagnostic`.

    iterations, d, r: the whole series [T] (for the traces). window: (first iteration, n) of the
    ``n`` points the correlations use. acf_lags [L+1] = 0..L; acf_d, acf_r [L+1]. cross_lags [2L+1] =
    −L..L; cross [2L+1], where ``cross[k]`` ≈ corr(d_{t+k}, r_t): a peak at a negative lag means d leads r.
    """

    iterations: np.ndarray
    d: np.ndarray
    r: np.ndarray
    window: tuple[int, int]
    acf_lags: np.ndarray
    acf_d: np.ndarray
    acf_r: np.ndarray
    cross_lags: np.ndarray
    cross: np.ndarray

    def to_dict(self) -> dict:
        """JSON-ready correlations (the traces stay in metrics.jsonl)."""
        return {"window_start": self.window[0], "window_n": self.window[1],
                "acf_lags": self.acf_lags.tolist(), "acf_d": self.acf_d.tolist(),
                "acf_r": self.acf_r.tolist(), "cross_lags": self.cross_lags.tolist(),
                "cross": self.cross.tolist()}


def _lagged_sums(a: np.ndarray, b: np.ndarray, max_lag: int) -> np.ndarray:
    """sum_t a[t+k] b[t] for k = −max_lag..max_lag: ``np.correlate(a, b, 'full')[n-1+k]``, without the
    O(n²) full correlation (only 2·max_lag+1 lags are ever shown)."""
    n = len(a)
    out = np.empty(2 * max_lag + 1)
    for i, k in enumerate(range(-max_lag, max_lag + 1)):
        out[i] = np.dot(a[k:], b[: n - k]) if k >= 0 else np.dot(a[: n + k], b[-k:])
    return out


def anatomy_correlations(d, r, iterations=None, t_gap_max: int = 2000, max_lag: int = 15) -> AnatomyDiagnostic:
    """ebm-anatomy's normalisation of the d_{s_t} / r_{s_t} correlations (utils.py ``plot_diagnostics``).

    d, r: per-iteration series [T] (energy difference and mean gradient norm along the chains);
    iterations: [T] (default 0..T−1). Over the last ``n = min(T, t_gap_max)`` points:

    - d is divided by its root mean square sqrt(Σd²/(n−1)) but *not centred*, because the sign and
      size of d relative to 0 is the point (d ≈ 0 is the steady state of learning);
    - r is centred and divided by its sample standard deviation (ddof = 1, as ``torch.std``);
    - every correlation is ``np.correlate(a, b, 'full') / (n − 1)``, so lag 0 of both autocorrelations
      is exactly 1 and lag k carries the usual (n − k)/(n − 1) shrinkage of the biased estimator.

    Lags stop at ``min(max_lag, n − 1)``. A zero d or a constant r gives NaN correlations, not an error.
    """
    d = np.asarray(d, dtype=np.float64).ravel()
    r = np.asarray(r, dtype=np.float64).ravel()
    if d.shape != r.shape:
        raise ValueError(f"d and r must have the same length, got {d.shape[0]} and {r.shape[0]}")
    if len(d) < 2:
        raise ValueError(f"the diagnostic needs at least 2 iterations with both d and r, got {len(d)}")
    it = np.arange(len(d)) if iterations is None else np.asarray(iterations).ravel()
    n = min(len(d), int(t_gap_max))
    dw, rw = d[-n:], r[-n:]
    L = min(int(max_lag), n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dn = dw / np.sqrt(np.sum(dw * dw) / (n - 1))
        rn = (rw - rw.mean()) / rw.std(ddof=1)
        cross = _lagged_sums(dn, rn, L) / (n - 1)
        acf_d = _lagged_sums(dn, dn, L)[L:] / (n - 1)
        acf_r = _lagged_sums(rn, rn, L)[L:] / (n - 1)
    return AnatomyDiagnostic(it, d, r, (int(it[-n]), n), np.arange(L + 1), acf_d, acf_r,
                             np.arange(-L, L + 1), cross)


def _finite_number(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def anatomy_diagnostic(records: Iterable[dict], t_gap_max: int = 2000, max_lag: int = 15) -> AnatomyDiagnostic:
    """:func:`anatomy_correlations` from metrics.jsonl records with keys ``iteration``, ``d``, ``r``.

    Records missing d or r, or with non-finite values (a diverged tail), are skipped; the rest are
    sorted by iteration. The correlations treat the logged points as consecutive, so log every
    iteration (``train.log_every = 1``) for ebm-anatomy's lags to be in iterations.
    """
    rows = sorted((int(rec["iteration"]), float(rec["d"]), float(rec["r"])) for rec in records
                  if "iteration" in rec and _finite_number(rec.get("d")) and _finite_number(rec.get("r")))
    if not rows:
        raise ValueError("no record has finite 'd' and 'r' values; is this a training metrics.jsonl?")
    it, d, r = (np.asarray(c) for c in zip(*rows))
    return anatomy_correlations(d, r, it, t_gap_max, max_lag)


# ---------------------------------------------------------------------------------------------
# MCMC summaries
# ---------------------------------------------------------------------------------------------


def _as_chains(trace) -> np.ndarray:
    """Tensor/array [n_steps] or [n_steps, n_chains] -> float64 [n_steps, n_chains]."""
    if isinstance(trace, torch.Tensor):
        trace = trace.detach().cpu().double().numpy()
    x = np.asarray(trace, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"trace must have shape [n_steps, n_chains], got {tuple(x.shape)}")
    return x


def _split_chains(x: np.ndarray) -> np.ndarray:
    """[n, m] -> [n//2, 2m]: first and second halves as separate chains (the middle draw of an odd n is
    dropped), so a trend within a chain shows up as disagreement between chains."""
    h = x.shape[0] // 2
    return np.concatenate([x[:h], x[x.shape[0] - h:]], axis=1)


def autocovariance(x) -> np.ndarray:
    """Biased per-chain autocovariance (1/n) Σ_t (x_t − x̄)(x_{t+k} − x̄) for all lags, via FFT.

    x: [n] or [n, m] -> [n, m] (lags 0..n−1 along dim 0).
    """
    x = _as_chains(x)
    n = x.shape[0]
    xc = x - x.mean(0)
    size = 1 << (2 * n - 1).bit_length()  # zero-pad: circular correlation must not wrap around
    f = np.fft.rfft(xc, n=size, axis=0)
    return np.fft.irfft(f * np.conj(f), n=size, axis=0)[:n] / n


def autocorrelation(x, max_lag: int | None = None) -> np.ndarray:
    """Centred autocorrelation (biased estimator, lag 0 = 1) of each chain.

    x: [n] -> [max_lag+1]; [n, m] -> [max_lag+1, m]. For an AR(1) process with coefficient ρ the
    expectation is ≈ ρ^k.
    """
    squeeze = getattr(x, "ndim", np.ndim(x)) == 1
    acov = autocovariance(x)
    L = acov.shape[0] - 1 if max_lag is None else min(int(max_lag), acov.shape[0] - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        acf = acov[: L + 1] / acov[0]
    return acf[:, 0] if squeeze else acf


def ess(trace, split: bool = True) -> float:
    """Effective sample size of the mean of a trace [n_steps, n_chains] (or [n_steps]).

    The multi-chain estimator of Stan's reference manual / Vehtari et al. (2021, "Rank-normalization,
    folding and localization", without the rank normalisation): ρ̂_t = 1 − (W − mean_j acov_j(t)) / var⁺
    with W the mean within-chain variance and var⁺ = (n−1)/n·W + var(chain means), so disagreeing
    chains lower the ESS; the sum over lags is truncated with Geyer's (1992) initial monotone sequence
    (pairs ρ̂_{2k} + ρ̂_{2k+1} summed while positive, forced non-increasing). ESS = n·m / τ̂ with
    τ̂ = −1 + 2 Σ pairs, capped at n·m·log10(n·m) as in Stan. ``split`` halves every chain first.

    AR(1) with coefficient ρ: τ = (1 + ρ)/(1 − ρ). Non-finite traces or zero variance give NaN.
    """
    x = _as_chains(trace)
    if split:
        x = _split_chains(x)
    n, m = x.shape
    if n < 4:
        raise ValueError(f"ess needs at least 4 steps per (split) chain, got {n}")
    if not np.all(np.isfinite(x)):
        return float("nan")
    acov = autocovariance(x)  # [n, m]
    w = acov[0].mean() * n / (n - 1)
    var_plus = w * (n - 1) / n + (x.mean(0).var(ddof=1) if m > 1 else 0.0)
    if var_plus <= 0:
        return float("nan")
    rho = 1.0 - (w - acov.mean(1)) / var_plus
    rho[0] = 1.0  # by definition; the formula above is off by W/n at lag 0
    n_pairs = n // 2
    pairs = rho[0 : 2 * n_pairs : 2] + rho[1 : 2 * n_pairs : 2]
    stop = np.flatnonzero(pairs <= 0)
    pairs = np.minimum.accumulate(pairs[: stop[0] if len(stop) else n_pairs])
    tau = max(-1.0 + 2.0 * pairs.sum(), 1.0 / math.log10(n * m))
    return float(n * m / tau)


def split_rhat(trace) -> float:
    """Split R̂ (Gelman et al., BDA3 Sec. 11.4) of a trace [n_steps, n_chains] (or [n_steps]).

    Each chain is halved, then R̂ = sqrt(var⁺ / W) with W the mean within-chain variance and
    var⁺ = (n−1)/n·W + B/n, B/n the variance of the chain means. ≈ 1 when all chains sample the same
    distribution; well above 1 (≳ 1.01) when chains sit at different levels or drift. Chains constant at
    different values give inf; a constant trace or a non-finite one gives NaN.
    """
    x = _split_chains(_as_chains(trace))
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"split_rhat needs at least 4 steps, got {2 * n}")
    if not np.all(np.isfinite(x)):
        return float("nan")
    w = x.var(axis=0, ddof=1).mean()
    b_over_n = x.mean(0).var(ddof=1)
    if w <= 0:
        return float("inf") if b_over_n > 0 else float("nan")
    return float(math.sqrt(((n - 1) / n * w + b_over_n) / w))


def mcmc_summary(trace, discard: float = 0.0) -> dict:
    """ESS and split R̂ of a trace [n_steps, n_chains] after dropping the first ``discard`` fraction
    (warm-up: a long run from noise is far from stationary at first)."""
    x = _as_chains(trace)
    x = x[int(discard * x.shape[0]):]
    e = ess(x)
    return {"ess": e, "ess_per_chain": e / x.shape[1], "split_rhat": split_rhat(x),
            "n_steps": int(x.shape[0]), "n_chains": int(x.shape[1])}


# ---------------------------------------------------------------------------------------------
# long-run chains
# ---------------------------------------------------------------------------------------------

SATURATION_LEVEL = 0.99  # images live in [-1, 1]; |x| above this is a saturated pixel


def log_spaced_steps(n_steps: int, n: int = 8) -> list[int]:
    """Step 0 plus ``n − 1`` geometrically spaced steps from 1 to ``n_steps`` (rounded, duplicates
    dropped, so short runs get fewer): (1000, 8) -> [0, 1, 3, 10, 32, 100, 316, 1000]."""
    if n_steps <= 0 or n <= 1:
        return [0] if n_steps <= 0 else [0, n_steps]
    mid = np.rint(np.geomspace(1, n_steps, n - 1)).astype(int)
    return [0] + sorted(set(mid.tolist()))


def saturated_fraction(x: torch.Tensor, level: float = SATURATION_LEVEL) -> float:
    """Fraction of pixel values with |x| > level in images [B, C, H, W] scaled to [-1, 1]."""
    return float((x.detach().abs() > level).float().mean())


@dataclass
class LongRunResult:
    """Output of :func:`long_run` (all on the CPU).

    steps: [R] recorded step indices; energy, grad_norm: [R, B] per chain (at the state each step started
    from); accept: [R, B] for MALA. snapshot_steps: the log-spaced steps; snapshots: {step: [B, ...]};
    quality: {step: {name: value}} from ``quality_fn``; saturation: {step: fraction of |x| > 0.99}, images
    only (empty for toy points, whose range is not [-1, 1]).
    """

    steps: torch.Tensor
    energy: torch.Tensor
    grad_norm: torch.Tensor
    snapshot_steps: list[int]
    snapshots: dict[int, torch.Tensor]
    quality: dict[int, dict[str, float]] = field(default_factory=dict)
    saturation: dict[int, float] = field(default_factory=dict)
    accept: torch.Tensor | None = None
    label: str = ""

    def mcmc_summary(self, discard: float = 0.5) -> dict:
        """ESS and split R̂ of the energy trace after the first ``discard`` fraction of steps."""
        return mcmc_summary(self.energy, discard)

    def verdict(self, **kw) -> LongRunVerdict:
        return long_run_verdict(self, **kw)

    def to_dict(self) -> dict:
        """JSON-ready summary: per-snapshot mean energy, quality and saturation, and the MCMC summary."""
        mean_e = self.energy.double().mean(1).tolist()
        row = {s: i for i, s in enumerate(self.steps.tolist())}  # the last step is never recorded
        return {"label": self.label, "n_steps": self.snapshot_steps[-1], "n_chains": int(self.energy.shape[1]),
                "snapshots": [{"step": s, "mean_energy": mean_e[row[s]] if s in row else None,
                               "saturation": self.saturation.get(s), **self.quality.get(s, {})}
                              for s in self.snapshot_steps],
                # ESS needs >= 4 steps per split chain after discarding half
                "mcmc": self.mcmc_summary() if self.energy.shape[0] >= 16 else None}


def long_run(net: nn.Module, sampler_cfg: SamplerConfig, x0: torch.Tensor, n_steps: int,
             generator: torch.Generator | None = None, n_snapshots: int = 8,
             quality_fn: Callable[[torch.Tensor], dict[str, float]] | None = None,
             label: str = "") -> LongRunResult:
    """Run the trained model's sampler ``n_steps`` from ``x0`` [B, ...] (not modified) and watch it.

    Uses :func:`ebmlab.samplers.sample` (same kernel, same settings as training unless ``sampler_cfg``
    says otherwise; ``precision="auto"`` runs in fp32, see :func:`ebmlab.samplers.fast.for_traces`),
    records energy and gradient norm every ``sampler_cfg.record_every`` steps, keeps samples at
    :func:`log_spaced_steps` and evaluates ``quality_fn(samples [B, ...]) -> {name: value}``
    on each snapshot (on the chains' device). ebm-anatomy runs 100,000 MALA/Langevin steps; thousands
    already separate convergent from non-convergent models.
    """
    snaps = log_spaced_steps(n_steps, n_snapshots)
    sampler_cfg = for_traces(sampler_cfg)  # precision auto -> fp32: the verdict reads the energy trace
    res = sample(net, sampler_cfg, x0, generator, n_steps=n_steps, snapshot_steps=snaps)
    quality = {s: {k: float(v) for k, v in quality_fn(res.snapshots[s]).items()} for s in snaps} if quality_fn else {}
    images = x0.dim() >= 3
    saturation = {s: saturated_fraction(res.snapshots[s]) for s in snaps} if images else {}
    res = res.cpu()
    return LongRunResult(res.steps, res.energy, res.grad_norm, snaps, res.snapshots, quality, saturation,
                         res.accept, label)


def long_run_from_noise_and_data(net: nn.Module, sampler_cfg: SamplerConfig, data: torch.Tensor, n_chains: int,
                                 n_steps: int, generator: torch.Generator | None = None,
                                 noise_scale: float = 1.0, **kw) -> dict[str, LongRunResult]:
    """Two long runs as in ebm-anatomy: from uniform noise U(−s, s) and from random rows of ``data``
    [N, ...] (device, dtype and shape from ``data``; ``generator`` must live on that device).
    ``kw`` goes to :func:`long_run`. Returns {"noise": ..., "data": ...}."""
    shape = (n_chains, *data.shape[1:])
    noise = noise_scale * (2 * torch.rand(shape, generator=generator, device=data.device, dtype=data.dtype) - 1)
    idx = torch.randint(0, data.shape[0], (n_chains,), generator=generator, device=data.device)
    return {"noise": long_run(net, sampler_cfg, noise, n_steps, generator, label="noise", **kw),
            "data": long_run(net, sampler_cfg, data[idx], n_steps, generator, label="data", **kw)}


_LOWER_IS_BETTER = ("fid", "kid", "kl", "mmd")  # distances; everything else (accuracy-like) is higher-better


@dataclass
class LongRunVerdict:
    """See :func:`long_run_verdict`. ``convergent`` is None when there is nothing to judge by."""

    convergent: bool | None
    summary: str
    metric: str | None = None
    best_step: int | None = None
    end_step: int | None = None
    quality_best: float | None = None
    quality_end: float | None = None
    degradation: float | None = None  # (end − best, in the worse direction) / |best|
    saturation_best: float | None = None
    saturation_end: float | None = None


def long_run_verdict(result: LongRunResult, metric: str | None = None, higher_is_better: bool | None = None,
                     quality_tol: float = 0.25, quality_atol: float = 0.0,
                     saturation_tol: float = 0.05) -> LongRunVerdict:
    """Do the long-run samples stay realistic (convergent learning) or drift/oversaturate?

    The rule, deliberately simple: find the snapshot where ``metric`` is best (for a data start this is
    often step 0, for a noise start about the training chain length) and compare the last snapshot with it.

    - *drifts* when the metric got worse by more than max(``quality_tol``·|best|, ``quality_atol``)
      (a non-finite end value counts as worse). The relative part suits accuracy-like scores and FID;
      distances whose best value is near 0 (MMD, KL) need ``quality_atol``, a difference that matters;
    - *oversaturates* (images only) when the fraction of pixels with |x| > 0.99 rose by more than
      ``saturation_tol`` (absolute) from that snapshot. Relative, not absolute, because MNIST's own
      background is saturated (83% of mnist5k's pixels have |x| > 0.99).

    ``metric`` defaults to the first quality key; ``higher_is_better`` defaults to False for names
    with a word fid, kid, kl or mmd (optionally followed by digits: "fid_lenet", "toy_kl", "mmd2") and
    True otherwise. Without quality values the verdict is None: the energy and saturation alone
    cannot say whether samples are realistic.
    """
    end = result.snapshot_steps[-1]
    sat = result.saturation
    keys = [k for s in result.snapshot_steps for k in result.quality.get(s, {})]
    if not keys:
        msg = "no quality metric: pass quality_fn to long_run to judge realism"
        if sat:
            first = result.snapshot_steps[0]
            msg += f" (saturated pixels {sat[first]:.3f} at step {first}, {sat[end]:.3f} at step {end})"
        return LongRunVerdict(None, msg, end_step=end, saturation_end=sat.get(end))
    metric = metric or keys[0]
    if higher_is_better is None:  # whole words only: "confident" contains "fid"
        higher_is_better = not any(re.fullmatch(rf"{tag}\d*", w) for w in re.split(r"[^a-z0-9]+", metric.lower())
                                   for tag in _LOWER_IS_BETTER)
    q = np.array([result.quality.get(s, {}).get(metric, np.nan) for s in result.snapshot_steps], dtype=np.float64)
    if not np.isfinite(q).any():
        return LongRunVerdict(None, f"quality '{metric}' is never finite; nothing to judge", metric, end_step=end)
    best_i = int(np.nanargmax(q) if higher_is_better else np.nanargmin(q))
    best = result.snapshot_steps[best_i]
    q_best, q_end = float(q[best_i]), float(q[-1])
    worse = (q_best - q_end) if higher_is_better else (q_end - q_best)
    degradation = worse / max(abs(q_best), 1e-12) if math.isfinite(q_end) else math.inf
    drifts = not math.isfinite(q_end) or worse > max(quality_tol * abs(q_best), quality_atol)
    oversat = bool(sat) and sat[end] - sat[best] > saturation_tol
    label = {(False, False): "stays realistic", (True, False): "drifts", (False, True): "oversaturates",
             (True, True): "drifts and oversaturates"}[(drifts, oversat)]
    msg = (f"{label}: {metric} {q_best:.4g} at its best (step {best}) vs {q_end:.4g} at step {end} "
           f"({degradation:+.0%} worse than best; tolerance "
           + (f"max({quality_tol:.0%} of best, {quality_atol:.3g}))" if quality_atol > 0 else f"{quality_tol:.0%})"))
    if sat:
        msg += f"; saturated pixels {sat[best]:.3f} -> {sat[end]:.3f} (tolerance +{saturation_tol:.3f})"
    return LongRunVerdict(not (drifts or oversat), msg, metric, best, end, q_best, q_end, degradation,
                          sat.get(best), sat.get(end))


__all__ = [
    "AnatomyDiagnostic",
    "LongRunResult",
    "LongRunVerdict",
    "anatomy_correlations",
    "anatomy_diagnostic",
    "autocorrelation",
    "autocovariance",
    "ess",
    "log_spaced_steps",
    "long_run",
    "long_run_from_noise_and_data",
    "long_run_verdict",
    "mcmc_summary",
    "saturated_fraction",
    "split_rhat",
]
