"""HISP: head importance scores for pruning (Michel et al. 2019, "Are Sixteen Heads Really Better
than One?", arXiv 1905.10650), as ACDC ran it as a baseline (Conmy et al. 2023, arXiv
2304.14997, App. D; Tables 2-3's HISP columns; docs/scoring.md#sp-and-hisp-baselines).

Components: every head's q, k and v (one mask each) and every MLP output (ACDC's masked hook
points `attn.hook_q/k/v` per head and `hook_mlp_out`; heads have no mask of their own). A
component C with mask m computes m * C(x) + (1 - m) * C(x'), so at m = 1

    I_C = mean_i |(C(x_i) - C(x'_i)) . dF/dC(x_i)|          (per example i, summed over positions)

C(x') is the source run's value under the run's reference (`harness.core.references`: the
corrupted prompts, positions scrambled on tracr; or the zero-ablated run). A q/k/v term is the
per-example EAP score of that head's DIRECT q_input -> q edge; an MLP's gradient is the sum of
the gradients at every receiver downstream of it (`attribution.receiver_grads`). Scores are then
divided, layer by layer, by the L2 norm of that layer's scores (its q, k, v of every head and its
MLP), the norm clamped below at 1e-6, as ACDC does.

Circuits (ACDC's `iterative_correspondence_from_mask`): components are pruned least important
first, one at a time, from the full graph (k = N kept) to none (k = 0), N = 3 x heads + MLPs, so
the output is a `CircuitFamily` of N + 1 nested circuits, `thresholds` = k. A pruned q removes its
DIRECT edge q_input -> q and every edge into q_input; a head's output edges go only when its q, k
and v are all pruned; a pruned MLP removes every edge into and out of it; the input nodes
(embed, pos_embed) and the output are never pruned. So at k = 0 only input -> output edges stay.
Ties are broken as ACDC's stable sort breaks them: ACDC lists components layer by layer, in each
layer q of heads 0..H-1, then k, then v, then the MLP, and of tied components prunes the earlier
in that list first.

Objective F (`objective`): "metric" is ACDC's: the task metric (ACDC backpropagates its validation
metric). Where that metric compares with the clean outputs (tracr L2, KL) its gradient at the
clean point is 0 (L2's exactly, KL's up to round-off), every score is 0, and the family is ACDC's
tie order alone: layers pruned from the first on. That is what ACDC's HISP tracr numbers are:
this family gives Tables 2-3's tracr HISP AUCs exactly (xproportion 0.679 / 0.909, reverse
0.577 / 0.750, edge / node, under both references; tests/test_hisp.py), and none of 2,000 random
pruning orders gives either pair. "logit-diff" is the task's loss with the natural sign
(`objectives.evaluate`), whose gradient at the clean point is not 0.

Round-off: I_C is computed once more in the other precision (float32 <-> float64) and every value
within the measured tie floor of 0 is set to 0 (`measured_importance`), so round-off never
ranks a component above one with no effect, and float32 and float64 runs prune in the same order.

Facts from ACDC's code (github ArthurConmy/Automatic-Circuit-Discovery, commit bc99ace8,
`experiments/launch_sixteen_heads.py`, `subnetwork_probing/train.py`,
`subnetwork_probing/transformer_lens/transformer_lens/hook_points.py`,
`notebooks/roc_plot_generator.py`) and how this differs:
- ACDC's masks replace the hook's output by mask * C + (1 - mask) * cache, but the gradients are
  taken before any cache is set, so there C(x') = 0 under both ablations (which is why Tables 2
  and 3 print the same HISP numbers, IOI KL's 0.789 / 0.792 apart). Here C(x') follows the run's reference (the same under
  "zero" except that a zero-ablated q/k/v is its bias path, not 0).
- ACDC sums |gradient| over the elements of its per-example metric (tracr L2: every example,
  position and output dimension; other tasks: every example); here over examples (the
  objectives are per example). Under "metric" on tracr both are 0.
- ACDC scores circuits from the HISP run's wandb log of this order; the nested circuits here are
  the same circuits.
"""
from __future__ import annotations

import torch

from harness.core import objectives
from harness.core.engine import Engine
from harness.core.numerics import tie_floor
from harness.core.references import reference_logits, source_cache
from harness.methods.attribution import receiver_grads, traced_run
from harness.methods.memory import examples_per_pass
from harness.methods.registry import CircuitFamily, Timing, register

NORM_FLOOR = 1e-6  # ACDC: layer_vector.norm().clamp(min=1e-6)


# ----- components: ACDC's order ---------------------------------------------------------------
def per_layer(cfg) -> int:
    """Components of one layer: q, k, v of every head, then the MLP (if any)."""
    return 3 * cfg.n_heads + (0 if cfg.attn_only else 1)


