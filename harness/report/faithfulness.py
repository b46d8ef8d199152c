"""Faithfulness curves f(k): the task metric with the top-k edges kept and the rest patched,
normalised (1 = the model, 0 = everything patched), per task: one panel per reference, each
method's variant with the highest CPR."""
from __future__ import annotations

from pathlib import Path

from harness.report.roc import STYLES


def plot_faithfulness(records: list, task: str, path: Path, plt, sns) -> bool:
    by_ref: dict = {}
    for rec in records:
        f = rec.get("faithfulness")
        if rec.get("status") == "ok" and f and f.get("fractions"):
            best = by_ref.setdefault(rec["ablation"], {})
            if rec["method"] not in best or f["cpr"] > best[rec["method"]][1]["cpr"]:
                best[rec["method"]] = (rec["variant"], f)
    if not by_ref:
        return False
    refs = sorted(by_ref)
    fig, axes = plt.subplots(1, len(refs), figsize=(5.2 * len(refs), 4.0), squeeze=False)
    palette = sns.color_palette("tab10")
    for ax, ref in zip(axes[0], refs):
        for i, (m, (v, f)) in enumerate(sorted(by_ref[ref].items(), key=lambda kv: -kv[1][1]["cpr"])):
            ax.plot(f["fractions"], f["f"], color=palette[i % 10], ls=STYLES[(i // 10) % 4], lw=1.5, marker=".",
                    ms=3, label=f"{m}/{v} (CPR {f['cpr']:.2f}, CMD {f['cmd']:.2f})")
        ax.axhline(1, ls=":", c="grey", lw=0.8)
        ax.set(xscale="log", xlabel="fraction of edges kept (top-k by |score|)", ylabel="f(k)",
               title=f"{task}: {ref} reference")
        ax.legend(fontsize=6.5, loc="best", framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
