"""ebmlab.diagnostics: anatomy correlations, ESS / split R-hat, long-run chains and their figures.

Stochastic checks use fixed seeds and tolerances from the math: Bartlett's variance of a sample
autocorrelation, Sokal's variance of a windowed integrated-autocorrelation-time estimate, and the exact
F distribution of split R-hat for i.i.d. normal draws.
"""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import stats

from ebmlab.config import SamplerConfig
from ebmlab.diagnostics import (
    LongRunResult,
    anatomy_correlations,
    anatomy_diagnostic,
    autocorrelation,
    ess,
    log_spaced_steps,
    long_run,
    long_run_from_noise_and_data,
    long_run_verdict,
    mcmc_summary,
    split_rhat,
)
from ebmlab.plotting.diagnostics import plot_anatomy_diagnostics, plot_long_run


def ar1(rho, n, m, seed):
    """Stationary AR(1) chains [n, m] with unit marginal variance."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, m))
    x[0] = rng.standard_normal(m)
    e = rng.standard_normal((n, m)) * math.sqrt(1 - rho**2)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + e[t]
    return x


def bartlett_sd(rho, k, n):
    """Std of the lag-k sample autocorrelation of an AR(1) series of length n (Bartlett's formula)."""
    var = ((1 + rho**2) * (1 - rho ** (2 * k)) / (1 - rho**2) - 2 * k * rho ** (2 * k)) / n
    return math.sqrt(max(var, 1.0 / n))


# --------------------------------------------------------------------------- anatomy diagnostic


def test_anatomy_matches_np_correlate_definition():
    rng = np.random.default_rng(0)
    d, r = rng.normal(0.3, 1.0, 300), rng.gamma(2.0, 1.0, 300)
    out = anatomy_correlations(d, r)
    n = 300
    dn = d / np.sqrt(np.sum(d**2) / (n - 1))
    rn = (r - r.mean()) / r.std(ddof=1)
    full = np.correlate(dn, rn, "full") / (n - 1)
    np.testing.assert_allclose(out.cross, full[n - 1 - 15: n + 15], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out.acf_d, (np.correlate(dn, dn, "full") / (n - 1))[n - 1: n + 15], rtol=1e-12)
    np.testing.assert_allclose(out.acf_r, (np.correlate(rn, rn, "full") / (n - 1))[n - 1: n + 15], rtol=1e-12)
    assert out.acf_lags.tolist() == list(range(16)) and out.cross_lags.tolist() == list(range(-15, 16))


def test_anatomy_exact_small_case():
    # d is not centred: alternating ±1 has RMS sqrt(4/3) over n - 1 = 3, so d/RMS = ±sqrt(3)/2
    out = anatomy_correlations([1, -1, 1, -1], [0, 1, 2, 3])
    assert out.acf_lags.tolist() == [0, 1, 2, 3]  # lags stop at n - 1
    np.testing.assert_allclose(out.acf_d, [1.0, -0.75, 0.5, -0.25], atol=1e-12)
    # r centred and scaled by its ddof=1 std sqrt(5/3): lag-1 sum 1.25 / (5/3) / 3
    np.testing.assert_allclose(out.acf_r[:2], [1.0, 0.25], atol=1e-12)
    lag0 = -2 * (math.sqrt(3) / 2) / math.sqrt(5 / 3) / 3
    np.testing.assert_allclose(out.cross[3], lag0, atol=1e-12)


def test_anatomy_ar1_and_lead_lag_from_records():
    rho, n, lag = 0.6, 2000, 3
    d = ar1(rho, n + lag, 1, seed=1)[:, 0]
    noise = np.random.default_rng(2).standard_normal(n) * 0.5
    r = 5.0 + d[:n] + noise  # r_t = d_{t-3} + noise: d leads r by 3 iterations
    d = d[lag:]
    # 500 wild early iterations, a record without r, a diverged NaN record, shuffled order
    junk = [{"iteration": i, "d": 1e3 * (-1) ** i, "r": 1e3 * i} for i in range(500)]
    good = [{"iteration": 500 + t, "d": float(d[t]), "r": float(r[t])} for t in range(n)]
    recs = junk + good + [{"iteration": 9999, "d": 0.1}, {"iteration": 10000, "d": "nan", "r": 1.0}]
    recs = recs[::-1]
    out = anatomy_diagnostic(recs)  # t_gap_max = 2000: only the good tail counts
    assert out.window == (500, n)
    np.testing.assert_allclose(out.cross, anatomy_correlations(d, r).cross, rtol=1e-12)
    # mean-zero d: E acf_d[k] = rho^k (n - k)/(n - 1) since d is scaled by its RMS, not centred
    for k in range(16):
        expect = rho**k * (n - k) / (n - 1)
        assert abs(out.acf_d[k] - expect) < 4 * bartlett_sd(rho, k, n), k
    # cross[k] = corr(d_{t+k}, r_t) = rho^|k+3| / sqrt(1 + 0.25): peak at k = -3
    assert out.cross_lags[np.argmax(out.cross)] == -lag
    assert abs(out.cross.max() - 1 / math.sqrt(1.25)) < 4 * math.sqrt(1 / n) + 0.01


def test_anatomy_degenerate_inputs():
    out = anatomy_correlations(np.zeros(10), np.ones(10))
    assert np.isnan(out.acf_d).all() and np.isnan(out.cross).all()
    with pytest.raises(ValueError, match="at least 2"):
        anatomy_correlations([1.0], [1.0])
    with pytest.raises(ValueError, match="finite 'd' and 'r'"):
        anatomy_diagnostic([{"iteration": 0, "loss": 1.0}])


# --------------------------------------------------------------------------- MCMC summaries


def test_autocorrelation_of_ar1_is_rho_to_the_k():
    rho, n = 0.7, 20000
    acf = autocorrelation(ar1(rho, n, 1, seed=3)[:, 0], max_lag=10)
    assert acf.shape == (11,) and acf[0] == pytest.approx(1.0)
    for k in range(11):
        # Bartlett std plus the O(tau/n) bias of centring at the sample mean
        assert abs(acf[k] - rho**k) < 4 * bartlett_sd(rho, k, n) + (1 + rho) / (1 - rho) / n, k
    assert autocorrelation(torch.zeros(50, 3).normal_(generator=torch.Generator().manual_seed(0)), 4).shape == (5, 3)


@pytest.mark.parametrize("rho,n,m,seed", [(0.0, 2500, 4, 10), (0.5, 2500, 4, 11), (0.9, 5000, 4, 12)])
def test_ess_of_ar1_chains(rho, n, m, seed):
    N = n * m
    tau = (1 + rho) / (1 - rho)
    # Sokal: var(tau_hat)/tau^2 ~ 2(2M + 1)/N for a window M; Geyer's truncation lands at M <~ 3 tau
    rel_sd = math.sqrt(2 * (2 * math.ceil(3 * tau) + 1) / N)
    est = ess(ar1(rho, n, m, seed))
    assert abs(est / (N / tau) - 1) < 4 * rel_sd, (est, N / tau)


def test_split_rhat_iid_follows_its_f_distribution():
    x = np.random.default_rng(4).standard_normal((2000, 4))
    # split: 8 chains of 1000. For iid normals R^2 = (n-1)/n + F/n, F ~ F(m-1, m(n-1)) exactly
    n, m = 1000, 8
    lo, hi = (math.sqrt((n - 1 + stats.f.ppf(q, m - 1, m * (n - 1))) / n) for q in (1e-4, 1 - 1e-4))
    assert lo < split_rhat(x) < hi
    assert abs(ess(x) / x.size - 1) < 4 * math.sqrt(2 * 7 / x.size)  # Sokal with M = 3 (tau = 1)
    s = mcmc_summary(torch.from_numpy(x), discard=0.5)
    assert s["n_steps"] == 1000 and s["n_chains"] == 4 and s["ess_per_chain"] == pytest.approx(s["ess"] / 4)


def test_split_rhat_flags_stuck_and_drifting_chains():
    rng = np.random.default_rng(5)
    levels = np.array([0.0, 1.0, 2.0, 3.0])
    x = levels + 0.1 * rng.standard_normal((1000, 4))
    # split chains at 0,0,1,1,2,2,3,3: var of means 10/7 (ddof 1), W = 0.01 -> R ~ sqrt(1 + 143)
    assert split_rhat(x) == pytest.approx(math.sqrt(1 + (10 / 7) / 0.01), rel=0.05)
    assert ess(x) < 0.01 * x.size  # disagreeing chains carry almost no information about the mean
    assert split_rhat(np.tile(levels, (100, 1))) == math.inf
    assert math.isnan(split_rhat(np.ones((100, 4))))
    # one chain with a trend: the halves disagree (means 1/4, 3/4, W = 1/48) -> R = sqrt(~1 + 6)
    trend = np.linspace(0, 1, 2001)[:, None]
    assert split_rhat(trend) == pytest.approx(math.sqrt(7.0), rel=0.01)


def test_mcmc_summaries_reject_bad_input():
    with pytest.raises(ValueError, match="at least 4"):
        ess(np.zeros((6, 2)))
    with pytest.raises(ValueError, match=r"\[n_steps, n_chains\]"):
        split_rhat(np.zeros((4, 2, 2)))
    x = np.random.default_rng(6).standard_normal((100, 2))
    x[50, 1] = np.nan
    assert math.isnan(ess(x)) and math.isnan(split_rhat(x))


# --------------------------------------------------------------------------- long-run chains


class Quadratic(nn.Module):
    """E(x) = |x|^2 / (2 s^2) per sample: N(0, s^2) in every coordinate."""

    def __init__(self, s):
        super().__init__()
        self.log_s = nn.Parameter(torch.tensor(math.log(s)))

    def forward(self, x):
        return 0.5 * x.flatten(1).pow(2).sum(1) / self.log_s.exp() ** 2


class Linear(nn.Module):
    """E(x) = -c sum(x): pushes every pixel up; with clamping the chains pile up at +1."""

    def __init__(self, c=5.0):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c))

    def forward(self, x):
        return -self.c * x.flatten(1).sum(1)


