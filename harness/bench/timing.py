"""Timing: what every method costs next to one plain forward+backward and to activation patching.

Used by `circuit-bench bench` and by the pytest-benchmark suites in `benchmarks/` (one shared
definition of data, cases and clocks).

Models are the real configurations of `architectures.py` with random weights: how long a method
takes depends on shapes (layers, heads, widths, vocabulary, batch, positions, number of edges)
and on the number of passes it makes, never on the weights' values. (One exception, stated where
it shows: how many forwards ACDC makes depends on which edges it prunes, so with random weights
its count is not that of a trained model; capped runs extrapolate to the upper bound, every edge
evaluated once.)

Data (`random_task_data`): random token batches [batch, seq_len] for clean and corrupted prompts,
scored at the last position; random correct / wrong answer tokens there and a logit-difference
metric (numerical outputs, tracr-xproportion: squared distance to the clean output).

Clocks (`Clock`):
- CUDA: a warm-up run first; then per measurement `torch.cuda.synchronize()`,
  `reset_peak_memory_stats()`, CUDA events around the call, `synchronize()` again.
  peak_mem_mb = `torch.cuda.max_memory_allocated()` during the call (absolute: it includes the
  weights and anything already allocated, not only what the method adds).
- CPU: `time.perf_counter()` around the call. peak_mem_mb is the process's peak resident set
  size in MB: reset before each call through /proc/self/clear_refs (Linux >= 4.0) and read from
  VmHWM afterwards, so it is the peak *during that call* (mem_kind "cpu-peak-rss-during-call");
  where the reset is not allowed it falls back to `resource.getrusage().ru_maxrss`, the process's
  peak RSS so far (mem_kind "cpu-peak-rss-process-so-far", monotonic over the run). Either way it
  counts the whole process (interpreter, torch, weights, allocator caches), not one tensor set.
  `threads` records `torch.get_num_threads()`, `loadavg_1m` the 1-minute load average (other
  processes on a shared machine slow every figure; ratios measured in one run suffer less).
Every row carries device, dtype, batch, seq_len, torch version, threads and repeats.

Warm-up: every case runs once unmeasured before the measured rounds, except, on CPU, the looping
cases below (nothing to compile or autotune there, and one patched chunk of GPT-2 takes minutes).
Measured rounds are interleaved round-robin over the cases, so a change of load on a shared
machine hits the floor and the methods alike; `seconds` is the median over rounds.

Methods that loop over units (activation patching of nodes / edges, ACDC) run under a budget of
patched forwards and seconds; the engine here counts and time-stamps every forward, so when a run
is cut short (or, for one-edge-per-forward patching, run on a sample of edges) its seconds are
extrapolated from the measured part: setup (the unpatched reference forwards) + measured work x
units_total / units_done, with `extrapolated` = True and units_done / units_total in the row.

A case whose known large allocation would not fit (grad-wrong's weight-edge sites on GPT-2 build
a [n_senders, d_model, d_vocab] tensor, ~24 GB in float32) is skipped, and a case that raises is
recorded, with `status` and `note` saying so; the other cases still run.

`eap_breakdown` profiles all-edge EAP phase by phase next to its floor, so a missed target says
where the time goes. (Its first use found `attribution.contract` spending 85% of its time copying
the sender block inside einsum, 41-50% of EAP's floor on GPT-2; contract now reads the senders in
place, one matrix product per receiver group.)
"""
from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from harness.core.architectures import ARCHITECTURES
from harness.core.engine import Engine
from harness.tasks.base import TaskData, masked_mean

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
GRAD_WRONG_TARGET = "logit-diff-mse"
GRAD_WRONG_SITES = ("activation", "activation-corrupted", "weight-node", "weight-edge", "weight-edge-taylor")
GRADIENT_METHODS = ("eap", "grad-wrong", "eap-ig")
EAP_TARGET = 1.15  # all-edge EAP seconds <= 1.15 x (one forward+backward + one no-grad forward)
BATCHING_TARGET = 10.0  # batched act-patch-edge >= 10x faster than one edge per forward

COLUMNS = [
    "model", "method", "variant", "device", "dtype", "batch", "seq_len", "seconds", "peak_mem_mb",
    "ratio_to_fwd_bwd", "speedup_vs_act_patch", "speedup_vs_single_edge", "extrapolated", "units_done",
    "units_total", "measured_seconds", "seconds_min", "seconds_max", "forwards", "patched_forwards", "rows",
    "repeats", "threads", "torch", "mem_kind", "loadavg_1m", "n_edges", "device_name", "source", "status", "note",
    "measured_at",
]


