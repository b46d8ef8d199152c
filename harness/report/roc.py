"""ROC figures a reader can read: one curve per method family per panel, and a companion figure
with every variant.

A panel is one reference and one ground truth (edge level; results are compared only within one
reference). Its curves are each method's best variant by AUC, in distinct colours and line
styles, the AUC in the label; methods whose best rankings give the same curve share one line and
one label, so none hides behind another. The axes extend past 0 and 1, so a perfect curve is not
drawn on the frame.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

STYLES = ("-", "--", "-.", ":")
CAPTION = ("Edge ROC curves, one panel per reference and ground truth. Each line is a method's best variant "
           "by AUC (AUC in the label); methods whose curves are identical share a line. Edges whose scores tie "
           "(closer than the run's tie floor) enter the circuit together, so the curve crosses a tied block as "
           "one diagonal segment, and each pair in it counts 1/2 in the AUC. The companion figure shows every "
           "variant of each method.")


def _curves(records: list, level: str = "edge") -> dict:
    """(reference, ground truth) -> [(method, variant, auc, fpr, tpr)]."""
    out: dict = {}
    for rec in records:
        for r in rec.get("rows", []):
            if r.get("level") == level and r.get("roc") and r.get("auc") is not None and np.isfinite(r["auc"]):
                out.setdefault((rec["ablation"], r["ground_truth"]), []).append(
                    (rec["method"], rec["variant"], float(r["auc"]), tuple(r["roc"]["fpr"]), tuple(r["roc"]["tpr"])))
    return out


def best_per_method(curves: list) -> list:
    """[(label, auc, fpr, tpr)]: each method's best variant, identical curves merged, best first."""
    best: dict = {}
    for m, v, auc, fpr, tpr in sorted(curves, key=lambda c: (-c[2], c[0], c[1])):
        best.setdefault(m, (v, auc, fpr, tpr))
    merged: dict = {}
    for m, (v, auc, fpr, tpr) in best.items():
        merged.setdefault((fpr, tpr), (auc, []))[1].append(m)
    return [(" = ".join(ms) + f" (AUC {auc:.3f})", auc, fpr, tpr)
            for (fpr, tpr), (auc, ms) in sorted(merged.items(), key=lambda kv: -kv[1][0])]


def _draw(ax, lines, palette):
    for i, (label, _, fpr, tpr) in enumerate(lines):
        ax.plot(fpr, tpr, drawstyle="steps-post", color=palette[i % len(palette)], ls=STYLES[(i // len(palette)) % 4]
                if len(lines) > len(palette) else STYLES[i % len(STYLES)], lw=1.6, label=label)
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.03), xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(fontsize=6.5, loc="lower right", framealpha=0.85)


def fixed_layout(fig, nrow: int, ncol: int, top: float = 0.35) -> None:
    """Margins and gaps in inches for a grid of axes with titles, labels and ticks: what
    `tight_layout` finds by drawing the whole figure once more before saving it (a third of the
    report's ROC time). top: inches above the first row (a suptitle needs more)."""
    W, H = fig.get_size_inches()
    left, right, bottom, gap_w, gap_h = 0.65, 0.15, 0.55, 0.75, 0.85
    ax_w = (W - left - right - (ncol - 1) * gap_w) / ncol
    ax_h = (H - top - bottom - (nrow - 1) * gap_h) / nrow
    fig.subplots_adjust(left=left / W, right=1 - right / W, bottom=bottom / H, top=1 - top / H,
                        wspace=gap_w / ax_w, hspace=gap_h / ax_h)


def plot_roc(records: list, task: str, path: Path, plt, sns) -> bool:
    curves = _curves(records)
    if not curves:
        return False
    panels = sorted(curves)
    ncol = min(3, len(panels))
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 4.2 * nrow), squeeze=False)
    palette = sns.color_palette("tab10")
    for ax, (ref, gt) in zip(axes.flat, panels):
        _draw(ax, best_per_method(curves[(ref, gt)]), palette)
        ax.set_title(f"{task}: {ref} reference, {gt} GT", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fixed_layout(fig, nrow, ncol)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_roc_variants(records: list, task: str, ground_truth: str, path: Path, plt, sns) -> bool:
    """Every variant of each method with more than one, for one ground truth: rows are
    references, columns methods."""
    curves = {k: v for k, v in _curves(records).items() if k[1] == ground_truth}
    refs = sorted({k[0] for k in curves})
    methods = sorted({c[0] for v in curves.values() for c in v
                      if len({d[1] for d in v if d[0] == c[0]}) > 1})
    if not methods:
        return False
    fig, axes = plt.subplots(len(refs), len(methods), figsize=(4.4 * len(methods), 4.0 * len(refs)), squeeze=False)
    palette = sns.color_palette("tab10")
    for i, ref in enumerate(refs):
        for j, m in enumerate(methods):
            ax = axes[i][j]
            mine = sorted((c for c in curves.get((ref, ground_truth), []) if c[0] == m), key=lambda c: (-c[2], c[1]))
            merged: dict = {}
            for _, v, auc, fpr, tpr in mine:
                merged.setdefault((fpr, tpr), (auc, []))[1].append(v)
            lines = [(" = ".join(vs) + f" ({auc:.3f})", auc, fpr, tpr) for (fpr, tpr), (auc, vs) in merged.items()]
            if not lines:
                ax.axis("off")
                continue
            _draw(ax, lines, palette)
            ax.set_title(f"{m}: {ref} reference", fontsize=9)
    fig.suptitle(f"{task}: every variant ({ground_truth} GT, edge level; identical curves share a line)", fontsize=9)
    fixed_layout(fig, len(refs), len(methods), top=0.6)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
