"""Structure-only baselines: edges ranked by a fixed rule on the graph, with no model run.

They answer "how much of an AUC comes from where the circuit sits in the graph alone?" Each
variant is one named rule; none reads weights, data or ground truth. Scores are positive
integers (rankings use |score|; ties are ties), higher ranks first.

Per edge: the sender's and receiver's layer (inputs -1, the output n_layers; a DIRECT edge, q/k/v
input -> q/k/v, sits inside one layer), the receiver's fan-in and the sender's fan-out (counted
edges into / out of the node).
"""
from __future__ import annotations

import torch

from harness.methods.registry import register


def edge_features(graph) -> dict:
    """name -> long [n_edges]: sender_layer, receiver_layer, fan_in, fan_out."""
    s_layer = torch.tensor([s.layer for s in graph.senders])
    r_layer = torch.tensor([r.layer for r in graph.receivers])
    r_fan = torch.bincount(graph.add_receiver, minlength=len(graph.receivers))
    s_fan = torch.bincount(graph.add_sender, minlength=len(graph.senders))
    direct_layer = torch.arange(graph.cfg.n_layers).repeat_interleave(graph.direct_per_layer)
    one = torch.ones(graph.n_direct, dtype=torch.long)
    return {
        "sender_layer": torch.cat([s_layer[graph.add_sender], direct_layer]),
        "receiver_layer": torch.cat([r_layer[graph.add_receiver], direct_layer]),
        "fan_in": torch.cat([r_fan[graph.add_receiver], one]),
        "fan_out": torch.cat([s_fan[graph.add_sender], one]),
    }


def _rule(f: dict, rule: str, n_layers: int) -> torch.Tensor:
    span = f["receiver_layer"] - f["sender_layer"]  # 0 .. n_layers + 1
    top = n_layers + 2
    return {
        "receiver-late": f["receiver_layer"] + 2,
        "receiver-early": top - f["receiver_layer"],
        "sender-late": f["sender_layer"] + 2,
        "sender-early": top - f["sender_layer"],
        "span-long": span + 1,
        "span-short": top - span,
        "fan-in": f["fan_in"],
        "fan-out": f["fan_out"],
    }[rule]


RULES = {
    "receiver-late": "receivers nearer the output first (layer of the receiver)",
    "receiver-early": "receivers nearer the input first",
    "sender-late": "senders nearer the output first (layer of the sender)",
    "sender-early": "senders nearer the input first (embeddings, then layer 0, ...)",
    "span-long": "edges spanning more layers first",
    "span-short": "edges spanning fewer layers first (DIRECT edges span none)",
    "fan-in": "receivers with more incoming edges first",
    "fan-out": "senders with more outgoing edges first",
}


@register("structure", "structure-only baseline: a fixed rule on the graph, no model run, no ground truth",
          {r: ({"rule": r}, d) for r, d in RULES.items()}, default_variants=tuple(RULES), model_free=True)
def structure_scores(engine, data, rule: str = "receiver-late"):
    g = engine.graph
    return _rule(edge_features(g), rule, g.cfg.n_layers).double()
