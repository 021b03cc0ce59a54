"""Batch execution of a parameterized notebook over a grid of settings (papermill), and the results table.

A sweep runs one notebook once per combination of the grid, each run in its own folder::

    OUT/sweep.json                 what was asked: notebook, grid, fixed params, run ids in grid order
    OUT/runs/<id>/run.json         status pending | running | completed | failed | diverged, params,
                                   attempt, start/end time, duration, error + traceback of a failure
    OUT/runs/<id>/notebook.ipynb   the executed notebook (outputs, the failing cell's traceback)
    OUT/runs/<id>/metrics.json     written by the notebook: the numbers for the table
    OUT/runs/<id>/sweep.log        output of a run's worker process and kernel (with --workers > 1)
    OUT/results.csv                one row per run (:func:`gather`)
    OUT/summary.png                a metric over the swept axes (:func:`ebmlab.plotting.plot_sweep_summary`)
    OUT/.sweep.lock                held while a sweep runs, so two sweeps never run the same folder

The notebook's first code cell is tagged ``parameters`` and declares typed defaults (``lr: float = 1e-3``)
and an ``out_dir: str`` that the sweep sets to the run's folder. Every name is checked against that cell
before anything runs, and string values (from the command line) are converted to the declared types.

A run counts as ``diverged`` when the notebook finishes but says so: ``metrics.json`` holds
``"status": "diverged"`` (or ``"diverged": true``), or a ``summary.json`` written by :func:`ebmlab.train.train`
during this attempt, in the run folder or one level below it, has status ``diverged``. Divergence is a
result of the settings, not an accident, so ``retry_failed`` does not rerun it.

:func:`run_one` executes one run; it is a module-level function of picklable arguments, so worker
processes and cluster executors (submitit) can call it by reference. A run folder is written by one
process at a time; only :func:`write_results` writes the shared ``results.csv`` and ``summary.png``.

Grid files (YAML or JSON; read by :func:`load_grid_file`)::

    description: optional text, ignored
    grid:                 # swept: every combination of these lists is one run
      lr: [1.0e-3, 1.0e-2]
      spectral_norm: [true, false]
    params:               # fixed for every run
      smoke: false
      overrides: {train.iterations: 200}

``1e-3`` reads as a float (plain YAML 1.1 would read a string); values are then converted to the types the
notebook declares. On the command line ``--grid key=v1,v2`` and ``-p key=value`` override a grid file:
``-p`` pins a swept key to one value, ``--grid`` replaces an axis (values containing commas, such as
dicts, belong in a grid file).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import difflib
import hashlib
import io
import itertools
import json
import math
import os
import re
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

STATUSES = ("pending", "running", "completed", "failed", "diverged")
RESERVED = "out_dir"  # set by the sweep to each run's folder; never a user parameter
_MAX_ID = 96  # characters; ids are folder names, and deep paths break some tools (Windows, tar)


class SweepError(ValueError):
    """Bad sweep input (unknown parameter, wrong type, bad grid): raised before any notebook runs."""


# --------------------------------------------------------------------------------------- small helpers
# rundir.atomic_write_bytes does the same, but ebmlab.rundir imports torch; sweep workers and
# `ebmlab --help` should not pay seconds of torch import to write a JSON file.
def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_json(path: Path, obj) -> None:
    _atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _read_json(path: Path):
    """JSON content, or None when the file is missing or half-written (a notebook still writing it)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _nearest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string; researchers write learning rates that way."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# --------------------------------------------------------------------------------- notebook parameters
@dataclass(frozen=True)
class Param:
    """One variable of a notebook's ``parameters`` cell."""

    name: str
    type_name: str  # the annotation as written ("float", "dict[str, float]"), or "None" when absent
    default: str  # the default's source text
    help: str = ""


def read_notebook(path, kernel_name: str | None = None):
    """The notebook as an nbformat node: jupytext for ``.py`` percent files, nbformat for ``.ipynb``.

    A jupytext file usually carries no kernelspec; papermill refuses to run or inspect a notebook without
    one, so the given kernel (default ``python3``) is written into its metadata.
    """
    import jupytext
    import nbformat

    path = Path(path)
    if not path.is_file():
        raise SweepError(f"notebook {path} does not exist")
    if path.suffix == ".ipynb":
        nb = nbformat.read(path, as_version=4)
    elif path.suffix == ".py":
        nb = jupytext.read(path)
    else:
        raise SweepError(f"notebook {path}: expected a jupytext .py (percent format) or an .ipynb file")
    spec = nb.metadata.get("kernelspec") or {}
    if kernel_name or not spec.get("name"):
        name = kernel_name or "python3"
        nb.metadata["kernelspec"] = {"name": name, "language": "python", "display_name": name}
    return nb


