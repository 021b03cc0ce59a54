"""Study helpers: what the study notebooks share, so that none of them defines training or sampling logic.

A study notebook trains one or a few configurations (:func:`train_cells`, each in its own run folder via
:func:`ebmlab.train.ensure_trained`, so re-running the notebook resumes instead of starting over), samples
the trained models with several samplers at equal cost (:func:`compare_samplers`), and writes one
``metrics.json`` whose top-level numbers become a row of a sweep's ``results.csv`` (:func:`write_metrics`).

- :func:`study_out_dir`: the notebook's ``out_dir`` parameter -> a folder (Google Drive in Colab).
- :func:`shrink`: the ``smoke=True`` overrides that make a whole notebook run in seconds.
- :func:`train_cell` / :func:`train_cells` -> :class:`Cell`: a trained (or diverged) run, its records,
  and :meth:`Cell.metrics` (status, when it diverged, wall time, time to quality, final quality metrics,
  energy magnitudes).
- :func:`matched_samplers`: sampler settings with the same drift (and, where a sampler has noise, the same
  noise) as a trained run's sampler, for "the same model sampled with each sampler".
- :func:`compare_samplers` -> {label: :class:`SamplerOutcome`}: samples, traces, quality and diversity.
- :func:`pairwise_diversity`: mean pairwise L2 distance between samples (a diversity number).

Every sampler kernel costs one energy gradient per step (MALA keeps the gradient of its current state),
so the same ``n_steps`` is the same number of energy-gradient evaluations.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import Config, SamplerConfig
from .rundir import RunDir, read_json, read_jsonl, write_json
from .train import Run, _check_resume_config, ensure_trained

# ---------------------------------------------------------------------------------------------
# folders, sizes, metrics.json
# ---------------------------------------------------------------------------------------------


def study_out_dir(out_dir: str | Path, default: str | None = None) -> Path:
    """The folder a notebook writes to, created.

    ``out_dir`` as given (a sweep passes each run's folder), except that the notebook's own default
    ``runs/<name>`` becomes :func:`ebmlab.colab.default_out_dir` (``<name>``) - the Google Drive run
    folder when ``colab_setup.sh --drive`` recorded one, ``$EBMLAB_RUN_ROOT/<name>`` when set, else
    ``./runs/<name>`` as written.
    """
    from .colab import default_out_dir

    p = Path(out_dir)
    if default is not None and str(out_dir) == default and p.parts[:1] == ("runs",) and len(p.parts) == 2:
        p = default_out_dir(p.parts[1])
    p.mkdir(parents=True, exist_ok=True)
    return p


def shrink(smoke: bool, data_name: str | None = None) -> dict:
    """Overrides that shrink a run to a few seconds when ``smoke`` (else ``{}``): a handful of iterations,
    small batches and chains, a small replay buffer and a small evaluation."""
    if not smoke:
        return {}
    return {"train.iterations": 4, "train.batch_size": 16, "train.log_every": 1, "train.checkpoint_every": 2,
            "train.sample_every": 1000, "train.eval_every": 0, "train.eval_n": 64, "train.progress": False,
            "sampler.n_steps": 3, "init.buffer_size": 200}


def write_metrics(out_dir: str | Path, metrics: dict) -> Path:
    """Atomically write ``out_dir/metrics.json``, keys in the caller's order.

    A sweep's summary heatmap draws the first numeric column by default, so put the headline metric first.
    Nested dicts become dotted columns of ``results.csv``; lists stay in the file only.
    """
    path = Path(out_dir) / "metrics.json"
    write_json(path, metrics, sort_keys=False)
    return path


def headline(cfg: Config) -> tuple[str | None, float | None]:
    """(the quality metric a study reports first, its "good enough" threshold) for the config's dataset.

    Digits: ``lenet_fid`` ("FID (LeNet features)", lower is better) and DIGIT_FID_FACTOR times the real-data
    baseline at ``train.eval_n`` samples; toy targets: ``toy_kl`` and TOY_KL_THRESHOLD; other datasets have
    no offline metric: (None, None).
    """
    from .evaluate import DIGIT_FID_FACTOR, TOY_KL_THRESHOLD

    if cfg.data.name in ("gmm8", "rings"):
        return "toy_kl", TOY_KL_THRESHOLD
    if cfg.data.name in ("mnist5k", "mnist"):
        from .metrics.digits import real_data_baseline

        base = real_data_baseline(n=min(cfg.train.eval_n, 4500), image_size=cfg.data.image_size)
        return "lenet_fid", DIGIT_FID_FACTOR * base["lenet_fid"]
    return None, None


# ---------------------------------------------------------------------------------------------
# training cells
# ---------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One trained configuration of a study.

    run: the network at its last checkpoint (None when the run diverged before its first checkpoint);
    summary: its ``summary.json``; records: its ``metrics.jsonl`` (training and evaluation records).
    """

    name: str
    cfg: Config
    path: Path
    summary: dict
    records: list[dict]
    run: Run | None = None

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    @property
    def train_records(self) -> list[dict]:
        return [r for r in self.records if not r.get("eval")]

    @property
    def eval_records(self) -> list[dict]:
        return [r for r in self.records if r.get("eval")]

    def metrics(self) -> dict:
        return cell_metrics(self.summary, self.records)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def cell_metrics(summary: dict, records: list[dict]) -> dict:
    """The numbers a sweep table needs from one run folder (all scalars, None where undefined).

    status, diverged_at (iteration, or None), iterations_done, wall_seconds (training only, evaluation
    excluded), seconds_per_iteration, time_to_quality_s / _iter (first time the dataset's quality threshold
    of :mod:`ebmlab.evaluate` was met; None if never), the final quality metrics (``summary.final_metrics``;
    a diverged run has none), the last logged d and r, and the energy magnitudes: final mean E(data) and
    E(samples) and the largest |mean E| logged (a run heading for divergence shows it growing first).
    """
    train = [r for r in records if not r.get("eval")]
    last = train[-1] if train else {}
    ttq = summary.get("time_to_quality") or {}
    done = summary.get("iterations_done") or 0
    wall = summary.get("wall_seconds")
    e_abs = [abs(r[k]) for r in train for k in ("e_pos", "e_neg") if _finite(r.get(k))]
    out = {
        "status": summary.get("status"),
        "diverged_at": summary.get("diverged_at"),
        "iterations_done": done,
        "wall_seconds": wall,
        "seconds_per_iteration": round(wall / done, 4) if wall and done else None,
        "time_to_quality_s": ttq.get("wall_seconds"),
        "time_to_quality_iter": ttq.get("iteration"),
        **{k: v for k, v in (summary.get("final_metrics") or {}).items()},
        "d_final": last.get("d"),
        "r_final": last.get("r"),
        "e_pos_final": last.get("e_pos"),
        "e_neg_final": last.get("e_neg"),
        "energy_abs_max": max(e_abs) if e_abs else None,
    }
    return out


def _diverged_without_checkpoint(cfg: Config, path: Path) -> dict | None:
    """The summary of a run in ``path`` that diverged (same config and length) before any checkpoint.

    ensure_trained would train it again from scratch (there is no checkpoint to load), only to diverge at
    the same iteration: a notebook re-run must not pay for that again.
    """
    rd = RunDir(path)
    if rd.checkpoint.exists() or not rd.summary.exists() or not rd.config.exists():
        return None
    summary = rd.read_summary() or {}
    if summary.get("status") != "diverged" or summary.get("iterations") != cfg.train.iterations:
        return None
    try:
        _check_resume_config(Config.from_dict(read_json(rd.config)), cfg)
    except ValueError:
        return None
    return summary


def train_cell(name: str, cfg: Config, path: str | Path, evaluator="auto") -> Cell:
    """Train ``cfg`` into ``path`` or pick up what is there (:func:`ebmlab.train.ensure_trained`).

    A diverged run is a result, not an error: the cell reports it (``cell.diverged``) and the notebook goes
    on; ``cell.run`` is then the network at its last checkpoint before the divergence, or None.
    """
    path = Path(path)
    summary = _diverged_without_checkpoint(cfg, path)
    run = None
    if summary is None:
        run = ensure_trained(cfg, path, evaluator=evaluator)
        summary = RunDir(path).read_summary() or run.summary
        if summary.get("status") == "diverged":
            # the last checkpoint, as a re-run would load it (train returns the network as it diverged)
            from .train import load_run

            run = load_run(path, cfg.train.device, data=run.data) if RunDir(path).checkpoint.exists() else None
    return Cell(name, cfg, path, summary, read_jsonl(RunDir(path).metrics), run)


def train_cells(cells: dict[str, Config], root: str | Path, evaluator="auto") -> dict[str, Cell]:
    """:func:`train_cell` for each ``{name: config}``, in ``root/<name>/``, in order."""
    return {name: train_cell(name, cfg, Path(root) / name, evaluator) for name, cfg in cells.items()}


# ---------------------------------------------------------------------------------------------
# samplers on a trained model
# ---------------------------------------------------------------------------------------------


def _drift_and_noise(s: SamplerConfig) -> tuple[float, float]:
    """(η, σ) of x ← x − η∇E + σξ for a sampler config."""
    if s.name in ("langevin", "mala"):
        t = s.temperature if s.name == "langevin" else 1.0
        return 0.5 * s.step_size**2, s.step_size * math.sqrt(t)
    if s.name == "sgld":
        return s.step_size, s.noise
    return s.step_size, 0.0


SAMPLER_KINDS = ("langevin", "sgld", "sgd", "sgd+momentum")


def sampler_settings(kind: str, step_size: float, noise: float = 0.0, temperature: float | None = None,
                     momentum: float = 0.9) -> dict:
    """``sampler.*`` overrides of one sampler kind, all parametrised by the same drift η = ``step_size``.

    Every kind moves x ← x − η∇E (+ noise), so η means the same for all of them:

    - ``langevin``: textbook Langevin, ε = √(2η) at ``temperature`` T: noise √(2ηT), tied to the step;
      T defaults to σ²/(2η) with σ = ``noise`` (the temperature at which it makes the same moves as sgld);
    - ``sgld``: "SGD with noise", noise σ = ``noise`` set independently of the step;
    - ``sgd``: noise-free gradient descent;
    - ``sgd+momentum``: heavy ball with μ = ``momentum`` and step η(1 − μ), so that its steady-state step
      η(1 − μ)/(1 − μ) is η.
    """
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if kind == "langevin":
        t = noise**2 / (2 * step_size) if temperature is None else temperature
        return {"name": "langevin", "step_size": math.sqrt(2 * step_size), "temperature": t}
    if kind == "sgld":
        return {"name": "sgld", "step_size": step_size, "noise": noise}
    if kind == "sgd":
        return {"name": "sgd", "step_size": step_size, "momentum": 0.0}
    if kind == "sgd+momentum":
        return {"name": "sgd", "step_size": step_size * (1 - momentum), "momentum": momentum}
    raise ValueError(f"unknown sampler kind {kind!r}; choose one of {', '.join(SAMPLER_KINDS)}")


def matched_samplers(s: SamplerConfig, momentum: float = 0.9) -> dict[str, dict]:
    """Every sampler kind matched to a trained sampler ``s`` ({label: sampler.* overrides}).

    With (η, σ) the drift and noise of ``s`` (x ← x − η∇E + σξ), the four kinds of
    :func:`sampler_settings` at η and σ (``langevin`` at T = σ²/(2η): the textbook form of the same moves;
    ebm-anatomy's point that the learned energy absorbs the temperature), plus ``mala``: Metropolis-adjusted
    Langevin with proposal noise ε = σ. MALA targets exp(−E) exactly at temperature 1, not the tempered
    density the others sample, and its drift ε²/2 is tiny: it shows what an exact sampler does with the
    learned energy in the same number of steps. (Omitted when σ = 0.)
    """
    eta, sigma = _drift_and_noise(s)
    out = {k: sampler_settings(k, eta, sigma, momentum=momentum) for k in SAMPLER_KINDS}
    if sigma > 0:
        out["mala"] = {"name": "mala", "step_size": sigma}
    return out


def sampler_config(base: SamplerConfig, overrides: dict) -> SamplerConfig:
    """``base`` with ``{field: value}`` (or ``{"sampler.field": value}``) applied and validated."""
    over = {(k if k.startswith("sampler.") else f"sampler.{k}"): v for k, v in overrides.items()}
    return Config(sampler=base).with_overrides(over).sampler


def sampler_temperature(s: SamplerConfig) -> float:
    """The temperature T whose density exp(−E/T) the sampler ``s`` targets (in the small-step limit).

    x ← x − η∇E + σξ is Langevin on E/T with T = σ²/(2η): 1 for textbook Langevin at temperature 1,
    ε²/2 for ebm-anatomy's ``sgld`` with η = 1 and σ = ε (its U = f/(ε²/2)), 0 for noise-free SGD. MALA
    targets exp(−E): T = 1.
    """
    if s.name == "mala":
        return 1.0
    eta, sigma = _drift_and_noise(s)
    return sigma**2 / (2 * eta) if eta > 0 else 0.0


class TemperedEnergy(torch.nn.Module):
    """E(x)/T as a module (so metrics find its device): the energy whose exp(−·) the sampler targets."""

    def __init__(self, net: torch.nn.Module, temperature: float):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (a noise-free sampler targets no density), got {temperature}")
        self.net, self.temperature = net, float(temperature)

    def forward(self, x):
        return self.net(x) / self.temperature


def tempered_energy(run: Run) -> torch.nn.Module:
    """The run's energy divided by its sampler's temperature (:func:`sampler_temperature`): the density
    exp(−E/T) its chains sample, which is what a toy density plot or grid KL should compare with the target.
    The network itself when T = 1; raises for a noise-free sampler (no density)."""
    t = sampler_temperature(run.cfg.sampler)
    return run.net if t == 1.0 else TemperedEnergy(run.net, t)


@torch.no_grad()
def pairwise_diversity(x: torch.Tensor, max_n: int = 500) -> float:
    """Mean L2 distance between distinct pairs of the first ``max_n`` samples [N, ...] (per pixel RMS for
    images: the distance divided by √(number of values), so 28 and 32 px read alike).

    0 when every sample is the same (mode collapse); real mnist5k digits score about 0.9 at 28 px.
    """
    x = x[:max_n].detach().float().flatten(1).cpu()
    n = x.shape[0]
    if n < 2:
        return float("nan")
    d = torch.cdist(x, x)
    mean = float(d.sum() / (n * (n - 1)))
    return mean / math.sqrt(x.shape[1]) if x.shape[1] > 2 else mean


@dataclass
class SamplerOutcome:
    """One sampler on one trained model: samples [n, ...] (CPU), the chain's per-step traces
    (:class:`ebmlab.samplers.ChainResult`, CPU), quality and diversity metrics, and the sampling time."""

    label: str
    sampler: SamplerConfig
    samples: torch.Tensor
    chain: object
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0


def compare_samplers(run: Run, samplers: dict[str, dict | SamplerConfig], n: int = 1000, n_steps: int | None = None,
                     seed: int = 0, x0: torch.Tensor | None = None, evaluator="auto",
                     snapshot_steps=()) -> dict[str, SamplerOutcome]:
    """Sample the trained ``run`` with each sampler from the same starting points, at the same cost.

    samplers: {label: SamplerConfig or sampler.* overrides of the run's sampler} (e.g.
    :func:`matched_samplers`). Every sampler runs ``n_steps`` steps (default: the run's ``sampler.n_steps``),
    i.e. the same number of energy-gradient evaluations, from ``x0`` [n, ...] when given, else from ``n``
    draws of the run's own chain initialisation with the same seed (``draw_samples``: no write-back).
    Quality comes from the dataset's evaluator (:func:`ebmlab.evaluate.make_evaluator`; None skips it), plus
    ``pairwise_diversity`` and, for MALA, ``acceptance``.
    """
    from .evaluate import make_evaluator
    from .samplers import sample

    if evaluator == "auto":
        evaluator = make_evaluator(run.cfg, run.data)
    if x0 is None:
        gen = torch.Generator(run.device).manual_seed(seed)
        x0 = run.init.draw_samples(n, gen)
    x0 = x0.to(run.device)
    out = {}
    for label, s in samplers.items():
        cfg = s if isinstance(s, SamplerConfig) else sampler_config(run.cfg.sampler, s)
        gen = torch.Generator(run.device).manual_seed(seed + 1)  # the same noise stream for every sampler
        t0 = time.perf_counter()
        res = sample(run.net, cfg, x0, gen, n_steps, snapshot_steps)
        seconds = time.perf_counter() - t0
        metrics = evaluator.score(run.net, res.x) if evaluator is not None else {}
        metrics = {**metrics, "pairwise_diversity": pairwise_diversity(res.x)}
        if res.acceptance_rate is not None:
            metrics["acceptance"] = res.acceptance_rate
        out[label] = SamplerOutcome(label, cfg, res.x.detach().cpu(), res.cpu(), metrics, round(seconds, 3))
    return out


def quality_vs_steps(run: Run, steps, n: int = 1000, seed: int = 0, sampler: SamplerConfig | None = None,
                     evaluator="auto") -> tuple[dict[int, dict], dict[int, torch.Tensor]]:
    """Quality of a trained model's samples after each of ``steps`` sampler steps, from one set of chains.

    ``n`` chains start from the run's own initialisation (no write-back; for CoopNets step 0 is the
    generator's output g(z)) and run the run's sampler (or ``sampler``) for ``max(steps)`` steps; each
    snapshot is scored like :func:`compare_samplers` does. Returns ({step: metrics}, {step: samples [n, ...]
    on the CPU}). Cheap: no training, ``max(steps)`` energy gradients per chain.
    """
    from .evaluate import make_evaluator
    from .samplers import sample

    steps = sorted({int(s) for s in steps})
    if evaluator == "auto":
        evaluator = make_evaluator(run.cfg, run.data)
    gen = torch.Generator(run.device).manual_seed(seed)
    x0 = run.init.draw_samples(n, gen)
    res = sample(run.net, sampler or run.cfg.sampler, x0, gen, n_steps=max(steps), snapshot_steps=steps)
    metrics = {}
    for s in steps:
        x = res.snapshots[s]
        m = evaluator.score(run.net, x) if evaluator is not None else {}
        metrics[s] = {**m, "pairwise_diversity": pairwise_diversity(x)}
    return metrics, {s: x.detach().cpu() for s, x in res.snapshots.items()}


def quality_fn(run: Run, n_min: int = 2):
    """A ``quality_fn`` for :func:`ebmlab.diagnostics.long_run`: the dataset's metrics of a snapshot
    (LeNet metrics for digits, KL/MMD for toys) plus ``pairwise_diversity``; None without an evaluator."""
    from .evaluate import make_evaluator

    ev = make_evaluator(run.cfg, run.data)
    if ev is None:
        return None

    def score(x: torch.Tensor) -> dict:
        m = ev.score(run.net, x) if x.shape[0] >= n_min else {}
        return {**m, "pairwise_diversity": pairwise_diversity(x)}

    return score


__all__ = [
    "Cell",
    "SamplerOutcome",
    "TemperedEnergy",
    "cell_metrics",
    "SAMPLER_KINDS",
    "compare_samplers",
    "headline",
    "matched_samplers",
    "pairwise_diversity",
    "quality_fn",
    "quality_vs_steps",
    "sampler_config",
    "sampler_settings",
    "sampler_temperature",
    "shrink",
    "study_out_dir",
    "tempered_energy",
    "train_cell",
    "train_cells",
    "write_metrics",
]
