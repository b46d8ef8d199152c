"""ACDC (Conmy et al. 2023, Alg. 1; docs/graph-and-patching.md#acdc-algorithm) over a threshold sweep.

For each threshold tau, starting from the full graph: visit receivers in reverse topological
order; for each incoming edge, tentatively patch it (exact edge patching through the engine's
patch, on top of every edge removed so far) and remove it for good if
metric(new) - metric(current) < tau (with `abs_value`: |difference| < tau). The metric is the
task metric with ACDC's sign against clean outputs (`data.metric`, averaged over examples);
tracr has no KL. Each tau gives one circuit (its kept edges): a `CircuitFamily`.

Order (ours; ACDC's own intra-layer order may differ, which can change which of two redundant
edges survives): the output; then per layer, last first: the MLP input, then heads from the
highest index, for each of q, k, v the DIRECT edge (q_input -> q) then the q input's ADDITION
edges; a receiver's senders are tried latest first.

Unreached receivers: like ACDC (`current_node_connected`), a node with no kept path to the
output is not visited; its incoming edges are removed without evaluation (patching them cannot
change the output, so the metric is unchanged). A receiver is reached when: the output always;
an MLP input when its MLP has a kept outgoing edge; a head's q/k/v DIRECT edge when the head
has a kept outgoing edge; a q/k/v input when its DIRECT edge is kept. Nodes left without
inputs keep their outgoing edges (ACDC's default, no `--remove-redundant`).

Thresholds run in parallel: every tau visits the same edges in the same order, so one forward
evaluates the current edge for all of them (rows = thresholds x examples, at most `max_rows`
per forward), and thresholds whose circuits are identical at a step share one evaluation.
Results equal separate runs.
"""
from __future__ import annotations

import numpy as np
import torch

from harness.core.evaluator import PatchedObjective
from harness.methods.registry import CircuitFamily, Timing, register

DEFAULT_THRESHOLDS = tuple(float(t) for t in 10 ** np.linspace(-5, -1, 21))  # for a metric that names none


def visit_order(graph):
    """[(receiver index or None, edge ids to try, reach rule)] in ACDC's visiting order.

    reach rule: ("always",), ("senders", [s, ...]) - one of the senders has a kept outgoing edge
    (a head; an MLP; with grouped-query attention, a k/v head's group) -, or ("edge", e) - edge e
    is kept. A grouped k or v is visited after its group's last head's q, in ACDC's reverse head
    order (ACDC itself has no grouped-query models)."""
    cfg, g = graph.cfg, graph
    steps = []

    def add_edges(r):
        ids = g.dense_index[r, : g.receivers[r].n_upstream]
        return ids.flip(0).tolist()  # latest sender first

    steps.append((add_edges(g.output_receiver), ("always",)))
    for L in reversed(range(cfg.n_layers)):
        if not cfg.attn_only:
            steps.append((add_edges(int(g.mlp_receiver[L])), ("senders", [int(g.mlp_sender[L])])))
        for h in reversed(range(cfg.n_heads)):
            for li, letter in enumerate("qkv"):
                if letter == "q":
                    d, readers = g.direct_index(L, "q", h), [h]
                elif h % cfg.kv_group == 0:  # grouped k/v: visited with its group's last head (the lowest)
                    d, readers = g.direct_index(L, letter, h // cfg.kv_group), list(range(h, h + cfg.kv_group))
                else:
                    continue
                steps.append(([d], ("senders", g.head_sender[L, readers].tolist())))
                steps.append((add_edges(int(g.qkv_receiver[L, li, h])), ("edge", d)))
    return steps


def acdc_sweep(engine, data, thresholds, abs_value=False, chunk=None, max_rows=256):
    """bool [len(thresholds), n_edges] kept edges, plus the number of forwards used.

    Thresholds whose circuits are identical at a step share one evaluation (early on every
    threshold has the same circuit, late ones differ only where their decisions did), so a step
    costs one patched row group per distinct circuit, `max_rows // batch` of them per forward."""
    g = engine.graph
    T, E = len(thresholds), g.n_edges
    tau = torch.tensor(thresholds, dtype=torch.float64)
    ev = PatchedObjective(engine, data, "metric", chunk=chunk, max_rows=max_rows)
    out_edges = [torch.nonzero(g.add_sender == s).flatten() for s in range(len(g.senders))]
    dev = engine.w.device

    def evaluate(removed):  # [T, E] bool -> [T] metric, each distinct circuit evaluated once
        distinct, which = torch.unique(removed, dim=0, return_inverse=True)
        return ev(distinct.to(dev).to(engine.w.dtype)).double().cpu()[which]

    kept = torch.ones(T, E, dtype=torch.bool)
    cur = evaluate(~kept)
    for ids, rule in visit_order(g):
        if rule[0] == "always":
            reached = torch.ones(T, dtype=torch.bool)
        elif rule[0] == "senders":
            reached = kept[:, torch.cat([out_edges[s] for s in rule[1]])].any(1)
        else:
            reached = kept[:, rule[1]].clone()
        for e in ids:
            if not reached.any():
                kept[:, e] = False
                continue
            trial = ~kept
            trial[:, e] = True
            new = evaluate(trial)
            diff = new - cur
            if abs_value:
                diff = diff.abs()
            remove = (diff < tau) & reached
            kept[remove | ~reached, e] = False
            cur = torch.where(remove, new, cur)
    return kept, ev.forwards


@register(
    "acdc",
    "ACDC: greedy exact edge pruning in reverse topological order, one circuit per threshold",
    {
        "sweep": ({}, "ACDC's threshold sweep for the task's metric (Metric.acdc_thresholds; tracr 10^linspace(-5,-1,21))"),
        "abs": ({"abs_value": True}, "the same with |metric change| < tau (ACDC's --abs-value-threshold)"),
    },
    output="family",
    default_variants=["sweep"],
    default_max_edges=5000,
    # one threshold, timed to its upper bound: every edge evaluated once, plus the full graph
    timings=lambda bench: [Timing("sweep", label=f"tau={bench.acdc_threshold:g}", options={"thresholds": [bench.acdc_threshold]},
                                  patched_forwards=lambda graph, batch: graph.n_edges + 1, upper_bound=True)],
)
def acdc(engine, data, thresholds=None, abs_value=False, max_rows=256):
    """`thresholds` None: ACDC's sweep for the data's metric (IOI KL 10^linspace(-6,0,31), ...)."""
    if thresholds is None:
        thresholds = data.metric.acdc_thresholds or DEFAULT_THRESHOLDS
    thresholds = [float(t) for t in thresholds]
    kept, _ = acdc_sweep(engine, data, thresholds, abs_value, max_rows=max_rows)
    return CircuitFamily(circuits=kept, thresholds=thresholds)
