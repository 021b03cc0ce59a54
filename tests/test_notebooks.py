"""The study notebooks: paired, parameterised, Colab-ready, runnable top to bottom at smoke size; and the
study helpers they call (:mod:`ebmlab.studies`).

Each notebook runs under papermill with ``smoke=True`` (seconds) and must write its ``metrics.json`` and
figures; each ``.py`` (jupytext percent, the source) must match its committed ``.ipynb``; each parameters
cell must declare the knobs a sweep sets (as ``papermill.inspect_notebook`` reads them); each study's
default grid must validate against its notebook.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

jupytext = pytest.importorskip("jupytext")
papermill = pytest.importorskip("papermill")

from ebmlab.colab import colab_badge  # noqa: E402
from ebmlab.sweep import STUDIES, load_grid_file, plan_sweep, read_notebook  # noqa: E402

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted({s.notebook for s in STUDIES.values()})  # 00_quickstart.py ... 04_anatomy.py
COMMON = {"preset": "str", "overrides": "dict", "out_dir": "str", "seed": "int", "device": "str", "smoke": "bool"}
KNOBS = {
    "00_quickstart.py": {"iterations", "eval_every", "eval_n", "n_samples", "compare_steps"},
    "01_regularization.py": {"spectral_norm", "l2_energy", "aggressive", "lr_factor", "step_factor", "iterations",
                             "compare_spectral_norm"},
    "02_sgd_sampling.py": {"sampler", "step_size", "noise", "temperature", "momentum", "n_steps", "iterations",
                           "n_samples", "long_run_steps", "compare_samplers"},
    "03_coopnets.py": {"init", "n_steps", "iterations", "compare", "n_samples", "probe_steps"},
    "04_anatomy.py": {"toy_iterations", "long_run_steps", "digits", "digit_preset", "digit_iterations"},
}


def test_every_study_notebook_is_covered():
    assert set(KNOBS) == set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_pair_in_sync(name):
    """The committed .ipynb is what `jupytext --sync` makes of the .py (cells, sources, metadata)."""
    from jupytext.compare import compare_notebooks

    py, ipynb = NB_DIR / name, (NB_DIR / name).with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} is missing: run `jupytext --sync notebooks/{name}`"
    compare_notebooks(jupytext.read(ipynb), jupytext.read(py), fmt="py:percent")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_declares_the_knobs(name):
    nb = read_notebook(NB_DIR / name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[1].metadata.get("tags", []), "the second code cell (after Colab setup) is `parameters`"
    params = papermill.inspect_notebook(nb)  # papermill itself, not a fallback parser: every line must parse
    types = {k: p["inferred_type_name"] for k, p in params.items()}
    for k, typ in COMMON.items():
        assert types.get(k) == typ, f"{k}: {params.get(k)}"
    assert params["device"]["default"] == '"auto"' and params["smoke"]["default"] == "False"
    assert KNOBS[name] <= set(params), KNOBS[name] - set(params)
    assert "None" not in types.values(), f"every knob is annotated: {types}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_colab_bits(name):
    """Badge in the title cell, a first code cell that sets up Colab only in Colab, GPU runtime metadata."""
    nb = jupytext.read(NB_DIR / name)
    assert colab_badge(name) in nb.cells[0].source
    first = next(c for c in nb.cells if c.cell_type == "code").source
    assert 'if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):' in first
    assert "!bash colab_setup.sh" in first  # a shell escape in the notebook, a comment in the .py
    meta = json.loads((NB_DIR / name).with_suffix(".ipynb").read_text())["metadata"]
    assert meta["accelerator"] == "GPU"
    assert meta["colab"]["gpuType"] == "T4" and meta["colab"]["provenance"] == []


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_default_grid_validates(study, tmp_path):
    """Every study's grid file names real parameters with values of the declared types (nothing runs)."""
    grid, params = load_grid_file(NB_DIR / STUDIES[study].grid)
    plan = plan_sweep(NB_DIR / STUDIES[study].notebook, grid, params, tmp_path)
    assert 2 <= len(plan.runs) <= 8, "the default sweep is sized for ~15 minutes on 2 CPU cores"
    from ebmlab.presets import get_preset

    for _, run_params in plan.runs:  # config overrides in a grid are valid keys and values of the preset
        if run_params.get("overrides"):
            get_preset(run_params.get("preset", "quick-mnist5k"), run_params["overrides"])


# ------------------------------------------------------------------------------------------------ smoke runs


