"""Llama, Mistral, Qwen2 and GPT-NeoX on the engine and graph (docs/graph-and-patching.md#model-families).

Random-init transformers models of each family (reduced sizes, the family's features kept:
grouped-query attention, RoPE and Llama 3's RoPE scaling, partial rotary, gated MLPs, parallel
attention and MLP, q/k/v biases, tied and untied embeddings), read through the bridge, against
transformers' own forward and the bridge's hooks; EAP against finite differences on the mask.
"""
import pytest
import torch

from harness.core.engine import Engine
from harness.core.graph import Graph
from harness.core.loading import packaged_gpt2_files, packaged_gpt2_tokenizer
from harness.core.loading_hf import config_from_hf, family, random_hf_model, weights_from_hf
from harness.core.weights import compact_kv
from harness.methods import get_method

pytestmark = pytest.mark.skipif(packaged_gpt2_files() is None, reason="needs the packaged GPT-2 tokenizer files")

FAMILIES = {  # name -> (model_type, config overrides)
    "llama": ("llama", {}),
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),
    "pythia": ("gpt_neox", {}),
    "neox-sequential": ("gpt_neox", {"use_parallel_residual": False, "rotary_pct": 0.5}),
    "gemma2": ("gemma2", {}),
}


@pytest.fixture(scope="module")
def models():
    tok = packaged_gpt2_tokenizer(for_bridge=True)
    out = {}
    for name, (t, kw) in FAMILIES.items():
        hf = random_hf_model(t, seed=3, **kw)
        out[name] = (hf, weights_from_hf(hf, tok, name))
    return out


