"""Layer x head maps of a ranking's node scores, the ground truth's heads outlined.

A head's score is the largest |score| of the edges touching any of its nodes (q/k/v inputs,
q/k/v, output), the node-score rule of node-level ROC (`Graph.node_scores`), so the map shows
where a ranking puts its weight without choosing a threshold. Models with MLPs get one more
column for each layer's MLP. Each panel is scaled to its own largest score: methods' scores have
different units, and the map compares places, not methods' magnitudes.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.core.graph import node_place

CAPTION = ("Where each method's ranking puts its weight: per layer and head (and MLP, last column), the largest "
           "|score| of any edge touching that head's nodes, scaled to each panel's largest; red boxes: heads and MLPs "
           "the ground truth touches. Best variant of each method by edge AUC, as in the headline; random and "
           "structure (scores that measure nothing in the model) and ACDC (a sweep of circuits, not scores) are not "
           "shown.")


@lru_cache(maxsize=1 << 14)  # a graph has few nodes (GPT-2: ~1,200) and many edges
def _slot(node: str, n_heads: int):
    """(layer, column) of a node in the map, or None for inputs and the output."""
    p = node_place(node)
    if p.head is not None:
        return p.layer, p.head
    if p.role in ("mlp_in", "mlp_out"):
        return p.layer, n_heads
    return None


def head_scores(endpoints: list, scores, n_layers: int, n_heads: int, mlp: bool) -> np.ndarray:
    """[n_layers, n_heads (+1 with `mlp`)]: the largest |score| of the edges touching each slot
    (MLP nodes are left out without `mlp`)."""
    out = np.zeros((n_layers, n_heads + int(mlp)))
    for (s, r), x in zip(endpoints, np.abs(np.asarray(scores, dtype=np.float64))):
        for node in (s, r):
            slot = _slot(node, n_heads)
            if slot is not None and slot[1] < out.shape[1] and x > out[slot]:
                out[slot] = x
    return out


def touched_slots(endpoints: list, edges, n_heads: int) -> set:
    """{(layer, column)} of the slots the edges `edges` (indices) touch."""
    slots = (_slot(node, n_heads) for i in edges for node in endpoints[i])
    return {s for s in slots if s is not None}


def plot_head_scores(panels: dict, truth: set, n_heads: int, mlp: bool, title: str, path: Path, plt, sns) -> bool:
    """One heatmap per (reference, method) in `panels` {(reference, method): (variant, [layers,
    columns])}: a row of panels per reference, a column per method; `truth` outlined inside each
    cell (an outline on the cell's edge would also seem to mark its neighbours)."""
    from matplotlib.patches import Rectangle

    if not panels:
        return False
    refs = sorted({ref for ref, _ in panels})
    labels = sorted({lab for _, lab in panels})
    n_layers, n_cols = next(iter(panels.values()))[1].shape
    w = max(1.6, 0.22 * n_cols + 0.9)
    h = max(1.5, 0.22 * n_layers + 0.9)
    fig, axes = plt.subplots(len(refs), len(labels), figsize=(w * len(labels), (h + 0.5) * len(refs) + 0.6),
                             squeeze=False, constrained_layout=True)  # room for each panel's three-line title
    cols = [str(i) for i in range(n_heads)] + (["mlp"] if mlp else [])
    for i, ref in enumerate(refs):
        for j, lab in enumerate(labels):
            ax = axes[i, j]
            if (ref, lab) not in panels:
                ax.axis("off")
                continue
            variant, m = panels[(ref, lab)]
            top = m.max()
            # one mesh per panel (seaborn's heatmap draws the figure to place its ticks: 1 s a panel
            # under constrained layout, 30 s for a 28-panel map); layer 0 at the bottom, as in the
            # circuit drawings
            ax.pcolormesh(m / top if top > 0 else m, vmin=0, vmax=1, cmap="viridis", edgecolors="white", linewidth=0.2)
            ax.set_aspect("equal")
            ax.set_xticks(np.arange(len(cols)) + 0.5, cols)
            ax.set_yticks(np.arange(n_layers) + 0.5, range(n_layers))
            for side in ax.spines.values():
                side.set_visible(False)
            for L, c in truth:
                ax.add_patch(Rectangle((c + 0.1, L + 0.1), 0.8, 0.8, fill=False, edgecolor="red", linewidth=1.4))
            ax.set_title(f"{lab}\n{variant}\n{ref}", fontsize=7)
            ax.tick_params(labelsize=6, length=0)
            ax.set_xlabel("head" if j == 0 and i == len(refs) - 1 else "", fontsize=6)
            ax.set_ylabel("layer" if j == 0 else "", fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
