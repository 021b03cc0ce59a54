"""Fast paths of the chain loop (``sampler.fast``) and the energy network's precision (``sampler.precision``).

Every path runs the kernel's own ``transition`` with the same random numbers, drawn from the caller's
``torch.Generator`` in the same order as the plain loop, so every path computes the same chain; in fp32
they differ only by floating-point rounding (channels_last and compiled kernels sum in other orders).

``plain`` (``fast="off"``)
    The reference loop: one ``torch.randn`` per step, ``torch.autograd.grad`` for ∇ₓE.
``eager`` (``auto`` on CPU, and on CUDA where a graph does not apply)
    The plain loop plus random numbers drawn into buffers allocated once (``buf.normal_(generator=g)``
    gives exactly the numbers ``torch.randn`` would) and, for ebmlab's convolutional nets, the chains held
    in channels_last: oneDNN on CPU and cuDNN on GPU run NHWC convolutions without layout reorders.
    On a 2-core AVX-512 CPU this measured 1.1-1.5x on the anatomy VanillaNet (batch 100), 2.3x on the
    NonLocalNet, and no change on quick-mnist5k's small net (``benchmarks/sampler.py``).
``compile``
    ``torch.compile`` (inductor, ``fullgraph=True``) of one transition, with ∇ₓE written through
    ``torch.func.grad`` so forward and input-backward become one graph with fused pointwise code. Random
    numbers are drawn outside the graph (inductor's own RNG would give other numbers). On first use for a
    network, kernel and shape the compiled step is run once beside the eager step on the initial state
    with zero noise and must agree (relative 1e-3 in fp32); if compilation is unavailable, fails, or
    disagrees, a warning is issued once and the chain runs the plain path (nothing has been drawn from
    the generator yet, so the result is the plain path's exactly). Compiling costs tens of seconds on a
    CPU, which is why ``auto`` never compiles.
``cuda_graph`` (``auto`` on CUDA when the energy is an ``nn.Module``)
    C consecutive transitions captured once in a CUDA graph and replayed; kernel launches and Python
    overhead go away. Noise: the graph reads its noise from a static [C, ...] buffer that is refilled
    before each replay with C per-step ``normal_``/``uniform_`` calls on the caller's generator, in the
    plain loop's order. That gives exactly the plain loop's numbers with any ``torch.Generator`` and needs
    no RNG inside the graph (drawing inside the graph would need ``CUDAGraph.register_generator_state``
    for a custom generator, which recent torch has and torch>=2.1 does not). C is the largest divisor of the step count (and of the gaps between snapshot steps) that is
    at most 50 and keeps the noise buffer under 256 MiB. Graphs are cached per network, kernel, shape and
    dtype, and re-captured when a parameter or buffer of the network has moved (``data_ptr`` changed);
    in-place optimizer updates are seen by the graph. Parametrizations (spectral norm) are recomputed
    inside the graph rather than cached. Capture failures (host syncs or data-dependent control flow
    in the network) warn once and run the plain path.

``precision="bf16"``: the energy network runs under ``torch.autocast(bfloat16)`` (CPU and CUDA), its
gradient and the samples stay fp32; recorded energies are bf16-accurate. On CPUs without AVX512-BF16 or
AMX this is slower, not faster. ``precision="auto"`` takes bf16 where the hardware computes it natively
(:func:`native_bf16`: a CPU with AVX512-BF16 or AMX, a CUDA GPU of compute capability 8.0 or later) and
fp32 elsewhere, so the same config is fast on every machine; the price is that its chains are
bf16-rounded on some machines and not on others (:func:`resolve_precision` says which a run used).

Nothing inside the loop reads a tensor value on the host: records go into preallocated device tensors,
step counters and snapshot tests are Python ints (``tests/test_fast_path.py`` runs the loop under a
dispatch mode that fails on any device-to-host read).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import FAST_PATHS, PRECISIONS
from .kernels import ReferenceEnergy, energy_and_grad, functional_energy_and_grad, with_reference

MAX_CHUNK = 50  # steps per CUDA graph: enough to hide launch overhead, small enough to capture quickly
NOISE_BUDGET = 256 * 2**20  # bytes of pre-drawn noise a graph may hold
GRAPHS_PER_NET = 4  # captured graphs kept per network (each holds one step's activations)

_compile = torch.compile  # indirection so tests can simulate a failing compiler
_WARNED: set[str] = set()


def warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


# ---------------------------------------------------------------------------------------------
# choosing the path
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    path: str  # plain | eager | compile | cuda_graph
    channels_last: bool = False
    autocast: torch.dtype | None = None

    def label(self, path: str | None = None) -> str:
        out = path or self.path
        if self.channels_last and out != "plain":
            out += "+channels_last"
        if self.autocast is not None:
            out += "+bf16"
        return out


def split_energy(energy_fn):
    """(network or function, reference constant c): the fast paths compile and cache per network."""
    if isinstance(energy_fn, ReferenceEnergy):
        return energy_fn.net, energy_fn.c
    return energy_fn, 0.0


def prefers_channels_last(base) -> bool:
    """ebmlab's conv nets (all reshapes, no ``.view`` on activations) gain from NHWC on CPU and GPU.

    Other networks opt in with a ``channels_last_safe = True`` attribute: a ``.view`` on a channels_last
    activation fails, so it is never switched on for a network not known to be safe.
    """
    flag = getattr(base, "channels_last_safe", None)
    if flag is not None:
        return bool(flag)
    from ..nets import NonLocalNet, VanillaNet

    return isinstance(base, (VanillaNet, NonLocalNet))


@functools.cache  # asked once per chain; the hardware does not change
def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` ("cpu" or "cuda") computes bf16 matrix products in hardware."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
    if device_type != "cpu":
        return False
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(p is not None for p in probes):  # torch's own CPU feature probes (private, present since 2.1)
        return any(p() for p in probes if p is not None)
    try:  # pragma: no cover - older torch: read the CPU flags
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device_type: str) -> str:
    """The precision ``sampler.precision`` gives on ``device_type``: "fp32" or "bf16"."""
    if precision not in PRECISIONS:
        raise ValueError(f"sampler.precision: {precision!r} is not allowed; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device_type) else "fp32"
    return precision


def for_traces(cfg):
    """``cfg`` (a SamplerConfig) with ``precision="auto"`` made fp32, for tools that read energy traces.

    bf16 rounds the recorded energies to 8 significant bits (steps of 1 at |E| ~ 200), too coarse for the
    explorer's curves or a long run's ESS/R-hat; an explicit ``"bf16"`` is the user's choice and is kept.
    """
    return dataclasses.replace(cfg, precision="fp32") if cfg.precision == "auto" else cfg


def make_plan(fast: str, precision: str, energy_fn, x0: torch.Tensor, n_steps: int) -> Plan:
    """The path ``fast`` asks for, resolved for this device, network and input (deterministically, so the
    same seed on the same machine gives the same chain)."""
    if fast not in FAST_PATHS:
        raise ValueError(f"sampler.fast: {fast!r} is not allowed; choose one of {', '.join(FAST_PATHS)}")
    dev = x0.device.type
    precision = resolve_precision(precision, dev)
    autocast = None
    if precision == "bf16":
        if dev in ("cpu", "cuda"):
            autocast = torch.bfloat16
        else:
            warn_once(f"sampler.precision=bf16 is implemented for cpu and cuda, not {dev}; sampling in fp32")
    base, _ = split_energy(energy_fn)
    cl = x0.dim() == 4 and prefers_channels_last(base)
    if fast == "off" or n_steps <= 0:
        return Plan("plain", False, autocast)
    if fast == "auto":
        graph = dev == "cuda" and isinstance(base, nn.Module)
        return Plan("cuda_graph" if graph else "eager", cl, autocast)
    if fast == "cuda_graph" and dev != "cuda":
        warn_once(f"sampler.fast=cuda_graph needs the chains on a CUDA device (they are on {dev}); "
                  "running the plain path")
        return Plan("plain", False, autocast)
    return Plan(fast, cl, autocast)


def make_stepper(plan: Plan, kernel, energy_fn, segments: list[int]):
    if plan.path == "compile":
        return CompiledStepper(plan, kernel, energy_fn)
    if plan.path == "cuda_graph":
        return GraphStepper(plan, kernel, energy_fn, segments)
    if plan.path == "eager":
        return EagerStepper(plan, kernel, energy_fn)
    return PlainStepper(plan, kernel, energy_fn)


# ---------------------------------------------------------------------------------------------
# steppers: start(x) -> (x, state); advance(x, state, t0, L, records, generator) -> (x, state); finish(x)
# ---------------------------------------------------------------------------------------------

class PlainStepper:
    """The reference loop: draw, transition, record."""

    def __init__(self, plan: Plan, kernel, energy_fn):
        self.plan, self.kernel, self.energy_fn = plan, kernel, energy_fn
        self.path = plan.label("plain")

    def grad_fn(self, y):
        return energy_and_grad(self.energy_fn, y, self.plan.autocast)

    def start(self, x):
        return x, self.kernel.start(x, self.grad_fn)

    def advance(self, x, state, t0, L, rec, generator):
        k = self.kernel
        for t in range(t0, t0 + L):
            x, state, info = k.step(x, state, self.energy_fn, generator, grad_fn=self.grad_fn)
            rec.put(t, info)
        return x, state

    def finish(self, x):
        return x.contiguous()  # channels_last chains go back in the layout they came in


class EagerStepper(PlainStepper):
    """Random numbers into buffers allocated once; channels_last chains where the plan says so."""

    fallback: PlainStepper | None = None  # set when a compiled or captured step cannot be used

    def __init__(self, plan, kernel, energy_fn):
        super().__init__(plan, kernel, energy_fn)
        self.path = plan.label("eager")
        self.bufs: list[tuple[str, torch.Tensor]] = []

    def _fall_back(self, x):
        """Hand the chain to the plain loop; called before anything is drawn from the generator."""
        self.fallback = PlainStepper(self.plan, self.kernel, self.energy_fn)
        self.path = self.fallback.path
        return self.fallback.start(x.contiguous())

    def _layout(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.plan.channels_last else x

    def start(self, x):
        x = self._layout(x)
        # Buffers are contiguous in the logical order torch.randn fills, whatever the chains' layout.
        self.bufs = [(kind, torch.empty(shape, device=x.device, dtype=x.dtype))
                     for kind, shape in self.kernel.random_spec(x)]
        return x, self.kernel.start(x, self.grad_fn)

    def _draw(self, generator):
        for kind, buf in self.bufs:
            if kind == "normal":
                buf.normal_(generator=generator)
            else:
                buf.uniform_(generator=generator)
        return tuple(b for _, b in self.bufs)

    def _transition(self, x, state, rand):
        return self.kernel.step(x, state, self.energy_fn, rand=rand, grad_fn=self.grad_fn)

    def advance(self, x, state, t0, L, rec, generator):
        if self.fallback is not None:
            return self.fallback.advance(x, state, t0, L, rec, generator)
        for t in range(t0, t0 + L):
            x, state, info = self._transition(x, state, self._draw(generator))
            rec.put(t, info)
        return x, state


# ---------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------

_COMPILED: dict[tuple, object] = {}  # (kernel signature, autocast) -> compiled transition
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> {key: compiled step agrees}


def _compiled_transition(kernel, autocast):
    key = (kernel.signature(), autocast)
    fn = _COMPILED.get(key)
    if fn is None:
        def transition(base, c, x, state, rand):
            def grad_fn(y):
                return functional_energy_and_grad(lambda z: with_reference(base, c, z), y, autocast)

            return kernel.transition(x, state, grad_fn, rand)

        # Static shapes: a training run samples one shape, and static kernels are the fast ones.
        fn = _COMPILED[key] = _compile(transition, fullgraph=True, dynamic=False)
    return fn


def _agree(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, tol: float) -> bool:
    both_nan = torch.isnan(a) & torch.isnan(b)
    err = torch.where(both_nan, torch.zeros_like(a), a - b).abs().max()
    scale = (b - x).abs().nan_to_num(0.0).max() if b.shape == x.shape else b.abs().nan_to_num(0.0).max()
    return bool(err <= tol * scale + 1e-6 * (1.0 + x.abs().nan_to_num(0.0).max()))


class CompiledStepper(EagerStepper):
    def __init__(self, plan, kernel, energy_fn):
        super().__init__(plan, kernel, energy_fn)
        self.path = plan.label("compile")
        self.base, self.c = split_energy(energy_fn)
        self.fn = None

    def start(self, x):
        x, state = super().start(x)
        key = (self.kernel.signature(), self.plan.autocast, tuple(x.shape), x.dtype, str(x.device),
               self.plan.channels_last, getattr(self.base, "training", None))
        try:
            checked = _CHECKED.setdefault(self.base, {})
        except TypeError:  # not weak-referenceable: check on every call
            checked = {}
        ok = checked.get(key)
        if ok is None:
            ok = checked[key] = self._check(x, state)
        if not ok:
            return self._fall_back(x)
        return x, state

    def _check(self, x, state) -> bool:
        """Compile, run once beside the eager step with zero noise, and compare (no generator draws)."""
        rand = tuple(torch.zeros_like(b) for _, b in self.bufs)
        try:
            fn = _compiled_transition(self.kernel, self.plan.autocast)
            xc, _, ic = fn(self.base, self.c, x, state, rand)
        except Exception as e:  # noqa: BLE001 - any compiler failure means: run the plain path
            warn_once(f"sampler.fast=compile: torch.compile failed ({type(e).__name__}: {str(e)[:300]}); "
                      "running the plain path")
            return False
        xe, _, ie = self.kernel.transition(x, state, self.grad_fn, rand)
        tol = 5e-2 if self.plan.autocast is not None else 1e-3
        if not (_agree(xc, xe, x, tol) and _agree(ic["energy"], ie["energy"], x, tol)):
            warn_once("sampler.fast=compile: the compiled step disagrees with the eager step; running the plain path")
            return False
        return True

    def _transition(self, x, state, rand):
        if self.fn is None:
            self.fn = _compiled_transition(self.kernel, self.plan.autocast)
        return self.fn(self.base, self.c, x, state, rand)


# ---------------------------------------------------------------------------------------------
# CUDA graphs
# ---------------------------------------------------------------------------------------------

_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> OrderedDict[key -> runner]


def _addresses(base) -> tuple:
    """Where the network's tensors live: a captured graph reads these addresses on every replay."""
    if not isinstance(base, nn.Module):
        return ()
    return tuple(t.data_ptr() for t in list(base.parameters()) + list(base.buffers()))


