"""Patching semantics (docs/graph-and-patching.md#patching-semantics) on random models of every supported shape."""
import pytest
import torch

from harness.core.engine import Engine
from harness.core.weights import ModelConfig, random_weights, rotary_inv_freq

CONFIGS = {
    "gpt2-like": ModelConfig("tiny-gpt2", 2, 3, 16, 4, 50, 8, d_mlp=32, act_fn="gelu_new"),
    "attn-only": ModelConfig("tiny-attn", 3, 2, 16, 8, 40, 8, d_mlp=None),
    "shortformer": ModelConfig("tiny-short", 2, 2, 16, 8, 40, 8, d_mlp=None, positional_embedding_type="shortformer"),
    "tracr-like": ModelConfig("tiny-tracr", 2, 1, 12, 4, 7, 6, d_mlp=5, d_vocab_out=3, act_fn="relu",
                              normalization_type=None, causal=False, split_embed=True),
    "lnpre-gelu": ModelConfig("tiny-lnpre", 2, 2, 16, 4, 30, 8, d_mlp=16, act_fn="gelu", normalization_type="LNPre"),
    # the families after GPT-2 (docs/graph-and-patching.md#model-families)
    "llama-like": ModelConfig("tiny-llama", 2, 4, 16, 4, 40, 8, d_mlp=24, act_fn="silu", normalization_type="RMS",
                              positional_embedding_type="rotary", rotary_inv_freq=rotary_inv_freq(4),
                              n_key_value_heads=2, gated_mlp=True),
    "neox-like": ModelConfig("tiny-neox", 2, 2, 16, 8, 40, 8, d_mlp=24, act_fn="gelu", positional_embedding_type="rotary",
                             rotary_dim=4, rotary_inv_freq=rotary_inv_freq(4), parallel_attn_mlp=True),
    "gemma2-like": ModelConfig("tiny-gemma2", 3, 4, 16, 4, 40, 8, d_mlp=24, act_fn="gelu_pytorch_tanh",
                               normalization_type="RMS", positional_embedding_type="rotary", rotary_inv_freq=rotary_inv_freq(4),
                               n_key_value_heads=2, gated_mlp=True, embed_scale=4.0, post_norms=True, attn_softcap=0.5,
                               logit_softcap=2.0, sliding_window=3, local_layers=(0, 2)),
}


