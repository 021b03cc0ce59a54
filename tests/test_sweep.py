"""ebmlab.sweep: validation before anything runs, the run folders, resume/retry, results.csv, summary.png.

Notebook runs cost about two seconds of kernel start-up each, so one 2x2 sweep is run once per module and
the tests that change it work on copies.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pytest.importorskip("jupytext")

from ebmlab import sweep  # noqa: E402

NB = Path(__file__).parent / "fixtures" / "sweep_nb.py"
# score = a * b: 0.5 and 1.0 complete, 3.0 diverges (> 2), 6.0 fails (> 5)
GRID = {"a": ["1", "2"], "b": ["0.5", "3"]}
PARAMS = {"fail_above": "5", "diverge_above": "2"}
EXPECTED = {"a=1__b=0.5": "completed", "a=1__b=3.0": "diverged", "a=2__b=0.5": "completed", "a=2__b=3.0": "failed"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ebmlab")
    sub = p.add_subparsers(dest="command", required=True)
    sweep.add_cli(sub)
    sweep.add_study_cli(sub)
    return p


def _cli(*argv) -> int:
    args = _parser().parse_args([str(a) for a in argv])
    return args.func(args)


def _records(out: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "run.json").read_text()) for d in sorted((out / "runs").iterdir())}


def _csv(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The 2x2 sweep, run once with two workers."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    rows = sweep.run_sweep(NB, GRID, PARAMS, out, workers=2, progress=False)
    return out, rows


@pytest.fixture
def copy_of(swept, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(swept[0], out)
    return out


# ---------------------------------------------------------------------------------- sweeps that run
def test_statuses_metrics_and_results_csv(swept):
    out, rows = swept
    assert {r["run_id"]: r["status"] for r in rows} == EXPECTED
    table = _csv(out)
    assert len(table) == 4
    assert list(table[0])[:8] == ["run_id", "a", "b", "fail_above", "diverge_above", "status", "duration_s", "error"]
    by_id = {r["run_id"]: r for r in table}
    assert {k: r["status"] for k, r in by_id.items()} == EXPECTED
    assert float(by_id["a=2__b=0.5"]["score"]) == 1.0
    assert by_id["a=2__b=0.5"]["detail.a_squared"] == "4"  # nested metrics flattened with dots
    assert "curve" not in table[0]  # lists are for figures, not the table
    assert "asked to fail" in by_id["a=2__b=3.0"]["error"]
    assert by_id["a=1__b=3.0"]["metrics.status"] == "diverged"  # the metric named like a column is renamed
    rec = _records(out)["a=2__b=3.0"]
    assert rec["status"] == "failed" and "RuntimeError" in rec["traceback"] and "\x1b[" not in rec["traceback"]
    assert rec["params"] == {"fail_above": 5.0, "diverge_above": 2.0, "a": 2, "b": 3.0}  # strings coerced
    for d in (out / "runs").iterdir():
        assert (d / "notebook.ipynb").is_file()
        nb = json.loads((d / "notebook.ipynb").read_text())
        assert nb["metadata"]["papermill"]["input_path"] == str(NB.resolve())
    assert sweep.status_counts(out) == {"pending": 0, "running": 0, "completed": 2, "failed": 1, "diverged": 1}


def test_summary_png_written(swept):
    png = swept[0] / "summary.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_executes_nothing(copy_of):
    before = _records(copy_of)
    stamps = {d.name: (d / "notebook.ipynb").stat().st_mtime_ns for d in (copy_of / "runs").iterdir()}
    rows = sweep.run_sweep(NB, GRID, PARAMS, copy_of, workers=2, progress=False)
    assert {r["run_id"]: r["status"] for r in rows} == EXPECTED
    assert _records(copy_of) == before
    assert stamps == {d.name: (d / "notebook.ipynb").stat().st_mtime_ns for d in (copy_of / "runs").iterdir()}


def test_retry_failed_reruns_only_the_failed_run(copy_of, capsys):
    before = _records(copy_of)
    argv = ["sweep", NB, "--grid", "a=1,2", "--grid", "b=0.5,3", "-p", "fail_above=5", "-p", "diverge_above=2",
            "--out", copy_of, "--retry-failed", "--no-progress"]
    assert _cli(*argv) == 1  # a run still fails: exit 1
    after = _records(copy_of)
    for rid in EXPECTED:
        if rid == "a=2__b=3.0":
            assert after[rid]["attempt"] == 2 and after[rid]["status"] == "failed"
            assert after[rid]["history"][0]["status"] == "failed"
        else:
            assert after[rid] == before[rid]
    assert "failed 1" in capsys.readouterr().out


def test_interrupted_sweep_resumes(copy_of):
    # A sweep killed mid-run leaves run.json 'running' with a process that no longer exists.
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    path = copy_of / "runs" / "a=1__b=0.5" / "run.json"
    rec = json.loads(path.read_text())
    rec.update(status="running", pid=dead, ended=None)
    path.write_text(json.dumps(rec))
    (path.parent / "metrics.json").unlink()
    assert sweep.status_counts(copy_of)["pending"] == 1  # its process is gone: pending, not running
    before = _records(copy_of)
    sweep.run_sweep(NB, GRID, PARAMS, copy_of, progress=False)
    after = _records(copy_of)
    assert after["a=1__b=0.5"]["status"] == "completed" and after["a=1__b=0.5"]["attempt"] == 2
    assert all(after[r] == before[r] for r in EXPECTED if r != "a=1__b=0.5")  # the failed one not retried


def test_study_cli_runs_default_grid(tmp_path, monkeypatch, capsys):
    nbdir = tmp_path / "notebooks"
    (nbdir / "grids").mkdir(parents=True)
    shutil.copy(NB, nbdir / "99_tiny.py")
    (nbdir / "grids" / "tiny.yaml").write_text("description: one run\ngrid:\n  a: [3]\nparams:\n  b: 2.0e-1\n")
    monkeypatch.setenv("EBMLAB_NOTEBOOKS", str(nbdir))
    monkeypatch.setitem(sweep.STUDIES, "tiny", sweep.Study("99_tiny.py", "grids/tiny.yaml", "test study"))
    out = tmp_path / "out"
    assert _cli("study", "tiny", "--out", out, "-p", "b=0.25", "--no-progress") == 0
    (row,) = _csv(out)
    assert row["run_id"] == "a=3" and row["status"] == "completed" and float(row["score"]) == 0.75
    assert _cli("study", "tiny", "--out", out, "--status") == 0
    assert "completed 1" in capsys.readouterr().out


# ------------------------------------------------------------------------------ checks before running
def test_misspelled_grid_key_rejected_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(sweep.SweepError, match=r"unknown grid key 'bb'.*did you mean 'b'"):
        sweep.run_sweep(NB, {"a": [1], "bb": [1, 2]}, {}, out, progress=False)
    assert not out.exists()
    assert _cli("sweep", NB, "--grid", "a=1,2", "--grid", "dverge_above=1", "--out", out) == 2
    assert "did you mean 'diverge_above'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("grid, params, message", [
    ({"a": ["1.5"]}, {}, "expects int"),
    ({"a": [1]}, {"b": "fast"}, "expects float"),
    ({"a": [1, 1.0]}, {}, "twice"),
    ({"a": [1]}, {"a": 2}, "both swept"),
    ({}, {"out_dir": "x"}, "set by the sweep"),
    ({"a": []}, {}, "non-empty list"),
])
def test_bad_values_rejected(tmp_path, grid, params, message):
    with pytest.raises(sweep.SweepError, match=message):
        sweep.run_sweep(NB, grid, params, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_notebook_parameters_include_what_papermill_skips():
    params = sweep.notebook_parameters(NB)
    assert set(params) == {"a", "b", "fail_above", "diverge_above", "label", "out_dir"}
    assert params["label"].type_name == "str | None"
    assert sweep.coerce_value(params["label"], "None") is None
    assert sweep.coerce_value(params["label"], "x") == "x"


def test_coerce_value_types():
    P = sweep.Param
    assert sweep.coerce_value(P("n", "int", "1"), "1e3") == 1000
    assert sweep.coerce_value(P("x", "float", "0.1"), "1e-3") == 0.001
    assert sweep.coerce_value(P("x", "float", "0.1"), 2) == 2.0
    assert sweep.coerce_value(P("s", "bool", "False"), "yes") is True
    assert sweep.coerce_value(P("s", "bool", "False"), "false") is False
    assert sweep.coerce_value(P("o", "dict", "{}"), '{"optim.lr": 1e-3}') == {"optim.lr": 0.001}
    assert sweep.coerce_value(P("o", "dict[str, float]", "{}"), "{sampler.n_steps: 60}") == {"sampler.n_steps": 60}
    assert sweep.coerce_value(P("l", "list[int]", "[]"), "[1, 2]") == [1, 2]
    assert sweep.coerce_value(P("u", "None", "0.5"), "2") == 2.0  # no annotation: the default's type
    assert sweep.coerce_value(P("u", "None", "None"), "abc") == "abc"
    assert sweep.coerce_value(P("m", "Optional[int]", "None"), "null") is None
    for p, v in [(P("n", "int", "1"), True), (P("s", "bool", "False"), "maybe"), (P("o", "dict", "{}"), "[1]"),
                 (P("t", "str", "'a'"), 3), (P("n", "int", "1"), None)]:
        with pytest.raises(sweep.SweepError):
            sweep.coerce_value(p, v)


def test_changed_fixed_params_refused(copy_of):
    with pytest.raises(sweep.SweepError, match="other settings.*fail_above"):
        sweep.run_sweep(NB, GRID, {**PARAMS, "fail_above": "7"}, copy_of, progress=False)


def test_foreign_folder_and_concurrent_sweep_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("not a sweep")
    with pytest.raises(sweep.SweepError, match="not empty"):
        sweep.run_sweep(NB, {"a": [1]}, {}, tmp_path, progress=False)
    out = tmp_path / "out"
    with sweep._sweep_lock(out), pytest.raises(sweep.SweepError, match="another sweep is running"):
        sweep.run_sweep(NB, {"a": [1]}, {}, out, progress=False)


# --------------------------------------------------------------------------------- grids and run ids
def test_expand_grid_and_run_ids():
    combos = sweep.expand_grid({"lr": [0.001, 0.01], "sn": [True, False]})
    assert combos == [{"lr": 0.001, "sn": True}, {"lr": 0.001, "sn": False},
                      {"lr": 0.01, "sn": True}, {"lr": 0.01, "sn": False}]
    assert sweep.expand_grid({}) == [{}] and sweep.run_id({}) == "default"
    assert sweep.run_id({"lr": 0.001, "sn": True}) == "lr=0.001__sn=True"
    assert sweep.run_id({"sn": True, "lr": 0.001}) == "lr=0.001__sn=True"  # option order does not matter
    odd = [{"p": "a/b"}, {"p": "a:b"}, {"p": "a b"}, {"o": {"x": 1}}, {"o": {"x": 2}}]
    ids = [sweep.run_id(c) for c in odd]
    assert len(set(ids)) == len(ids)
    assert all(sweep._UNSAFE.search(i) is None for i in ids)
    assert ids == [sweep.run_id(c) for c in odd]  # stable
    long = sweep.run_id({"overrides": {f"key{i}": i for i in range(40)}})
    assert len(long) <= 96 and long != sweep.run_id({"overrides": {f"key{i}": i + 1 for i in range(40)}})


def test_cli_grid_and_param_parsing():
    assert sweep.parse_grid_args(["lr=1e-3, 1e-2", "sn=true,false"]) == {"lr": ["1e-3", "1e-2"],
                                                                          "sn": ["true", "false"]}
    assert sweep.parse_param_args(["overrides={a: 1, b: 2}"]) == {"overrides": "{a: 1, b: 2}"}
    for bad in (["lr"], ["=1"], ["lr="], ["lr=1", "lr=2"]):
        with pytest.raises(sweep.SweepError):
            sweep.parse_grid_args(bad)
    grid, params = sweep.merge_settings({"a": [1, 2], "b": [1]}, {"c": 1}, {"c": ["3", "4"]}, {"a": "5"})
    assert grid == {"b": [1], "c": ["3", "4"]} and params == {"a": "5"}


def test_load_grid_file(tmp_path):
    y = tmp_path / "g.yaml"
    y.write_text("grid:\n  lr: [1e-3, 1.0e-2]\n  sn: [true, false]\nparams:\n  overrides: {optim.lr: 1e-4}\n")
    grid, params = sweep.load_grid_file(y)
    assert grid == {"lr": [0.001, 0.01], "sn": [True, False]}  # 1e-3 is a float here, unlike plain YAML 1.1
    assert params == {"overrides": {"optim.lr": 0.0001}}
    j = tmp_path / "g.json"
    j.write_text(json.dumps({"grid": {"a": [1, 2]}}))
    assert sweep.load_grid_file(j) == ({"a": [1, 2]}, {})
    for text, message in [("grids:\n  a: [1]\n", "did you mean 'grid'"), ("grid:\n  a: 1\n", "non-empty list"),
                          ("- 1\n", "mapping")]:
        y.write_text(text)
        with pytest.raises(sweep.SweepError, match=message):
            sweep.load_grid_file(y)


# ------------------------------------------------------------------------------- reading run folders
def _fake_run(out: Path, rid: str, status: str, params: dict, metrics: dict | None = None, **extra):
    d = out / "runs" / rid
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"id": rid, "status": status, "params": params, **extra}))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))


def test_gather_while_a_run_is_in_progress(tmp_path):
    import os
    import socket

    out = tmp_path / "out"
    _fake_run(out, "a=1", "completed", {"a": 1}, {"score": 0.5}, duration_s=2.0)
    _fake_run(out, "a=2", "running", {"a": 2}, host=socket.gethostname(), pid=os.getpid())
    (out / "runs" / "a=2" / "metrics.json").write_text('{"score": 0.')  # half-written by the notebook
    _fake_run(out, "a=3", "pending", {"a": 3})
    rows = sweep.write_results(out)
    assert [(r["run_id"], r["status"]) for r in rows] == [("a=1", "completed"), ("a=2", "running"),
                                                          ("a=3", "pending")]
    table = _csv(out)
    assert [r["status"] for r in table] == ["completed", "running", "pending"] and table[0]["score"] == "0.5"
    assert (out / "summary.png").is_file()
    assert sweep.status_counts(out) == {"pending": 1, "running": 1, "completed": 1, "failed": 0, "diverged": 0}
    with pytest.raises(sweep.SweepError, match="did you mean 'score'"):
        sweep.write_results(out, metric="scor")
    with pytest.raises(sweep.SweepError, match="holds no sweep"):
        sweep.status_counts(tmp_path / "nothing")


def test_run_one_is_picklable_by_reference():
    assert pickle.loads(pickle.dumps(sweep.run_one)) is sweep.run_one


def test_studies_registry_and_missing_notebooks(tmp_path, monkeypatch, capsys):
    assert {"quickstart", "regularization", "sgd-sampling", "coopnets", "anatomy"} <= set(sweep.STUDIES)
    monkeypatch.setenv("EBMLAB_NOTEBOOKS", str(tmp_path))
    with pytest.raises(sweep.SweepError, match="does not exist"):
        sweep.resolve_study("quickstart")
    with pytest.raises(sweep.SweepError, match="did you mean 'sgd-sampling'"):
        sweep.resolve_study("sgd_sampling")
    assert _cli("study", "regularisation", "--out", tmp_path / "o") == 2
    assert "did you mean 'regularization'" in capsys.readouterr().err
    assert _cli("study") == 0  # no name: the list
    assert "sgd-sampling" in capsys.readouterr().out
    assert _cli("study", "quickstart") == 2
    assert "--out" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ figure
@pytest.mark.parametrize("axes", [[], ["a"], ["a", "b"], ["a", "b", "c"]])
def test_plot_sweep_summary_axes(tmp_path, axes):
    from ebmlab.plotting.sweeps import plot_sweep_summary

    rows = [{"a": a, "b": b, "c": c, "status": "diverged" if a * b > 2 else "completed", "score": a * b}
            for a in (1, 2) for b in (0.5, 3.0) for c in ("x", "y")]
    if not axes:
        rows = rows[:1]
    fig = plot_sweep_summary(rows, axes, "score", path=tmp_path / "s.png", max_facets=1 if axes == ["a", "b", "c"]
                             else 12)
    assert (tmp_path / "s.png").is_file()
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    if axes:
        assert any("diverged" in t for t in texts)


# ------------------------------------------------------------------------------- the notebook contract
def test_resume_args_resume_when_a_checkpoint_exists(tmp_path):
    from ebmlab.rundir import resume_args

    run = tmp_path / "train"
    assert resume_args(run) == {"resume": False, "overwrite": True}  # nothing yet: start
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")  # an attempt killed before its first checkpoint
    assert resume_args(run) == {"resume": False, "overwrite": True}  # start over: nothing to resume from
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    assert resume_args(run) == {"resume": True, "overwrite": False}


def test_workers_share_the_cores(monkeypatch):
    from ebmlab.sweep._common import import_root, worker_env

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    env = worker_env(4, base={"PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert worker_env(16, base={})["OMP_NUM_THREADS"] == "1"  # never zero threads
    assert worker_env(2, base={"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"  # the user's setting wins
    assert "OMP_NUM_THREADS" not in worker_env(None, base={})  # SLURM allots the cores itself
    assert env["PYTHONPATH"].split(os.pathsep)[0] == import_root()  # workers import this ebmlab


def test_dict_axis_labels_are_short_key_value_lines():
    from ebmlab.plotting.sweeps import _label

    assert _label({}) == "(none)" and _label("{}") == "(none)"  # results.csv stores dicts as JSON
    assert _label('{"optim.lr": 0.0003, "optim.lr_decay": 1.0}') == "lr=0.0003\nlr_decay=1"
    assert _label({f"k{i}": i for i in range(6)}).split("\n")[-1] == "+3 more"
    assert _label("{not json") == "{not json" and _label(0.5) == "0.5"
