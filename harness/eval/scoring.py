"""Score an edge ranking (or a family of circuits) against a ground-truth circuit.

Two AUCs, both reported (docs/scoring.md):
- `auc`: scikit-learn's ROC AUC of |score| against membership; tied scores count 1/2, which is
  the Mann-Whitney statistic (the usual ranking AUC).
- `pessimistic_auc`: ACDC's staircase. Circuits are "every edge with |score| >= t" for every
  distinct t (tied edges enter together), plus (0,0) and (1,1); points that another point
  beats on both axes are dropped (Pareto filter); the area is sum (1 - FPR_i)(TPR_i - TPR_{i-1})
  with points sorted by (FPR, TPR): between measured points TPR stays at the lower value, so a
  tied group scores as if its negatives came first. With distinct scores the two AUCs are equal.

A family of circuits (ACDC's threshold sweep) has no ranking: its points are the circuits
themselves; `auc` is then the trapezoid under the Pareto points (sklearn.metrics.auc).
Round-off never decides a ranking (docs/scoring.md#ties-round-off-and-degenerate-objectives): two
|scores| closer than the run's tie floor (measured: `harness.eval.round_off`) are a tie, counted
1/2 by the AUC and 0 by the pessimistic AUC. Ties are pairwise (`pair_counts`), not chained, so a
dense ranking is not collapsed by a chain of near neighbours.
Node-level: node scores are the largest |score| of the edges a node touches (see
`Graph.node_scores`), so node ROC follows from the edge ranking by ACDC's "present node" rule.

Not every AUC means something: `judge_ranking` / `judge_family` (what `score_edges_and_nodes`,
and so every run, uses) report those that do not as n/a (NaN) with the reason in `note`: an AUC needs at least MIN_NEGATIVES negatives (tracr-greaterthan's structural
circuit holds 10 of its 11 nodes, so one negative would decide its node AUC), and a ranking in
which every item scores the same ranks nothing (a degenerate objective: e.g. a metric whose
gradient is zero at the clean point).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import auc as trapezoid_auc
from sklearn.metrics import roc_curve


MIN_NEGATIVES = 5


@dataclass
class RocResult:
    auc: float
    pessimistic_auc: float
    fpr: np.ndarray
    tpr: np.ndarray
    n_items: int
    n_positive: int
    note: str = ""  # why the AUCs are n/a (NaN), if they are

    def as_dict(self) -> dict:
        return {"auc": self.auc, "pessimistic_auc": self.pessimistic_auc, "n_items": self.n_items,
                "n_positive": self.n_positive, "note": self.note}


def not_available(n_items: int, n_positive: int, why: str) -> RocResult:
    """An AUC that would not mean anything: NaN, with the reason."""
    return RocResult(float("nan"), float("nan"), np.array([0.0, 1.0]), np.array([0.0, 1.0]), n_items, n_positive, why)


def _too_few_negatives(n_items: int, n_positive: int):
    n_neg = n_items - n_positive
    if n_neg < MIN_NEGATIVES:
        return not_available(n_items, n_positive, f"n/a: {n_neg} negative(s), an AUC needs at least {MIN_NEGATIVES}")
    return None


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Drop a point if another has strictly smaller FPR and strictly larger TPR; sort the rest
    by (FPR, TPR). `points` is [n, 2] of (fpr, tpr)."""
    pts = np.unique(np.asarray(points, dtype=float), axis=0)  # sorted by (fpr, tpr)
    if len(pts) == 0:
        return pts
    x, y = pts[:, 0], pts[:, 1]
    first = np.searchsorted(x, x, side="left")  # where each point's FPR group starts
    best = np.concatenate([[-np.inf], np.maximum.accumulate(y)])[first]  # max TPR at strictly smaller FPR
    return pts[~(best > y)]


def pessimistic_auc(points: np.ndarray) -> float:
    """ACDC's `pessimistic_auc` on Pareto-filtered points (sorted by FPR, then TPR)."""
    pts = pareto_front(points)
    x, y = pts[:, 0], pts[:, 1]
    if np.any(np.diff(y) < -1e-12):
        raise AssertionError("TPR must be non-decreasing along the Pareto front")
    return float(np.sum((1 - x[1:]) * np.diff(y)))


def pair_counts(pos_scores, neg_scores, floor: float = 0.0) -> tuple:
    """(below, within) [n_pos] int arrays: for each positive, the negatives whose |score| is below
    its own by more than `floor` (ranked under it for certain) and those within `floor` of it (a
    tie: round-off could put them either side). Ties are pairwise, never chained: a and b within
    the floor and b and c within the floor do not make a and c a tie."""
    a_pos = np.abs(np.asarray(pos_scores, dtype=float))
    neg = np.sort(np.abs(np.asarray(neg_scores, dtype=float)))
    below = np.searchsorted(neg, a_pos - floor, side="left")
    upto = np.searchsorted(neg, a_pos + floor, side="right")
    return below, upto - below


