"""The ``ebmlab`` command.

    ebmlab presets
    ebmlab train [--preset P] [--set key=value ...] --out DIR [--resume | --overwrite]
    ebmlab sample --run DIR [--sampler NAME] [--steps K] [--n N] [--set sampler.key=value ...] --out FILE.png
    ebmlab eval --run DIR [--n N] [--sampler NAME] [--steps K]
    ebmlab sweep NOTEBOOK --grid key=v1,v2 ... --out DIR [--executor local|submitit-local|slurm] [--status]
    ebmlab study NAME --out DIR                                (a study's default sweep)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_presets(args) -> int:
    from .presets import DEFAULT_PRESET, describe_presets

    rows = describe_presets()
    w = max(len(n) for n, _ in rows)
    for name, desc in rows:
        star = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{w}}  {desc}{star}")
    return 0


def _cmd_train(args) -> int:
    from .config import parse_set_args
    from .presets import get_preset
    from .train import train

    overrides = parse_set_args(args.set)
    if args.resume:
        # the saved config wins on resume; --set may only extend iterations or change bookkeeping
        from .config import Config
        from .rundir import RunDir, read_json

        rd = RunDir(args.out)
        if not rd.config.exists():
            raise SystemExit(f"ebmlab train --resume: {args.out} has no config.json; nothing to resume")
        cfg = Config.from_dict(read_json(rd.config)).with_overrides(overrides)
    else:
        cfg = get_preset(args.preset, overrides)
    run = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    s = run.summary
    print(json.dumps({k: s.get(k) for k in ("status", "iterations_done", "wall_seconds", "time_to_quality",
                                            "diverged_at", "final_metrics")}, indent=2))
    print(f"run folder: {Path(args.out).resolve()}  (samples in {run.run_dir.samples})")
    return 0 if s["status"] == "completed" else 3


def _sampler_cfg(run, args):
    from .config import parse_set_args

    over = {k: v for k, v in parse_set_args(getattr(args, "set", None)).items()}
    bad = [k for k in over if not k.startswith("sampler.")]
    if bad:
        raise SystemExit(f"--set here only takes sampler.* keys, got {', '.join(bad)}")
    if args.sampler:
        over["sampler.name"] = args.sampler
    if args.steps is not None:
        over["sampler.n_steps"] = args.steps
    return run.cfg.with_overrides(over).sampler


def _cmd_sample(args) -> int:
    from .plotting import plot_samples
    from .train import load_run

    run = load_run(args.run, args.device)
    scfg = _sampler_cfg(run, args)
    res = run.sample(args.n, sampler=scfg, seed=args.seed)
    out = Path(args.out)
    if run.data.is_toy:
        plot_samples(res.x, path=out, extent=run.data.target.extent)
    else:
        from .plotting import save_image_grid

        save_image_grid(res.x, out)
    print(f"wrote {out} ({args.n} samples, {scfg.name}, {scfg.n_steps} steps)")
    return 0


def _cmd_eval(args) -> int:
    from .evaluate import evaluate_run

    result = evaluate_run(args.run, n=args.n, sampler=args.sampler, n_steps=args.steps, device=args.device,
                          seed=args.seed)
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ebmlab", description="Train and study MCMC-trained energy-based models.")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("presets", help="list the named configurations")
    sp.set_defaults(func=_cmd_presets)

    sp = sub.add_parser("train", help="train an EBM into a run folder")
    sp.add_argument("--preset", default=None, help="named configuration (default quick-mnist5k); see `ebmlab presets`")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    sp.add_argument("--out", required=True, help="run folder to write")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    sp.set_defaults(func=_cmd_train)

    for name, helptext in (("sample", "draw samples from a trained run"), ("eval", "evaluate a trained run")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--run", required=True, help="run folder")
        sp.add_argument("--sampler", default=None, choices=["langevin", "sgld", "sgd", "mala"])
        sp.add_argument("--steps", type=int, default=None, help="MCMC steps (default: the run's)")
        sp.add_argument("--n", type=int, default=64 if name == "sample" else 1000, help="number of samples")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--device", default="auto")
        if name == "sample":
            sp.add_argument("--set", action="append", metavar="sampler.KEY=VALUE", help="override a sampler key")
            sp.add_argument("--out", required=True, help="PNG file to write")
            sp.set_defaults(func=_cmd_sample)
        else:
            sp.set_defaults(func=_cmd_eval)

    try:
        from . import sweep
    except ImportError:  # pragma: no cover - sweep needs papermill, a core dependency
        sweep = None
    if sweep is not None:
        sweep.add_cli(sub)
        sweep.add_study_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .rundir import RunFolderError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RunFolderError, FileNotFoundError) as e:
        print(f"ebmlab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
