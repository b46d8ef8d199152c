"""The method under study: backpropagate a loss between the model's prediction and a
"maximally wrong" target (see `targets.py`) and score each edge by the gradient it carries.

Gradient sites implemented here:
- `activation`: gradient x activation with a zero reference, per edge
  <dL/d input_r, output_s> (for a DIRECT edge <dL/dq, q>);
- `activation-corrupted`: the same with the corrupted run as reference,
  <dL/d input_r, output_s - corrupted_s>.
Variants are named `<target>/<site>`.
"""
from __future__ import annotations

from .attribution import contract, receiver_grads, references, traced_run
from .registry import register
from .targets import TARGETS, target_loss

SITES = {
    "activation": "gradient x activation (zero reference)",
    "activation-corrupted": "gradient x (activation - corrupted activation)",
}

VARIANTS = {
    f"{t}/{s}": ({"target": t, "site": s}, f"{tdesc}; site: {SITES[s]}")
    for t, tdesc in TARGETS.items()
    for s in SITES
}


@register(
    "grad-wrong",
    "gradient of a loss towards a maximally wrong answer, scored per edge",
    VARIANTS,
    default_variants=[f"{t}/activation" for t in TARGETS],
)
def grad_wrong(engine, data, target="logit-diff-mse", site="activation", per_example=False):
    if site not in SITES:
        raise KeyError(f"unknown gradient site {site!r}; sites: {', '.join(SITES)}")
    refs = references(engine, data)
    tr = traced_run(engine, data.clean)
    loss = target_loss(target, tr.logits, data, refs.clean_logits, refs.corrupted_logits)
    grads = receiver_grads(tr, loss)
    here = tr.cache()
    if site == "activation":
        s_vec, q_vec = here.senders, here.qkv
    else:
        s_vec, q_vec = here.senders - refs.cache.senders, here.qkv - refs.cache.qkv
    return contract(engine, grads, s_vec, q_vec, per_example=per_example).detach()
