"""HF transformers' GPT-2 on a setup's own weights: the reference the engine's unpatched
forward+backward is timed against (issue 14: at most 1.15x HF's, same weights, same batch).

The engine's weights are TransformerLens-shaped (per-head W_Q [n_heads, d_model, d_head], ...);
`hf_gpt2` lays them out as HF's fused Conv1D matrices (c_attn [d_model, 3 d_model], ...) with an
untied lm_head. HF's GPT-2 has no unembedding bias, so `hf_logits` adds b_U: the logits then
equal the engine's up to round-off (tests/test_timing.py), and both sides differentiate the same
objective.
"""
from __future__ import annotations

import torch

from harness.core.weights import Weights

_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu"}


def hf_applies(cfg) -> bool:
    """Whether `cfg` (a ModelConfig) is a GPT-2 HF can run: LayerNorm, learned absolute positions,
    MLPs, heads that tile d_model, one embedding node."""
    return (cfg.gpt2_style and cfg.normalization_type == "LN" and cfg.positional_embedding_type == "standard" and not cfg.attn_only
            and not cfg.split_embed and cfg.n_heads * cfg.d_head == cfg.d_model and cfg.causal
            and cfg.act_fn in _ACTIVATIONS)


def hf_gpt2(w: Weights):
    """An eval-mode `GPT2LMHeadModel` holding `w`'s values (constants: no parameter requires grad)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = w.cfg
    if not hf_applies(c):
        raise ValueError(f"{c.name} is not a GPT-2 architecture HF's GPT2LMHeadModel runs")
    hc = GPT2Config(vocab_size=c.d_vocab, n_positions=c.n_ctx, n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads,
                    n_inner=c.d_mlp, activation_function=_ACTIVATIONS[c.act_fn], layer_norm_epsilon=c.eps,
                    tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(hc).to(w.dtype)
    D = c.d_model
    sd = {"transformer.wte.weight": w["embed.W_E"], "transformer.wpe.weight": w["pos_embed.W_pos"],
          "transformer.ln_f.weight": w["ln_final.w"], "transformer.ln_f.bias": w["ln_final.b"],
          "lm_head.weight": w["unembed.W_U"].T}
    for L in range(c.n_layers):
        p, h = f"blocks.{L}.", f"transformer.h.{L}."
        heads = lambda X: w[p + f"attn.W_{X}"].permute(1, 0, 2).reshape(D, D)  # noqa: E731
        sd.update({
            h + "ln_1.weight": w[p + "ln1.w"], h + "ln_1.bias": w[p + "ln1.b"],
            h + "attn.c_attn.weight": torch.cat([heads("Q"), heads("K"), heads("V")], 1),
            h + "attn.c_attn.bias": torch.cat([w[p + f"attn.b_{X}"].reshape(-1) for X in "QKV"]),
            h + "attn.c_proj.weight": w[p + "attn.W_O"].reshape(D, D), h + "attn.c_proj.bias": w[p + "attn.b_O"],
            h + "ln_2.weight": w[p + "ln2.w"], h + "ln_2.bias": w[p + "ln2.b"],
            h + "mlp.c_fc.weight": w[p + "mlp.W_in"], h + "mlp.c_fc.bias": w[p + "mlp.b_in"],
            h + "mlp.c_proj.weight": w[p + "mlp.W_out"], h + "mlp.c_proj.bias": w[p + "mlp.b_out"],
        })
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias") and not k.endswith(".attn.masked_bias")]
    if missing or unexpected:
        raise ValueError(f"HF GPT-2 layout mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for q in hf.parameters():
        q.requires_grad_(False)
    return hf.to(w.device).eval()


def hf_logits(hf, w: Weights, token_embeds: torch.Tensor, positions=None) -> torch.Tensor:
    """[batch, pos or len(positions), d_vocab_out] from token embeddings [batch, pos, d_model]
    (HF adds the positions itself), plus the engine's b_U. `positions`: unembed only these columns
    (HF's transformer body, then its lm_head on them), as `Engine.run` does."""
    if positions is None:
        return hf(inputs_embeds=token_embeds).logits + w["unembed.b_U"]
    hidden = hf.transformer(inputs_embeds=token_embeds).last_hidden_state[:, positions.to(token_embeds.device)]
    return hf.lm_head(hidden) + w["unembed.b_U"]
