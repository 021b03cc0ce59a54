"""The chain loop's fast paths compute the plain path's chain, fall back cleanly, and never sync the host."""

import dataclasses

import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ebmlab.config import SamplerConfig
from ebmlab.nets import ToyNet, VanillaNet, apply_spectral_norm
from ebmlab.samplers import (
    MALA,
    SGD,
    SGLD,
    Langevin,
    Records,
    chain,
    make_kernel,
    run_chain,
    sample,
    sampling_mode,
)
from ebmlab.samplers import fast as fastpath

KERNELS = ["langevin", "sgld", "sgd", "mala"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


def cfg_for(name, **kw):
    base = dict(name=name, step_size=0.05 if name != "sgld" else 1.0, noise=0.01, n_steps=6, momentum=0.5,
                clip_grad=0.0)
    return SamplerConfig(**{**base, **kw})


def kernel_for(name):
    return {"langevin": Langevin(0.3), "sgld": SGLD(0.1, 0.2), "sgd": SGD(0.1, momentum=0.5),
            "mala": MALA(0.5)}[name]


def conv_net(seed=0, sn=True):
    torch.manual_seed(seed)
    net = VanillaNet(1, 4, 28)
    return apply_spectral_norm(net) if sn else net


def same_chain(a, b, exact):
    check = (lambda u, v: torch.equal(u, v)) if exact else (lambda u, v: torch.allclose(u, v, rtol=1e-4, atol=1e-5))
    assert check(a.x, b.x), (a.path, b.path, float((a.x - b.x).abs().max()))
    assert check(a.energy, b.energy) and check(a.grad_norm, b.grad_norm)
    assert (a.accept is None) == (b.accept is None)
    if a.accept is not None:
        assert torch.equal(a.accept, b.accept)
    assert sorted(a.snapshots) == sorted(b.snapshots)
    for k in a.snapshots:
        assert check(a.snapshots[k], b.snapshots[k])


# --- equality with the plain path ----------------------------------------------------------------

@pytest.mark.parametrize("name", KERNELS)
def test_buffered_path_draws_the_plain_paths_numbers(name):
    """On flat samples the eager fast path differs from the plain loop only in where noise is drawn:
    buffers filled with normal_/uniform_ hold exactly torch.randn/rand's numbers, so chains are equal."""
    torch.manual_seed(0)
    net = ToyNet(2, 8)
    x0 = torch.randn(64, 2)
    runs = [run_chain(kernel_for(name), net, x0, 7, torch.Generator().manual_seed(3), record_every=2,
                      snapshot_steps=[0, 3, 7], fast=f) for f in ("off", "auto")]
    assert runs[0].path == "plain" and runs[1].path == "eager"
    same_chain(runs[0], runs[1], exact=True)


@pytest.mark.parametrize("name", KERNELS)
def test_channels_last_path_matches_plain(name):
    """ebmlab's conv nets run NHWC on the fast path; the chain equals the plain one up to fp32 rounding."""
    net = conv_net()
    x0 = torch.rand(3, 1, 28, 28) * 2 - 1
    a = sample(net, cfg_for(name, fast="off"), x0, torch.Generator().manual_seed(7), snapshot_steps=[2, 6])
    b = sample(net, cfg_for(name, fast="auto"), x0, torch.Generator().manual_seed(7), snapshot_steps=[2, 6])
    assert b.path == "eager+channels_last"
    assert b.x.is_contiguous() and all(s.is_contiguous() for s in b.snapshots.values())
    same_chain(a, b, exact=False)


def test_reference_energy_on_fast_path():
    net = ToyNet(2, 8)
    cfg = SamplerConfig(name="langevin", step_size=0.2, n_steps=5, ref_sigma=0.5)
    x0 = torch.randn(32, 2)
    a = sample(net, dataclasses.replace(cfg, fast="off"), x0, torch.Generator().manual_seed(1))
    b = sample(net, dataclasses.replace(cfg, fast="auto"), x0, torch.Generator().manual_seed(1))
    same_chain(a, b, exact=True)


def test_bf16_keeps_fp32_samples_close_to_fp32():
    net = conv_net(sn=False)
    x0 = torch.rand(4, 1, 28, 28) * 2 - 1
    a = sample(net, cfg_for("sgld", fast="off"), x0, torch.Generator().manual_seed(0))
    b = sample(net, cfg_for("sgld", fast="auto", precision="bf16"), x0, torch.Generator().manual_seed(0))
    assert b.path.endswith("+bf16") and b.x.dtype == torch.float32 and b.energy.dtype == torch.float32
    step = (a.x - x0).abs().max()
    assert (a.x - b.x).abs().max() < 0.1 * step  # bf16 has 8 mantissa bits: close, not equal


def test_auto_precision_is_bf16_exactly_where_the_hardware_has_it(monkeypatch):
    net = conv_net(sn=False)
    x0 = torch.rand(4, 1, 28, 28) * 2 - 1
    bf = sample(net, cfg_for("sgld", fast="auto", precision="bf16"), x0, torch.Generator().manual_seed(0))
    fp = sample(net, cfg_for("sgld", fast="auto", precision="fp32"), x0, torch.Generator().manual_seed(0))
    for native, same_as in [(True, bf), (False, fp)]:
        monkeypatch.setattr(fastpath, "native_bf16", lambda device_type, native=native: native)
        assert fastpath.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
        auto = sample(net, cfg_for("sgld", fast="auto", precision="auto"), x0, torch.Generator().manual_seed(0))
        assert auto.path == same_as.path and torch.equal(auto.x, same_as.x)
    assert fastpath.resolve_precision("fp32", "cpu") == "fp32"  # explicit choices are kept as given
    assert fastpath.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="sampler.precision"):
        fastpath.resolve_precision("fp16", "cpu")


