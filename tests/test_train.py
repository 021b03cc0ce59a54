import json

import pytest
import torch

from ebmlab.cli import main as cli_main
from ebmlab.metrics import toy_kl
from ebmlab.nets import build_energy
from ebmlab.presets import get_preset
from ebmlab.rundir import read_jsonl
from ebmlab.samplers.fast import resolve_precision
from ebmlab.train import train


def _quiet(over):
    return {"train.progress": False, **over}


def test_quick_gmm8_lowers_kl(tmp_path):
    cfg = get_preset("quick-gmm8", _quiet({"train.iterations": 300, "train.eval_every": 0}))
    torch.manual_seed(cfg.train.seed)
    kl0 = toy_kl(__import__("ebmlab.data", fromlist=["GMM8"]).GMM8(), build_energy(cfg.model, (2,)))
    run = train(cfg, tmp_path / "run")
    kl = run.summary["final_metrics"]["toy_kl"]
    assert run.summary["status"] == "completed"
    assert kl0 > 1.0  # a fresh network is far from eight modes
    assert kl < 0.35 * kl0, (kl0, kl)


def _state(run):
    return {k: v.clone() for k, v in run.net.state_dict().items()}


@pytest.mark.parametrize("preset,over", [
    ("quick-gmm8", {"train.batch_size": 32, "sampler.n_steps": 5, "init.buffer_size": 200}),
    ("quick-mnist5k", {"model.n_f": 4, "sampler.n_steps": 3, "train.batch_size": 8, "init.name": "persistent",
                       "init.buffer_size": 50, "model.spectral_norm": True, "data.noise": 0.03}),
    ("coopnets-mnist5k", {"model.n_f": 4, "init.gen_n_f": 4, "sampler.n_steps": 3, "train.batch_size": 8,
                          "init.gen_latent_steps": 2}),
])
def test_resume_is_exact(tmp_path, preset, over):
    base = _quiet({**over, "train.eval_every": 0, "train.checkpoint_every": 3, "train.sample_every": 100,
                   "train.log_every": 1})
    full = train(get_preset(preset, {**base, "train.iterations": 8}), tmp_path / "full")
    train(get_preset(preset, {**base, "train.iterations": 4}), tmp_path / "half")
    resumed = train(get_preset(preset, {**base, "train.iterations": 8}), tmp_path / "half", resume=True)
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    train_recs = lambda p: [r for r in read_jsonl(p) if not r.get("eval")]  # noqa: E731
    ra, rb = train_recs(tmp_path / "full/metrics.jsonl"), train_recs(tmp_path / "half/metrics.jsonl")
    assert [r["iteration"] for r in ra] == [r["iteration"] for r in rb]
    assert [r["d"] for r in ra] == [r["d"] for r in rb]


def test_resume_after_kill_drops_lost_records(tmp_path):
    """A kill after iteration 6 with the last checkpoint at 4: resume redoes 5-6 and the log has no duplicates."""
    import shutil

    base = _quiet({"train.batch_size": 16, "sampler.n_steps": 3, "init.buffer_size": 100, "train.eval_every": 0,
                   "train.checkpoint_every": 4, "train.log_every": 1})
    train(get_preset("quick-gmm8", {**base, "train.iterations": 6}), tmp_path / "r")
    train(get_preset("quick-gmm8", {**base, "train.iterations": 4}), tmp_path / "at4")
    shutil.copy(tmp_path / "at4/checkpoints/last.pt", tmp_path / "r/checkpoints/last.pt")  # the state at the kill
    resumed = train(get_preset("quick-gmm8", {**base, "train.iterations": 10}), tmp_path / "r", resume=True)
    straight = train(get_preset("quick-gmm8", {**base, "train.iterations": 10}), tmp_path / "straight")
    its = [r["iteration"] for r in read_jsonl(tmp_path / "r/metrics.jsonl") if not r.get("eval")]
    assert its == list(range(1, 11)) and resumed.summary["iterations_done"] == 10
    assert all(torch.equal(a, b) for a, b in zip(_state(resumed).values(), _state(straight).values()))


