"""pytest-benchmark suites: one file per model architecture, parametrised by batch size.

Run all:            python -m pytest benchmarks
CI proof (quick):   python -m pytest benchmarks -m quick --benchmark-disable -q
GPU:                CIRCUIT_BENCH_DEVICE=cuda python -m pytest benchmarks
Assert the targets: CIRCUIT_BENCH_ASSERT_TARGETS=1 python -m pytest benchmarks -k targets

Every case is defined once in `harness.bench` (shared with `circuit-bench bench`; method cases
come from the registry's declared timings): random weights with the real configurations (timing
does not depend on weight values), random token batches with a generic logit-difference
TaskData. Each benchmark round runs the case through `harness.bench.measure.measure` (CUDA: synchronise + events + max_memory_allocated; CPU: perf_counter
and peak RSS), so pytest-benchmark's own clock sees finished work, and `benchmark.extra_info`
gets the honest figures: device, dtype, batch, seq_len, torch, threads, peak_mem_mb, and for
looping methods the extrapolated seconds for a full run. Speed targets are ratios measured in
one run (`test_targets`); they are asserted only with CIRCUIT_BENCH_ASSERT_TARGETS=1, else
recorded in extra_info. No unit test asserts a time.

Environment: CIRCUIT_BENCH_DEVICE (cpu | cuda | auto; default cpu), CIRCUIT_BENCH_DTYPE
(default float32), CIRCUIT_BENCH_ROUNDS (rounds per cheap case, default 3),
CIRCUIT_BENCH_BUDGET_S (seconds per looping measurement before it extrapolates, default 60),
CIRCUIT_BENCH_SINGLE_EDGES (sample for one-edge-per-forward patching, default 100),
CIRCUIT_BENCH_IG_STEPS (EAP-IG steps, default 5), CIRCUIT_BENCH_SYSTEM_MALLOC=1 (leave glibc's
malloc settings as they are; by default freed memory is kept, as `circuit-bench` does:
`harness.core.allocator`), CIRCUIT_BENCH_THREADS (torch CPU threads; on a
shared, oversubscribed machine 1 thread avoids OpenMP barrier stalls that make 2-thread timings
erratic).
"""
from __future__ import annotations

import os
import statistics

import pytest
import torch

from harness.bench.cases import cases
from harness.bench.measure import bench_setup, measure, memory_limit_bytes
from harness.bench.setups import Setup, make_setup
from harness.bench.suite import BATCHING_TARGET, EAP_TARGET, GRAD_WRONG_TARGET, BenchConfig, add_ratios, target_rows
from harness.core.allocator import keep_freed_memory
from harness.core.device import resolve_device
from harness.report.timing_text import targets_text


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: the smallest models at the smallest batch (CI proof that the suite runs)")
    config.addinivalue_line("markers", "bench_model(name): the model architecture a benchmark file times")
    keep_freed_memory()  # as circuit-bench bench does, so the suites and the CLI time the same process set-up


def _env(name, default, cast=str):
    v = os.environ.get(name)
    return cast(v) if v not in (None, "") else default


DEVICE = str(resolve_device(_env("CIRCUIT_BENCH_DEVICE", "cpu")))
DTYPE = _env("CIRCUIT_BENCH_DTYPE", "float32")
ROUNDS = _env("CIRCUIT_BENCH_ROUNDS", 3, int)
BUDGET_S = _env("CIRCUIT_BENCH_BUDGET_S", 60.0, float)
SINGLE_EDGES = _env("CIRCUIT_BENCH_SINGLE_EDGES", 100, int)
IG_STEPS = _env("CIRCUIT_BENCH_IG_STEPS", 5, int)
ASSERT_TARGETS = _env("CIRCUIT_BENCH_ASSERT_TARGETS", "0") not in ("0", "false", "no")
THREADS = _env("CIRCUIT_BENCH_THREADS", None, int)
if THREADS:
    torch.set_num_threads(THREADS)

CASES = {c.key: c for c in cases(BenchConfig(ig_steps=IG_STEPS, single_edges=SINGLE_EDGES))}


@pytest.fixture(scope="session")
def setups():
    """(model, batch, seq_len) -> Setup, built once per session (the last model's weights stay)."""
    cache: dict = {}

    def get(model, batch, seq_len):
        key = (model, batch, seq_len)
        if key not in cache:
            cache.clear()
            cache[key] = make_setup(model, batch, seq_len, DEVICE, DTYPE)
        return cache[key]

    return get


def _info(s: Setup) -> dict:
    return {"model": s.model, "device": s.device.type, "dtype": str(s.dtype).replace("torch.", ""), "batch": s.batch,
            "seq_len": s.seq_len, "torch": torch.__version__, "threads": s.clock.threads(),
            "mem_kind": s.clock.mem_kind, "n_edges": s.graph.n_edges, "device_name": s.clock.device_name()}


