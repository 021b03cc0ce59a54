"""Running a sweep: validate, lock the folder, write the pending runs, hand them to an executor, gather.

Executors (``executor=``):

- ``local`` (default): runs here, one after the other or ``workers`` at a time, each in its own
  ``python -m ebmlab.sweep`` process;
- ``submitit-local``: each run is a submitit job on this machine (submitit's LocalExecutor: real
  subprocesses, the same job code as on SLURM), ``workers`` at a time;
- ``slurm``: each run is one task of a SLURM job array (submitit's SlurmExecutor) on a shared filesystem.

See :mod:`ebmlab.sweep.cluster` for the two submitit executors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from ._common import Progress, SweepError, now, read_json, worker_env, write_json
from .cluster import ClusterOptions, check_cluster, run_on_cluster
from .plan import SweepPlan, check_out_dir, materialize, pending_runs, plan_sweep, sweep_lock
from .results import write_results
from .runner import effective_status, run_one

EXECUTORS = ("local", "submitit-local", "slurm")


def run_sweep(notebook, grid: dict, params: dict | None, out_dir, workers: int = 1,
              retry_failed: bool = False, progress: bool = True, kernel_name: str | None = None,
              timeout: float | None = None, metric: str | None = None, executor: str = "local",
              cluster: ClusterOptions | None = None, wait: bool | None = None) -> list[dict]:
    """Run `notebook` over every combination of `grid` into ``out_dir/runs/<id>/``; returns :func:`gather`'s rows.

    Every name and value (and the executor's options) is checked before anything runs. Completed and
    diverged runs are skipped, failed ones rerun only with `retry_failed`, runs left 'running' by a killed
    sweep or job rerun (resuming in their folder). `workers` runs go at once (``local``,
    ``submitit-local``). `cluster`: the jobs' resources for the submitit executors. `wait`: block until
    every job has ended (default: yes, except for ``slurm``, whose jobs outlive this process; watch them
    with ``--status``). Ends by writing ``results.csv`` and ``summary.png`` (`metric` names the column to
    draw; default: the first numeric metric).
    """
    if int(workers) < 1:
        raise SweepError(f"workers must be at least 1, got {workers}")
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    wait = check_cluster(executor, cluster, int(workers), wait)
    plan = plan_sweep(notebook, grid, params, out_dir, kernel_name)
    check_out_dir(plan.out_dir)  # before the lock file is created in it
    with sweep_lock(plan.out_dir):
        materialize(plan)
        todo = pending_runs(plan, retry_failed)
        if executor == "local":
            _execute(plan, todo, int(workers), progress, timeout)
        else:
            run_on_cluster(plan, todo, executor, cluster or ClusterOptions(), int(workers), wait, progress, timeout)
    return write_results(plan.out_dir, metric=metric)


def make_progress(plan: SweepPlan, todo, progress: bool) -> Progress:
    counts = Counter(effective_status(read_json(plan.run_dir(rid) / "run.json")) for rid, _ in plan.runs)
    return Progress(len(plan.runs), len(todo), counts, f"sweep {plan.notebook.stem}", progress)


def _execute(plan: SweepPlan, todo, workers: int, progress: bool, timeout) -> None:
    bar = make_progress(plan, todo, progress)
    try:
        if workers == 1 or len(todo) <= 1:
            for rid, p in todo:
                bar.done(rid, run_one(plan.notebook, p, plan.run_dir(rid), plan.kernel_name, timeout))
        else:
            _run_in_subprocesses(plan, todo, workers, timeout, bar.done)
    finally:
        bar.close()


def _run_in_subprocesses(plan: SweepPlan, todo, workers: int, timeout, done) -> None:
    """Up to `workers` runs at once, each ``python -m ebmlab.sweep SPEC`` calling :func:`run_one`.

    Plain subprocesses rather than a multiprocessing pool: spawn re-imports the caller's main script (a
    script without a ``__main__`` guard would start sweeps recursively), and fork copies a parent holding
    threads (tqdm, zmq). Each run's output, including its kernel's stderr, goes to ``<run>/sweep.log``.
    """
    env = worker_env(workers)
    queue, running = list(todo), {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                rid, p = queue.pop(0)
                rdir = plan.run_dir(rid)
                spec = {"notebook": str(plan.notebook), "params": p, "run_dir": str(rdir),
                        "kernel_name": plan.kernel_name, "timeout": timeout}
                log = open(rdir / "sweep.log", "ab")
                log.write(f"--- {now()} {sys.executable} -m ebmlab.sweep\n".encode())
                log.flush()
                proc = subprocess.Popen([sys.executable, "-m", "ebmlab.sweep", json.dumps(spec)], env=env,
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
                running[rid] = (proc, log)
            time.sleep(0.1)
            for rid, (proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[rid]
                rec = read_json(plan.run_dir(rid) / "run.json") or {"id": rid}
                if rec.get("status") in (None, "pending", "running"):  # the worker died before recording
                    tail = (plan.run_dir(rid) / "sweep.log").read_text(errors="replace").strip().splitlines()[-15:]
                    rec.update(status="failed", ended=now(), error=f"worker process exited with code "
                               f"{proc.returncode} (see sweep.log)", traceback="\n".join(tail))
                    write_json(plan.run_dir(rid) / "run.json", rec)
                done(rid, rec)
    finally:  # interrupted: stop our workers; their runs go back to pending and the next sweep reruns them
        for proc, _log in running.values():
            # SIGINT lets papermill shut its kernel down; a terminated worker would orphan it for a while.
            proc.send_signal(signal.SIGINT) if os.name == "posix" else proc.terminate()
        for proc, log in running.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
