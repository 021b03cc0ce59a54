"""``ebmlab sweep`` and ``ebmlab study``: argument parsing and the commands (``cli.py`` registers them)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from ._common import STATUSES, SweepError
from .cluster import ClusterOptions
from .executors import EXECUTORS, run_sweep
from .params import load_grid_file, merge_settings, parse_grid_args, parse_param_args
from .results import write_results
from .studies import STUDIES, resolve_study


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
    g = p.add_argument_group(
        "executors", "where runs execute; every executor writes the same run folders (see `ebmlab.sweep.cluster`)")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: here (--workers at a time); submitit-local: submitit jobs on this machine; "
                        "slurm: one SLURM job array (needs submitit: pip install 'ebmlab[slurm]')")
    g.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                   help="wait until every job has ended (default: yes, except for --executor slurm)")
    s = p.add_argument_group("SLURM job resources", "per job; submitit-local honours --slurm-time and "
                             "--slurm-gpus-per-task")
    s.add_argument("--slurm-partition", metavar="P")
    s.add_argument("--slurm-time", type=int, metavar="MIN", help="time limit per job in minutes (default 240); "
                   "a job reaching it is requeued and resumes from its checkpoint")
    s.add_argument("--slurm-gpus-per-task", type=int, metavar="N")
    s.add_argument("--slurm-cpus-per-task", type=int, metavar="N")
    s.add_argument("--slurm-mem", metavar="SIZE", help="memory per job as sbatch reads it: 32G, 16000M")
    s.add_argument("--slurm-account", metavar="A")
    s.add_argument("--slurm-qos", metavar="Q")
    s.add_argument("--slurm-array-parallelism", type=int, metavar="N", help="at most N jobs of the array at once")
    s.add_argument("--slurm-setup", action="append", default=[], metavar="CMD",
                   help="shell line run before each job, e.g. 'module load cuda' (repeatable)")
    s.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. constraint=a100 (repeatable)")


def cluster_options(args) -> ClusterOptions | None:
    """The --slurm-* options as :class:`ClusterOptions`, or None when none was given."""
    extra = {}
    for item in args.slurm_extra:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"--slurm-extra {item!r}: expected KEY=VALUE (an sbatch option without its dashes)")
        extra[key.strip()] = value
    given = {"partition": args.slurm_partition, "time_min": args.slurm_time,
             "gpus_per_task": args.slurm_gpus_per_task, "cpus_per_task": args.slurm_cpus_per_task,
             "mem": args.slurm_mem, "account": args.slurm_account, "qos": args.slurm_qos,
             "array_parallelism": args.slurm_array_parallelism, "setup": tuple(args.slurm_setup), "extra": extra}
    given = {k: v for k, v in given.items() if v not in (None, (), {})}
    return ClusterOptions(**given) if given else None


def _package_doc() -> str:
    from .. import sweep

    return sweep.__doc__ or ""


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register ``ebmlab sweep`` on an argparse subparsers object; the handler is ``args.func(args) -> int``."""
    p = subparsers.add_parser(
        "sweep", help="run a notebook over a grid of parameters (papermill)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_package_doc().split("\n\n")[0] + "\n\nexamples:\n  ebmlab sweep notebooks/01_regularization.py "
                    "--grid lr=1e-3,1e-2 --grid spectral_norm=true,false -p smoke=true --out runs/reg --workers 2\n"
                    "  ebmlab sweep notebooks/01_regularization.py --grid-file grid.yaml --out /shared/reg "
                    "--executor slurm --slurm-partition gpu --slurm-gpus-per-task 1 --slurm-time 240\n"
                    "  ebmlab sweep --out /shared/reg --status")
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
                         metric=args.metric, executor=args.executor, cluster=cluster_options(args),
                         wait=args.wait)
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
