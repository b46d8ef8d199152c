"""EAP-GP: edge attribution patching with GradPath (Zhang et al., NeurIPS 2025, arXiv 2502.06852).

EAP-IG integrates along the straight line between the corrupted and the clean input embeddings
(`harness.methods.eap_ig`); where that line crosses a saturated region the gradients there say
little (docs/methods.md#saturation-along-the-path). EAP-GP integrates along GradPath instead: a
path in input-embedding space that starts at the clean input and at every step moves a fixed
length down the gradient of the distance between the model's outputs there and the corrupted
(reference) outputs:

    gamma_0 = x (clean),   gamma_{j+1} = gamma_j - s * g_j / ||g_j||,
    g_j = d/d gamma_j || G(gamma_j) - G(x') ||^2,

and scores an edge u -> v as (z_u(x') - z_u(x)) . (1/m) sum_{j=1..m} dL/dz_v at gamma_j, the
EAP-IG score with GradPath's points (the activation difference is the noising one, corrupted -
clean, from the clean and the reference run, not from path points).

Choices the paper's text leaves to the implementer (made here, documented and tested):
- G: the logits at the scored columns (`TaskData.scored`, what every objective reads), squared
  L2 summed over columns and vocabulary, per example; the target G(x') is the reference's
  outputs: the corrupted run under resample, the fully zero-patched run under zero ablation.
- step s, per example, over that example's whole input embedding (every input node, position
  and dimension): "unit" (default) s = 1, Eq. 8's unit-norm step as circuitkit 0.2.0 reads it;
  "distance" s = ||x' - x|| / m, so the path is as long as the straight line (x' is the
  corrupted embedding, or zero under zero ablation) and a straight GradPath is EAP-IG's points.
- points: gamma_1..gamma_m (the clean start, where the task metric's gradient vanishes, is not
  one; m = 5 as in the paper's main experiments and MIB's EAP-IG default).
- a zero gradient (the outputs already equal the target) stops that example's path there.

Cost: m + 1 forwards and 2m backwards (the step from gamma_j and the attribution at gamma_j
share gamma_j's forward), plus the clean cache and the reference's cache and logits.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from harness.core import objectives
from harness.core.references import reference_logits, source_cache, source_input_embeds
from harness.methods.attribution import contract, receiver_grads, traced_run
from harness.methods.registry import Timing, register, task_objective

STEPS = ("unit", "distance")


def step_lengths(start: torch.Tensor, end: Optional[torch.Tensor], steps: int, step: str) -> torch.Tensor:
    """Per-example step length [1, batch, 1, 1] for embeddings [n_inputs, batch, pos, d_model]."""
    if step == "unit":
        return torch.ones(1, start.shape[1], 1, 1, dtype=start.dtype, device=start.device)
    if step == "distance":
        return per_example_norm(end - start) / steps
    raise KeyError(f"unknown GradPath step {step!r}; steps: {', '.join(STEPS)}")


def per_example_norm(x: torch.Tensor) -> torch.Tensor:
    """||x|| over everything but the batch (dim 1): [1, batch, 1, 1]."""
    return x.transpose(0, 1).flatten(1).norm(dim=1).view(1, -1, 1, 1)


def gradpath_step(gamma: torch.Tensor, grad: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """gamma - length * grad / ||grad||, per example; an example whose gradient is zero stays."""
    norm = per_example_norm(grad)
    return gamma - torch.where(norm > 0, length / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0) * grad


def gradpath(logits_of: Callable, start: torch.Tensor, target: torch.Tensor, steps: int, step: str = "unit",
             end: Optional[torch.Tensor] = None) -> list:
    """GradPath's points gamma_1..gamma_m [n_inputs, batch, pos, d_model] from `start`, descending
    ||logits_of(gamma) - target||^2 with per-example steps (`step_lengths`; "distance" needs `end`).
    `logits_of` maps embeddings to outputs [batch, ...]. The reference implementation of the path:
    `eap_gp` builds the same points while sharing forwards with the attribution."""
    length = step_lengths(start, end, steps, step)
    gamma, points = start.detach(), []
    for _ in range(steps):
        leaf = gamma.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad((logits_of(leaf) - target).pow(2).sum(), leaf)
        gamma = gradpath_step(gamma, grad, length).detach()
        points.append(gamma)
    return points


@register(
    "eap-gp",
    "EAP with integrated gradients along GradPath (clean -> reference by output-distance descent), EAP-GP",
    {
        "unit-5": ({"steps": 5, "step": "unit"}, "5 unit-norm GradPath steps (the paper's Eq. 8 and m), answer logit difference"),
        "distance-5": ({"steps": 5, "step": "distance"},
                       "5 steps of ||corrupted - clean|| / 5 each: as long as EAP-IG's straight line"),
        "unit-5-abs": ({"steps": 5, "step": "unit", "aggregate": "abs"},
                       "unit-5, sum over examples of |per-example score| (cannot cancel)"),
    },
    default_variants=["unit-5", "distance-5"],
    gradient=True,
    per_example=True,
    per_position=True,
    objective=task_objective("logit-diff"),
    timings=lambda bench: [Timing("unit-5", label=f"unit-{bench.ig_steps}", options={"steps": bench.ig_steps})],
)
def eap_gp(engine, data, steps=5, step="unit", objective="logit-diff", per_example=False, per_position=False):
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if step not in STEPS:
        raise KeyError(f"unknown GradPath step {step!r}; steps: {', '.join(STEPS)}")
    cols, scored = data.scored()  # only the scored columns are unembedded
    with torch.no_grad():
        clean_run = engine.run(data.clean, record=True, positions=cols)
    clean, clean_logits = clean_run.cache(), clean_run.logits
    target = reference_logits(engine, data)[1]  # G(x'): the reference's outputs at the scored columns
    source = source_cache(engine, data)
    d_send, d_qkv = source.senders - clean.senders, source.qkv - clean.qkv
    start = engine.input_embeddings(data.clean)
    end = None
    if step == "distance":
        end = torch.zeros_like(start) if data.ablation == "zero" else source_input_embeds(engine, data)
    length = step_lengths(start, end, steps, step)
    n_in = start.shape[0]
    gamma, total = start.detach(), None
    for j in range(steps + 1):  # gamma_j's forward serves the step from it (j < m) and its attribution (j >= 1)
        if j == 0:
            leaf = gamma.detach().requires_grad_(True)
            logits = engine.run(data.clean, input_embeds=leaf, positions=cols).logits
            (grad,) = torch.autograd.grad((logits - target).pow(2).sum(), leaf)
        else:
            tr = traced_run(engine, data.clean, input_embeds=gamma, positions=cols)
            if j < steps:  # the input nodes' outputs are the leaf's rows: their gradient is the leaf's
                grad = torch.stack(torch.autograd.grad((tr.logits - target).pow(2).sum(), tr.senders[:n_in],
                                                       retain_graph=True))
            grads = receiver_grads(tr, objectives.evaluate(objective, tr.logits, clean_logits, scored).mean())
            s = contract(engine, grads, d_send, d_qkv, per_example=per_example, per_position=per_position).detach()
            total = s if total is None else total + s
        if j < steps:
            gamma = gradpath_step(gamma, grad.detach(), length).detach()
    return total / steps
