"""EAP-IG (inputs): m steps = the mean of m independent mask-gradient evaluations, each at
interpolated input embeddings; one step is EAP's gradient at the corrupted input."""
import pytest
import torch

from harness.core.engine import SenderCache
from harness.methods import get_method
from harness.methods.eap_ig import path_embeddings
from test_eap import objective, tiny_task


def mask_gradient(e, data, emb, name):
    """d objective / d alpha at alpha = 0 in a run on `emb`, through the engine mask alone.

    The mask moves input_r by alpha * (patch_s - current_s); a patch cache holding
    current + (corrupted - clean) makes that the EAP-IG difference (corrupted - clean)."""
    here = e.run(data.clean, record=True, input_embeds=emb).cache()
    clean = e.cache(data.clean)
    corr = e.cache(data.clean, zero=True) if data.ablation == "zero" else e.cache(data.corrupted)
    patch = SenderCache(here.senders + corr.senders - clean.senders, here.qkv + corr.qkv - clean.qkv)
    alpha = torch.zeros(e.graph.n_edges, dtype=torch.float64, requires_grad=True)
    logits = e.run(data.clean, alpha, patch, input_embeds=emb).logits
    return torch.autograd.grad(objective(name, logits, data, e.logits(data.clean)), alpha)[0]


@pytest.mark.parametrize("ablation", ["resample", "zero"])
@pytest.mark.parametrize("name", ["logit-diff", "metric"])
def test_eap_ig_is_mean_of_independent_gradients(ablation, name):
    e, data = tiny_task(ablation, seed=2)
    m = 4
    embs = path_embeddings(e, data, m)
    clean = e.input_embeddings(data.clean)
    start = torch.zeros_like(clean) if ablation == "zero" else e.input_embeddings(data.corrupted)
    for k, emb in enumerate(embs):  # alpha = k/m: left Riemann sum, the clean end excluded
        torch.testing.assert_close(emb, start + k / m * (clean - start))
    want = torch.stack([mask_gradient(e, data, emb, name) for emb in embs]).mean(0)
    got = get_method("eap-ig").run(e, data, "inputs-5", steps=m, objective=name)
    assert want.abs().max() > 1e-4  # the task metric too: off the clean point its gradient lives
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_one_step_is_minus_denoising_eap():
    """alpha = 0 is the corrupted input, so one step is the gradient at the corrupted run times
    (corrupted - clean): EAP's denoising score with the sign flipped."""
    e, data = tiny_task("resample", seed=3)
    one = get_method("eap-ig").run(e, data, "inputs-5", steps=1)
    den = get_method("eap").run(e, data, "denoising")
    torch.testing.assert_close(one, -den, rtol=1e-8, atol=1e-10)



# ----- "activations": one group of senders interpolated at a time (EAP-IG's get_scores_ig_activations)

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402

from harness.core.engine import Engine  # noqa: E402
from harness.core.weights import random_weights  # noqa: E402
from harness.methods.eap_ig import activation_group_scores, group_edges, sender_groups  # noqa: E402
from test_eap import CFG  # noqa: E402


def caches(e, data):
    clean = e.cache(data.clean)
    source = e.cache(data.clean, zero=True) if data.ablation == "zero" else e.cache(data.corrupted)
    return clean, source


def fd_on(e, data, tokens, base, direction, name, edges=None, eps=1e-5):
    """Central differences of the objective at patch `base` [n_edges], each edge's patch (of
    `edges`, default all) moved by +-eps towards `direction` (a SenderCache), through the no-grad
    patched forward (`run_many`): no autograd, no receiver gradients, no contraction."""
    E = e.graph.n_edges
    edges = torch.arange(E) if edges is None else edges
    clean_logits = e.logits(data.clean)
    eye = torch.eye(E, dtype=torch.float64)[edges] * eps
    patches = torch.cat([base + eye, base - eye])
    vals = torch.stack([objective(name, lg, data, clean_logits)
                        for _, chunk in e.run_many(tokens, patches, direction, chunk=len(patches)) for lg in chunk])
    return (vals[: len(edges)] - vals[len(edges):]) / (2 * eps)