def notebook_parameters(notebook, kernel_name: str | None = None) -> dict[str, Param]:
    """The names, declared types and defaults of the notebook's ``parameters`` cell.

    papermill's inspection is the reference; an AST pass adds the names its regular expression skips
    (``x: int | None = None``, multi-target assignments), so a valid parameter is never reported unknown.
    """
    import papermill

    nb = read_notebook(notebook, kernel_name)
    cell = next((c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise SweepError(f"{notebook} has no cell tagged 'parameters'; tag its first code cell "
                         f"(jupytext: `# %% tags=[\"parameters\"]`) so a sweep can set its variables")
    found = {n: Param(n, str(p["inferred_type_name"]), str(p["default"]), str(p.get("help") or ""))
             for n, p in papermill.inspect_notebook(nb).items()}
    try:
        tree = ast.parse(cell.source)
    except SyntaxError:  # IPython magics in the cell: papermill's answer is all there is
        return found
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            ann = node.annotation
            type_name = ann.value if isinstance(ann, ast.Constant) and isinstance(ann.value, str) \
                else ast.unparse(ann)
            targets, value = [node.target], node.value
        elif isinstance(node, ast.Assign):
            type_name, targets, value = "None", [t for t in node.targets if isinstance(t, ast.Name)], node.value
        else:
            continue
        for t in targets:
            if t.id not in found:
                found[t.id] = Param(t.id, type_name, ast.unparse(value) if value is not None else "None")
    return found


_KINDS = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict, "list": list, "tuple": list}


def _kind(p: Param) -> tuple[str | None, bool]:
    """(kind, optional): kind in _KINDS or None when the type is unknown; optional if None is allowed."""
    t = p.type_name.replace(" ", "").replace("typing.", "")
    optional = False
    m = re.fullmatch(r"Optional\[(.+)\]", t)
    if m:
        t, optional = m.group(1), True
    if "|" in t:
        parts = [x for x in t.split("|") if x != "None"]
        optional = optional or len(parts) < len(t.split("|"))
        t = parts[0] if len(parts) == 1 else "None"
    base = re.match(r"[A-Za-z_]*", t).group().lower()
    if base in _KINDS:
        return base, optional
    try:  # no usable annotation: the default's type decides
        d = ast.literal_eval(p.default)
    except (ValueError, SyntaxError):
        return None, True
    if d is None:
        return None, True
    return next((k for k, typ in _KINDS.items() if type(d) is typ), None), optional


def coerce_value(p: Param, value, where: str = "parameter"):
    """Convert `value` (a command-line string or a YAML/JSON value) to the type `p` declares."""
    kind, optional = _kind(p)

    def bad(why: str = ""):
        return SweepError(f"{where} {p.name!r} expects {p.type_name if p.type_name != 'None' else kind} "
                          f"(notebook default {p.default}); got {value!r}{': ' + why if why else ''}")

    if value is None or (isinstance(value, str) and optional and value in ("None", "null")):
        if optional or kind is None:
            return None
        raise bad("None is not allowed")
    if kind is None:  # unknown type: keep what YAML makes of the text
        return _yaml(value) if isinstance(value, str) else value
    if kind == "str":
        if isinstance(value, str):
            return value
        raise bad("quote it in the grid file to pass a string")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
        if isinstance(value, str) and value.strip().lower() in words:
            return words[value.strip().lower()]
        raise bad("use true or false")
    if kind in ("int", "float"):
        if isinstance(value, bool):
            raise bad("a bool is not a number")
        if isinstance(value, str):
            try:
                value = int(value) if kind == "int" and re.fullmatch(r"\s*[-+]?[0-9_]+\s*", value) else float(value)
            except ValueError:
                raise bad() from None
        if not isinstance(value, (int, float)):
            raise bad()
        if kind == "float":
            return float(value)
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise bad("not a whole number")
        return int(value)
    # dict / list
    if isinstance(value, str):
        try:
            value = _yaml(value)
        except yaml.YAMLError as e:
            raise bad(f"not valid YAML/JSON ({e.__class__.__name__})") from None
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, _KINDS[kind]):
        raise bad(f"write a {kind} in YAML/JSON syntax, e.g. "
                  + ('\'{"optim.lr": 1e-3}\'' if kind == "dict" else "'[1, 2]'"))
    return value