def gauss_kl(target_var):
    """Quality of samples: KL(N(0, v_hat) || N(0, target)) per coordinate (0 when the variance matches)."""

    def q(x):
        a = float(x.var()) / target_var
        kl = 0.5 * (a - 1 - math.log(a)) if a > 0 else math.inf  # collapsed samples: infinitely far
        return {"kl_var": kl, "var": float(x.var())}

    return q


def test_log_spaced_steps():
    assert log_spaced_steps(1000, 8) == [0, 1, 3, 10, 32, 100, 316, 1000]
    assert log_spaced_steps(3, 8) == [0, 1, 2, 3]
    assert log_spaced_steps(0, 8) == [0]


def test_long_run_on_a_gaussian_stays_realistic(tmp_path):
    s, eps, B, n_steps = 0.3, 0.1, 64, 300
    stat_var = s**2 / (1 - eps**2 / (4 * s**2))  # unadjusted Langevin's stationary variance
    cfg = SamplerConfig(name="langevin", step_size=eps)
    x0 = 2 * torch.rand(B, 1, 4, 4, generator=torch.Generator().manual_seed(0)) - 1
    res = long_run(Quadratic(s), cfg, x0, n_steps, torch.Generator().manual_seed(1), quality_fn=gauss_kl(stat_var))
    assert res.energy.shape == (n_steps, B) and res.grad_norm.shape == (n_steps, B)
    assert res.steps.tolist() == list(range(n_steps))
    assert res.snapshot_steps == log_spaced_steps(n_steps, 8) == sorted(res.snapshots) == sorted(res.quality)
    assert all(v.shape == x0.shape for v in res.snapshots.values())
    assert torch.equal(res.snapshots[0], x0)
    # contraction 1 - h/s^2 per step: after 300 steps the chains are stationary; 1024 coordinates give
    # a sample variance with relative sd sqrt(2/1024)
    assert abs(res.quality[n_steps]["var"] / stat_var - 1) < 4 * math.sqrt(2 / (B * 16))
    # U(-1, 1) start has 1% of |x| > 0.99; N(0, 0.3^2) has ~0.1%
    assert res.saturation[0] == pytest.approx(0.01, abs=0.01) and res.saturation[n_steps] < 0.01
    # KL of a matched variance is ~ (rel. error)^2 / 4 < 0.02; 0.05 is a difference that matters
    v = long_run_verdict(res, quality_atol=0.05)
    assert v.convergent is True and v.metric == "kl_var" and v.summary.startswith("stays realistic"), v.summary
    json.dumps(res.to_dict())
    assert res.to_dict()["mcmc"]["n_chains"] == B
    plot_long_run(res, path=tmp_path / "long.png")
    assert (tmp_path / "long.png").stat().st_size > 0


