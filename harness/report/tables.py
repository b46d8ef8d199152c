"""Reading a run's results.csv and a bench's timing.csv, with one-line errors naming the file."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

KEY = ["task", "method", "variant", "ablation", "control", "ground_truth", "level"]  # ablation: the reference
TIME_KEY = ["model", "method", "variant", "device", "batch", "seq_len"]


class TableError(ValueError):
    """A results or timing table that cannot be read, in one line naming it."""


NEEDED = {"results": [k for k in KEY if k != "control"] + ["auc"], "timing": TIME_KEY + ["ratio_to_fwd_bwd"]}


def read_table(p: Path, kind: str = "results") -> pd.DataFrame:
    """A results.csv or timing.csv, or TableError saying in one line what is wrong with it."""
    hint = "run `circuit-bench run --out DIR` first" if kind == "results" else "run `circuit-bench bench --out DIR`"
    if not p.exists():
        raise TableError(f"{p}: no such file ({hint})")
    if not p.is_file():
        raise TableError(f"{p} is not a file")
    try:
        df = pd.read_csv(p)
    except pd.errors.EmptyDataError:
        raise TableError(f"{p} is empty ({hint})") from None
    except (UnicodeDecodeError, pd.errors.ParserError, OSError) as e:
        raise TableError(f"{p} is not a readable CSV {kind} table ({type(e).__name__})") from None
    missing = [c for c in NEEDED[kind] if c not in df.columns]
    if missing:
        raise TableError(f"{p} lacks the column(s) {', '.join(missing)}: not a circuit-bench {kind} table")
    value = NEEDED[kind][-1]
    numbers = pd.to_numeric(df[value], errors="coerce")
    bad = df[value].notna() & numbers.isna()
    if bad.any():
        raise TableError(f"{p}: column {value} holds {int(bad.sum())} value(s) that are not numbers, "
                         f"e.g. {df[value][bad].iloc[0]!r} (line {int(bad.idxmax()) + 2})")
    df[value] = numbers
    if kind == "results":  # tables from before reset controls hold trained results only
        df["control"] = df["control"].fillna("trained") if "control" in df else "trained"
    return df


def by_method_and_task(sub: pd.DataFrame, cell) -> pd.DataFrame:
    """One row per (method, variant) of `sub`, one column per "task (ground truth)", each cell
    `cell(row)` of the first matching row of `sub`."""
    cols = sorted({(t, g) for t, g in zip(sub["task"], sub["ground_truth"])})
    rows: dict = {}
    for _, r in sub.groupby(["method", "variant", "task", "ground_truth"], sort=False).head(1).iterrows():
        rows.setdefault((r["method"], r["variant"]), {"method": r["method"], "variant": r["variant"]})[
            f"{r['task']} ({r['ground_truth']})"] = cell(r)
    return pd.DataFrame([rows[k] for k in sorted(rows)], columns=["method", "variant"] + [f"{t} ({g})" for t, g in cols])
