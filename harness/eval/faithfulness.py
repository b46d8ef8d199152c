"""Faithfulness of the circuits a ranking implies: how much of the model's behaviour the top-k
edges keep when every other edge is patched (MIB's definition, Mueller et al. 2025;
docs/scoring.md#faithfulness-cpr-and-cmd).

    f(C) = (m(C) - m(empty)) / (m(full) - m(empty))

with m the task metric (ACDC's sign) against the clean outputs, m(full) the clean model, m(empty)
every edge patched. CPR is the area under f over the circuit-size fractions (higher is better),
CMD the area under |1 - f| (lower is better); both by the trapezoid rule on the fraction axis.
It needs no ground truth, so it is reported for every task (the only score Induction has).
"""
from __future__ import annotations

import numpy as np
import torch

from harness.core.evaluator import PatchedObjective

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@torch.no_grad()
def faithfulness(engine, data, scores: torch.Tensor, fractions=FRACTIONS, max_rows: int = 256,
                 examples_per_pass: int | None = None) -> dict:
    """f at each fraction of edges kept (top |score| first, ties by edge index), CPR and CMD.
    `examples_per_pass`: evaluate the examples that many at a time, one patch per forward (the
    memory a traced run of that many examples may take; the metric is a mean over examples, so
    the chunks' means weighted by size are the batch's)."""
    E = engine.graph.n_edges
    order = torch.argsort(scores.detach().abs().double().cpu(), descending=True, stable=True)
    ks = sorted({max(1, int(round(f * E))) for f in fractions} | {0, E})
    patches = torch.ones(len(ks), E, dtype=engine.w.dtype)
    for i, k in enumerate(ks):
        patches[i, order[:k]] = 0.0  # kept edges are clean; the rest are patched
    step = examples_per_pass if examples_per_pass and examples_per_pass < data.n else data.n
    if step < data.n:
        max_rows = min(max_rows, step)
    vals = 0.0
    for part, share in data.passes(step):
        mean = PatchedObjective(engine, part, "metric", max_rows=max_rows)(patches).double().cpu().numpy()
        vals = vals + mean * share
    m_empty, m_full = vals[0], vals[-1]
    denom = m_full - m_empty
    f = (vals - m_empty) / denom if abs(denom) > 1e-12 else np.full_like(vals, np.nan)
    x = np.array(ks) / E
    return {
        "fractions": x.tolist(), "f": f.tolist(), "metric": vals.tolist(),
        "cpr": float(np.trapezoid(f, x)), "cmd": float(np.trapezoid(np.abs(1 - f), x)),
    }