@pytest.fixture
def time_case(benchmark, setups):
    """time_case(model, batch, seq_len, case_key): benchmark one case, figures in extra_info."""

    def run(model, batch, seq_len, key):
        s = setups(model, batch, seq_len)
        case = CASES[key]
        if case.applies is not None and not case.applies(s):
            pytest.skip(f"{key} does not apply to {model}")
        limit = memory_limit_bytes(s.device)
        need = case.mem_bytes(s) if case.mem_bytes else 0
        if limit is not None and need > limit:
            pytest.skip(f"{key} needs ~{need / 2**30:.1f} GiB in one tensor (limit {limit / 2**30:.1f} GiB)")
        samples = []
        looping = case.units is not None
        if s.clock.cuda or not looping:  # warm-up (CUDA looping cases: one patched forward; none on CPU)
            measure(s, case, None, 1 if looping else None)
        benchmark.pedantic(lambda: samples.append(measure(s, case, BUDGET_S)), rounds=1 if looping else ROUNDS,
                           iterations=1, warmup_rounds=0)
        last = samples[-1]
        benchmark.extra_info.update(_info(s))
        benchmark.extra_info.update({
            "method": case.method, "variant": case.variant, "seconds": statistics.median(x.seconds for x in samples),
            "measured_seconds": statistics.median(x.measured for x in samples),
            "peak_mem_mb": max(x.peak_mem_mb for x in samples), "extrapolated": last.extrapolated,
            "units_done": last.units_done, "units_total": last.units_total, "forwards": last.forwards,
            "patched_forwards": last.patched, "rows": last.rows, "loadavg_1m": last.loadavg})
        assert all(x.seconds > 0 for x in samples)
        return samples

    return run


@pytest.fixture
def check_targets(benchmark, setups):
    """Measure the target ratios in one run (floor, EAP, grad-wrong, batched, single-edge and
    dense reference patching, interleaved), record them in extra_info, assert them only with CIRCUIT_BENCH_ASSERT_TARGETS=1."""

    def run(model, batch, seq_len):
        import pandas as pd

        s = setups(model, batch, seq_len)
        keys = ["forward/no-grad", "forward-backward/activations", "eap/noising", "grad-wrong/logit-diff-mse/activation",
                "act-patch-edge/batched", "act-patch-edge/single", "act-patch-edge/dense", "forward-backward/hf-gpt2"]
        cfg = BenchConfig(models=[model], device=DEVICE, dtype=DTYPE, batches=[batch], seq_len=seq_len,
                            repeats=ROUNDS, heavy_repeats=1, warmup=1, ig_steps=IG_STEPS, single_edges=SINGLE_EDGES,
                            budget_s=BUDGET_S, progress=False)
        rows = []
        benchmark.pedantic(lambda: rows.extend(bench_setup(cfg, s, [CASES[k] for k in keys])), rounds=1, iterations=1)
        df = add_ratios(pd.DataFrame(rows))
        trows = target_rows(df)
        text = targets_text(pd.DataFrame(trows), df)
        t = trows[0]
        benchmark.extra_info.update(_info(s))
        benchmark.extra_info.update({k: (float(v) if isinstance(v, float) else v) for k, v in t.items()})
        benchmark.extra_info["summary"] = text
        if ASSERT_TARGETS:
            assert t["eap_over_floor"] <= EAP_TARGET, text
            assert t["grad_wrong_over_floor"] <= GRAD_WRONG_TARGET, text
            if t["batched_speedup"] != t["batched_speedup"]:  # NaN: a patching case was skipped
                pytest.skip("batched or single-edge patching was not timed here:\n" + text)
            assert t["batched_speedup"] >= BATCHING_TARGET, text
            if t["dense_target"] == t["dense_target"]:  # a target is set for this model
                assert t["batched_over_dense"] >= t["dense_target"], text
            if t["engine_over_hf"] == t["engine_over_hf"]:  # a GPT-2 architecture: HF was timed
                assert t["engine_over_hf"] <= t["hf_target"], text
        return t

    return run


@pytest.fixture
def time_cases(benchmark, setups):
    """time_cases(model, batch, seq_len, keys) -> the timing rows of those cases, measured in one
    run (interleaved, as `check_targets` does), with the setup's facts in extra_info."""

    def run(model, batch, seq_len, keys):
        s = setups(model, batch, seq_len)
        cfg = BenchConfig(models=[model], device=DEVICE, dtype=DTYPE, batches=[batch], seq_len=seq_len,
                          repeats=ROUNDS, heavy_repeats=1, warmup=1, ig_steps=IG_STEPS, single_edges=SINGLE_EDGES,
                          budget_s=BUDGET_S, progress=False)
        rows = []
        benchmark.pedantic(lambda: rows.extend(bench_setup(cfg, s, [CASES[k] for k in keys])), rounds=1, iterations=1)
        benchmark.extra_info.update(_info(s))
        return s, rows

    return run


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", list(CASES))
