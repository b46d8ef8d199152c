"""Bridges between transformer_lens 4.3 and our `Weights`/`ModelConfig`.

transformer_lens is used only at the edges: to read weights out of a `TransformerBridge`
(`weights_from_bridge`), to translate configs (`config_from_hf_gpt2`, `tl_legacy_config`), and to
build an independent reference forward (`native_reference`) that tests compare our engine with.
The engine itself never imports it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import torch

from harness.core.weights import ACT_FNS, ModelConfig, Weights, expected_shapes

_LN_KEYS = ("ln1.w", "ln1.b", "ln2.w", "ln2.b")


def _expected_keys(cfg: ModelConfig) -> set[str]:
    """The parameter names `Weights.validate` wants for `cfg` (nothing more: extras are dropped)."""
    return set(expected_shapes(cfg))


def _ln_is_identity(params: dict, cfg: ModelConfig) -> bool:
    """True when every LN gain is exactly 1 and every LN bias exactly 0.

    That is what `process_weights(fold_ln=True)` leaves behind (TL 4.3 keeps the modules, with
    identity parameters, and still reports normalization_type "LN"); such an LN is LNPre.
    """
    ln = [k for k in _expected_keys(cfg) if k.startswith("ln_final.") or any(k.endswith(s) for s in _LN_KEYS)]
    if not ln or any(k not in params for k in ln):
        return False
    for k in ln:
        t = params[k]
        target = 1.0 if k.endswith(".w") else 0.0
        if not bool((t == target).all()):
            return False
    return True


def weights_from_bridge(bridge, cfg: ModelConfig, provenance: Optional[dict] = None) -> Weights:
    """Our `Weights` from a TL 4.3 `TransformerBridge`, via `bridge.get_params()`.

    `get_params` already returns TL layout (per-head W_Q [H, d_model, d_head], W_U [d_model,
    vocab], ...) and reflects `process_weights`. It also zero-fills parts the model lacks (MLP
    weights of attention-only models), so only the keys `cfg` needs are kept. After fold_ln the
    LN parameters are identities: they are dropped and the returned cfg says "LNPre", so the
    engine's graph and gradients see a parameter-free norm exactly like ACDC's folded models.
    Tensors are detached clones: the bridge can be freed afterwards.
    """
    if getattr(bridge, "_weights_processed", False) and hasattr(bridge, "_register_all_aliases_recursive"):
        # TL 4.3: `process_weights` swaps in new parameter tensors, but the property aliases
        # get_params reads for LN w/b and MLP b_in/b_out still point at the pre-processing
        # tensors (only enable_compatibility_mode re-registers them). Re-point them first.
        bridge._register_all_aliases_recursive()
    with torch.no_grad():
        raw = {k: v.detach().clone() for k, v in bridge.get_params().items()}
    _check_against_bridge(cfg, bridge.cfg)
    processed = bool(getattr(bridge, "_weights_processed", False))
    bnorm = getattr(bridge.cfg, "normalization_type", cfg.normalization_type)
    folded = bnorm == "LN" and _ln_is_identity(raw, dataclasses.replace(cfg, normalization_type="LN"))
    if folded and cfg.normalization_type in ("LN", "LNPre"):
        cfg = dataclasses.replace(cfg, normalization_type="LNPre")
    elif cfg.normalization_type != bnorm:
        # only an identity LN may be read as LNPre; anything else would change the function
        raise ValueError(f"cfg says normalization {cfg.normalization_type!r} but the bridge runs {bnorm!r}")
    keys = _expected_keys(cfg)
    missing = sorted(keys - raw.keys())
    if missing:
        raise ValueError(f"bridge.get_params() lacks {missing[:5]} needed by config {cfg.name!r}")
    prov = {"source": "transformer_lens-bridge", "weights_processed": processed}
    prov.update(provenance or {})
    w = Weights(cfg, {k: raw[k] for k in sorted(keys)}, prov)
    w.validate()
    return w


def _check_against_bridge(cfg: ModelConfig, bcfg) -> None:
    """Refuse a cfg that describes a different function from the one the bridge computes."""
    pairs = [("n_layers", "n_layers"), ("n_heads", "n_heads"), ("d_model", "d_model"), ("d_head", "d_head"), ("eps", "eps")]
    if not cfg.attn_only:
        pairs.append(("act_fn", "act_fn"))
    for ours, theirs in pairs:
        b = getattr(bcfg, theirs, None)
        if b is not None and b != getattr(cfg, ours):
            raise ValueError(f"cfg.{ours}={getattr(cfg, ours)!r} but the bridge has {theirs}={b!r}")
    if bool(getattr(bcfg, "attn_only", cfg.attn_only)) != cfg.attn_only:
        raise ValueError(f"cfg attn_only={cfg.attn_only} but the bridge has attn_only={bcfg.attn_only}")
    direction = getattr(bcfg, "attention_dir", None)
    if direction is not None and (direction == "causal") != cfg.causal:
        raise ValueError(f"cfg causal={cfg.causal} but the bridge's attention_dir is {direction!r}")
    pos = getattr(bcfg, "positional_embedding_type", None) or "standard"
    if pos != cfg.positional_embedding_type:
        raise ValueError(f"cfg positions {cfg.positional_embedding_type!r} but the bridge uses {pos!r}")
    if getattr(bcfg, "normalization_type", None) not in (None, "LN", "LNPre", "RMS"):
        raise ValueError(f"bridge normalization_type {bcfg.normalization_type!r} is not supported (LN, LNPre, RMS or none)")
    if getattr(bcfg, "rmsnorm_uses_offset", False):
        raise ValueError("the bridge's RMSNorm scales by 1 + w (Gemma), which the engine does not run")
    for ours, theirs in (("kv_heads", "n_key_value_heads"), ("gated_mlp", "gated_mlp"),
                         ("parallel_attn_mlp", "parallel_attn_mlp")):
        b = getattr(bcfg, theirs, None)
        if b is not None and b != getattr(cfg, ours) and not (theirs == "gated_mlp" and cfg.attn_only):
            raise ValueError(f"cfg.{ours}={getattr(cfg, ours)!r} but the bridge has {theirs}={b!r}")


def _act_fn(name: Optional[str], attn_only: bool, where: str) -> str:
    if attn_only:
        return "gelu_new"  # unused without MLPs (e.g. "solu_ln" in attn-only-4l's config)
    if name not in ACT_FNS:
        raise ValueError(f"{where}: act_fn {name!r} is not supported (supported: {ACT_FNS})")
    return name


def config_from_hf_gpt2(hf_config, name: str) -> ModelConfig:
    """A `ModelConfig` for a transformers `GPT2Config` (pre-LN, learned absolute positions)."""
    if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError("scale_attn_by_inverse_layer_idx (per-layer attention scale) is not supported")
    d_model, n_heads = hf_config.n_embd, hf_config.n_head
    if d_model % n_heads:
        raise ValueError(f"n_embd {d_model} is not divisible by n_head {n_heads}")
    return ModelConfig(
        name=name,
        n_layers=hf_config.n_layer,
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_model // n_heads,
        d_mlp=hf_config.n_inner if hf_config.n_inner is not None else 4 * d_model,
        d_vocab=hf_config.vocab_size,
        n_ctx=hf_config.n_positions,
        act_fn=_act_fn(getattr(hf_config, "activation_function", "gelu_new"), False, name),
        normalization_type="LN",
        causal=True,
        positional_embedding_type="standard",
        eps=hf_config.layer_norm_epsilon,
        attn_scale=None if getattr(hf_config, "scale_attn_weights", True) else 1.0,
    )


def tl_legacy_config(cfg_dict: dict, name: str) -> ModelConfig:
    """A `ModelConfig` from a legacy TL config: a `HookedTransformerConfig.to_dict()` or the
    config.json of a NeelNanda/ArthurConmy repo (which says "normalization" and "shortformer_pos"
    where HookedTransformerConfig says "normalization_type" and "positional_embedding_type")."""
    c = dict(cfg_dict)
    unsupported = {
        "gated_mlp": True, "final_rms": True, "parallel_attn_mlp": True, "use_local_attn": True,
        "scale_attn_by_inverse_layer_idx": True, "post_embedding_ln": True, "use_qk_norm": True,
    }
    for k, bad in unsupported.items():
        if c.get(k) == bad:
            raise ValueError(f"{name}: legacy config sets {k}={bad}, which the engine does not implement")
    if c.get("n_key_value_heads") not in (None, c.get("n_heads")):
        raise ValueError(f"{name}: grouped-query attention (n_key_value_heads) is not supported")
    norm = c.get("normalization_type", c.get("normalization", "LN"))
    if norm not in (None, "LN", "LNPre"):
        raise ValueError(f"{name}: normalization {norm!r} is not supported (LN, LNPre or None)")
    if "positional_embedding_type" in c:
        pos = c["positional_embedding_type"]
    else:
        pos = "shortformer" if c.get("shortformer_pos", False) else "standard"
    if pos not in ("standard", "shortformer"):
        raise ValueError(f"{name}: positional_embedding_type {pos!r} is not supported")
    attn_only = bool(c.get("attn_only", False))
    d_model = c["d_model"]
    d_mlp = None
    if not attn_only:
        d_mlp = c.get("d_mlp")
        if d_mlp is None or d_mlp <= 0:
            d_mlp = 4 * d_model  # HookedTransformerConfig's default
    n_heads = c.get("n_heads", -1)
    if n_heads is None or n_heads <= 0:
        n_heads = d_model // c["d_head"]
    d_vocab_out = c.get("d_vocab_out", -1)
    attn_scale = None
    if c.get("use_attn_scale", True) is False:
        attn_scale = 1.0
    elif c.get("attn_scale") is not None and not math.isclose(c["attn_scale"], math.sqrt(c["d_head"])):
        attn_scale = float(c["attn_scale"])
    return ModelConfig(
        name=name,
        n_layers=c["n_layers"],
        n_heads=n_heads,
        d_model=d_model,
        d_head=c["d_head"],
        d_mlp=d_mlp,
        d_vocab=c["d_vocab"],
        d_vocab_out=None if d_vocab_out in (None, -1) or d_vocab_out == c["d_vocab"] else d_vocab_out,
        n_ctx=c["n_ctx"],
        act_fn=_act_fn(c.get("act_fn"), attn_only, name),
        normalization_type=norm,
        causal=c.get("attention_dir", "causal") == "causal",
        positional_embedding_type=pos,
        eps=c.get("eps", 1e-5),
        attn_scale=attn_scale,
    )


def native_reference(weights: Weights) -> Any:
    """A TL 4.3 `TransformerBridge.boot_native` model computing the same function as `weights`.

    For tests only: transformer_lens's own forward is an independent implementation of the
    maths the engine implements. Our TL-format dict is mapped with `convert_tl_checkpoint` and
    loaded strictly. Non-zero b_U is carried by the bridge's unembedding bias buffer (the native
    head is bias-free; the bridge registers a bias buffer that `nn.Linear` adds). boot_native has
    no shortformer positions, so those models raise. The native model has no per-head hooks.
    """
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources import native as _native  # noqa: F401  (attaches boot_native)
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    c = weights.cfg
    if c.positional_embedding_type != "standard":
        raise ValueError(
            f"{c.name}: transformer_lens's native model has no {c.positional_embedding_type!r} positional "
            "embeddings (only standard and rotary); check shortformer models another way"
        )
    weights.validate()
    params = {k: v.detach() for k, v in weights.params.items() if k in _expected_keys(c)}
    if c.attn_scale is not None and math.isclose(c.attn_scale, 1.0) and c.d_head > 1:
        # The native attention refuses attn_scale=1 for d_head>1; dividing scores by 1 equals
        # dividing by sqrt(d_head) after scaling queries by sqrt(d_head).
        s = math.sqrt(c.d_head)
        for L in range(c.n_layers):
            for k in (f"blocks.{L}.attn.W_Q", f"blocks.{L}.attn.b_Q"):
                params[k] = params[k] * s
        attn_scale = -1.0
    else:
        attn_scale = -1.0 if c.attn_scale is None else float(c.attn_scale)
    tcfg = TransformerBridgeConfig(
        d_model=c.d_model,
        d_head=c.d_head,
        n_layers=c.n_layers,
        n_ctx=c.n_ctx,
        n_heads=c.n_heads,
        d_vocab=c.d_vocab,
        d_vocab_out=c.vocab_out,
        d_mlp=c.d_mlp,
        act_fn=c.act_fn,
        eps=c.eps,
        normalization_type=c.normalization_type,
        attention_dir="causal" if c.causal else "bidirectional",
        attn_only=c.attn_only,
        use_attn_scale=True,
        attn_scale=attn_scale,
        positional_embedding_type="standard",
        architecture="TransformerLensNative",
        init_weights=False,
        dtype=weights.dtype,
        model_name=c.name,
    )
    bridge = TransformerBridge.boot_native(tcfg, dtype=weights.dtype, device=weights.device, model_name=c.name)
    sd = convert_tl_checkpoint(params, bridge.cfg)
    result = bridge.load_state_dict(sd, strict=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"native load: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    b_U = bridge.unembed.b_U
    if not torch.equal(b_U.to(weights.dtype), params["unembed.b_U"].to(b_U.device, weights.dtype)):
        raise ValueError("the native bridge did not take unembed.b_U; compare logits minus b_U instead")
    bridge.eval()
    return bridge
