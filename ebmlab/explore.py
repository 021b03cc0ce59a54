"""The logic behind the Langevin explorer: run a sampler on a trained EBM and see what it does.

Everything the widget notebook (``notebooks/05_langevin_explorer``) shows comes from here, so it runs and
is tested without a browser::

    model = load_model()                         # the shipped quick-mnist5k model (or a run folder / .pt)
    res = explore(model, sampler="sgld", step_size=1.0, noise=0.01, n_steps=100, init="uniform", seed=0)
    res.samples, res.energy, res.grad_norm, res.snapshots, res.figure
    panel, state = build_explorer(model)         # ipywidgets panel wired to explore()

**What the sliders mean.** The step-size slider is ``sampler.step_size`` exactly as a training config
reads it, and the noise slider is the standard deviation σ of the Gaussian noise added at every step
(sgld and langevin; sgd adds none and mala's is fixed at ε, so those two ignore it). With ξ ~ N(0, I):

=========  ========================================  ==================================================
sampler    one step                                  config it runs (what to put in a training config)
=========  ========================================  ==================================================
sgld       x ← x − η∇E(x) + σξ                       sampler.step_size = η, sampler.noise = σ
langevin   x ← x − (ε²/2)∇E(x) + σξ                  sampler.step_size = ε, sampler.temperature = (σ/ε)²
sgd        x ← x − η∇E(x)                            sampler.step_size = η (no noise)
mala       proposal x − (ε²/2)∇E(x) + εξ, then MH    sampler.step_size = ε (noise fixed at ε: exactness)
=========  ========================================  ==================================================

Written as x ← x − h∇E(x) + σξ, unadjusted Langevin samples approximately from exp(−E/T) with
T = σ²/(2h): textbook Langevin is T = 1 (σ = ε for ``langevin``, σ = √(2η) for ``sgld``). The short-run
EBMs of ebm-anatomy and short_run train with η = 1 and σ ≈ 0.01, i.e. T ≈ 5e−5, far colder than the
density exp(−E) itself (Nijkamp et al., AAAI 2020, Sec. 3). ``noise=0`` switches the noise off
(``sgld`` becomes ``sgd``; ``langevin`` runs at T = 0); ``noise=None`` takes each sampler's own noise
(the model's trained σ for ``sgld``, T = 1 for ``langevin``).

The shipped model (:func:`shipped_model_path`) is regenerated with ``python -m ebmlab.explore --export
RUN_DIR`` (see :func:`load_model`).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import Config, SamplerConfig
from .data import Dataset, dataset_shape, load_dataset
from .diagnostics import LongRunResult, long_run
from .init import ChainInit, DataInit, GaussianInit, ReplayBuffer, UniformInit
from .nets import build_energy
from .rundir import RunDir, atomic_write_bytes, load_checkpoint, read_json, write_json
from .samplers import energy_and_grad, energy_function, sampling_mode
from .samplers.fast import for_traces

SAMPLERS = ("sgld", "langevin", "sgd", "mala")
INITS = ("uniform", "gaussian", "data", "persistent")
ASSET_FORMAT = "ebmlab-explorer-model/1"
# The command that made the shipped model; written into the asset so a copy explains itself.
SHIPPED_COMMAND = ("ebmlab train --preset quick-mnist5k --out /tmp/explorer_model && "
                   "python -m ebmlab.explore --export /tmp/explorer_model --overwrite")
REFERENCE_N = 500  # held-out points whose mean energy is the figure's E(data) line


def shipped_model_path() -> Path:
    """Where the shipped quick-mnist5k explorer model lives inside the package."""
    return Path(__file__).resolve().parent / "assets" / "quick_mnist5k.pt"


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------

@dataclass
class ExplorerModel:
    """A trained energy network ready to sample, with what the explorer needs around it.

    net: E(x) -> [B] on its device, in eval mode. cfg: the config it was trained with (the explorer's
    defaults come from ``cfg.sampler``). bank: saved persistent chains [N, ...] or None. data: the
    dataset, loaded on first need (``init='data'``, :meth:`load_data`). info: provenance of the weights.
    """

    net: torch.nn.Module
    cfg: Config
    source: str
    bank: torch.Tensor | None = None
    data: Dataset | None = None
    info: dict = field(default_factory=dict)
    _inits: dict = field(default_factory=dict, repr=False)
    _data_energy: float | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return dataset_shape(self.cfg.data)

    @property
    def inits(self) -> tuple[str, ...]:
        """The initialisations this model offers: 'persistent' only where a chain bank was saved."""
        return INITS if self.bank is not None else tuple(i for i in INITS if i != "persistent")

    def load_data(self) -> Dataset:
        """The training data (loaded once; mnist5k takes a few seconds): 'data' init and E(data)."""
        if self.data is None:
            self.data = load_dataset(self.cfg.data, self.device)
        return self.data

    def data_energy(self) -> float | None:
        """Mean energy of held-out data, or None while the data is not loaded (loading is explicit)."""
        if self._data_energy is None and self.data is not None:
            x = self.data.heldout[:REFERENCE_N].to(self.device)
            with sampling_mode(self.net), torch.no_grad():
                self._data_energy = float(energy_function(self.net, self.cfg.sampler.ref_sigma)(x).mean())
        return self._data_energy

    def chain_init(self, name: str) -> ChainInit:
        """The :mod:`ebmlab.init` initialiser for ``name``, built once (a bank copy is not cheap)."""
        if name not in self._inits:
            ic, dev = self.cfg.init, self.device
            if name == "uniform":
                init = UniformInit(self.sample_shape, dev, ic.noise_scale)
            elif name == "gaussian":
                init = GaussianInit(self.sample_shape, dev, ic.noise_scale)
            elif name == "data":
                init = DataInit(self.load_data().train, ic.data_noise)
            else:  # persistent: continue saved chains as they are, none restarted, nothing written back
                init = ReplayBuffer(self.sample_shape, dev, self.bank.shape[0], reinit_prob=0.0)
                init.load_state_dict({"bank": self.bank})
            self._inits[name] = init
        return self._inits[name]


_MODELS: dict[tuple, ExplorerModel] = {}
_CACHE_SIZE = 3  # a run folder's model comes with its dataset (CIFAR-10 on a GPU: 0.6 GB), so keep few


def clear_cache() -> None:
    """Forget the models :func:`load_model` keeps (e.g. after re-exporting the shipped one)."""
    _MODELS.clear()


def _device(device) -> torch.device:
    from .train import resolve_device

    return resolve_device(device if isinstance(device, str) else str(device))


def _from_state(cfg: Config, state: dict, device: torch.device) -> torch.nn.Module:
    net = build_energy(cfg.model, dataset_shape(cfg.data)).to(device)
    net.load_state_dict(state)
    return net.eval()


def load_model(source: str | Path | ExplorerModel | None = None, device: str | torch.device = "auto"
               ) -> ExplorerModel:
    """The model to explore: ``None`` or "" = the shipped one, a run folder, or a checkpoint file.

    A run folder goes through :func:`ebmlab.train.load_run` (its data and chain bank come along); a
    ``.pt`` file may be a run's ``checkpoints/last.pt`` or an explorer export. Loaded models are cached
    by path, file modification time and device, so moving a slider never reloads anything.

    The shipped model (``ebmlab/assets/quick_mnist5k.pt``, config + weights only) was made with::

        ebmlab train --preset quick-mnist5k --out /tmp/explorer_model
        python -m ebmlab.explore --export /tmp/explorer_model --overwrite

    on 2 CPU cores (with ``OMP_NUM_THREADS=1``, which changes only the speed on a busy machine); run the
    same two commands again after the preset changes. The file's ``provenance`` entry records the run's
    status, the iteration of the exported weights and the git commit at export.
    """
    if isinstance(source, ExplorerModel):
        return source
    path = Path(source) if source else shipped_model_path()
    dev = _device(device)
    ckpt_file = RunDir(path).checkpoint if path.is_dir() else path
    if not ckpt_file.is_file():
        raise FileNotFoundError(f"{path}: expected a run folder (with checkpoints/last.pt) or a checkpoint "
                                f"file; leave run_dir empty to use the shipped model")
    key = (str(path.resolve()), ckpt_file.stat().st_mtime_ns, str(dev))
    if key in _MODELS:
        return _MODELS[key]
    if path.is_dir():
        from .train import load_run

        run = load_run(path, dev)
        bank = run.init.state_dict().get("bank")
        info = {"run": str(path), "summary": run.summary}
        model = ExplorerModel(run.net.eval(), run.cfg, str(path), bank, run.data, info)
    else:
        ckpt = load_checkpoint(path, map_location=dev)
        if "config" not in ckpt or "model" not in ckpt:
            raise ValueError(f"{path} holds no 'config' and 'model' entries: not an ebmlab checkpoint or export")
        cfg = Config.from_dict(ckpt["config"])
        bank = (ckpt.get("init") or {}).get("bank")
        model = ExplorerModel(_from_state(cfg, ckpt["model"], dev), cfg, str(path), bank,
                              info=ckpt.get("provenance", {}))
    while len(_MODELS) >= _CACHE_SIZE:
        _MODELS.pop(next(iter(_MODELS)))  # the oldest
    _MODELS[key] = model
    return model


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def export_model(run_dir: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write a run's config and weights (nothing else: no optimizer, no chain bank) as an explorer model.

    The file loads with ``torch.load(weights_only=True)``; default ``out`` is the shipped asset.
    """
    rd = RunDir(run_dir)
    if not rd.config.exists() or not rd.checkpoint.exists():
        raise FileNotFoundError(f"{run_dir} is not a finished run folder (need config.json and checkpoints/last.pt)")
    out = Path(out) if out else shipped_model_path()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    cfg = Config.from_dict(read_json(rd.config))
    ckpt = load_checkpoint(rd.checkpoint)
    summary = rd.read_summary() or {}
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt["model"].items()}
    provenance = {
        "command": SHIPPED_COMMAND if out == shipped_model_path() else f"python -m ebmlab.explore --export {run_dir}",
        "run_dir": str(Path(run_dir).resolve()), "git_commit_at_export": _git_commit(),
        "iteration": int(ckpt.get("iteration", 0)), "status": summary.get("status"),
        "wall_seconds": summary.get("wall_seconds"), "device": summary.get("device"),
        "final_metrics": summary.get("final_metrics") or {},
        "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    buf = io.BytesIO()
    torch.save({"format": ASSET_FORMAT, "config": cfg.to_dict(), "model": state, "provenance": provenance}, buf)
    atomic_write_bytes(out, buf.getvalue())
    return out


# ---------------------------------------------------------------------------------------------
# sliders -> sampler config
# ---------------------------------------------------------------------------------------------

def sampler_config(base: SamplerConfig, sampler: str, step_size: float, noise: float | None,
                   n_steps: int) -> SamplerConfig:
    """The SamplerConfig the explorer runs (see the module docstring's table).

    ``noise`` is σ for sgld and langevin (None: sgld's trained σ, langevin's T = 1); sgd adds none and
    mala's is fixed at ε, so they ignore it (every figure states the update that actually ran). The rest
    of ``base`` is kept (clip_grad, clamp, momentum, CoopNets' ref_sigma), so what runs here is what a
    training run with these keys would run. Bad values raise ConfigError before any sampling.
    """
    from .config import ConfigError

    if not (isinstance(step_size, (int, float)) and step_size > 0 and math.isfinite(step_size)):
        raise ConfigError(f"step_size: must be a positive number, got {step_size!r}")
    if noise is not None and not (isinstance(noise, (int, float)) and noise >= 0 and math.isfinite(noise)):
        raise ConfigError(f"noise: must be a number >= 0 (0 switches it off) or None, got {noise!r}")
    over = {"sampler.name": sampler, "sampler.step_size": float(step_size), "sampler.n_steps": n_steps,
            "sampler.record_every": 1}
    if sampler == "sgld":
        over["sampler.noise"] = base.noise if noise is None else float(noise)
    elif sampler == "langevin":
        # The noise added is ε√T; T is set so that it equals σ.
        over["sampler.temperature"] = 1.0 if noise is None else (float(noise) / step_size) ** 2
    return for_traces(Config(sampler=base).with_overrides(over).sampler)  # the curves need fp32 energies


def update_terms(cfg: SamplerConfig) -> tuple[float, float]:
    """(h, σ) of the update x ← x − h∇E(x) + σξ that ``cfg`` performs (MALA: its proposal)."""
    if cfg.name in ("langevin", "mala"):
        h = cfg.step_size**2 / 2
        sigma = cfg.step_size * math.sqrt(cfg.temperature if cfg.name == "langevin" else 1.0)
        return h, sigma
    return cfg.step_size, cfg.noise if cfg.name == "sgld" else 0.0


def describe_update(cfg: SamplerConfig) -> str:
    """One line: the update with its numbers and the temperature T = σ²/(2h) it samples at."""
    h, sigma = update_terms(cfg)
    if cfg.name == "sgd":
        mom = f" (momentum {cfg.momentum:g})" if cfg.momentum else ""
        return f"sgd: x ← x − {h:.3g}·∇E(x){mom}, no noise (T = 0)"
    rule = f"x − {h:.3g}·∇E(x) + {sigma:.3g}·ξ"
    temp = sigma**2 / (2 * h)
    if cfg.name == "mala":
        return f"mala: propose {rule}, accept/reject (exact at T = 1)"
    return f"{cfg.name}: x ← {rule}   (T = σ²/2h = {temp:.3g})"


def sampler_overrides(cfg: SamplerConfig) -> dict:
    """The dotted keys that reproduce ``cfg`` in a training config (``--set`` / ``overrides``)."""
    keys = {"sgld": ("step_size", "noise"), "langevin": ("step_size", "temperature"), "sgd": ("step_size",),
            "mala": ("step_size",)}[cfg.name]
    return {"sampler.name": cfg.name, **{f"sampler.{k}": getattr(cfg, k) for k in keys},
            "sampler.n_steps": cfg.n_steps}


# ---------------------------------------------------------------------------------------------
# one exploration
# ---------------------------------------------------------------------------------------------

@dataclass
class ExploreResult:
    """What one run of the explorer produced; tensors on the CPU.

    chain: the :class:`ebmlab.diagnostics.LongRunResult` of the run, its traces completed with the end
    state, so ``steps`` = 0..n_steps and ``energy``, ``grad_norm`` are [n_steps+1, B]: E(x_t) and
    ‖∇E(x_t)‖ (before clipping) of every chain at every step t. ``snapshots``: {step: [B, ...]} at
    :func:`ebmlab.diagnostics.log_spaced_steps`; ``samples``: the chains after n_steps; ``accept``:
    [n_steps, B] for MALA, else None. settings: the explorer's inputs. sampler: the SamplerConfig that
    ran. data_energy: mean E of held-out data, when the model's data is loaded.
    """

    chain: LongRunResult
    settings: dict
    sampler: SamplerConfig
    data_energy: float | None = None
    seconds: float = 0.0
    source: str = ""
    _figure: object = field(default=None, repr=False)

    steps = property(lambda self: self.chain.steps)
    energy = property(lambda self: self.chain.energy)
    grad_norm = property(lambda self: self.chain.grad_norm)
    accept = property(lambda self: self.chain.accept)
    snapshots = property(lambda self: self.chain.snapshots)
    samples = property(lambda self: self.chain.snapshots[self.chain.snapshot_steps[-1]])

    @property
    def description(self) -> str:
        return describe_update(self.sampler)

    @property
    def overrides(self) -> dict:
        return sampler_overrides(self.sampler)

    @property
    def set_args(self) -> str:
        """``--set key=value ...`` for ``ebmlab train``: a training run whose sampler is this one."""
        return " ".join(f"--set {k}={v:.6g}" if isinstance(v, float) else f"--set {k}={v}"
                        for k, v in self.overrides.items())

    @property
    def figure(self):
        """The explorer figure (:func:`ebmlab.plotting.plot_explorer`), drawn on first use."""
        if self._figure is None:
            from .plotting.explore import plot_explorer

            self._figure = plot_explorer(self)
        return self._figure

    def metrics(self) -> dict:
        """JSON-ready summary: settings, the config keys, energies and gradient norms at start and end."""
        e, g = self.energy.double().mean(1), self.grad_norm.double().mean(1)
        sat = self.chain.saturation
        return {
            **self.settings, "overrides": self.overrides, "update": self.description, "source": self.source,
            "energy_start": float(e[0]), "energy_end": float(e[-1]), "data_energy": self.data_energy,
            "grad_norm_start": float(g[0]), "grad_norm_end": float(g[-1]),
            "acceptance": None if self.accept is None or self.accept.numel() == 0 else float(self.accept.mean()),
            "saturation_end": sat[max(sat)] if sat else None,
            # chains that left the data range [-1, 1]: a first sign that the noise or the step is too big
            "outside_data_range": float((self.samples.abs() > 1).float().mean()),
            "finite": bool(torch.isfinite(self.samples).all()), "seconds": round(self.seconds, 3),
        }

    def save(self, out_dir: str | Path, name: str = "explorer") -> dict[str, Path]:
        """Write ``<name>.png`` (the figure) and ``metrics.json`` into ``out_dir``; return their paths."""
        from .plotting._common import finish

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        fig_path, metrics_path = out / f"{name}.png", out / "metrics.json"
        finish(self.figure, fig_path, close=False)
        write_json(metrics_path, self.metrics())
        return {"figure": fig_path, "metrics": metrics_path}


def _check_init(model: ExplorerModel, init: str) -> None:
    if init not in model.inits:
        why = " (this model has no saved chain bank)" if init == "persistent" else ""
        raise ValueError(f"init: '{init}' is not available{why}; choose one of {', '.join(model.inits)}")


def explore(model: ExplorerModel | str | Path | None = None, sampler: str | None = None,
            step_size: float | None = None, noise: float | None = None, n_steps: int | None = None,
            init: str = "uniform", seed: int = 0, n_chains: int = 36, n_snapshots: int = 5) -> ExploreResult:
    """Run ``n_chains`` chains of a sampler on a trained model and record what happens.

    model: an :class:`ExplorerModel` or anything :func:`load_model` takes (None = the shipped model).
    sampler, step_size, noise, n_steps: as in the module docstring; None = as the model was trained
    (for ``noise``: the sampler's own noise). init: uniform | gaussian | data | persistent (the run's
    saved chains). seed: the same seed gives the same starting chains and the same noise, so two
    settings compared at one seed differ only by the sampler. Runs on the model's device.
    """
    model = load_model(model)
    trained = model.cfg.sampler
    sampler = sampler or trained.name
    if step_size is None:
        step_size = trained.step_size
    n_steps = trained.n_steps if n_steps is None else int(n_steps)
    scfg = sampler_config(trained, sampler, step_size, noise, n_steps)  # raises on bad input, before work
    _check_init(model, init)
    if int(n_chains) < 1:
        raise ValueError(f"n_chains must be >= 1, got {n_chains}")

    t0 = time.perf_counter()
    gen = torch.Generator(model.device).manual_seed(int(seed))
    x0, _ = model.chain_init(init).draw(int(n_chains), gen)  # drawn first: x0 depends on the seed only
    chain = long_run(model.net, scfg, x0, n_steps, gen, n_snapshots=n_snapshots, label=f"from {init}")
    # run_chain records E and ‖∇E‖ where each step starts; the end state's pair completes the traces.
    x_end = chain.snapshots[chain.snapshot_steps[-1]].to(model.device)
    with sampling_mode(model.net):
        e_end, g_end = energy_and_grad(energy_function(model.net, scfg.ref_sigma), x_end)
    chain.steps = torch.arange(n_steps + 1)
    chain.energy = torch.cat([chain.energy, e_end.cpu()[None]])
    chain.grad_norm = torch.cat([chain.grad_norm, g_end.flatten(1).norm(dim=1).cpu()[None]])
    # The noise that was added (not the argument, which sgd and mala ignore): explore(**settings) reruns it.
    settings = {"sampler": sampler, "step_size": float(step_size), "noise": update_terms(scfg)[1],
                "n_steps": n_steps, "init": init, "seed": int(seed), "n_chains": int(n_chains)}
    return ExploreResult(chain, settings, scfg, model.data_energy(), time.perf_counter() - t0, model.source)


# ---------------------------------------------------------------------------------------------
# the widget panel
# ---------------------------------------------------------------------------------------------

class ExplorerState:
    """The live side of :func:`build_explorer`: its widgets, the latest result and a run counter.

    ``widgets``: sampler, init, step_size, noise, noise_on, n_steps, fresh (a button), info (an HTML
    readout), output (where the figure is shown). Changing any control calls :meth:`update`, which runs
    :func:`explore` once, redraws, and calls each of ``hooks`` with the new result.
    """

    def __init__(self, model: ExplorerModel, widgets: dict, seed: int, n_chains: int):
        self.model, self.widgets, self.seed, self.n_chains = model, widgets, seed, n_chains
        self.result: ExploreResult | None = None
        self.runs = 0
        self.error: str | None = None
        self.hooks: list[Callable[[ExploreResult], None]] = []

    @property
    def figure(self):
        return None if self.result is None else self.result.figure

    def settings(self) -> dict:
        """The explorer arguments the controls describe now."""
        w = self.widgets
        noise = float(w["noise"].value) if w["noise_on"].value else 0.0  # sgd and mala ignore it
        return {"sampler": w["sampler"].value, "step_size": float(w["step_size"].value), "noise": noise,
                "n_steps": int(w["n_steps"].value), "init": w["init"].value, "seed": self.seed,
                "n_chains": self.n_chains}

    def _sync_controls(self) -> None:
        # The noise controls mean nothing for sgd (no noise) and mala (noise tied to ε): grey them out.
        w = self.widgets
        fixed = w["sampler"].value in ("sgd", "mala")
        w["noise_on"].disabled = fixed
        w["noise"].disabled = fixed or not w["noise_on"].value

    def update(self, *_) -> ExploreResult | None:
        """Run the sampler with the current settings and show the result (errors go to the readout)."""
        self._sync_controls()
        try:
            result = explore(self.model, **self.settings())
        except Exception as exc:  # a widget callback's exception would vanish into the browser console
            self.error = f"{type(exc).__name__}: {exc}"
            self.widgets["info"].value = f"<b style='color:#b00'>{_html(self.error)}</b>"
            return None
        self.error = None
        self.result = result
        self.runs += 1
        self._show(result)
        for hook in self.hooks:
            hook(result)
        return result

    def fresh_chains(self, *_) -> ExploreResult | None:
        """New starting points and noise: the next seed."""
        self.seed += 1
        return self.update()

    def _show(self, result: ExploreResult) -> None:
        from IPython import get_ipython
        from IPython.display import display

        from .plotting._common import plt

        m = result.metrics()
        acc = "" if m["acceptance"] is None else f", acceptance {m['acceptance']:.2f}"
        ref = "" if m["data_energy"] is None else f" (E(data) {m['data_energy']:.3g})"
        self.widgets["info"].value = (
            f"<code>{_html(result.description)}</code><br>"
            f"mean E {m['energy_start']:.3g} → {m['energy_end']:.3g}{ref}, ‖∇E‖ {m['grad_norm_end']:.3g}{acc}; "
            f"seed {self.seed}, {result.seconds:.1f} s<br>to train with it: <code>{_html(result.set_args)}</code>")
        fig = result.figure
        out = self.widgets["output"]
        if get_ipython() is not None:  # outside IPython (a test) there is nothing to draw into
            with out:
                out.clear_output(wait=True)
                display(fig)
        # Shown through the Output widget only: an open pyplot figure would be drawn a second time by the
        # inline backend at the end of the cell.
        plt.close(fig)

    def save(self, out_dir: str | Path, name: str = "explorer") -> dict[str, Path]:
        """Write what the panel shows now (figure and metrics.json) into ``out_dir``."""
        if self.result is None:
            raise RuntimeError("the explorer has no result yet (its last run failed: see state.error)")
        return self.result.save(out_dir, name)


def _html(text: str) -> str:
    import html

    return html.escape(str(text))


def build_explorer(model: ExplorerModel | str | Path | None = None, result: ExploreResult | None = None,
                   sampler: str | None = None, step_size: float | None = None, noise: float | None = None,
                   n_steps: int | None = None, init: str = "uniform", seed: int = 0, n_chains: int = 36,
                   max_steps: int = 1000):
    """The widget panel: ``(panel, state)``; display ``panel`` in a notebook.

    Starts from ``result``'s settings when given (and shows it without running again), else from the
    arguments (as in :func:`explore`). Uses only ipywidgets APIs common to 7.7 (Colab) and 8.x:
    FloatLogSlider, IntSlider, Dropdown, Checkbox, Button, HTML, Output and ``observe``. Without a
    frontend (papermill, tests) nothing renders, but setting a control's ``value`` runs the sampler as
    a drag would.
    """
    import ipywidgets as W

    model = load_model(model)
    if result is not None:
        s = result.settings
        sampler, step_size, noise, n_steps, init, seed, n_chains = (
            s["sampler"], s["step_size"], s["noise"], s["n_steps"], s["init"], s["seed"], s["n_chains"])
    trained = model.cfg.sampler
    sampler = sampler or trained.name
    step_size = trained.step_size if step_size is None else step_size
    n_steps = trained.n_steps if n_steps is None else int(n_steps)
    # Bad settings fail here rather than in a callback; σ is the noise these settings add.
    sigma = update_terms(sampler_config(trained, sampler, step_size, noise, n_steps))[1]
    _check_init(model, init)
    noise_on = noise is None or noise > 0
    noise_value = sigma if sigma > 0 else trained.noise or 0.01  # a log slider cannot show 0: the toggle does

    style = {"description_width": "initial"}
    wide = W.Layout(width="420px")

    def log_slider(description, value, lo, hi, tooltip):
        # Range widened to hold the starting value: a value outside is silently clipped by the slider.
        lo, hi = min(lo, math.floor(math.log10(value))), max(hi, math.ceil(math.log10(value)))
        s = W.FloatLogSlider(value=value, base=10, min=lo, max=hi, step=0.05, description=description,
                             readout_format=".3g", continuous_update=False, style=style, layout=wide)
        # ipywidgets 8 calls it `tooltip`, 7 `description_tooltip` (deprecated in 8)
        setattr(s, "tooltip" if s.has_trait("tooltip") else "description_tooltip", tooltip)
        return s

    widgets = {
        "sampler": W.Dropdown(options=list(SAMPLERS), value=sampler, description="sampler", style=style),
        "init": W.Dropdown(options=list(model.inits), value=init, description="start from", style=style),
        "step_size": log_slider("step size", float(step_size), -4, 1,
                                "sampler.step_size: η for sgld/sgd, ε for langevin/mala (drift ε²/2)"),
        "noise": log_slider("noise σ", noise_value, -4, 0, "std of the Gaussian noise added per step"),
        "noise_on": W.Checkbox(value=noise_on, description="noise on", indent=False),
        "n_steps": W.IntSlider(value=n_steps, min=0, max=max(max_steps, n_steps), step=1, description="steps",
                               continuous_update=False, style=style, layout=wide),
        "fresh": W.Button(description="fresh chains", tooltip="new starting points and noise (next seed)"),
        "info": W.HTML(),
        "output": W.Output(),
    }
    state = ExplorerState(model, widgets, int(seed), int(n_chains))
    for name in ("sampler", "init", "step_size", "noise", "noise_on", "n_steps"):
        widgets[name].observe(state.update, names="value")
    widgets["fresh"].on_click(state.fresh_chains)
    panel = W.VBox([
        W.HBox([widgets["sampler"], widgets["init"], widgets["fresh"]]),
        W.HBox([widgets["step_size"], widgets["n_steps"]]),
        W.HBox([widgets["noise"], widgets["noise_on"]]),
        widgets["info"],
        widgets["output"],
    ])
    if result is not None:
        state._sync_controls()
        state.result, state.runs = result, 1
        state._show(result)
    else:
        state.update()
    return panel, state


# ---------------------------------------------------------------------------------------------
# command line: python -m ebmlab.explore
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ebmlab.explore",
        description="Export a run as the explorer's model, or draw the explorer figure for one setting.")
    p.add_argument("--export", metavar="RUN_DIR", help="write RUN_DIR's config and weights as an explorer model")
    p.add_argument("--out", help="with --export: the file to write (default: the shipped asset "
                                 f"{shipped_model_path()}); else: the figure PNG to write")
    p.add_argument("--overwrite", action="store_true", help="with --export: replace an existing file")
    p.add_argument("--model", default="", help="run folder or checkpoint to explore (default: the shipped model)")
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--step-size", type=float)
    p.add_argument("--noise", type=float, help="noise std per step; 0 = off (default: the sampler's own)")
    p.add_argument("--steps", type=int)
    p.add_argument("--init", default="uniform", choices=INITS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=36, help="number of chains")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    try:
        if args.export:
            path = export_model(args.export, args.out, args.overwrite)
            prov = torch.load(path, weights_only=True)["provenance"]
            print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): weights of iteration {prov['iteration']}")
            if prov["status"] != "completed":
                print(f"note: the run's status is {prov['status']}; its last checkpoint was exported", file=sys.stderr)
            return 0
        if not args.out:
            p.error("give --export RUN_DIR, or --out FIGURE.png to draw the explorer figure")
        model = load_model(args.model or None, args.device)
        res = explore(model, args.sampler, args.step_size, args.noise, args.steps, args.init, args.seed, args.n)
        from .plotting._common import finish

        finish(res.figure, args.out)
        print(json.dumps(res.metrics(), indent=2))
        return 0
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"python -m ebmlab.explore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
