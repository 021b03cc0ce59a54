"""The Langevin explorer: ebmlab.explore on the shipped model, its widget wiring headless, its notebook."""

import io
import json
from pathlib import Path

import pytest
import torch

from ebmlab import explore as ex
from ebmlab.config import ConfigError
from ebmlab.diagnostics import log_spaced_steps

ROOT = Path(__file__).resolve().parents[1]
NB_PY = ROOT / "notebooks" / "05_langevin_explorer.py"
NB_IPYNB = NB_PY.with_suffix(".ipynb")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These chains are tiny; on 2 busy shared cores two torch threads wait on each other and run ~20x
    # slower than one (measured: 0.8 s against 0.04 s per gradient of 36 digits).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return ex.load_model()


def _run(model, **kw):
    kw = {"n_steps": 6, "n_chains": 4, **kw}
    return ex.explore(model, **kw)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --- the shipped model ------------------------------------------------------------------------------

def test_shipped_model_is_small_config_and_weights_only(model):
    path = ex.shipped_model_path()
    assert path.stat().st_size < 4e6
    saved = torch.load(path, weights_only=True)  # never runs code
    assert set(saved) == {"format", "config", "model", "provenance"}
    assert saved["format"] == ex.ASSET_FORMAT
    assert saved["provenance"]["command"] == ex.SHIPPED_COMMAND
    assert "ebmlab train --preset quick-mnist5k --out /tmp/explorer_model" in ex.load_model.__doc__
    assert model.cfg.data.name == "mnist5k" and model.sample_shape == (1, 28, 28)
    assert model.inits == ("uniform", "gaussian", "data")  # no chain bank shipped
    assert ex.load_model() is model and ex.load_model("") is model  # cached: sliders never reload
    assert ex.load_model(model) is model


# --- explore() --------------------------------------------------------------------------------------

def test_explore_returns_samples_traces_and_snapshots(model):
    r = _run(model, n_chains=5)
    assert r.samples.shape == (5, 1, 28, 28)
    assert torch.equal(r.steps, torch.arange(7))
    assert r.energy.shape == r.grad_norm.shape == (7, 5)
    assert torch.isfinite(r.energy).all() and (r.grad_norm > 0).all()
    assert sorted(r.snapshots) == log_spaced_steps(6, 5)
    assert torch.equal(r.snapshots[6], r.samples)
    assert r.snapshots[0].abs().max() <= 1  # uniform start
    with torch.no_grad():  # the traces are E of the states shown, first and last included
        assert torch.allclose(r.energy[0], model.net(r.snapshots[0]), atol=1e-5)
        assert torch.allclose(r.energy[-1], model.net(r.samples), atol=1e-5)
    assert r.accept is None
    m = json.loads(json.dumps(r.metrics()))
    assert m["noise"] == 0.01 and m["n_steps"] == 6 and m["energy_end"] == pytest.approx(float(r.energy[-1].mean()))
    assert r.overrides == {"sampler.name": "sgld", "sampler.step_size": 1.0, "sampler.noise": 0.01,
                           "sampler.n_steps": 6}
    assert r.set_args == ("--set sampler.name=sgld --set sampler.step_size=1 --set sampler.noise=0.01 "
                          "--set sampler.n_steps=6")
    fig = r.figure
    assert len(fig.axes) == len(r.snapshots) + 3  # sample grids, then energy, grad norm, saturation
    assert "T = σ²/2h = 5e-05" in fig.get_suptitle()


def test_same_seed_same_chains_and_start_independent_of_sampler(model):
    a, b = _run(model, seed=3), _run(model, seed=3)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.energy, b.energy)
    c = _run(model, seed=4)
    assert not torch.equal(a.samples, c.samples)
    d = _run(model, seed=3, noise=0.1, step_size=0.3)
    assert torch.equal(a.snapshots[0], d.snapshots[0]) and not torch.equal(a.samples, d.samples)


def test_noise_off_is_deterministic_gradient_descent(model):
    off = _run(model, noise=0.0, step_size=0.05)
    sgd = _run(model, sampler="sgd", step_size=0.05, seed=0)
    assert torch.equal(off.samples, sgd.samples)  # no random number enters after the start
    # langevin with the noise off: drift ε²/2, the same descent
    lan = _run(model, sampler="langevin", step_size=0.05**0.5 * 2**0.5, noise=0.0)
    assert lan.sampler.temperature == 0.0
    assert torch.allclose(lan.samples, sgd.samples, atol=1e-5)
    # a small step lowers every chain's energy at every step
    assert (sgd.energy.diff(dim=0) <= 1e-5).all()


