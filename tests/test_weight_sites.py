"""grad-wrong weight sites: the per-sender shares add up to autograd's dL/dW, weight-edge-taylor
is gradient x activation with a zero reference on ADDITION edges (frozen LN scale, or no LN), and
weight-node follows its edge rule. The weight sites accept the zero reference only."""
from types import SimpleNamespace

import pytest
import torch

from harness.core.engine import Engine
from harness.methods import get_method
from harness.core.references import references
from harness.methods.attribution import traced_run
from harness.methods.targets import target_loss
from harness.methods.weight_sites import iter_shares, weight_edge_bytes, weight_edge_scores, weight_grads
from harness.core.weights import ModelConfig, random_weights
from test_eap import tiny_task

SHORT = ModelConfig("tiny-short", 2, 2, 8, 4, 11, 6, d_mlp=None, positional_embedding_type="shortformer")


def _loss_fn(e, data, target="logit-diff-mse"):
    refs = references(e, data)
    return lambda lg: target_loss(target, lg, data, refs.clean_logits, refs.source_logits)


@pytest.mark.parametrize("model", ["ln-mlp", "shortformer"])
@pytest.mark.parametrize("freeze", [True, False])
def test_shares_sum_to_weight_gradient(freeze, model):
    e, data = tiny_task("resample", seed=4)
    if model == "shortformer":
        e = Engine(random_weights(SHORT, seed=4, dtype=torch.float64, init_range=0.15))
    loss_fn = _loss_fn(e, data)
    dW = weight_grads(e, data.clean, loss_fn, freeze_ln_scale=freeze)
    tr = traced_run(e, data.clean, freeze_ln_scale=freeze)
    seen = set()
    for sh in iter_shares(e, tr, loss_fn(tr.logits)):
        want = dW[sh.param] if sh.head is None else dW[sh.param][sh.head]
        assert want.abs().max() > 1e-6, sh.param
        torch.testing.assert_close(sh.shares.sum(0) + sh.const, want, rtol=1e-9, atol=1e-12)
        # the constant share is not the whole story: senders carry most of it
        assert sh.shares.abs().sum() > 0
        seen.add(sh.receiver)
    assert seen == set(range(len(e.graph.receivers)))


def _scores_from_shares(e, tr, loss, taylor):
    """weight-edge(-taylor) reduced from the materialised shares: the definition."""
    out = torch.zeros(e.graph.n_edges, dtype=torch.float64)
    for sh in iter_shares(e, tr, loss):
        out[sh.edge_ids] = ((sh.shares * sh.W).sum((1, 2)) if taylor else sh.shares.flatten(1).norm(dim=1)).detach().double()
        if sh.direct_id is not None:
            full = sh.shares.sum(0) + sh.const
            out[sh.direct_id] = float((full * sh.W).sum() if taylor else full.norm())
    return out