def setup(name, batch=3, pos=5, seed=0):
    cfg = CONFIGS[name]
    e = Engine(random_weights(cfg, seed=seed, dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, cfg.d_vocab, (batch, pos), generator=g)
    corr = torch.randint(0, cfg.d_vocab, (batch, pos), generator=g)
    return e, clean, corr


@pytest.mark.parametrize("name", list(CONFIGS))
def test_nothing_patched_is_clean_everything_patched_is_corrupted(name):
    e, clean, corr = setup(name)
    cache = e.cache(corr)
    zeros = torch.zeros(e.graph.n_edges, dtype=torch.float64)
    torch.testing.assert_close(e.logits(clean, zeros, cache), e.logits(clean), rtol=0, atol=1e-12)
    torch.testing.assert_close(e.logits(clean, zeros + 1, cache), e.logits(corr), rtol=0, atol=1e-10)
    # A half-way mask is neither.
    half = e.logits(clean, zeros + 0.5, cache)
    assert (half - e.logits(clean)).abs().max() > 1e-6 and (half - e.logits(corr)).abs().max() > 1e-6


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_zero_cache_equals_a_zero_ablated_run(name):
    e, clean, _ = setup(name, batch=3, pos=6)
    made = e.zero_cache(3, 6)
    ran = e.run(clean, record=True, zero_senders=True, positions=torch.zeros(0, dtype=torch.long)).cache()
    assert made.senders.shape == ran.senders.shape and made.qkv.shape == ran.qkv.shape
    assert not made.senders.any()
    torch.testing.assert_close(made.qkv, ran.qkv, rtol=0, atol=1e-12)
    assert made.qkv.is_contiguous()
    # not trivially equal: the q/k/v differ between layers (the biases add up), and with
    # shortformer positions between positions
    assert (made.qkv[1] - made.qkv[0]).abs().max() > 1e-3
    if e.cfg.positional_embedding_type == "shortformer":
        assert (made.qkv[:, 0, :, 0] - made.qkv[:, 0, :, 1]).abs().max() > 1e-3
    # and every zero-reference patch reads it: all edges patched from it is the zero-ablated model
    ones = torch.ones(e.graph.n_edges, dtype=torch.float64)
    torch.testing.assert_close(e.logits(clean, ones, made), e.logits(clean, ones, ran), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_per_row_masks_equal_separate_runs(name):
    e, clean, corr = setup(name, batch=2)
    cache = e.cache(corr)
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(4, e.graph.n_edges, generator=g, dtype=torch.float64) < 0.3).double()
    # 4 circuits x 2 examples in one forward
    tokens = clean.repeat(4, 1)
    big = e.logits(tokens, masks.repeat_interleave(2, 0), cache.tile(4))
    for k in range(4):
        torch.testing.assert_close(big[2 * k : 2 * k + 2], e.logits(clean, masks[k], cache), rtol=0, atol=1e-10)


def test_patching_all_edges_into_one_receiver_patches_that_input_only():
    """Patching every edge into head 1.0's v input equals running that head with the corrupted
    residual as its value input: checked through the q/k/v trace of the patched run."""
    e, clean, corr = setup("gpt2-like")
    g = e.graph
    cache = e.cache(corr)
    mask = torch.zeros(g.n_edges, dtype=torch.float64)
    r = int(g.qkv_receiver[1, 2, 0])
    mask[g.dense_index[r][g.dense_index[r] >= 0]] = 1
    tr = e.run(clean, mask, cache, record=True)
    trc = e.run(corr, record=True)
    trk = e.run(clean, record=True)
    H = e.cfg.n_heads
    torch.testing.assert_close(tr.qkv_inputs[1][:, :, 2 * H + 0], trc.qkv_inputs[1][:, :, 2 * H + 0])
    torch.testing.assert_close(tr.qkv_inputs[1][:, :, 0], trk.qkv_inputs[1][:, :, 0])  # q untouched


def test_edge_patching_is_not_node_patching():
    """Patching an edge s->r changes only r's input: other receivers still see clean s."""
    e, clean, corr = setup("gpt2-like")
    g = e.graph
    cache = e.cache(corr)
    name = "blocks.0.attn.hook_result[:, :, 1] -> blocks.1.hook_k_input[:, :, 2]"
    mask = torch.zeros(g.n_edges, dtype=torch.float64)
    mask[g.edge_ids[name]] = 1
    tr = e.run(clean, mask, cache, record=True)
    base = e.run(clean, record=True)
    H = e.cfg.n_heads
    k_in = tr.qkv_inputs[1][:, :, H + 2]
    expected = base.qkv_inputs[1][:, :, H + 2] + cache.senders[g.head_sender[0, 1]] - base.senders[g.head_sender[0, 1]]
    torch.testing.assert_close(k_in, expected)
    torch.testing.assert_close(tr.qkv_inputs[1][:, :, H + 1], base.qkv_inputs[1][:, :, H + 1])
    torch.testing.assert_close(tr.mlp_inputs[0], base.mlp_inputs[0])


def test_zero_ablation_cache_has_zero_senders():
    e, clean, _ = setup("tracr-like")
    z = e.cache(clean, zero=True)
    assert z.senders.abs().max() == 0
    # q/k/v of the zero run come from constants (biases) alone, identical at every position.
    q = z.qkv[0, 0]
    torch.testing.assert_close(q, q[:1, :1].expand_as(q))


def test_mask_gradient_equals_receiver_contraction():
    """d logits / d mask (autograd through the mask) equals the all-edge contraction used by
    attribution methods, at mask 0 and at a random interior mask point for DIRECT edges too."""
    from harness.methods.attribution import contract, receiver_grads, traced_run

    e, clean, corr = setup("gpt2-like")
    cache = e.cache(corr)
    mask = torch.zeros(e.graph.n_edges, dtype=torch.float64, requires_grad=True)
    obj = e.logits(clean, mask, cache)[:, -1, 3].sum()
    (auto,) = torch.autograd.grad(obj, mask)
    tr = traced_run(e, clean)
    grads = receiver_grads(tr, tr.logits[:, -1, 3].sum())
    here = tr.cache()
    ours = contract(e, grads, cache.senders - here.senders, cache.qkv - here.qkv)
    torch.testing.assert_close(ours, auto, rtol=1e-9, atol=1e-12)


def test_sequence_longer_than_context_is_a_clear_error():
    e, _, _ = setup("tracr-like")
    with pytest.raises(ValueError, match="n_ctx"):
        e.logits(torch.zeros(1, 7, dtype=torch.long))


def test_malformed_weights_are_named():
    cfg = CONFIGS["attn-only"]
    w = random_weights(cfg)
    del w.params["blocks.1.attn.W_K"]
    with pytest.raises(ValueError, match="blocks.1.attn.W_K"):
        Engine(w)


@pytest.mark.parametrize("freeze", [False, True])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_plain_forward_is_the_per_receiver_forward(name, freeze):
    """An unpatched, unrecorded run takes the shared-LayerNorm, fused-q/k/v path (`Engine._plain`):
    its logits, its gradient at the input embeddings and its weight gradients equal the
    per-receiver forward's (record=True) in float64."""
    from harness.methods.weight_sites import weights_with_grad

    e, clean, _ = setup(name, seed=3)
    w = weights_with_grad(e.w)
    eng = Engine(w)
    outs = []
    for record in (False, True):
        emb = eng.input_embeddings(clean).detach().requires_grad_(True)
        logits = eng.run(clean, input_embeds=emb, record=record, freeze_ln_scale=freeze).logits
        loss = (logits.sin() * torch.linspace(-1, 1, logits.shape[-1], dtype=logits.dtype)).sum()
        names = [k for k, v in w.params.items() if v.requires_grad]
        grads = torch.autograd.grad(loss, [emb] + [w.params[k] for k in names], allow_unused=True)
        outs.append((logits.detach(), grads))
    (a, ga), (b, gb) = outs
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert len(ga) == len(gb)
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("freeze", [False, True])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_traced_run_shares_one_layernorm_per_position(name, freeze):
    """An unpatched traced run normalises the residual once per layer (`SharedQKV`); the gradients
    at every receiver input and q/k/v, and the logits, equal the per-receiver path's (the same run
    with weights that require grad, which takes it) in float64, and gradcheck passes (for the true
    derivative: a frozen scale is by design not what finite differences see)."""
    from harness.core.shared_qkv import SharedQKV, layer_qkv
    from harness.methods.attribution import receiver_grads
    from harness.methods.weight_sites import weights_with_grad

    e, clean, _ = setup(name, seed=5)
    per_receiver = Engine(weights_with_grad(e.w))
    res = []
    for eng in (e, per_receiver):
        emb = eng.input_embeddings(clean).detach().requires_grad_(True)
        tr = eng.run(clean, record=True, input_embeds=emb, freeze_ln_scale=freeze)
        loss = (tr.logits.sin() * torch.linspace(-1, 1, tr.logits.shape[-1], dtype=tr.logits.dtype)).sum()
        res.append((tr.logits.detach(), receiver_grads(tr, loss)))
    (a, ga), (b, gb) = res
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for key in ("qkv_in", "mlp_in", "qkv"):
        for x, y in zip(ga[key], gb[key]):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert float(ga["qkv_in"][0].abs().max()) > 1e-6
    # per-receiver gradients really differ across receivers of one layer (so sharing is not trivial)
    assert float((ga["qkv_in"][-1][:, :, 0] - ga["qkv_in"][-1][:, :, -1]).abs().max()) > 1e-8
    cfg, w = e.cfg, e.w
    x = torch.randn(2, 3, 1, cfg.d_model, dtype=torch.float64).expand(2, 3, 3 * cfg.n_heads, cfg.d_model).clone()
    x.requires_grad_(True)
    layer = layer_qkv(w, 0)
    pos = w["pos_embed.W_pos"][:3] if cfg.positional_embedding_type == "shortformer" else None

    def f(x):  # gradcheck perturbs one copy at a time; the function reads copy 0, so tie them
        return SharedQKV.apply(x[:, :, :1].expand_as(x), layer, pos, cfg.eps, cfg.normalization_type, freeze)
    if not freeze:
        assert torch.autograd.gradcheck(f, (x,))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unembedding_only_some_positions_changes_nothing_else(name):
    """`positions` unembeds only those columns, on every path (plain, traced, patched, zero
    senders): the logits are the full run's columns, the gradients at every receiver of a loss
    that reads them are the full run's, and an empty set unembeds nothing."""
    from harness.methods.attribution import receiver_grads, traced_run

    e, clean, corr = setup(name, seed=7)
    cols = torch.tensor([1, 4])
    cache = e.cache(corr)
    half = torch.full((e.graph.n_edges,), 0.5, dtype=torch.float64)
    for kw in ({}, {"record": True}, {"patch": half, "source": cache}, {"zero_senders": True}):
        full = e.run(clean, **kw).logits
        at = e.run(clean, **kw, positions=cols).logits
        assert at.shape == (clean.shape[0], 2, full.shape[-1])
        torch.testing.assert_close(at, full[:, cols], rtol=1e-12, atol=1e-12)
        assert e.run(clean, **kw, positions=torch.zeros(0, dtype=torch.long)).logits.shape[1] == 0
    grads = []
    for positions in (None, cols):
        tr = traced_run(e, clean, half, cache, positions=positions)
        lg = tr.logits if positions is not None else tr.logits[:, cols]
        grads.append(receiver_grads(tr, (lg.sin() * torch.linspace(-1, 1, lg.shape[-1], dtype=lg.dtype)).sum()))
    for key in ("qkv_in", "mlp_in", "qkv"):
        for x, y in zip(grads[0][key], grads[1][key]):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[0]["out"], grads[1]["out"], rtol=1e-10, atol=1e-12)
    assert float(grads[1]["out"].abs().max()) > 1e-6


