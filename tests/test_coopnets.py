import torch

from ebmlab import samplers
from ebmlab.coopnets import GeneratorInit
from ebmlab.data import load_dataset
from ebmlab.init import make_init
from ebmlab.nets import build_energy
from ebmlab.presets import get_preset
from ebmlab.train import train


def _small(over=None):
    return get_preset("coopnets-mnist5k", {"model.n_f": 4, "init.gen_n_f": 4, "sampler.n_steps": 5,
                                           "train.batch_size": 16, "train.progress": False, **(over or {})})


def test_presets_carry_official_numbers():
    c = get_preset("coopnets-cifar10")
    assert (c.sampler.name, c.sampler.step_size, c.sampler.ref_sigma, c.sampler.n_steps) == ("langevin", 0.002,
                                                                                              0.016, 15)
    assert (c.init.gen_sigma, c.optim.lr, c.init.gen_lr, c.optim.betas[0], c.init.gen_beta1) == (0.3, 0.007, 1e-4,
                                                                                                  0.5, 0.5)
    assert c.train.batch_size == 100 and c.init.latent_dim == 100 and c.init.gen_latent_steps == 0


def test_generator_init_shapes_and_teaching_step_lowers_regression_loss():
    torch.manual_seed(0)
    cfg = _small({"init.gen_lr": 1e-4})  # the official generator lr
    data = load_dataset(cfg.data)
    init = make_init(cfg, data)
    assert isinstance(init, GeneratorInit)
    net = build_energy(cfg.model, data.sample_shape)
    g = torch.Generator().manual_seed(0)
    y_hat, ctx = init.draw(16, g)
    assert y_hat.shape == (16, 1, 28, 28) and y_hat.device == data.train.device
    revised = samplers.sample(net, cfg.sampler, y_hat, g).x  # the preset's revision: 5 steps of size 1
    with torch.no_grad():
        before = float(init.regression_loss(ctx["z"], revised))
    info = init.update(ctx, revised)
    with torch.no_grad():
        after = float(init.regression_loss(ctx["z"], revised))
    assert after < before
    assert float(info["gen_loss"]) == before and float(info["revision_dist"]) > 0


def test_generator_chains_use_the_shared_kernels(monkeypatch):
    calls = []
    real = samplers.SGLD.step

    def spy(self, *a, **k):
        calls.append(type(self).__name__)
        return real(self, *a, **k)

    monkeypatch.setattr(samplers.SGLD, "step", spy)
    cfg = _small({"train.iterations": 2, "train.eval_every": 0})
    import tempfile

    run = train(cfg, tempfile.mkdtemp() + "/coop", evaluator=None)
    assert calls.count("SGLD") == 2 * cfg.sampler.n_steps
    recs = [r for r in run.records if not r.get("eval")]
    assert {"gen_loss", "revision_dist", "d", "loss"} <= recs[-1].keys()


def test_latent_inference_moves_z():
    cfg = _small({"init.gen_latent_steps": 3})
    data = load_dataset(cfg.data)
    init = make_init(cfg, data)
    g = torch.Generator().manual_seed(0)
    y_hat, ctx = init.draw(8, g)
    z = init.infer_latent(ctx["z"], torch.zeros_like(y_hat), g)
    assert z.shape == ctx["z"].shape and not torch.equal(z, ctx["z"])
