"""Layer x head heatmaps of `harness.eval.head_maps.HeadMaps`, the ground-truth heads outlined."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from harness.eval.head_maps import MAPS, HeadMaps  # noqa: E402


def plot_head_maps(hm: HeadMaps, path, title: str) -> Path:
    """One panel per map (MAPS), rows = layers, columns = heads; ground-truth heads boxed."""
    fig, axes = plt.subplots(1, len(MAPS), figsize=(4.2 * len(MAPS), 4.2), constrained_layout=True)
    for ax, name in zip(axes, MAPS):
        m = hm.maps[name].numpy()
        diverging = name == "direct effect"
        lim = abs(m).max() or 1.0
        sns.heatmap(m, ax=ax, cmap="RdBu_r" if diverging else "viridis", center=0 if diverging else None,
                    vmin=-lim if diverging else None, vmax=lim if diverging else None, square=True,
                    cbar_kws={"shrink": 0.7})
        for L, h in hm.ground_truth_heads:
            ax.add_patch(Rectangle((h, L), 1, 1, fill=False, edgecolor="red", linewidth=1.6))
        ax.set_title(name if not name.startswith("dL") else f"||{name}||")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.suptitle(f"{title} (loss: {hm.target}; red boxes: ground-truth heads)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
