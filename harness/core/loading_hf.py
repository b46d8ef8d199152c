"""Causal language models of the families after GPT-2: Llama, Mistral, Qwen2, GPT-NeoX (Pythia), Gemma-2.

A transformers model (from a local folder, the hub cache, or built from a config with random
weights) is read through transformer_lens 4.3's `TransformerBridge.boot_transformers`: the
bridge's `get_params` gives TL-layout tensors (per-head W_Q/W_K/W_V, grouped key/value heads
repeated per query head, W_gate for gated MLPs). The architecture facts come from the
transformers config and the model's own rotary module (its inverse frequencies and attention
scaling, so RoPE scaling variants such as Llama 3.1's are exact), and are checked against the
bridge's config. Families and their graph: docs/graph-and-patching.md#model-families.

Gemma-2 is read from transformers' own parameters instead: the bridge's `get_params` has no
post-attention and post-MLP norms and gives its RMSNorm gains without Gemma's 1 + w. Its
post-attention norm acts on the sum of the heads' outputs; the graph's head output is that
head's share of the normed sum (docs/graph-and-patching.md#gemma-2).
"""
from __future__ import annotations

from typing import Optional

import torch

from harness.core.weights import ModelConfig, Weights

# transformers model_type -> (family name used in messages and docs, example model)
FAMILIES = {
    "llama": ("Llama", "meta-llama/Llama-3.2-1B"),
    "mistral": ("Mistral", "mistralai/Mistral-7B-v0.1"),
    "qwen2": ("Qwen2", "Qwen/Qwen2.5-0.5B"),
    "gpt_neox": ("GPT-NeoX", "EleutherAI/pythia-70m"),
    "gemma2": ("Gemma-2", "google/gemma-2-2b"),
}
NOT_YET = {
    "gemma": "Gemma 1 is not read yet (its RMSNorm scales by 1 + w, as Gemma-2's)",
    "gemma3": "Gemma 3 is not read yet (q/k norms and its own local/global pattern)",
}


def family(hf_config) -> str:
    """The supported family of a transformers config (its model_type), or a ValueError naming
    the families that are."""
    t = getattr(hf_config, "model_type", None)
    if t in FAMILIES:
        return t
    why = NOT_YET.get(t, "not a supported architecture")
    raise ValueError(f"model_type {t!r}: {why}; supported: {', '.join(FAMILIES)} (and gpt2)")


CLASSES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "gpt_neox": "GPTNeoX", "gemma2": "Gemma2"}  # transformers' prefixes


def config_from_hf(hf_model, name: str) -> ModelConfig:
    """The `ModelConfig` of a loaded transformers causal LM of a supported family."""
    t = family(hf_model.config)
    rot = hf_model.gpt_neox.rotary_emb if t == "gpt_neox" else hf_model.model.rotary_emb
    return _config(hf_model.config, rot, name)


def config_from_hf_config(hf_config, name: str) -> ModelConfig:
    """The `ModelConfig` of a transformers config alone (no weights are made: only the family's
    rotary module, for its frequencies)."""
    import importlib

    t = family(hf_config)
    module = importlib.import_module(f"transformers.models.{t}.modeling_{t}")
    return _config(hf_config, getattr(module, CLASSES[t] + "RotaryEmbedding")(config=hf_config), name)


