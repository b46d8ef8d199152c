"""Measuring cases on one setup: warm-up, interleaved rounds, budgets, extrapolation, rows.

Warm-up: every case runs once unmeasured before the measured rounds, except, on CPU, the looping
cases (nothing to compile or autotune there, and one patched chunk of GPT-2 takes minutes).
Measured rounds are interleaved round-robin over the cases, so a change of load on a shared
machine hits the floor and the methods alike; `seconds` is the median over rounds.

Methods that loop over units (activation patching of nodes / edges, ACDC) run under a budget of
patched forwards and seconds; the counting engine time-stamps every forward, so when a run is cut
short (or, for one-edge-per-forward patching, run on a sample of edges) its seconds are
extrapolated from the measured part: setup (the unpatched reference forwards) + measured work x
units_total / units_done, with `extrapolated` = True and units_done / units_total in the row.

A case whose known large allocation would not fit (a method's `Timing.memory_bytes`: patching's
caches and rows, the weight-edge sites' sender blocks) is skipped, and a case that raises is
recorded, with `status` and `note` saying so; the other cases still run.

Every row carries device, dtype, batch, seq_len, torch version, threads (`torch.get_num_threads()`),
whether glibc keeps freed memory (`harness.core.allocator`, malloc_keeps_freed),
repeats and the 1-minute load average (other processes on a shared machine slow every figure;
ratios measured in one run suffer less).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Optional

import torch

from harness.bench.cases import Case
from harness.bench.counting import BudgetReached
from harness.bench.setups import Setup
from harness.core.allocator import freed_memory_kept


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


def _row(s: Setup, case: Case, samples: Optional[list]) -> dict:
    base = {"model": s.model, "method": case.method, "variant": case.variant, "device": s.device.type,
            "dtype": str(s.dtype).replace("torch.", ""), "batch": s.batch, "seq_len": s.seq_len,
            "threads": s.clock.threads(), "torch": torch.__version__, "malloc_keeps_freed": freed_memory_kept(),
            "mem_kind": s.clock.mem_kind,
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
    elif case.upper_bound:
        note = f"full run: {last.units_done} patched forwards (random weights: a trained model prunes differently)"
    return {
        **base, "seconds": statistics.median(est), "peak_mem_mb": max(x.peak_mem_mb for x in samples),
        "extrapolated": bool(last.extrapolated), "units_done": last.units_done, "units_total": last.units_total,
        "measured_seconds": statistics.median(meas), "seconds_min": min(est), "seconds_max": max(est),
        "forwards": last.forwards, "patched_forwards": last.patched, "rows": last.rows, "repeats": len(samples),
        "loadavg_1m": round(statistics.median(x.loadavg for x in samples), 2), "note": note,
    }


def log(cfg, msg: str) -> None:
    if cfg.progress:
        print(msg, flush=True)


def bench_setup(cfg, s: Setup, case_list=None) -> list:
    """Measure every case on one setup (`cfg`: a `BenchConfig`; `case_list`: default
    `cfg.case_list()`): warm-up, then round-robin repeats. Rows as dicts.
    A case whose known large allocation exceeds `memory_limit_bytes` is skipped, and one that
    raises is recorded as an error (status column); neither stops the others."""
    case_list = [c for c in (case_list or cfg.case_list()) if c.applies is None or c.applies(s)]
    samples: dict = {c.key: [] for c in case_list}
    status: dict = {}
    limit = memory_limit_bytes(s.device)
    for c in case_list:
        need = c.mem_bytes(s) if c.mem_bytes else 0
        if limit is not None and need > limit:
            status[c.key] = ("skipped", f"needs ~{need / 2**30:.1f} GiB in one tensor (limit {limit / 2**30:.1f} GiB)")
            log(cfg, f"  {s.model} b={s.batch} p={s.seq_len} {c.key:<45} skipped: {status[c.key][1]}")
    run = [c for c in case_list if c.key not in status]

    def attempt(c, *args):
        try:
            return measure(s, c, *args)
        except (RuntimeError, MemoryError) as e:  # e.g. out of memory: record it, go on
            status[c.key] = ("error", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            log(cfg, f"  {s.model} b={s.batch} p={s.seq_len} {c.key:<45} error: {status[c.key][1]}")
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
            log(cfg, f"  {s.model} b={s.batch} p={s.seq_len} {c.key:<45} {x.seconds:9.4f} s"
                     + (f" (extrapolated from {x.measured:.3f} s, {x.units_done}/{x.units_total} units)" if x.extrapolated else ""))
    rows = []
    for c in case_list:
        if samples[c.key] and c.key not in status:
            rows.append({**_row(s, c, samples[c.key]), "status": "ok"})
        else:
            st, why = status.get(c.key, ("error", "no measurement"))
            rows.append({**_row(s, c, None), "status": st, "note": why})
    return rows