# ------------------------------------------------------------------------------------- grids and run ids
def expand_grid(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, the first key varying slowest. ``{}`` gives one empty run."""
    for k, vs in grid.items():
        if not isinstance(vs, (list, tuple)) or not vs:
            raise SweepError(f"grid key {k!r} needs a non-empty list of values, got {vs!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v)  # shortest text that reads back to the same float: 0.001, 1e-05
    if isinstance(v, (bool, int, str)) or v is None:
        return str(v)
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


def run_id(combo: dict) -> str:
    """A readable, filesystem-safe folder name for one combination, e.g. ``lr=0.001__sn=True``.

    Keys are sorted so the id does not depend on the order of ``--grid`` options; it depends only on the
    combination itself, so growing a grid later never renames existing runs. When characters had to be
    replaced or the name was shortened, a hash of the exact values keeps it unique.
    """
    if not combo:
        return "default"
    raw = "__".join(f"{k}={_fmt(combo[k])}" for k in sorted(combo))
    safe = _UNSAFE.sub("-", raw)
    if safe == raw and len(raw) <= _MAX_ID:
        return raw
    digest = hashlib.sha1(json.dumps(combo, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{safe[:_MAX_ID - 10].rstrip('-_.=')}__{digest}"


def parse_grid_args(items: list[str] | None) -> dict[str, list[str]]:
    """``["lr=1e-3,1e-2", "sn=true,false"]`` -> ``{"lr": ["1e-3", "1e-2"], "sn": ["true", "false"]}``."""
    grid: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise SweepError(f"--grid {item!r}: expected KEY=V1,V2,... (values containing commas, such as "
                             f"dicts, go in a --grid-file)")
        if key in grid:
            raise SweepError(f"--grid {key} is given twice; list all its values in one option")
        grid[key] = [v.strip() for v in values.split(",")]
    return grid


def parse_param_args(items: list[str] | None) -> dict[str, str]:
    """``["seed=1", "overrides={a: 1}"]`` -> ``{"seed": "1", "overrides": "{a: 1}"}`` (split on the first =)."""
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SweepError(f"-p {item!r}: expected KEY=VALUE")
        if key in params:
            raise SweepError(f"-p {key} is given twice")
        params[key] = value
    return params


def load_grid_file(path) -> tuple[dict[str, list], dict]:
    """Read a YAML or JSON grid file ``{grid: {key: [values]}, params: {key: value}}`` (module docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SweepError(f"grid file {path}: {e.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else _yaml(text)
    except (ValueError, yaml.YAMLError) as e:
        raise SweepError(f"grid file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise SweepError(f"grid file {path}: expected a mapping with keys 'grid' and 'params'")
    extra = set(data) - {"grid", "params", "description"}
    if extra:
        bad = sorted(extra)[0]
        raise SweepError(f"grid file {path}: unknown top-level key {bad!r}{_nearest(bad, ['grid', 'params'])} "
                         f"(allowed: grid, params, description)")
    grid, params = data.get("grid") or {}, data.get("params") or {}
    if not isinstance(grid, dict) or not isinstance(params, dict):
        raise SweepError(f"grid file {path}: 'grid' and 'params' must be mappings of parameter names")
    for k, vs in grid.items():
        if not isinstance(vs, list) or not vs:
            raise SweepError(f"grid file {path}: grid.{k} must be a non-empty list (a single fixed value "
                             f"belongs under params)")
    return {str(k): list(v) for k, v in grid.items()}, {str(k): v for k, v in params.items()}


def merge_settings(grid: dict, params: dict, cli_grid: dict, cli_params: dict) -> tuple[dict, dict]:
    """Command-line settings over a grid file's: ``-p k=v`` pins an axis, ``--grid k=...`` replaces one."""
    grid, params = dict(grid), dict(params)
    for k, v in cli_params.items():
        grid.pop(k, None)
        params[k] = v
    for k, vs in cli_grid.items():
        params.pop(k, None)
        grid[k] = vs
    return grid, params


# ------------------------------------------------------------------------------------------ the plan
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
                raise SweepError(f"unknown {where} {k!r} for {notebook}{_nearest(k, valid)} "
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


def _materialize(plan: SweepPlan) -> None:
    """Refuse foreign folders and changed settings, then write sweep.json and a pending run.json per run."""
    out = plan.out_dir
    old = _read_json(out / "sweep.json") if out.exists() else None
    _check_out_dir(out)
    for rid, p in plan.runs:
        rec = _read_json(plan.run_dir(rid) / "run.json")
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
    _write_json(out / "sweep.json", {"notebook": str(plan.notebook), "grid": plan.grid, "params": plan.params,
                                     "runs": ids, "updated": _now()})
    for rid, p in plan.runs:
        path = plan.run_dir(rid) / "run.json"
        if not path.exists():
            _write_json(path, {"id": rid, "status": "pending", "notebook": str(plan.notebook), "params": p,
                               "attempt": 0})


def _check_out_dir(out: Path) -> None:
    if out.is_dir() and not (out / "sweep.json").exists() and any(p.name != ".sweep.lock" for p in out.iterdir()):
        raise SweepError(f"{out} is not empty and holds no sweep (no sweep.json); choose a new or empty --out "
                         f"so nothing in it is overwritten")
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out} is a file; give a folder")


@contextlib.contextmanager
def _sweep_lock(out: Path):
    """One sweep process per folder: two would run the same pending runs twice."""
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


# ---------------------------------------------------------------------------------------- one run
def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, TypeError, ValueError):
        return isinstance(pid, int)  # EPERM: a process we may not signal is alive
    return True


def _effective_status(rec: dict | None) -> str:
    """The recorded status, except that a 'running' run whose process on this host is gone is pending."""
    if not rec:
        return "pending"
    status = rec.get("status", "pending")
    if status == "running" and rec.get("host") == socket.gethostname() and not _pid_alive(rec.get("pid")):
        return "pending"
    return status if status in STATUSES else "failed"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _diverged(run_dir: Path, started: float) -> str | None:
    """Why the finished notebook counts as diverged, or None (see the module docstring)."""
    metrics = _read_json(run_dir / "metrics.json")
    if isinstance(metrics, dict) and (metrics.get("status") == "diverged" or metrics.get("diverged") is True):
        return "diverged (metrics.json)"
    for s in [run_dir / "summary.json", *sorted(run_dir.glob("*/summary.json"))]:
        try:
            fresh = s.stat().st_mtime >= started - 1  # a summary from an earlier attempt says nothing now
        except OSError:
            continue
        summary = _read_json(s)
        if fresh and isinstance(summary, dict) and summary.get("status") == "diverged":
            return f"diverged ({s.relative_to(run_dir)})"
    return None


def run_one(notebook, params: dict, run_dir, kernel_name: str | None = None, timeout: float | None = None) -> dict:
    """Execute `notebook` once with `params` into `run_dir` and record the outcome in ``run_dir/run.json``.

    The notebook gets ``out_dir = run_dir`` and runs in its own folder (as in Jupyter, so relative paths in
    it resolve the same way). ``timeout``: seconds per cell (None: no limit). Notebook exceptions, kernel
    deaths and timeouts are recorded as ``failed`` with the error and traceback, never raised; a
    KeyboardInterrupt leaves the run 'running', which a later sweep reruns. Returns the final record.
    """
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    prev = _read_json(run_dir / "run.json") or {}
    history = list(prev.get("history", []))
    if prev.get("status") not in (None, "pending"):
        history.append({k: prev.get(k) for k in ("status", "started", "ended", "error")})
        if prev.get("status") == "running":  # a killed sweep or worker left it so
            history[-1]["status"] = "interrupted"
    # A metrics.json left by an earlier attempt must not be read as this attempt's result.
    with contextlib.suppress(FileNotFoundError):
        (run_dir / "metrics.json").unlink()
    record = {"id": run_dir.name, "status": "running", "notebook": str(Path(notebook).resolve()),
              "params": params, "attempt": int(prev.get("attempt", 0)) + 1, "started": _now(), "ended": None,
              "duration_s": None, "host": socket.gethostname(), "pid": os.getpid(), "error": None,
              "traceback": None, "history": history}
    _write_json(run_dir / "run.json", record)
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
    # papermill stores its input in the output's metadata; given a node it stores the whole node.
    with contextlib.suppress(Exception):
        out_nb = nbformat.read(output, as_version=4)
        out_nb.metadata.setdefault("papermill", {})["input_path"] = str(Path(notebook).resolve())
        _atomic_write_text(output, nbformat.writes(out_nb))
    record.update(status=status, ended=_now(), duration_s=round(time.monotonic() - t0, 3), error=error,
                  traceback=tb)
    _write_json(run_dir / "run.json", record)
    return record


# ------------------------------------------------------------------------------------------ the sweep
def pending_runs(plan: SweepPlan, retry_failed: bool = False) -> list[tuple[str, dict]]:
    """Runs still to do: pending ones, ones a killed sweep left 'running', and (if asked) failed ones.

    A run whose recorded process is alive on this host is left alone: something else is running it.
    """
    todo = []
    for rid, p in plan.runs:
        rec = _read_json(plan.run_dir(rid) / "run.json")
        status = _effective_status(rec)
        if status == "running" and rec.get("host") != socket.gethostname():
            status = "pending"  # no way to ask another host; a local sweep owns its folder (lock)
        if status == "pending" or (status == "failed" and retry_failed):
            todo.append((rid, p))
    return todo


def run_sweep(notebook, grid: dict, params: dict | None, out_dir, workers: int = 1,
              retry_failed: bool = False, progress: bool = True, kernel_name: str | None = None,
              timeout: float | None = None, metric: str | None = None) -> list[dict]:
    """Run `notebook` over every combination of `grid` into ``out_dir/runs/<id>/``; returns :func:`gather`'s rows.

    Every name and value is checked before anything runs. Completed and diverged runs are skipped, failed
    ones rerun only with `retry_failed`, runs left 'running' by a killed sweep rerun. `workers` notebooks
    run at once, each in its own process. Ends by writing ``results.csv`` and ``summary.png`` (`metric`
    names the column to draw; default: the first numeric metric).
    """
    if int(workers) < 1:
        raise SweepError(f"workers must be at least 1, got {workers}")
    plan = plan_sweep(notebook, grid, params, out_dir, kernel_name)
    _check_out_dir(plan.out_dir)  # before the lock file is created in it
    with _sweep_lock(plan.out_dir):
        _materialize(plan)
        todo = pending_runs(plan, retry_failed)
        _execute(plan, todo, int(workers), progress, timeout)
    return write_results(plan.out_dir, metric=metric)


def _execute(plan: SweepPlan, todo, workers: int, progress: bool, timeout) -> None:
    from tqdm.auto import tqdm

    counts = Counter(_effective_status(_read_json(plan.run_dir(rid) / "run.json")) for rid, _ in plan.runs)
    bar = tqdm(total=len(plan.runs), initial=len(plan.runs) - len(todo), unit="run",
               desc=f"sweep {plan.notebook.stem}", disable=not progress, file=sys.stderr)

    def done(rid, rec):
        counts.update([rec["status"]])
        bar.update(1)
        bar.set_postfix({k: counts[k] for k in ("completed", "failed", "diverged") if counts[k]})
        if rec["status"] == "failed" and progress:
            bar.write(f"  {rid}: failed: {(rec.get('error') or '').splitlines()[0][:200]}")

    try:
        if workers == 1 or len(todo) <= 1:
            for rid, p in todo:
                done(rid, run_one(plan.notebook, p, plan.run_dir(rid), plan.kernel_name, timeout))
        else:
            _run_in_subprocesses(plan, todo, workers, timeout, done)
    finally:
        bar.close()


def _run_in_subprocesses(plan: SweepPlan, todo, workers: int, timeout, done) -> None:
    """Up to `workers` runs at once, each ``python -m ebmlab.sweep SPEC`` calling :func:`run_one`.

    Plain subprocesses rather than a multiprocessing pool: spawn re-imports the caller's main script (a
    script without a ``__main__`` guard would start sweeps recursively), and fork copies a parent holding
    threads (tqdm, zmq). Each run's output, including its kernel's stderr, goes to ``<run>/sweep.log``.
    """
    import subprocess

    env = dict(os.environ)
    # The child must import this ebmlab even when it is not installed (run from a source checkout).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                      env.get("PYTHONPATH")]))
    queue, running = list(todo), {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                rid, p = queue.pop(0)
                rdir = plan.run_dir(rid)
                spec = {"notebook": str(plan.notebook), "params": p, "run_dir": str(rdir),
                        "kernel_name": plan.kernel_name, "timeout": timeout}
                log = open(rdir / "sweep.log", "ab")
                log.write(f"--- {_now()} {sys.executable} -m ebmlab.sweep\n".encode())
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
                rec = _read_json(plan.run_dir(rid) / "run.json") or {"id": rid}
                if rec.get("status") in (None, "pending", "running"):  # the worker died before recording
                    tail = (plan.run_dir(rid) / "sweep.log").read_text(errors="replace").strip().splitlines()[-15:]
                    rec.update(status="failed", ended=_now(), error=f"worker process exited with code "
                               f"{proc.returncode} (see sweep.log)", traceback="\n".join(tail))
                    _write_json(plan.run_dir(rid) / "run.json", rec)
                done(rid, rec)
    finally:  # interrupted: stop our workers; their runs stay 'running' and the next sweep reruns them
        for proc, _log in running.values():
            # SIGINT lets papermill shut its kernel down; a terminated worker would orphan it for a while.
            proc.send_signal(signal.SIGINT) if os.name == "posix" else proc.terminate()
        for proc, log in running.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


# --------------------------------------------------------------------------------------- the table
def _flatten(d: dict, prefix: str = "") -> dict:
    """Scalars of a nested dict under dotted keys; lists (curves) are left to the figures."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[key] = v
    return out


@dataclass
class _Table:
    rows: list[dict]
    param_cols: list[str]
    metric_cols: list[str]
    swept: list[str]  # parameters whose value varies between runs, grid order first

    @property
    def columns(self) -> list[str]:
        return ["run_id", *self.param_cols, "status", "duration_s", "error", *self.metric_cols]


def _gather(out_dir) -> _Table:
    out = Path(out_dir)
    if not (out / "runs").is_dir() and not (out / "sweep.json").exists():
        raise SweepError(f"{out} holds no sweep (no runs/ folder); run `ebmlab sweep NOTEBOOK ... --out {out}` first")
    sweep = _read_json(out / "sweep.json") or {}
    order = list(sweep.get("runs", []))
    found = sorted(p.name for p in (out / "runs").iterdir() if p.is_dir()) if (out / "runs").is_dir() else []
    ids = [r for r in order if r in found] + [r for r in found if r not in order]
    rows, params_of, param_cols, metric_cols = [], [], list(sweep.get("grid", {})), []
    for rid in ids:
        rec = _read_json(out / "runs" / rid / "run.json") or {}
        params = rec.get("params") or {}
        param_cols += [k for k in params if k not in param_cols]
        err = (rec.get("error") or "").strip().splitlines()
        row = {"run_id": rid, **params, "status": _effective_status(rec), "duration_s": rec.get("duration_s"),
               "error": err[0][:200] if err else None}
        metrics = _read_json(out / "runs" / rid / "metrics.json")
        for k, v in _flatten(metrics if isinstance(metrics, dict) else {}).items():
            col = k if k not in row and k not in param_cols else f"metrics.{k}"
            row[col] = v
            if col not in metric_cols:
                metric_cols.append(col)
        rows.append(row)
        params_of.append(params)
    swept = [k for k in param_cols if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in params_of}) > 1]
    return _Table(rows, param_cols, metric_cols, swept)


def gather(out_dir) -> list[dict]:
    """One dict per run folder: ``run_id``, every parameter, ``status``, ``duration_s``, ``error`` (first
    line) and every scalar of its metrics.json (nested keys joined with dots; a metric named like a column
    above becomes ``metrics.<name>``). Reads the run folders only, so it works while runs are in flight."""
    return _gather(out_dir).rows


def status_counts(out_dir) -> dict[str, int]:
    """How many runs are pending / running / completed / failed / diverged, from the run folders."""
    counts = dict.fromkeys(STATUSES, 0)
    for row in _gather(out_dir).rows:
        counts[row["status"]] += 1
    return counts


def _cell(v):
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else v


def _numeric(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def write_results(out_dir, metric: str | None = None) -> list[dict]:
    """Write ``results.csv`` and ``summary.png`` from the run folders; returns the rows.

    The figure draws `metric` (default: the first metric column with a number in it) over the swept
    parameters; see :func:`ebmlab.plotting.plot_sweep_summary` for one, two and more axes.
    """
    table = _gather(out_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=table.columns, extrasaction="ignore")
    writer.writeheader()
    for row in table.rows:
        writer.writerow({k: _cell(row.get(k)) for k in table.columns})
    _atomic_write_text(Path(out_dir) / "results.csv", buf.getvalue())
    numeric = [c for c in table.metric_cols if any(_numeric(r.get(c)) is not None for r in table.rows)]
    if metric is not None and metric not in numeric:
        raise SweepError(f"--metric {metric!r} is not a numeric column of {out_dir}/results.csv{_nearest(metric, numeric)} "
                         f"(numeric metrics: {', '.join(numeric) or 'none yet'}); redraw without running anything "
                         f"with `ebmlab sweep --out {out_dir} --status --metric NAME`")
    if table.rows:
        from .plotting.sweeps import plot_sweep_summary

        plot_sweep_summary(table.rows, table.swept, metric or (numeric[0] if numeric else None),
                           path=Path(out_dir) / "summary.png", title=Path(out_dir).name)
    return table.rows


# -------------------------------------------------------------------------------------------- studies
@dataclass(frozen=True)
class Study:
    """A registered study: paths relative to the notebooks folder (:func:`notebooks_dir`)."""

    notebook: str
    grid: str  # the default grid file, `ebmlab study NAME` runs it
    about: str


STUDIES: dict[str, Study] = {
    "quickstart": Study("00_quickstart.py", "grids/quickstart.yaml",
                        "train the default preset; samples, diagnostics, every sampler"),
    "regularization": Study("01_regularization.py", "grids/regularization.yaml",
                            "spectral norm x L2 energy penalty x aggressive/careful: which settings diverge"),
    "sgd-sampling": Study("02_sgd_sampling.py", "grids/sgd-sampling.yaml",
                          "Langevin vs SGD with noise vs noise-free SGD, for training and for sampling"),
    "coopnets": Study("03_coopnets.py", "grids/coopnets.yaml",
                      "cooperative training of an EBM and a generator (CoopNets)"),
    "anatomy": Study("04_anatomy.py", "grids/anatomy.yaml",
                     "convergent vs non-convergent short-run MCMC learning (ebm-anatomy)"),
}


def notebooks_dir() -> Path:
    """The studies' notebooks: $EBMLAB_NOTEBOOKS, else the repository's notebooks/ beside the package."""
    candidates = [Path(os.environ["EBMLAB_NOTEBOOKS"])] if os.environ.get("EBMLAB_NOTEBOOKS") else []
    here = Path(__file__).resolve().parent
    candidates += [here.parent / "notebooks", here / "notebooks"]
    for c in candidates:
        if c.is_dir():
            return c
    raise SweepError(f"no notebooks folder found (looked in {', '.join(map(str, candidates))}); studies run from a "
                     f"source checkout (git clone the repository and `pip install -e .`), or set EBMLAB_NOTEBOOKS")


def resolve_study(name: str) -> tuple[Path, Path]:
    """(notebook, default grid file) of a registered study; errors say which file is missing."""
    if name not in STUDIES:
        raise SweepError(f"unknown study {name!r}{_nearest(name, STUDIES)} (studies: {', '.join(STUDIES)})")
    root = notebooks_dir()
    nb, grid = root / STUDIES[name].notebook, root / STUDIES[name].grid
    for path, what in ((nb, "notebook"), (grid, "default grid file")):
        if not path.is_file():
            raise SweepError(f"study {name!r}: its {what} {path} does not exist")
    return nb, grid


# ------------------------------------------------------------------------------------------------ CLI
def _add_run_options(p: argparse.ArgumentParser, out_required: bool = True) -> None:
    p.add_argument("--out", required=out_required, metavar="DIR",
                   help="sweep folder: runs/<id>/, results.csv, summary.png")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a fixed notebook parameter, converted to its declared type (repeatable)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a swept parameter and its values, comma-separated (repeatable)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="notebooks run at once (default 1)")
    p.add_argument("--retry-failed", action="store_true", help="rerun failed runs (completed ones never rerun)")
    p.add_argument("--metric", metavar="NAME", help="metric drawn in summary.png (default: the first numeric one)")
    p.add_argument("--status", action="store_true",
                   help="run nothing: print run counts and rewrite results.csv and summary.png")
    p.add_argument("--kernel", metavar="NAME", help="Jupyter kernel (default: the notebook's, else python3)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="per-cell time limit (default: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register ``ebmlab sweep`` on an argparse subparsers object; the handler is ``args.func(args) -> int``."""
    p = subparsers.add_parser(
        "sweep", help="run a notebook over a grid of parameters (papermill)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0] + "\n\nexample:\n  ebmlab sweep notebooks/01_regularization.py "
                    "--grid lr=1e-3,1e-2 --grid spectral_norm=true,false -p smoke=true --out runs/reg --workers 2")
    p.add_argument("notebook", nargs="?", help="a jupytext .py (percent) or .ipynb notebook with a parameters cell")
    p.add_argument("--grid-file", metavar="FILE", help="YAML/JSON {grid: {key: [values]}, params: {key: value}}; "
                                                       "--grid and -p override it")
    _add_run_options(p)
    p.set_defaults(func=cmd_sweep)
    return p


def add_study_cli(subparsers) -> argparse.ArgumentParser:
    """Register ``ebmlab study NAME --out DIR``: a registered notebook over its default grid."""
    p = subparsers.add_parser(
        "study", help="run a study's default sweep", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a study notebook over its default grid (notebooks/grids/<study>.yaml).\n\nstudies:\n"
                    + "\n".join(f"  {k:15s} {s.notebook}: {s.about}" for k, s in STUDIES.items()))
    p.add_argument("name", nargs="?", metavar="NAME", help="study name; omit to list them")
    _add_run_options(p, out_required=False)  # `ebmlab study` alone lists the studies
    p.set_defaults(func=cmd_study)
    return p


def _report(out_dir, counts: dict) -> None:
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"table: {Path(out_dir) / 'results.csv'}\nfigure: {Path(out_dir) / 'summary.png'}")


def _run_cli(args, notebook, grid, params, name: str) -> int:
    try:
        if args.status:
            rows = write_results(args.out, metric=args.metric)
            counts = dict.fromkeys(STATUSES, 0)
            counts.update(Counter(r["status"] for r in rows))
            for r in rows:
                if r["status"] in ("failed", "diverged"):
                    print(f"  {r['run_id']}: {r['status']}: {r['error'] or ''}")
            _report(args.out, counts)
            return 0
        if notebook is None:
            raise SweepError("give the NOTEBOOK to run (or --status to report on --out)")
        grid, params = merge_settings(grid, params, parse_grid_args(args.grid), parse_param_args(args.param))
        rows = run_sweep(notebook, grid, params, args.out, workers=args.workers, retry_failed=args.retry_failed,
                         progress=not args.no_progress, kernel_name=args.kernel, timeout=args.timeout,
                         metric=args.metric)
        counts = Counter(r["status"] for r in rows)
        _report(args.out, {k: counts[k] for k in STATUSES})
        return 1 if counts["failed"] else 0  # diverged is a finding, not an error
    except SweepError as e:
        print(f"ebmlab {name}: error: {e}", file=sys.stderr)
        return 2


def cmd_sweep(args) -> int:
    """``ebmlab sweep``: exit 0 when every run completed or diverged, 1 if some failed, 2 on bad input."""
    grid, params = {}, {}
    if args.grid_file and not args.status:
        try:
            grid, params = load_grid_file(args.grid_file)
        except SweepError as e:
            print(f"ebmlab sweep: error: {e}", file=sys.stderr)
            return 2
    return _run_cli(args, args.notebook, grid, params, "sweep")


def cmd_study(args) -> int:
    """``ebmlab study NAME``: like ``ebmlab sweep`` on the study's notebook and default grid."""
    if not args.name:
        for k, s in STUDIES.items():
            print(f"{k:15s} {s.notebook}: {s.about}")
        return 0
    if not args.out:
        print("ebmlab study: error: the following argument is required: --out DIR", file=sys.stderr)
        return 2
    if args.status:  # reads the sweep folder only; the study's files need not be here
        return _run_cli(args, None, {}, {}, "study")
    try:
        notebook, grid_file = resolve_study(args.name)
        grid, params = load_grid_file(grid_file)
    except SweepError as e:
        print(f"ebmlab study: error: {e}", file=sys.stderr)
        return 2
    return _run_cli(args, notebook, grid, params, "study")


__all__ = [
    "STATUSES", "STUDIES", "Param", "Study", "SweepError", "SweepPlan", "add_cli", "add_study_cli", "cmd_study",
    "cmd_sweep", "coerce_value", "expand_grid", "gather", "load_grid_file", "merge_settings", "notebook_parameters",
    "notebooks_dir", "parse_grid_args", "parse_param_args", "pending_runs", "plan_sweep", "read_notebook",
    "resolve_study", "run_id", "run_one", "run_sweep", "status_counts", "write_results",
]


if __name__ == "__main__":  # one run of a multi-worker sweep (see _run_in_subprocesses)
    run_one(**json.loads(sys.argv[1]))
