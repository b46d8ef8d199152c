"""How many examples a gradient method can take in one pass: its traced run's memory per token.

A traced forward+backward keeps, per token: every sender's output for the run and for its
source (and their difference: [n_senders, d_model] each), the gradient at every receiver input
and q/k/v input (one [d_model] vector per head and per q/k/v, n_layers x 3 x n_heads, with the
inputs themselves saved for backward), and the logits with their softmax and gradient
([vocab] each). Measured on random-init GPT-2 small (IOI, 100 x 15 tokens, EAP noising): 9.9 GB
resident with 0.5 GB of weights, about 6.3 MB per token; this count gives 6.7 MB.
"""
from __future__ import annotations

import torch

# examples per pass are chosen so a traced run stays under this many bytes (--chunk overrides): with
# GPT-2 small's weights and loading (3.7 GB peak) a run then stays under 4 GB resident
ACTIVATION_BUDGET = 2**30


def traced_bytes_per_token(cfg, dtype) -> int:
    """Bytes a traced forward+backward holds per token of model `cfg` (a ModelConfig)."""
    n_senders = 1 + cfg.n_layers * cfg.n_heads + (0 if cfg.attn_only else cfg.n_layers)
    qkv = cfg.n_layers * 3 * cfg.n_heads * cfg.d_model
    floats = 4 * n_senders * cfg.d_model + 3 * qkv + 4 * cfg.vocab_out
    return floats * torch.empty((), dtype=dtype).element_size()


def examples_per_pass(cfg, seq_len: int, n_examples: int, dtype, budget_bytes: int = ACTIVATION_BUDGET) -> int:
    """The most examples (at least 1, at most `n_examples`) whose traced run fits the budget."""
    per_example = traced_bytes_per_token(cfg, dtype) * seq_len
    return max(1, min(n_examples, budget_bytes // per_example))
