"""ebmlab.sweep through submitit: the same results as the local executor, jobs that resume after a
preemption or a kill, --status while jobs are queued, and a SLURM job array (through a stand-in for
sbatch/srun/sacct, tests/fixtures/fake_slurm.py, since this machine has no SLURM).

Jobs are real subprocesses starting a Jupyter kernel each (seconds apiece), so every test here runs one
small sweep.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pytest.importorskip("jupytext")
submitit = pytest.importorskip("submitit")

from ebmlab import sweep  # noqa: E402
from ebmlab.sweep import cluster  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
NB = FIXTURES / "sweep_nb.py"
TRAIN_NB = FIXTURES / "train_nb.py"
GRID = {"a": ["1", "2"], "b": ["0.5", "3"]}  # as in test_sweep: completed x2, diverged, failed
PARAMS = {"fail_above": "5", "diverge_above": "2"}
TIMING = ("duration_s",)  # the columns that differ between two executions of the same runs


def _cli(*argv) -> int:
    p = argparse.ArgumentParser(prog="ebmlab")
    sub = p.add_subparsers(dest="command", required=True)
    sweep.add_cli(sub)
    args = p.parse_args([str(a) for a in argv])
    return args.func(args)


def _csv(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or being replaced
        return None


def _until(predicate, timeout: float = 60.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _shared_files(out: Path) -> dict[str, int]:
    """Files of the sweep folder outside the run folders and submitit's own, with their mtimes."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and p.relative_to(out).parts[0] not in ("runs", "submitit")}


# ----------------------------------------------------------------------------------- submitit-local
def test_submitit_local_gives_the_local_executors_results(tmp_path):
    sweep.run_sweep(NB, GRID, PARAMS, tmp_path / "local", workers=2, progress=False)
    rows = sweep.run_sweep(NB, GRID, PARAMS, tmp_path / "sub", workers=2, progress=False, executor="submitit-local")
    assert {r["run_id"]: r["status"] for r in rows} == {"a=1__b=0.5": "completed", "a=1__b=3.0": "diverged",
                                                          "a=2__b=0.5": "completed", "a=2__b=3.0": "failed"}
    local, sub = _csv(tmp_path / "local"), _csv(tmp_path / "sub")
    assert list(local[0]) == list(sub[0])  # same columns, same order
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in sub] == \
           [{k: v for k, v in r.items() if k not in TIMING} for r in local]
    for rid in (r["run_id"] for r in sub):
        job = json.loads((tmp_path / "sub" / "runs" / rid / "job.json").read_text())
        assert job["executor"] == "submitit-local" and Path(job["stderr"]).parent == tmp_path / "sub" / "submitit"
    # The failure was recorded by the job itself, in its run folder, with the notebook's traceback.
    failed = json.loads((tmp_path / "sub" / "runs" / "a=2__b=3.0" / "run.json").read_text())
    assert "asked to fail" in failed["error"] and "RuntimeError" in failed["traceback"]
    assert set(_shared_files(tmp_path / "sub")) == {"sweep.json", "results.csv", "summary.png", ".sweep.lock"}


