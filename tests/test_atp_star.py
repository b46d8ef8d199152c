"""AtP* (harness/methods/atp_star.py) against answers known without it: exact patching in
`Engine.run` where what follows the attention pattern is linear, the engine's own patched q/k,
first order in the small-patch limit, GradDrop's dropped-layer terms against finite differences
of runs with that layer's outputs held at their clean values, a hand-built cancellation, EAP
noising, and the registry on tracr tasks."""
import pytest
import torch

from harness.core import objectives
from harness.core.data import Metric, TaskData
from harness.core.engine import Engine, SenderCache
from harness.core.weights import ModelConfig, random_weights
from test_eap import random_prompts
from harness.methods import atp_star as atp
from harness.methods import get_method

SPEC = get_method("atp-star")


def task(cfg, ablation="resample", seed=0, B=3, P=5, scale=None):
    """A random float64 model and random prompts; `scale` multiplies the last layer's W_Q and W_K
    (large: its softmax saturates)."""
    w = random_weights(cfg, seed=seed, dtype=torch.float64, init_range=0.15)
    if scale is not None:
        last = f"blocks.{cfg.n_layers - 1}.attn."
        w.params[last + "W_Q"] = w.params[last + "W_Q"] * scale
        w.params[last + "W_K"] = w.params[last + "W_K"] * scale
    e = Engine(w)
    data = random_prompts(cfg, B, P, seed, ablation)
    return e, data


def source(e, data):
    return e.cache(data.clean, zero=True) if data.ablation == "zero" else e.cache(data.corrupted)


def per_example_objective(e, data, logits):
    """[batch]: each example's share of the batch-mean objective the method differentiates."""
    return objectives.evaluate("logit-diff", logits, logits, data) / data.n


def patched_changes(e, data, patches, cache):
    """[k, batch]: each patch's per-example change of the objective (batch-mean shares)."""
    clean = per_example_objective(e, data, e.logits(data.clean))
    out = torch.cat([torch.stack([per_example_objective(e, data, lg) for lg in chunk])
                     for _, chunk in e.run_many(data.clean, patches, cache, chunk=len(patches))])
    return out - clean


def qk_edges(e, layer):
    """Edge ids of layer `layer`'s q/k DIRECT edges and of the ADDITION edges into its q/k inputs."""
    g, H = e.graph, e.cfg.n_heads
    direct = [g.direct_index(layer, x, h) for x in "qk" for h in range(H)]
    rows = g.qkv_receiver[layer, :2].reshape(-1)
    add = g.dense_index[rows][:, : g.receivers[int(rows[0])].n_upstream].reshape(-1).tolist()
    return direct + add


LINEAR = ModelConfig("tiny-atp-linear", 2, 2, 8, 4, 11, 6, d_mlp=None, normalization_type=None)
LN_MLP = ModelConfig("tiny-atp", 3, 2, 8, 4, 11, 6, d_mlp=12, act_fn="gelu_new", normalization_type="LN")
SHORTFORMER = ModelConfig("tiny-atp-short", 2, 2, 8, 4, 11, 6, d_mlp=12, normalization_type="LN",
                          positional_embedding_type="shortformer")


# ----- (1) the QK fix -------------------------------------------------------------------------------
@pytest.mark.parametrize("ablation", ["resample", "zero"])
@pytest.mark.parametrize("scale", [None, 12.0])
def test_qk_fix_is_exact_patching_where_the_rest_is_linear(ablation, scale):
    """Attention-only, no LayerNorm, a linear objective: everything after the last layer's
    attention pattern is linear in it, and its q/k are linear in their inputs, so the QK-fixed
    score of each of its q/k edges (DIRECT and ADDITION) is the exact patched change. Saturated
    (scale 12: W_Q, W_K x 12), EAP's first-order score misses most of that change."""
    e, data = task(LINEAR, ablation, scale=scale)
    ids = qk_edges(e, LINEAR.n_layers - 1)
    patches = torch.eye(e.graph.n_edges, dtype=torch.float64)[ids]
    exact = patched_changes(e, data, patches, source(e, data)).sum(1)
    fixed = SPEC.run(e, data, "qk-fix")[ids]
    assert exact.abs().max() > 1e-3
    torch.testing.assert_close(fixed, exact, rtol=1e-9, atol=1e-12)
    eap = get_method("eap").run(e, data, "noising")[ids]
    miss = float((eap - exact).abs().sum() / exact.abs().sum())
    if scale is None:
        assert miss > 1e-4  # first order is not exact even here: the softmax is not linear
    else:
        A = atp.patterns(e, *e.run(data.clean, record=True).qkv[-1][:2])
        assert (A.max(-1).values > 0.99).double().mean() > 0.9  # saturated: queries attend to one key
        assert miss > 0.5, miss


