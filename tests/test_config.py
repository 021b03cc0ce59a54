import json

import pytest

from ebmlab.config import Config, ConfigError, parse_set_args, valid_keys
from ebmlab.presets import DEFAULT_PRESET, describe_presets, get_preset, preset_names


def test_round_trip_json():
    cfg = get_preset("quick-gmm8", {"sampler.n_steps": 7, "optim.betas": [0.5, 0.9]})
    again = Config.from_json(cfg.to_json())
    assert again == cfg
    assert json.loads(cfg.to_json())["sampler"]["n_steps"] == 7


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ConfigError, match=r"sampler\.step_sise.*sampler\.step_size"):
        Config().with_overrides({"sampler.step_sise": 0.1})
    with pytest.raises(ConfigError, match="nosuch"):
        Config().with_overrides({"nosuch.key": 1})


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="train.iterations.*int"):
        Config().with_overrides({"train.iterations": "many"})
    with pytest.raises(ConfigError, match="model.spectral_norm"):
        Config().with_overrides({"model.spectral_norm": "perhaps"})


@pytest.mark.parametrize("key,value", [("sampler.step_size", 0.0), ("init.reinit_prob", 1.5),
                                       ("sampler.name", "hmc"), ("data.image_size", 30), ("sampler.noise", -1)])
def test_out_of_range_names_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Config().with_overrides({key: value})


def test_cli_strings_are_coerced():
    cfg = Config().with_overrides(parse_set_args(["train.iterations=5", "model.spectral_norm=true",
                                                  "sampler.step_size=1e-2", "optim.betas=0.5,0.99"]))
    assert cfg.train.iterations == 5 and cfg.model.spectral_norm is True
    assert cfg.sampler.step_size == 0.01 and cfg.optim.betas == [0.5, 0.99]


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="model.name"):
        Config().with_overrides({"data.name": "gmm8"})
    with pytest.raises(ConfigError, match="image_size"):
        Config().with_overrides({"data.name": "cifar10", "data.image_size": 28})


def test_lr_floor_never_raises_the_lr():
    from ebmlab.train import lr_at

    cfg = get_preset("quick-mnist5k")  # 2e-3 decaying to a 5e-4 floor
    decay = cfg.optim.lr_decay
    assert lr_at(cfg, 0) == pytest.approx(2e-3) and lr_at(cfg, 2000) == pytest.approx(2e-3 * decay**2000)
    assert lr_at(cfg, 10**6) == pytest.approx(5e-4)
    low = get_preset("quick-mnist5k", {"optim.lr": 1e-4})  # below the floor: constant, not lifted to 5e-4
    assert lr_at(low, 0) == lr_at(low, 5000) == pytest.approx(1e-4)


def test_presets_all_validate():
    names = preset_names()
    for must in ("quick-mnist5k", "quick-gmm8", "anatomy-nonconvergent-cifar10", "anatomy-convergent-mnist",
                 "anatomy-gmm8-convergent", "anatomy-gmm8-nonconvergent", "anatomy-rings-convergent",
                 "anatomy-rings-nonconvergent", "shortrun-cifar10", "coopnets-cifar10", "coopnets-mnist",
                 "coopnets-mnist5k"):
        assert must in names
    for n in names:
        get_preset(n)
    assert DEFAULT_PRESET == "quick-mnist5k"
    assert all(desc for _, desc in describe_presets())
    with pytest.raises(ConfigError, match="quick-gmm8"):
        get_preset("quick-gmm")


def test_anatomy_numbers():
    c = get_preset("anatomy-nonconvergent-cifar10")
    assert (c.sampler.noise, c.sampler.n_steps, c.init.name, c.data.noise, c.train.batch_size) == \
        (1e-2, 150, "uniform", 3e-2, 100)
    assert c.train.loss_scale == pytest.approx(2 / 1e-2**2)
    m = get_preset("anatomy-convergent-mnist")
    assert m.model.name == "anatomy-nonlocal" and m.optim.name == "sgd" and m.sampler.n_steps == 500
    assert m.optim.lr * m.train.loss_scale == pytest.approx(1e-2)  # anatomy scales SGD lr by eps^2/2


def test_valid_keys_cover_design():
    keys = set(valid_keys())
    for k in ("data.name", "data.noise", "data.image_size", "data.root", "model.name", "model.n_f",
              "model.spectral_norm", "model.activation", "sampler.name", "sampler.step_size", "sampler.noise",
              "sampler.n_steps", "sampler.clip_grad", "init.name", "init.buffer_size", "init.reinit_prob",
              "optim.name", "optim.lr", "optim.betas", "optim.lr_min", "optim.lr_decay", "reg.l2_energy",
              "reg.weight_decay", "train.iterations", "train.batch_size", "train.seed", "train.device",
              "train.log_every", "train.checkpoint_every"):
        assert k in keys
