"""Bootstrap intervals of every AUC of a method's result, over resampled examples.

Methods whose scores are sums over examples (they declare `per_example`; every gradient method
and exact patching, since the model treats examples independently) run once with
`per_example=True`; each of MIN_RESAMPLES or more resamples is then a weighted sum of those rows
(counts [R, n] @ terms [n, n_edges]), scored by a vectorised ranking AUC equal to
`harness.eval.scoring.score_ranking`. Methods that would have to re-run on every resample (ACDC)
get an interval only when allowed that many re-runs (`max_reruns`); fewer gives none, since a
percentile of a handful of re-runs is not a 95% interval.

An interval is conditional on the clean/corrupted pairing: examples are resampled as pairs, and
the pairing (a derangement drawn once) is held fixed.
"""
from __future__ import annotations

import numpy as np
import torch

from harness.core.ground_truth import GroundTruthError
from harness.eval.scoring import MIN_NEGATIVES, pair_counts, score_edges_and_nodes
from harness.methods.registry import as_scores

MIN_RESAMPLES = 1000


def ground_truth_masks(task, graph) -> tuple:
    """(ground truth -> bool [n_edges], ground truth -> one-line problem): a file that cannot be
    read or names nodes the graph lacks is reported, and the task's other ground truths are used."""
    read = getattr(task, "read_ground_truths", None)  # a task object need only have ground_truths()
    gts, problems = read() if read else (task.ground_truths(), {})
    problems = dict(problems)
    masks = {}
    for name, gt in gts.items():
        try:
            masks[name] = gt.edge_mask(graph)
        except GroundTruthError as e:
            problems[name] = f"{e} (fix or remove the file)"
    return masks, problems


def score_all(task, graph, result, floor: float = 0.0) -> dict:
    """(ground truth, level) -> RocResult for scores [n_edges] or a bool family [k, n_edges]
    (`floor`: the tie floor), for every usable ground truth."""
    out = {}
    for gt_name, mask in ground_truth_masks(task, graph)[0].items():
        for level, r in score_edges_and_nodes(graph, result, mask, floor).items():
            out[(gt_name, level)] = r
    return out


# Above this many items a row, ranking_aucs sorts row by row: one merged argsort of all rows was
# 5x faster than a loop of `pair_counts` at tracr's 38 edges and 5x slower at GPT-2's 32,923.
VECTORISED_MAX_ITEMS = 2048


def _negatives_before(keys: np.ndarray, neg: np.ndarray, negatives_first: bool) -> np.ndarray:
    """[R]: summed over each row's keys [R, P], how many of the row's negatives neg [R, N] sort
    before the key: strictly below it, or also equal to it with `negatives_first` (a stable
    sort of the row's values, ties kept in the order the two blocks are laid side by side)."""
    P, N = keys.shape[1], neg.shape[1]
    both = np.concatenate([neg, keys] if negatives_first else [keys, neg], axis=1)
    order = np.argsort(both, axis=1, kind="stable")
    is_neg = (order < N) if negatives_first else (order >= P)
    return (np.cumsum(is_neg, axis=1) * ~is_neg).sum(1)