@pytest.mark.parametrize("model", ["ln-mlp", "shortformer", "tracr-xproportion"])
@pytest.mark.parametrize("route", [None, "gram", "direct"])
def test_scores_without_shares_equal_the_shares(model, route, tracr_tasks):
    """The Gram route, the direct route and the Taylor product give what the shares give, in
    blocks of one sender (block_bytes=1) as in one block; a target reading one position leaves
    the output's other tokens at zero gradient, which the routes drop, and a loss on the first
    position of a causal model leaves every receiver's later tokens at zero gradient."""
    e, data = tiny_task("zero", seed=9)
    if model == "shortformer":
        e = Engine(random_weights(SHORT, seed=9, dtype=torch.float64, init_range=0.15))
    elif model.startswith("tracr"):
        t = tracr_tasks[model]
        e, data = Engine(t.load_model().to(dtype=torch.float64)), t.data().with_ablation("zero")
    target = _loss_fn(e, data, "least-likely")
    losses = [target]
    if e.cfg.causal:  # a loss on the first position: every receiver's gradient is zero at later tokens
        losses.append(lambda lg: target(lg) * 0 + lg[:, 0].pow(2).sum())
    for loss_fn in losses:
        for taylor in (False, True):
            want = _scores_from_shares(e, (tr := traced_run(e, data.clean, freeze_ln_scale=True)), loss_fn(tr.logits), taylor)
            assert want.abs().max() > 1e-3
            for block in (1, 2**28):
                tr = traced_run(e, data.clean, freeze_ln_scale=True)
                got = weight_edge_scores(e, tr, loss_fn(tr.logits), taylor, block_bytes=block, route=route)
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("model", ["ln-mlp", "tracr-xproportion"])
def test_unembedding_only_the_scored_columns_leaves_every_weight_site_unchanged(model, tracr_tasks):
    """A traced run that unembeds only the scored columns (`TaskData.scored`, what grad-wrong
    runs) gives the full run's dL/dW, shares and weight-edge(-taylor) scores: the output's
    factors are placed at those columns' tokens."""
    e, data = tiny_task("zero", seed=9)
    if model.startswith("tracr"):
        t = tracr_tasks[model]
        e, data = Engine(t.load_model().to(dtype=torch.float64)), t.data().with_ablation("zero")
    refs = references(e, data)
    cols, scored = data.scored()
    assert len(cols) < data.clean.shape[1]
    full_loss = _loss_fn(e, data, "least-likely")
    cut_loss = lambda lg: target_loss("least-likely", lg, scored, refs.clean_logits[:, cols], refs.source_logits[:, cols])  # noqa: E731
    dW, dW_cut = weight_grads(e, data.clean, full_loss), weight_grads(e, data.clean, cut_loss, positions=cols)
    for k in dW:
        torch.testing.assert_close(dW_cut[k], dW[k], rtol=1e-9, atol=1e-12)
    for taylor in (False, True):
        want = _scores_from_shares(e, (tr := traced_run(e, data.clean, freeze_ln_scale=True)), full_loss(tr.logits), taylor)
        tr = traced_run(e, data.clean, freeze_ln_scale=True, positions=cols)
        assert tr.logits.shape[1] == len(cols)
        torch.testing.assert_close(_scores_from_shares(e, tr, cut_loss(tr.logits), taylor), want, rtol=1e-9, atol=1e-12)
        tr = traced_run(e, data.clean, freeze_ln_scale=True, positions=cols)
        torch.testing.assert_close(weight_edge_scores(e, tr, cut_loss(tr.logits), taylor), want, rtol=1e-9, atol=1e-12)


def test_weight_edge_memory_does_not_grow_with_the_vocabulary():
    """The estimate (the bench's skip check) is the senders, a q/k/v group's Gram matrices and one
    block: at GPT-2's size it stays far below the 45 GiB the output's shares would need."""
    from harness.core.architectures import ARCHITECTURES

    from harness.core.graph import Graph

    cfg = ARCHITECTURES["gpt2"]
    shape = SimpleNamespace(cfg=cfg, graph=Graph(cfg), w=SimpleNamespace(dtype=torch.float32))  # what it reads
    assert weight_edge_bytes(shape, 8, 16) < 2**30
    assert weight_edge_bytes(shape, 100, 16) < 2 * 2**30


def test_taylor_equals_activation_with_frozen_ln():
    """<share_s, W> = <out_s, dL/dx_r> with the frozen-scale gradient (centering is a symmetric
    projection): the activation site, on every ADDITION edge."""
    e, data = tiny_task("zero", seed=5)
    m = get_method("grad-wrong")
    n = e.graph.n_add
    for target in ("logit-diff-mse", "least-likely"):
        taylor = m.run(e, data, f"{target}/weight-edge-taylor")
        act = m.run(e, data, f"{target}/activation", freeze_ln_scale=True)
        assert act[:n].abs().max() > 1e-4
        torch.testing.assert_close(taylor[:n], act[:n], rtol=1e-8, atol=1e-12)
        # Unfrozen gradients differ (the LN scale's own derivative): the identity is not vacuous.
        plain = m.run(e, data, f"{target}/activation")
        assert (plain[:n] - act[:n]).abs().max() > 1e-6


