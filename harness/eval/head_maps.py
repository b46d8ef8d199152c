"""Per-head maps for one task: where the seed's weight gradients and the heads' direct effects sit.

For every layer x head: ||dL/dW_Q||, ||dL/dW_K||, ||dL/dW_V||, ||dL/dW_O|| (Frobenius norms of the
head's slices), with L a `grad-wrong` target loss at the clean prompts (default the seed's
`logit-diff-mse`), and the head's direct effect on the logit difference: its output at the scored
position, through the final LayerNorm with the clean run's scale frozen, read along
W_U[:, correct] - W_U[:, wrong] (direct logit attribution), averaged over examples. The
ground-truth heads are those any of whose nodes (q/k/v inputs, q/k/v, output) a ground-truth
edge touches. Shapes: every map is [n_layers, n_heads].
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.core.engine import Engine
from harness.core.graph import node_place
from harness.core.references import reference_logits
from harness.methods.targets import target_loss
from harness.methods.weight_sites import weight_grads

MAPS = ("dL/dW_Q", "dL/dW_K", "dL/dW_V", "dL/dW_O", "direct effect")


@dataclass
class HeadMaps:
    maps: dict  # name (MAPS) -> [n_layers, n_heads] float64
    ground_truth_heads: set = field(default_factory=set)  # {(layer, head)}
    target: str = "logit-diff-mse"

    def frame(self):
        import pandas as pd

        n_layers, n_heads = self.maps[MAPS[0]].shape
        return pd.DataFrame([{"layer": L, "head": h, **{k: float(v[L, h]) for k, v in self.maps.items()},
                              "ground_truth": (L, h) in self.ground_truth_heads}
                             for L in range(n_layers) for h in range(n_heads)])


def ground_truth_heads(graph, edge_mask: torch.Tensor) -> set:
    """{(layer, head)} of heads with a node touched by the ground truth's edges."""
    touched = graph.nodes_touched(edge_mask)
    places = (node_place(name) for name, on in zip(graph.roc_nodes, touched.tolist()) if on)
    return {(p.layer, p.head) for p in places if p.head is not None}


def direct_effects(engine: Engine, data) -> torch.Tensor:
    """[n_layers, n_heads]: each head's mean direct effect on logit[correct] - logit[first wrong]
    at the scored positions, with the final LayerNorm's (RMSNorm's) scale frozen at the clean
    run's; on the logits before soft-capping (Gemma-2), where heads' effects add up."""
    cfg, g, w = engine.cfg, engine.graph, engine.w
    with torch.no_grad():
        tr = engine.run(data.clean, record=True, positions=torch.zeros(0, dtype=torch.long))  # no logits needed
        final = tr.output_input  # [B, P, D]
        scale = torch.ones_like(final[..., :1])
        centring = cfg.normalization_type in ("LN", "LNPre")
        if cfg.normalization_type is not None:
            centred = final - final.mean(-1, keepdim=True) if centring else final
            scale = (centred.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt()
        gamma = (w["ln_final.w"] if cfg.normalization_type in ("LN", "RMS")
                 else torch.ones(cfg.d_model, dtype=final.dtype, device=final.device))
        W_U = w["unembed.W_U"]
        direction = W_U[:, data.correct] - W_U[:, data.wrong[..., 0]]  # [D, B, P]
        m = data.pos_mask.to(final.dtype).to(final.device)
        out = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64)
        for L in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                c = tr.senders[int(g.head_sender[L, h])]
                if centring:
                    c = c - c.mean(-1, keepdim=True)
                eff = torch.einsum("bpd,dbp->bp", c / scale * gamma, direction)
                out[L, h] = float(((eff * m).sum(-1) / m.sum(-1).clamp(min=1)).mean())
    return out


def head_maps(engine: Engine, data, task=None, target: str = "logit-diff-mse") -> HeadMaps:
    """The five maps for `data`'s clean prompts; ground-truth heads from `task` (first ground truth)."""
    clean, source = reference_logits(engine, data)  # at the scored columns
    cols, scored = data.scored()
    dW = weight_grads(engine, data.clean, lambda logits: target_loss(target, logits, scored, clean, source), positions=cols)
    cfg = engine.cfg
    maps = {}
    for X in "QKVO":
        # grouped-query keys and values: the shared W_K/W_V's gradient is the sum of its group's
        # per-head copies' (the chain rule), shown at every head of the group
        grouped = X in "KV" and cfg.kv_group > 1
        maps[f"dL/dW_{X}"] = torch.tensor(
            [[float((dW[f"blocks.{L}.attn.W_{X}"].view(cfg.kv_heads, cfg.kv_group, *dW[f"blocks.{L}.attn.W_{X}"].shape[1:])
                     .sum(1)[h // cfg.kv_group] if grouped else dW[f"blocks.{L}.attn.W_{X}"][h]).double().norm())
              for h in range(cfg.n_heads)] for L in range(cfg.n_layers)], dtype=torch.float64)
    maps["direct effect"] = direct_effects(engine, data)
    heads = set()
    if task is not None:
        gts = task.ground_truths()
        if gts:
            heads = ground_truth_heads(engine.graph, next(iter(gts.values())).edge_mask(engine.graph))
    return HeadMaps(maps, heads, target)