def test_preempted_and_killed_job_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "out"
    run = out / "runs" / "default"
    params = {"steps": "12", "step_s": "0.25"}

    def step() -> int:
        return (_read(run / "checkpoints" / "last.json") or {}).get("step", 0)

    def record() -> dict:
        return _read(run / "run.json") or {}

    # The submitting sweep waits on its job (submitit-local), so it runs beside the test in a thread.
    first = threading.Thread(target=sweep.run_sweep, args=(TRAIN_NB, {}, params, out),
                             kwargs={"executor": "submitit-local", "progress": False})
    first.start()
    try:
        _until(lambda: step() >= 2, what="the first checkpoints")
        # --status reads the run folders while the job runs; the sweep's lock does not get in its way.
        assert sweep.status_counts(out) == {"pending": 0, "running": 1, "completed": 0, "failed": 0, "diverged": 0}

        # Preemption: SLURM signals the job (USR2) before its time limit; submitit calls SweepJob.checkpoint
        # and requeues the same job, which executes the notebook again in the same folder.
        os.kill(record()["pid"], signal.SIGUSR2)
        _until(lambda: record().get("attempt") == 2 and record().get("status") == "running",
               what="the requeued attempt")
        resumed = step()
        _until(lambda: step() >= resumed + 2, what="the requeued attempt to train")

        # A kill without warning (out of memory, a lost node): nothing is recorded by the job itself; the
        # waiting sweep records the run as failed.
        os.kill(record()["pid"], signal.SIGKILL)
        first.join(timeout=60)
        assert not first.is_alive()
    finally:
        first.join(timeout=60)
    rec = record()
    assert rec["status"] == "failed" and "ended without finishing the run" in rec["error"]
    killed_at = step()
    # Its kernel outlives the job process briefly (ipykernel exits once it sees its parent gone).
    kernels = {int(line.split()[0]) for line in (run / "steps.log").read_text().splitlines()}
    _until(lambda: not any(_alive(pid) for pid in kernels), timeout=20, what="the orphaned kernel to exit")

    # Resubmitted: the same command with --retry-failed continues from the checkpoint.
    assert _cli("sweep", TRAIN_NB, "-p", "steps=12", "-p", "step_s=0.25", "--out", out,
                "--executor", "submitit-local", "--retry-failed", "--no-progress") == 0
    rec = record()
    assert rec["status"] == "completed" and rec["attempt"] == 3
    assert [h["status"] for h in rec["history"]] == ["interrupted", "failed"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final_step"] == 12 and metrics["resumed_from"] >= killed_at >= 4
    # Three kernels, each continuing where the checkpoint left off: no step is redone from scratch.
    log = [tuple(map(int, line.split())) for line in (run / "steps.log").read_text().splitlines()]
    pids = list(dict.fromkeys(pid for pid, _ in log))
    assert len(pids) == 3
    firsts = [next(s for pid, s in log if pid == p) for p in pids]
    lasts = [max(s for pid, s in log if pid == p) for p in pids]
    assert firsts[0] == 1 and lasts[-1] == 12
    # Resumed, never restarted (a kill between a step's log line and its checkpoint redoes that one step).
    assert all(lasts[i] <= firsts[i + 1] <= lasts[i] + 1 for i in range(2))
    assert metrics["resumed_from"] == firsts[-1] - 1
    assert {f.name for f in run.glob("notebook*.ipynb")} == {"notebook.ipynb", "notebook.attempt-1.ipynb",
                                                            "notebook.attempt-2.ipynb"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------------------------------- slurm
@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch, srun and sacct on PATH, backed by tests/fixtures/fake_slurm.py; returns its state folder."""
    bindir, state = tmp_path / "bin", tmp_path / "slurm"
    bindir.mkdir()
    state.mkdir()
    for cmd in ("sbatch", "srun", "sacct"):
        (bindir / cmd).write_text(f'#!/bin/sh\nexec {sys.executable} {FIXTURES / "fake_slurm.py"} {cmd} "$@"\n')
        (bindir / cmd).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.setattr(cluster, "SLURM_POLL_S", 0.2)
    yield state
    (state / "hold").unlink(missing_ok=True)
    for pidfile in state.glob("driver_*.pid"):  # the scheduler stand-ins this test started
        pid = int(pidfile.read_text())
        if _alive(pid):
            os.killpg(pid, signal.SIGTERM)


def test_slurm_job_array_status_while_pending_and_resubmission(fake_slurm, tmp_path, capsys):
    out = tmp_path / "out"
    (fake_slurm / "hold").touch()  # the stand-in scheduler keeps every job pending while this file exists
    argv = ["sweep", NB, "--grid", "a=1,2", "-p", "b=0.5", "--out", out, "--executor", "slurm",
            "--slurm-partition", "gpu", "--slurm-gpus-per-task", "1", "--slurm-time", "240",
            "--slurm-array-parallelism", "2", "--slurm-mem", "8G", "--no-progress"]
    assert _cli(*argv) == 0  # submits and returns: SLURM jobs outlive the command
    assert "pending 2" in capsys.readouterr().out
    assert sweep.status_counts(out) == {"pending": 2, "running": 0, "completed": 0, "failed": 0, "diverged": 0}
    assert _cli("sweep", "--out", out, "--status") == 0 and "pending 2" in capsys.readouterr().out
    script = (out / "submitit" / "1000_submission.sh").read_text()
    for flag in ("--partition=gpu", "--gpus-per-task=1", "--time=240", "--array=0-1%2", "--mem=8G",
                 "--signal=USR2@90"):
        assert f"#SBATCH {flag}" in script
    assert {json.loads((out / "runs" / r / "job.json").read_text())["job_id"] for r in ("a=1", "a=2")} == \
           {"1000_0", "1000_1"}

    # The same command while the array is queued submits nothing twice.
    assert _cli(*argv) == 0
    assert sorted(p.name for p in fake_slurm.glob("job_*.sh")) == ["job_1000.sh"]

    shared = _shared_files(out)
    (fake_slurm / "hold").unlink()  # the jobs start
    _until(lambda: all((_read(out / "runs" / r / "run.json") or {}).get("status") == "completed"
                       for r in ("a=1", "a=2")), what="the SLURM jobs")
    assert _shared_files(out) == shared  # jobs wrote nothing outside their run folders (and submitit's)
    capsys.readouterr()
    assert _cli("sweep", "--out", out, "--status") == 0 and "completed 2" in capsys.readouterr().out
    assert [(r["run_id"], r["status"], float(r["score"])) for r in _csv(out)] == [("a=1", "completed", 0.5),
                                                                                   ("a=2", "completed", 1.0)]

    # A grown grid submits only the new run; --wait follows it to the end.
    assert _cli(*[a if a != "a=1,2" else "a=1,2,3" for a in argv], "--wait") == 0
    assert sorted(p.name for p in fake_slurm.glob("job_*.sh")) == ["job_1000.sh", "job_1001.sh"]
    assert [(r["run_id"], r["status"]) for r in _csv(out)] == [("a=1", "completed"), ("a=2", "completed"),
                                                              ("a=3", "completed")]


# ------------------------------------------------------------------------------ checks before running
@pytest.mark.parametrize("kwargs, message", [
    ({"executor": "slurm"}, "sbatch and srun not found on PATH.*--executor submitit-local"),
    ({"cluster": sweep.ClusterOptions(partition="gpu")}, "--slurm-\\* options need --executor slurm"),
    ({"executor": "submitit-local", "wait": False}, "--no-wait needs --executor slurm"),
    ({"executor": "submitit-local", "cluster": sweep.ClusterOptions(mem="lots")}, "--slurm-mem 'lots'"),
    ({"executor": "submitit-local", "cluster": sweep.ClusterOptions(time_min=0)}, "--slurm-time must be"),
    ({"executor": "cloud"}, "unknown executor 'cloud'"),
])
def test_executor_options_checked_before_anything_runs(tmp_path, monkeypatch, kwargs, message):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch here, whatever this machine has
    with pytest.raises(sweep.SweepError, match=message):
        sweep.run_sweep(NB, {"a": ["1"]}, {}, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_workers_refused_sbatch_and_missing_submitit_are_explained(tmp_path, monkeypatch, capsys):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpu' >&2\nexit 1\n")
    (bindir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for cmd in ("sbatch", "srun"):
        (bindir / cmd).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    argv = ["sweep", NB, "--grid", "a=1,2", "--out", out, "--executor", "slurm", "--slurm-partition", "gpu"]
    assert _cli(*argv, "--workers", "2") == 2
    assert "--slurm-array-parallelism" in capsys.readouterr().err
    assert not out.exists()
    assert _cli(*argv) == 2
    err = capsys.readouterr().err
    assert "sbatch refused the job array" in err and "invalid partition" in err
    assert sweep.status_counts(out)["pending"] == 2 and not list(out.glob("runs/*/job.json"))
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    assert _cli("sweep", NB, "--grid", "a=1,2", "--out", tmp_path / "out2", "--executor", "submitit-local") == 2
    assert "pip install 'ebmlab[slurm]'" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_sweep_job_checkpoint_requeues_itself():
    from ebmlab.sweep.jobs import SweepJob

    job = SweepJob(str(NB), {"a": 1}, "/shared/out/runs/a=1", None, 60.0)
    assert isinstance(job, submitit.helpers.Checkpointable)
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is job and delayed.args == () and delayed.kwargs == {}
    again = pickle.loads(pickle.dumps(job))  # jobs travel to the cluster as pickles
    assert vars(again) == vars(job)


def test_sweep_and_rundir_import_without_torch_or_submitit():
    code = ("import sys, ebmlab.sweep, ebmlab.rundir, ebmlab.sweep.cluster; "
            "print(sorted(m for m in ('torch', 'submitit', 'papermill') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