def step_by_differences(e, data, senders, alpha, name):
    """[n_edges]: <gradient at the receiver, source - clean of the sender> in the run where group
    `senders` is held at alpha x clean + (1 - alpha) x source, by finite differences.

    Edges out of the group: the run is patch = (1 - alpha) on the group's edges towards the source
    itself (the group's own outputs are clean there), so d objective / d patch is the wanted
    product. Every other edge: the group's edges patched fully (1: held, no path back through
    the group) towards a cache holding the held outputs for the group and, for every other
    sender, its output in that run plus (source - clean), so moving an edge's patch moves its
    receiver by source - clean."""
    clean, source = caches(e, data)
    mask = group_edges(e.graph, senders).double()
    own = fd_on(e, data, data.clean, (1 - alpha) * mask, source, name)
    held = torch.lerp(source.senders, clean.senders, alpha)
    here = e.run(data.clean, mask, SenderCache(held, clean.qkv), record=True).cache()
    in_group = torch.zeros(len(e.graph.senders), dtype=torch.bool)
    in_group[senders] = True
    d_send, d_qkv = source.senders - clean.senders, source.qkv - clean.qkv
    direction = SenderCache(torch.where(in_group[:, None, None, None], held, here.senders + d_send), here.qkv + d_qkv)
    rest = fd_on(e, data, data.clean, mask, direction, name)
    return torch.where(mask.bool(), own, rest)


@pytest.mark.parametrize("ablation", ["resample", "zero"])
@pytest.mark.parametrize("name", ["logit-diff", "metric"])
def test_activations_each_run_is_one_group_held_on_the_path(ablation, name):
    """The library's definition, term by term: groups (the inputs, each layer's heads, each MLP),
    alpha = k/m for k = 1..m (clean end included), the group held (no gradient through it), the
    fixed source - clean difference, every run scoring every edge; scores = the mean over runs."""
    e, data = tiny_task(ablation, seed=4)
    m = 3
    groups = sender_groups(e.graph)
    assert [n for n, _ in groups] == ["input", "attn0", "mlp0", "attn1", "mlp1"]
    want = torch.stack([torch.stack([step_by_differences(e, data, s, k / m, name) for k in range(1, m + 1)]).mean(0)
                        for _, s in groups])
    got = activation_group_scores(e, data, steps=m, objective=name)
    assert want.abs().max() > 1e-4
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    scores = get_method("eap-ig").run(e, data, "activations-5", steps=m, objective=name)
    torch.testing.assert_close(scores, want.mean(0), rtol=1e-6, atol=1e-9)


def run_objective(e, data, patch, source, name="logit-diff"):
    return float(objective(name, e.run(data.clean, patch, source).logits, data, e.logits(data.clean)))


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_activations_approach_the_integral_and_are_complete_per_group(ablation):
    """m -> infinity, one layer with an MLP (3 groups), weights small enough for a smooth path:
    each group's row, on the edges out of the group, tends to the integral over alpha of
    d objective / d patch along patch = (1 - alpha) x (the group's edges) towards the source
    (Gauss-Legendre, 10 nodes, of finite differences through the no-grad patched forward). The
    right Riemann sum's error falls as 1/m, so it halves from m = 10 to 20 and Richardson's
    2 S(20) - S(10) is compared. Those edges add up to the objective's change when the whole
    group is patched (completeness; two plain runs). Under zero ablation the inputs' path starts
    at an all-zero residual, where LayerNorm's scale is eps-dominated (a bend at alpha about
    sqrt(eps) / |x| that 20 steps do not resolve): that group is left out there."""
    _, data = tiny_task(ablation, seed=5)
    e = Engine(random_weights(dataclasses.replace(CFG, name="tiny-1l", n_layers=1), seed=5, dtype=torch.float64,
                              init_range=0.03))
    _, source = caches(e, data)
    coarse, fine = (activation_group_scores(e, data, steps=m) for m in (10, 20))
    x, w = np.polynomial.legendre.leggauss(10)
    groups = sender_groups(e.graph)
    assert [n for n, _ in groups] == ["input", "attn0", "mlp0"]
    for g, (name, senders) in enumerate(groups):
        if ablation == "zero" and name == "input":
            continue
        mask = group_edges(e.graph, senders)
        edges = mask.nonzero().squeeze(1)
        exact = sum(float(wi) / 2 * fd_on(e, data, data.clean, (1 - (xi + 1) / 2) * mask.double(), source, "logit-diff", edges)
                    for xi, wi in zip(x, w))
        scale = float(exact.abs().max())
        assert scale > 1e-3, name
        err = lambda s: float((s[g][edges] - exact).abs().max())  # noqa: E731
        assert 0.4 < err(fine) / err(coarse) < 0.6, name  # first order
        richardson = 2 * fine[g] - coarse[g]
        torch.testing.assert_close(richardson[edges], exact, rtol=0, atol=1e-2 * scale)
        change = run_objective(e, data, mask.double(), source) - run_objective(e, data, None, None)
        assert float(exact.sum()) == pytest.approx(change, rel=1e-3)  # the reference itself is complete
        assert float(richardson[edges].sum()) == pytest.approx(change, abs=2e-2 * max(abs(change), scale)), name