def _execute(name: str, out: Path, scratch: Path):
    nb = read_notebook(NB_DIR / name)
    try:
        papermill.execute_notebook(nb, str(scratch / f"{name}.ipynb"), parameters={"smoke": True, "out_dir": str(out)},
                                   kernel_name="python3", progress_bar=False, cwd=str(NB_DIR))
    except Exception as e:  # reported by the test of this notebook
        return e
    return None


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Every notebook executed once at smoke size, two kernels at a time (the whole set in about a minute).

    One OpenMP thread per kernel: smoke-size tensors gain nothing from more, and on a shared 2-core machine
    competing thread pools slow every kernel down several-fold.
    """
    root = tmp_path_factory.mktemp("notebooks")
    env = {"MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "EBMLAB_RUN_ROOT": str(root / "default-runs")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {n: pool.submit(_execute, n, root / Path(n).stem, root) for n in NOTEBOOKS}
            return {n: (root / Path(n).stem, f.result()) for n, f in futures.items()}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_runs_at_smoke_size(name, smoke_runs):
    """Top to bottom under papermill (the way sweeps run it), writing metrics.json and figures into out_dir and
    training runs into out_dir/train/<name>/."""
    out, error = smoke_runs[name]
    assert error is None, f"{name} failed at smoke size:\n{error}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] in ("completed", "diverged")
    assert len(list(out.glob("*.png"))) >= 2, "the notebook saves its figures into out_dir"
    runs = [p for p in (out / "train").iterdir() if (p / "summary.json").exists()]
    assert runs, "training runs live in out_dir/train/<name>/"
    first = next(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    assert first in ("lenet_fid", "toy_kl", "toy_nonconvergent_long_run_drift"), \
        f"the headline quality metric comes first (the sweep summary draws it), got {first}"


# ------------------------------------------------------------------------------------------------ the helpers


def test_matched_langevin_makes_the_same_moves_as_sgld():
    """Textbook Langevin at T = σ²/(2η) with ε = √(2η) is sgld(η, σ) step for step (same noise stream)."""
    from ebmlab.config import SamplerConfig
    from ebmlab.samplers import sample
    from ebmlab.studies import matched_samplers, sampler_config, sampler_temperature

    base = SamplerConfig(name="sgld", step_size=0.3, noise=0.05, n_steps=5)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1), torch.nn.Flatten(0))
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    ms = matched_samplers(base)
    lang = sampler_config(base, ms["langevin"])
    a = sample(net, base, x0, torch.Generator().manual_seed(1)).x
    b = sample(net, lang, x0, torch.Generator().manual_seed(1)).x
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert sampler_temperature(lang) == pytest.approx(sampler_temperature(base)) == pytest.approx(0.05**2 / 0.6)
    mom = sampler_config(base, ms["sgd+momentum"])
    assert mom.momentum == 0.9 and mom.step_size / (1 - mom.momentum) == pytest.approx(0.3)
    assert ms["sgd"]["step_size"] == 0.3 and ms["mala"] == {"name": "mala", "step_size": 0.05}


def test_pairwise_diversity():
    from ebmlab.studies import pairwise_diversity

    assert pairwise_diversity(torch.ones(10, 1, 4, 4)) == 0.0
    x = torch.zeros(2, 1, 2, 2)
    x[1] = 1.0
    assert pairwise_diversity(x) == pytest.approx(1.0)  # distance 2 over sqrt(4) values
    assert math.isnan(pairwise_diversity(torch.zeros(1, 3)))


def test_train_cell_reports_divergence_and_does_not_retrain(tmp_path):
    """A run that diverged before its first checkpoint is a result: re-running the cell reads it back."""
    from ebmlab.presets import get_preset
    from ebmlab.studies import train_cell

    cfg = get_preset("quick-gmm8", {"train.iterations": 6, "train.batch_size": 16, "sampler.n_steps": 2,
                                    "train.max_abs_d": 1e-9, "train.progress": False, "train.eval_every": 0})
    cell = train_cell("x", cfg, tmp_path / "x", evaluator=None)
    assert cell.diverged and cell.run is None and cell.metrics()["diverged_at"] == 1
    stamp = (tmp_path / "x" / "summary.json").stat().st_mtime_ns
    again = train_cell("x", cfg, tmp_path / "x", evaluator=None)
    assert again.diverged and (tmp_path / "x" / "summary.json").stat().st_mtime_ns == stamp

    ok = get_preset("quick-gmm8", {"train.iterations": 4, "train.batch_size": 16, "sampler.n_steps": 2,
                                   "train.progress": False, "train.eval_every": 0, "train.checkpoint_every": 2})
    first = train_cell("y", ok, tmp_path / "y", evaluator=None)
    second = train_cell("y", ok, tmp_path / "y", evaluator=None)  # loads the checkpoint, trains nothing
    assert first.status == second.status == "completed" and second.run is not None
    assert second.metrics()["wall_seconds"] == first.metrics()["wall_seconds"]
