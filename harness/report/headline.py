"""The report's headline: per task and reference, each method's best variant (of how many) with
its 95% interval, random's spread as a band, and exact edge patching and ACDC as reference lines.

One ground truth per task (ACDC's where the task has it, else the first other), edge level, the
trained model, headline tasks only (a reproduction of another task's circuit is not counted
twice). The same frame gives the figure and `summary.json`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

REFERENCE_LINES = {"act-patch-edge": "exact edge patching", "acdc": "ACDC"}
BAND = "random"
COLUMNS = ["ablation", "task", "ground_truth", "method", "variant", "n_variants", "auc", "auc_lo", "auc_hi",
           "pessimistic_auc"]


def primary_ground_truth(names) -> str:
    names = sorted(set(names))
    return "acdc" if "acdc" in names else names[0]


def best_variant_row(rows: pd.DataFrame) -> pd.Series:
    """The row of the highest AUC among one method's variants (ties: the first variant by name)."""
    return rows.sort_values(["auc", "variant"], ascending=[False, True]).iloc[0]


def headline_frame(df: pd.DataFrame, skip_tasks=()) -> pd.DataFrame:
    """COLUMNS: one row per (reference, task, method): the variant with the highest edge AUC."""
    ok = df[(df["status"] == "ok") & (df["control"].fillna("trained") == "trained") & (df["level"] == "edge")
            & df["auc"].notna() & ~df["task"].isin(set(skip_tasks))]
    rows = []
    for task, by_task in ok.groupby("task", sort=True):
        gt = primary_ground_truth(by_task["ground_truth"])
        sub = by_task[by_task["ground_truth"] == gt]
        for (ref, method), grp in sub.groupby(["ablation", "method"], sort=True):
            best = best_variant_row(grp)
            rows.append({**{k: best[k] for k in COLUMNS if k in best}, "ground_truth": gt,
                         "n_variants": int(grp["variant"].nunique())})
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(frame: pd.DataFrame) -> dict:
    """The headline as JSON: reference -> task -> {ground_truth, methods: method -> best variant}."""
    out: dict = {}
    for (ref, task), grp in frame.groupby(["ablation", "task"], sort=True):
        out.setdefault(ref, {})[task] = {
            "ground_truth": grp["ground_truth"].iloc[0], "level": "edge",
            "methods": {r["method"]: {"best_variant": r["variant"], "of": int(r["n_variants"]),
                                      **{k: (None if pd.isna(r[k]) else float(r[k]))
                                         for k in ("auc", "auc_lo", "auc_hi", "pessimistic_auc")}}
                        for _, r in grp.iterrows()}}
    return out


def write_summary(frame: pd.DataFrame, path: Path) -> Path:
    path.write_text(json.dumps({"what": "best variant of each method per reference and task, edge AUC against "
                                        "the task's primary ground truth (harness/report/headline.py)",
                                "headline": summary(frame)}, indent=1), encoding="utf-8")
    return path


def plot_headline(frame: pd.DataFrame, ref: str, path: Path, plt, sns) -> bool:
    """One panel per task: a dot and interval per method (best of N), random's band, lines."""
    sub = frame[frame["ablation"] == ref]
    if sub.empty:
        return False
    tasks = sorted(sub["task"].unique())
    methods = sorted(m for m in sub["method"].unique() if m != BAND)
    ncol = min(3, len(tasks))
    nrow = int(np.ceil(len(tasks) / ncol))
    height = 0.32 * len(methods) * nrow + 1.4 * nrow + 0.6  # + the two-line title and the legend
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, height), squeeze=False)
    colors = dict(zip(methods, sns.color_palette("tab10", n_colors=max(len(methods), 1))))
    for ax, task in zip(axes.flat, tasks):
        p = sub[sub["task"] == task].set_index("method")
        if BAND in p.index and pd.notna(p.loc[BAND, "auc_lo"]):
            ax.axvspan(p.loc[BAND, "auc_lo"], p.loc[BAND, "auc_hi"], color="0.85", zorder=0, label="random (spread)")
        for m, style in zip(REFERENCE_LINES, ("--", ":")):
            if m in p.index:
                ax.axvline(p.loc[m, "auc"], ls=style, c="0.3", lw=1, label=REFERENCE_LINES[m])
        for y, m in enumerate(methods):
            if m not in p.index:
                continue
            r = p.loc[m]
            lo = r["auc"] - r["auc_lo"] if pd.notna(r["auc_lo"]) else 0
            hi = r["auc_hi"] - r["auc"] if pd.notna(r["auc_hi"]) else 0
            ax.errorbar(r["auc"], y, xerr=[[max(lo, 0)], [max(hi, 0)]], fmt="o", color=colors[m], capsize=3, ms=5)
        labels = [f"{m} (best of {int(p.loc[m, 'n_variants'])})" if m in p.index and p.loc[m, "n_variants"] > 1 else m
                  for m in methods]
        ax.set_yticks(range(len(methods)), labels, fontsize=7)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.6, len(methods) - 0.4), xlabel="edge AUC",
               title=f"{task} ({p['ground_truth'].iloc[0]} GT)")
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.suptitle(f"Best variant per method, {ref} reference\n(dot: edge AUC, bar: 95% interval where computed)",
                 fontsize=9)  # two lines: one panel's width holds neither half alone at this size
    fig.tight_layout(rect=(0, 0.3 / height, 1, 1 - 0.45 / height))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
