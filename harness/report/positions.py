"""Where along the prompt each gradient ranking acts: the share of its per-position terms' mass
(`circuit-bench run --per-position`, docs/methods.md#per-position-edge-scores) at each token
position, one row per (method, variant, reference)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CAPTION = ("Per-position edge scores (--per-position): for each ranking, the share of sum over edges of |term| "
           "at each token position (rows sum to 1). A term is an edge's effect through that token alone; "
           "positions are columns of the batch, so they are one role only where the task's prompts share a template.")


def position_shares(records: list) -> tuple:
    """(labels, shares [rows, pos]) of the records holding `position_scores` ([pos][n_edges])."""
    labels, rows = [], []
    for r in sorted(records, key=lambda r: (r["ablation"], r["method"], r["variant"])):
        terms = r.get("position_scores")
        if not isinstance(terms, list) or not terms:
            continue
        mass = np.abs(np.asarray(terms, dtype=np.float64)).sum(1)
        total = mass.sum()
        labels.append(f"{r['method']} {r['variant']} ({r['ablation']})")
        rows.append(mass / total if total > 0 else mass)
    width = max((len(x) for x in rows), default=0)
    shares = np.full((len(rows), width), np.nan)
    for i, x in enumerate(rows):
        shares[i, : len(x)] = x
    return labels, shares


def plot_position_shares(records: list, task: str, path: Path, plt) -> bool:
    labels, shares = position_shares(records)
    if not labels:
        return False
    n, P = shares.shape
    fig, ax = plt.subplots(figsize=(2.5 + 0.45 * P, 0.9 + 0.24 * n))
    mesh = ax.pcolormesh(shares, vmin=0, vmax=1, cmap="viridis", edgecolors="white", linewidth=0.3)
    ax.set_xticks(np.arange(P) + 0.5, range(P))
    ax.set_yticks(np.arange(n) + 0.5, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("token position")
    ax.set_title(f"{task}: share of each ranking's |per-position terms|", fontsize=9)
    fig.colorbar(mesh, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
