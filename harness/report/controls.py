"""A method's AUC beside its controls: its reset-network AUC and the best structure-only ranking.

An AUC is evidence that a method finds the circuit only by its margin over what it gets without
the trained model (the reset control: the same method on reset networks) and over what the
graph's structure alone gives (the best of the structure-only rules, picked with the ground
truth, so an upper bound on that baseline). A result that does not clear both is marked.

Clearing a control is decided without reading noise as a difference: above the reset control
means above the upper end of its spread over reset networks; above the structure baseline means
the lower end of the method's 95% bootstrap interval above it (its AUC, for methods without one).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report.tables import by_method_and_task

GROUP = ["task", "ground_truth", "level", "ablation"]
NOT_ABOVE_RESET, NOT_ABOVE_STRUCTURE = "†", "‡"


def control_frame(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, ground truth, level, reference, method, variant) result of `ok`
    (results.csv rows with status ok) on the trained model, its reset control, or both (a task
    whose trained weights are absent has only the control): auc, reset_auc / reset_lo /
    reset_hi / reset_kind, delta = auc - reset_auc, best_structure (and its rule),
    above_reset, above_structure."""
    ok = ok.assign(control=ok["control"].fillna("trained")) if "control" in ok else ok.assign(control="trained")
    if "reset_kind" not in ok:
        ok = ok.assign(reset_kind=None)
    ok = ok[ok["auc"].notna()]
    trained = ok[ok["control"] == "trained"]
    reset = ok[ok["control"] == "reset"][GROUP + ["method", "variant", "auc", "auc_lo", "auc_hi", "reset_kind"]].rename(
        columns={"auc": "reset_auc", "auc_lo": "reset_lo", "auc_hi": "reset_hi"})
    out = trained[GROUP + ["method", "variant", "auc", "auc_lo", "auc_hi"]].merge(
        reset, on=GROUP + ["method", "variant"], how="outer")
    struct = trained[trained["method"] == "structure"]
    if len(struct):
        best = struct.sort_values("auc", ascending=False).groupby(GROUP).head(1)[GROUP + ["auc", "variant"]]
        out = out.merge(best.rename(columns={"auc": "best_structure", "variant": "best_structure_rule"}), on=GROUP,
                        how="left")
    else:
        out["best_structure"], out["best_structure_rule"] = np.nan, None
    out["delta"] = out["auc"] - out["reset_auc"]
    has = out["auc"].notna()
    low = out["auc_lo"].where(out["auc_lo"].notna(), out["auc"])
    with np.errstate(invalid="ignore"):  # comparisons with n/a are masked out by np.where
        out["above_reset"] = np.where(has & out["reset_hi"].notna(), out["auc"] > out["reset_hi"], np.nan)
        out["above_structure"] = np.where(has & out["best_structure"].notna(), low > out["best_structure"], np.nan)
    return out.reset_index(drop=True)


def _cell(r) -> str:
    if pd.isna(r["auc"]):  # the trained model is absent: the control alone
        return f"n/a − {r['reset_auc']:.3f} [{r['reset_lo']:.3f}, {r['reset_hi']:.3f}] ({r['reset_kind']})"
    if pd.isna(r["reset_auc"]):
        return f"{r['auc']:.3f}" + ("" if r["above_structure"] != 0 else NOT_ABOVE_STRUCTURE)
    marks = ("" if r["above_reset"] else NOT_ABOVE_RESET) + ("" if r["above_structure"] != 0 else NOT_ABOVE_STRUCTURE)
    return f"{r['auc']:.3f} − {r['reset_auc']:.3f} = {r['delta']:+.3f}{marks}"


def control_tables(frame: pd.DataFrame, exclude_tasks=()) -> list:
    """(reference, table, ranking) per reference, edge level: a pivot of cells "AUC − reset =
    delta" with marks, a first row with the best structure-only AUC of each column, and the
    methods ranked by mean delta over tasks (`exclude_tasks` left out of the ranking)."""
    out = []
    f = frame[(frame["level"] == "edge") & (frame["method"] != "structure")]
    for ref, sub in f.groupby("ablation", sort=True):
        if sub["reset_auc"].isna().all():
            continue
        table = by_method_and_task(sub, _cell)
        best = {"method": "structure (best rule)", "variant": ""}
        for (t, g), h in sub.dropna(subset=["best_structure"]).groupby(["task", "ground_truth"]).first().iterrows():
            best[f"{t} ({g})"] = f"{h['best_structure']:.3f} ({h['best_structure_rule']})"
        table = pd.concat([pd.DataFrame([best]), table], ignore_index=True)
        ranked = sub[sub["delta"].notna() & ~sub["task"].isin(exclude_tasks)].groupby(["method", "variant"]).agg(
            mean_delta=("delta", "mean"), results=("delta", "size"),
            above_reset=("above_reset", lambda x: int(np.nansum(x.astype(float)))),
            above_structure=("above_structure", lambda x: int(np.nansum(x.astype(float))))
        ).sort_values("mean_delta", ascending=False).reset_index()
        out.append((ref, table, ranked.round(3)))
    return out
