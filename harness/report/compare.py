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

from harness.report.tables import KEY, TIME_KEY, TableError, read_table


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
    if not p.exists():
        raise TableError(f"{p}: no such file or folder")
    return read_table(p / "results.csv" if p.is_dir() else p)


def _diff(run: pd.Series, base: pd.Series, key, worse, better, c: Comparison) -> Comparison:
    """Walk two keyed series: missing, extra, and rows where `worse(now, baseline)`."""
    run, base = run[~run.index.duplicated()], base[~base.index.duplicated()]
    c.missing += [dict(zip(key, k)) for k in base.index.difference(run.index)]
    c.extra += [dict(zip(key, k)) for k in run.index.difference(base.index)]
    for k in base.index.intersection(run.index):
        c.compared += 1
        row = {**dict(zip(key, k)), "baseline": round(float(base[k]), 4), "now": round(float(run[k]), 4)}
        if worse(run[k], base[k]):
            c.regressions.append(row)
        elif better(run[k], base[k]):
            c.improved.append(row)
    return c


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    if "control" not in df:  # from before reset controls: trained results only
        df = df.assign(control="trained")
    return df[df["status"].fillna("ok") == "ok"] if "status" in df else df


def compare_frames(run: pd.DataFrame, base: pd.DataFrame, tolerance: float = 0.02, key=KEY, value="auc",
                   c: Comparison | None = None) -> Comparison:
    """AUC rows: worse when they fall by more than `tolerance`."""
    r = _ok(run).dropna(subset=[value]).set_index(key)[value]
    b = _ok(base).dropna(subset=[value]).set_index(key)[value]
    return _diff(r, b, key, lambda now, was: now < was - tolerance, lambda now, was: now > was + tolerance, c or Comparison())


def compare_timing(run: pd.DataFrame, base: pd.DataFrame, factor: float = 1.5, c: Comparison | None = None) -> Comparison:
    """Timing rows: worse when the ratio to one forward+backward grows by more than `factor`."""
    r = run.set_index(TIME_KEY)["ratio_to_fwd_bwd"]
    b = base.set_index(TIME_KEY)["ratio_to_fwd_bwd"]
    return _diff(r, b, TIME_KEY, lambda now, was: now > was * factor, lambda now, was: now < was / factor, c or Comparison())


def compare(run_dir, baseline, tolerance: float = 0.02, time_factor: float = 1.5) -> Comparison:
    """Compare `run_dir/results.csv` with `baseline` (a results.csv or a directory holding one);
    timing.csv files beside them are compared too when both exist."""
    c = compare_frames(_load(run_dir), _load(baseline), tolerance)
    rp = Path(run_dir)
    rt = (rp if rp.is_dir() else rp.parent) / "timing.csv"
    bp = Path(baseline)
    bt = (bp if bp.is_dir() else bp.parent) / "timing.csv"
    if rt.exists() and bt.exists():
        compare_timing(read_table(rt, "timing"), read_table(bt, "timing"), time_factor, c)
    if not c.compared and not c.missing:
        raise TableError(f"nothing to compare: {baseline} has no AUC or timing rows")
    return c