def test_compile_path_matches_plain():
    """One real compile (tiny MLP, MALA: the kernel with the most state) against the plain loop."""
    torch.manual_seed(0)
    net = ToyNet(2, 4)
    x0 = torch.randn(16, 2)
    cfg = cfg_for("mala", step_size=0.3, n_steps=4)
    a = sample(net, dataclasses.replace(cfg, fast="off"), x0, torch.Generator().manual_seed(5))
    b = sample(net, dataclasses.replace(cfg, fast="compile"), x0, torch.Generator().manual_seed(5))
    if b.path == "plain":
        pytest.skip("torch.compile is unavailable here (the fallback warned and ran the plain path)")
    assert b.path == "compile"
    same_chain(a, b, exact=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", KERNELS)
def test_compile_path_matches_plain_every_kernel(name):
    net = conv_net()
    x0 = torch.rand(3, 1, 28, 28) * 2 - 1
    a = sample(net, cfg_for(name, fast="off"), x0, torch.Generator().manual_seed(7), snapshot_steps=[3])
    b = sample(net, cfg_for(name, fast="compile"), x0, torch.Generator().manual_seed(7), snapshot_steps=[3])
    assert b.path == "compile+channels_last"
    same_chain(a, b, exact=False)


# --- the CUDA-graph stepper's bookkeeping, on the CPU -------------------------------------------

class FakeGraph:
    """Stands in for a CUDA graph on the CPU: replay re-runs the captured Python body."""

    def __init__(self, body):
        self.body = body

    def replay(self):
        self.body()


@pytest.fixture
def fake_graphs(monkeypatch):
    captures = []

    def capture(warm_up, body, device):
        warm_up()
        captures.append(device)
        return FakeGraph(body)

    monkeypatch.setattr(fastpath, "_capture", capture)
    monkeypatch.setattr(fastpath, "_GRAPHS", fastpath.weakref.WeakKeyDictionary())
    return captures


def run_graph_path(net, cfg, x0, seed, snaps=()):
    """The cuda_graph stepper forced onto the CPU (make_plan would refuse it there)."""
    plan = fastpath.Plan("cuda_graph", channels_last=True)
    with sampling_mode(net, cache_parametrizations=False):
        return chain._run(make_kernel(cfg), net, x0, cfg.n_steps, torch.Generator().manual_seed(seed),
                          cfg.record_every, snaps, plan)


@pytest.mark.parametrize("name", KERNELS)
def test_graph_stepper_chunks_noise_records_and_snapshots(fake_graphs, name):
    """Chunks of C steps with noise drawn before each replay, records gathered per chunk and
    snapshots between chunks give the plain chain."""
    net = conv_net()
    x0 = torch.rand(3, 1, 28, 28) * 2 - 1
    cfg = cfg_for(name, n_steps=12, record_every=5)
    plain = sample(net, dataclasses.replace(cfg, fast="off"), x0, torch.Generator().manual_seed(4),
                   snapshot_steps=[4, 12])
    got = run_graph_path(net, cfg, x0, 4, [4, 12])  # segments 4 and 8: chunks of C = 4
    assert got.path == "cuda_graph+channels_last" and len(fake_graphs) == 1
    same_chain(plain, got, exact=False)
    with NoHostConversions(), NoHostReads():  # filling noise, replaying, gathering records: no host reads
        again = run_graph_path(net, cfg, x0, 4, [4, 12])
    assert len(fake_graphs) == 1  # same network, kernel and shapes: the cached graph
    same_chain(got, again, exact=True)
    assert got.x.data_ptr() != again.x.data_ptr()  # results never alias the static buffers


def test_graph_stepper_recaptures_when_parameters_move(fake_graphs):
    net = conv_net(sn=False)
    x0 = torch.rand(3, 1, 28, 28) * 2 - 1
    cfg = cfg_for("sgld", n_steps=6)

    def check():
        plain = sample(net, dataclasses.replace(cfg, fast="off"), x0, torch.Generator().manual_seed(0))
        same_chain(plain, run_graph_path(net, cfg, x0, 0), exact=False)

    check()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)  # in place, like an optimizer step: same addresses, no new capture
    check()
    assert len(fake_graphs) == 1
    net.f[0].weight = nn.Parameter(net.f[0].weight.detach() * 2)  # a new tensor: the graph must be re-captured
    check()
    assert len(fake_graphs) == 2
    run_graph_path(net, dataclasses.replace(cfg, n_steps=7), x0, 0)  # another chunk size: another graph
    assert len(fake_graphs) == 3 and len(fastpath._GRAPHS[net]) == 2  # the stale graph was replaced


