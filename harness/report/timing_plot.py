"""The timing figure: every method's seconds as a ratio to one forward+backward of the same model
and batch, all models on one shared log axis, with the EAP target drawn per model and skipped
cases marked with their reason (not silently left out)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from harness.bench.suite import EAP_TARGET


def plot_timing(t: pd.DataFrame, path: Path, plt, sns) -> bool:
    t = t[~t["method"].isin(["forward-backward"]) | (t["variant"] != "activations")].copy()  # the unit itself
    if t.empty or "ratio_to_fwd_bwd" not in t:
        return False
    t["label"] = t["method"] + "/" + t["variant"].astype(str)
    labels = list(dict.fromkeys(t["label"]))
    models = sorted(t["model"].unique())
    ratios = t["ratio_to_fwd_bwd"].astype(float)
    right = float(np.nanmax(ratios)) * 3 if ratios.notna().any() else 10.0
    fig, ax = plt.subplots(figsize=(11, 0.3 * len(labels) + 2.0))
    colors = dict(zip(models, sns.color_palette("tab10", n_colors=len(models))))
    markers = dict(zip(models, "osD^vP*X"))
    y_of = {lab: i for i, lab in enumerate(labels)}
    offsets = dict(zip(models, np.linspace(-0.25, 0.25, len(models)) if len(models) > 1 else [0.0]))
    skipped_notes = []
    for m in models:
        q = t[t["model"] == m]
        done = q[q["ratio_to_fwd_bwd"].notna()]
        ax.scatter(done["ratio_to_fwd_bwd"], [y_of[x] + offsets[m] for x in done["label"]], color=colors[m],
                   marker=markers[m], s=22, label=m, zorder=3)
        extrap = done[done["extrapolated"].astype(bool)] if "extrapolated" in done else done.iloc[:0]
        ax.scatter(extrap["ratio_to_fwd_bwd"], [y_of[x] + offsets[m] for x in extrap["label"]], facecolors="none",
                   edgecolors="k", marker="o", s=60, lw=0.6, zorder=2)
        for _, r in q[q["ratio_to_fwd_bwd"].isna()].iterrows():
            y = y_of[r["label"]] + offsets[m]
            ax.scatter([right], [y], color=colors[m], marker="x", s=30, zorder=3)
            skipped_notes.append(f"{m} {r['label']}: {r.get('note') or r.get('status') or 'not measured'}")
        fwd = q[(q["method"] == "forward") & (q["variant"] == "no-grad")]["ratio_to_fwd_bwd"]
        if len(fwd) and pd.notna(fwd.iloc[0]) and "eap/noising" in y_of:
            bound = EAP_TARGET * (1 + float(fwd.iloc[0]))
            y = y_of["eap/noising"] + offsets[m]
            ax.plot([bound, bound], [y - 0.2, y + 0.2], color=colors[m], lw=2)
    ax.axvline(1, ls=":", c="grey", lw=1)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="seconds / one forward+backward (same model and batch; log scale)",
           xlim=(0.1, right * 1.6))
    ax.scatter([], [], facecolors="none", edgecolors="k", s=60, lw=0.6, label="extrapolated")
    ax.scatter([], [], color="k", marker="x", s=30, label="skipped (right edge)")
    ax.plot([], [], color="k", lw=2, label=f"EAP target: {EAP_TARGET:g} x (fwd+bwd + fwd)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), framealpha=0.9)
    ax.set_title("Cost per method relative to one forward+backward", fontsize=9)
    if skipped_notes:
        text = textwrap.fill("x skipped: " + "; ".join(sorted(set(skipped_notes))), 150)
        fig.text(0.01, 0.005, text, fontsize=6.5, va="bottom")
        fig.tight_layout(rect=(0, 0.03 * (text.count("\n") + 1), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
