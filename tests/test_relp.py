"""RelP: each LRP rule against a case with a known answer.

- Identity-rule: the activation's forward is unchanged and its derivative is act(x)/x; for ReLU
  that is ReLU's own derivative.
- All rules together on a model where each is a no-op (no LayerNorm, ReLU, attention that does
  not depend on its input): RelP is EAP exactly.
- LN-rule: the output receiver's coefficients by hand (logit gradient through W_U, the LayerNorm
  gain and the centring, divided by the clean run's sigma held constant).
- AH-rule: on an attention-only model without LayerNorm every score is the exact effect of
  patching that edge with every attention pattern held at the clean run's (q and k pinned by
  the engine's own patching); q/k edges score 0.
- The registry runs it on a tracr task under both references.
"""
import pytest
import torch

from harness.core import objectives
from harness.core.engine import Engine, SenderCache
from harness.core.weights import ModelConfig, random_weights
from harness.methods import get_method
from harness.methods.relp import identity_rule
from test_eap import check_runs_on_tracr, random_prompts, tiny_task


def task_for(cfg, ablation, seed=0, zero_qk=False, init_range=0.15):
    w = random_weights(cfg, seed=seed, dtype=torch.float64, init_range=init_range)
    if zero_qk:  # q = k = 0: uniform causal attention whatever the input
        for L in range(cfg.n_layers):
            for m in "QK":
                w.params[f"blocks.{L}.attn.W_{m}"].zero_()
                w.params[f"blocks.{L}.attn.b_{m}"].zero_()
    e = Engine(w)
    data = random_prompts(cfg, 3, 5, seed, ablation)
    return e, data


