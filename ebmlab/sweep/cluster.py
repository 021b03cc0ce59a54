"""Sweeps through submitit: each pending run is one job, a task of a SLURM job array or a local subprocess.

``executor="slurm"`` submits one job array (submitit's SlurmExecutor) and by default returns at once: the
jobs outlive the command and ``ebmlab sweep --out DIR --status`` follows them. ``"submitit-local"`` runs
the same job code through submitit's LocalExecutor on this machine, ``workers`` jobs at a time, and waits.
Every job executes :class:`~ebmlab.sweep.jobs.SweepJob`, i.e. :func:`~ebmlab.sweep.runner.run_one`, into
the same folders as the local executor (on a filesystem the compute nodes share)::

    OUT/runs/<id>/...           the run, as with the local executor; written only by the job executing it
    OUT/runs/<id>/job.json      which job was given the run: executor, job id, log paths (the sweep writes it)
    OUT/submitit/               submitit's files, each named by its job id: scripts, pickled jobs, logs

Nothing a job writes is shared: sweep.json, results.csv and summary.png are written by the sweep command
alone (or ``--status``), and the sweep's lock file is never taken by a job.

Resumption: when a job is preempted or reaches its time limit, submitit signals it and calls
``SweepJob.checkpoint``, which requeues the same job; the notebook is executed again in the same run folder
and continues from its own checkpoint there (the notebook contract in :mod:`ebmlab.sweep`). A job that
fails records its error in run.json; one that dies before it can (killed, out of memory, a lost node) is
recorded as failed by a waiting sweep, or found orphaned and submitted again by the next sweep command,
which also resumes it. Runs whose job is still queued or running are never submitted twice.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from ._common import THREAD_VARS, SweepError, now, read_json, worker_env, write_json
from .runner import _pid_alive

_OUTCOMES = ("completed", "failed", "diverged")
SLURM_POLL_S = 10.0  # how often a waiting sweep looks at its SLURM jobs (submitit rate-limits sacct anyway)
_MEM = re.compile(r"^\d+(\.\d+)?[KMGT]?B?$", re.IGNORECASE)


@dataclass(frozen=True)
class ClusterOptions:
    """Resources of each job. Names follow sbatch; submitit-local honours ``time_min`` and ``gpus_per_task``."""

    partition: str | None = None
    time_min: int = 240  # per job; a job reaching it is requeued and resumes, so this need not cover a run
    gpus_per_task: int | None = None  # submitit-local: GPUs visible to each job (none unless asked, as on SLURM)
    cpus_per_task: int | None = None
    mem: str | None = None  # sbatch --mem: 32G, 16000M
    account: str | None = None
    qos: str | None = None
    array_parallelism: int | None = None  # at most this many of the array's jobs at once (default: SLURM's)
    setup: tuple[str, ...] = ()  # shell lines run before each job: `module load cuda`, `source venv/bin/activate`
    extra: dict = field(default_factory=dict)  # any other sbatch option, {"constraint": "a100"}
    # Each requeue after a time limit resumes from a checkpoint, so requeues are cheap progress; the bound
    # only stops a notebook that never finishes from cycling forever.
    max_requeues: int = 10

    def check(self) -> None:
        for name in ("time_min", "cpus_per_task", "array_parallelism", "max_requeues"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise SweepError(f"--slurm-{name.replace('_min', '').replace('_', '-')} must be a whole number "
                                 f"of at least 1, got {v!r}")
        if self.gpus_per_task is not None and (not isinstance(self.gpus_per_task, int) or self.gpus_per_task < 0):
            raise SweepError(f"--slurm-gpus-per-task must be a whole number of at least 0, got {self.gpus_per_task!r}")
        if self.mem is not None and not _MEM.match(str(self.mem)):
            raise SweepError(f"--slurm-mem {self.mem!r}: give a size as sbatch reads it, e.g. 32G or 16000M")

    def is_default(self) -> bool:
        return all(getattr(self, f.name) == getattr(ClusterOptions(), f.name) for f in fields(self))


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise SweepError("the submitit-local and slurm executors need submitit, an optional dependency: "
                         "pip install 'ebmlab[slurm]' (or pip install submitit), or use --executor local") from None
    return submitit


def check_cluster(executor: str, cluster: ClusterOptions | None, workers: int, wait: bool | None) -> bool:
    """Refuse options that do not fit the executor, before anything runs; returns whether to wait for jobs."""
    if executor == "local":
        if cluster is not None and not cluster.is_default():
            raise SweepError("--slurm-* options need --executor slurm (or submitit-local, which honours "
                             "--slurm-time and --slurm-gpus-per-task); add the executor or drop the options")
        if wait is False:
            raise SweepError("--no-wait needs --executor slurm: local runs are executed by this command")
        return True
    _import_submitit()
    (cluster or ClusterOptions()).check()
    if executor == "submitit-local":
        if wait is False:
            raise SweepError("--no-wait needs --executor slurm: submitit-local starts its jobs as --workers slots "
                             "free up, so it waits for them")
        return True
    if workers != 1:
        raise SweepError("--workers is for the local executors; on SLURM limit how many jobs run at once with "
                         "--slurm-array-parallelism N")
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if missing:
        raise SweepError(f"--executor slurm: {' and '.join(missing)} not found on PATH; run the sweep on the "
                         f"cluster's login node with --out on a filesystem the compute nodes share, or try the "
                         f"same jobs on this machine with --executor submitit-local")
    return bool(wait)


def _make_executor(executor: str, folder: Path, opts: ClusterOptions, job_name: str):
    submitit = _import_submitit()
    if executor == "submitit-local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=opts.max_requeues)
        # LocalExecutor hides every GPU unless asked for some (it sets CUDA_VISIBLE_DEVICES).
        ex.update_parameters(timeout_min=opts.time_min, gpus_per_node=opts.gpus_per_task or 0)
        return ex
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.max_requeues)
    params = {"job_name": job_name, "time": opts.time_min, "partition": opts.partition,
              "gpus_per_task": opts.gpus_per_task, "cpus_per_task": opts.cpus_per_task, "mem": opts.mem,
              "account": opts.account, "qos": opts.qos, "array_parallelism": opts.array_parallelism,
              "setup": list(opts.setup) or None, "additional_parameters": dict(opts.extra) or None}
    try:
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    except ValueError as e:
        raise SweepError(f"submitit refused the SLURM options: {e}") from None
    return ex


@contextlib.contextmanager
def _job_environment(workers: int | None):
    """Jobs inherit this process's environment (LocalExecutor copies it, sbatch exports it): for the
    submission, set what :func:`worker_env` gives a worker (this ebmlab first on the import path; with
    ``workers`` local jobs at once, each one's share of the cores as its thread count)."""
    env = worker_env(workers)
    keys = ("PYTHONPATH", *THREAD_VARS)
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys if k in env})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _record_job(run_dir: Path, executor: str, job) -> None:
    write_json(run_dir / "job.json", {
        "executor": executor, "job_id": str(job.job_id), "host": socket.gethostname(), "submitted": now(),
        "folder": str(job.paths.folder), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)})


