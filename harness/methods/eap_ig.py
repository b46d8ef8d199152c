"""EAP-IG, "inputs" variant (Hanna et al. 2024; docs/methods.md#eap-ig).

The input nodes' embeddings are interpolated from the resample source run's (the corrupted
prompt's, positions scrambled where the data says so; alpha = 0) towards the
clean prompt's, alpha = k/m for k = 0..m-1 (left Riemann sum; the clean end is excluded, as in
EAP-IG's code); the gradients at every receiver are averaged over the m runs and contracted
with the EAP noising difference (corrupted - clean sender outputs, from the clean and corrupted
runs, not from the interpolated ones). With zero ablation the path starts at zero embeddings
and the difference is the zero cache minus clean.

Why: plain EAP linearises at the clean point, where the task metric (compared with clean
outputs) has zero gradient (docs/methods.md#zero-gradient-at-the-clean-point); averaging along the path does not.
"""
from __future__ import annotations

import torch

from harness.core import objectives
from harness.core.references import source_cache, source_input_embeds
from harness.methods.attribution import contract, receiver_grads, traced_run
from harness.methods.registry import Timing, register, task_objective


def path_embeddings(engine, data, steps: int):
    """The m interpolated input embeddings [n_inputs, batch, pos, d_model], alpha = k/m."""
    clean = engine.input_embeddings(data.clean)
    start = torch.zeros_like(clean) if data.ablation == "zero" else source_input_embeds(engine, data)
    return [start + (k / steps) * (clean - start) for k in range(steps)]


@register(
    "eap-ig",
    "EAP with integrated gradients over input embeddings (corrupted -> clean), EAP-IG 'inputs'",
    {
        "inputs-5": ({"steps": 5}, "5 steps (MIB's default), answer logit difference"),
        "inputs-20": ({"steps": 20}, "20 steps, answer logit difference"),
        "inputs-5-metric": ({"steps": 5, "objective": "metric"}, "5 steps, the task metric vs clean outputs"),
        "inputs-5-abs": ({"steps": 5, "aggregate": "abs"}, "5 steps, sum over examples of |per-example score| (cannot cancel)"),
    },
    default_variants=["inputs-5", "inputs-5-metric", "inputs-5-abs"],
    gradient=True,
    per_example=True,
    objective=task_objective("logit-diff"),
    timings=lambda bench: [Timing("inputs-5", label=f"inputs-{bench.ig_steps}", options={"steps": bench.ig_steps})],
)
def eap_ig(engine, data, steps=5, objective="logit-diff", per_example=False):
    if steps < 1:
        raise ValueError("steps must be >= 1")
    cols, scored = data.scored()  # only the scored columns are unembedded
    with torch.no_grad():
        clean_run = engine.run(data.clean, record=True, positions=cols)  # clean logits and cache in one forward
    clean, clean_logits = clean_run.cache(), clean_run.logits
    source = source_cache(engine, data)
    d_send, d_qkv = source.senders - clean.senders, source.qkv - clean.qkv
    total = None
    for emb in path_embeddings(engine, data, steps):
        tr = traced_run(engine, data.clean, input_embeds=emb, positions=cols)
        grads = receiver_grads(tr, objectives.evaluate(objective, tr.logits, clean_logits, scored).mean())
        s = contract(engine, grads, d_send, d_qkv, per_example=per_example).detach()
        total = s if total is None else total + s
    return total / steps
