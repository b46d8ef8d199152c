"""Edge attribution patching (Syed et al. 2023): every edge's score from one clean forward,
one corrupted forward and one backward (the floor: one forward+backward and one no-grad
forward; nothing else runs).

noising (default; EAP-IG's convention): gradient at the clean run x (corrupted - clean), the
first-order change of the objective when the edge is patched.
denoising (transformer_lens 4.3's `attribution_patch`): gradient at the corrupted run x
(clean - corrupted).
The objective is the task's ACDC loss metric with the natural sign (`objectives.evaluate`
"logit-diff"; the answer logit difference, or the output itself, where a task has none) unless
`objective="metric"` (the task metric, whose gradient vanishes at the clean run when it compares
with clean outputs: the pitfall docs/methods.md#zero-gradient-at-the-clean-point describes).
"""
from __future__ import annotations

import torch

from harness.core import objectives
from harness.core.references import patch_all, source_cache, source_input_embeds
from harness.methods.attribution import contract, differences, receiver_grads, traced_run
from harness.methods.registry import Timing, register, task_objective


@register(
    "eap",
    "edge attribution patching: gradient x activation difference, all edges from one backward",
    {
        "noising": ({"form": "noising"}, "gradient at clean x (corrupted - clean)"),
        "denoising": ({"form": "denoising"}, "gradient at corrupted x (clean - corrupted), as transformer_lens 4.3"),
        "noising-answer-logit-diff": ({"form": "noising", "objective": "answer-logit-diff"},
                                      "noising, correct - mean wrong logit (not the task's ACDC loss metric)"),
        "noising-abs": ({"form": "noising", "aggregate": "abs"},
                        "noising, sum over examples of |per-example score| (cannot cancel over the batch)"),
    },
    gradient=True,
    per_example=True,
    per_position=True,
    objective=task_objective("logit-diff"),
    default_variants=["noising", "denoising", "noising-abs"],
    timings=lambda bench: [Timing("noising"), Timing("denoising")],
)
def eap(engine, data, form="noising", objective="logit-diff", per_example=False, per_position=False, on_phase=None):
    """[n_edges] scores (per_example, per_position: [batch, n_edges], [pos, n_edges], both [batch, pos, n_edges]). `on_phase(name)`, when given, is called
    after each phase (the benchmarks' profile of EAP against its floor reads these marks)."""
    mark = on_phase or (lambda name: None)
    cols, scored = data.scored()  # only the scored columns are unembedded
    if form == "noising":
        other = source_cache(engine, data)  # no-grad forward
        mark("cache_forward")
        tr = traced_run(engine, data.clean, positions=cols)  # forward + backward
        clean_logits = tr.logits.detach()
    elif form == "denoising":
        with torch.no_grad():
            clean_tr = engine.run(data.clean, record=True, positions=cols)  # no-grad forward
        other, clean_logits = clean_tr.cache(), clean_tr.logits
        mark("cache_forward")
        if data.ablation == "zero":  # the run at the other end: every edge patched to zero
            tr = traced_run(engine, data.clean, patch_all(engine), source_cache(engine, data), positions=cols)
        else:
            tr = traced_run(engine, data.corrupted, input_embeds=source_input_embeds(engine, data), positions=cols)
    else:
        raise KeyError(f"unknown EAP form {form!r}")
    mark("traced_forward")
    grads = receiver_grads(tr, objectives.evaluate(objective, tr.logits, clean_logits, scored).mean())
    mark("backward")
    d_senders, d_qkv = differences(tr, other)
    mark("stack_and_difference")
    scores = contract(engine, grads, d_senders, d_qkv, per_example=per_example, per_position=per_position).detach()
    mark("contract")
    return scores