def _local_job_alive(pid: int) -> bool:
    """Is the LocalExecutor controller with this pid still running? (Its job id is its pid.)"""
    if not _pid_alive(pid):
        return False
    try:  # a pid reused by an unrelated process must not hold the run back forever
        return b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # no /proc (macOS): trust the pid
        return True


def jobs_alive(records: list[dict]) -> list[bool]:
    """For each job.json record: is its job still queued or running?

    submitit-local jobs are processes of this host (their id is the controller's pid). SLURM jobs are asked
    with one ``sacct`` call; a state SLURM cannot report (no accounting, a job just submitted) counts as
    alive, because running a run twice at once is worse than waiting: delete ``runs/<id>/job.json`` to
    resubmit such a run by hand.
    """
    alive = [False] * len(records)
    slurm = [i for i, r in enumerate(records) if r.get("executor") == "slurm"]
    for i, r in enumerate(records):
        if r.get("executor") == "submitit-local":
            alive[i] = r.get("host") == socket.gethostname() and _local_job_alive(int(r.get("job_id") or 0))
    if slurm:
        try:
            import submitit
        except ImportError:  # cannot ask: assume alive (see above)
            for i in slurm:
                alive[i] = True
            return alive
        jobs = [submitit.SlurmJob(folder=records[i]["folder"], job_id=records[i]["job_id"]) for i in slurm]
        submitit.SlurmJob.watcher.update()  # one sacct call for all of them
        for i, job in zip(slurm, jobs):
            alive[i] = not job.done()
    return alive


