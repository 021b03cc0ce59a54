"""The training loop: maximum-likelihood learning of an EBM with MCMC samples.

One iteration (ebm-anatomy, short_run, IGEBM):

1. x+ = a data batch (+ ``data.noise`` Gaussian noise);
2. x− = ``sampler.n_steps`` steps of the sampler from the chain initialisation;
3. loss = s·(mean E(x+) − mean E(x−)) + α·mean(E(x+)² + E(x−)²), with s = ``train.loss_scale``
   (ebm-anatomy uses s = 2/ε² and logs d_{s_t} = s·(mean E(x+) − mean E(x−))) and α = ``reg.l2_energy``;
4. one optimizer step (Adam or SGD, ebm-anatomy's multiplicative lr decay to a floor, optional
   warm-up, weight decay).

Writes the run folder of :mod:`ebmlab.rundir`. Divergence (non-finite loss or |d| > ``train.max_abs_d``)
stops the run at once with ``status: diverged``. ``resume=True`` continues exactly where the last
checkpoint left off (model, optimizer, chains, RNG states).
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass

import torch

from .config import Config, ConfigError, validate
from .data import Dataset, load_dataset, noisy
from .init import ChainInit, make_init
from .nets import build_energy
from .rundir import (
    RunDir,
    append_jsonl,
    load_checkpoint,
    read_json,
    save_checkpoint,
    truncate_jsonl,
    write_json,
)
from .samplers import sample
from .samplers.fast import resolve_precision

# Settings that may change when a run is resumed (they do not alter the maths of past iterations).
RESUMABLE_CHANGES = {"train.iterations", "train.log_every", "train.checkpoint_every", "train.sample_every",
                     "train.eval_every", "train.eval_n", "train.progress", "train.device", "data.root",
                     "data.download"}


class Diverged(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: CUDA is not available on this machine; use auto or cpu")
    return dev


def build_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=cfg.reg.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=cfg.reg.weight_decay)


def lr_at(cfg: Config, iteration: int) -> float:
    """ebm-anatomy: lr ← max(lr_min, lr·decay) after every step; plus an optional linear warm-up.

    The floor never lifts the lr above its starting value: lowering ``optim.lr`` below a preset's
    ``lr_min`` gives a constant lr rather than a jump up to the floor.
    """
    o = cfg.optim
    lr = o.lr * o.lr_decay**iteration if o.lr_decay < 1.0 else o.lr
    lr = max(min(o.lr_min, o.lr), lr) if o.lr_decay < 1.0 else lr
    if o.warmup > 0:
        lr *= min(1.0, (iteration + 1) / o.warmup)
    return lr


@dataclass
class Run:
    """Everything a notebook needs after training: the trained net, its data, and where it lives."""

    cfg: Config
    net: torch.nn.Module
    data: Dataset
    init: ChainInit
    run_dir: RunDir
    summary: dict
    device: torch.device

    def sample(self, n: int | None = None, sampler=None, n_steps: int | None = None, seed: int = 0,
               snapshot_steps=()):
        """Fresh samples from the run's initialisation (``init.draw_samples``: no write-back, no restarts)
        with its sampler (or another)."""
        gen = torch.Generator(self.device).manual_seed(seed)
        x0 = self.init.draw_samples(n or self.cfg.train.batch_size, gen)
        return sample(self.net, sampler or self.cfg.sampler, x0, gen, n_steps, snapshot_steps)

    @property
    def records(self) -> list[dict]:
        from .rundir import read_jsonl

        return read_jsonl(self.run_dir.metrics)


def _check_resume_config(saved: Config, new: Config) -> Config:
    """On resume the saved config wins; only bookkeeping settings may differ."""
    a, b = saved.flat(), new.flat()
    bad = [k for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES]
    if bad:
        diffs = ", ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in bad)
        raise ConfigError(f"--resume cannot change settings that shape the run ({diffs}); start a new run instead")
    return saved.with_overrides({k: b[k] for k in RESUMABLE_CHANGES})


def _rng_state(gen: torch.Generator) -> dict:
    st = {"generator": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(gen: torch.Generator, st: dict) -> None:
    gen.set_state(st["generator"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_samples(x: torch.Tensor, path, data: Dataset) -> None:
    from .plotting import plot_samples, save_image_grid

    if data.is_toy:
        plot_samples(x, path=path, extent=data.target.extent)
    else:
        save_image_grid(x[:64], path)


def train(cfg: Config, out_dir, resume: bool = False, overwrite: bool = False, evaluator="auto") -> Run:
    """Train an EBM as configured and write the run folder ``out_dir``. Returns a :class:`Run`.

    ``evaluator``: "auto" picks the dataset's quality metrics (:mod:`ebmlab.evaluate`), None skips them.
    Errors in the config raise before any work; an exception during training is recorded in
    ``summary.json`` (status failed) and re-raised.
    """
    validate(cfg)
    rd = RunDir(out_dir)
    ckpt = None
    if resume:
        if not rd.checkpoint.exists():
            raise FileNotFoundError(f"--resume: {rd.checkpoint} does not exist (nothing to resume from)")
        cfg = _check_resume_config(Config.from_dict(read_json(rd.config)), cfg)
    rd.prepare(resume=resume, overwrite=overwrite)
    device = resolve_device(cfg.train.device)
    if resume:
        ckpt = load_checkpoint(rd.checkpoint, map_location=device)
    write_json(rd.config, cfg.to_dict())

    t0 = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    gen = torch.Generator(device).manual_seed(cfg.train.seed)
    data = load_dataset(cfg.data, device)
    net = build_energy(cfg.model, data.sample_shape).to(device)
    opt = build_optimizer(cfg, net.parameters())
    init = make_init(cfg, data, gen)
    if evaluator == "auto":
        from .evaluate import make_evaluator

        evaluator = make_evaluator(cfg, data)

    start, wall_before, ttq = 0, 0.0, None
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        init.load_state_dict(ckpt["init"])
        _set_rng_state(gen, ckpt["rng"])
        start, wall_before, ttq = ckpt["iteration"], ckpt["wall_seconds"], ckpt.get("time_to_quality")
        truncate_jsonl(rd.metrics, start)

    summary = {"status": "running", "iterations_done": start, "iterations": cfg.train.iterations,
               "wall_seconds": wall_before, "device": str(device),
               "sampler_precision": resolve_precision(cfg.sampler.precision, device.type), "time_to_quality": ttq}
    write_json(rd.summary, summary)
    setup_s = time.perf_counter() - t0
    tc = cfg.train
    B = tc.batch_size
    it = start
    last_rec: dict = {}
    final_metrics: dict = {}

    eval_s = 0.0  # evaluation time is not training time: time_to_quality and wall_seconds exclude it

    def wall() -> float:
        return wall_before + time.perf_counter() - t_start - eval_s

    def checkpoint(i):
        save_checkpoint(rd.checkpoint, {
            "iteration": i, "model": net.state_dict(), "optimizer": opt.state_dict(),
            "init": init.state_dict(), "rng": _rng_state(gen), "wall_seconds": wall(),
            "time_to_quality": ttq, "config": cfg.to_dict()})

    def evaluate(i) -> dict:
        nonlocal ttq, eval_s
        t_eval = time.perf_counter()
        metrics = evaluator(net, init, seed=tc.seed + 7919 * (i + 1))
        eval_s += time.perf_counter() - t_eval
        w = round(wall(), 3)
        append_jsonl(rd.metrics, {"iteration": i, "wall": w, "eval": True, **metrics})
        if ttq is None and evaluator.quality_met(metrics):
            ttq = {"iteration": i, "wall_seconds": w}
        return metrics

    pbar = None
    if tc.progress:
        from tqdm.auto import tqdm

        pbar = tqdm(total=tc.iterations, initial=start, desc="train", dynamic_ncols=True, leave=False)
    t_start = time.perf_counter()
    try:
        for it in range(start, tc.iterations):
            lr = lr_at(cfg, it)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, data.train.shape[0], (B,), generator=gen, device=device)
            x_pos = noisy(data.train[idx], cfg.data.noise, gen)
            x0, ctx = init.draw(B, gen)
            chain = sample(net, cfg.sampler, x0, gen)
            extra = init.update(ctx, chain.x)
            x_neg = chain.x

            e_pos, e_neg = net(x_pos), net(x_neg)
            d = e_pos.mean() - e_neg.mean()
            loss = tc.loss_scale * d
            if cfg.reg.l2_energy > 0:
                loss = loss + cfg.reg.l2_energy * (e_pos.pow(2) + e_neg.pow(2)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)

            r = chain.grad_norm.mean() if chain.grad_norm.numel() else torch.zeros((), device=device)
            # One host sync per iteration: the divergence check needs the numbers now.
            vals = torch.stack([(tc.loss_scale * d).detach(), r.detach(), e_pos.mean().detach(),
                                e_neg.mean().detach(), loss.detach()]).tolist()
            d_v, r_v, ep_v, en_v, loss_v = vals
            if not all(math.isfinite(v) for v in vals) or abs(d_v) > tc.max_abs_d:
                raise Diverged(f"iteration {it}: d={d_v:.4g}, loss={loss_v:.4g} (|d| bound {tc.max_abs_d:g})")
            opt.step()
            done = it + 1

            if done % tc.log_every == 0 or done == tc.iterations:
                rec = {"iteration": done, "d": d_v, "r": r_v, "e_pos": ep_v, "e_neg": en_v, "loss": loss_v,
                       "lr": lr, "wall": round(wall(), 3)}
                if chain.accept is not None:
                    rec["accept"] = float(chain.accept.mean())
                for k, v in extra.items():
                    rec[k] = float(v)
                append_jsonl(rd.metrics, rec)
                last_rec = rec
                if pbar is not None:
                    pbar.set_postfix(d=f"{d_v:.3g}", r=f"{r_v:.3g}", refresh=False)
            if pbar is not None:
                pbar.update(1)
            if done % tc.sample_every == 0:
                save_samples(x_neg, rd.samples / f"iter_{done:06d}.png", data)
            if evaluator is not None and tc.eval_every > 0 and done % tc.eval_every == 0 and done < tc.iterations:
                evaluate(done)
            if done % tc.checkpoint_every == 0 and done < tc.iterations:
                checkpoint(done)
                summary.update(iterations_done=done, wall_seconds=round(wall(), 3), time_to_quality=ttq)
                write_json(rd.summary, summary)
            it = done

        if start < tc.iterations:
            save_samples(x_neg, rd.samples / "last.png", data)
        if evaluator is not None:
            final_metrics = evaluate(tc.iterations)
        checkpoint(tc.iterations)
        summary.update(status="completed")
    except Diverged as e:
        summary.update(status="diverged", diverged_at=it + 1, error=str(e))
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise
    finally:
        if pbar is not None:
            pbar.close()
        summary.update(iterations_done=it, wall_seconds=round(wall(), 3), setup_seconds=round(setup_s, 3),
                       eval_seconds=round(eval_s, 3),
                       time_to_quality=ttq, final=last_rec, final_metrics=final_metrics)
        write_json(rd.summary, summary)
    return Run(cfg, net, data, init, rd, summary, device)


def load_run(run_dir, device: str | torch.device = "auto", data: Dataset | None = None) -> Run:
    """Rebuild a trained run (config, network at its last checkpoint, chain init) from its folder."""
    rd = RunDir(run_dir)
    if not rd.config.exists() or not rd.checkpoint.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder with a checkpoint (need config.json and "
                                f"checkpoints/last.pt)")
    cfg = Config.from_dict(read_json(rd.config))
    dev = resolve_device(device if isinstance(device, str) else str(device))
    ckpt = load_checkpoint(rd.checkpoint, map_location=dev)
    data = data if data is not None else load_dataset(cfg.data, dev)
    net = build_energy(cfg.model, data.sample_shape).to(dev)
    net.load_state_dict(ckpt["model"])
    net.eval()
    init = make_init(cfg, data, torch.Generator(dev).manual_seed(0))
    init.load_state_dict(ckpt["init"])
    summary = rd.read_summary() or {}
    return Run(cfg, net, data, init, rd, summary, dev)


def ensure_trained(cfg: Config, out_dir, evaluator="auto") -> Run:
    """Train into ``out_dir``, or pick up what is already there: the notebook/sweep entry point.

    - no run yet: train from scratch;
    - a run with a checkpoint that did not finish (kill, disconnect, preemption): resume it;
    - a completed run of the same config and length: load it without training again.
    Re-running a notebook cell (or a requeued sweep job) therefore never starts a run over. A folder
    holding a different config raises (use a new folder or delete it).
    """
    rd = RunDir(out_dir)
    if not rd.checkpoint.exists():
        return train(cfg, out_dir, overwrite=rd.exists(), evaluator=evaluator)
    saved = Config.from_dict(read_json(rd.config))
    _check_resume_config(saved, cfg)
    summary = rd.read_summary() or {}
    done = summary.get("status") in ("completed", "diverged") and summary.get("iterations") == cfg.train.iterations
    if done:
        run = load_run(out_dir, cfg.train.device)
        return run
    return train(cfg, out_dir, resume=True, evaluator=evaluator)
