"""Activation patching baselines: the exact effect of patching one node or one edge.

Both run the engine's patched forward (docs/graph-and-patching.md#patching-semantics) from the source run (the corrupted
prompts, or ACDC's zero ablation; `harness.core.references`) and score by

    score = mean_examples objective(patched) - mean_examples objective(clean)

objective "metric": the task metric with ACDC's sign against the clean logits (0 for the clean
model under l2/KL); "logit-diff": the answer logit difference (`harness.core.objectives`).
Scores are signed; rankings use |score|.

Batching: one patch row per patched unit, rows = units x examples in one forward
(`Engine.run_many`), `chunk` units per forward to bound memory (default: as many as keep
units x examples <= `max_rows`). Each forward starts at the first layer its units touch, from
the recorded clean run, and unembeds only the scored positions (`harness.core.patched_forward`);
the `dense` variant runs every edge through the full reference forward instead.

act-patch-node maps node effects to edges by this rule: an ADDITION edge s -> r gets the effect
of patching its SENDER s (all of s's outgoing edges, i.e. replacing s's output by its corrupted
value everywhere); a DIRECT edge q_input -> q gets the effect of patching the head's q (k, v)
node, which is patching that DIRECT edge. So all edges leaving one sender tie.
"""
from __future__ import annotations

import math

import torch

from harness.core.evaluator import PatchedObjective
from harness.core.patched_forward import OneEdgePatches
from harness.methods.registry import Timing, register, task_objective

MAX_ROWS = 256  # rows (patches x examples) per patched forward, by default


def chunk_for(batch: int, max_rows: int = MAX_ROWS) -> int:
    """Patches per forward at `max_rows` rows."""
    return max(1, max_rows // batch)


def patching_bytes(engine, batch: int, seq_len: int) -> int:
    """Rough peak of batched patching (chunks of up to MAX_ROWS rows): the clean run and source
    kept untiled (source and source - clean sender outputs, the residual per layer, the source's
    q/k/v), about 16 [rows, pos, d_model] activations of one patched forward, and its logits at
    every position (an upper bound: only scored positions are unembedded)."""
    g, cfg = engine.graph, engine.cfg
    rows = min(chunk_for(batch), g.n_edges) * batch
    per_example = 2 * len(g.senders) + 4 * cfg.n_layers + 1
    elems = seq_len * cfg.d_model * (batch * per_example + 16 * rows) + rows * seq_len * cfg.vocab_out
    return elems * (torch.finfo(engine.w.dtype).bits // 8)


def edge_sample(n_edges: int, k: int) -> torch.Tensor:
    """k edge ids spread evenly over the graph (every receiver type appears)."""
    k = max(1, min(k, n_edges))
    return torch.linspace(0, n_edges - 1, k).round().long().unique()


@register(
    "act-patch-edge",
    "activation patching of every edge alone (exact; one patch row per edge)",
    {
        "batched": ({"mode": "batched"}, "many edges per forward (edges x examples rows, chunked)"),
        "single": ({"mode": "single"}, "one edge per forward, on the same path as batched"),
        "dense": ({"mode": "dense"}, "one edge per forward through the full reference forward: the slow reference"),
        "logit-diff": ({"mode": "batched", "objective": "logit-diff"}, "batched, answer logit difference objective"),
    },
    default_variants=["batched"],
    default_max_edges=5000,
    per_example=True,
    objective=task_objective("metric"),
    timings=lambda bench: [
        Timing("batched", patched_forwards=lambda graph, batch: math.ceil(graph.n_edges / chunk_for(batch)),
               memory_bytes=patching_bytes),
        Timing("single", options=lambda graph: {"edges": edge_sample(graph.n_edges, bench.single_edges)},
               patched_forwards=lambda graph, batch: graph.n_edges, sampled_edges=True),
        Timing("dense", options=lambda graph: {"edges": edge_sample(graph.n_edges, bench.single_edges)},
               patched_forwards=lambda graph, batch: graph.n_edges, sampled_edges=True),
    ],
)
def act_patch_edge(engine, data, mode="batched", objective="metric", chunk=None, max_rows=MAX_ROWS, edges=None,
                   per_example=False):
    """Score = objective change when only that edge is patched. `edges` (ids) restricts the
    edges evaluated (for timing); the others get NaN. `per_example`: [batch, n_edges] terms
    that sum over examples to the score (the model treats examples independently)."""
    ev = PatchedObjective(engine, data, objective, chunk, max_rows)
    E = engine.graph.n_edges
    ids = torch.arange(E) if edges is None else torch.as_tensor(edges, dtype=torch.long)
    one_edge = OneEdgePatches(ids, E)
    if mode == "batched":
        vals = ev(one_edge, per_example)
    elif mode == "single":
        vals = ev(one_edge, per_example, chunk=1)
    elif mode == "dense":  # the reference forward: from the embedding, every receiver and position
        vals = torch.stack([ev.dense(one_edge.rows(i, i + 1, engine.w.device, engine.w.dtype)[0], per_example)
                            for i in range(len(ids))])
    else:
        raise KeyError(f"unknown mode {mode!r} (batched, single, dense)")
    vals = vals - ev.baseline(per_example)  # [k] or [k, batch]
    out = torch.full((E,) + vals.shape[1:], float("nan"), dtype=vals.dtype, device=vals.device)
    out[ids.to(vals.device)] = vals
    return out.T if per_example else out


def node_patches(graph) -> torch.Tensor:
    """[n_senders + n_direct, n_edges]: row s patches every ADDITION edge out of sender s; the
    last n_direct rows patch one head's q, k or v (its DIRECT edge)."""
    F, E = len(graph.senders), graph.n_edges
    m = torch.zeros(F + graph.n_direct, E)
    m[graph.add_sender, torch.arange(graph.n_add)] = 1
    m[torch.arange(F, F + graph.n_direct), torch.arange(graph.n_add, E)] = 1
    return m


@register(
    "act-patch-node",
    "activation patching of every node alone (head/MLP/input outputs, head q/k/v); edge = its sender's effect",
    {
        "metric": ({"objective": "metric"}, "task metric vs clean outputs (ACDC's sign)"),
        "logit-diff": ({"objective": "logit-diff"}, "answer logit difference"),
    },
    per_example=True,
    objective=task_objective("metric"),
    timings=lambda bench: [Timing("metric", memory_bytes=patching_bytes,
                                  patched_forwards=lambda graph, batch: math.ceil((len(graph.senders) + graph.n_direct) / chunk_for(batch)))],
)
def act_patch_node(engine, data, objective="metric", chunk=None, max_rows=MAX_ROWS, per_example=False):
    g = engine.graph
    ev = PatchedObjective(engine, data, objective, chunk, max_rows)
    node = ev(node_patches(g), per_example) - ev.baseline(per_example)
    F = len(g.senders)
    out = torch.cat([node[g.add_sender.to(node.device)], node[F:]])
    return out.T if per_example else out
