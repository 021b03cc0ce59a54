"""Batch execution of a parameterized notebook over a grid of settings (papermill), and the results table.

A sweep runs one notebook once per combination of the grid, each run in its own folder::

    OUT/sweep.json                 what was asked: notebook, grid, fixed params, run ids in grid order
    OUT/runs/<id>/run.json         status pending | running | completed | failed | diverged, params,
                                   attempt, start/end time, duration, error + traceback of a failure,
                                   history of earlier attempts
    OUT/runs/<id>/notebook.ipynb   the executed notebook (outputs, the failing cell's traceback); earlier
                                   attempts' are kept as notebook.attempt-N.ipynb
    OUT/runs/<id>/metrics.json     written by the notebook: the numbers for the table
    OUT/runs/<id>/sweep.log        output of a run's worker process and kernel (with --workers > 1)
    OUT/runs/<id>/job.json         the submitit job executing the run (--executor submitit-local | slurm)
    OUT/submitit/                  submitit's scripts, pickled jobs and job logs
    OUT/results.csv                one row per run (:func:`gather`)
    OUT/summary.png                a metric over the swept axes (:func:`ebmlab.plotting.plot_sweep_summary`)
    OUT/.sweep.lock                held while a sweep runs or waits, so two sweeps never run the same folder

Modules: :mod:`~ebmlab.sweep.params` (the notebook's parameters, value conversion, grid files, run ids),
:mod:`~ebmlab.sweep.plan` (validation, the sweep folder, what is left to run), :mod:`~ebmlab.sweep.runner`
(one run: :func:`run_one`), :mod:`~ebmlab.sweep.executors` (:func:`run_sweep`, the local executor),
:mod:`~ebmlab.sweep.cluster` and :mod:`~ebmlab.sweep.jobs` (submitit: SLURM job arrays and LocalExecutor),
:mod:`~ebmlab.sweep.results` (results.csv, status counts, summary.png), :mod:`~ebmlab.sweep.studies`,
:mod:`~ebmlab.sweep.cli`.

**The notebook contract.** The notebook's first code cell is tagged ``parameters`` and declares typed
defaults (``lr: float = 1e-3``) and an ``out_dir: str`` that the sweep sets to the run's folder. Every
name is checked against that cell before anything runs, and string values (from the command line) are
converted to the declared types. The notebook writes ``metrics.json`` and its figures into ``out_dir``.

A notebook must be idempotent: executing it again in the same ``out_dir`` resumes its work instead of
starting over. The sweep executes a run again in its existing folder, without wiping it, when the run is
retried (``--retry-failed``), when a cluster job is preempted or reaches its time limit and is requeued,
and when a sweep or job was killed mid-run. Training cells therefore resume from the checkpoint they find::

    from ebmlab.rundir import resume_args
    run = train(cfg, Path(out_dir) / "train", **resume_args(Path(out_dir) / "train"))

(``resume_args`` resumes when ``checkpoints/last.pt`` exists and otherwise starts afresh.) Any other
long computation in a notebook should likewise skip what is already on disk.

A run counts as ``diverged`` when the notebook finishes but says so: ``metrics.json`` holds
``"status": "diverged"`` (or ``"diverged": true``), or a ``summary.json`` written by :func:`ebmlab.train.train`
during this attempt, in the run folder or one level below it, has status ``diverged``. Divergence is a
result of the settings, not an accident, so ``retry_failed`` does not rerun it.

:func:`run_one` executes one run; it is a module-level function of picklable arguments, so worker
processes and cluster executors (submitit) can call it by reference. A run folder is written by one
process at a time; only :func:`write_results` writes the shared ``results.csv`` and ``summary.png``.
"""

from ._common import STATUSES, SweepError
from .cli import add_cli, add_study_cli, cmd_study, cmd_sweep
from .cluster import ClusterOptions
from .executors import EXECUTORS, run_sweep
from .params import (
    _UNSAFE,  # noqa: F401 - kept importable from ebmlab.sweep (tests check run ids against it)
    Param,
    coerce_value,
    expand_grid,
    load_grid_file,
    merge_settings,
    notebook_parameters,
    parse_grid_args,
    parse_param_args,
    read_notebook,
    run_id,
)
from .plan import SweepPlan, pending_runs, plan_sweep
from .plan import sweep_lock as _sweep_lock  # noqa: F401 - the name the tests and older callers use
from .results import gather, status_counts, write_results
from .runner import run_one
from .studies import STUDIES, Study, notebooks_dir, resolve_study

__all__ = [
    "EXECUTORS", "STATUSES", "STUDIES", "ClusterOptions", "Param", "Study", "SweepError", "SweepPlan", "add_cli",
    "add_study_cli", "cmd_study", "cmd_sweep", "coerce_value", "expand_grid", "gather", "load_grid_file",
    "merge_settings", "notebook_parameters", "notebooks_dir", "parse_grid_args", "parse_param_args",
    "pending_runs", "plan_sweep", "read_notebook", "resolve_study", "run_id", "run_one", "run_sweep",
    "status_counts", "write_results",
]