def ranking_aucs(scores: np.ndarray, positive: np.ndarray, floor: float = 0.0):
    """(auc [R], pessimistic_auc [R]) of each row of `scores` [R, n] against `positive` bool [n]:
    a positive scores the negatives below it by more than `floor`, plus half those within `floor`
    of it for the AUC (Mann-Whitney) and none for ACDC's pessimistic staircase (`pair_counts`'s
    counts, here for all rows at once: a per-row loop was a million calls in a default run; a
    full ranking's staircase is monotone, so the Pareto filter drops nothing). NaN for a row in
    which every item scores the same within `floor`, or with fewer than MIN_NEGATIVES negatives."""
    pos = np.asarray(positive, dtype=bool)
    P, N = int(pos.sum()), int((~pos).sum())
    R = scores.shape[0]
    auc, pess = np.full(R, np.nan), np.full(R, np.nan)
    if P == 0 or N < MIN_NEGATIVES or R == 0:
        return auc, pess
    a = np.abs(np.asarray(scores, dtype=float))
    ranks = (a.max(1) - a.min(1)) > floor  # rows in which some pair does not tie
    if a.shape[1] > VECTORISED_MAX_ITEMS:  # one sort per row; a row's call overhead is small beside it
        for r in np.flatnonzero(ranks):
            below, within = pair_counts(a[r][pos], a[r][~pos], floor)
            pess[r] = below.sum() / (P * N)
            auc[r] = (below.sum() + within.sum() / 2) / (P * N)
        return auc, pess
    step = max(1, (1 << 22) // a.shape[1])  # rows per pass: the argsort's [rows, n] int64 block <= 32 MiB
    for r0 in range(0, R, step):
        rows = np.flatnonzero(ranks[r0 : r0 + step]) + r0
        if not len(rows):
            continue
        block = a[rows]
        neg, keys = block[:, ~pos], block[:, pos]
        below = _negatives_before(keys - floor, neg, negatives_first=False)  # neg < |pos| - floor
        upto = _negatives_before(keys + floor, neg, negatives_first=True)  # neg <= |pos| + floor
        pess[rows] = below / (P * N)
        auc[rows] = (below + (upto - below) / 2) / (P * N)
    return auc, pess


def _node_rows(graph, rows: torch.Tensor) -> torch.Tensor:
    """`Graph.node_scores` of each row of [R, n_edges]."""
    a = rows.abs()
    out = torch.full((a.shape[0], len(graph.roc_nodes)), float("-inf"), dtype=torch.float64)
    for ends in graph.edge_node_index:
        sel = ends >= 0
        out = out.scatter_reduce(1, ends[sel].expand(a.shape[0], -1), a[:, sel], reduce="amax")
    return out


def _interval(a: np.ndarray, p: np.ndarray) -> dict:
    ok = np.isfinite(a)
    if not ok.any():
        return {}
    return {"auc_lo": float(np.percentile(a[ok], 2.5)), "auc_hi": float(np.percentile(a[ok], 97.5)),
            "pessimistic_auc_lo": float(np.percentile(p[ok], 2.5)), "pessimistic_auc_hi": float(np.percentile(p[ok], 97.5)),
            "n_bootstrap": int(ok.sum())}


def bootstrap_intervals(spec, engine, data, variant, task, n_boot: int, seed: int, max_reruns=None, floor: float = 0.0,
                        per_example=None) -> dict:
    """(ground truth, level) -> 95% percentile intervals of the AUC and pessimistic AUC, or {}
    when fewer than MIN_RESAMPLES resamples are possible. `per_example`: the variant's
    [batch, n_edges] scores when already computed."""
    if n_boot < MIN_RESAMPLES:
        return {}
    g = torch.Generator().manual_seed(10_000 + seed)
    per_ex = per_example
    if per_ex is None and spec.supports_per_example(variant):
        per_ex = spec.run(engine, data, variant, seed=seed, per_example=True).detach().double().cpu()
    idx = torch.randint(0, data.n, (n_boot, data.n), generator=g)
    out = {}
    if per_ex is not None:
        counts = torch.zeros(n_boot, data.n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(n_boot, data.n, dtype=torch.float64))
        rows = counts @ per_ex  # [R, n_edges]
        nodes = _node_rows(engine.graph, rows)
        for gt_name, mask in ground_truth_masks(task, engine.graph)[0].items():
            for level, (sc, positive) in {"edge": (rows, mask), "node": (nodes, engine.graph.nodes_touched(mask))}.items():
                out[(gt_name, level)] = _interval(*ranking_aucs(sc.numpy(), positive.numpy(), floor))
        return {k: v for k, v in out.items() if v}
    if max_reruns is None or max_reruns < MIN_RESAMPLES:
        return {}
    samples: dict = {}
    for i in range(n_boot):
        res = as_scores(spec.run(engine, data.subset(idx[i]), variant, seed=seed))
        for key, r in score_all(task, engine.graph, res, floor).items():
            samples.setdefault(key, []).append((r.auc, r.pessimistic_auc))
    return {k: v for k, v in ((key, _interval(*np.array(vals).T)) for key, vals in samples.items()) if v}
