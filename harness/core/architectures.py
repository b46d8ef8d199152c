"""The real configurations of the models ACDC's six tasks use (docs/tasks.md#models, docs/tracr.md#compiled-model-facts).

Random weights with these configs are what tests and timings run on offline.
"""
from __future__ import annotations

from harness.core.weights import ModelConfig

ARCHITECTURES: dict[str, ModelConfig] = {
    "gpt2": ModelConfig(
        name="gpt2", n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257,
        n_ctx=1024, act_fn="gelu_new", normalization_type="LN", causal=True,
    ),
    "attn-only-4l": ModelConfig(
        name="attn-only-4l", n_layers=4, n_heads=8, d_model=512, d_head=64, d_mlp=None, d_vocab=48262,
        n_ctx=1024, normalization_type="LN", causal=True,
    ),
    "redwood_attn_2l": ModelConfig(
        name="redwood_attn_2l", n_layers=2, n_heads=8, d_model=256, d_head=32, d_mlp=None, d_vocab=50259,
        n_ctx=2048, normalization_type="LN", causal=True, positional_embedding_type="shortformer",
    ),
    # tracr models: shapes of the compiled programs (checked against the compiler in the tests).
    "tracr-reverse": ModelConfig(
        name="tracr-reverse", n_layers=4, n_heads=1, d_model=41, d_head=12, d_mlp=30, d_vocab=5, d_vocab_out=3,
        n_ctx=6, act_fn="relu", normalization_type=None, causal=False, split_embed=True,
    ),
    "tracr-xproportion": ModelConfig(
        name="tracr-xproportion", n_layers=2, n_heads=1, d_model=14, d_head=7, d_mlp=1, d_vocab=6, d_vocab_out=1,
        n_ctx=6, act_fn="relu", normalization_type=None, causal=False, split_embed=True,
    ),
}


def architecture(name: str) -> ModelConfig:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(ARCHITECTURES)}") from None