# ----- data ---------------------------------------------------------------------------------
def random_task_data(cfg, batch: int, seq_len: int, seed: int = 0, device="cpu") -> TaskData:
    """Random clean / corrupted tokens [batch, seq_len], scored at the last position.

    Categorical outputs: a random correct and a random (different) wrong answer token; metric =
    -(correct - wrong logit) (ACDC's sign: lower is better). One numerical output (vocab_out 1):
    metric = squared distance of the output to the clean model's, as ACDC's tracr-xproportion.
    """
    if seq_len > cfg.n_ctx:
        raise ValueError(f"seq_len {seq_len} exceeds {cfg.name}'s n_ctx {cfg.n_ctx}")
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, cfg.d_vocab, (batch, seq_len), generator=g)
    corrupted = torch.randint(0, cfg.d_vocab, (batch, seq_len), generator=g)
    pos_mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    pos_mask[:, -1] = True
    V = cfg.vocab_out
    info = {"source": "random tokens (harness.timing)", "seed": seed}
    if V == 1:
        def metric(logits, clean_logits):
            return masked_mean((logits[..., 0] - clean_logits[..., 0]).pow(2), pos_mask)

        d = TaskData(clean=clean, corrupted=corrupted, pos_mask=pos_mask, metric=metric, categorical=False,
                     metric_name="l2", info=info)
    else:
        correct = torch.randint(0, V, (batch, seq_len), generator=g)
        wrong = (correct + torch.randint(1, V, (batch, seq_len), generator=g)) % V
        counterfactual = torch.randint(0, V, (batch, seq_len), generator=g)
        holder: dict = {}

        def metric(logits, clean_logits):
            return -holder["d"].answer_logit_diff(logits)

        d = TaskData(clean=clean, corrupted=corrupted, pos_mask=pos_mask, metric=metric, categorical=True,
                     correct=correct, wrong=wrong.unsqueeze(-1), counterfactual=counterfactual,
                     metric_name="logit-diff", info=info)
        holder["d"] = d
    if device is not None and torch.device(device).type != "cpu":
        d.clean, d.corrupted = d.clean.to(device), d.corrupted.to(device)
    return d


# ----- clocks -------------------------------------------------------------------------------
def _rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm_mb() -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _ru_maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if platform.system() != "Darwin" else r / 2**20  # KB on Linux, bytes on macOS


