"""Sampler throughput: the reference repositories' plain loop against ebmlab's paths, in one process.

For the anatomy net (ebm-anatomy's VanillaNet, n_c=3, n_f=32, 32x32, batch 100) and the toy net
(ToyNet, large batch), measures steps per second of

(a) the plain loop written the way ebm-anatomy and short_run write it
    (``x.requires_grad_(); g = autograd.grad(f(x).sum(), [x])[0]; x = x - g + eps * noise``),
(b) ebmlab's default path (``sampler.fast=auto``, fp32),
(c) every other path available here (``off``, ``compile``, ``cuda_graph``, and bf16 variants),

with the ratio to (a), achieved GFLOP/s (convolution/matmul FLOPs of one forward + input-backward,
counted by ``torch.utils.flop_counter``) against a large GEMM measured in the same process (the practical
ceiling), and each fp32 path's relative error against (a) from the same start and seed. Repetitions are
interleaved (each round runs every path once, in rotated order) and ratios are medians of per-round
ratios, so load from other processes hits all paths alike. The last line is
``speedup over plain loop: R`` with R the best path's ratio on the anatomy net.

    python benchmarks/sampler.py                    # CPU: ~40 s on 2 idle cores, ~3 min loaded and uncached
    python benchmarks/sampler.py --quick            # smoke run (no compile), under a minute
    python benchmarks/sampler.py --device cuda --steps 100 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ebmlab.config import SamplerConfig  # noqa: E402
from ebmlab.nets import ToyNet, VanillaNet  # noqa: E402
from ebmlab.samplers import sample  # noqa: E402

EPS = 0.01  # ebm-anatomy's CIFAR-10 noise; its step on f is 1 (sgld eta=1, sigma=eps)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_loop(net, x, n_steps, gen):
    """The plain loop as ebm-anatomy/short_run write it (the noise comes from a generator so the chain
    can be compared with ebmlab's; torch.randn_like costs the same)."""
    for _ in range(n_steps):
        x = x.detach().requires_grad_()
        g = torch.autograd.grad(net(x).sum(), [x])[0]
        x = x - g + EPS * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return x.detach()


def flops_per_step(net, x):
    """FLOPs of one energy forward and its input-backward (what every sampler step computes)."""
    from torch.utils.flop_counter import FlopCounterMode

    flags = [(p, p.requires_grad) for p in net.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)  # count the input gradient only, as the sampler computes it
    try:
        with FlopCounterMode(display=False) as fc:
            xg = x.detach().requires_grad_()
            net(xg).sum().backward()
    finally:
        for p, rg in flags:
            p.requires_grad_(rg)
    return fc.get_total_flops()


def gemm_rate(device, dtype, n, how="matmul"):
    """A GEMM timer (GFLOP/s of one n x n x n product). ``how``: ``matmul`` (MKL / cuBLAS sgemm, the
    issue's ceiling), ``tf32`` (cuBLAS with TF32, what cuDNN's fp32 convolutions use by default) or
    ``onednn`` (the same product as a 1x1 convolution, which oneDNN runs with its own AVX-512 GEMM; on
    AMD CPUs MKL's sgemm does not reach it)."""
    if how == "onednn":
        side = int(math.isqrt(n))
        a = torch.randn(1, n, side, n // side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        b = torch.randn(n, n, 1, 1, device=device, dtype=dtype)
        op = lambda: torch.nn.functional.conv2d(a, b)  # noqa: E731
    else:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        op = lambda: a @ b  # noqa: E731

    def run():
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = how == "tf32"
        try:
            sync(device)
            t = time.perf_counter()
            op()
            sync(device)
            return 2 * n**3 / (time.perf_counter() - t) / 1e9
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    run()
    return run


def build_paths(device, cuda_ok, compile_ok):
    """(name, fast, precision) of every ebmlab path to time; the first is the default path."""
    paths = [("ebmlab default (auto)", "auto", "fp32"), ("ebmlab off (plain)", "off", "fp32")]
    if compile_ok:
        paths.append(("ebmlab compile", "compile", "fp32"))
    if cuda_ok:
        paths.append(("ebmlab cuda_graph", "cuda_graph", "fp32"))
    paths.append(("ebmlab auto + bf16", "auto", "bf16"))
    if compile_ok:
        paths.append(("ebmlab compile + bf16", "compile", "bf16"))
    return paths


@contextlib.contextmanager
def true_fp32(device):
    """TF32 off on CUDA (cuDNN convolutions default to it), so fp32 chains can be compared at 1e-5."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def first_calls(runners, device, log):
    """One call of every path from the same start and seed: final samples, path taken, seconds."""
    outs, actual, secs = {}, {}, {}
    for name, run in runners.items():
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            res = run(torch.Generator(device).manual_seed(0))
        sync(device)
        secs[name] = time.perf_counter() - t
        for m in w:
            log(f"  warning from {name}: {m.message}")
        outs[name] = (res if isinstance(res, torch.Tensor) else res.x).float()
        actual[name] = "reference" if isinstance(res, torch.Tensor) else res.path
    return outs, actual, secs


def bench_net(label, net, x0, steps, rounds, device, paths, ceilings, log):
    net = net.to(device)
    flops = flops_per_step(net, x0)
    cfg0 = SamplerConfig(name="sgld", step_size=1.0, noise=EPS, n_steps=steps, record_every=1)
    runners = {"(a) plain loop": lambda gen: reference_loop(net, x0, steps, gen)}
    for name, fast, prec in paths:
        cfg = SamplerConfig(**{**cfg0.__dict__, "fast": fast, "precision": prec})
        runners[name] = (lambda c: lambda gen: sample(net, c, x0, gen))(cfg)
    # Equality: every path from the same start and seed, in true fp32. On CPU this is also the warm-up
    # (compilation, oneDNN primitive caches); on CUDA a second pass warms up (and captures graphs) under
    # the default TF32 settings that the timings use.
    with true_fp32(device):
        outs, actual, setup = first_calls(runners, device, log)
    if device.type == "cuda":
        _, actual, setup = first_calls(runners, device, log)
    ref = outs["(a) plain loop"]
    rel = {n: float((o - ref).norm() / ref.norm()) for n, o in outs.items()}

    times = {n: [] for n in runners}
    ceil_samples = {k: [] for k in ceilings}
    names = list(runners)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            gen = torch.Generator(device).manual_seed(r)
            sync(device)
            t = time.perf_counter()
            runners[name](gen)
            sync(device)
            times[name].append(time.perf_counter() - t)
        for key, run in ceilings.items():  # the ceiling, measured in the same rounds as this net's paths
            ceil_samples[key].append(run())
    ceil = {k: statistics.median(v) for k, v in ceil_samples.items()}
    best_fp32 = max(v for k, v in ceil.items() if k != "bf16")
    rows = []
    for name in names:
        med = statistics.median(times[name])
        ratio = statistics.median(a / b for a, b in zip(times["(a) plain loop"], times[name]))
        rows.append({"net": label, "path": name, "ran_as": actual[name], "steps_per_s": steps / med,
                     "ratio": ratio, "gflops": flops * steps / med / 1e9, "rel_err": rel[name],
                     "first_call_s": setup[name]})
        r = rows[-1]
        bf16 = "bf16" in actual[name]
        r["precision"] = "bf16" if bf16 else "fp32"
        r["pct_sgemm"] = 100 * r["gflops"] / ceil["sgemm"]
        r["pct_best"] = 100 * r["gflops"] / (ceil["bf16"] if bf16 else best_fp32)
    return rows, flops, ceil


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--batch", type=int, default=100, help="anatomy-net chains (ebm-anatomy: 100)")
    ap.add_argument("--toy-batch", type=int, default=None, help="toy-net chains (default 10000 CPU, 100000 CUDA)")
    ap.add_argument("--steps", type=int, default=None,
                    help="anatomy-net steps per timed call (default 4 CPU, 100 CUDA); the toy net runs 5x as many")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved repetitions (default 5, quick 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: small batches, no compile")
    ap.add_argument("--nets", default="anatomy,toy", help="comma-separated: anatomy, toy")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile paths")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--plot", default=None, help="also draw steps/s per path into this PNG")
    args = ap.parse_args(argv)

    dev_name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = torch.device(dev_name)
    cuda_ok = device.type == "cuda"
    steps = args.steps or (100 if cuda_ok else (2 if args.quick else 4))
    rounds = args.rounds or (2 if args.quick else 5)
    batch = 16 if args.quick and args.batch == 100 else args.batch
    toy_batch = args.toy_batch or (1000 if args.quick else (100000 if cuda_ok else 10000))
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    log(f"torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if cuda_ok else f", {torch.get_num_threads()} threads")
        + f", steps per call {steps}, rounds {rounds}")
    if cuda_ok:
        log(f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} (fp32 convolutions may use TF32), "
            f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
    gemm_n = 8192 if cuda_ok else (1024 if args.quick else 4096)
    runners = {"sgemm": gemm_rate(device, torch.float32, gemm_n),
               "bf16": gemm_rate(device, torch.bfloat16, gemm_n)}
    if cuda_ok:
        runners["tf32"] = gemm_rate(device, torch.float32, gemm_n, "tf32")
    else:
        runners["onednn"] = gemm_rate(device, torch.float32, gemm_n, "onednn")
    ceilings = runners
    paths = build_paths(device, cuda_ok, not (args.quick or args.no_compile))
    torch.manual_seed(0)
    # The toy net's steps take milliseconds: five times as many per call keep each timing above noise.
    nets = [("anatomy", VanillaNet(3, 32, 32), torch.rand(batch, 3, 32, 32, device=device) * 2 - 1, steps),
            ("toy", ToyNet(2, 32), torch.randn(toy_batch, 2, device=device), 5 * steps)]
    nets = [n for n in nets if n[0] in args.nets.split(",")]
    rows, flops, ceil = [], {}, {}
    for label, net, x0, k in nets:
        log(f"{label}: {tuple(x0.shape)}, {k} steps per call ...")
        r, flops[label], ceil[label] = bench_net(label, net, x0, k, rounds, device, paths, ceilings, log)
        rows += r
    log()
    for label, c in ceil.items():
        log(f"GEMM ceilings ({gemm_n}^3, GFLOP/s, median over the {label} net's rounds): "
            + ", ".join(f"{k} {v:.1f}" for k, v in c.items()))
    log("FLOPs per step (forward + input-backward): " + ", ".join(
        f"{k} {v / 1e9:.3f} G at batch {batch if k == 'anatomy' else toy_batch}" for k, v in flops.items()))
    head = (f"{'net':8s} {'path':24s} {'ran as':34s} {'steps/s':>9s} {'vs (a)':>7s} {'GFLOP/s':>8s} "
            f"{'%sgemm':>7s} {'%best':>6s} {'rel.err':>9s} {'1st call s':>10s}")
    log(head)
    log("-" * len(head))
    for r in rows:
        log(f"{r['net']:8s} {r['path']:24s} {r['ran_as']:34s} {r['steps_per_s']:9.2f} {r['ratio']:6.2f}x "
            f"{r['gflops']:8.1f} {r['pct_sgemm']:6.1f}% {r['pct_best']:5.1f}% {r['rel_err']:9.1e} "
            f"{r['first_call_s']:10.1f}")
    log("%sgemm: achieved FLOP/s over the fp32 sgemm ceiling (torch.matmul); %best: over the fastest GEMM "
        "of the path's precision measured here (bf16 GEMM for bf16 paths; for fp32 the best of sgemm, "
        "oneDNN 1x1-conv GEMM on CPU, TF32 cuBLAS on CUDA). rel.err: ||x - x_a|| / ||x_a|| after the timed "
        "number of steps from the same start and seed (fp32, TF32 off).")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "steps": steps, "rounds": rounds,
                                               "batch": batch, "toy_batch": toy_batch, "ceiling": ceil,
                                               "flops": flops, "rows": rows, "log": lines}, indent=2))
    if args.plot:
        plot(rows, args.plot, device)
    net = "anatomy" if "anatomy" in flops else next(iter(flops))
    ours = [r for r in rows if r["net"] == net and r["path"] != "(a) plain loop"]
    best = max(ours, key=lambda r: r["ratio"])
    best32 = max((r for r in ours if r["precision"] == "fp32"), key=lambda r: r["ratio"])
    default = next(r for r in ours if r["path"].startswith("ebmlab default"))
    log(f"{net}: default path {default['ratio']:.2f}x; best fp32 path {best32['path']} ({best32['ran_as']}) "
        f"{best32['ratio']:.2f}x at {best32['pct_sgemm']:.0f}% of sgemm ({best32['pct_best']:.0f}% of the best "
        f"fp32 GEMM); "
        f"best path {best['path']} ({best['ran_as']}) {best['ratio']:.2f}x")
    log(f"speedup over plain loop: {best['ratio']:.2f}")


def plot(rows, path, device):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = sorted({r["net"] for r in rows})
    fig, axes = plt.subplots(1, len(nets), figsize=(6 * len(nets), 3.5))
    for ax, net in zip(axes if len(nets) > 1 else [axes], nets):
        rs = [r for r in rows if r["net"] == net]
        ax.barh([r["path"] for r in rs], [r["ratio"] for r in rs])
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlabel("steps/s relative to the plain loop (a)")
        ax.set_title(f"{net} on {device}")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
