"""The results table: one row per run folder (results.csv), status counts, and the summary figure.

Everything here only reads the run folders, so it works while runs are pending or in flight (a
half-written metrics.json reads as no metrics yet). ``results.csv`` and ``summary.png`` are the only
shared files of a sweep; they are written by the central sweep process (or ``--status``), never by a job.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ._common import STATUSES, SweepError, nearest, read_json, write_text
from .runner import effective_status


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
    sweep = read_json(out / "sweep.json") or {}
    order = list(sweep.get("runs", []))
    found = sorted(p.name for p in (out / "runs").iterdir() if p.is_dir()) if (out / "runs").is_dir() else []
    ids = [r for r in order if r in found] + [r for r in found if r not in order]
    rows, params_of, param_cols, metric_cols = [], [], list(sweep.get("grid", {})), []
    for rid in ids:
        rec = read_json(out / "runs" / rid / "run.json") or {}
        params = rec.get("params") or {}
        param_cols += [k for k in params if k not in param_cols]
        err = (rec.get("error") or "").strip().splitlines()
        row = {"run_id": rid, **params, "status": effective_status(rec), "duration_s": rec.get("duration_s"),
               "error": err[0][:200] if err else None}
        metrics = read_json(out / "runs" / rid / "metrics.json")
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
    write_text(Path(out_dir) / "results.csv", buf.getvalue())
    numeric = [c for c in table.metric_cols if any(_numeric(r.get(c)) is not None for r in table.rows)]
    if metric is not None and metric not in numeric:
        raise SweepError(f"--metric {metric!r} is not a numeric column of {out_dir}/results.csv{nearest(metric, numeric)} "
                         f"(numeric metrics: {', '.join(numeric) or 'none yet'}); redraw without running anything "
                         f"with `ebmlab sweep --out {out_dir} --status --metric NAME`")
    if table.rows:
        from ..plotting.sweeps import plot_sweep_summary

        plot_sweep_summary(table.rows, table.swept, metric or (numeric[0] if numeric else None),
                           path=Path(out_dir) / "summary.png", title=Path(out_dir).name)
    return table.rows
