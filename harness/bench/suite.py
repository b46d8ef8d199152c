"""`circuit-bench bench`: every model x batch measured, written as numbers.

Writes OUT/timing.csv (one row per case and setup, with ratios to the floor), timing_breakdown.csv
(`eap_breakdown` per setup, long form) and timing_targets.csv (per setup: the floor, EAP over the
floor, batched patching's speedup and whether each target is met). The sentences that explain
these numbers are generated from the CSVs by `harness.report.timing_text`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from harness.bench.cases import cases, gradient_methods
from harness.bench.measure import bench_setup, log
from harness.bench.profile import eap_breakdown
from harness.bench.setups import make_setup
from harness.core.architectures import ARCHITECTURES
from harness.core.device import resolve_device

EAP_TARGET = 1.15  # all-edge EAP seconds <= 1.15 x (one forward+backward + one no-grad forward)
BATCHING_TARGET = 10.0  # batched act-patch-edge >= 10x faster than one edge per forward
GRAD_WRONG_TARGET = 1.1  # grad-wrong's seed target at the activation site <= 1.1 x EAP's floor (issue 14)
GRAD_WRONG_CASE = ("grad-wrong", "logit-diff-mse/activation")
# batched act-patch-edge over one edge per full reference forward (the path before the patched
# forward started at the first touched layer), per edge (issue 14)
DENSE_TARGETS = {"gpt2": 3.0, "attn-only-4l": 6.0}
HF_TARGET = 1.15  # the engine's unpatched forward+backward <= 1.15 x HF transformers' GPT-2 on the same weights (issue 14)

SETUP_KEY = ["model", "device", "dtype", "batch", "seq_len"]
COLUMNS = [
    "model", "method", "variant", "device", "dtype", "batch", "seq_len", "seconds", "peak_mem_mb",
    "ratio_to_fwd_bwd", "speedup_vs_act_patch", "speedup_vs_single_edge", "extrapolated", "units_done",
    "units_total", "measured_seconds", "seconds_min", "seconds_max", "forwards", "patched_forwards", "rows",
    "repeats", "threads", "torch", "mem_kind", "loadavg_1m", "n_edges", "device_name", "source", "status", "note",
    "measured_at",
]


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
        cs = cases(self)
        if self.methods:
            keep = set(self.methods)
            cs = [c for c in cs if c.key in keep or c.method in keep or c.method.startswith("forward")]
        return cs


def lookup(g, method: str, variant: str, col: str = "seconds"):
    """`col` of one setup's (method, variant) row in timing rows `g`, NaN when it is absent."""
    hit = g[(g["method"] == method) & (g["variant"] == variant)]
    return hit[col].iloc[0] if len(hit) else float("nan")


def add_ratios(df):
    """ratio_to_fwd_bwd, speedup_vs_act_patch (gradient methods: batched act-patch-edge seconds /
    seconds), speedup_vs_single_edge (one-edge-per-forward seconds / seconds), per setup."""
    import numpy as np

    df = df.copy()
    for c in ("ratio_to_fwd_bwd", "speedup_vs_act_patch", "speedup_vs_single_edge"):
        df[c] = np.nan
    gradient = gradient_methods()
    for _, idx in df.groupby(SETUP_KEY).groups.items():
        g = df.loc[idx]
        fb = float(lookup(g, "forward-backward", "activations"))
        batched, single = float(lookup(g, "act-patch-edge", "batched")), float(lookup(g, "act-patch-edge", "single"))
        df.loc[idx, "ratio_to_fwd_bwd"] = g["seconds"] / fb
        grad = g["method"].isin(gradient)
        df.loc[idx[grad.values], "speedup_vs_act_patch"] = batched / g.loc[grad, "seconds"]
        not_single = ~((g["method"] == "act-patch-edge") & (g["variant"] == "single")) & ~g["method"].str.startswith("forward")
        df.loc[idx[not_single.values], "speedup_vs_single_edge"] = single / g.loc[not_single, "seconds"]
    return df


def target_rows(df) -> list:
    """Per setup of timing rows `df` (with ratios): the two targets' numbers, for timing_targets.csv."""
    rows = []
    for k, g in df.groupby(SETUP_KEY, sort=False):
        model, device, dtype, batch, P = k
        floor = lookup(g, "forward", "no-grad") + lookup(g, "forward-backward", "activations")
        eap, batched, single = lookup(g, "eap", "noising"), lookup(g, "act-patch-edge", "batched"), lookup(g, "act-patch-edge", "single")
        r_eap, speed = eap / floor, single / batched
        r_gw = lookup(g, *GRAD_WRONG_CASE) / floor  # same floor: the source run and one traced clean run
        over_dense = lookup(g, "act-patch-edge", "dense") / batched
        dense_target = DENSE_TARGETS.get(model, float("nan"))
        rows.append({"model": model, "device": device, "dtype": dtype, "batch": batch, "seq_len": P,
                     "floor_seconds": floor, "eap_seconds": eap, "eap_over_floor": r_eap,
                     "eap_target": EAP_TARGET, "eap_target_met": bool(r_eap <= EAP_TARGET),
                     "batched_seconds": batched, "single_seconds": single, "batched_speedup": speed,
                     "batching_target": BATCHING_TARGET, "batching_target_met": bool(speed >= BATCHING_TARGET),
                     "grad_wrong_over_floor": r_gw, "grad_wrong_target": GRAD_WRONG_TARGET,
                     "grad_wrong_target_met": bool(r_gw <= GRAD_WRONG_TARGET),
                     "dense_seconds": lookup(g, "act-patch-edge", "dense"), "batched_over_dense": over_dense,
                     "dense_target": dense_target, "dense_target_met": bool(over_dense >= dense_target),
                     "hf_seconds": lookup(g, "forward-backward", "hf-gpt2"),
                     "engine_over_hf": lookup(g, "forward-backward", "activations") / lookup(g, "forward-backward", "hf-gpt2"),
                     "hf_target": HF_TARGET,
                     "hf_target_met": bool(lookup(g, "forward-backward", "activations") <= HF_TARGET * lookup(g, "forward-backward", "hf-gpt2")),
                     "loadavg_1m": float(g["loadavg_1m"].median())})
    return rows


def run_bench(cfg: BenchConfig, out) -> Path:
    """Measure every model x batch, write OUT/timing.csv, timing_breakdown.csv and
    timing_targets.csv; returns the timing.csv path. Does not render the report. The torch
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
            log(cfg, f"{model}: batch {batch}, seq_len {min(cfg.seq_len, ARCHITECTURES[model].n_ctx)}, {dev}, {cfg.dtype}")
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
    _merge(out / "timing_breakdown.csv", pd.DataFrame(bd_rows), cfg.fresh, ["phase"]).to_csv(
        out / "timing_breakdown.csv", index=False)
    pd.DataFrame(target_rows(df)).to_csv(out / "timing_targets.csv", index=False)
    return path


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