def test_langevin_noise_slider_sets_the_temperature(model):
    eps, sigma = 0.5, 0.02
    lan = _run(model, sampler="langevin", step_size=eps, noise=sigma)
    assert lan.sampler.temperature == pytest.approx((sigma / eps) ** 2)
    assert ex.update_terms(lan.sampler) == pytest.approx((eps**2 / 2, sigma))
    sgld = _run(model, sampler="sgld", step_size=eps**2 / 2, noise=sigma)
    assert torch.allclose(lan.samples, sgld.samples, atol=1e-5)  # the same chain, two parameterisations
    textbook = ex.sampler_config(model.cfg.sampler, "langevin", eps, None, 5)
    assert textbook.temperature == 1.0 and ex.update_terms(textbook) == (eps**2 / 2, eps)
    assert "T = σ²/2h = 1" in ex.describe_update(textbook)


def test_mala_and_sgd_ignore_the_noise_setting(model):
    a = _run(model, sampler="mala", step_size=0.05, noise=0.5)
    b = _run(model, sampler="mala", step_size=0.05)
    assert torch.equal(a.samples, b.samples)
    assert a.accept.shape == (6, 4) and 0.0 <= a.metrics()["acceptance"] <= 1.0
    assert a.settings["noise"] == 0.05  # what was added: ε
    assert torch.equal(_run(model, sampler="sgd", noise=0.3).samples, _run(model, sampler="sgd").samples)


def test_bad_settings_raise_before_any_sampling(model, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("sampled despite bad settings")

    monkeypatch.setattr(ex, "long_run", no_work)
    with pytest.raises(ConfigError, match="sampler.name"):
        ex.explore(model, sampler="hmc")
    with pytest.raises(ConfigError, match="step_size"):
        ex.explore(model, step_size=0.0)
    with pytest.raises(ConfigError, match="noise"):
        ex.explore(model, noise=-0.1)
    with pytest.raises(ConfigError, match="n_steps"):
        ex.explore(model, n_steps=-1)
    with pytest.raises(ValueError, match="no saved chain bank"):
        ex.explore(model, init="persistent")
    with pytest.raises(ValueError, match="n_chains"):
        ex.explore(model, n_chains=0)
    with pytest.raises(ValueError, match="no saved chain bank"):
        ex.build_explorer(model, init="persistent")


def test_checkpoint_with_a_bank_continues_its_chains(model, tmp_path):
    bank = 2 * torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(0)) - 1
    path = tmp_path / "last.pt"
    torch.save({"config": model.cfg.to_dict(), "model": model.net.state_dict(), "init": {"bank": bank}}, path)
    m = ex.load_model(path)
    assert m is not model and "persistent" in m.inits
    r = ex.explore(m, init="persistent", n_steps=0, n_chains=3)
    assert r.energy.shape == (1, 3) and list(r.snapshots) == [0]
    assert all((bank == x).flatten(1).all(1).any() for x in r.samples)  # started from bank rows, unchanged


