"""Model configuration and weights in transformer_lens's parameter names and shapes.

Everything downstream (graph, engine, methods) sees only a `ModelConfig` and a flat dict of
tensors keyed like a legacy `HookedTransformer.state_dict()` ("blocks.0.attn.W_Q" with shape
[n_heads, d_model, d_head], ...). Loading code (hub, cache, tracr, random init) is the only
place that knows where weights come from.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

import torch

ACT_FNS = ("gelu_new", "gelu", "relu", "silu", "gelu_pytorch_tanh")
NORMS = (None, "LN", "LNPre", "RMS")
POS_TYPES = ("standard", "shortformer", "rotary")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture facts the engine and graph need (a subset of TL's config).

    `split_embed` makes token and position embeddings two separate input nodes, as ACDC does
    for tracr models; otherwise their sum is one input node (`blocks.0.hook_resid_pre`).

    The families after GPT-2 (docs/graph-and-patching.md#model-families) add:
    - `n_key_value_heads`: grouped-query attention; head h reads key/value head
      h // (n_heads / n_key_value_heads). Weights keep TL's per-query-head layout (W_K, W_V, b_K,
      b_V [n_heads, ...], equal within a group, as the bridge's `get_params` returns them);
    - `normalization_type` "RMS": x / sqrt(mean(x^2) + eps) * w, no centring, no bias;
    - `positional_embedding_type` "rotary": no position embedding; q and k are rotated after
      their receivers (and after DIRECT patching), over the first `rotary_dim` dimensions of each
      head, in the rotate-half layout (Llama, GPT-NeoX), by angles position * `rotary_inv_freq`
      (the model's own frequencies, so RoPE scaling variants are exact), cos and sin multiplied
      by `rotary_scale`;
    - `gated_mlp`: hidden = act(x W_gate) * (x W_in + b_in) (SwiGLU/GeGLU);
    - `parallel_attn_mlp`: the MLP reads the layer's input residual, not the attention's output
      (GPT-NeoX/Pythia), so layer L's MLP input has no edges from layer L's heads.
    """

    name: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_mlp: Optional[int] = None  # None means attention-only
    d_vocab_out: Optional[int] = None
    act_fn: str = "gelu_new"
    normalization_type: Optional[str] = "LN"
    causal: bool = True
    positional_embedding_type: str = "standard"
    split_embed: bool = False
    eps: float = 1e-5
    attn_scale: Optional[float] = None  # None means sqrt(d_head)
    n_key_value_heads: Optional[int] = None  # None means n_heads (no grouping)
    gated_mlp: bool = False
    parallel_attn_mlp: bool = False
    rotary_dim: Optional[int] = None  # rotary: dimensions rotated per head (None: all of d_head)
    rotary_inv_freq: Optional[tuple] = None  # rotary: rotary_dim / 2 inverse frequencies
    rotary_scale: float = 1.0  # rotary: cos and sin multiplied by this (HF's attention_scaling)
    # Gemma-2 (docs/graph-and-patching.md#gemma-2)
    embed_scale: float = 1.0  # the token embedding multiplied by this (Gemma: sqrt(d_model))
    post_norms: bool = False  # RMSNorm after attention (ln1_post; attention biases b_O zero) and after the MLP (ln2_post)
    attn_softcap: Optional[float] = None  # scores -> cap * tanh(scores / cap), before the mask
    logit_softcap: Optional[float] = None  # logits -> cap * tanh(logits / cap)
    sliding_window: Optional[int] = None  # local layers: a query sees the last `sliding_window` keys
    local_layers: tuple = ()  # the layers with sliding-window attention

    def __post_init__(self):
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"act_fn {self.act_fn!r} not supported; choose one of {ACT_FNS}")
        if self.normalization_type not in NORMS:
            raise ValueError(f"normalization_type {self.normalization_type!r} not in {NORMS}")
        if self.positional_embedding_type not in POS_TYPES:
            raise ValueError(f"positional_embedding_type must be one of {POS_TYPES}")
        if self.split_embed and self.positional_embedding_type != "standard":
            raise ValueError("split_embed needs standard (additive) positional embeddings")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_key_value_heads {self.kv_heads}")
        if self.positional_embedding_type == "rotary":
            dim = self.rotary_dims
            if dim % 2 or not 0 < dim <= self.d_head:
                raise ValueError(f"rotary_dim {dim} must be even and in 1..d_head ({self.d_head})")
            if self.rotary_inv_freq is None or len(self.rotary_inv_freq) != dim // 2:
                raise ValueError(f"rotary models need rotary_inv_freq: {dim // 2} inverse frequencies")
        if self.gated_mlp and self.attn_only:
            raise ValueError("gated_mlp needs an MLP (d_mlp)")
        if self.post_norms and self.normalization_type != "RMS":
            raise ValueError("post_norms needs RMS normalization (Gemma-2's)")
        if self.local_layers and self.sliding_window is None:
            raise ValueError("local_layers need a sliding_window")
        if any(not 0 <= layer < self.n_layers for layer in self.local_layers):
            raise ValueError(f"local_layers {self.local_layers} must be layers of 0..{self.n_layers - 1}")

    @property
    def kv_heads(self) -> int:
        """Key/value heads per layer (n_heads without grouped-query attention)."""
        return self.n_key_value_heads if self.n_key_value_heads is not None else self.n_heads

    @property
    def kv_group(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.kv_heads

    @property
    def rotary_dims(self) -> int:
        return self.rotary_dim if self.rotary_dim is not None else self.d_head

    @property
    def gpt2_style(self) -> bool:
        """Only what GPT-2, the ACDC models and tracr use (LayerNorm or none, learned or
        shortformer positions, one key/value head per head, plain sequential MLPs). Code that
        re-derives parts of the forward by hand (some methods' fast paths) covers these only."""
        return (self.normalization_type != "RMS" and self.positional_embedding_type != "rotary"
                and self.kv_heads == self.n_heads and not self.gated_mlp and not self.parallel_attn_mlp
                and self.embed_scale == 1.0 and not self.post_norms and self.attn_softcap is None
                and self.logit_softcap is None and not self.local_layers)

    @property
    def has_pos_embed(self) -> bool:
        return self.positional_embedding_type != "rotary"

    @property
    def attn_only(self) -> bool:
        return self.d_mlp is None

    @property
    def vocab_out(self) -> int:
        return self.d_vocab_out if self.d_vocab_out is not None else self.d_vocab

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else math.sqrt(self.d_head)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Weights:
    """A model: its config plus TL-format tensors (`params`), on one device and dtype."""

    cfg: ModelConfig
    params: dict = field(default_factory=dict)
    # Free-form facts about where the weights came from (shown in reports).
    provenance: dict = field(default_factory=dict)
    # Tensors made from `params` once and reused while they are constant (`derived`).
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.params[key]

    def get(self, key: str):
        return self.params.get(key)

    def to(self, device=None, dtype=None) -> "Weights":
        def conv(t):
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            return t.to(device) if device is not None else t

        return Weights(self.cfg, {k: conv(v) for k, v in self.params.items()}, dict(self.provenance))

    def derived(self, key, names: tuple, make):
        """`make()` (tensors computed from params `names`), made once and reused while none of
        those params requires grad or has changed in place (their `_version`); otherwise made
        afresh each call, so gradients reach the weights."""
        ts = [self.params[n] for n in names]
        if any(t.requires_grad for t in ts):
            return make()
        hit = self.cache.get(key)
        if hit is None or len(hit[0]) != len(ts) or any(a is not t or v != t._version for (a, v), t in zip(hit[0], ts)):
            hit = self.cache[key] = (tuple((t, t._version) for t in ts), make())  # holds the params: no id reuse
        return hit[1]

    @property
    def device(self) -> torch.device:
        return self.params["embed.W_E"].device

    @property
    def dtype(self) -> torch.dtype:
        return self.params["embed.W_E"].dtype

    def validate(self) -> None:
        """Check every expected tensor is present with the shape TL uses, and grouped key/value
        weights equal within each group; raise a clear error."""
        c = self.cfg
        expected = expected_shapes(c)
        for k, shape in expected.items():
            if k not in self.params:
                raise ValueError(f"weights for {c.name!r} lack {k!r} (expected shape {shape})")
            if tuple(self.params[k].shape) != shape:
                raise ValueError(
                    f"weights for {c.name!r}: {k!r} has shape {tuple(self.params[k].shape)}, expected {shape}"
                )
        if c.post_norms:
            for L in range(c.n_layers):
                if bool(self.params[f"blocks.{L}.attn.b_O"].any()):
                    raise ValueError(f"weights for {c.name!r}: blocks.{L}.attn.b_O must be zero with post-attention norms "
                                     "(a bias inside the norm would not belong to any head)")
        if c.kv_group > 1:
            for L in range(c.n_layers):
                for m in ("W_K", "W_V", "b_K", "b_V"):
                    t = self.params[f"blocks.{L}.attn.{m}"]
                    if not torch.equal(t, expand_kv(compact_kv(t, c), c)):
                        raise ValueError(f"weights for {c.name!r}: blocks.{L}.attn.{m} differs within a key/value group "
                                         f"({c.kv_group} query heads share each of {c.kv_heads} key/value heads)")


def expected_shapes(c: ModelConfig) -> dict:
    """Parameter name -> shape, every tensor the engine reads for config `c` (TL names and
    layouts; biases a family lacks are zero tensors, as the bridge's `get_params` gives them)."""
    out = {"embed.W_E": (c.d_vocab, c.d_model), "unembed.W_U": (c.d_model, c.vocab_out), "unembed.b_U": (c.vocab_out,)}
    if c.has_pos_embed:
        out["pos_embed.W_pos"] = (c.n_ctx, c.d_model)
    norms = ("w", "b") if c.normalization_type == "LN" else ("w",) if c.normalization_type == "RMS" else ()
    for L in range(c.n_layers):
        p = f"blocks.{L}."
        for m in "QKV":
            out[p + f"attn.W_{m}"] = (c.n_heads, c.d_model, c.d_head)
            out[p + f"attn.b_{m}"] = (c.n_heads, c.d_head)
        out[p + "attn.W_O"] = (c.n_heads, c.d_head, c.d_model)
        out[p + "attn.b_O"] = (c.d_model,)
        if not c.attn_only:
            out[p + "mlp.W_in"] = (c.d_model, c.d_mlp)
            out[p + "mlp.b_in"] = (c.d_mlp,)
            if c.gated_mlp:
                out[p + "mlp.W_gate"] = (c.d_model, c.d_mlp)
            out[p + "mlp.W_out"] = (c.d_mlp, c.d_model)
            out[p + "mlp.b_out"] = (c.d_model,)
        lns = ("ln1",) + (() if c.attn_only else ("ln2",))
        for ln in lns + (tuple(f"{ln}_post" for ln in lns) if c.post_norms else ()):
            out.update({p + f"{ln}.{x}": (c.d_model,) for x in norms})
    out.update({f"ln_final.{x}": (c.d_model,) for x in norms})
    return out


def rotary_inv_freq(rotary_dim: int, base: float = 10000.0) -> tuple:
    """Default RoPE inverse frequencies base^(-2i / rotary_dim), i < rotary_dim / 2 (Su et al.
    2021), computed as transformers computes them (float32 of an int64 arange), for configs
    built by hand; loaded models bring their own (`harness.core.loading_hf`)."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    return tuple(float(x) for x in (1.0 / (base ** exponent)))


def compact_kv(t: torch.Tensor, c: ModelConfig) -> torch.Tensor:
    """A per-query-head key/value tensor [n_heads, ...] -> one row per key/value head (the first
    of each group) [n_key_value_heads, ...]."""
    return t[:: c.kv_group]


def expand_kv(t: torch.Tensor, c: ModelConfig) -> torch.Tensor:
    """[n_key_value_heads, ...] -> [n_heads, ...], each key/value head repeated for its group."""
    return t.repeat_interleave(c.kv_group, dim=0)


def random_weights(cfg: ModelConfig, seed: int = 0, dtype=torch.float32, init_range: float = 0.02) -> Weights:
    """Normal(0, init_range) weights with LN gains near 1; biases small but non-zero.

    Non-zero biases matter: they make the tests exercise every constant term of the forward.
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=init_range):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dtype)

    c = cfg
    p = {"embed.W_E": rnd(c.d_vocab, c.d_model)}
    if c.has_pos_embed:
        p["pos_embed.W_pos"] = rnd(c.n_ctx, c.d_model)
    p["unembed.W_U"] = rnd(c.d_model, c.vocab_out)
    p["unembed.b_U"] = rnd(c.vocab_out)
    norm_b = c.normalization_type == "LN"
    for L in range(c.n_layers):
        b = f"blocks.{L}."
        for m in "QKV":
            heads = c.n_heads if m == "Q" else c.kv_heads  # grouped keys/values: one draw per group
            W, bias = rnd(heads, c.d_model, c.d_head, std=init_range * 4), rnd(heads, c.d_head)
            p[b + f"attn.W_{m}"], p[b + f"attn.b_{m}"] = (W, bias) if m == "Q" else (expand_kv(W, c), expand_kv(bias, c))
        p[b + "attn.W_O"] = rnd(c.n_heads, c.d_head, c.d_model, std=init_range * 4)
        p[b + "attn.b_O"] = rnd(c.d_model) * (0 if c.post_norms else 1)
        if not c.attn_only:
            p[b + "mlp.W_in"] = rnd(c.d_model, c.d_mlp, std=init_range * 4)
            p[b + "mlp.b_in"] = rnd(c.d_mlp)
            p[b + "mlp.W_out"] = rnd(c.d_mlp, c.d_model, std=init_range * 4)
            p[b + "mlp.b_out"] = rnd(c.d_model)
            if c.gated_mlp:
                p[b + "mlp.W_gate"] = rnd(c.d_model, c.d_mlp, std=init_range * 4)
        if c.normalization_type in ("LN", "RMS"):
            lns = ("ln1",) + (() if c.attn_only else ("ln2",))
            for ln in lns + (tuple(f"{ln}_post" for ln in lns) if c.post_norms else ()):
                p[b + f"{ln}.w"] = (1 + rnd(c.d_model, std=0.1))
                if norm_b:
                    p[b + f"{ln}.b"] = rnd(c.d_model)
    if c.normalization_type in ("LN", "RMS"):
        p["ln_final.w"] = 1 + rnd(c.d_model, std=0.1)
        if norm_b:
            p["ln_final.b"] = rnd(c.d_model)
    w = Weights(cfg, p, {"source": "random-init", "seed": seed})
    w.validate()
    return w