def _tokens(cfg, B=3, P=11, seed=0):
    return torch.randint(0, cfg.d_vocab, (B, P), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_engine_is_transformers_forward(models, name):
    hf, w = models[name]
    x = _tokens(w.cfg)
    with torch.no_grad():
        ref = hf(x).logits
    e = Engine(w)
    for got in (e.run(x).logits, e.run(x, record=True).logits,
                e.run(x, torch.zeros(e.graph.n_edges), e.cache(_tokens(w.cfg, seed=1))).logits):
        assert float((got - ref).abs().max()) < 1e-4
    assert float(ref.std()) > 1e-2  # not trivially equal


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_engine_is_the_bridges_every_hook(models, name):
    """The bridge's hooks against what the engine records or computes: q/k/v (before rotation, k
    and v per key/value head), rotated q/k, the pattern, z, attention and MLP outputs, the
    residual before, between and after, the norms' inputs and outputs, the MLP's pre- and
    post-activations, the final norm and the unembedding (before soft-capping)."""
    from transformer_lens.model_bridge import TransformerBridge

    from harness.core.loading_hf import FAMILIES as HF_FAMILIES

    hf, w = models[name]
    bridge = TransformerBridge.boot_transformers(HF_FAMILIES[hf.config.model_type][1], hf_model=hf,
                                                 tokenizer=packaged_gpt2_tokenizer(for_bridge=True), dtype=torch.float32)
    x = _tokens(w.cfg)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(x)
    e, cfg, g = Engine(w), w.cfg, Engine(w).graph
    tr = e.run(x, record=True)
    close = lambda a, b: float((a - b).abs().max()) < 1e-4  # noqa: E731
    assert close(tr.senders[0], cache["hook_embed"])
    checked = 1
    for L in range(cfg.n_layers):
        q, k, v = tr.qkv[L]
        pre = f"blocks.{L}."
        assert close(tr.qkv_inputs[L][:, :, 0], cache[pre + "hook_resid_pre"])
        assert close(q, cache[pre + "attn.hook_q"])
        assert close(compact_kv(k.transpose(0, 2), cfg).transpose(0, 2), cache[pre + "attn.hook_k"])
        assert close(compact_kv(v.transpose(0, 2), cfg).transpose(0, 2), cache[pre + "attn.hook_v"])
        checked += 4
        for hook, ours in (("attn.hook_rot_q", e.rotate(q)), ("attn.hook_rot_k", e.rotate(k))):
            if pre + hook in cache:
                theirs = cache[pre + hook]
                assert close(ours if theirs.shape == ours.shape else compact_kv(ours.transpose(0, 2), cfg).transpose(0, 2), theirs)
                checked += 1
        assert close(e.pattern(q, k, L), cache[pre + "attn.hook_pattern"])
        heads = torch.stack([tr.senders[int(s)] for s in g.head_sender[L]]).sum(0) + w[pre + "attn.b_O"]
        assert close(heads, cache[pre + "hook_attn_out"])
        assert close(tr.senders[int(g.mlp_sender[L])], cache[pre + "hook_mlp_out"])
        checked += 3
        if pre + "hook_resid_mid" in cache:  # sequential blocks: the MLP reads it
            assert close(tr.mlp_inputs[L], cache[pre + "hook_resid_mid"])
            checked += 1
        elif cfg.parallel_attn_mlp:
            assert close(tr.mlp_inputs[L], cache[pre + "hook_resid_pre"])
        # inside the nodes: z, the norms' inputs and outputs, the MLP's pre- and post-activations
        n2 = e._norm(tr.mlp_inputs[L], pre + "ln2", False)
        lin = n2 @ w[pre + "mlp.W_in"] + w[pre + "mlp.b_in"]
        inside = {"attn.hook_z": torch.einsum("bhqk,bkhe->bqhe", e.pattern(q, k, L), v),
                  "ln1.hook_in": tr.qkv_inputs[L][:, :, 0], "ln1.hook_out": e._norm(tr.qkv_inputs[L][:, :, 0], pre + "ln1", False),
                  "ln2.hook_in": tr.mlp_inputs[L], "ln2.hook_out": n2,
                  "mlp.hook_pre": n2 @ w[pre + "mlp.W_gate"] if cfg.gated_mlp else lin,
                  "mlp.hook_post": e.act_fn(n2 @ w[pre + "mlp.W_gate"]) * lin if cfg.gated_mlp else e.act_fn(lin)}
        if cfg.gated_mlp:
            inside["mlp.hook_pre_linear"] = lin
        for hook, ours in inside.items():
            assert close(ours, cache[pre + hook]), hook
        checked += len(inside)
    assert close(tr.output_input, cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"])
    normed = e._norm(tr.output_input, "ln_final", False)
    assert close(normed, cache["ln_final.hook_out"])
    assert close(normed @ w["unembed.W_U"] + w["unembed.b_U"], cache["hook_unembed"])  # before Gemma's soft-capping
    assert checked >= 1 + 14 * cfg.n_layers


@pytest.mark.parametrize("name", list(FAMILIES))
def test_eap_equals_finite_differences_on_the_mask(models, name):
    """In float64: EAP's score of every edge (ADDITION, and DIRECT per query head or key/value
    head) is the derivative of the objective along that edge's patch, by central differences
    on the engine's patch."""
    from tests.test_eap import finite_differences, random_prompts

    _, w = models[name]
    e = Engine(w.to(dtype=torch.float64))
    data = random_prompts(w.cfg, 2, 6, 0, "resample")
    fd = finite_differences(e, data, data.clean, e.cache(data.corrupted), "logit-diff")
    eap = get_method("eap").run(e, data, "noising", objective="logit-diff")
    assert float(fd.abs().max()) > 1e-4
    d = e.graph.n_add
    assert float(fd[d:].abs().max()) > 1e-6  # DIRECT edges carry signal too
    torch.testing.assert_close(eap, fd, rtol=1e-6, atol=1e-9)


def _closed_form(n_layers, n_heads, kv_heads, parallel):
    """ACDC's edge count extended: layer l's q/k/v inputs (n_heads + 2 kv_heads of them) read the
    1 + l (n_heads + 1) senders before it, its MLP input those and (unless parallel) its heads,
    the output every sender; plus the DIRECT edges."""
    up = lambda layer: 1 + layer * (n_heads + 1)  # noqa: E731
    total = sum((n_heads + 2 * kv_heads) * up(layer) + up(layer) + (0 if parallel else n_heads) for layer in range(n_layers))
    return total + up(n_layers) + n_layers * (n_heads + 2 * kv_heads)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_graph_counts_and_names(models, name):
    _, w = models[name]
    cfg, g = w.cfg, Graph(w.cfg)
    assert g.n_edges == _closed_form(cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.parallel_attn_mlp)
    assert len(set(g.edge_names)) == g.n_edges
    # k and v receivers and nodes per key/value head, named by its index
    assert f"blocks.0.hook_k_input[:, :, {cfg.kv_heads - 1}] -> blocks.0.attn.hook_k[:, :, {cfg.kv_heads - 1}]" in g.edge_ids
    assert f"blocks.0.hook_k_input[:, :, {cfg.kv_heads}] -> blocks.0.attn.hook_k[:, :, {cfg.kv_heads}]" not in g.edge_ids \
        or cfg.kv_heads == cfg.n_heads
    # a parallel MLP reads nothing from its own layer's heads
    own_head = "blocks.0.attn.hook_result[:, :, 0] -> blocks.0.hook_mlp_in[:]"
    assert (own_head in g.edge_ids) != cfg.parallel_attn_mlp
    for L in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            kv = h // cfg.kv_group
            assert g.edge_names[g.direct_slot[L, 1, h] + g.n_add].endswith(f"blocks.{L}.attn.hook_k[:, :, {kv}]")


REAL_EDGES = {  # model -> edges, by the closed form (checked against Graph in the test)
    "llama-3.2-1b": _closed_form(16, 32, 8, False),
    "llama-3.1-8b": _closed_form(32, 32, 8, False),
    "mistral-7b": _closed_form(32, 32, 8, False),
    "qwen2.5-0.5b": _closed_form(24, 14, 2, False),
    "pythia-70m": _closed_form(6, 8, 8, True),
    "gemma-2-2b": _closed_form(26, 8, 4, False),
}


@pytest.mark.parametrize("model", list(REAL_EDGES))
def test_published_configs_graph_sizes(model, capsys):
    """The published configs' graphs (config only: no weights are made), as `circuit-bench graph`
    prints them."""
    import json

    from harness.cli import main
    from harness.core.loading_hf import MODELS, family_architecture

    assert set(MODELS) == set(REAL_EDGES)
    cfg = family_architecture(model)
    assert Graph(cfg).n_edges == REAL_EDGES[model]
    assert main(["graph", "--model", model]) == 0
    assert json.loads(capsys.readouterr().out)["edges"] == REAL_EDGES[model]


def test_unsupported_families_are_refused_with_the_reason():
    from transformers import GemmaConfig, GPT2Config

    with pytest.raises(ValueError, match="'gemma'.*1 \\+ w.*supported: llama"):
        family(GemmaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    with pytest.raises(ValueError, match="'gpt2'.*not a supported architecture"):
        family(GPT2Config())


def test_config_reads_the_models_own_rope(models):
    hf, w = models["llama"]
    cfg = config_from_hf(hf, "x")
    assert cfg.rotary_inv_freq == w.cfg.rotary_inv_freq
    # Llama 3's scaling changes the low frequencies: not the default RoPE's
    from harness.core.weights import rotary_inv_freq

    plain = rotary_inv_freq(cfg.rotary_dims, 500000.0)
    assert cfg.rotary_inv_freq[-1] == pytest.approx(plain[-1] / 8.0, rel=1e-6)  # the lowest, divided by the factor
    assert models["pythia"][1].cfg.rotary_dims == models["pythia"][1].cfg.d_head // 4


def test_acdc_visits_every_edge_once_with_grouped_key_values():
    """ACDC's visiting order on a grouped-query graph: every counted edge exactly once, a grouped
    k/v edge after all its group's heads' q edges, reached through any head of the group."""
    from harness.methods.acdc import visit_order
    from tests.test_engine_patching import CONFIGS

    g = Graph(CONFIGS["llama-like"])
    steps = visit_order(g)
    seen = [e for ids, _ in steps for e in ids]
    assert sorted(seen) == list(range(g.n_edges))
    where = {e: i for i, (ids, _) in enumerate(steps) for e in ids}
    group = g.cfg.kv_group
    for L in range(g.cfg.n_layers):
        for kv in range(g.cfg.kv_heads):
            d = g.direct_index(L, "k", kv)
            heads = range(kv * group, (kv + 1) * group)
            assert all(where[d] > where[g.direct_index(L, "q", h)] for h in heads)
            assert steps[where[d]][1] == ("senders", g.head_sender[L, list(heads)].tolist())


def test_every_method_runs_on_each_family_or_says_why_not(models):
    """Every registered variant on a grouped-query Llama and on a parallel partial-rotary
    Pythia: finite scores of every edge, or `UnsupportedArchitecture` naming what it lacks; and
    the engine-only methods (EAP, EAP-IG, patching, ACDC, grad-wrong's activation site,
    random, structure) are among those that run."""
    from harness.methods import CircuitFamily, all_methods
    from harness.methods.registry import UnsupportedArchitecture
    from tests.test_eap import random_prompts

    for name in ("llama", "pythia", "gemma2"):
        _, w = models[name]
        e = Engine(w.to(dtype=torch.float64))
        data = random_prompts(w.cfg, 2, 5, 0, "resample")
        ran = set()
        for m, spec in all_methods().items():
            opts = {"acdc": {"thresholds": [1e-4, 1e-2]}, "sp": {"epochs": 2, "n_lambdas": 2}}.get(m, {})
            for v in spec.variants:
                ref = spec.references_for(v)[0]
                if spec.unsupported(w.cfg, v):
                    with pytest.raises(UnsupportedArchitecture, match=f"does not run on {name}: it"):
                        spec.run(e, data.with_ablation(ref), v, **opts)
                    continue
                out = spec.run(e, data.with_ablation(ref), v, **opts)
                if isinstance(out, CircuitFamily):
                    assert out.circuits.shape[1] == e.graph.n_edges
                else:
                    assert out.shape == (e.graph.n_edges,) and torch.isfinite(out).all(), (m, v)
                ran.add(m if "/" not in v else f"{m}/{v.split('/')[1]}")
        assert {"eap", "eap-ig", "act-patch-edge", "acdc", "grad-wrong/activation", "random", "structure"} <= ran, ran
        if name == "pythia":  # one key/value head per head: the per-head methods run too
            assert {"hisp", "sp"} <= ran


@pytest.mark.parametrize("kind", ["acdc", "random"])
def test_reset_networks_keep_grouped_keys_and_values_shared(kind):
    """A reset control of a grouped-query model is a grouped-query model: keys and values are
    permuted (or redrawn) per key/value head, so `Weights.validate` passes and the group's
    heads still read one k and one v."""
    from harness.core.reset import reset_weights
    from harness.core.weights import random_weights
    from tests.test_engine_patching import CONFIGS

    cfg = CONFIGS["llama-like"]
    w = random_weights(cfg, seed=0)
    K0 = w["blocks.0.attn.W_K"]
    changed = 0
    for seed in range(6):  # with 2 key/value heads a permutation is the identity half the time
        K = reset_weights(w, kind, seed=seed)["blocks.0.attn.W_K"]  # validates
        assert torch.equal(K[0], K[1]) and torch.equal(K[2], K[3])
        changed += not torch.equal(K, K0)
        if kind == "acdc":  # a permutation of the key/value heads, each kept whole
            rows = {tuple(K0[h].flatten().tolist()) for h in range(cfg.n_heads)}
            assert all(tuple(K[h].flatten().tolist()) in rows for h in range(cfg.n_heads))
    assert changed >= 2


def test_head_direct_effects_add_up_to_the_logit_difference_under_rmsnorm():
    """`circuit-bench heads`' direct effects on an RMSNorm model: with the final norm's scale
    fixed, the logit difference is the sum of every sender's direct effect plus the biases', so
    the heads' effects (`direct_effects`) and the rest, computed here, add up to the model's."""
    from harness.core.data import TaskData
    from harness.core.weights import random_weights
    from harness.eval.head_maps import direct_effects
    from tests.test_engine_patching import CONFIGS
    from tests.test_seed_pair import ANSWER

    e = Engine(random_weights(CONFIGS["llama-like"], seed=4, init_range=0.3).to("cpu", torch.float64))
    g, w, cfg = e.graph, e.w, e.cfg
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, cfg.d_vocab, (4, 6), generator=gen)
    pos = torch.zeros(4, 6, dtype=torch.bool)
    pos[:, -1] = True
    correct = torch.randint(0, cfg.d_vocab, (4, 6), generator=gen)
    wrong = ((correct + 1) % cfg.d_vocab).unsqueeze(-1)
    data = TaskData(clean=clean, corrupted=clean.flip(0), pos_mask=pos, metric=ANSWER, correct=correct, wrong=wrong,
                    ablation="zero")
    heads = direct_effects(e, data).sum()
    tr = e.run(clean, record=True)
    final = tr.output_input[:, -1]  # [B, D]
    mult = w["ln_final.w"] / (final.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt()
    W_U, b_U = w["unembed.W_U"], w["unembed.b_U"]
    c, x = correct[:, -1], wrong[:, -1, 0]
    direction = (W_U[:, c] - W_U[:, x]).T  # [B, D]
    rest = sum(tr.senders[s][:, -1] for s in range(len(g.senders)) if g.senders[s].kind != "head")
    rest = rest + sum(w[f"blocks.{L}.attn.b_O"] for L in range(cfg.n_layers))
    others = ((rest * mult) * direction).sum(-1).mean() + (b_U[c] - b_U[x]).mean()
    logits = tr.logits[:, -1]
    diff = (logits[torch.arange(4), c] - logits[torch.arange(4), x]).mean()
    assert float(heads.abs()) > 1e-3
    torch.testing.assert_close(heads + others, diff, rtol=1e-9, atol=1e-9)


def test_per_example_and_per_position_terms_sum_to_the_scores_with_grouped_key_values():
    """The contraction's kept axes with grouped k/v receivers and DIRECT edges (summed over a
    group): per-example, per-position and both sum to the scores."""
    from harness.core.weights import random_weights
    from tests.test_eap import random_prompts
    from tests.test_engine_patching import CONFIGS

    cfg = CONFIGS["gemma2-like"]
    e = Engine(random_weights(cfg, seed=0, dtype=torch.float64, init_range=0.15))
    data = random_prompts(cfg, 3, 5, 0, "resample")
    spec = get_method("eap")
    total = spec.run(e, data, "noising")
    assert float(total[e.graph.n_add:].abs().max()) > 1e-6
    for kw, axes in (({"per_example": True}, (0,)), ({"per_position": True}, (0,)),
                     ({"per_example": True, "per_position": True}, (0, 1))):
        torch.testing.assert_close(spec.run(e, data, "noising", **kw).sum(axes), total, rtol=1e-10, atol=1e-12)
