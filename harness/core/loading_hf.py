"""Causal language models of the families after GPT-2: Llama, Mistral, Qwen2, GPT-NeoX (Pythia).

A transformers model (from a local folder, the hub cache, or built from a config with random
weights) is read through transformer_lens 4.3's `TransformerBridge.boot_transformers`: the
bridge's `get_params` gives TL-layout tensors (per-head W_Q/W_K/W_V, grouped key/value heads
repeated per query head, W_gate for gated MLPs). The architecture facts come from the
transformers config and the model's own rotary module (its inverse frequencies and attention
scaling, so RoPE scaling variants such as Llama 3.1's are exact), and are checked against the
bridge's config. Families and their graph: docs/graph-and-patching.md#model-families.

Gemma-2 is not read yet: its post-attention RMSNorm acts on the sum of the heads' outputs, so
a head's output is not an additive residual sender as ACDC's graph assumes, and its RMSNorm
scales by 1 + w. It is refused with that reason.
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
}
NOT_YET = {
    "gemma2": "its post-attention RMSNorm normalises the sum of the heads' outputs, so a head is not an additive "
              "residual sender (ACDC's edge semantics); the engine does not run it yet",
    "gemma3": "as for gemma2 (post-norms on the sum of the heads' outputs)",
}


def family(hf_config) -> str:
    """The supported family of a transformers config (its model_type), or a ValueError naming
    the families that are."""
    t = getattr(hf_config, "model_type", None)
    if t in FAMILIES:
        return t
    why = NOT_YET.get(t, "not a supported architecture")
    raise ValueError(f"model_type {t!r}: {why}; supported: {', '.join(FAMILIES)} (and gpt2)")


CLASSES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "gpt_neox": "GPTNeoX"}  # transformers' prefixes


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
    example = FAMILIES[hf_model.config.model_type][1]
    bridge = TransformerBridge.boot_transformers(example, hf_model=hf_model, tokenizer=tokenizer, dtype=torch.float32)
    w = weights_from_bridge(bridge, cfg, provenance)
    w.provenance["source"] = f"transformers {type(hf_model).__name__} via transformer_lens TransformerBridge.boot_transformers"
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
}


def random_hf_model(model_type: str, seed: int = 0, reduced: bool = True, perturb: bool = True, **overrides):
    """A randomly initialised transformers causal LM of a supported family, the same for a seed:
    the real model's config (`REAL_CONFIGS`) or a reduced one with the family's features.
    `perturb` moves norm gains and biases off their init values (1 and 0), so a test exercises
    every parameter of the forward."""
    import transformers

    classes = CLASSES
    if model_type not in classes:
        raise ValueError(f"no random initialisation for model_type {model_type!r}; known: {', '.join(classes)}")
    kw = {**REDUCED, **REDUCED_EXTRA[model_type]} if reduced else dict(REAL_CONFIGS[model_type])
    kw.update(overrides)
    config = getattr(transformers, classes[model_type] + "Config")(**kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, classes[model_type] + "ForCausalLM")(config).eval()
        if perturb:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "norm" in name:
                        p.add_(torch.randn_like(p) * 0.1)
                    elif name.endswith("bias"):
                        p.add_(torch.randn_like(p) * 0.05)
    return model