def _on_device(device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _backend_flags() -> tuple:
    """Settings a capture bakes in (TF32, cuDNN algorithm choice): a graph captured under others is stale."""
    return (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled())


def chunk_size(segments: list[int], step_bytes: int) -> int:
    """Largest divisor of every segment length that is <= MAX_CHUNK and fits the noise budget."""
    g = 0
    for s in segments:
        g = math.gcd(g, s)
    if g == 0:
        return 1
    cap = max(1, min(MAX_CHUNK, NOISE_BUDGET // max(1, step_bytes)))
    return max(d for d in range(1, min(g, cap) + 1) if g % d == 0)


def _capture(warm_up, body, device):
    """Warm up on a side stream (cuDNN algorithm choice, lazy init; torch.cuda.graph requires it), then
    capture ``body()`` into a CUDA graph. Returns an object with ``replay()``; tests swap in a fake."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            warm_up()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph


class _GraphRunner:
    """C transitions captured in one CUDA graph, with static samples, state, noise and records."""

    def __init__(self, kernel, grad_fn, x, state, C, addresses):
        self.C, self.addresses = C, addresses
        self.kernel = kernel
        self.x = x.clone()  # keeps x's layout (channels_last or not)
        self.state = {k: v.clone() for k, v in state.items()}
        spec = kernel.random_spec(x)
        self.kinds = [kind for kind, _ in spec]
        self.rand = [torch.zeros((C, *shape), device=x.device, dtype=x.dtype) for _, shape in spec]
        self.info: dict = {}
        # grad_fn reaches the network: only the capture sees it, so a cached runner keeps no network alive.
        self.graph = _capture(lambda: self._warm_up(grad_fn), lambda: self._body(grad_fn), x.device)

    def _warm_up(self, grad_fn):
        self.kernel.transition(self.x, self.state, grad_fn, tuple(r[0] for r in self.rand))

    def _body(self, grad_fn):
        """C steps from the static samples/state with the static noise; results back into the statics."""
        xx, st, infos = self.x, self.state, []
        for j in range(self.C):
            xx, st, info = self.kernel.transition(xx, st, grad_fn, tuple(r[j] for r in self.rand))
            infos.append(info)
        self.info = {k: torch.stack([i[k] for i in infos]) for k in infos[0]}
        self.x.copy_(xx)
        for k, v in st.items():
            self.state[k].copy_(v)

    def load(self, x, state):
        self.x.copy_(x)
        for k, v in state.items():
            self.state[k].copy_(v)

    def fill(self, generator):
        """Draw C steps of noise in the plain loop's order: step by step, the kernel's draws in turn."""
        for j in range(self.C):
            for kind, r in zip(self.kinds, self.rand):
                if kind == "normal":
                    r[j].normal_(generator=generator)
                else:
                    r[j].uniform_(generator=generator)


class GraphStepper(EagerStepper):
    def __init__(self, plan, kernel, energy_fn, segments):
        super().__init__(plan, kernel, energy_fn)
        self.path = plan.label("cuda_graph")
        self.base, _ = split_energy(energy_fn)
        self.segments = segments
        self.runner = None

    def start(self, x):
        x = self._layout(x)
        state = self.kernel.start(x, self.grad_fn)
        spec = self.kernel.random_spec(x)
        step_bytes = sum(math.prod(shape) for _, shape in spec) * x.element_size()
        C = chunk_size(self.segments, step_bytes)
        key = (self.kernel.signature(), self.plan.autocast, tuple(x.shape), x.dtype, str(x.device),
               self.plan.channels_last, tuple((k, tuple(v.shape)) for k, v in state.items()), C,
               getattr(self.energy_fn, "c", 0.0), getattr(self.base, "training", None), _backend_flags())
        try:
            cache = _GRAPHS.setdefault(self.base, OrderedDict())
        except TypeError:  # not weak-referenceable: capture for this call only
            cache = OrderedDict()
        addresses = _addresses(self.base)
        runner = cache.get(key)
        if runner is False:  # capture failed before for this network and shape
            return self._fall_back(x)
        if runner is None or runner.addresses != addresses:
            try:
                with _on_device(x.device):
                    runner = _GraphRunner(self.kernel, self.grad_fn, x, state, C, addresses)
            except Exception as e:  # noqa: BLE001 - a network that cannot be captured runs the plain path
                cache[key] = False
                warn_once(f"sampler.fast=cuda_graph: capture failed ({type(e).__name__}: {str(e)[:300]}); "
                          "running the plain path")
                return self._fall_back(x)
            cache[key] = runner
        cache.move_to_end(key)
        while len(cache) > GRAPHS_PER_NET:
            cache.popitem(last=False)
        runner.load(x, state)
        self.runner = runner
        return runner.x, runner.state

    def advance(self, x, state, t0, L, rec, generator):
        if self.fallback is not None:
            return self.fallback.advance(x, state, t0, L, rec, generator)
        r = self.runner
        assert L % r.C == 0, "chunk_size divides every segment"
        with _on_device(r.x.device):
            for c in range(L // r.C):
                r.fill(generator)
                r.graph.replay()
                rec.put_block(t0 + c * r.C, r.info)
        return r.x, r.state

    def finish(self, x):
        if self.fallback is not None:
            return self.fallback.finish(x)
        return x.clone(memory_format=torch.contiguous_format)  # the static buffer is reused by the next call
