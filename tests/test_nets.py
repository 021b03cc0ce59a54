import pytest
import torch

from ebmlab.config import ModelConfig
from ebmlab.nets import Generator, build_energy


@pytest.mark.parametrize("name", ["anatomy-vanilla", "anatomy-nonlocal", "shortrun", "coopnets"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 32, 32), (3, 32, 32), (3, 28, 28)])
def test_image_nets_shapes(name, shape):
    net = build_energy(ModelConfig(name=name, n_f=4), shape)
    out = net(torch.rand(3, *shape) * 2 - 1)
    assert out.shape == (3,)
    assert net(torch.rand(1, *shape)).shape == (1,)  # batch of one keeps its dimension


def test_toy_net():
    net = build_energy(ModelConfig(name="toy"), (2,))
    assert net(torch.randn(5, 2)).shape == (5,)
    widths = [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [32, 64, 64, 64, 1]


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 32, 32), (3, 32, 32)])
def test_generator_shapes(shape):
    g = Generator(shape[0], shape[1], 100, 8)
    x = g(torch.randn(4, 100))
    assert x.shape == (4, *shape) and x.abs().max() <= 1


def test_spectral_norm_bounds_singular_values():
    torch.manual_seed(0)
    net = build_energy(ModelConfig(name="anatomy-vanilla", n_f=4, spectral_norm=True), (1, 28, 28))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(10):  # power iteration runs on each training-mode forward
        loss = net(torch.randn(8, 1, 28, 28)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    n = 0
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            w = m.weight.flatten(1)  # the parametrized (normalised) weight
            sigma = float(torch.linalg.matrix_norm(w.detach(), ord=2))
            assert sigma == pytest.approx(1.0, abs=0.05)
            n += 1
    assert n == 5
