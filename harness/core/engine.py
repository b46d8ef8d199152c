"""A forward pass in which every receiver's input is the sum of its senders' outputs.

The engine runs transformer_lens-format weights (`Weights`) over ACDC's graph (`Graph`).
Any set of edges can be patched: a float mask `alpha` over the counted edges mixes, for every
edge s -> r, the sender's output in this run with its output in a corrupted run
(acdc-tasks.md §1.2):

    input_r = const_r + sum_s [ (1 - alpha[s->r]) * current_s + alpha[s->r] * corrupted_s ]

and a DIRECT edge (q/k/v input -> q/k/v) mixes the head's q/k/v the same way. alpha = 0 is the
clean model; alpha = 1 everywhere reproduces the corrupted run. The mask is an ordinary tensor,
so it can carry gradients (attribution), be fractional (integrated gradients) and be batched
(one mask per batch row: many circuits per forward).

Shapes: tokens [batch, pos]; sender outputs [n_senders, batch, pos, d_model]; q/k/v
[n_layers, 3, batch, pos, n_heads, d_head]; logits [batch, pos, d_vocab_out].
No method logic lives here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from harness.core.graph import Graph
from harness.core.weights import Weights


@dataclass
class SenderCache:
    """What a run leaves for patching: every sender's output and every head's q/k/v."""

    senders: torch.Tensor  # [n_senders, batch, pos, d_model]
    qkv: torch.Tensor  # [n_layers, 3, batch, pos, n_heads, d_head]

    def repeat(self, times: int) -> "SenderCache":
        """Each batch row repeated `times` times in a row (matches tokens.repeat_interleave)."""
        return SenderCache(self.senders.repeat_interleave(times, dim=1), self.qkv.repeat_interleave(times, dim=2))

    def tile(self, times: int) -> "SenderCache":
        """The whole batch repeated `times` times (matches tokens.repeat(times, 1))."""
        return SenderCache(self.senders.repeat(1, times, 1, 1), self.qkv.repeat(1, 1, times, 1, 1, 1))

    def rows(self, sl) -> "SenderCache":
        return SenderCache(self.senders[:, sl], self.qkv[:, :, sl])


@dataclass
class Trace:
    """One forward's outputs, and (when asked) the tensors attribution needs.

    `receiver_inputs[L]` is [batch, pos, 3*n_heads, d_model] (q inputs of heads 0..H-1, then k,
    then v); `mlp_inputs[L]` and `output_input` are [batch, pos, d_model]; `qkv[L]` is
    [3, batch, pos, n_heads, d_head]; `senders` lists [batch, pos, d_model] outputs in graph order.
    Gradients with respect to any of them come from `torch.autograd.grad`.
    """

    logits: torch.Tensor
    senders: list = field(default_factory=list)
    receiver_inputs: list = field(default_factory=list)
    mlp_inputs: list = field(default_factory=list)
    output_input: Optional[torch.Tensor] = None
    qkv: list = field(default_factory=list)

    def cache(self) -> SenderCache:
        return SenderCache(torch.stack(self.senders).detach(), torch.stack(self.qkv).detach())


def _gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


_ACTS: dict[str, Callable] = {"gelu_new": _gelu_new, "gelu": F.gelu, "relu": F.relu}


class Engine:
    """Runs one model over its graph. See the module docstring for the patching semantics."""

    def __init__(self, weights: Weights, graph: Optional[Graph] = None):
        weights.validate()
        self.w = weights
        self.cfg = weights.cfg
        self.graph = graph if graph is not None else Graph(weights.cfg)
        if self.graph.cfg != self.cfg:
            raise ValueError("graph and weights describe different architectures")
        g = self.graph
        F_ = len(g.senders)
        self._flat_add = (g.add_receiver * F_ + g.add_sender).to(weights.device)
        self._act = _ACTS[self.cfg.act_fn]

    # ----- pieces -----------------------------------------------------------------------
    def _norm(self, x, prefix: str, freeze_scale: bool):
        t = self.cfg.normalization_type
        if t is None:
            return x
        x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + self.cfg.eps).sqrt()
        if freeze_scale:
            scale = scale.detach()
        x = x / scale
        if t == "LN":
            x = x * self.w[prefix + ".w"] + self.w[prefix + ".b"]
        return x

    def dense_mask(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[*, n_edges] -> ADDITION part as [*, n_receivers, n_senders] and DIRECT part as
        [*, n_layers, 3, n_heads]; * is () or (batch,)."""
        g = self.graph
        lead = mask.shape[:-1]
        add = mask.new_zeros(*lead, len(g.receivers) * len(g.senders))
        add = add.index_copy(-1, self._flat_add, mask[..., : g.n_add])
        add = add.view(*lead, len(g.receivers), len(g.senders))
        direct = mask[..., g.n_add :].reshape(*lead, self.cfg.n_layers, 3, self.cfg.n_heads)
        return add, direct

    # ----- the forward ------------------------------------------------------------------
    def run(
        self,
        tokens: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        corrupted: Optional[SenderCache] = None,
        *,
        keep: bool = False,
        zero_senders: bool = False,
        freeze_ln_scale: bool = False,
        input_embeds: Optional[torch.Tensor] = None,
    ) -> Trace:
        """Forward `tokens` [batch, pos]; patch edges by `mask` ([n_edges] or [batch, n_edges])
        towards `corrupted`. `keep` records senders, receiver inputs and q/k/v in the trace.
        `zero_senders` zeroes every residual writer (how ACDC builds a zero-ablation cache).
        `input_embeds` ([n_inputs, batch, pos, d_model]) replaces the input nodes' outputs
        (used to interpolate embeddings).
        """
        cfg, w, g = self.cfg, self.w, self.graph
        tokens = tokens.to(w.device)
        B, P = tokens.shape
        if P > cfg.n_ctx:
            raise ValueError(f"sequence length {P} exceeds the model's n_ctx {cfg.n_ctx}")
        H, D = cfg.n_heads, cfg.d_model
        patch = mask is not None
        if patch:
            if corrupted is None:
                raise ValueError("a mask needs a corrupted SenderCache to patch towards")
            mask = mask.to(w.device, w.dtype)
            if mask.shape[-1] != g.n_edges:
                raise ValueError(f"mask has {mask.shape[-1]} edges, graph has {g.n_edges}")
            add_m, dir_m = self.dense_mask(mask)
            if mask.dim() == 1:
                add_m, dir_m = add_m.unsqueeze(0), dir_m.unsqueeze(0)
            csend = corrupted.senders.to(w.device)
            if csend.shape[1] != B:
                raise ValueError(f"corrupted cache has batch {csend.shape[1]}, tokens have {B}")
        trace = Trace(logits=None)  # type: ignore[arg-type]
        senders: list[torch.Tensor] = []

        def add_sender(x):
            if zero_senders:
                x = torch.zeros_like(x)
            senders.append(x)
            return x

        W_pos = w["pos_embed.W_pos"][:P]
        inputs = list(input_embeds.to(w.device) if input_embeds is not None else self.input_embeddings(tokens))
        resid = 0
        for x in inputs:
            resid = resid + add_sender(x)

        def patched(base, rows, n_up, alpha):
            """base + sum_s alpha[r, s] * (corrupted_s - current_s) for receiver rows `rows`."""
            a = alpha[:, rows, :n_up]  # [b, k, n]
            delta = csend[:n_up] - torch.stack(senders[:n_up])  # [n, B, P, D]
            return base + torch.einsum("bkn,nbpd->bpkd", a, delta)

        for L in range(cfg.n_layers):
            pre = f"blocks.{L}."
            rows = g.qkv_receiver[L].reshape(-1)
            n_up = g.receivers[int(rows[0])].n_upstream
            x = resid.unsqueeze(2).expand(B, P, 3 * H, D)
            if patch:
                x = patched(x, rows, n_up, add_m)
            if keep:
                trace.receiver_inputs.append(x)
            xn = self._norm(x, pre + "ln1", freeze_ln_scale)
            xq, xk, xv = xn[:, :, :H], xn[:, :, H : 2 * H], xn[:, :, 2 * H :]
            if cfg.positional_embedding_type == "shortformer":
                xq = xq + W_pos[None, :, None, :]
                xk = xk + W_pos[None, :, None, :]
            q = torch.einsum("bphd,hde->bphe", xq, w[pre + "attn.W_Q"]) + w[pre + "attn.b_Q"]
            k = torch.einsum("bphd,hde->bphe", xk, w[pre + "attn.W_K"]) + w[pre + "attn.b_K"]
            v = torch.einsum("bphd,hde->bphe", xv, w[pre + "attn.W_V"]) + w[pre + "attn.b_V"]
            if patch:
                cq = corrupted.qkv[L].to(w.device)  # [3, B, P, H, dh]
                beta = dir_m[:, L]  # [b, 3, H]
                q = q + beta[:, None, 0, :, None] * (cq[0] - q)
                k = k + beta[:, None, 1, :, None] * (cq[1] - k)
                v = v + beta[:, None, 2, :, None] * (cq[2] - v)
            if keep:
                # Downstream reads the stacked tensor, so gradients w.r.t. it are defined.
                qkv = torch.stack([q, k, v])
                trace.qkv.append(qkv)
                q, k, v = qkv.unbind(0)
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / cfg.scale
            if cfg.causal:
                causal = torch.ones(P, P, dtype=torch.bool, device=w.device).tril()
                scores = scores.masked_fill(~causal, float("-inf"))
            pattern = scores.softmax(-1)
            z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
            result = torch.einsum("bqhe,hed->bqhd", z, w[pre + "attn.W_O"])  # [B, P, H, D]
            if zero_senders:
                result = torch.zeros_like(result)
            senders.extend(result.unbind(2))
            resid = resid + result.sum(2) + w[pre + "attn.b_O"]
            if not cfg.attn_only:
                r = int(g.mlp_receiver[L])
                if patch:
                    xm = patched(resid.unsqueeze(2), [r], g.receivers[r].n_upstream, add_m).squeeze(2)
                else:
                    # A tensor of its own (not `resid`, which also flows on through the skip
                    # connection), so its gradient is the MLP input's alone.
                    xm = resid.clone() if keep else resid
                if keep:
                    trace.mlp_inputs.append(xm)
                h = self._act(self._norm(xm, pre + "ln2", freeze_ln_scale) @ w[pre + "mlp.W_in"] + w[pre + "mlp.b_in"])
                out = add_sender(h @ w[pre + "mlp.W_out"] + w[pre + "mlp.b_out"])
                resid = resid + out
        xo = resid
        if patch:
            r = g.output_receiver
            xo = patched(xo.unsqueeze(2), [r], g.receivers[r].n_upstream, add_m).squeeze(2)
        if keep:
            trace.output_input = xo
            trace.senders = senders
        trace.logits = self._norm(xo, "ln_final", freeze_ln_scale) @ w["unembed.W_U"] + w["unembed.b_U"]
        return trace

    def input_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """The input nodes' outputs [n_inputs, batch, pos, d_model]: token+position embedding
        (one node), token and position embeddings (two nodes, tracr), or the token embedding
        alone (shortformer, whose positions enter only queries and keys)."""
        w, cfg = self.w, self.cfg
        tokens = tokens.to(w.device)
        B, P = tokens.shape
        emb = w["embed.W_E"][tokens]
        W_pos = w["pos_embed.W_pos"][:P]
        if cfg.split_embed:
            return torch.stack([emb, W_pos.expand(B, P, cfg.d_model)])
        if cfg.positional_embedding_type == "shortformer":
            return emb.unsqueeze(0)
        return (emb + W_pos).unsqueeze(0)

    @torch.no_grad()
    def cache(self, tokens: torch.Tensor, zero: bool = False) -> SenderCache:
        """Sender outputs and q/k/v of a run on `tokens` (zero=True: ACDC's zero ablation)."""
        return self.run(tokens, keep=True, zero_senders=zero).cache()

    def logits(self, tokens: torch.Tensor, mask=None, corrupted=None) -> torch.Tensor:
        return self.run(tokens, mask, corrupted).logits