def test_taylor_direct_edges_are_activation_plus_source_term():
    """DIRECT edge: <dL/dW_Q, W_Q> = sum (q - b_Q) . dL/dq, and the zero-reference activation site
    is sum (q - q_source) . dL/dq, so they differ by sum (q_source - b_Q) . dL/dq."""
    e, data = tiny_task("zero", seed=6)
    m = get_method("grad-wrong")
    taylor = m.run(e, data, "logit-diff-mse/weight-edge-taylor")
    act = m.run(e, data, "logit-diff-mse/activation", freeze_ln_scale=True)
    tr = traced_run(e, data.clean, freeze_ln_scale=True)
    g_qkv = torch.autograd.grad(_loss_fn(e, data)(tr.logits), tr.qkv)
    source_qkv = references(e, data).source.qkv
    cfg = e.cfg
    terms = []
    for L in range(cfg.n_layers):
        for li, X in enumerate("QKV"):
            for h in range(cfg.n_heads):
                d = e.graph.direct_index(L, "qkv"[li], h)
                term = ((source_qkv[L][li, :, :, h] - e.w[f"blocks.{L}.attn.b_{X}"][h]) * g_qkv[L][li, :, :, h]).sum()
                torch.testing.assert_close(taylor[d], act[d] + term, rtol=1e-8, atol=1e-12)
                terms.append(float(term.abs()))
    assert max(terms) > 1e-6  # the source's q/k/v is not the bias alone: the identity is not vacuous


@pytest.mark.parametrize("task", ["tracr-xproportion", "tracr-reverse"])
def test_taylor_equals_activation_on_tracr(tracr_tasks, task):
    """No LayerNorm: the default sites agree exactly on ADDITION edges (float32)."""
    t = tracr_tasks[task]
    e, data = Engine(t.load_model()), t.data().with_ablation("zero")
    m = get_method("grad-wrong")
    n = e.graph.n_add
    taylor = m.run(e, data, "least-likely/weight-edge-taylor")
    act = m.run(e, data, "least-likely/activation").double()
    assert act.abs().max() > 1e-3
    torch.testing.assert_close(taylor[:n], act[:n], rtol=1e-5, atol=1e-6)


def test_weight_node_edge_rule():
    e, data = tiny_task("zero", seed=7)
    g = e.graph
    s = get_method("grad-wrong").run(e, data, "logit-diff-mse/weight-node")
    dW = weight_grads(e, data.clean, _loss_fn(e, data))
    n = lambda t: float(t.norm())  # noqa: E731
    L, h = 1, 1
    for li, X in enumerate("QKV"):
        r = int(g.qkv_receiver[L, li, h])
        ids = g.dense_index[r][g.dense_index[r] >= 0]
        want = n(dW[f"blocks.{L}.attn.W_{X}"][h])
        assert torch.allclose(s[ids], torch.tensor(want, dtype=s.dtype))
        assert abs(float(s[g.direct_index(L, "qkv"[li], h)]) - want) < 1e-12
    r = int(g.mlp_receiver[0])
    assert torch.allclose(s[g.dense_index[r][g.dense_index[r] >= 0]], torch.tensor(n(dW["blocks.0.mlp.W_in"]), dtype=s.dtype))
    out = g.dense_index[g.output_receiver]
    assert abs(float(s[out[int(g.head_sender[0, 1])]]) - n(dW["blocks.0.attn.W_O"][1])) < 1e-12
    assert abs(float(s[out[int(g.mlp_sender[1])]]) - n(dW["blocks.1.mlp.W_out"])) < 1e-12
    emb = (n(dW["embed.W_E"]) ** 2 + n(dW["pos_embed.W_pos"]) ** 2) ** 0.5
    assert abs(float(s[out[0]]) - emb) < 1e-12


def test_weight_sites_refuse_a_resample_reference():
    e, data = tiny_task("resample", seed=8)
    with pytest.raises(ValueError, match="does not measure against a 'resample' reference"):
        get_method("grad-wrong").run(e, data, "uniform/weight-node")