def ranks_nothing(scores, floor: float = 0.0) -> bool:
    """Whether every pair of |scores| ties (they all lie within `floor` of each other)."""
    a = np.abs(np.asarray(scores, dtype=float))
    return a.size == 0 or float(a.max() - a.min()) <= floor


def _as_array(scores) -> np.ndarray:
    return np.asarray(torch.as_tensor(scores).detach().to(torch.float64).cpu(), dtype=float)


def judge_ranking(scores, positive, floor: float = 0.0) -> RocResult:
    """`score_ranking`, or n/a with the reason where the AUC would not mean anything: too few
    negatives, or every item scoring the same within `floor`."""
    pos = np.asarray(torch.as_tensor(positive).cpu(), dtype=bool)
    short = _too_few_negatives(len(pos), int(pos.sum()))
    if short is not None:
        return short
    if ranks_nothing(_as_array(scores), floor):
        return not_available(len(pos), int(pos.sum()), "n/a: degenerate, every item scores the same"
                             + (" within the tie floor" if floor > 0 else ""))
    return score_ranking(scores, positive, floor)


def judge_family(circuits, positive) -> RocResult:
    """`score_family`, or n/a where there are too few negatives."""
    pos = np.asarray(torch.as_tensor(positive).cpu(), dtype=bool)
    return _too_few_negatives(len(pos), int(pos.sum())) or score_family(circuits, positive)


def _points_from_ranking(scores: np.ndarray, positive: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """(FPR, TPR) of every threshold circuit, a negative entering `floor` early (`|score| + floor
    >= t`): the pessimistic reading of ties, whose staircase area is the pessimistic AUC."""
    a = np.abs(scores) + floor * ~positive
    fpr, tpr, _ = roc_curve(positive, a, drop_intermediate=False)
    return np.stack([fpr, tpr], 1)


def score_ranking(scores, positive, floor: float = 0.0) -> RocResult:
    """`scores` [n] (any sign; |score| ranks; two |scores| within `floor` tie), `positive` bool [n].
    AUC: the Mann-Whitney statistic, a tie counting 1/2; pessimistic: ties count 0 (ACDC's
    staircase, every tied negative ranked first)."""
    s = np.asarray(torch.as_tensor(scores).detach().to(torch.float64).cpu(), dtype=float)
    pos = np.asarray(torch.as_tensor(positive).cpu(), dtype=bool)
    if s.shape != pos.shape:
        raise ValueError(f"scores {s.shape} and ground truth {pos.shape} differ in shape")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    n_pos = int(pos.sum())
    if n_pos == 0 or n_pos == len(pos):
        raise ValueError("ground truth must contain some but not all items")
    below, within = pair_counts(s[pos], s[~pos], floor)
    pairs = n_pos * (len(pos) - n_pos)
    pts = np.vstack([[0.0, 0.0], _points_from_ranking(s, pos, floor), [1.0, 1.0]])
    return RocResult(
        auc=float((below.sum() + within.sum() / 2) / pairs),
        pessimistic_auc=float(below.sum() / pairs),
        fpr=pts[:, 0], tpr=pts[:, 1], n_items=len(pos), n_positive=n_pos,
    )


def score_family(circuits, positive) -> RocResult:
    """`circuits` bool [k, n] (one row per circuit of a sweep), `positive` bool [n]."""
    c = np.asarray(torch.as_tensor(circuits).cpu(), dtype=bool)
    pos = np.asarray(torch.as_tensor(positive).cpu(), dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ground truth must contain some but not all items")
    tpr = (c & pos).sum(1) / n_pos
    fpr = (c & ~pos).sum(1) / n_neg
    pts = np.vstack([[0.0, 0.0], np.stack([fpr, tpr], 1), [1.0, 1.0]])
    front = pareto_front(pts)
    return RocResult(
        auc=float(trapezoid_auc(front[:, 0], front[:, 1])),
        pessimistic_auc=pessimistic_auc(pts),
        fpr=front[:, 0], tpr=front[:, 1], n_items=len(pos), n_positive=n_pos,
    )


def score_edges_and_nodes(graph, result, gt_edge_mask: torch.Tensor, floor: float = 0.0) -> dict:
    """{"edge": RocResult, "node": RocResult} for a ranking ([n_edges] tensor) or a family
    (bool [k, n_edges] tensor). `floor`: the tie floor."""
    gt_nodes = graph.nodes_touched(gt_edge_mask)
    if isinstance(result, torch.Tensor) and result.dtype == torch.bool and result.dim() == 2:
        nodes = torch.stack([graph.nodes_touched(c) for c in result])
        return {"edge": judge_family(result, gt_edge_mask), "node": judge_family(nodes, gt_nodes)}
    return {"edge": judge_ranking(result, gt_edge_mask, floor),
            "node": judge_ranking(graph.node_scores(result), gt_nodes, floor)}