def _config(c, rot, name: str) -> ModelConfig:
    t = c.model_type
    inv = tuple(float(x) for x in rot.inv_freq.detach().double().cpu())
    d_model, n_heads = c.hidden_size, c.num_attention_heads
    common = dict(name=name, n_layers=c.num_hidden_layers, n_heads=n_heads, d_model=d_model, d_mlp=c.intermediate_size,
                  d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, causal=True, positional_embedding_type="rotary",
                  rotary_dim=2 * len(inv), rotary_inv_freq=inv, rotary_scale=float(getattr(rot, "attention_scaling", 1.0)))
    if t == "gpt_neox":
        if c.hidden_act not in ("gelu", "gelu_new", "relu", "silu", "gelu_pytorch_tanh"):
            raise ValueError(f"{name}: activation {c.hidden_act!r} is not supported")
        return ModelConfig(**common, d_head=d_model // n_heads, act_fn=c.hidden_act, normalization_type="LN",
                           eps=c.layer_norm_eps, parallel_attn_mlp=bool(c.use_parallel_residual))
    d_head = getattr(c, "head_dim", None) or d_model // n_heads
    if t == "gemma2":
        if getattr(c, "attention_bias", False):
            raise ValueError(f"{name}: attention biases inside Gemma-2's post-attention norm are not supported")
        local = tuple(i for i, kind in enumerate(c.layer_types) if kind == "sliding_attention")
        return ModelConfig(**common, d_head=d_head, act_fn=c.hidden_activation, normalization_type="RMS", eps=c.rms_norm_eps,
                           n_key_value_heads=c.num_key_value_heads, gated_mlp=True, attn_scale=c.query_pre_attn_scalar ** 0.5,
                           embed_scale=float(torch.tensor(d_model ** 0.5, dtype=torch.float32)), post_norms=True,
                           attn_softcap=c.attn_logit_softcapping, logit_softcap=c.final_logit_softcapping,
                           sliding_window=c.sliding_window if local else None, local_layers=local)
    window = getattr(c, "sliding_window", None) if getattr(c, "use_sliding_window", True) else None
    if window is not None and window < common["n_ctx"]:
        common["n_ctx"] = window  # longer prompts would need the sliding-window mask
    if c.hidden_act not in ("silu", "gelu", "gelu_pytorch_tanh"):
        raise ValueError(f"{name}: activation {c.hidden_act!r} is not supported")
    return ModelConfig(**common, d_head=d_head, act_fn=c.hidden_act, normalization_type="RMS", eps=c.rms_norm_eps,
                       n_key_value_heads=c.num_key_value_heads, gated_mlp=True)


def weights_from_hf(hf_model, tokenizer, name: str, provenance: Optional[dict] = None) -> Weights:
    """Our `Weights` (unprocessed, float32) of an in-memory transformers causal LM, read
    through the bridge. `tokenizer`: one loaded from a path (the bridge reloads it otherwise)."""
    from transformer_lens.model_bridge import TransformerBridge

    from harness.core.loading_tl import weights_from_bridge

    cfg = config_from_hf(hf_model, name)
    if hf_model.config.model_type == "gemma2":
        return _gemma2_weights(hf_model, cfg, provenance)
    example = FAMILIES[hf_model.config.model_type][1]
    bridge = TransformerBridge.boot_transformers(example, hf_model=hf_model, tokenizer=tokenizer, dtype=torch.float32)
    w = weights_from_bridge(bridge, cfg, provenance)
    w.provenance["source"] = f"transformers {type(hf_model).__name__} via transformer_lens TransformerBridge.boot_transformers"
    return w


def _gemma2_weights(hf_model, cfg: ModelConfig, provenance: Optional[dict]) -> Weights:
    """TL-layout weights of a transformers Gemma2ForCausalLM, from its own parameters (see the
    module docstring): RMSNorm gains 1 + w; q/k/v/o split per head; biases Gemma has not, zero."""
    from harness.core.weights import expand_kv

    c, H, G, dh, D = cfg, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_model
    m = hf_model.model
    t = lambda x: x.detach().float().clone()  # noqa: E731
    heads = lambda W, n: t(W).view(n, dh, D).transpose(1, 2).contiguous()  # noqa: E731  [n*dh, D] -> [n, D, dh]
    p = {"embed.W_E": t(m.embed_tokens.weight), "unembed.W_U": t(hf_model.get_output_embeddings().weight).T.contiguous(),
         "unembed.b_U": torch.zeros(c.vocab_out), "ln_final.w": 1 + t(m.norm.weight)}
    for L, layer in enumerate(m.layers):
        b, a, f = f"blocks.{L}.", layer.self_attn, layer.mlp
        p[b + "attn.W_Q"] = heads(a.q_proj.weight, H)
        p[b + "attn.W_K"] = expand_kv(heads(a.k_proj.weight, G), c)
        p[b + "attn.W_V"] = expand_kv(heads(a.v_proj.weight, G), c)
        p[b + "attn.W_O"] = t(a.o_proj.weight).T.reshape(H, dh, D).contiguous()
        for x in "QKV":
            p[b + f"attn.b_{x}"] = torch.zeros(H, dh)
        p[b + "attn.b_O"] = torch.zeros(D)
        p[b + "mlp.W_gate"], p[b + "mlp.W_in"] = t(f.gate_proj.weight).T.contiguous(), t(f.up_proj.weight).T.contiguous()
        p[b + "mlp.W_out"] = t(f.down_proj.weight).T.contiguous()
        p[b + "mlp.b_in"], p[b + "mlp.b_out"] = torch.zeros(c.d_mlp), torch.zeros(D)
        for ours, theirs in (("ln1", "input_layernorm"), ("ln1_post", "post_attention_layernorm"),
                             ("ln2", "pre_feedforward_layernorm"), ("ln2_post", "post_feedforward_layernorm")):
            p[b + f"{ours}.w"] = 1 + t(getattr(layer, theirs).weight)
    w = Weights(cfg, p, {"source": f"transformers {type(hf_model).__name__} parameters (Gemma-2: not through the bridge)",
                         **(provenance or {})})
    w.validate()
    return w


