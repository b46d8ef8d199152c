"""Edge attribution patching (Syed et al. 2023): every edge's score from one clean forward,
one corrupted forward and one backward (the floor: one forward+backward and one no-grad
forward; nothing else runs).

noising (default; EAP-IG's convention): gradient at the clean run x (corrupted - clean), the
first-order change of the objective when the edge is patched.
denoising (transformer_lens 4.3's `attribution_patch`): gradient at the corrupted run x
(clean - corrupted).
The objective is the answer logit difference (the output itself for numerical tasks) unless
`objective="metric"` (the task metric, whose gradient vanishes at the clean run when it compares
with clean outputs: the pitfall peers-and-methods.md §5.1 describes).
"""
from __future__ import annotations

import torch

from harness.methods.attribution import contract, corrupted_cache, receiver_grads, traced_run
from harness.methods.registry import register


def objective_value(name: str, logits, data, clean_logits):
    if name == "logit-diff":
        return data.answer_logit_diff(logits).mean()
    if name == "metric":
        return data.metric(logits, clean_logits).mean()
    raise KeyError(f"unknown objective {name!r} (logit-diff, metric)")


@register(
    "eap",
    "edge attribution patching: gradient x activation difference, all edges from one backward",
    {
        "noising": ({"form": "noising"}, "gradient at clean x (corrupted - clean)"),
        "denoising": ({"form": "denoising"}, "gradient at corrupted x (clean - corrupted), as transformer_lens 4.3"),
    },
)
def eap(engine, data, form="noising", objective="logit-diff", per_example=False):
    if form == "noising":
        other = corrupted_cache(engine, data)  # no-grad forward
        tr = traced_run(engine, data.clean)  # forward + backward
        clean_logits = tr.logits.detach()
    elif form == "denoising":
        with torch.no_grad():
            clean_tr = engine.run(data.clean, keep=True)  # no-grad forward
        other, clean_logits = clean_tr.cache(), clean_tr.logits
        if data.ablation == "zero":
            zero = engine.cache(data.clean, zero=True)
            ones = torch.ones(engine.graph.n_edges, dtype=engine.w.dtype, device=engine.w.device)
            tr = traced_run(engine, data.clean, ones, zero)
        else:
            tr = traced_run(engine, data.corrupted)
    else:
        raise KeyError(f"unknown EAP form {form!r}")
    grads = receiver_grads(tr, objective_value(objective, tr.logits, data, clean_logits))
    here = tr.cache()
    return contract(engine, grads, other.senders - here.senders, other.qkv - here.qkv, per_example=per_example).detach()