@pytest.mark.parametrize("name", list(CONFIGS))
def test_derived_weights_follow_the_weights(name):
    """The per-layer q/k/v constants (`layer_qkv`, cached on the Weights) are made again when a
    weight changes in place, and are not cached for weights that require grad (gradients reach
    the weights): a run after either equals a run on a fresh copy of the changed weights."""
    from harness.core.shared_qkv import layer_qkv
    from harness.core.weights import Weights
    from harness.methods.weight_sites import weights_with_grad

    e, clean, _ = setup(name, seed=11)
    e.logits(clean)  # fills the cache
    assert layer_qkv(e.w, 0) is layer_qkv(e.w, 0)
    with torch.no_grad():
        e.w["blocks.0.attn.W_K"].mul_(1.5)
        if e.cfg.normalization_type == "LN":
            e.w["blocks.0.ln1.w"].add_(0.25)
    fresh = Engine(Weights(e.cfg, {k: v.clone() for k, v in e.w.params.items()}))
    for kw in ({}, {"record": True}):
        torch.testing.assert_close(e.run(clean, **kw).logits, fresh.run(clean, **kw).logits, rtol=1e-12, atol=1e-12)
    g = weights_with_grad(e.w)
    Engine(g).logits(clean).sum().backward()
    assert g["blocks.0.attn.W_K"].grad is not None and float(g["blocks.0.attn.W_K"].grad.abs().max()) > 0
    assert layer_qkv(g, 0) is not layer_qkv(g, 0)


