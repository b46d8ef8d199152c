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

ACT_FNS = ("gelu_new", "gelu", "relu")
NORMS = (None, "LN", "LNPre")
POS_TYPES = ("standard", "shortformer")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture facts the engine and graph need (a subset of TL's config).

    `split_embed` makes token and position embeddings two separate input nodes, as ACDC does
    for tracr models; otherwise their sum is one input node (`blocks.0.hook_resid_pre`).
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

    def __post_init__(self):
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"act_fn {self.act_fn!r} not supported; choose one of {ACT_FNS}")
        if self.normalization_type not in NORMS:
            raise ValueError(f"normalization_type {self.normalization_type!r} not in {NORMS}")
        if self.positional_embedding_type not in POS_TYPES:
            raise ValueError(f"positional_embedding_type must be one of {POS_TYPES}")
        if self.split_embed and self.positional_embedding_type != "standard":
            raise ValueError("split_embed needs standard (additive) positional embeddings")

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
        """Check every expected tensor is present with the shape TL uses; raise a clear error."""
        c = self.cfg
        expected = {
            "embed.W_E": (c.d_vocab, c.d_model),
            "pos_embed.W_pos": (c.n_ctx, c.d_model),
            "unembed.W_U": (c.d_model, c.vocab_out),
            "unembed.b_U": (c.vocab_out,),
        }
        for L in range(c.n_layers):
            p = f"blocks.{L}."
            for m in "QKV":
                expected[p + f"attn.W_{m}"] = (c.n_heads, c.d_model, c.d_head)
                expected[p + f"attn.b_{m}"] = (c.n_heads, c.d_head)
            expected[p + "attn.W_O"] = (c.n_heads, c.d_head, c.d_model)
            expected[p + "attn.b_O"] = (c.d_model,)
            if not c.attn_only:
                expected[p + "mlp.W_in"] = (c.d_model, c.d_mlp)
                expected[p + "mlp.b_in"] = (c.d_mlp,)
                expected[p + "mlp.W_out"] = (c.d_mlp, c.d_model)
                expected[p + "mlp.b_out"] = (c.d_model,)
            if c.normalization_type == "LN":
                for ln in ("ln1",) + (() if c.attn_only else ("ln2",)):
                    expected[p + f"{ln}.w"] = (c.d_model,)
                    expected[p + f"{ln}.b"] = (c.d_model,)
        if c.normalization_type == "LN":
            expected["ln_final.w"] = (c.d_model,)
            expected["ln_final.b"] = (c.d_model,)
        for k, shape in expected.items():
            if k not in self.params:
                raise ValueError(f"weights for {c.name!r} lack {k!r} (expected shape {shape})")
            if tuple(self.params[k].shape) != shape:
                raise ValueError(
                    f"weights for {c.name!r}: {k!r} has shape {tuple(self.params[k].shape)}, expected {shape}"
                )


def random_weights(cfg: ModelConfig, seed: int = 0, dtype=torch.float32, init_range: float = 0.02) -> Weights:
    """Normal(0, init_range) weights with LN gains near 1; biases small but non-zero.

    Non-zero biases matter: they make the tests exercise every constant term of the forward.
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=init_range):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dtype)

    c = cfg
    p = {
        "embed.W_E": rnd(c.d_vocab, c.d_model),
        "pos_embed.W_pos": rnd(c.n_ctx, c.d_model),
        "unembed.W_U": rnd(c.d_model, c.vocab_out),
        "unembed.b_U": rnd(c.vocab_out),
    }
    for L in range(c.n_layers):
        b = f"blocks.{L}."
        for m in "QKV":
            p[b + f"attn.W_{m}"] = rnd(c.n_heads, c.d_model, c.d_head, std=init_range * 4)
            p[b + f"attn.b_{m}"] = rnd(c.n_heads, c.d_head)
        p[b + "attn.W_O"] = rnd(c.n_heads, c.d_head, c.d_model, std=init_range * 4)
        p[b + "attn.b_O"] = rnd(c.d_model)
        if not c.attn_only:
            p[b + "mlp.W_in"] = rnd(c.d_model, c.d_mlp, std=init_range * 4)
            p[b + "mlp.b_in"] = rnd(c.d_mlp)
            p[b + "mlp.W_out"] = rnd(c.d_mlp, c.d_model, std=init_range * 4)
            p[b + "mlp.b_out"] = rnd(c.d_model)
        if c.normalization_type == "LN":
            for ln in ("ln1",) + (() if c.attn_only else ("ln2",)):
                p[b + f"{ln}.w"] = (1 + rnd(c.d_model, std=0.1))
                p[b + f"{ln}.b"] = rnd(c.d_model)
    if c.normalization_type == "LN":
        p["ln_final.w"] = 1 + rnd(c.d_model, std=0.1)
        p["ln_final.b"] = rnd(c.d_model)
    w = Weights(cfg, p, {"source": "random-init", "seed": seed})
    w.validate()
    return w