@pytest.mark.parametrize("P", [5, 3], ids=["projected", "folded"])  # d_head 4: pos > d_head projects q/k
@pytest.mark.parametrize("cfg", [LN_MLP, SHORTFORMER], ids=["ln", "shortformer"])
def test_patched_patterns_are_the_engines(cfg, P):
    """An ADDITION edge into a q_input (k_input) patched: the head's pattern the QK fix recomputes,
    through ln1 (and shortformer positions), is the pattern of the engine's q and k in a run with
    that one edge patched."""
    e, data = task(cfg, P=P)
    cache = source(e, data)
    tr = e.run(data.clean, record=True)
    d_senders = cache.senders - torch.stack(tr.senders)
    g = e.graph
    for L in range(cfg.n_layers):
        n_up = g.receivers[int(g.qkv_receiver[L, 0, 0])].n_upstream
        q, k = tr.qkv[L][0], tr.qkv[L][1]
        mine = atp.patched_patterns(e, L, tr.qkv_inputs[L][:, :, 0], d_senders[:n_up], q, k)
        for li in (0, 1):
            for h in range(cfg.n_heads):
                r = int(g.qkv_receiver[L, li, h])
                for s in range(n_up):
                    patch = torch.zeros(g.n_edges, dtype=torch.float64)
                    patch[int(g.dense_index[r, s])] = 1.0
                    theirs = atp.patterns(e, *e.run(data.clean, patch, cache, record=True).qkv[L][:2])[:, h]
                    torch.testing.assert_close(mine[li][s][:, h], theirs, rtol=1e-10, atol=1e-12)
                    assert (theirs - atp.patterns(e, q, k)[:, h]).abs().max() > 1e-6  # the patch moves it


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_qk_fix_is_first_order_in_the_small_patch_limit(monkeypatch, ablation):
    """With a source eps of the way from clean, the pattern's change is first order and the QK
    fix agrees with AtP to O(eps) on a LayerNorm + MLP model (this checks dL/dA, which sums every
    later receiver's gradient and the MLP's, and the ADDITION path through ln1)."""
    e, data = task(LN_MLP, ablation)
    clean, far = e.cache(data.clean), source(e, data)
    eps = 1e-6
    near = SenderCache(clean.senders + eps * (far.senders - clean.senders), clean.qkv + eps * (far.qkv - clean.qkv))
    monkeypatch.setattr(atp, "source_cache", lambda engine, d: near)
    fixed, plain = SPEC.run(e, data, "qk-fix") / eps, SPEC.run(e, data, "atp") / eps
    ids = sum((qk_edges(e, L) for L in range(LN_MLP.n_layers)), [])
    assert plain[ids].abs().max() > 1e-3
    torch.testing.assert_close(fixed, plain, rtol=1e-4, atol=1e-5 * float(plain.abs().max()))
    # and far from clean they differ
    monkeypatch.setattr(atp, "source_cache", lambda engine, d: far)
    assert (SPEC.run(e, data, "qk-fix") - SPEC.run(e, data, "atp"))[ids].abs().max() > 1e-3