def test_long_run_flags_oversaturation_and_plots_noise_and_data(tmp_path):
    cfg = SamplerConfig(name="sgld", step_size=0.01, noise=0.01, clamp=True)
    data = 0.3 * torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    runs = long_run_from_noise_and_data(Linear(), cfg, data, 16, 200, torch.Generator().manual_seed(3),
                                        quality_fn=gauss_kl(0.09))
    assert set(runs) == {"noise", "data"} and runs["data"].label == "data"
    for r in runs.values():
        assert r.saturation[200] > 0.99  # drift 0.05/step for 200 steps: every pixel pinned at +1
        v = r.verdict()
        assert v.convergent is False and "oversaturates" in v.summary and "drifts" in v.summary, v.summary
    plot_long_run(runs, path=tmp_path / "both.png", title="linear energy")
    assert (tmp_path / "both.png").stat().st_size > 0


def test_verdict_rules_on_hand_made_results():
    def fake(quality, saturation):
        steps = [0, 10, 100, 1000]
        e = torch.zeros(4, 2)
        return LongRunResult(torch.arange(4), e, e, steps, {s: torch.zeros(2, 1, 2, 2) for s in steps},
                             {s: q for s, q in zip(steps, quality)}, dict(zip(steps, saturation)))

    acc = lambda vals: [{"confident": v} for v in vals]  # noqa: E731
    stays = fake(acc([0.0, 0.9, 0.95, 0.9]), [0.8, 0.8, 0.8, 0.82])
    v = long_run_verdict(stays)
    assert v.convergent and v.best_step == 100 and v.degradation == pytest.approx(0.05 / 0.95)
    assert long_run_verdict(fake(acc([0.0, 0.9, 0.95, 0.5]), [0.8] * 4)).summary.startswith("drifts:")
    v = long_run_verdict(fake(acc([0.0, 0.9, 0.95, 0.9]), [0.8, 0.8, 0.8, 0.9]))
    assert v.convergent is False and v.summary.startswith("oversaturates")
    # lower-is-better inferred from the name: FID best at step 100, tripled by the end
    fid = fake([{"fid_lenet": f} for f in (300.0, 20.0, 10.0, 30.0)], [0.8] * 4)
    v = long_run_verdict(fid)
    assert v.best_step == 100 and v.convergent is False and v.degradation == pytest.approx(2.0)
    assert long_run_verdict(fid, higher_is_better=True).best_step == 0
    none = long_run_verdict(fake([{}] * 4, [0.8] * 4))
    assert none.convergent is None
    no_q = LongRunResult(torch.arange(4), torch.zeros(4, 2), torch.zeros(4, 2), [0, 4], {}, {}, {0: 0.0, 4: 1.0})
    assert long_run_verdict(no_q).convergent is None


