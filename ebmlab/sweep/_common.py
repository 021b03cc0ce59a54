"""What every part of the sweep shares: statuses, the error type, tolerant JSON reads, atomic writes."""

from __future__ import annotations

import difflib
import os
from datetime import datetime, timezone
from pathlib import Path

from .. import rundir

STATUSES = ("pending", "running", "completed", "failed", "diverged")
RESERVED = "out_dir"  # set by the sweep to each run's folder; never a user parameter


class SweepError(ValueError):
    """Bad sweep input (unknown parameter, wrong type, bad grid): raised before any notebook runs."""


def read_json(path):
    """JSON content, or None when the file is missing or half-written (a notebook or job still writing it)."""
    try:
        return rundir.read_json(path)
    except (OSError, ValueError):
        return None


def write_json(path, obj) -> None:
    # Key order is kept: a sweep's grid order is the order of its axes and of the table's columns.
    rundir.write_json(path, obj, sort_keys=False, default=str)


def write_text(path, text: str) -> None:
    rundir.atomic_write_bytes(path, text.encode())


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def nearest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def import_root() -> str:
    """The folder holding the ebmlab package: worker processes and jobs put it on PYTHONPATH so they import
    this ebmlab even when it is run from a source checkout rather than installed."""
    return str(Path(__file__).resolve().parents[2])


class Progress:
    """A progress bar over a sweep's runs, with the outcome counts so far; failures are printed as they come."""

    def __init__(self, total: int, todo: int, counts, desc: str, enabled: bool):
        import sys

        from tqdm.auto import tqdm

        self.counts = counts
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=total - todo, unit="run", desc=desc, disable=not enabled,
                        file=sys.stderr)

    def done(self, rid: str, rec: dict) -> None:
        self.counts.update([rec["status"]])
        self.bar.update(1)
        self.bar.set_postfix({k: self.counts[k] for k in ("completed", "failed", "diverged") if self.counts[k]})
        if rec["status"] == "failed" and self.enabled:
            first = ((rec.get("error") or "").splitlines() or ["(no error recorded)"])[0]
            self.bar.write(f"  {rid}: failed: {first[:200]}")

    def close(self) -> None:
        self.bar.close()


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # the BLAS/OpenMP thread counts a worker gets


def worker_env(workers: int | None, base: dict | None = None) -> dict:
    """The environment of a sweep's worker processes and jobs (and so of their notebooks' kernels).

    This ebmlab goes first on the import path, so a sweep run from a source checkout runs the same code
    in its workers. With ``workers`` runs at once on this machine, each gets an equal share of the cores
    as its BLAS/OpenMP thread count (torch otherwise starts one thread per core in every worker, and N
    workers oversubscribe the machine N-fold, which on 2 cores made each run up to 20x slower). A thread
    count the user already set wins; ``workers=None`` (SLURM: the scheduler allots the cores) sets none.
    """
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [import_root(), env.get("PYTHONPATH")]))
    if workers is not None:
        share = str(max(1, (os.cpu_count() or 1) // max(1, int(workers))))
        for var in THREAD_VARS:
            env.setdefault(var, share)
    return env