# ----- (2) GradDrop ---------------------------------------------------------------------------------
def frozen_patch_and_cache(e, data, cache, layer):
    """A patch F and cache under which block `layer`'s outputs reach every later receiver at their
    clean values (F = 1 on those edges, the cache's entries for them the clean outputs): the
    engine's run of do(layer's residual contribution <- clean)."""
    g = e.graph
    clean = e.cache(data.clean)
    senders = cache.senders.clone()
    block = [s for s, snd in enumerate(g.senders) if snd.layer == layer]
    senders[block] = clean.senders[block]
    F = torch.zeros(g.n_edges, dtype=torch.float64)
    for i, (r, s) in enumerate(zip(g.add_receiver.tolist(), g.add_sender.tolist())):
        if g.senders[s].layer == layer and g.receivers[r].layer > layer:
            F[i] = 1.0
    return F, SenderCache(senders, cache.qkv.clone())


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_dropped_layer_terms_are_derivatives_with_that_layer_held_clean(ablation):
    """Each AtP+GD_l term (edges into layers < l) is d objective / d patch of that edge in a run
    whose block l outputs are held at their clean values, per example, by central differences;
    term 0 is AtP, the same without holding anything (3 layers, LayerNorm, MLPs)."""
    e, data = task(LN_MLP, ablation)
    cache = source(e, data)
    terms = atp.atp_star_terms(e, data, qk_fix=False, grad_drop=True)
    assert terms.shape == (LN_MLP.n_layers, data.n, e.graph.n_edges)
    layers = atp.receiver_layers(e.graph)
    E, h = e.graph.n_edges, 1e-5
    eye = torch.eye(E, dtype=torch.float64)
    for ell in range(LN_MLP.n_layers):
        if ell == 0:
            F, c, ids = torch.zeros(E, dtype=torch.float64), cache, torch.arange(E)
        else:
            (F, c), ids = frozen_patch_and_cache(e, data, cache, ell), torch.nonzero(layers < ell).flatten()
        d = patched_changes(e, data, torch.cat([F + h * eye[ids], F - h * eye[ids]]), c)
        fd = (d[: len(ids)] - d[len(ids):]).T / (2 * h)  # [batch, edges]
        assert fd.abs().max() > 1e-3
        torch.testing.assert_close(terms[ell][:, ids], fd, rtol=1e-6, atol=1e-9)
        if ell:  # the drop changes something, or this checks nothing
            assert (terms[ell][:, ids] - terms[0][:, ids]).abs().max() > 1e-4


def cancelling_model():
    """Two attention-only layers, one head each, no LayerNorm, one position: head 0.0 writes only
    along e_0, and head 1.0 reads e_0 and writes -e_0, so head 0.0's direct effect on the logits
    and its indirect effect through head 1.0 cancel exactly."""
    cfg = ModelConfig("cancel", 2, 1, 4, 2, 5, 1, d_mlp=None, normalization_type=None)
    w = random_weights(cfg, seed=3, dtype=torch.float64, init_range=0.5)
    p = w.params
    p["blocks.0.attn.W_O"] = torch.zeros(1, 2, 4, dtype=torch.float64)
    p["blocks.0.attn.W_O"][0, :, 0] = torch.tensor([1.0, -2.0], dtype=torch.float64)
    p["blocks.1.attn.W_V"] = torch.zeros(1, 4, 2, dtype=torch.float64)
    p["blocks.1.attn.W_V"][0, 0, 0] = 1.0
    p["blocks.1.attn.b_V"] = torch.zeros(1, 2, dtype=torch.float64)
    p["blocks.1.attn.W_O"] = torch.zeros(1, 2, 4, dtype=torch.float64)
    p["blocks.1.attn.W_O"][0, 0, 0] = -1.0
    e = Engine(w)
    g = torch.Generator().manual_seed(1)
    B = 4
    clean, corr = torch.randint(0, 5, (B, 1), generator=g), torch.randint(0, 5, (B, 1), generator=g)
    data = TaskData(clean=clean, corrupted=corr, pos_mask=torch.ones(B, 1, dtype=torch.bool),
                    metric=Metric("kl", objectives.kl, {"pos_mask": "pos_mask"}),
                    correct=torch.zeros(B, 1, dtype=torch.long), wrong=torch.tensor([[[1, 2]]] * B), ablation="resample")
    return e, data