HOLD_SETS = {  # name -> config -> held senders (graph sender ids)
    "heads": lambda g: g.head_sender[0].tolist(),  # a whole layer: not computed
    "mlp": lambda g: [int(g.mlp_sender[0])] if g.cfg.d_mlp else g.head_sender[1, :1].tolist(),
    "mixed": lambda g: sorted(g.head_sender[0, :1].tolist() + g.head_sender[-1, 1:].tolist()
                              + ([int(g.mlp_sender[-1])] if g.cfg.d_mlp else [])
                              + ([1] if g.cfg.split_embed else [])),  # tracr: the position node too
}


@pytest.mark.parametrize("which", list(HOLD_SETS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_holding_senders_is_patching_every_edge_out_of_them(name, which):
    """`run(hold=(mask, values))` equals `run(patch=<every ADDITION edge out of the held senders>,
    source=<a cache whose senders are values>)`: logits, recorded senders (the held values) and
    q/k/v, and the gradients at every receiver input and q/k/v (zero into the held senders'
    computation), in float64. The unpatched held run takes the shared q/k/v path. Values given
    for every sender or for the held ones alone (compact) give the same run."""
    from harness.core.engine import SenderCache
    from harness.methods.attribution import receiver_grads

    e, clean, corr = setup(name, seed=13)
    g = e.graph
    held = HOLD_SETS[which](g)
    mask = torch.zeros(len(g.senders), dtype=torch.bool)
    mask[held] = True
    here, there = e.cache(clean), e.cache(corr)
    values = torch.lerp(there.senders, here.senders, 0.3)  # [n_senders, B, P, D]
    patch = torch.zeros(g.n_edges, dtype=torch.float64)
    patch[: g.n_add] = torch.isin(g.add_sender, torch.tensor(held)).double()
    assert patch.sum() > 0

    def traced(**kw):
        emb = e.input_embeddings(clean).detach().requires_grad_(True)
        tr = e.run(clean, record=True, input_embeds=emb, **kw)
        loss = (tr.logits.sin() * torch.linspace(-1, 1, tr.logits.shape[-1], dtype=tr.logits.dtype)).sum()
        return tr, receiver_grads(tr, loss)

    want, gw = traced(patch=patch, source=SenderCache(values, there.qkv))
    for vals in (values, values[held]):
        got, gg = traced(hold=(mask, vals))
        torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-10)
        torch.testing.assert_close(got.cache().qkv, want.cache().qkv, rtol=0, atol=1e-10)
        senders = got.cache().senders
        torch.testing.assert_close(senders[mask], values[mask], rtol=0, atol=0)  # the held values themselves
        torch.testing.assert_close(senders[~mask], want.cache().senders[~mask], rtol=0, atol=1e-10)
        for key in ("qkv_in", "mlp_in", "qkv"):
            assert len(gg[key]) == len(gw[key])
            for x, y in zip(gg[key], gw[key]):
                torch.testing.assert_close(x, y, rtol=0, atol=1e-10)
        torch.testing.assert_close(gg["out"], gw["out"], rtol=0, atol=1e-10)
    # not trivial: holding changed the run, and the gradients reach the receivers
    assert (got.logits - e.run(clean).logits).abs().max() > 1e-6
    assert float(gg["out"].abs().max()) > 1e-6
    # the held senders' own computation gets no gradient: a held MLP's input, a held layer's q/k/v
    for L in range(e.cfg.n_layers):
        if e.cfg.d_mlp and mask[int(g.mlp_sender[L])]:
            assert not gg["mlp_in"][L].any()
        if mask[g.head_sender[L]].all():
            assert not gg["qkv"][L].any() and not gg["qkv_in"][L].any()
    # the shared q/k/v path (one LayerNorm per layer), not the per-receiver one
    assert all(type(q.grad_fn).__name__ == "SharedQKVBackward" for q in got.qkv)
    # without record too
    torch.testing.assert_close(e.run(clean, hold=(mask, values)).logits, want.logits, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sender_outputs_recompute_the_recorded_senders_with_gradient_into_their_own_weights(name):
    """`sender_outputs(trace, ids)` gives the recorded outputs of heads and MLPs again (float64), and
    with `hold_grad` a loss on a run holding them reaches their own weights, not their inputs'."""
    from harness.methods.weight_sites import weights_with_grad

    e, clean, corr = setup(name, seed=19)
    g = e.graph
    h = e.cfg.n_heads - 1
    ids = [int(g.head_sender[-1, h])] + ([int(g.mlp_sender[0])] if e.cfg.d_mlp else [])
    if e.cfg.post_norms:
        with pytest.raises(ValueError, match="post-norms"):
            e.sender_outputs(e.run(corr, record=True), ids)
        return
    tr = e.run(corr, record=True)
    torch.testing.assert_close(e.sender_outputs(tr, ids), torch.stack([tr.senders[j] for j in ids]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="heads and MLPs"):
        e.sender_outputs(tr, [0])
    w = weights_with_grad(e.w)
    eg = Engine(w)
    mask = torch.zeros(len(g.senders), dtype=torch.bool)
    mask[ids] = True
    with torch.no_grad():
        tr = eg.run(corr, record=True)
    for grad in (False, True):
        held = eg.sender_outputs(tr, ids)
        loss = eg.run(clean, hold=(mask, held), hold_grad=grad).logits.pow(2).sum()
        (gw_o,) = torch.autograd.grad(loss, [w[f"blocks.{e.cfg.n_layers - 1}.attn.W_O"]], allow_unused=True)
        assert (gw_o is not None and bool(gw_o[h].abs().sum() > 0)) == grad  # the held head's own output weights


@pytest.mark.parametrize("name", list(CONFIGS))
def test_holding_the_input_nodes_is_running_on_other_embeddings(name):
    e, clean, corr = setup(name, seed=17)
    g = e.graph
    mask = torch.zeros(len(g.senders), dtype=torch.bool)
    mask[: g.n_inputs] = True
    emb = e.input_embeddings(corr)
    got = e.run(clean, record=True, hold=(mask, emb))
    want = e.run(clean, record=True, input_embeds=emb)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.cache().senders, want.cache().senders, rtol=0, atol=1e-12)
    none = torch.zeros(len(g.senders), dtype=torch.bool)  # nothing held: the plain run
    torch.testing.assert_close(e.run(clean, hold=(none, emb[:0])).logits, e.run(clean).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="hold"):
        e.run(clean, hold=(mask[1:], emb))
