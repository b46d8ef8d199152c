"""Regression check: a run's results against a stored baseline.

A row regresses when its AUC falls by more than `tolerance` (absolute), or, for timing rows, when
its ratio to one forward+backward grows by more than `time_factor`. A reset-control row is a mean
over several reset networks whose spread the baseline records (`auc_lo`, `auc_hi`): it regresses
only when it also falls below that spread (and improves only above it), since a move within the
control's own spread across networks is no change of the method; tolerance 0 still asks for equal
rows (docs/reliability.md#what-compare-checks). By default only the rows both
sides have are compared, so a run of one task checks against the full baseline; what only one
side has is summarised as counts per task and method. A (task, method, variant, reference,
control) the run attempted and recorded as an error, where the baseline has results, is a failure
(a unit skipped because, say, its weights are absent is only missing).
`strict`: every baseline row must be in the run (a missing row means something stopped running),
and each missing or extra row is listed.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.report.tables import KEY, TIME_KEY, TableError, read_table

UNIT = ["task", "method", "variant", "ablation", "control"]  # one run of one method: the unit that fails


@dataclass
class Comparison:
    regressions: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # baseline rows the run lacks
    extra: list = field(default_factory=list)  # run rows the baseline lacks
    improved: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # units the run recorded as failed that the baseline has
    compared: int = 0
    strict: bool = False

    @property
    def ok(self) -> bool:
        return not self.regressions and not self.failed and not (self.strict and self.missing)

    def lines(self) -> list:
        out = [f"compared {self.compared} rows: {len(self.regressions)} regressed, {len(self.failed)} failed, "
               f"{len(self.improved)} improved; {len(self.missing)} only in the baseline, {len(self.extra)} only in the run"]
        out += [f"REGRESSED {r}" for r in self.regressions]
        out += [f"FAILED    {r}" for r in self.failed]
        if self.strict:
            out += [f"MISSING   {r}" for r in self.missing]
            out += [f"extra     {r}" for r in self.extra]
        else:
            out += _summary("only in the baseline (not compared; --strict fails on these)", self.missing)
            out += _summary("only in the run (not compared)", self.extra)
        return out


def _summary(what: str, rows: list) -> list:
    """One line per task: how many rows of each method (timing rows: per model)."""
    if not rows:
        return []
    by_task: dict = {}
    for r in rows:
        by_task.setdefault(r.get("task", r.get("model", "?")), Counter())[r.get("method", "?")] += 1
    return [f"{what}: {len(rows)} rows"] + [
        f"  {t}: " + ", ".join(f"{m} {n}" for m, n in sorted(c.items())) for t, c in sorted(by_task.items())]


def _load(path) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise TableError(f"{p}: no such file or folder")
    return read_table(p / "results.csv" if p.is_dir() else p)


def _diff(run: pd.Series, base: pd.Series, key, worse, better, c: Comparison) -> Comparison:
    """Walk two keyed series: missing, extra, and rows where `worse(now, baseline, row key)`."""
    run, base = run[~run.index.duplicated()], base[~base.index.duplicated()]
    c.missing += [dict(zip(key, k)) for k in base.index.difference(run.index)]
    c.extra += [dict(zip(key, k)) for k in run.index.difference(base.index)]
    for k in base.index.intersection(run.index):
        c.compared += 1
        row = {**dict(zip(key, k)), "baseline": round(float(base[k]), 4), "now": round(float(run[k]), 4)}
        if worse(run[k], base[k], k):
            c.regressions.append(row)
        elif better(run[k], base[k], k):
            c.improved.append(row)
    return c


def _with_control(df: pd.DataFrame) -> pd.DataFrame:
    return df if "control" in df else df.assign(control="trained")  # from before reset controls: trained only


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    df = _with_control(df)
    return df[df["status"].fillna("ok") == "ok"] if "status" in df else df


def _failed_units(run: pd.DataFrame, base: pd.DataFrame, c: Comparison) -> set:
    """Units the run recorded as failed while the baseline has rows for them; returns their keys."""
    run = _with_control(run)
    if "status" not in run:
        return set()
    bad = run[run["status"] == "error"]  # "skipped" (e.g. weights absent) is not a failure: those rows are missing
    have = set(_ok(base)[UNIT].itertuples(index=False, name=None))
    units = sorted({u for u in bad[UNIT].itertuples(index=False, name=None) if u in have}, key=str)
    errors = bad.drop_duplicates(UNIT).set_index(UNIT)["error"] if "error" in bad else None
    for u in units:
        why = errors.get(u) if errors is not None else None
        c.failed.append({**dict(zip(UNIT, u)), **({"error": str(why)[:200]} if isinstance(why, str) else {})})
    return set(units)


def compare_frames(run: pd.DataFrame, base: pd.DataFrame, tolerance: float = 0.02, key=KEY, value="auc",
                   c: Comparison | None = None, strict: bool = False) -> Comparison:
    """AUC rows: worse when they fall by more than `tolerance`."""
    c = c or Comparison(strict=strict)
    failed = _failed_units(run, base, c)
    r = _ok(run).dropna(subset=[value]).set_index(key)[value]
    b = _ok(base).dropna(subset=[value])
    keep = pd.Series([u not in failed for u in b[UNIT].itertuples(index=False, name=None)], index=b.index, dtype=bool)
    b = b[keep].set_index(key)
    b = b[~b.index.duplicated()]
    low, high = b[value] - tolerance, b[value] + tolerance
    if tolerance > 0 and {"auc_lo", "auc_hi"} <= set(b.columns) and value == "auc":
        spread = ((b.index.get_level_values("control") == "reset") & b["auc_lo"].notna().to_numpy()
                  & b["auc_hi"].notna().to_numpy())
        low[spread] = low[spread].clip(upper=b["auc_lo"][spread])  # the control's spread over reset networks
        high[spread] = high[spread].clip(lower=b["auc_hi"][spread])
    return _diff(r, b[value], key, lambda now, was, k: now < low[k], lambda now, was, k: now > high[k], c)


def compare_timing(run: pd.DataFrame, base: pd.DataFrame, factor: float = 1.5, c: Comparison | None = None,
                   strict: bool = False) -> Comparison:
    """Timing rows: worse when the ratio to one forward+backward grows by more than `factor`."""
    r = run.set_index(TIME_KEY)["ratio_to_fwd_bwd"]
    b = base.set_index(TIME_KEY)["ratio_to_fwd_bwd"]
    return _diff(r, b, TIME_KEY, lambda now, was, k: now > was * factor, lambda now, was, k: now < was / factor,
                 c or Comparison(strict=strict))


def compare(run_dir, baseline, tolerance: float = 0.02, time_factor: float = 1.5, strict: bool = False) -> Comparison:
    """Compare `run_dir/results.csv` with `baseline` (a results.csv or a directory holding one);
    timing.csv files beside them are compared too when both exist. Raises TableError when the two
    share no row (nothing was checked)."""
    c = compare_frames(_load(run_dir), _load(baseline), tolerance, strict=strict)
    rp = Path(run_dir)
    rt = (rp if rp.is_dir() else rp.parent) / "timing.csv"
    bp = Path(baseline)
    bt = (bp if bp.is_dir() else bp.parent) / "timing.csv"
    if rt.exists() and bt.exists():
        compare_timing(read_table(rt, "timing"), read_table(bt, "timing"), time_factor, c)
    if not c.compared and not c.missing and not c.failed:
        raise TableError(f"nothing to compare: {baseline} has no AUC or timing rows")
    if not c.compared and not c.failed and not strict:
        raise TableError(f"nothing to compare: {run_dir} and {baseline} share no (task, method, variant, reference, "
                         "ground truth, level) row; run the same tasks and methods as the baseline")
    return c
