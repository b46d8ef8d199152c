"""Bootstrap intervals of every AUC of a method's result, over resampled examples.

Methods whose scores are sums over examples (they declare `per_example`; every gradient method
and exact patching, since the model treats examples independently) run once with
`per_example=True` and are resampled by summing resampled rows; the others re-run on each
resampled dataset (at most `max_reruns` times, they are costly).
"""
from __future__ import annotations

import numpy as np
import torch

from harness.eval.scoring import score_edges_and_nodes
from harness.methods.registry import as_scores


def score_all(task, graph, result, floor: float = 0.0, cancelled=None) -> dict:
    """(ground truth, level) -> RocResult for scores [n_edges] or a bool family [k, n_edges]
    (`floor`, `cancelled`: see `score_edges_and_nodes`)."""
    out = {}
    for gt_name, gt in task.ground_truths().items():
        for level, r in score_edges_and_nodes(graph, result, gt.edge_mask(graph), floor, cancelled).items():
            out[(gt_name, level)] = r
    return out


def bootstrap_intervals(spec, engine, data, variant, task, n_boot: int, seed: int, max_reruns=None, floor: float = 0.0,
                        per_example=None) -> dict:
    """(ground truth, level) -> 95% percentile intervals of the AUC and pessimistic AUC.
    `per_example`: the variant's [batch, n_edges] scores when already computed."""
    g = torch.Generator().manual_seed(10_000 + seed)
    per_ex = per_example
    if per_ex is None and spec.supports_per_example(variant):
        per_ex = spec.run(engine, data, variant, seed=seed, per_example=True).detach().double().cpu()
    if per_ex is None and max_reruns is not None:
        n_boot = min(n_boot, max_reruns)
    samples: dict = {}
    for _ in range(n_boot):
        idx = torch.randint(0, data.n, (data.n,), generator=g)
        if per_ex is not None:
            res = per_ex[idx].sum(0)
        else:
            res = as_scores(spec.run(engine, data.subset(idx), variant, seed=seed))
        try:
            scored = score_all(task, engine.graph, res, floor)
        except ValueError:
            continue
        for key, r in scored.items():
            samples.setdefault(key, []).append((r.auc, r.pessimistic_auc))
    out = {}
    for key, vals in samples.items():
        a = np.array(vals)
        out[key] = {"auc_lo": float(np.percentile(a[:, 0], 2.5)), "auc_hi": float(np.percentile(a[:, 0], 97.5)),
                    "pessimistic_auc_lo": float(np.percentile(a[:, 1], 2.5)),
                    "pessimistic_auc_hi": float(np.percentile(a[:, 1], 97.5)), "n_bootstrap": len(vals)}
    return out
