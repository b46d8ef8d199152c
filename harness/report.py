"""A readable report, rendered from a run directory's records alone (a pure function of them).

`render(out_dir)` writes `report.md` and one ROC plot per task (`roc_<task>.png`, seaborn).
"""
from __future__ import annotations

import platform
from pathlib import Path

import pandas as pd

from .results import ResultStore


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and pd.isna(x)) else f"{x:.3f}"


def _plot_roc(records: list, task: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = []
    for rec in records:
        for r in rec.get("rows", []):
            if r["level"] != "edge":
                continue
            label = f"{rec['method']}/{rec['variant']}"
            for x, y in zip(r["roc"]["fpr"], r["roc"]["tpr"]):
                rows.append({"FPR": x, "TPR": y, "method": label, "ground truth": r["ground_truth"]})
    if not rows:
        return False
    df = pd.DataFrame(rows)
    gts = sorted(df["ground truth"].unique())
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, len(gts), figsize=(5.5 * len(gts) + 3, 5), squeeze=False)
    for ax, gt in zip(axes[0], gts):
        sns.lineplot(data=df[df["ground truth"] == gt], x="FPR", y="TPR", hue="method", drawstyle="steps-post",
                     ax=ax, estimator=None, sort=False, legend=ax is axes[0][-1])
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
        ax.set(title=f"{task}: edge ROC vs {gt} ground truth", xlim=(0, 1), ylim=(0, 1.01))
    leg = axes[0][-1].get_legend()
    if leg is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=7, title=None)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def render(out_dir) -> Path:
    store = ResultStore(out_dir)
    records = store.records()
    df = store.frame()
    out = Path(out_dir)
    lines = ["# circuit-bench report", ""]
    import torch

    seeds = sorted({r.get("seed") for r in records if r.get("seed") is not None})
    devices = sorted({r.get("device") for r in records if r.get("device")})
    lines += [
        f"- records: {len(records)} (task x method x variant)",
        f"- seed(s): {', '.join(map(str, seeds))}; device(s): {', '.join(devices)}; torch {torch.__version__}; python {platform.python_version()}",
        "- AUC: scikit-learn ROC AUC of |score| (ties count 1/2); pessimistic: ACDC's staircase over Pareto points, "
        "tied edges entering together (acdc-tasks.md §8.3). Node scores: the largest |score| of a node's edges.",
        "",
    ]
    ok = df[df["status"] == "ok"] if len(df) else df
    for task in sorted({r["task"] for r in records}):
        trecs = [r for r in records if r["task"] == task and r.get("status") == "ok"]
        lines += [f"## {task}", ""]
        sub = ok[ok["task"] == task]
        if len(sub):
            n_ex = {r.get("n_examples") for r in trecs}
            lines.append(f"{len(trecs)} runs; {', '.join(map(str, sorted(x for x in n_ex if x)))} examples; ablation {sub['ablation'].iloc[0]}.")
            lines.append("")
            pv = sub.pivot_table(index=["method", "variant"], columns=["ground_truth", "level"],
                                 values=["auc", "pessimistic_auc"], aggfunc="first")
            secs = sub.groupby(["method", "variant"])["seconds"].first()
            cols = [(m, g, l) for g in sorted(sub["ground_truth"].dropna().unique()) for l in ("edge", "node") for m in ("auc", "pessimistic_auc")]
            head = ["method", "variant"] + [f"{g} {l} {'AUC' if m == 'auc' else 'pess.'}" for m, g, l in cols] + ["seconds"]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            for (m, v), row in pv.iterrows():
                vals = [_fmt(row.get(c)) for c in cols]
                lines.append(f"| {m} | {v} | " + " | ".join(vals) + f" | {secs.get((m, v), float('nan')):.2f} |")
            lines.append("")
            png = out / f"roc_{task}.png"
            if _plot_roc(trecs, task, png):
                lines += [f"![ROC curves for {task}]({png.name})", ""]
        bad = [r for r in records if r["task"] == task and r.get("status") != "ok"]
        for r in bad:
            lines.append(f"- {r['method']}/{r['variant']}: **{r.get('status')}**: {r.get('error')}")
        if bad:
            lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
