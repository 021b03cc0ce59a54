"""Every sampler against Gaussian energies with known moments (exact discretised stationary laws)."""

import math

import pytest
import torch
import torch.nn as nn

from ebmlab.config import SamplerConfig
from ebmlab.nets import VanillaNet, apply_spectral_norm
from ebmlab.samplers import MALA, SGD, SGLD, Langevin, make_kernel, run_chain, sample

S = 0.7  # target sd: E(x) = x^2 / (2 s^2)


def gaussian_energy(x):
    return x.flatten(1).pow(2).sum(1) / (2 * S**2)


def stationary_samples(kernel, n_chains=20000, dim=2, steps=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n_chains, dim, generator=g, dtype=torch.float64) * S
    return run_chain(kernel, gaussian_energy, x0, steps, g, record_every=50).x


def assert_variance(x, expected, label):
    # sample variance of n i.i.d. normal coordinates has sd expected*sqrt(2/n); allow 4 sd
    n = x.numel()
    tol = 4 * expected * math.sqrt(2 / n)
    got = float(x.var())
    assert abs(got - expected) < tol, f"{label}: variance {got:.5f}, expected {expected:.5f} ± {tol:.5f}"


def test_langevin_matches_discretised_stationary_variance():
    eps = 0.6  # h = eps^2/2 = 0.18; h/(2 s^2) = 0.18: the discretisation bias is 22%, far outside the tolerance
    x = stationary_samples(Langevin(eps), steps=100)
    h = eps**2 / 2
    exact = S**2 / (1 - h / (2 * S**2))
    assert_variance(x, exact, "langevin")
    assert abs(exact - S**2) > 10 * exact * math.sqrt(2 / x.numel())  # the test can tell the bias apart


def test_langevin_temperature_scales_noise():
    eps, T = 0.3, 2.0
    x = stationary_samples(Langevin(eps, temperature=T), steps=250)
    h = eps**2 / 2
    # x' = (1 - h/s^2) x + eps sqrt(T) xi  ->  var = eps^2 T / (1 - (1 - h/s^2)^2)
    a = 1 - h / S**2
    assert_variance(x, eps**2 * T / (1 - a * a), "langevin T=2")


def test_sgld_matches_discretised_stationary_variance():
    eta, sigma = 0.2, 0.3  # not the Langevin pairing sigma^2 = 2 eta
    x = stationary_samples(SGLD(eta, sigma))
    exact = sigma**2 * S**2 / (eta * (2 - eta / S**2))
    assert_variance(x, exact, "sgld")


def test_mala_matches_target():
    x = stationary_samples(MALA(0.8), steps=300)
    assert_variance(x, S**2, "mala")
    assert abs(float(x.mean())) < 4 * S / math.sqrt(x.numel())


def test_mala_records_acceptance():
    g = torch.Generator().manual_seed(0)
    res = run_chain(MALA(0.8), gaussian_energy, torch.randn(500, 2, generator=g), 50, g)
    assert res.accept is not None and 0.3 < res.acceptance_rate < 1.0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_converges_to_mode(momentum):
    g = torch.Generator().manual_seed(0)
    x0 = 3 * torch.randn(64, 5, generator=g)
    res = run_chain(SGD(0.1, momentum), gaussian_energy, x0, 300, g)
    assert res.x.abs().max() < 1e-4
    # energy recorded per step decreases overall
    assert res.mean_energy[-1] < res.mean_energy[0] * 1e-3


def test_clip_and_clamp():
    k = SGLD(10.0, 0.0, clip_grad=0.5)
    x0 = torch.full((4, 3), 0.9)
    res = run_chain(k, gaussian_energy, x0, 1)
    step = (x0 - res.x).flatten(1).norm(dim=1)
    assert torch.allclose(step, torch.full((4,), 5.0), atol=1e-5)  # eta * clipped norm 0.5
    x_big = run_chain(SGLD(1.0, 10.0, clamp=True), gaussian_energy, x0, 3, torch.Generator().manual_seed(0)).x
    assert x_big.abs().max() <= 1.0


@pytest.mark.parametrize("name", ["langevin", "sgld", "sgd", "mala"])
def test_kernel_contract(name):
    """Input untouched, same seed -> same chain, network .grad and buffers untouched."""
    torch.manual_seed(0)
    net = apply_spectral_norm(VanillaNet(1, 4, 28))
    net.train()
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    before_grads = [p.grad.clone() for p in net.parameters()]
    before_bufs = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = SamplerConfig(name=name, step_size=0.1 if name != "sgld" else 1.0, noise=0.01, n_steps=5, momentum=0.5)
    x0 = torch.rand(3, 1, 28, 28) * 2 - 1
    x0_copy = x0.clone()
    a = sample(net, cfg, x0, torch.Generator().manual_seed(7))
    b = sample(net, cfg, x0, torch.Generator().manual_seed(7))
    assert torch.equal(x0, x0_copy)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, x0)
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), before_grads))
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before_bufs.items())
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert a.energy.shape == (5, 3) and a.grad_norm.shape == (5, 3)


def test_record_every_and_snapshots():
    g = torch.Generator().manual_seed(0)
    res = run_chain(Langevin(0.1), gaussian_energy, torch.randn(8, 2, generator=g), 10, g, record_every=3,
                    snapshot_steps=[0, 5, 10, 99])
    assert res.steps.tolist() == [0, 3, 6, 9]
    assert sorted(res.snapshots) == [0, 5, 10]
    assert torch.equal(res.snapshots[10], res.x)


def test_reference_term_shrinks_samples():
    """CoopNets' Gaussian reference: E + |x|^2/(2 sigma^2) with a flat E gives N(0, sigma^2) (MALA exact)."""
    flat = nn.Module()
    flat.forward = lambda x: x.flatten(1).sum(1) * 0.0
    net = nn.Sequential()  # no parameters; wrap a function
    net.forward = lambda x: x.flatten(1).sum(1) * 0.0
    cfg = SamplerConfig(name="mala", step_size=0.3, n_steps=300, ref_sigma=0.5)
    g = torch.Generator().manual_seed(0)
    x = sample(net, cfg, torch.randn(20000, 2, generator=g, dtype=torch.float64), g).x
    assert_variance(x, 0.25, "reference")


def test_make_kernel_names():
    for n in ("langevin", "sgld", "sgd", "mala"):
        assert make_kernel(SamplerConfig(name=n)).name == n