def test_cached_graphs_do_not_keep_the_network_alive(monkeypatch):
    """A real graph keeps no Python reference to what it captured; nor may the runner around it."""
    import gc
    import weakref

    class Opaque:
        def replay(self):
            pass

    def capture(warm_up, body, device):
        body()  # like a capture: the body runs once and the graph keeps only its kernels
        return Opaque()

    monkeypatch.setattr(fastpath, "_capture", capture)
    monkeypatch.setattr(fastpath, "_GRAPHS", fastpath.weakref.WeakKeyDictionary())
    net = conv_net(sn=False)
    run_graph_path(net, cfg_for("sgld", n_steps=2), torch.rand(2, 1, 28, 28), 0)
    assert len(fastpath._GRAPHS) == 1
    ref = weakref.ref(net)
    del net
    gc.collect()
    assert ref() is None and len(fastpath._GRAPHS) == 0


# --- clean fallback ------------------------------------------------------------------------------

@pytest.fixture
def fresh_compile_state(monkeypatch):
    monkeypatch.setattr(fastpath, "_COMPILED", {})
    monkeypatch.setattr(fastpath, "_CHECKED", fastpath.weakref.WeakKeyDictionary())
    monkeypatch.setattr(fastpath, "_WARNED", set())


def _broken_at_wrap(fn, **kw):
    raise RuntimeError("no C++ compiler found")


def _broken_at_call(fn, **kw):
    def run(*a, **k):
        raise RuntimeError("inductor: compilation of generated code failed")

    return run


def _wrong(fn, **kw):
    def run(base, c, x, state, rand):
        x_new, state, info = fn(base, c, x, state, rand)
        return x_new + 1.0, state, info

    return run


@pytest.mark.parametrize("broken,match", [(_broken_at_wrap, "torch.compile failed"),
                                          (_broken_at_call, "torch.compile failed"),
                                          (_wrong, "disagrees")])
@pytest.mark.parametrize("name", ["sgld", "mala"])
def test_compile_failure_falls_back_to_plain(monkeypatch, fresh_compile_state, broken, match, name):
    monkeypatch.setattr(fastpath, "_compile", broken)
    net = conv_net()
    x0 = torch.rand(3, 1, 28, 28) * 2 - 1
    plain = sample(net, cfg_for(name, fast="off"), x0, torch.Generator().manual_seed(2))
    with pytest.warns(RuntimeWarning, match=match):
        got = sample(net, cfg_for(name, fast="compile"), x0, torch.Generator().manual_seed(2))
    assert got.path == "plain"
    same_chain(plain, got, exact=True)  # nothing was drawn before the fallback: the very same chain
    with fastpath.warnings.catch_warnings():
        fastpath.warnings.simplefilter("error")  # warned once: the second call is silent
        again = sample(net, cfg_for(name, fast="compile"), x0, torch.Generator().manual_seed(2))
    same_chain(plain, again, exact=True)


def test_cuda_graph_on_cpu_runs_plain_path(monkeypatch):
    monkeypatch.setattr(fastpath, "_WARNED", set())
    net = ToyNet(2, 8)
    x0 = torch.randn(8, 2)
    with pytest.warns(RuntimeWarning, match="CUDA"):
        got = sample(net, cfg_for("sgld", fast="cuda_graph"), x0, torch.Generator().manual_seed(0))
    assert got.path == "plain"