@pytest.mark.parametrize("act", [torch.nn.functional.gelu, torch.relu, torch.tanh])
def test_identity_rule_keeps_the_forward_and_passes_act_over_x(act):
    x = torch.tensor([-2.0, -0.3, 0.0, 1e-3, 0.7, 3.0], dtype=torch.float64, requires_grad=True)
    y = identity_rule(act)(x)
    torch.testing.assert_close(y, act(x), rtol=0, atol=0)
    (g,) = torch.autograd.grad(y.sum(), x)
    xd = x.detach()
    slope0 = {torch.nn.functional.gelu: 0.5, torch.relu: 0.0, torch.tanh: 1.0}[act]
    want = torch.where(xd == 0, torch.tensor(slope0, dtype=xd.dtype), act(xd) / xd)
    torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-12)
    if act is torch.relu:  # relu(x)/x is relu's derivative: the rule is a no-op on ReLU models
        torch.testing.assert_close(g, (xd > 0).double(), rtol=0, atol=0)


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_relp_is_eap_where_every_rule_is_a_no_op(ablation):
    cfg = ModelConfig("tiny-linear", 2, 2, 8, 4, 11, 6, d_mlp=12, act_fn="relu", normalization_type=None)
    e, data = task_for(cfg, ablation, seed=1, zero_qk=True)
    eap = get_method("eap").run(e, data, "noising")
    assert eap.abs().max() > 1e-3
    for v in ("paper", "no-ah", "ln"):
        torch.testing.assert_close(get_method("relp").run(e, data, v), eap, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_identity_rule_mlp_coefficients_by_hand(ablation):
    """One layer, GELU MLP, no LayerNorm: edges into the MLP input get
    <((dO/dlogits W_U^T) W_out^T * gelu(h)/h) W_in^T, sender difference>, h the clean pre-activation."""
    cfg = ModelConfig("tiny-mlp", 1, 2, 8, 4, 11, 6, d_mlp=12, act_fn="gelu", normalization_type=None)
    e, data = task_for(cfg, ablation, seed=4, init_range=0.3)
    g, w = e.graph, e.w
    cols, scored = data.scored()
    with torch.no_grad():
        tr = e.run(data.clean, record=True)
    leaf = tr.logits[:, cols].detach().requires_grad_(True)
    (dlogits,) = torch.autograd.grad(objectives.evaluate("logit-diff", leaf, leaf.detach(), scored).mean(), leaf)
    h = (tr.mlp_inputs[0] @ w["blocks.0.mlp.W_in"] + w["blocks.0.mlp.b_in"])[:, cols]
    ratio = torch.nn.functional.gelu(h) / h
    grad_in = (((dlogits @ w["unembed.W_U"].T) @ w["blocks.0.mlp.W_out"].T) * ratio) @ w["blocks.0.mlp.W_in"].T
    source = e.cache(data.clean, zero=True) if ablation == "zero" else e.cache(data.corrupted)
    diff = (source.senders - torch.stack(tr.senders))[:, :, cols]
    rows = torch.nonzero(g.add_receiver == int(g.mlp_receiver[0])).flatten()
    want = torch.einsum("bnd,sbnd->s", grad_in, diff[g.add_sender[rows]])
    got = get_method("relp").run(e, data, "no-ah")[rows]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    eap = get_method("eap").run(e, data, "noising")[rows]
    assert (eap - want).abs().max() > 1e-4  # GELU's derivative is not gelu(h)/h


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_ln_rule_output_coefficients_by_hand(ablation):
    """Edges into the output: <dO/dlogits W_U^T * ln_w, centred, / sigma_clean, sender difference>."""
    e, data = tiny_task(ablation, seed=3)
    g, w = e.graph, e.w
    cols, scored = data.scored()
    with torch.no_grad():
        tr = e.run(data.clean, record=True)
    resid = tr.output_input[:, cols]  # [B, n, D]
    x = resid - resid.mean(-1, keepdim=True)
    sigma = (x.pow(2).mean(-1, keepdim=True) + e.cfg.eps).sqrt()
    logits = ((x / sigma) * w["ln_final.w"] + w["ln_final.b"]) @ w["unembed.W_U"] + w["unembed.b_U"]
    leaf = logits.detach().requires_grad_(True)
    (dlogits,) = torch.autograd.grad(objectives.evaluate("logit-diff", leaf, leaf.detach(), scored).mean(), leaf)
    v = (dlogits @ w["unembed.W_U"].T) * w["ln_final.w"]
    grad_out = (v - v.mean(-1, keepdim=True)) / sigma  # [B, n, D]
    source = e.cache(data.clean, zero=True) if ablation == "zero" else e.cache(data.corrupted)
    diff = (source.senders - torch.stack(tr.senders))[:, :, cols]  # [S, B, n, D]
    rows = torch.nonzero(g.add_receiver == g.output_receiver).flatten()
    want = torch.einsum("bnd,sbnd->s", grad_out, diff[g.add_sender[rows]])
    got = get_method("relp").run(e, data, "ln")[rows]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    eap = get_method("eap").run(e, data, "noising")[rows]
    assert (eap - want).abs().max() > 1e-4  # the rule changes the coefficients


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_ah_rule_is_patching_with_frozen_attention(ablation):
    """Attention-only, no LayerNorm: with every pattern held at the clean run's the model is
    linear in every edge into a v input, a v, or the output, so the AH-rule's scores are the exact
    effects of patching one edge with every q and k pinned to the clean run's; q/k edges score 0."""
    cfg = ModelConfig("tiny-attn", 2, 2, 8, 4, 11, 6, d_mlp=None, normalization_type=None)
    e, data = task_for(cfg, ablation, seed=2, init_range=0.1)
    gph, E, H = e.graph, e.graph.n_edges, cfg.n_heads
    clean = e.cache(data.clean)
    corr = e.cache(data.clean, zero=True) if ablation == "zero" else e.cache(data.corrupted)
    qkv = clean.qkv.clone()
    qkv[:, 2] = corr.qkv[:, 2]  # v edges patch to the reference's v; q and k stay clean
    source = SenderCache(corr.senders.expand_as(clean.senders).clone(), qkv)
    pin = torch.zeros(E, dtype=torch.float64)
    direct = torch.zeros(cfg.n_layers, 3, H, dtype=torch.float64)
    direct[:, :2] = 1
    pin[gph.n_add:] = direct.reshape(-1)
    qk_edge = torch.zeros(E, dtype=torch.bool)
    qk_edge[gph.n_add:] = direct.reshape(-1).bool()
    r_is_qk = torch.zeros(len(gph.receivers), dtype=torch.bool)
    for L in range(cfg.n_layers):
        r_is_qk[gph.qkv_receiver[L].reshape(-1)[: 2 * H]] = True  # q inputs of every head, then k
    qk_edge[: gph.n_add] = r_is_qk[gph.add_receiver]
    patches = torch.eye(E, dtype=torch.float64).clamp_min(pin)  # one edge, plus every q/k pinned
    obj = lambda lg: objectives.evaluate("logit-diff", lg, lg, data).mean()  # noqa: E731  linear in logits
    base = obj(e.logits(data.clean))
    exact = torch.stack([obj(lg) for _, chunk in e.run_many(data.clean, patches, source, chunk=E) for lg in chunk]) - base
    exact[qk_edge] = 0
    got = get_method("relp").run(e, data, "paper")
    assert exact.abs().max() > 1e-3 and got[qk_edge].abs().max() == 0
    torch.testing.assert_close(got, exact, rtol=1e-8, atol=1e-10)
    eap = get_method("eap").run(e, data, "noising")
    assert (eap[~qk_edge] - exact[~qk_edge]).abs().max() > 1e-4  # layer 1's q/k gradients reach layer 0 in EAP


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_registry_runs_on_a_tracr_task(xproportion_model, ablation):
    e, data = xproportion_model
    spec = get_method("relp")
    check_runs_on_tracr("relp", spec.variants, "paper", e, data.with_ablation(ablation))
