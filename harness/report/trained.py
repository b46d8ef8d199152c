"""The compiled-versus-trained section of a report (docs/trained.md#compiled-versus-trained).

`plot_change`: one row per method variant, sorted by compiled mean AUC; the compiled mean (open
circle) joined to the trained mean (filled) by a line, red where the drop is significant, with
the mean change and its interval written beside it. One panel per reference, never pooled.
`trained_items(results, out)` gives render.py blocks and writes `compiled_vs_trained.csv`
(every program and method variant, both AUCs) to `out`. Statistics: harness.eval.trained_compare.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.eval import trained_compare as T
from harness.report.suite import PNG_META, reference_panels


def plot_change(s: pd.DataFrame, path: Path) -> bool:
    """Edge level only (`summary` rows of level "edge")."""
    s = s[s["level"] == "edge"].dropna(subset=["compiled", "trained"])
    if s.empty:
        return False
    plt, _, fig, axes, refs = reference_panels(s, width=7.0, row_height=0.26, pad=1.5)
    for ax, ref in zip(axes.flat, refs):
        d = s[s["reference"] == ref].sort_values(["compiled", "method", "variant"]).reset_index(drop=True)
        for y, r in d.iterrows():
            color = {"degrades": "#c0504d", "improves": "#4c9a5b"}.get(r["verdict"], "#7f7f7f")
            ax.plot([r["compiled"], r["trained"]], [y, y], color=color, lw=1.5)
            ax.scatter([r["compiled"]], [y], facecolors="white", edgecolors="black", s=22, zorder=3)
            ax.scatter([r["trained"]], [y], color=color, s=22, zorder=3)
            ci = (f" [{r['change_lo']:+.2f}, {r['change_hi']:+.2f}]" if np.isfinite(r["change_lo"]) else "")
            ax.text(1.01, y, f"{r['change']:+.3f}{ci}", va="center", fontsize=6, transform=ax.get_yaxis_transform())
        ax.set_yticks(range(len(d)), [f"{m} {v}" for m, v in zip(d["method"], d["variant"])], fontsize=7)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.7, len(d) - 0.3), xlabel="mean edge AUC over programs",
               title=f"{ref} reference, {int(d['n'].max())} programs")
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("Compiled (open) versus SIIT-trained (filled) edge AUC\nred: significantly worse when trained, green: "
                 "better; right: mean change [95% interval]", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=PNG_META, bbox_inches="tight")
    plt.close(fig)
    return True


def _fmt(x, digits=3) -> str:
    return "" if not np.isfinite(x) else f"{x:.{digits}f}"


def trained_items(results: pd.DataFrame, out: Path) -> list:
    """The section's blocks (empty when the run has no compiled/trained pair)."""
    p = T.pairs(results)
    if p.empty:
        return []
    p.to_csv(out / "compiled_vs_trained.csv", index=False)
    s = T.summary(p)
    B = [("h2", "Compiled versus SIIT-trained models"),
         ("p", f"{p['program'].nunique()} programs, each as its compiled tracr model and as an ordinary transformer "
               "trained by SIIT to implement the same circuit (docs/trained.md). Same data, reference and objective; "
               "each side scored against the same circuit edges (compiled: structural, trained: correspondence). "
               "The trained graphs have more heads, hence more off-circuit edges. SIIT constrains nodes, not "
               "edges, so the trained models' edge-level ground truth is a hypothesis (docs/trained.md#ground-truth); "
               "the node level is what SIIT trains. Every program's AUCs: compiled_vs_trained.csv.")]
    B += [("p", line) for line in T.answer(s)]
    png = out / "compiled_vs_trained.png"
    if plot_change(s, png):
        B.append(("img", png))
    table = pd.DataFrame({
        "reference": s["reference"], "level": s["level"], "method": s["method"], "variant": s["variant"], "programs": s["n"],
        "compiled": s["compiled"].map(_fmt), "trained": s["trained"].map(_fmt),
        "change [95% CI]": [f"{c:+.3f} [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else f"{c:+.3f}"
                            for c, lo, hi in zip(s["change"], s["change_lo"], s["change_hi"])],
        "Holm p": s["p_holm"].map(lambda x: _fmt(x, 4)), "verdict": s["verdict"]})
    B.append(("table", table))
    return B