# --- no host synchronisation inside the loop -----------------------------------------------------

class HostSync(AssertionError):
    pass


class NoHostReads(TorchDispatchMode):
    """Fails on every op that reads a tensor's value on the host or copies it off the device."""

    banned = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default,
              torch.ops.aten.is_nonzero.default, torch.ops.aten.allclose.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.banned:
            raise HostSync(f"host read inside the chain loop: {func}")
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            src = args[1] if func is torch.ops.aten.copy_.default else args[0]
            dst = args[0].device if func is torch.ops.aten.copy_.default else kwargs.get("device")
            if dst is not None and src.device.type != "cpu" and torch.device(dst).type == "cpu":
                raise HostSync(f"device-to-host copy inside the chain loop: {func}")
        return func(*args, **kwargs)


class NoHostConversions(TorchFunctionMode):
    """Python-side conversions of a tensor to a number, bool or list (branching on tensor values)."""

    banned = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
              torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.numpy}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.banned:
            raise HostSync(f"host conversion inside the chain loop: {func.__name__}")
        return func(*args, **(kwargs or {}))


def test_the_sync_detector_detects():
    t = torch.ones(3)
    for read in (lambda: t.sum().item(), lambda: bool(t[0] > 0), lambda: t.tolist(), lambda: float(t[0]),
                 lambda: torch.equal(t, t)):
        with pytest.raises(HostSync), NoHostConversions(), NoHostReads():
            read()


@pytest.mark.parametrize("fast", ["off", "auto"])
@pytest.mark.parametrize("name", KERNELS)
def test_no_host_sync_in_the_loop(fast, name):
    net = conv_net()
    x0 = torch.rand(3, 1, 28, 28) * 2 - 1
    cfg = cfg_for(name, fast=fast, record_every=2, clip_grad=1.0, clamp=True)
    gen = torch.Generator().manual_seed(0)
    with NoHostConversions(), NoHostReads():
        res = sample(net, cfg, x0, gen, snapshot_steps=[0, 3, 6])
    assert res.energy.shape == (3, 3) and sorted(res.snapshots) == [0, 3, 6]


# --- pieces --------------------------------------------------------------------------------------

def test_plans():
    conv, toy = conv_net(), ToyNet()
    img, flat = torch.zeros(2, 1, 28, 28), torch.zeros(2, 2)
    assert fastpath.make_plan("off", "fp32", conv, img, 5) == fastpath.Plan("plain")
    assert fastpath.make_plan("auto", "fp32", conv, img, 5) == fastpath.Plan("eager", True)
    assert fastpath.make_plan("auto", "fp32", toy, flat, 5) == fastpath.Plan("eager", False)
    assert fastpath.make_plan("auto", "bf16", toy, flat, 5).autocast is torch.bfloat16
    unknown = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Flatten(), nn.LazyLinear(1))
    assert not fastpath.make_plan("auto", "fp32", unknown, img, 5).channels_last  # might .view: not known safe
    unknown.channels_last_safe = True
    assert fastpath.make_plan("compile", "fp32", unknown, img, 5) == fastpath.Plan("compile", True)
    with pytest.raises(ValueError, match="sampler.fast"):
        fastpath.make_plan("fastest", "fp32", toy, flat, 5)
    with pytest.raises(ValueError, match="sampler.precision"):
        fastpath.make_plan("auto", "fp8", toy, flat, 5)


