"""EAP-IG (Hanna et al. 2024; docs/methods.md#eap-ig): gradients averaged along a path between
the reference and the clean run, contracted with EAP's noising difference (source - clean
sender outputs, from the clean and source runs, never from the interpolated ones; under zero
ablation the source is the zero cache). Two paths, as in the EAP-IG library:

"inputs": the input nodes' embeddings are interpolated from the resample source run's (the
corrupted prompt's, positions scrambled where the data says so; alpha = 0) towards the
clean prompt's, alpha = k/m for k = 0..m-1 (left Riemann sum; the clean end is excluded, as in
EAP-IG's code); the gradients at every receiver are averaged over the m runs. With zero
ablation the path starts at zero embeddings.

"activations" (the library's `get_scores_ig_activations`, github hannamw/EAP-IG @ 795f5607,
src/eap/attribute.py): one group of senders at a time, a group being what one of the library's
hook points writes: the input nodes, all heads of one attention layer, one MLP (2L+1 groups;
L+1 without MLPs). For each group and alpha = k/m, k = 1..m (right Riemann sum: the clean end
included, the source end excluded, as in the library), one run of the clean prompts in which
that group's outputs are alpha x clean + (1 - alpha) x source for every reader and held there
(no gradient flows back through the group: the library's hook returns a tensor made from
cached activations), everything else computed. The gradients at every receiver are averaged
over all (2L+1) x m runs, every run scoring every edge (the library's backward hooks are on in
each). The replacement is `Engine.run`'s hold: the group's outputs replaced by the interpolated
ones, detached, for every reader (the same as patching every edge out of the group to 1 towards
them: the group's inputs are clean, so its own outputs are the clean ones, and a patch of 1 passes
no gradient to them; tests/test_eap_ig.py compares the two), in an unpatched traced run that keeps
the shared q/k/v path (`harness.core.shared_qkv`); the input group is a run on interpolated
embeddings. `activation_group_scores` keeps the groups apart: the edges out of a group, scored
from that group's runs, add up to the change of the objective when the whole group is patched
(completeness) as m grows; the averaged score does not.
Forwards: the clean run, the source run (none under zero ablation) and (2L+1) x m traced runs
with one backward each (docs/methods.md#cost-model), none patched: on random-init GPT-2 small
(8 x 16, CPU, one thread) about 100 s, 110-145x one forward+backward and 18-19x inputs-5 (each
held run about 1.05-1.08x a forward+backward; through engine patches it was 557x). DIRECT edges
have no group of their own: they are contracted in every run like the others (the library has no
DIRECT edges).

Why: plain EAP linearises at the clean point, where the task metric (compared with clean
outputs) has zero gradient (docs/methods.md#zero-gradient-at-the-clean-point); averaging along the path does not.
"""
from __future__ import annotations

import torch

from harness.core import objectives
from harness.core.references import source_cache, source_input_embeds
from harness.methods.attribution import contract, receiver_grads, traced_run
from harness.methods.registry import Timing, register, task_objective

PATHS = ("inputs", "activations")


def path_embeddings(engine, data, steps: int):
    """The m interpolated input embeddings [n_inputs, batch, pos, d_model], alpha = k/m."""
    clean = engine.input_embeddings(data.clean)
    start = torch.zeros_like(clean) if data.ablation == "zero" else source_input_embeds(engine, data)
    return [start + (k / steps) * (clean - start) for k in range(steps)]


def sender_groups(graph) -> list:
    """[(name, sender ids)]: the groups "activations" interpolates one at a time, in topological
    order: the input nodes together (the library's one input node; tracr's token and position
    embeddings are one group), then per layer every head (the library replaces
    `attn.hook_result`, all heads of the layer at once) and the MLP."""
    groups = [("input", list(range(graph.n_inputs)))]
    for L in range(graph.cfg.n_layers):
        groups.append((f"attn{L}", graph.head_sender[L].tolist()))
        if not graph.cfg.attn_only:
            groups.append((f"mlp{L}", [int(graph.mlp_sender[L])]))
    return groups


def group_edges(graph, senders) -> torch.Tensor:
    """bool [n_edges]: the ADDITION edges out of `senders`."""
    mask = torch.zeros(graph.n_edges, dtype=torch.bool)
    mask[: graph.n_add] = torch.isin(graph.add_sender, torch.as_tensor(senders, dtype=torch.long))
    return mask


def _accumulate(acc, grads):
    """acc + grads, receiver by receiver (in place after the first run)."""
    if acc is None:
        return {k: [g.clone(memory_format=torch.contiguous_format) for g in v] if isinstance(v, list)
                else v.clone(memory_format=torch.contiguous_format) for k, v in grads.items()}
    for k, v in grads.items():
        for a, g in zip(acc[k], v) if isinstance(v, list) else [(acc[k], v)]:
            a.add_(g)
    return acc


def _path_ends(engine, data):
    """What both paths read at their ends: the scored columns (cols, scored), the clean run's cache
    and logits (one forward), the source cache, and the noising differences (source - clean) of
    the senders and q/k/v."""
    cols, scored = data.scored()  # only the scored columns are unembedded
    with torch.no_grad():
        clean_run = engine.run(data.clean, record=True, positions=cols)  # clean logits and cache in one forward
    clean, clean_logits = clean_run.cache(), clean_run.logits
    source = source_cache(engine, data)
    return cols, scored, clean, clean_logits, source, source.senders - clean.senders, source.qkv - clean.qkv