def test_plot_anatomy_diagnostics(tmp_path):
    rng = np.random.default_rng(7)
    recs = [{"iteration": i, "d": float(rng.normal()), "r": float(rng.gamma(2.0))} for i in range(100)]
    fig = plot_anatomy_diagnostics(recs, path=tmp_path / "anatomy.png", title="iid")
    assert len(fig.axes) == 4 and (tmp_path / "anatomy.png").stat().st_size > 0
    plot_anatomy_diagnostics(anatomy_diagnostic(recs, max_lag=5), path=tmp_path / "a2.png")


def test_long_run_records_fp32_energies_under_auto_precision(monkeypatch):
    """precision auto would sample in bf16 on this hardware; a long run's energy trace must not be rounded."""
    from ebmlab.samplers import fast as fastpath

    monkeypatch.setattr(fastpath, "native_bf16", lambda device_type: True)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 1),
                        nn.Flatten(0))
    with torch.no_grad():
        net[-2].bias.fill_(200.0)  # |E| ~ 200: bf16 would round energies to whole numbers
    cfg = SamplerConfig(name="sgld", step_size=0.01, noise=0.01, n_steps=3, precision="auto")
    x0 = torch.rand(5, 1, 8, 8) * 2 - 1
    res = long_run(net, cfg, x0, 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(res.energy[0], net(x0), atol=1e-4)  # fp32: matches to the last digits
    assert fastpath.for_traces(cfg).precision == "fp32"
    assert fastpath.for_traces(dataclasses.replace(cfg, precision="bf16")).precision == "bf16"  # kept as asked