class Clock:
    """Wall-clock time of a call and its peak memory, honest on both devices (module docstring)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._t0: Any = None
        self._rss_ok = False
        self.mem_kind = "cuda-max-allocated" if self.cuda else "cpu-peak-rss-during-call"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._t0 = torch.cuda.Event(enable_timing=True)
            self._t0.record()
        else:
            self._rss_ok = _rss_reset()
            self.mem_kind = "cpu-peak-rss-during-call" if self._rss_ok else "cpu-peak-rss-process-so-far"
            self._t0 = time.perf_counter()

    def mark(self):
        """A time stamp, resolved with `elapsed` after `stop` (a recorded event on CUDA)."""
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def stop(self):
        """(end mark, peak_mem_mb); synchronises on CUDA so every mark can be read."""
        end = self.mark()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            hwm = _vm_hwm_mb() if self._rss_ok else None
            peak = hwm if hwm is not None else _ru_maxrss_mb()
        return end, peak

    def elapsed(self, mark) -> float:
        if self.cuda:
            return self._t0.elapsed_time(mark) / 1000.0
        return mark - self._t0

    def threads(self) -> int:
        return torch.get_num_threads()

    def device_name(self) -> str:
        if self.cuda:
            return torch.cuda.get_device_name(self.device)
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cpus)"
        except OSError:
            pass
        return platform.processor() or "cpu"


# ----- a counting engine --------------------------------------------------------------------
class BudgetReached(Exception):
    """Raised by `CountingEngine` at a patched forward once its budget is spent."""


class CountingEngine(Engine):
    """The engine, counting and time-stamping its forwards; can stop a run at a budget.

    Every method reaches the model through `run` (`logits` and `cache` call it), so `forwards`
    counts all passes, `patched` those with an edge mask and `rows` the batch rows processed.
    (grad-wrong's weight sites build a second engine on a copy of the weights; its forward is
    not counted.)"""

    def __init__(self, weights, graph=None, clock: Optional[Clock] = None):
        super().__init__(weights, graph)
        self.clock = clock or Clock(weights.device)
        self.arm()

    def arm(self, max_patched: Optional[int] = None, deadline: Optional[float] = None) -> None:
        """Reset the counters; stop at the next patched forward once `max_patched` patched forwards
        ran or `time.perf_counter()` passed `deadline` (at least one patched forward always runs)."""
        self.forwards = self.patched = self.rows = 0
        self.marks: list = []  # (patched?, mark) after every forward
        self.max_patched, self.deadline = max_patched, deadline
        self.stopped = None

    def run(self, tokens, mask=None, corrupted=None, **kw):
        if mask is not None and self.patched >= 1:
            if self.max_patched is not None and self.patched >= self.max_patched:
                self.stopped = self.clock.mark()
                raise BudgetReached(f"{self.patched} patched forwards")
            if self.deadline is not None and time.perf_counter() > self.deadline:
                self.stopped = self.clock.mark()
                raise BudgetReached("time budget")
        tr = super().run(tokens, mask, corrupted, **kw)
        self.forwards += 1
        self.rows += int(tokens.shape[0])
        if mask is not None:
            self.patched += 1
        self.marks.append((mask is not None, self.clock.mark()))
        return tr


# ----- setups and cases ---------------------------------------------------------------------
@dataclass
class Setup:
    model: str
    device: torch.device
    dtype: torch.dtype
    batch: int
    seq_len: int
    engine: CountingEngine
    data: TaskData
    clock: Clock

    @property
    def graph(self):
        return self.engine.graph

    @property
    def chunk(self) -> int:
        """Units per batched forward at the patching methods' default max_rows (256)."""
        return max(1, 256 // self.batch)


_WEIGHTS: dict = {}


def make_setup(model: str, batch: int, seq_len: int, device="cpu", dtype="float32", seed: int = 0) -> Setup:
    """Random weights of `model`'s real configuration, a counting engine and random data.
    seq_len is clipped to the model's context (tracr models: 6)."""
    if model not in ARCHITECTURES:
        raise KeyError(f"unknown model {model!r}; known: {', '.join(ARCHITECTURES)}")
    from harness.core.weights import random_weights

    cfg = ARCHITECTURES[model]
    dev = torch.device(device)
    dt = DTYPES[dtype] if isinstance(dtype, str) else dtype
    key = (model, seed, str(dev), str(dt))
    if key not in _WEIGHTS:
        _WEIGHTS.clear()  # keep one model in memory (GPT-2's random init is ~500 MB)
        _WEIGHTS[key] = random_weights(cfg, seed=seed).to(dev, dt)
    clock = Clock(dev)
    eng = CountingEngine(_WEIGHTS[key], clock=clock)
    P = min(seq_len, cfg.n_ctx)
    return Setup(model, dev, dt, batch, P, eng, random_task_data(cfg, batch, P, seed, dev), clock)


def _objective(logits, data):
    return data.answer_logit_diff(logits).mean()


def plain_forward(s: Setup):
    with torch.no_grad():
        return s.engine.run(s.data.clean).logits


def forward_backward(s: Setup):
    """One forward with autograd and one backward to the input embeddings: gradients at every
    activation (what attribution needs), no weight gradients. The cost floor of EAP's backward."""
    emb = s.engine.input_embeddings(s.data.clean).detach().requires_grad_(True)
    out = s.engine.run(s.data.clean, input_embeds=emb).logits
    return torch.autograd.grad(_objective(out, s.data), emb)[0]


def forward_backward_weights(s: Setup):
    """One forward and one backward to every weight (a training step's gradient work)."""
    from harness.methods.weight_sites import weight_grads

    return weight_grads(s.engine, s.data.clean, lambda lg: _objective(lg, s.data))


@dataclass(frozen=True)
class Case:
    """One timed row. `run(setup)` runs it once. Looping cases (`units`) run under the budget:
    `units(setup)` is the number of patched forwards a full run makes (`upper_bound`: at most)."""

    method: str
    variant: str
    run: Callable[[Setup], Any]
    units: Optional[Callable[[Setup], int]] = None
    upper_bound: bool = False
    sampled: bool = False  # runs on a sample of edges by design (one-edge-per-forward patching)
    source: str = "registry"
    mem_bytes: Optional[Callable[[Setup], int]] = None  # a known large allocation, checked before running

    @property
    def key(self) -> str:
        return f"{self.method}/{self.variant}"

    @property
    def gradient(self) -> bool:
        return self.method in GRADIENT_METHODS


def _registry(method: str, variant: str, **overrides):
    def run(s: Setup):
        from harness.methods import get_method

        return get_method(method).run(s.engine, s.data, variant, **overrides)

    return run


def weight_edge_bytes(s: Setup) -> int:
    """The largest tensor grad-wrong's weight-edge sites allocate: one receiver's per-sender
    shares of dL/dW, [n_upstream, d_model, e] (e = d_head, d_mlp or d_vocab_out for the output,
    whose receiver reads every sender), twice (the einsum and, for -taylor, shares * W)."""
    cfg, g = s.engine.cfg, s.graph
    item = torch.finfo(s.dtype).bits // 8
    out = len(g.senders) * cfg.d_model * cfg.vocab_out
    mlp = 0 if cfg.attn_only else max(g.receivers[int(r)].n_upstream for r in g.mlp_receiver) * cfg.d_model * cfg.d_mlp
    return 2 * item * max(out, mlp)


def patching_bytes(s: Setup) -> int:
    """Rough peak of batched patching (act-patch-node/-edge, chunks of up to 256 rows): about 8x
    the tiled corrupted sender cache [n_senders, rows, pos, d_model] (measured on GPT-2: the cache,
    the stacked current senders, their difference and the per-group patch terms)."""
    rows = min(s.chunk, s.graph.n_edges) * s.batch
    return 8 * len(s.graph.senders) * rows * s.seq_len * s.engine.cfg.d_model * (torch.finfo(s.dtype).bits // 8)


def memory_limit_bytes(device) -> Optional[int]:
    """What a single case may allocate before it is skipped: half the available RAM on CPU
    (/proc/meminfo MemAvailable; others share the machine), 80% of free GPU memory on CUDA."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free * 0.8)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return None


def edge_sample(n_edges: int, k: int) -> torch.Tensor:
    """k edge ids spread evenly over the graph (every receiver type appears)."""
    k = max(1, min(k, n_edges))
    return torch.linspace(0, n_edges - 1, k).round().long().unique()


def cases(ig_steps: int = 5, single_edges: int = 100, acdc_threshold: float = 1e-3) -> list:
    """Every timed row, cheapest first."""
    out = [
        Case("forward", "no-grad", plain_forward, source="engine"),
        Case("forward-backward", "activations", forward_backward, source="engine"),
        Case("forward-backward", "weights", forward_backward_weights, source="engine"),
        Case("eap", "noising", _registry("eap", "noising")),
        Case("eap", "denoising", _registry("eap", "denoising")),
    ]
    out += [Case("grad-wrong", f"{GRAD_WRONG_TARGET}/{site}", _registry("grad-wrong", f"{GRAD_WRONG_TARGET}/{site}"),
                 mem_bytes=weight_edge_bytes if site.startswith("weight-edge") else None)
            for site in GRAD_WRONG_SITES]
    out.append(Case("eap-ig", f"inputs-{ig_steps}", _registry("eap-ig", "inputs-5", steps=ig_steps)))
    out += [
        Case("act-patch-node", "metric", _registry("act-patch-node", "metric"),
             units=lambda s: math.ceil((len(s.graph.senders) + s.graph.n_direct) / s.chunk), mem_bytes=patching_bytes),
        Case("act-patch-edge", "batched", _registry("act-patch-edge", "batched"),
             units=lambda s: math.ceil(s.graph.n_edges / s.chunk), mem_bytes=patching_bytes),
        Case("act-patch-edge", "single",
             lambda s: _registry("act-patch-edge", "single", edges=edge_sample(s.graph.n_edges, single_edges))(s),
             units=lambda s: s.graph.n_edges, sampled=True),
        Case("acdc", f"tau={acdc_threshold:g}", _registry("acdc", "sweep", thresholds=[acdc_threshold]),
             units=lambda s: s.graph.n_edges + 1, upper_bound=True),
    ]
    return out


# ----- measuring ----------------------------------------------------------------------------
@dataclass
class Sample:
    """One measured run of one case."""

    seconds: float  # the estimate for a full run (== measured unless extrapolated)
    measured: float
    peak_mem_mb: float
    forwards: int
    patched: int
    rows: int
    extrapolated: bool
    units_done: Optional[int]
    units_total: Optional[int]
    setup_seconds: float = 0.0
    loadavg: float = float("nan")


def measure(s: Setup, case: Case, budget_s: Optional[float] = None, max_patched: Optional[int] = None) -> Sample:
    """Run `case` once on `s` and time it (see the module docstring for what is measured)."""
    eng, clk = s.engine, s.clock
    looping = case.units is not None
    eng.arm(max_patched if looping else None, (time.perf_counter() + budget_s) if (looping and budget_s) else None)
    stopped = False
    clk.start()
    try:
        case.run(s)
    except BudgetReached:
        stopped = True
    end, peak = clk.stop()
    measured = clk.elapsed(eng.stopped if stopped else end)
    la = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    sample = Sample(measured, measured, peak, eng.forwards, eng.patched, eng.rows, False, None, None, loadavg=la)
    if not looping:
        return sample
    total = case.units(s)
    done = eng.patched
    # setup: everything up to the last unpatched forward before the first patched one
    setup = 0.0
    for patched, m in eng.marks:
        if patched:
            break
        setup = clk.elapsed(m)
    sample.setup_seconds = setup
    sample.units_done = done
    if stopped or (case.sampled and done < total):
        sample.extrapolated = True
        sample.units_total = total
        sample.seconds = setup + (measured - setup) * total / max(done, 1)
    else:
        sample.units_total = done  # a full run: its real count (ACDC: below the upper bound)
    return sample


@dataclass
class BenchConfig:
    models: list = field(default_factory=lambda: list(ARCHITECTURES))
    device: str = "cpu"
    dtype: str = "float32"
    batches: list = field(default_factory=lambda: [8])
    seq_len: int = 16
    repeats: int = 3  # measured runs of each cheap case (interleaved round-robin)
    heavy_repeats: int = 1  # measured runs of each looping case
    warmup: int = 1
    ig_steps: int = 5
    single_edges: int = 100
    acdc_threshold: float = 1e-3
    budget_s: Optional[float] = 120.0  # seconds per looping measurement before extrapolating
    max_patched: Optional[int] = None  # patched forwards per looping measurement before extrapolating
    threads: Optional[int] = None
    seed: int = 0
    methods: Optional[list] = None  # case keys or method names to keep (None: all)
    progress: bool = True
    fresh: bool = False  # discard OUT's earlier timing rows (default: keep other setups' rows)

    @classmethod
    def quick(cls, **kw) -> "BenchConfig":
        """Smallest useful run: CI proof that everything times and writes."""
        base = dict(models=["tracr-xproportion"], batches=[2], seq_len=6, repeats=1, heavy_repeats=1, warmup=1,
                    ig_steps=2, single_edges=8, budget_s=20.0)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)

    def case_list(self) -> list:
        cs = cases(self.ig_steps, self.single_edges, self.acdc_threshold)
        if self.methods:
            keep = set(self.methods)
            cs = [c for c in cs if c.key in keep or c.method in keep or c.method.startswith("forward")]
        return cs


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device (use --device cpu)")
    return dev


def _row(s: Setup, case: Case, samples: Optional[list]) -> dict:
    base = {"model": s.model, "method": case.method, "variant": case.variant, "device": s.device.type,
            "dtype": str(s.dtype).replace("torch.", ""), "batch": s.batch, "seq_len": s.seq_len,
            "threads": s.clock.threads(), "torch": torch.__version__, "mem_kind": s.clock.mem_kind,
            "n_edges": s.graph.n_edges, "device_name": s.clock.device_name(), "source": case.source,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if not samples:
        return {**base, "seconds": float("nan"), "extrapolated": False, "repeats": 0}
    est = [x.seconds for x in samples]
    meas = [x.measured for x in samples]
    last = samples[-1]
    note = ""
    if last.extrapolated:
        if case.sampled:
            note = f"one edge per forward on {last.units_done} of {last.units_total} edges, scaled to all edges"
        elif case.upper_bound:
            note = (f"stopped after {last.units_done} patched forwards; scaled to the upper bound "
                    f"{last.units_total} (every edge evaluated once)")
        else:
            note = f"stopped after {last.units_done} of {last.units_total} patched forwards, scaled to all"
    elif case.method == "acdc":
        note = f"full run: {last.units_done} patched forwards (random weights: a trained model prunes differently)"
    return {
        **base, "seconds": statistics.median(est), "peak_mem_mb": max(x.peak_mem_mb for x in samples),
        "extrapolated": bool(last.extrapolated), "units_done": last.units_done, "units_total": last.units_total,
        "measured_seconds": statistics.median(meas), "seconds_min": min(est), "seconds_max": max(est),
        "forwards": last.forwards, "patched_forwards": last.patched, "rows": last.rows, "repeats": len(samples),
        "loadavg_1m": round(statistics.median(x.loadavg for x in samples), 2), "note": note,
    }


def _log(cfg: BenchConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, flush=True)


def bench_setup(cfg: BenchConfig, s: Setup, case_list=None) -> list:
    """Measure every case on one setup: warm-up, then round-robin repeats (cheap cases interleaved
    so that load changes on a shared machine hit the floor and the methods alike). Rows as dicts.
    A case whose known large allocation exceeds `memory_limit_bytes` is skipped, and one that
    raises is recorded as an error (status column); neither stops the others."""
    case_list = case_list or cfg.case_list()
    samples: dict = {c.key: [] for c in case_list}
    status: dict = {}
    limit = memory_limit_bytes(s.device)
    for c in case_list:
        need = c.mem_bytes(s) if c.mem_bytes else 0
        if limit is not None and need > limit:
            status[c.key] = ("skipped", f"needs ~{need / 2**30:.1f} GiB in one tensor (limit {limit / 2**30:.1f} GiB)")
            _log(cfg, f"  {s.model} b={s.batch} p={s.seq_len} {c.key:<45} skipped: {status[c.key][1]}")
    run = [c for c in case_list if c.key not in status]

    def attempt(c, *args):
        try:
            return measure(s, c, *args)
        except (RuntimeError, MemoryError) as e:  # e.g. out of memory: record it, go on
            status[c.key] = ("error", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            _log(cfg, f"  {s.model} b={s.batch} p={s.seq_len} {c.key:<45} error: {status[c.key][1]}")
            if s.clock.cuda:
                torch.cuda.empty_cache()
            return None

    for c in run:
        if c.units and not s.clock.cuda:
            continue  # CPU: nothing to compile or autotune; a patched chunk can take minutes
        for _ in range(cfg.warmup):
            if c.key not in status:
                attempt(c, None, 1 if c.units else None)  # looping cases warm up on one patched forward
    rounds = max(cfg.repeats, cfg.heavy_repeats)
    for r in range(rounds):
        for c in run:
            if c.key in status or r >= (cfg.heavy_repeats if c.units else cfg.repeats):
                continue
            x = attempt(c, cfg.budget_s, cfg.max_patched)
            if x is None:
                continue
            samples[c.key].append(x)
            _log(cfg, f"  {s.model} b={s.batch} p={s.seq_len} {c.key:<45} {x.seconds:9.4f} s"
                      + (f" (extrapolated from {x.measured:.3f} s, {x.units_done}/{x.units_total} units)" if x.extrapolated else ""))
    rows = []
    for c in case_list:
        if samples[c.key] and c.key not in status:
            rows.append({**_row(s, c, samples[c.key]), "status": "ok"})
        else:
            st, why = status.get(c.key, ("error", "no measurement"))
            rows.append({**_row(s, c, None), "status": st, "note": why})
    return rows


def add_ratios(df):
    """ratio_to_fwd_bwd, speedup_vs_act_patch (gradient methods: batched act-patch-edge seconds /
    seconds), speedup_vs_single_edge (one-edge-per-forward seconds / seconds), per setup."""
    import numpy as np

    df = df.copy()
    key = ["model", "device", "dtype", "batch", "seq_len"]
    for c in ("ratio_to_fwd_bwd", "speedup_vs_act_patch", "speedup_vs_single_edge"):
        df[c] = np.nan
    for _, idx in df.groupby(key).groups.items():
        g = df.loc[idx]

        def secs(method, variant):
            hit = g[(g["method"] == method) & (g["variant"] == variant)]
            return float(hit["seconds"].iloc[0]) if len(hit) else np.nan

        fb = secs("forward-backward", "activations")
        batched, single = secs("act-patch-edge", "batched"), secs("act-patch-edge", "single")
        df.loc[idx, "ratio_to_fwd_bwd"] = g["seconds"] / fb
        grad = g["method"].isin(GRADIENT_METHODS)
        df.loc[idx[grad.values], "speedup_vs_act_patch"] = batched / g.loc[grad, "seconds"]
        not_single = ~((g["method"] == "act-patch-edge") & (g["variant"] == "single")) & ~g["method"].str.startswith("forward")
        df.loc[idx[not_single.values], "speedup_vs_single_edge"] = single / g.loc[not_single, "seconds"]
    return df


# ----- targets ------------------------------------------------------------------------------
def eap_breakdown(s: Setup, repeats: int = 3) -> dict:
    """Where all-edge EAP (noising) spends its time, phase by phase (median seconds over
    `repeats`, after one warm-up), next to the parts of its floor measured in the same loop.

    The phases mirror `harness.methods.eap.eap` (noising): the corrupted cache forward (no grad,
    keeping sender outputs and q/k/v), the traced clean forward (autograd, keeping receiver
    inputs), the backward to every receiver input and q/k/v, `tr.cache()` and the activation
    difference, and `attribution.contract` into edge scores."""
    from harness.methods.attribution import contract, corrupted_cache, receiver_grads, traced_run
    from harness.methods.eap import objective_value

    eng, d, clk = s.engine, s.data, s.clock
    phases = ["cache_forward", "traced_forward", "backward", "stack_and_difference", "contract",
              "floor_no_grad_forward", "floor_forward", "floor_backward"]
    runs = []
    for _ in range(repeats + 1):  # the first one warms up
        eng.arm()
        clk.start()
        marks = []
        cache = corrupted_cache(eng, d)
        marks.append(clk.mark())
        tr = traced_run(eng, d.clean)
        marks.append(clk.mark())
        grads = receiver_grads(tr, objective_value("logit-diff", tr.logits, d, tr.logits.detach()))
        marks.append(clk.mark())
        here = tr.cache()
        ds, dq = cache.senders - here.senders, cache.qkv - here.qkv
        marks.append(clk.mark())
        contract(eng, grads, ds, dq).detach()
        marks.append(clk.mark())
        del tr, grads, here, cache, ds, dq
        plain_forward(s)
        marks.append(clk.mark())
        emb = eng.input_embeddings(d.clean).detach().requires_grad_(True)
        obj = _objective(eng.run(d.clean, input_embeds=emb).logits, d)
        marks.append(clk.mark())
        torch.autograd.grad(obj, emb)
        end, _ = clk.stop()
        t = [0.0] + [clk.elapsed(m) for m in marks] + [clk.elapsed(end)]
        runs.append([b - a for a, b in zip(t, t[1:])])
    runs = runs[1:]
    return {p: statistics.median(r[i] for r in runs) for i, p in enumerate(phases)}


def target_summary(df, breakdowns: Optional[dict] = None) -> tuple:
    """(rows for timing_targets.csv, the paragraph for timing_targets.md)."""
    import numpy as np

    breakdowns = breakdowns or {}
    rows, parts = [], []
    for k, g in df.groupby(SETUP_KEY, sort=False):
        model, device, dtype, batch, P = k

        def get(method, variant, col="seconds"):
            hit = g[(g["method"] == method) & (g["variant"] == variant)]
            return hit[col].iloc[0] if len(hit) else np.nan

        fwd, fb = get("forward", "no-grad"), get("forward-backward", "activations")
        floor = fwd + fb
        eap, batched, single = get("eap", "noising"), get("act-patch-edge", "batched"), get("act-patch-edge", "single")
        r_eap, speed = eap / floor, single / batched
        row = {"model": model, "device": device, "dtype": dtype, "batch": batch, "seq_len": P,
               "floor_seconds": floor, "eap_seconds": eap, "eap_over_floor": r_eap,
               "eap_target": EAP_TARGET, "eap_target_met": bool(r_eap <= EAP_TARGET),
               "batched_seconds": batched, "single_seconds": single, "batched_speedup": speed,
               "batching_target": BATCHING_TARGET, "batching_target_met": bool(speed >= BATCHING_TARGET),
               "loadavg_1m": float(g["loadavg_1m"].median())}
        rows.append(row)
        where = f"{model} ({device}, {dtype}, batch {batch}, seq_len {P}, {int(g['n_edges'].iloc[0])} edges, load {row['loadavg_1m']:.1f})"
        txt = [f"**{where}.** Floor = one forward+backward ({fb:.4g} s) + one no-grad forward ({fwd:.4g} s) = {floor:.4g} s."]
        if not np.isnan(r_eap):
            fw = get("eap", "noising", "forwards")
            verdict = (f"target <= {EAP_TARGET}x met" if r_eap <= EAP_TARGET else
                       f"target <= {EAP_TARGET}x MISSED by {(r_eap / EAP_TARGET - 1) * 100:.1f}% "
                       f"({r_eap - 1:.0%} over the floor instead of at most 15%)")
            reps = int(get("eap", "noising", "repeats"))
            txt.append(f"All-edge EAP (noising, registry) {eap:.4g} s = {r_eap:.2f}x the floor ({int(fw)} forwards + 1 "
                       f"backward; medians of {reps} interleaved rounds): {verdict}.")
        bd = breakdowns.get(k)
        if bd:
            b = bd
            over = {"caching senders in the no-grad forward": b["cache_forward"] - b["floor_no_grad_forward"],
                    "keeping receiver inputs and their gradients": b["traced_forward"] + b["backward"]
                    - b["floor_forward"] - b["floor_backward"],
                    "stacking the traced outputs and the difference": b["stack_and_difference"],
                    "contract() into edge scores": b["contract"]}
            bfloor = b["floor_no_grad_forward"] + b["floor_forward"] + b["floor_backward"]
            txt.append(
                "Profile (one loop, medians over its repeats): "
                + "; ".join(f"{p.replace('_', ' ')} {v:.3g} s" for p, v in b.items())
                + f". Over this loop's floor ({bfloor:.3g} s): "
                + ", ".join(f"{p} {v:+.3g} s ({v / bfloor:+.0%})" for p, v in over.items()) + ".")
            implied = (b["cache_forward"] + b["traced_forward"] + b["backward"] + b["stack_and_difference"]
                       + b["contract"]) / bfloor
            txt.append(f"EAP over the floor in this loop: {implied:.2f}x.")
            if r_eap > EAP_TARGET:
                worst = max(over, key=over.get)
                txt.append(f"Largest cost over the floor: {worst} ({over[worst] / bfloor:+.0%}).")
        if r_eap > EAP_TARGET and floor < 0.05:
            txt.append(f"At this size a whole pass takes {floor * 1e3:.2g} ms, so fixed per-operation cost (Python and "
                       "dispatch: the contraction issues a few small operations per receiver group, `keep` stacks every "
                       "layer's q/k/v) weighs as much as arithmetic; the 15% bookkeeping target is about models whose "
                       "passes do real work.")
        extra = g[(g["method"] == "act-patch-edge") & (g["extrapolated"].astype(bool))]
        ex = (" (" + ", ".join(f"{r.variant} extrapolated from {int(r.units_done)} of {int(r.units_total)} forwards"
                               for r in extra.itertuples()) + ")") if len(extra) else ""
        E = int(g["n_edges"].iloc[0])
        if np.isnan(speed):
            pass
        elif speed >= BATCHING_TARGET:
            txt.append(f"Batched act-patch-edge {batched:.4g} s vs one edge per forward {single:.4g} s{ex}: {speed:.1f}x "
                       f"faster, target >= {BATCHING_TARGET:g}x met.")
        else:
            if device == "cpu" and speed > 1:
                why = ("batching pays only by saving per-call Python and dispatch overhead, which is what a pass of "
                       "a model this small mostly is; a CPU has no idle parallelism for more rows to fill, and each "
                       "example row still costs its own arithmetic")
            elif device == "cpu":
                why = ("a CPU has no idle parallelism for batching to fill: the patched forward's cost is per example "
                       "row (the same multiply-adds, the unembedding of every position to a full-vocabulary logit "
                       "row although the metric reads only the last one, and one [rows, pos, n_senders, d_model] "
                       "difference per receiver group), so folding edges into rows saves only per-call overhead, "
                       "and the tiled corrupted cache (a copy of every sender output per edge in the chunk) and "
                       "the larger intermediates fall out of cache: a batched row is slower than a single one")
            else:
                why = ("at this size the batched forwards are compute- or memory-bound, so folding edges into rows "
                       "saves little besides launch overhead")
            txt.append(f"Batched act-patch-edge {batched:.4g} s vs one edge per forward {single:.4g} s{ex}: {speed:.2f}x, "
                       f"target >= {BATCHING_TARGET:g}x MISSED by a factor {BATCHING_TARGET / speed:.1f}. Why: {why}. "
                       f"Per patched example row: batched {batched / (E * batch) * 1e3:.3g} ms, single "
                       f"{single / (E * batch) * 1e3:.3g} ms.")
        bad = g[g["status"].fillna("ok") != "ok"] if "status" in g else g.iloc[:0]
        if len(bad):
            txt.append("Not timed: " + "; ".join(f"{r.method}/{r.variant} ({r.status}: {r.note})" for r in bad.itertuples()) + ".")
        parts.append(" ".join(txt))
    head = (f"Targets (ratios measured in one run; the floor and the methods interleaved round-robin): all-edge EAP "
            f"costs at most {EAP_TARGET}x its floor, one plain forward+backward plus one no-grad forward of the same model "
            f"and batch; batched act-patch-edge is at least {BATCHING_TARGET:g}x faster than one edge per forward. "
            f"Models: random weights with the real configurations (timing does not depend on weight values).")
    return rows, "\n\n".join([head] + parts) + "\n"


def run_bench(cfg: BenchConfig, out) -> Path:
    """Measure every model x batch, write OUT/timing.csv, timing_targets.csv/.md and
    timing_breakdown.csv; returns the timing.csv path. Does not render the report. The torch
    thread count is restored afterwards."""
    dev = resolve_device(cfg.device)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_bench(cfg, out, dev)
    finally:
        torch.set_num_threads(threads)


def _run_bench(cfg: BenchConfig, out, dev) -> Path:
    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, bd_rows = [], []
    for model in cfg.models:
        for batch in cfg.batches:
            _log(cfg, f"{model}: batch {batch}, seq_len {min(cfg.seq_len, ARCHITECTURES[model].n_ctx)}, {dev}, {cfg.dtype}")
            s = make_setup(model, batch, cfg.seq_len, dev, cfg.dtype, cfg.seed)
            rows += bench_setup(cfg, s)
            bd = eap_breakdown(s, cfg.repeats)
            bd_rows += [{"model": model, "device": dev.type, "dtype": cfg.dtype, "batch": batch, "seq_len": s.seq_len,
                         "phase": p, "seconds": v} for p, v in bd.items()]
            pd.DataFrame(rows).to_csv(out / "timing.partial.csv", index=False)  # progress survives an interrupt
    df = add_ratios(_merge(out / "timing.csv", pd.DataFrame(rows), cfg.fresh, ["method", "variant"]))
    df = df[[c for c in COLUMNS if c in df.columns]]
    path = out / "timing.csv"
    df.to_csv(path, index=False)
    (out / "timing.partial.csv").unlink(missing_ok=True)
    bdf = _merge(out / "timing_breakdown.csv", pd.DataFrame(bd_rows), cfg.fresh, ["phase"])
    bdf.to_csv(out / "timing_breakdown.csv", index=False)
    breakdowns = {}
    for k, g in bdf.groupby(SETUP_KEY, sort=False):
        breakdowns[k] = dict(zip(g["phase"], g["seconds"]))
    trows, text = target_summary(df, breakdowns)
    pd.DataFrame(trows).to_csv(out / "timing_targets.csv", index=False)
    (out / "timing_targets.md").write_text(text)
    return path


SETUP_KEY = ["model", "device", "dtype", "batch", "seq_len"]


def _merge(path: Path, new, fresh: bool, key: Optional[list] = None):
    """`new` rows, plus the rows of `path` (if any, and not `fresh`) that `new` does not re-measure
    (same setup and the same `key` columns), so that runs of different models, sizes or methods
    accumulate in one directory."""
    import pandas as pd

    key = SETUP_KEY + (key or [])
    if fresh or not path.exists() or new.empty:
        return new.reset_index(drop=True)
    old = pd.read_csv(path)
    if not set(key) <= set(old.columns):
        return new.reset_index(drop=True)
    done = set(map(tuple, new[key].astype(str).values.tolist()))
    keep = ~old[key].astype(str).apply(tuple, axis=1).isin(done)
    return pd.concat([old[keep], new], ignore_index=True)


__all__ = [
    "BenchConfig", "Case", "Clock", "CountingEngine", "Setup", "add_ratios", "bench_setup", "cases", "eap_breakdown",
    "edge_sample", "make_setup", "measure", "random_task_data", "run_bench", "target_summary",
]
