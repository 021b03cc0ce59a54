"""Toy-target distances (issue 4): grid KL of the model density and sample MMD."""

import pytest
import torch

from ebmlab.data import GMM8, Rings
from ebmlab.metrics import toy_kl
from ebmlab.metrics.toy import mmd, toy_metrics


def true_energy(target):
    return lambda x: -target.log_density(x.double()).float()


def flat_energy(x):
    return torch.zeros(x.shape[0])


@pytest.mark.parametrize("target", [GMM8(), Rings()])
def test_toy_kl_is_zero_for_the_true_energy_and_large_for_a_flat_one(target):
    assert abs(toy_kl(target, true_energy(target))) < 1e-4
    assert toy_kl(target, flat_energy) > 0.5  # a flat density spreads over the whole square (1.0, 1.24)
    # a broadened target (half the energy: sd x sqrt(2)) sits in between
    assert 0.05 < toy_kl(target, lambda x: 0.5 * true_energy(target)(x)) < toy_kl(target, flat_energy)


def test_mmd_of_two_samples_of_one_target_is_near_zero():
    g = torch.Generator().manual_seed(0)
    a, b = GMM8().sample(2000, g), GMM8().sample(2000, g)
    other = Rings().sample(2000, g) / 3  # rings scaled into the same square: a different distribution
    same, diff = mmd(a, b), mmd(a, other)
    assert abs(same) < 2e-3 and diff > 0.05 and diff > 50 * abs(same)
    with pytest.raises(ValueError, match="two samples"):
        mmd(a[:1], b)


def test_toy_metrics_reports_both():
    target = GMM8()
    m = toy_metrics(target, true_energy(target), target.sample(1000, torch.Generator().manual_seed(1)))
    assert set(m) == {"toy_kl", "toy_mmd"} and m["toy_kl"] < 1e-4 and abs(m["toy_mmd"]) < 5e-3
