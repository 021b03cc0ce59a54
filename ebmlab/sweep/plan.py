"""A validated sweep before anything runs, its folder (sweep.json, one run.json per run) and what is left to do."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from ._common import RESERVED, SweepError, nearest, now, read_json, write_json
from .cluster import jobs_alive
from .params import coerce_value, expand_grid, notebook_parameters, run_id
from .runner import effective_status


@dataclass
class SweepPlan:
    """A validated sweep: every run's id and full parameters, before anything has run."""

    notebook: Path
    out_dir: Path
    grid: dict[str, list]
    params: dict
    runs: list[tuple[str, dict]] = field(default_factory=list)  # (run id, fixed params | combination)
    kernel_name: str | None = None

    def run_dir(self, rid: str) -> Path:
        return self.out_dir / "runs" / rid


def _validate(notebook, grid: dict, params: dict, kernel_name=None) -> tuple[dict, dict]:
    known = notebook_parameters(notebook, kernel_name)
    if RESERVED not in known:
        raise SweepError(f"{notebook} declares no `{RESERVED}` parameter; add `{RESERVED}: str = \".\"` to its "
                         f"parameters cell and write metrics.json and figures there")
    valid = sorted(n for n in known if n != RESERVED)
    for where, keys in (("grid key", grid), ("parameter", params)):
        for k in keys:
            if k == RESERVED:
                raise SweepError(f"{RESERVED} is set by the sweep to each run's folder; choose the sweep's folder "
                                 f"with --out instead")
            if k not in known:
                raise SweepError(f"unknown {where} {k!r} for {notebook}{nearest(k, valid)} "
                                 f"(its parameters: {', '.join(valid)})")
    both = sorted(set(grid) & set(params))
    if both:
        raise SweepError(f"{both[0]!r} is both swept (grid) and fixed (params); keep one")
    cgrid = {}
    for k, vs in grid.items():
        if not isinstance(vs, (list, tuple)) or not vs:
            raise SweepError(f"grid key {k!r} needs a non-empty list of values, got {vs!r}")
        cgrid[k] = [coerce_value(known[k], v, "grid key") for v in vs]
        seen = [json.dumps(v, sort_keys=True) for v in cgrid[k]]
        dup = next((vs[i] for i, s in enumerate(seen) if s in seen[:i]), None)
        if dup is not None:
            raise SweepError(f"grid key {k!r} lists the value {dup!r} twice (after conversion to "
                             f"{known[k].type_name}); drop the repeat")
    cparams = {k: coerce_value(known[k], v) for k, v in params.items()}
    return cgrid, cparams


def plan_sweep(notebook, grid: dict, params: dict | None, out_dir, kernel_name: str | None = None) -> SweepPlan:
    """Check every name and value against the notebook and list the runs; runs nothing, writes nothing."""
    notebook = Path(notebook).resolve()
    grid, params = _validate(notebook, grid or {}, params or {}, kernel_name)
    runs = [(run_id(c), {**params, **c}) for c in expand_grid(grid)]
    return SweepPlan(notebook, Path(out_dir).resolve(), grid, params, runs, kernel_name)


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def materialize(plan: SweepPlan) -> None:
    """Refuse foreign folders and changed settings, then write sweep.json and a pending run.json per new run.

    Called by the one sweep process holding the lock; an existing run.json belongs to its run (and to
    the job executing it) and is never rewritten here.
    """
    out = plan.out_dir
    old = read_json(out / "sweep.json") if out.exists() else None
    check_out_dir(out)
    for rid, p in plan.runs:
        rec = read_json(plan.run_dir(rid) / "run.json")
        if rec is None:
            continue
        if not _same(rec.get("params"), p):
            diff = sorted(k for k in set(p) | set(rec.get("params") or {})
                          if not _same(p.get(k), (rec.get("params") or {}).get(k)))
            raise SweepError(f"{out} already holds run {rid} with other settings ({', '.join(diff)}: "
                             f"{ {k: (rec.get('params') or {}).get(k) for k in diff} } there, "
                             f"{ {k: p.get(k) for k in diff} } now); choose another --out, or delete that "
                             f"run folder to redo it")
        if Path(rec.get("notebook", "")).name != plan.notebook.name:
            raise SweepError(f"{out} holds runs of {rec.get('notebook')}, not {plan.notebook}; choose another --out")
    ids = [rid for rid, _ in plan.runs]
    ids += [r for r in (old or {}).get("runs", []) if r not in ids]
    write_json(out / "sweep.json", {"notebook": str(plan.notebook), "grid": plan.grid, "params": plan.params,
                                    "runs": ids, "updated": now()})
    for rid, p in plan.runs:
        path = plan.run_dir(rid) / "run.json"
        if not path.exists():
            write_json(path, {"id": rid, "status": "pending", "notebook": str(plan.notebook), "params": p,
                              "attempt": 0})


def check_out_dir(out: Path) -> None:
    if out.is_dir() and not (out / "sweep.json").exists() and any(p.name != ".sweep.lock" for p in out.iterdir()):
        raise SweepError(f"{out} is not empty and holds no sweep (no sweep.json); choose a new or empty --out "
                         f"so nothing in it is overwritten")
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out} is a file; give a folder")


@contextlib.contextmanager
def sweep_lock(out: Path):
    """One sweep process per folder: two would run the same pending runs twice.

    Only the submitting/executing sweep takes it. Jobs and notebooks never do (each writes only its own
    run folder), and neither do ``--status`` and gathering, so a cluster sweep waiting on its jobs blocks
    nobody but a second sweep of the same folder.
    """
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks; the user keeps to one sweep
        yield
        return
    with open(out / ".sweep.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise SweepError(f"another sweep is running in {out} (pid {f.read().strip() or '?'}); wait for it, "
                             f"watch it with --status, or use another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


def pending_runs(plan: SweepPlan, retry_failed: bool = False) -> list[tuple[str, dict]]:
    """Runs still to do: pending ones, ones a killed sweep or job left 'running', and (if asked) failed ones.

    A run is left alone while something else executes it: its recorded process is alive on this host, or
    the scheduler job recorded in its ``job.json`` is still queued or running (a cluster sweep submitted
    earlier with --no-wait). Runs that are neither are taken to be orphaned and run again; their notebook
    resumes from its checkpoint.
    """
    recs = {rid: read_json(plan.run_dir(rid) / "run.json") for rid, _ in plan.runs}
    status = {rid: effective_status(rec) for rid, rec in recs.items()}
    jobs = {rid: read_json(plan.run_dir(rid) / "job.json") for rid, _ in plan.runs
            if status[rid] in ("pending", "running")}
    jobs = {rid: job for rid, job in jobs.items() if job}
    busy = {rid for rid, alive in zip(jobs, jobs_alive(list(jobs.values()))) if alive}
    todo = []
    for rid, p in plan.runs:
        s = status[rid]
        if rid in busy:
            continue  # queued or running under a scheduler
        if s == "running" and recs[rid].get("host") != socket.gethostname():
            s = "pending"  # no live job recorded and no way to ask another host: orphaned
        if s == "pending" or (s == "failed" and retry_failed):
            todo.append((rid, p))
    return todo