def _activation_runs(engine, data, steps: int, objective: str):
    """(d_senders, d_qkv, [receiver gradients of each group, summed over its m runs]) for the
    "activations" path (module docstring). Gradients add over runs and the contraction is linear,
    so a caller contracts sums, not every run."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    graph = engine.graph
    cols, scored, clean, clean_logits, source, d_send, d_qkv = _path_ends(engine, data)
    alphas = [k / steps for k in range(1, steps + 1)]  # weight on clean; k = 1..m as the library
    n_in = graph.n_inputs
    sums = []
    for g, (_, senders) in enumerate(sender_groups(graph)):
        acc = None
        mask = torch.zeros(len(graph.senders), dtype=torch.bool)
        mask[senders] = True
        for a in alphas:
            if g == 0:  # nothing is upstream of the inputs: replacing them is a run on other embeddings
                emb = torch.lerp(source.senders[:n_in], clean.senders[:n_in], a)  # exact at a = 1
                tr = traced_run(engine, data.clean, input_embeds=emb, positions=cols)
            else:  # the group held (`Engine.run`'s hold): an unpatched traced run
                held = torch.lerp(source.senders[senders], clean.senders[senders], a)  # [n_group, B, P, D]
                emb = clean.senders[:n_in].detach().requires_grad_(True)  # the leaf gradients start from
                tr = engine.run(data.clean, record=True, input_embeds=emb, positions=cols, hold=(mask, held))
            obj = objectives.evaluate(objective, tr.logits, clean_logits, scored).mean()
            acc = _accumulate(acc, receiver_grads(tr, obj))
            del tr
        sums.append(acc)
    return d_send, d_qkv, sums


def activation_group_scores(engine, data, steps: int = 5, objective: str = "logit-diff", per_example: bool = False):
    """[n_groups, n_edges] (per_example: [n_groups, batch, n_edges]): row g is every edge's
    gradient x difference averaged over group g's m runs (`sender_groups` order). The "activations"
    scores are the mean of the rows."""
    d_send, d_qkv, sums = _activation_runs(engine, data, steps, objective)
    return torch.stack([contract(engine, s, d_send, d_qkv, per_example=per_example).detach() / steps for s in sums])


def _inputs(engine, data, steps, objective, per_example, per_position):
    if steps < 1:
        raise ValueError("steps must be >= 1")
    cols, scored, clean, clean_logits, source, d_send, d_qkv = _path_ends(engine, data)
    total = None
    for emb in path_embeddings(engine, data, steps):
        tr = traced_run(engine, data.clean, input_embeds=emb, positions=cols)
        grads = receiver_grads(tr, objectives.evaluate(objective, tr.logits, clean_logits, scored).mean())
        s = contract(engine, grads, d_send, d_qkv, per_example=per_example, per_position=per_position).detach()
        total = s if total is None else total + s
    return total / steps


def _activations(engine, data, steps, objective, per_example, per_position):
    d_send, d_qkv, sums = _activation_runs(engine, data, steps, objective)
    total = sums[0]
    for s in sums[1:]:
        total = _accumulate(total, s)
    return contract(engine, total, d_send, d_qkv, per_example=per_example,
                    per_position=per_position).detach() / (steps * len(sums))


def _held_runs(graph, steps: int) -> int:
    """Runs holding a group in one "activations" run: m per group other than the inputs."""
    return steps * (len(sender_groups(graph)) - 1)


@register(
    "eap-ig",
    "EAP with integrated gradients: over input embeddings (EAP-IG 'inputs') or one group of activations at a time ('activations')",
    {
        "inputs-5": ({"steps": 5}, "5 steps (MIB's default), answer logit difference"),
        "inputs-20": ({"steps": 20}, "20 steps, answer logit difference"),
        "inputs-5-metric": ({"steps": 5, "objective": "metric"}, "5 steps, the task metric vs clean outputs"),
        "inputs-5-abs": ({"steps": 5, "aggregate": "abs"}, "5 steps, sum over examples of |per-example score| (cannot cancel)"),
        "activations-5": ({"path": "activations", "steps": 5},
                          "each layer's senders interpolated in turn (2L+1 groups x 5 steps), answer logit difference"),
        "activations-20": ({"path": "activations", "steps": 20}, "activations, 20 steps, answer logit difference"),
        "activations-5-metric": ({"path": "activations", "steps": 5, "objective": "metric"},
                                 "activations, 5 steps, the task metric vs clean outputs"),
        "activations-5-abs": ({"path": "activations", "steps": 5, "aggregate": "abs"},
                              "activations, 5 steps, sum over examples of |per-example score| (cannot cancel)"),
    },
    # "activations" only when named: (2L+1) x m traced runs (held, unpatched), about 100 s per 8 x 16 batch on
    # GPT-2 (CPU, one thread): about 140x one forward+backward, 18x inputs-5 (through engine patches it was 557x)
    default_variants=["inputs-5", "inputs-5-metric", "inputs-5-abs"],
    gradient=True,
    per_example=True,
    per_position=True,
    objective=task_objective("logit-diff"),
    timings=lambda bench: [
        Timing("inputs-5", label=f"inputs-{bench.ig_steps}", options={"steps": bench.ig_steps}),
        # (2L+1) x m traced runs, 2L x m of them holding a group (`Engine.run`'s hold, each costing
        # the same): a looping row, so a budget cuts it and its seconds are extrapolated
        Timing("activations-5", label=f"activations-{bench.ig_steps}", options={"steps": bench.ig_steps},
               patched_forwards=lambda graph, batch: _held_runs(graph, bench.ig_steps)),
    ],
)
def eap_ig(engine, data, steps=5, objective="logit-diff", per_example=False, per_position=False, path="inputs"):
    if path not in PATHS:
        raise KeyError(f"unknown EAP-IG path {path!r}; paths: {', '.join(PATHS)}")
    run = _inputs if path == "inputs" else _activations
    return run(engine, data, steps, objective, per_example, per_position)
