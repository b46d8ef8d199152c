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


def mark_best(values: pd.Series, text: pd.Series) -> pd.Series:
    """`text` with the cells whose value is the column's highest (to the 3 decimals shown) in
    **bold** (markdown; the HTML report renders it as <b>)."""
    shown = values.round(3)
    top = shown.max()
    return text.where(~(shown == top) | shown.isna(), "**" + text + "**")


def auc_table(sub: pd.DataFrame, reason) -> pd.DataFrame:
    """One row per (method, variant) of `sub` (one reference, one level), for each "task (ground
    truth)" three columns: "task (ground truth)", the AUC (the column's best in bold; "n/a (why)" with `reason(row)`), its
    95% interval, and ACDC's pessimistic AUC (its best in bold)."""
    first = sub.groupby(["method", "variant", "task", "ground_truth"], sort=False).head(1)
    keys = sorted({(m, v) for m, v in zip(first["method"], first["variant"])})
    cols = [("method", [k[0] for k in keys]), ("variant", [k[1] for k in keys])]
    for task, gt in sorted({(t, g) for t, g in zip(first["task"], first["ground_truth"])}):
        col = f"{task} ({gt})"
        q = first[(first["task"] == task) & (first["ground_truth"] == gt)].set_index(["method", "variant"]).reindex(keys)
        auc, pess = q["auc"].astype(float).reset_index(drop=True), q["pessimistic_auc"].astype(float).reset_index(drop=True)
        text = pd.Series([f"{a:.3f}" if pd.notna(a) else ("n/a" + reason(r) if pd.notna(r.get("level")) else "")
                          for a, (_, r) in zip(auc, q.reset_index().iterrows())])
        lo, hi = q["auc_lo"].astype(float).reset_index(drop=True), q["auc_hi"].astype(float).reset_index(drop=True)
        ci = [f"[{a:.2f}, {b:.2f}]" + (" \u2020" if not a - 1e-12 <= x <= b + 1e-12 else "")
              if pd.notna(a) and pd.notna(b) and pd.notna(x) else "" for a, b, x in zip(lo, hi, auc)]
        cols += [(col, list(mark_best(auc, text))), ("CI", ci),
                 ("pess.", list(mark_best(pess, pd.Series([f"{p:.3f}" if pd.notna(p) else "" for p in pess]))))]
    table = pd.DataFrame({i: v for i, (_, v) in enumerate(cols)})
    table.columns = [name for name, _ in cols]  # "CI" and "pess." follow the task they belong to
    return table
