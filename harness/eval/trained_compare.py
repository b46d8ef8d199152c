"""Compiled versus SIIT-trained: does a method's ranking survive an ordinary trained model's
interference (docs/trained.md#compiled-versus-trained)?

A pair is one program twice: its compiled tracr model (task `X`) and the ordinary transformer SIIT
taught its circuit (task `trained-X`, suite programs without `suite:`). Both run on the same data
with the same reference and objective, and are scored against the same edges: the compiled
task's `structural` ground truth and the trained task's `correspondence`, which holds those edges
by name (harness.tasks.trained_tasks). The trained graph has more heads, so more off-circuit
edges. The unit of the statistics is the program: per (reference, level, method, variant), the paired
difference trained minus compiled edge AUC over programs, its bootstrap interval, Wilcoxon's p
and Holm's correction across the method variants of one reference and level (`degrades` only where
the interval is below zero and Holm's p < 0.05). Node-level pairs are fewer: a compiled graph often
has too few nodes off the circuit for an AUC.

Frames crossing modules: `pairs(results)` -> PAIR_COLUMNS, one row per (reference, level,
program, method, variant); `summary(pairs)` -> SUMMARY_COLUMNS, one row per (reference, level,
method, variant).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.eval.statistics import ALPHA
from harness.eval.suite_stats import N_BOOT, SEED, TIE_TOL, bootstrap_mean_ci, holm, wilcoxon_p

TRAINED_PREFIX = "trained-"
COMPILED_GT, TRAINED_GT = "structural", "correspondence"
PAIR_COLUMNS = ["reference", "level", "program", "trained_task", "method", "variant", "compiled", "trained", "change",
                "n_edges_compiled", "n_edges_trained"]
SUMMARY_COLUMNS = ["reference", "level", "method", "variant", "n", "compiled", "trained", "change", "change_lo", "change_hi",
                   "p", "p_holm", "verdict"]


def base_of(trained_task: str, tasks) -> str | None:
    """The compiled task of `trained-<name>` among `tasks`: `<name>` or `suite:<name>`."""
    rest = trained_task[len(TRAINED_PREFIX):]
    return next((t for t in (rest, "suite:" + rest) if t in set(tasks)), None)


def pairs(results: pd.DataFrame) -> pd.DataFrame:
    """PAIR_COLUMNS from results.csv rows: status ok, the unmodified models (no reset control),
    each side against its own copy of the circuit, at the edge and the node level (InterpBench
    scores nodes, since SIIT constrains nodes, not edges); `change` = trained - compiled."""
    ok = results[(results["status"] == "ok") & (results["control"].fillna("trained") == "trained")]
    tasks = set(ok["task"])
    keys = ["ablation", "level", "method", "variant"]
    out = []
    for tt in sorted(t for t in tasks if str(t).startswith(TRAINED_PREFIX)):
        base = base_of(tt, tasks)
        if base is None:
            continue
        c = ok[(ok["task"] == base) & (ok["ground_truth"] == COMPILED_GT)].groupby(keys)[["auc", "n_edges"]].mean()
        t = ok[(ok["task"] == tt) & (ok["ground_truth"] == TRAINED_GT)].groupby(keys)[["auc", "n_edges"]].mean()
        both = c.merge(t, left_index=True, right_index=True, suffixes=("_c", "_t")).reset_index()
        for _, r in both.iterrows():
            out.append({"reference": r["ablation"], "level": r["level"], "program": base, "trained_task": tt, "method": r["method"],
                        "variant": r["variant"], "compiled": r["auc_c"], "trained": r["auc_t"],
                        "change": r["auc_t"] - r["auc_c"], "n_edges_compiled": r["n_edges_c"],
                        "n_edges_trained": r["n_edges_t"]})
    return pd.DataFrame(out, columns=PAIR_COLUMNS)


def summary(p: pd.DataFrame, n_boot: int = N_BOOT, seed: int = SEED, tol: float = TIE_TOL) -> pd.DataFrame:
    """SUMMARY_COLUMNS: per (reference, method, variant) over the programs where both sides have
    an AUC: means, the mean change with its 95% bootstrap interval, Wilcoxon p, Holm p within the
    reference, and a verdict that names a change only when noise could not make it."""
    rows = []
    keys = ["reference", "level", "method", "variant"]
    for (ref, level, m, v), g in p.dropna(subset=["compiled", "trained"]).groupby(keys, sort=True):
        d = g["change"].to_numpy(float)
        lo, hi = bootstrap_mean_ci(d, n_boot, seed)
        rows.append({"reference": ref, "level": level, "method": m, "variant": v, "n": len(d), "compiled": g["compiled"].mean(),
                     "trained": g["trained"].mean(), "change": d.mean(), "change_lo": lo, "change_hi": hi,
                     "p": wilcoxon_p(d, tol)[0]})
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS[:-2])
    if out.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    out["p_holm"] = np.nan
    for _, idx in out.groupby(["reference", "level"]).groups.items():
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p"])
    sig = out["p_holm"] < ALPHA
    out["verdict"] = np.where(sig & (out["change_hi"] < 0), "degrades",
                              np.where(sig & (out["change_lo"] > 0), "improves", "no clear change"))
    return out.sort_values(["reference", "level", "compiled"], ascending=[True, True, False], ignore_index=True)


def answer(s: pd.DataFrame) -> list:
    """One sentence per reference and level: how many method variants degrade, improve or do not
    clearly change, and the largest clear drop."""
    out = []
    for (ref, level), g in s.groupby(["reference", "level"], sort=True):
        counts = g["verdict"].value_counts()
        worst = g[g["verdict"] == "degrades"].sort_values("change").head(1)
        n = int(g["n"].max())
        line = (f"{ref} reference, {level} level, {n} programs: of {len(g)} method variants, {counts.get('degrades', 0)} rank the "
                f"circuit significantly worse on the trained models, {counts.get('improves', 0)} better and "
                f"{counts.get('no clear change', 0)} show no change noise could not make (paired Wilcoxon over "
                "programs, Holm within the reference, 95% bootstrap interval of the mean change)")
        if len(worst):
            w = worst.iloc[0]
            line += (f"; the largest drop: {w['method']} {w['variant']}, {w['compiled']:.3f} -> {w['trained']:.3f} "
                     f"({w['change']:+.3f} [{w['change_lo']:+.3f}, {w['change_hi']:+.3f}])")
        out.append(line + ".")
    return out