def test_chunk_size():
    small = 1000
    assert fastpath.chunk_size([100], small) == 50
    assert fastpath.chunk_size([150], small) == 50
    assert fastpath.chunk_size([30], small) == 30
    assert fastpath.chunk_size([101], small) == 1
    assert fastpath.chunk_size([10, 90, 900], small) == 10
    assert fastpath.chunk_size([100], fastpath.NOISE_BUDGET // 4) == 4  # the noise buffer stays in budget


def test_records_block_equals_per_step():
    torch.manual_seed(0)
    n, k, C, B = 23, 3, 5, 4
    infos = [{"energy": torch.randn(B), "grad_norm": torch.randn(B)} for _ in range(25)]
    a, b = Records(n, k, torch.zeros(B, 2), False), Records(n, k, torch.zeros(B, 2), False)
    for t in range(n):
        a.put(t, infos[t])
    for t0 in range(0, 25, C):  # blocks of C; the last block runs past n and must be cut
        block = {name: torch.stack([infos[t][name] for t in range(t0, t0 + C)]) for name in ("energy", "grad_norm")}
        if t0 + C <= n:
            b.put_block(t0, block)
        else:
            for t in range(t0, n):
                b.put(t, infos[t])
    assert all(torch.equal(a.out[name], b.out[name]) for name in a.out)


# --- CUDA ----------------------------------------------------------------------------------------

@pytest.fixture
def no_tf32():
    # fp32 equality needs true fp32 convolutions: cuDNN's default TF32 rounds to 10-bit mantissas.
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("name", KERNELS)
def test_cuda_graph_matches_plain(no_tf32, name):
    net = conv_net().cuda()
    x0 = torch.rand(5, 1, 28, 28, device="cuda") * 2 - 1
    cfg = cfg_for(name, n_steps=12, record_every=5)
    a = sample(net, dataclasses.replace(cfg, fast="off"), x0, torch.Generator("cuda").manual_seed(4),
               snapshot_steps=[4])
    b = sample(net, dataclasses.replace(cfg, fast="auto"), x0, torch.Generator("cuda").manual_seed(4),
               snapshot_steps=[4])
    assert b.path == "cuda_graph+channels_last"
    same_chain(a, b, exact=False)
    c = sample(net, dataclasses.replace(cfg, fast="cuda_graph"), x0, torch.Generator("cuda").manual_seed(4),
               snapshot_steps=[4])  # the cached graph, replayed
    same_chain(b, c, exact=True)


@pytest.mark.cuda
@cuda
def test_cuda_graph_sees_parameter_updates_and_moves(no_tf32):
    net = conv_net(sn=False).cuda()
    x0 = torch.rand(4, 1, 28, 28, device="cuda") * 2 - 1
    cfg = cfg_for("sgld", n_steps=10)

    def both():
        return [sample(net, dataclasses.replace(cfg, fast=f), x0, torch.Generator("cuda").manual_seed(0))
                for f in ("off", "cuda_graph")]

    same_chain(*both(), exact=False)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)  # in place, like an optimizer step: the graph reads the new values
    same_chain(*both(), exact=False)
    net.load_state_dict({k: v.clone() * 0.5 for k, v in net.state_dict().items()})  # copies in place too
    same_chain(*both(), exact=False)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.weight = nn.Parameter(m.weight.detach().clone() * 2)  # new tensors: the graph must be re-captured
    same_chain(*both(), exact=False)


@pytest.mark.cuda
@cuda
def test_cuda_graph_replay_does_not_sync():
    net = conv_net().cuda()
    x0 = torch.rand(4, 1, 28, 28, device="cuda") * 2 - 1
    cfg = cfg_for("mala", fast="cuda_graph", record_every=2)
    sample(net, cfg, x0, torch.Generator("cuda").manual_seed(0))  # captures (capture itself synchronises)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        res = sample(net, cfg, x0, torch.Generator("cuda").manual_seed(1), snapshot_steps=[3])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert res.path.startswith("cuda_graph") and res.energy.shape == (3, 4)


@pytest.mark.cuda
@cuda
def test_cuda_bf16_graph_close_to_fp32():
    net = conv_net(sn=False).cuda()
    x0 = torch.rand(8, 1, 28, 28, device="cuda") * 2 - 1
    a = sample(net, cfg_for("sgld", fast="off"), x0, torch.Generator("cuda").manual_seed(0))
    b = sample(net, cfg_for("sgld", fast="auto", precision="bf16"), x0, torch.Generator("cuda").manual_seed(0))
    assert b.path == "cuda_graph+channels_last+bf16" and b.x.dtype == torch.float32
    assert (a.x - b.x).abs().max() < 0.1 * (a.x - x0).abs().max()


@pytest.mark.cuda
@cuda
def test_cuda_graph_capture_failure_falls_back(monkeypatch):
    monkeypatch.setattr(fastpath, "_WARNED", set())

    class Branchy(nn.Module):  # a host read in forward cannot be captured
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x):
            e = self.lin(x).squeeze(1)
            return e * 2 if float(e.mean()) > 1e9 else e

    net = Branchy().cuda()
    x0 = torch.randn(8, 2, device="cuda")
    plain = sample(net, cfg_for("sgld", fast="off"), x0, torch.Generator("cuda").manual_seed(0))
    with pytest.warns(RuntimeWarning, match="capture failed"):
        got = sample(net, cfg_for("sgld", fast="cuda_graph"), x0, torch.Generator("cuda").manual_seed(0))
    assert got.path == "plain"
    same_chain(plain, got, exact=True)
