"""Activation patching baselines: the exact effect of patching one node or one edge.

Both run the engine's patched forward (acdc-tasks.md §1.2) towards the corrupted cache (or
ACDC's zero ablation) and score by

    score = mean_examples objective(patched) - mean_examples objective(clean)

objective "metric": the task metric with ACDC's sign against the clean logits
(`data.metric(logits, clean_logits)`, 0 for the clean model under l2/KL); "logit-diff":
`data.answer_logit_diff`. Scores are signed; rankings use |score|.

Batching: one mask row per patched unit, rows = units x examples in one forward (tokens and
the corrupted cache tiled), `chunk` units per forward to bound memory (default: as many as
keep units x examples <= `max_rows`).

act-patch-node maps node effects to edges by this rule: an ADDITION edge s -> r gets the effect
of patching its SENDER s (all of s's outgoing edges, i.e. replacing s's output by its corrupted
value everywhere); a DIRECT edge q_input -> q gets the effect of patching the head's q (k, v)
node, which is patching that DIRECT edge. So all edges leaving one sender tie.
"""
from __future__ import annotations

import torch

from harness.core.engine import Engine, SenderCache
from harness.tasks.base import TaskData
from harness.methods.attribution import corrupted_cache
from harness.methods.registry import register


def objective_values(objective: str, logits: torch.Tensor, data: TaskData, clean_logits: torch.Tensor) -> torch.Tensor:
    """[batch]: the objective of each example."""
    if objective == "metric":
        return data.metric(logits, clean_logits)
    if objective == "logit-diff":
        return data.answer_logit_diff(logits)
    raise KeyError(f"unknown objective {objective!r} (metric, logit-diff)")


def objective_mean(objective: str, logits: torch.Tensor, data: TaskData, clean_logits: torch.Tensor) -> torch.Tensor:
    """Scalar: the objective averaged over examples."""
    return objective_values(objective, logits, data, clean_logits).mean()


class MaskEvaluator:
    """Evaluates the objective for many masks: rows = masks x examples, chunked."""

    def __init__(self, engine: Engine, data: TaskData, cache: SenderCache, clean_logits, objective="metric",
                 chunk=None, max_rows=256):
        self.engine, self.data, self.cache, self.clean_logits, self.objective = engine, data, cache, clean_logits, objective
        self.chunk = chunk if chunk else max(1, max_rows // data.n)
        self._tiled = {}
        self.forwards = 0

    def _cache(self, k: int) -> SenderCache:
        if k not in self._tiled:
            self._tiled = {k: self.cache.tile(k)}  # one size kept: every chunk but the last
        return self._tiled[k]

    @torch.no_grad()
    def __call__(self, masks: torch.Tensor, per_example: bool = False) -> torch.Tensor:
        """masks [k, n_edges] -> [k] objective (mean over examples) with each mask applied, or
        [k, batch] per-example objectives divided by batch (so they sum to the mean)."""
        B, out = self.data.n, []
        dev = self.engine.w.device
        masks = masks.to(device=dev, dtype=self.engine.w.dtype)
        for i in range(0, masks.shape[0], self.chunk):
            m = masks[i : i + self.chunk]
            k = m.shape[0]
            logits = self.engine.run(self.data.clean.repeat(k, 1), m.repeat_interleave(B, 0), self._cache(k)).logits
            self.forwards += 1
            logits = logits.view(k, B, *logits.shape[1:])
            out += [self._reduce(objective_values(self.objective, lg, self.data, self.clean_logits), per_example) for lg in logits]
        return torch.stack(out) if out else masks.new_zeros(0)

    def _reduce(self, values, per_example):
        return values / values.shape[0] if per_example else values.mean()

    @torch.no_grad()
    def baseline(self, per_example: bool = False) -> torch.Tensor:
        return self._reduce(objective_values(self.objective, self.clean_logits, self.data, self.clean_logits), per_example)


def _evaluator(engine, data, objective, chunk, max_rows):
    with torch.no_grad():
        clean_logits = engine.logits(data.clean)
    return MaskEvaluator(engine, data, corrupted_cache(engine, data), clean_logits, objective, chunk, max_rows)


@register(
    "act-patch-edge",
    "activation patching of every edge alone (exact; one mask row per edge)",
    {
        "batched": ({"mode": "batched"}, "many edges per forward (edges x examples rows, chunked)"),
        "single": ({"mode": "single"}, "one edge per forward: the slow reference"),
        "logit-diff": ({"mode": "batched", "objective": "logit-diff"}, "batched, answer logit difference objective"),
    },
    default_variants=["batched"],
    default_max_edges=5000,
)
def act_patch_edge(engine, data, mode="batched", objective="metric", chunk=None, max_rows=256, edges=None,
                   per_example=False):
    """Score = objective change when only that edge is patched. `edges` (ids) restricts the
    edges evaluated (for timing); the others get NaN. `per_example`: [batch, n_edges] terms
    that sum over examples to the score (the model treats examples independently)."""
    ev = _evaluator(engine, data, objective, chunk, max_rows)
    E = engine.graph.n_edges
    ids = torch.arange(E) if edges is None else torch.as_tensor(edges, dtype=torch.long)
    eye = torch.zeros(len(ids), E, dtype=engine.w.dtype, device=engine.w.device)
    eye[torch.arange(len(ids)), ids.to(eye.device)] = 1
    if mode == "batched":
        vals = ev(eye, per_example)
    elif mode == "single":  # the plain path: a 1-d mask, untiled tokens and cache
        with torch.no_grad():
            vals = torch.stack([ev._reduce(objective_values(objective, engine.logits(data.clean, m, ev.cache), data, ev.clean_logits), per_example) for m in eye])
    else:
        raise KeyError(f"unknown mode {mode!r} (batched, single)")
    vals = vals - ev.baseline(per_example)  # [k] or [k, batch]
    out = torch.full((E,) + vals.shape[1:], float("nan"), dtype=vals.dtype, device=vals.device)
    out[ids.to(vals.device)] = vals
    return out.T if per_example else out


def node_masks(graph) -> torch.Tensor:
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
)
def act_patch_node(engine, data, objective="metric", chunk=None, max_rows=256, per_example=False):
    g = engine.graph
    ev = _evaluator(engine, data, objective, chunk, max_rows)
    node = ev(node_masks(g), per_example) - ev.baseline(per_example)
    F = len(g.senders)
    out = torch.cat([node[g.add_sender.to(node.device)], node[F:]])
    return out.T if per_example else out