def test_run_folder_export_and_cli(tmp_path, capsys):
    # A toy run (its data is drawn, not loaded): load_run brings data and chain bank along.
    from ebmlab.nets import build_energy
    from ebmlab.presets import get_preset
    from ebmlab.rundir import RunDir, save_checkpoint, write_json

    cfg = get_preset("quick-gmm8")
    torch.manual_seed(0)
    net = build_energy(cfg.model, (2,))
    rd = RunDir(tmp_path / "run")
    write_json(rd.config, cfg.to_dict())
    write_json(rd.summary, {"status": "completed", "iterations": 5})
    bank = torch.randn(cfg.init.buffer_size, 2)
    save_checkpoint(rd.checkpoint, {"iteration": 5, "model": net.state_dict(), "init": {"bank": bank}})
    m = ex.load_model(rd.root)
    assert m.data is not None and "persistent" in m.inits
    r = ex.explore(m, init="persistent", n_steps=3, n_chains=16, sampler="langevin")
    assert r.samples.shape == (16, 2) and r.data_energy == pytest.approx(m.data_energy())
    energy_ax = next(a for a in r.figure.axes if a.get_title().startswith("energy"))
    assert "E(held-out data)" in [ln.get_label() for ln in energy_ax.get_lines()]

    out = tmp_path / "toy.pt"
    assert ex.export_model(rd.root, out) == out
    saved = torch.load(out, weights_only=True)
    assert saved["provenance"]["status"] == "completed" and saved["provenance"]["iteration"] == 5
    assert "optimizer" not in saved and "init" not in saved  # weights and config only
    exported = ex.load_model(out)
    assert all(torch.equal(exported.net.state_dict()[k], v) for k, v in net.state_dict().items())
    with pytest.raises(FileExistsError, match="overwrite"):
        ex.export_model(rd.root, out)
    assert ex.main(["--export", str(rd.root), "--out", str(out), "--overwrite"]) == 0
    assert ex.main(["--model", str(out), "--steps", "2", "--n", "4", "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert ex.main(["--export", str(tmp_path / "nothing")]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


# --- the widget panel, headless -----------------------------------------------------------------------

def test_widgets_rerun_the_sampler_and_redraw(model, monkeypatch):
    panel, state = ex.build_explorer(model, n_steps=4, n_chains=4)
    w = state.widgets
    assert state.runs == 1 and state.result.settings["n_steps"] == 4
    assert all(w[k].continuous_update is False for k in ("step_size", "noise", "n_steps"))
    seen = []
    state.hooks.append(seen.append)
    fig0, png0 = state.figure, _png(state.figure)

    w["step_size"].value = 0.1  # what a slider drag does
    assert state.runs == 2 and seen == [state.result]
    assert state.result.sampler.step_size == pytest.approx(0.1)
    assert state.figure is not fig0 and _png(state.figure) != png0
    assert "0.1·∇E" in w["info"].value and "--set sampler.step_size=0.1" in w["info"].value

    w["noise_on"].value = False
    assert state.runs == 3 and state.result.sampler.noise == 0.0 and w["noise"].disabled
    w["sampler"].value = "mala"
    assert state.result.sampler.name == "mala" and w["noise_on"].disabled
    samples = state.result.samples
    w["fresh"].click()
    assert state.seed == 1 and state.runs == 5 and not torch.equal(state.result.samples, samples)
    w["n_steps"].value = 2
    assert sorted(state.result.snapshots) == [0, 1, 2] and len(seen) == 5

    # an error is shown in the readout (a callback's exception would vanish in the browser console)
    monkeypatch.setattr(ex, "explore", lambda *a, **k: (_ for _ in ()).throw(ValueError("boom")))
    w["step_size"].value = 0.2
    assert state.runs == 6 and "boom" in w["info"].value and state.error == "ValueError: boom"


def test_panel_starts_from_a_result_without_rerunning(model, monkeypatch):
    r = _run(model, sampler="langevin", step_size=0.3, noise=0.0, n_steps=3)
    monkeypatch.setattr(ex, "explore", lambda *a, **k: pytest.fail("reran"))
    _, state = ex.build_explorer(model, result=r)
    w = state.widgets
    assert state.result is r and state.runs == 1
    assert (w["sampler"].value, w["n_steps"].value, w["noise_on"].value) == ("langevin", 3, False)
    assert w["step_size"].value == pytest.approx(0.3)


# --- the notebook ---------------------------------------------------------------------------------------


def test_notebook_pair_in_sync_with_colab_metadata():
    jupytext = pytest.importorskip("jupytext")
    from jupytext.compare import compare_notebooks

    from ebmlab.colab import colab_badge

    nb = jupytext.read(NB_IPYNB)
    compare_notebooks(nb, jupytext.read(NB_PY), fmt="py:percent")  # raises when they differ
    assert nb.metadata["accelerator"] == "GPU" and "colab" in nb.metadata
    assert colab_badge(NB_PY) in nb.cells[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert 'if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):' in code[0].source
    assert "!bash colab_setup.sh" in code[0].source  # a shell escape in the notebook, a comment in the .py
    assert code[1].metadata.get("tags") == ["parameters"]
    for name in ("run_dir", "sampler", "step_size", "noise", "n_steps", "init", "seed", "device", "out_dir",
                 "smoke"):
        assert f"\n{name}: " in "\n" + code[1].source
    # no sampler logic in the notebook: every chain runs inside ebmlab.explore
    assert not any(s in c.source for c in code for s in ("torch.randn", "autograd", ".backward("))


def test_notebook_runs_under_papermill_and_writes_its_figure(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # see one_thread
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    out = tmp_path / "out"
    nb = papermill.execute_notebook(str(NB_IPYNB), str(tmp_path / "run.ipynb"), kernel_name="python3",
                                    parameters={"smoke": True, "out_dir": str(out)}, cwd=str(tmp_path),
                                    progress_bar=False, start_timeout=120, execution_timeout=120)
    assert (out / "explorer.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_steps"] == 10 and metrics["n_chains"] == 8 and metrics["finite"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
