"""One run: execute the notebook with papermill into its run folder and record the outcome in run.json.

:func:`run_one` is what every executor calls, in this process, in a worker process or in a cluster job
(:class:`ebmlab.sweep.jobs.SweepJob`). It writes only inside its run folder, so concurrent runs never
write the same file.

Executing a run again (a retry, a requeued cluster job, a sweep restarted after a kill) reuses its folder
as it is: nothing is wiped, the previous attempt's executed notebook and metrics are kept as
``notebook.attempt-N.ipynb`` and ``metrics.attempt-N.json``, and the notebook is expected to continue its
training from the checkpoint it finds there (the notebook contract in :mod:`ebmlab.sweep`).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import traceback
from pathlib import Path

from ._common import RESERVED, STATUSES, now, read_json, write_json, write_text
from .params import read_notebook

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_OUTCOMES = ("completed", "failed", "diverged")


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, TypeError, ValueError):
        return isinstance(pid, int)  # EPERM: a process we may not signal is alive
    return True


def effective_status(rec: dict | None) -> str:
    """The recorded status, except that a 'running' run whose process on this host is gone is pending."""
    if not rec:
        return "pending"
    status = rec.get("status", "pending")
    if status == "running" and rec.get("host") == socket.gethostname() and not _pid_alive(rec.get("pid")):
        return "pending"
    return status if status in STATUSES else "failed"


def _diverged(run_dir: Path, started: float) -> str | None:
    """Why the finished notebook counts as diverged, or None (see :mod:`ebmlab.sweep`)."""
    metrics = read_json(run_dir / "metrics.json")
    if isinstance(metrics, dict) and (metrics.get("status") == "diverged" or metrics.get("diverged") is True):
        return "diverged (metrics.json)"
    for s in [run_dir / "summary.json", *sorted(run_dir.glob("*/summary.json"))]:
        try:
            fresh = s.stat().st_mtime >= started - 1  # a summary from an earlier attempt says nothing now
        except OSError:
            continue
        summary = read_json(s)
        if fresh and isinstance(summary, dict) and summary.get("status") == "diverged":
            return f"diverged ({s.relative_to(run_dir)})"
    return None


def _close_attempt(run_dir: Path, prev: dict) -> list[dict]:
    """The history with the previous attempt appended, its executed notebook and metrics set aside.

    A metrics.json left by an earlier attempt must not be read as this attempt's result, and its
    executed notebook (the traceback of a failure, the output up to a kill) is worth keeping.
    """
    history = list(prev.get("history", []))
    if not prev.get("started"):  # never attempted: a pending record written by the sweep
        return history
    n = int(prev.get("attempt", 0))
    status = prev.get("status")
    # A record still 'running' or set back to 'pending' means that attempt was killed or requeued.
    history.append({"attempt": n, "status": status if status in _OUTCOMES else "interrupted",
                    "started": prev.get("started"), "ended": prev.get("ended"), "error": prev.get("error")})
    for name, kept in (("notebook.ipynb", f"notebook.attempt-{n}.ipynb"), ("metrics.json", f"metrics.attempt-{n}.json")):
        with contextlib.suppress(FileNotFoundError):
            os.replace(run_dir / name, run_dir / kept)
    return history


def run_one(notebook, params: dict, run_dir, kernel_name: str | None = None, timeout: float | None = None) -> dict:
    """Execute `notebook` once with `params` into `run_dir` and record the outcome in ``run_dir/run.json``.

    The notebook gets ``out_dir = run_dir`` and runs in its own folder (as in Jupyter, so relative paths in
    it resolve the same way). ``timeout``: seconds per cell (None: no limit). Notebook exceptions, kernel
    deaths and timeouts are recorded as ``failed`` with the error and traceback, never raised. An
    interruption (KeyboardInterrupt; SystemExit when submitit requeues a preempted job) sets the run back to
    ``pending`` and propagates; the next attempt resumes it. Returns the final record.
    """
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    prev = read_json(run_dir / "run.json") or {}
    history = _close_attempt(run_dir, prev)
    record = {"id": run_dir.name, "status": "running", "notebook": str(Path(notebook).resolve()),
              "params": params, "attempt": int(prev.get("attempt", 0)) + 1, "started": now(), "ended": None,
              "duration_s": None, "host": socket.gethostname(), "pid": os.getpid(), "error": None,
              "traceback": None, "history": history}
    write_json(run_dir / "run.json", record)
    t0, wall0 = time.monotonic(), time.time()
    output = run_dir / "notebook.ipynb"
    status, error, tb = "completed", None, None
    try:
        nb = read_notebook(notebook, kernel_name)
        papermill.execute_notebook(
            nb, str(output), parameters={**params, RESERVED: str(run_dir)},
            kernel_name=nb.metadata["kernelspec"]["name"], progress_bar=False,
            cwd=str(Path(notebook).resolve().parent), execution_timeout=timeout)
        reason = _diverged(run_dir, wall0)
        if reason:
            status, error = "diverged", reason
    except PapermillExecutionError as e:
        status, error = "failed", f"{e.ename}: {e.evalue}"
        tb = _ANSI.sub("", "\n".join(e.traceback))
    except Exception as e:  # kernel died, cell timeout, unreadable notebook: recorded, the sweep goes on
        status, error, tb = "failed", f"{type(e).__name__}: {e}", traceback.format_exc()
    except BaseException as e:
        record.update(status="pending", ended=now(), duration_s=round(time.monotonic() - t0, 3),
                      error=f"interrupted ({type(e).__name__}); the next attempt resumes this run")
        write_json(run_dir / "run.json", record)
        raise
    # papermill stores its input in the output's metadata; given a node it stores the whole node.
    with contextlib.suppress(Exception):
        out_nb = nbformat.read(output, as_version=4)
        out_nb.metadata.setdefault("papermill", {})["input_path"] = str(Path(notebook).resolve())
        write_text(output, nbformat.writes(out_nb))
    record.update(status=status, ended=now(), duration_s=round(time.monotonic() - t0, 3), error=error,
                  traceback=tb)
    write_json(run_dir / "run.json", record)
    return record
