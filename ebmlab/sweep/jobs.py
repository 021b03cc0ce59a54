"""The submitit job of one run. Imported only by the submitit executors and inside their jobs, so the rest of
``ebmlab.sweep`` works without submitit installed."""

from __future__ import annotations

from submitit.helpers import Checkpointable, DelayedSubmission

from .runner import run_one


class SweepJob(Checkpointable):
    """:func:`~ebmlab.sweep.runner.run_one` for one run, as a callable submitit can pickle, run and requeue.

    When SLURM preempts the job or its time limit nears, submitit signals it and calls :meth:`checkpoint`;
    the submission returned is requeued. It is this same job unchanged: everything worth keeping is
    already on disk in the run folder (the notebook's checkpoint, written atomically as it trains), and
    executing the notebook again there resumes from it.
    """

    def __init__(self, notebook: str, params: dict, run_dir: str, kernel_name: str | None = None,
                 timeout: float | None = None):
        self.notebook, self.params, self.run_dir = notebook, params, run_dir
        self.kernel_name, self.timeout = kernel_name, timeout

    def __call__(self) -> dict:
        return run_one(self.notebook, self.params, self.run_dir, self.kernel_name, self.timeout)

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        return DelayedSubmission(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"SweepJob({self.run_dir})"