# Published configs (each model's config.json on the hub): the architecture facts the graph and
# the engine read. `REAL_CONFIGS` has one model per family; `reduced` keeps the family's features
# at a size a test runs in a second.
MODELS = {  # name -> (model_type, config kwargs)
    "llama-3.2-1b": ("llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                  rms_norm_eps=1e-5, tie_word_embeddings=True,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    "llama-3.1-8b": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False,
                                   rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 8192})),
    "mistral-7b": ("mistral", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768, sliding_window=4096,
                    rms_norm_eps=1e-5, tie_word_embeddings=False)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "gemma-2-2b": ("gemma2", dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                                  num_key_value_heads=4, head_dim=256, vocab_size=256000, max_position_embeddings=8192,
                                  query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                  sliding_window=4096, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    "pythia-70m": ("gpt_neox", dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8,
                     vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
                     layer_norm_eps=1e-5, tie_word_embeddings=False)),
}
REAL_CONFIGS = {t: kw for t, kw in (MODELS[m] for m in ("llama-3.2-1b", "mistral-7b", "qwen2.5-0.5b", "pythia-70m"))}


def family_architecture(name: str, **overrides) -> ModelConfig:
    """The `ModelConfig` of a published model of `MODELS` (config only, no weights), with config
    `overrides` (e.g. num_hidden_layers=2 for a reduced copy)."""
    import transformers

    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; family models: {', '.join(MODELS)}")
    t, kw = MODELS[name]
    hf_config = getattr(transformers, CLASSES[t] + "Config")(**{**kw, **overrides})
    return config_from_hf_config(hf_config, name)
REDUCED = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=512,
               max_position_embeddings=64)
REDUCED_EXTRA = {  # what keeps each family's features at the reduced size
    "llama": dict(num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "mistral": dict(num_key_value_heads=2, sliding_window=32),
    "qwen2": dict(num_key_value_heads=1, tie_word_embeddings=True),
    "gpt_neox": dict(rotary_pct=0.25, use_parallel_residual=True),
    "gemma2": dict(num_key_value_heads=2, head_dim=16, num_hidden_layers=3, sliding_window=4, query_pre_attn_scalar=24,
                   attn_logit_softcapping=1.0, final_logit_softcapping=3.0, tie_word_embeddings=True),
}


def random_hf_model(model_type: str, seed: int = 0, reduced: bool = True, perturb: bool = True, **overrides):
    """A randomly initialised transformers causal LM of a supported family, the same for a seed:
    the real model's config (`REAL_CONFIGS`) or a reduced one with the family's features.
    `perturb` moves norm gains and biases off their init values (1 and 0), so a test exercises
    every parameter of the forward."""
    import transformers

    if model_type not in CLASSES:
        raise ValueError(f"no random initialisation for model_type {model_type!r}; known: {', '.join(CLASSES)}")
    kw = {**REDUCED, **REDUCED_EXTRA[model_type]} if reduced else dict(REAL_CONFIGS[model_type])
    kw.update(overrides)
    config = getattr(transformers, CLASSES[model_type] + "Config")(**kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, CLASSES[model_type] + "ForCausalLM")(config).eval()
        if perturb:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "norm" in name:
                        p.add_(torch.randn_like(p) * 0.1)
                    elif name.endswith("bias"):
                        p.add_(torch.randn_like(p) * 0.05)
    return model