def test_divergence_is_detected(tmp_path):
    cfg = get_preset("quick-gmm8", _quiet({"optim.lr": 0.5, "optim.lr_decay": 1.0, "train.max_abs_d": 50.0,
                                           "sampler.n_steps": 5, "train.iterations": 300, "train.eval_every": 0}))
    run = train(cfg, tmp_path / "div")
    s = json.loads((tmp_path / "div/summary.json").read_text())
    assert s["status"] == "diverged" == run.summary["status"]
    assert 1 <= s["diverged_at"] < 300 and s["iterations_done"] == s["diverged_at"] - 1
    assert "d=" in s["error"]


def test_quick_mnist5k_writes_run_folder(tmp_path):
    out = tmp_path / "mn"
    cfg = get_preset("quick-mnist5k", _quiet({"train.iterations": 3, "train.sample_every": 1,
                                              "train.checkpoint_every": 2, "train.eval_every": 0,
                                              "train.log_every": 1}))
    run = train(cfg, out, evaluator=None)
    for f in ("config.json", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "samples/iter_000001.png",
              "samples/last.png"):
        assert (out / f).exists(), f
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "completed" and s["iterations_done"] == 3 and s["wall_seconds"] > 0
    assert s["sampler_precision"] == resolve_precision(cfg.sampler.precision, "cpu")
    recs = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in recs] == [1, 2, 3]
    assert {"iteration", "d", "r", "e_pos", "e_neg", "lr", "wall"} <= recs[0].keys()
    ck = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert ck["iteration"] == 3 and "bank" in ck["init"]
    assert json.loads((out / "config.json").read_text())["data"]["name"] == "mnist5k"
    assert run.sample(4).x.shape == (4, 1, 28, 28)


def test_cli_train_refuses_existing_folder_and_samples(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--preset", "quick-gmm8", "--out", str(out), "--set", "train.iterations=3",
            "--set", "train.progress=false", "--set", "train.eval_every=0"]
    assert cli_main(args) == 0
    assert cli_main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli_main(args + ["--overwrite"]) == 0
    assert cli_main(["sample", "--run", str(out), "--n", "50", "--steps", "3", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").exists()
    assert cli_main(["train", "--out", str(tmp_path / "x"), "--set", "sampler.stepsize=1"]) == 2
    assert "sampler.step_size" in capsys.readouterr().err
    assert cli_main(["presets"]) == 0
    assert "quick-mnist5k" in capsys.readouterr().out


def test_cli_eval_writes_eval_json(tmp_path, capsys):
    out = tmp_path / "ev"
    cfg = get_preset("quick-gmm8", _quiet({"train.iterations": 3, "train.eval_every": 0}))
    train(cfg, out)
    assert cli_main(["eval", "--run", str(out), "--n", "200", "--sampler", "mala", "--steps", "5"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["sampler"] == "mala" and result["n"] == 200
    assert {"toy_kl", "toy_mmd"} <= result["metrics"].keys()


def test_eval_records_time_to_quality(tmp_path):
    cfg = get_preset("quick-gmm8", _quiet({"train.iterations": 400, "train.eval_every": 100}))
    run = train(cfg, tmp_path / "ttq")
    evals = [r for r in run.records if r.get("eval")]
    assert [r["iteration"] for r in evals] == [100, 200, 300, 400]
    ttq = run.summary["time_to_quality"]
    good = [r for r in evals if r["toy_kl"] <= 0.15]
    assert ttq == ({"iteration": good[0]["iteration"], "wall_seconds": good[0]["wall"]} if good else None)
    assert evals[-1]["toy_kl"] < evals[0]["toy_kl"]


def test_model_samples_start_from_the_bank_without_restarts():
    """Evaluation draws chains from the bank; only training's draws restart some of them from noise."""
    from ebmlab.init import ReplayBuffer

    buf = ReplayBuffer((1, 4, 4), "cpu", size=50, reinit_prob=1.0, generator=torch.Generator().manual_seed(0))
    buf.bank = torch.arange(50.0).view(50, 1, 1, 1).expand(50, 1, 4, 4).clone() + 10  # far outside U(-1, 1)
    x_train, idx = buf.draw(20, torch.Generator().manual_seed(1))
    assert x_train.abs().max() <= 1  # reinit_prob 1: every training chain restarted from noise
    x = buf.draw_samples(20, torch.Generator().manual_seed(1))
    assert torch.equal(x, buf.bank[idx])  # the same chains, untouched
    x[0] = 0
    assert buf.bank.min() >= 10  # a copy: sampling from it never writes back
    with pytest.raises(ValueError, match="larger than the bank"):
        buf.draw_samples(51)
