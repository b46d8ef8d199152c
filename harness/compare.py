"""Regression check: a run's results against a stored baseline.

A row regresses when its AUC falls by more than `tolerance` (absolute), or, for timing rows, when
its ratio to one forward+backward grows by more than `time_factor`. Rows present in the
baseline but missing from the run, and rows the baseline lacks, are reported: a missing row is a
failure (something stopped running), an extra row is only listed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

KEY = ["task", "method", "variant", "ground_truth", "level"]
TIME_KEY = ["model", "method", "variant", "device", "batch", "seq_len"]


@dataclass
class Comparison:
    regressions: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    extra: list = field(default_factory=list)
    improved: list = field(default_factory=list)
    compared: int = 0

    @property
    def ok(self) -> bool:
        return not self.regressions and not self.missing

    def lines(self) -> list:
        out = [f"compared {self.compared} rows: {len(self.regressions)} regressed, {len(self.missing)} missing, "
               f"{len(self.extra)} extra, {len(self.improved)} improved"]
        out += [f"REGRESSED {r}" for r in self.regressions]
        out += [f"MISSING   {r}" for r in self.missing]
        out += [f"extra     {r}" for r in self.extra]
        return out


def _load(path) -> pd.DataFrame:
    p = Path(path)
    if p.is_dir():
        p = p / "results.csv"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no results file (run `circuit-bench run --out DIR` first)")
    return pd.read_csv(p)


def compare_frames(run: pd.DataFrame, base: pd.DataFrame, tolerance: float = 0.02, key=KEY, value="auc") -> Comparison:
    c = Comparison()
    run = run[run["status"].fillna("ok") == "ok"] if "status" in run else run
    base = base[base["status"].fillna("ok") == "ok"] if "status" in base else base
    r = run.dropna(subset=[value]).set_index(key)[value]
    b = base.dropna(subset=[value]).set_index(key)[value]
    r = r[~r.index.duplicated()]
    b = b[~b.index.duplicated()]
    for k in b.index.difference(r.index):
        c.missing.append(dict(zip(key, k)))
    for k in r.index.difference(b.index):
        c.extra.append(dict(zip(key, k)))
    for k in b.index.intersection(r.index):
        c.compared += 1
        row = {**dict(zip(key, k)), "baseline": round(float(b[k]), 4), "now": round(float(r[k]), 4)}
        if r[k] < b[k] - tolerance:
            c.regressions.append(row)
        elif r[k] > b[k] + tolerance:
            c.improved.append(row)
    return c


def compare_timing(run: pd.DataFrame, base: pd.DataFrame, factor: float = 1.5) -> Comparison:
    c = Comparison()
    r = run.set_index(TIME_KEY)["ratio_to_fwd_bwd"]
    b = base.set_index(TIME_KEY)["ratio_to_fwd_bwd"]
    for k in b.index.difference(r.index):
        c.missing.append(dict(zip(TIME_KEY, k)))
    for k in r.index.difference(b.index):
        c.extra.append(dict(zip(TIME_KEY, k)))
    for k in b.index.intersection(r.index):
        c.compared += 1
        if r[k] > b[k] * factor:
            c.regressions.append({**dict(zip(TIME_KEY, k)), "baseline_ratio": round(float(b[k]), 3), "now_ratio": round(float(r[k]), 3)})
    return c


def compare(run_dir, baseline, tolerance: float = 0.02, time_factor: float = 1.5) -> Comparison:
    """Compare `run_dir/results.csv` with `baseline` (a results.csv or a directory holding one);
    timing.csv files beside them are compared too when both exist."""
    c = compare_frames(_load(run_dir), _load(baseline), tolerance)
    rt = Path(run_dir) / "timing.csv"
    bp = Path(baseline)
    bt = (bp if bp.is_dir() else bp.parent) / "timing.csv"
    if rt.exists() and bt.exists():
        t = compare_timing(pd.read_csv(rt), pd.read_csv(bt), time_factor)
        c.regressions += t.regressions
        c.missing += t.missing
        c.extra += t.extra
        c.compared += t.compared
    return c