def _log_tail(job, lines: int = 15) -> str:
    for path in (job.paths.stderr, job.paths.stdout):
        with contextlib.suppress(OSError):
            text = Path(path).read_text(errors="replace").strip()
            if text:
                return "\n".join(text.splitlines()[-lines:])
    return ""


def _finished(run_dir: Path, job, executor: str, attempt0: int) -> dict | None:
    """The run's final record once its job is over (None while it is not)."""
    def outcome():
        rec = read_json(run_dir / "run.json") or {"id": run_dir.name}
        done = rec.get("status") in _OUTCOMES and int(rec.get("attempt") or 0) > attempt0
        return rec, done

    rec, done = outcome()
    if done:
        return rec
    if not job.done():
        return None
    rec, done = outcome()  # its last write may have landed after the first read
    if done:
        return rec
    # The job is over and left no outcome: it was killed (scancel, out of memory, a lost node), gave up
    # after too many requeues, or failed before the notebook started (see its log). Nothing else writes
    # run.json any more, so the sweep records the failure there; --retry-failed resumes the run.
    rec.update(status="failed", ended=now(), traceback=_log_tail(job),
               error=f"{executor} job {job.job_id} ended without finishing the run (killed, out of memory, "
                     f"requeued too often, or failed before the notebook started; job state {job.state}); "
                     f"its log: {job.paths.stderr}")
    write_json(run_dir / "run.json", rec)
    return rec


def run_on_cluster(plan, todo, executor: str, opts: ClusterOptions, workers: int, wait: bool, progress: bool,
                   timeout) -> None:
    """Submit `todo` as submitit jobs and, if `wait`, follow them until each has an outcome."""
    if not todo:
        return
    from .executors import make_progress
    from .jobs import SweepJob

    folder = plan.out_dir / "submitit"
    ex = _make_executor(executor, folder, opts, job_name=f"ebmlab-{plan.notebook.stem}")
    attempt0 = {rid: int((read_json(plan.run_dir(rid) / "run.json") or {}).get("attempt") or 0) for rid, _ in todo}

    def job_for(rid, p):
        return SweepJob(str(plan.notebook), p, str(plan.run_dir(rid)), plan.kernel_name, timeout)

    submitted = {}
    if executor == "slurm":  # one job array; SLURM limits how many run at once
        try:
            with _job_environment(None):
                jobs = ex.submit_array([job_for(rid, p) for rid, p in todo])
        except Exception as e:  # sbatch refused: a partition, account or limit the cluster does not have
            raise SweepError(f"sbatch refused the job array, so nothing was submitted: {e}\nfix the --slurm-* "
                             f"options (see `sinfo` and `sacctmgr show assoc user=$USER`) and run the same "
                             f"command again") from e
        for (rid, _), job in zip(todo, jobs):
            _record_job(plan.run_dir(rid), executor, job)
        submitted = {rid: job for (rid, _), job in zip(todo, jobs)}
        array = jobs[0].job_id.split("_")[0]
        print(f"submitted {len(jobs)} run(s) as SLURM job {array} (submitit files in {folder})", file=sys.stderr)
        if not wait:
            print(f"the jobs run on after this command; follow them with `ebmlab sweep --out {plan.out_dir} "
                  f"--status`, and run the same sweep command again to resubmit any that die", file=sys.stderr)
            return
        workers = len(todo)

    def submit(rid, p):
        if rid in submitted:
            return submitted[rid]
        with _job_environment(workers if executor == "submitit-local" else None):
            job = ex.submit(job_for(rid, p))
        _record_job(plan.run_dir(rid), executor, job)
        return job

    bar = make_progress(plan, todo, progress)
    poll = 0.25 if executor == "submitit-local" else SLURM_POLL_S
    queue, running = list(todo), {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                rid, p = queue.pop(0)
                running[rid] = submit(rid, p)
            time.sleep(poll)
            for rid, job in list(running.items()):
                rec = _finished(plan.run_dir(rid), job, executor, attempt0[rid])
                if rec is not None:
                    del running[rid]
                    bar.done(rid, rec)
    finally:
        bar.close()
        if running and executor == "submitit-local":
            # Interrupted: stop our local jobs (their runs go back to pending and resume on the next sweep).
            for job in running.values():
                job.cancel(check=False)
        elif running:
            print(f"stopped waiting; {len(running)} SLURM job(s) run on: follow them with `ebmlab sweep --out "
                  f"{plan.out_dir} --status`", file=sys.stderr)