def test_graddrop_recovers_a_cancelled_effect():
    """Edges into head 0.0's v (the only input that matters at one position): AtP and EAP give 0,
    since the total gradient cancels; GradDrop gives the sum over examples of |the change with
    layer 1 held clean| (the direct effect; the model is linear, so it is exact), which is not 0."""
    e, data = cancelling_model()
    g = e.graph
    r = int(g.qkv_receiver[0, 2, 0])
    ids = [int(g.dense_index[r, 0]), g.direct_index(0, "v", 0)]
    eap = get_method("eap").run(e, data, "noising")[ids]
    assert eap.abs().max() < 1e-12 and SPEC.run(e, data, "atp")[ids].abs().max() < 1e-12
    F, c = frozen_patch_and_cache(e, data, e.cache(data.corrupted), 1)
    direct = patched_changes(e, data, F + torch.eye(g.n_edges, dtype=torch.float64)[ids], c)  # [2, batch]
    assert direct.abs().min() > 1e-3
    for v in ("graddrop", "atp-star"):
        torch.testing.assert_close(SPEC.run(e, data, v)[ids], direct.abs().sum(1), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(SPEC.run(e, data, v, per_example=True)[:, ids], direct.abs().T, rtol=1e-10, atol=1e-12)


def test_graddrop_combines_as_the_paper_says():
    """(1 / (L - 1)) sum over layers of |AtP+GD_l|, the receiver's own layer 0 and upstream layers
    |AtP|; the output's edges (no layer downstream): |AtP|; one layer: |AtP|."""
    terms = torch.tensor([[[1.0, -2.0, 3.0, -4.0]], [[5.0, 6.0, 7.0, 8.0]], [[-9.0, 10.0, 11.0, 12.0]]])
    layers = torch.tensor([0, 1, 2, 3])  # L = 3; the last edge goes into the output
    got = atp.graddrop_combine(terms, layers, 3)
    want = torch.tensor([[(5 + 9) / 2, (2 * 1 + 10) / 2, (2 * 3) / 2, 4.0]])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(atp.graddrop_combine(terms[:1], torch.tensor([0, 0, 1, 1]), 1), terms[0].abs())


# ----- (3) no fixes: EAP ------------------------------------------------------------------------------
@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_without_fixes_it_is_eap_noising(ablation):
    e, data = task(LN_MLP, ablation)
    eap = get_method("eap")
    assert torch.equal(SPEC.run(e, data, "atp"), eap.run(e, data, "noising"))
    assert torch.equal(SPEC.run(e, data, "qk-fix", qk_fix=False), eap.run(e, data, "noising"))
    assert torch.equal(SPEC.run(e, data, "atp", per_example=True), eap.run(e, data, "noising", per_example=True))
    # the QK fix touches only query/key edges
    fixed, plain = SPEC.run(e, data, "qk-fix"), eap.run(e, data, "noising")
    others = torch.ones(e.graph.n_edges, dtype=torch.bool)
    others[sum((qk_edges(e, L) for L in range(LN_MLP.n_layers)), [])] = False
    torch.testing.assert_close(fixed[others], plain[others], rtol=1e-12, atol=1e-14)
    assert (fixed[~others] - plain[~others]).abs().max() > 1e-4


# ----- (4) the registry on tracr -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tracr(tracr_tasks):
    return {n: (Engine(t.load_model(dtype=torch.float64)), t.data()) for n, t in tracr_tasks.items()}


@pytest.mark.parametrize("name", ["tracr-reverse", "tracr-xproportion"])
@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_registry_runs_on_tracr(tracr, name, ablation):
    e, d = tracr[name]
    d = d.with_ablation(ablation)
    assert set(SPEC.references_for("atp-star")) == {"resample", "zero"} and SPEC.gradient
    assert set(SPEC.default_variants) == {"atp-star", "qk-fix", "graddrop"}
    for v in SPEC.variants:
        s = SPEC.run(e, d, v)
        assert s.shape == (e.graph.n_edges,) and torch.isfinite(s).all() and s.abs().max() > 0, v
        pe = SPEC.run(e, d, v, per_example=True)
        torch.testing.assert_close(pe.sum(0), s, rtol=1e-10, atol=1e-12)
        if v in ("atp-star", "graddrop"):
            assert (s >= 0).all()


def test_tracr_attention_saturates_and_the_qk_fix_sees_it(tracr):
    """tracr's compiled attention is near one-hot, so EAP's query/key scores are ~0 where the
    patched pattern moves; the QK fix gives those edges their change (tracr-reverse, resample)."""
    e, d = tracr["tracr-reverse"]
    d = d.with_ablation("resample")
    ids = sum((qk_edges(e, L) for L in range(e.cfg.n_layers)), [])
    fixed, plain = SPEC.run(e, d, "qk-fix")[ids], get_method("eap").run(e, d, "noising")[ids]
    assert fixed.abs().max() > 0.1 and plain.abs().max() < 1e-3 * fixed.abs().max()