def test_activations_one_step_is_eap_with_each_group_held_in_turn():
    """m = 1 is alpha = 1 only: every run is the clean run, with one group held. A receiver
    downstream of every group (the logits) gets EAP's clean gradient in each run, so its edges
    score EAP noising exactly; the last MLP's input gets it in every run but its own (held: no
    gradient), 4 of 5. In a one-layer attention-only model there are two groups, so every
    q/k/v input and DIRECT edge scores half of EAP noising and every edge into the logits all of it."""
    e, data = tiny_task("resample", seed=6)
    act = get_method("eap-ig").run(e, data, "activations-5", steps=1)
    eap = get_method("eap").run(e, data, "noising")
    g = e.graph
    into = lambda r: (g.add_receiver == r).nonzero().squeeze(1)  # noqa: E731
    assert eap[into(g.output_receiver)].abs().max() > 1e-3
    torch.testing.assert_close(act[into(g.output_receiver)], eap[into(g.output_receiver)], rtol=1e-8, atol=1e-12)
    last_mlp = int(g.mlp_receiver[-1])
    torch.testing.assert_close(act[into(last_mlp)], 4 / 5 * eap[into(last_mlp)], rtol=1e-8, atol=1e-12)
    assert not torch.allclose(act, eap)  # elsewhere a held group removes paths

    cfg = dataclasses.replace(CFG, name="tiny-attn-1l", n_layers=1, d_mlp=None)
    e1 = Engine(random_weights(cfg, seed=6, dtype=torch.float64, init_range=0.3))
    act = get_method("eap-ig").run(e1, data, "activations-5", steps=1)
    eap = get_method("eap").run(e1, data, "noising")
    half = torch.ones(e1.graph.n_edges, dtype=torch.float64)
    half[g_qkv := (e1.graph.add_receiver != e1.graph.output_receiver).nonzero().squeeze(1)] = 0.5
    half[e1.graph.n_add:] = 0.5
    assert g_qkv.numel() > 0 and eap[g_qkv].abs().max() > 1e-4
    torch.testing.assert_close(act, half * eap, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_activations_cost_two_plus_m_runs_per_group(ablation):
    """Forwards: the clean run, the source run (none under zero ablation: its cache needs no
    forward) and m per group, none patched (the inputs' run on other embeddings, the others hold
    their group: `Engine.run`'s hold); the held runs are the benchmark's looping units."""
    from harness.bench.counting import CountingEngine
    from harness.bench.suite import BenchConfig

    e, data = tiny_task(ablation, seed=7)
    counting = CountingEngine(e.w, e.graph)
    m, n_groups = 4, 2 * CFG.n_layers + 1
    get_method("eap-ig").run(counting, data, "activations-5", steps=m)
    assert counting.forwards == (2 if ablation == "resample" else 1) + m * n_groups
    assert counting.patched == m * (n_groups - 1)  # held runs: the units a budget cuts
    timing = {t.variant: t for t in get_method("eap-ig").timings(BenchConfig(ig_steps=m))}["activations-5"]
    assert timing.options == {"steps": m} and timing.patched_forwards(e.graph, data.n) == m * (n_groups - 1)


def patched_group_scores(e, data, steps, name, per_example=False):
    """[n_groups, n_edges] (per_example: [n_groups, batch, n_edges]): `activation_group_scores`
    as first implemented, every group (the inputs too) held by an engine patch: 1 on every edge out
    of the group, towards a source whose senders are the interpolated outputs (the per-receiver
    patched path; a patch of 1 passes no gradient back into the group)."""
    from harness.core import objectives
    from harness.methods.attribution import contract, receiver_grads, traced_run
    from harness.methods.eap_ig import _path_ends

    cols, scored, clean, clean_logits, source, d_send, d_qkv = _path_ends(e, data)
    rows = []
    for _, senders in sender_groups(e.graph):
        total = 0
        for k in range(1, steps + 1):
            held = SenderCache(torch.lerp(source.senders, clean.senders, k / steps), clean.qkv)
            tr = traced_run(e, data.clean, group_edges(e.graph, senders).double(), held, positions=cols)
            grads = receiver_grads(tr, objectives.evaluate(name, tr.logits, clean_logits, scored).mean())
            total = total + contract(e, grads, d_send, d_qkv, per_example=per_example).detach()
        rows.append(total / steps)
    return torch.stack(rows)


@pytest.mark.parametrize("model", ["tiny", "attn-only", "tracr-like"])
@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_activations_holding_each_group_equals_patching_it(model, ablation):
    """Each group held through `Engine.run(hold=...)` (the shared q/k/v path; the inputs as other
    embeddings) gives every group's row, and so the scores, of the patched formulation (every edge
    out of the group patched towards the interpolated outputs), per example too, in float64."""
    e, data = tiny_task(ablation, seed=8)
    if model != "tiny":
        from test_engine_patching import CONFIGS

        cfg = dataclasses.replace(CONFIGS["attn-only" if model == "attn-only" else "tracr-like"], d_vocab=CFG.d_vocab,
                                  d_vocab_out=CFG.d_vocab_out, n_ctx=CFG.n_ctx)
        e = Engine(random_weights(cfg, seed=8, dtype=torch.float64, init_range=0.3))
    m = 3
    want = patched_group_scores(e, data, m, "logit-diff", per_example=True)
    assert want.shape[0] == len(sender_groups(e.graph)) and want.abs().max() > 1e-4
    got = activation_group_scores(e, data, steps=m, per_example=True)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(activation_group_scores(e, data, steps=m, objective="metric"),
                               patched_group_scores(e, data, m, "metric"), rtol=1e-9, atol=1e-11)
    scores = get_method("eap-ig").run(e, data, "activations-5", steps=m)
    torch.testing.assert_close(scores, want.sum(1).mean(0), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("task", ["tracr-xproportion", "tracr-reverse"])
def test_activations_through_the_registry_on_tracr(tracr_tasks, task):
    """Both references: finite scores for every edge and per-example terms that add up to them;
    with the task metric (zero gradient at the clean point, so EAP
    noising scores nothing) the path still scores edges."""
    t = tracr_tasks[task]
    e = Engine(t.load_model(dtype=torch.float64))
    spec = get_method("eap-ig")
    for ref in ("resample", "zero"):
        assert ref in spec.references_for("activations-5")
        data = t.data().with_ablation(ref)
        s = spec.run(e, data, "activations-5")
        assert s.shape == (e.graph.n_edges,) and torch.isfinite(s).all() and s.abs().max() > 1e-6, ref
        per = spec.run(e, data, "activations-5", per_example=True)
        assert per.shape == (data.n, e.graph.n_edges)
        torch.testing.assert_close(per.sum(0), s, rtol=1e-9, atol=1e-12)
        eap_metric = get_method("eap").run(e, data, "noising", objective="metric")
        act_metric = spec.run(e, data, "activations-5-metric")
        assert eap_metric.abs().max() < 1e-9 < act_metric.abs().max(), ref