def n_components(cfg) -> int:
    return cfg.n_layers * per_layer(cfg)


def qkv_component(cfg, layer: int, letter: int, head: int) -> int:
    """Index of head `head`'s q (letter 0), k (1) or v (2) in layer `layer`."""
    return layer * per_layer(cfg) + letter * cfg.n_heads + head


def mlp_component(cfg, layer: int) -> int:
    if cfg.attn_only:
        raise ValueError("an attention-only model has no MLP components")
    return layer * per_layer(cfg) + 3 * cfg.n_heads


def component_names(graph) -> list:
    """Node names of the components, in component order (ACDC's list order)."""
    cfg, out = graph.cfg, []
    for L in range(cfg.n_layers):
        out += [graph.qkv_node(L, x, h) for x in "qkv" for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            out.append(graph.senders[int(graph.mlp_sender[L])].name)
    return out


# ----- scores -----------------------------------------------------------------------------------
def _downstream_grad(engine, grads, sender: int) -> torch.Tensor:
    """dF/d(sender's output) [batch, pos, d_model]: the sum of the gradients at every receiver that
    reads it (receiver inputs are sums of sender outputs)."""
    g, cfg = engine.graph, engine.cfg
    total = grads["out"].clone()
    for L in range(cfg.n_layers):
        if g.receivers[int(g.qkv_receiver[L, 0, 0])].n_upstream > sender:
            total = total + grads["qkv_in"][L].sum(2)
        if not cfg.attn_only and g.receivers[int(g.mlp_receiver[L])].n_upstream > sender:
            total = total + grads["mlp_in"][L]
    return total


def component_terms(engine, data, objective: str = "metric") -> torch.Tensor:
    """[batch, n_components] signed terms (C(x_i) - C(x'_i)) . dF_i/dC(x_i), from one source
    forward and one traced forward and backward of the clean prompts."""
    cfg, g = engine.cfg, engine.graph
    cols, scored = data.scored()
    source = source_cache(engine, data)
    tr = traced_run(engine, data.clean, positions=cols)
    clean_logits = tr.logits.detach()  # the clean outputs exactly: a metric against them has gradient 0 here
    values = objectives.evaluate(objective, tr.logits, clean_logits, scored)  # [batch]
    grads = receiver_grads(tr, values.sum())  # examples are independent: row i holds dF_i/d.
    here = tr.cache()
    B = data.n
    out = here.qkv.new_zeros(B, n_components(cfg))
    for L in range(cfg.n_layers):
        d_qkv = here.qkv[L] - source.qkv[L].to(here.qkv.device)  # [3, B, P, H, dh]
        t = torch.einsum("xbphe,xbphe->bxh", grads["qkv"][L].detach(), d_qkv)  # [B, 3, H]
        first = qkv_component(cfg, L, 0, 0)
        out[:, first : first + 3 * cfg.n_heads] = t.reshape(B, -1)
        if not cfg.attn_only:
            s = int(g.mlp_sender[L])
            d_out = here.senders[s] - source.senders[s].to(here.senders.device)  # [B, P, D]
            out[:, mlp_component(cfg, L)] = (_downstream_grad(engine, grads, s).detach() * d_out).sum((1, 2))
    return out


def importance(engine, data, objective: str = "metric", chunk=None) -> torch.Tensor:
    """[n_components] float64 I_C = mean over examples of |term|, in passes of at most `chunk`
    examples (the terms are per example, so passes combine exactly)."""
    total = None
    for part, _ in data.passes(chunk):
        s = component_terms(engine, part, objective).abs().sum(0).double().cpu()
        total = s if total is None else total + s
    return total / data.n


def objective_scale(engine, data, objective: str) -> float:
    """The objective's magnitude: the larger of its mean |value| over the clean and over the
    source run's outputs (the scale a float32 ulp of the objective is measured against)."""
    clean, source = reference_logits(engine, data)
    scored = data.scored()[1]
    with torch.no_grad():
        return max(float(objectives.evaluate(objective, L, clean, scored).abs().double().mean()) for L in (clean, source))


def measured_importance(engine, data, objective: str = "metric", chunk=None) -> tuple:
    """(I_C [n_components] float64, tie floor): I_C computed in float64, every value within the
    run's tie floor of 0 set to 0. The floor is measured as for rankings
    (docs/scoring.md#ties-round-off-and-degenerate-objectives): I_C once more in the other
    precision (float32 <-> float64, the same weights), `numerics.tie_floor` of the largest
    difference; so round-off never puts a component above one with no effect, and float32 and
    float64 runs prune in the same order. A model in another dtype: its I_C as computed, floor 0."""
    mine = importance(engine, data, objective, chunk)
    dtype = engine.w.dtype
    if dtype not in (torch.float32, torch.float64):
        return mine, 0.0
    other = Engine(engine.w.to(dtype=torch.float64 if dtype == torch.float32 else torch.float32))
    if chunk:  # the same activation bytes per pass
        chunk = max(1, chunk * dtype.itemsize // other.w.dtype.itemsize)
    again = importance(other, data, objective, chunk)
    del other
    floor = tie_floor(float((mine - again).abs().max()), objective_scale(engine, data, objective))
    wide = mine if dtype == torch.float64 else again
    return torch.where(wide > floor, wide, torch.zeros_like(wide)), floor


def normalise_per_layer(scores: torch.Tensor, cfg) -> torch.Tensor:
    """Each layer's scores divided by their L2 norm (clamped below at 1e-6, as ACDC)."""
    by_layer = scores.reshape(cfg.n_layers, per_layer(cfg))
    return (by_layer / by_layer.norm(dim=1, keepdim=True).clamp(min=NORM_FLOOR)).reshape(-1)


def pruning_order(scores: torch.Tensor) -> torch.Tensor:
    """Component indices, least important first; ties in component order (a stable sort)."""
    return torch.sort(scores, stable=True).indices


# ----- circuits --------------------------------------------------------------------------------
def kept_edges(graph, kept: torch.Tensor) -> torch.Tensor:
    """bool [n_edges]: the edges between kept nodes when components `kept` (bool
    [n_components]) are kept (ACDC's `iterative_correspondence_from_mask`)."""
    cfg = graph.cfg
    by_layer = kept.reshape(cfg.n_layers, per_layer(cfg))
    qkv_kept = by_layer[:, : 3 * cfg.n_heads].reshape(cfg.n_layers, 3, cfg.n_heads)  # [L, 3, H]
    sender_on = torch.ones(len(graph.senders), dtype=torch.bool)
    receiver_on = torch.ones(len(graph.receivers), dtype=torch.bool)
    sender_on[graph.head_sender.reshape(-1)] = qkv_kept.any(1).reshape(-1)  # a head goes with all of q, k, v
    receiver_on[graph.qkv_receiver.reshape(-1)] = qkv_kept.reshape(-1)
    if not cfg.attn_only:
        mlp_kept = by_layer[:, -1]
        sender_on[graph.mlp_sender] = mlp_kept
        receiver_on[graph.mlp_receiver] = mlp_kept
    add = sender_on[graph.add_sender] & receiver_on[graph.add_receiver]
    return torch.cat([add, qkv_kept.reshape(-1)])  # DIRECT edges in (layer, letter, head) order


def family(graph, scores: torch.Tensor) -> CircuitFamily:
    """The N + 1 nested circuits of pruning components in `pruning_order(scores)`: row j has the
    j least important pruned, so k = N - j are kept (`thresholds`)."""
    N = n_components(graph.cfg)
    kept = torch.ones(N, dtype=torch.bool)
    rows = [kept_edges(graph, kept)]
    for c in pruning_order(scores).tolist():
        kept[c] = False
        rows.append(kept_edges(graph, kept))
    return CircuitFamily(circuits=torch.stack(rows), thresholds=[float(N - j) for j in range(N + 1)])


@register(
    "hisp",
    "HISP (Michel et al. 2019, ACDC's baseline): q/k/v and MLP masks scored by |mask gradient|, top-k kept, k = N..0",
    {
        "metric": ({"objective": "metric"},
                   "ACDC's: the task metric (on tracr 0 gradient at the clean point: ACDC's tie order, Tables 2-3)"),
        "logit-diff": ({"objective": "logit-diff"}, "the task's loss with the natural sign (gradient not 0 at the clean point)"),
    },
    output="family",
    references=("resample", "zero"),
    gradient=True,
    # per precision: one source forward and one traced forward + backward, like EAP
    timings=lambda bench: [Timing("logit-diff")],
    architectures="one-kv",
)
def hisp(engine, data, objective: str = "metric", chunk=None, normalise: bool = True, measure_floor: bool = True):
    """A `CircuitFamily` of N + 1 circuits (k = N..0 components kept). `normalise`: divide by each
    layer's L2 norm (ACDC and Michel et al.); False ranks the raw I_C. `measure_floor`: rank the
    float64 I_C with values within the measured tie floor of 0 set to 0 (`measured_importance`);
    False: I_C as computed in the engine's precision. `chunk`: examples per pass (default: as
    many as keep a traced run within `memory.ACTIVATION_BUDGET`); the result does not depend on it."""
    if chunk is None:
        chunk = examples_per_pass(engine.cfg, data.clean.shape[1], data.n, engine.w.dtype)
    if measure_floor:
        scores, _ = measured_importance(engine, data, objective, chunk)
    else:
        scores = importance(engine, data, objective, chunk)
    if normalise:
        scores = normalise_per_layer(scores, engine.cfg)
    return family(engine.graph, scores)
