"""A forward pass in which every receiver's input is the sum of its senders' outputs.

The engine runs transformer_lens-format weights (`Weights`) over ACDC's graph (`Graph`).
Any set of edges can be patched: a float `patch` over the counted edges (1 = patched) mixes,
for every edge s -> r, the sender's output in this run with its output in the *source* run, the
run patched from (the corrupted prompts under resample ablation, a zeroed run under zero
ablation; `harness.core.references` builds it) (docs/graph-and-patching.md#patching-semantics):

    input_r = const_r + sum_s [ (1 - patch[s->r]) * current_s + patch[s->r] * source_s ]

and a DIRECT edge (q/k/v input -> q/k/v) mixes the head's q/k/v the same way. patch = 0 is the
clean model; patch = 1 everywhere reproduces the source run. The patch is an ordinary tensor,
so it can carry gradients (attribution), be fractional (integrated gradients) and be batched
(one patch per batch row). Many circuits without gradients go through `run_many`, which runs
`harness.core.patched_forward`: the same values from a recorded clean run, doing only the work
the patches change.

Shapes: tokens [batch, pos]; sender outputs [n_senders, batch, pos, d_model]; q/k/v
[n_layers, 3, batch, pos, n_heads, d_head]; logits [batch, pos, d_vocab_out]; patch [n_edges]
or [batch, n_edges]. No method logic lives here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from harness.core.graph import Graph
from harness.core.shared_qkv import SharedQKV, fused_qkv, layer_qkv
from harness.core.weights import Weights


@dataclass
class SenderCache:
    """What a run leaves for patching: every sender's output and every head's q/k/v."""

    senders: torch.Tensor  # [n_senders, batch, pos, d_model]
    qkv: torch.Tensor  # [n_layers, 3, batch, pos, n_heads, d_head]
    zero_senders: bool = False  # every sender output is zero (`senders` may be a broadcast view): a difference is a copy

    def repeat_interleave(self, times: int) -> "SenderCache":
        """Each batch row repeated `times` times in a row (matches tokens.repeat_interleave)."""
        return SenderCache(self.senders.repeat_interleave(times, dim=1), self.qkv.repeat_interleave(times, dim=2),
                           self.zero_senders)

    def tile(self, times: int) -> "SenderCache":
        """The whole batch repeated `times` times (matches tokens.repeat(times, 1))."""
        return SenderCache(self.senders.repeat(1, times, 1, 1), self.qkv.repeat(1, 1, times, 1, 1, 1), self.zero_senders)

    def rows(self, sl) -> "SenderCache":
        return SenderCache(self.senders[:, sl], self.qkv[:, :, sl], self.zero_senders)


@dataclass
class Trace:
    """One forward's outputs, and (when asked) the tensors attribution needs.

    `qkv_inputs[L]` is [batch, pos, 3*n_heads, d_model] (q inputs of heads 0..H-1, then k,
    then v); `mlp_inputs[L]` and `output_input` are [batch, pos, d_model]; `qkv[L]` is
    [3, batch, pos, n_heads, d_head]; `senders` lists [batch, pos, d_model] outputs in graph order.
    Gradients with respect to any of them come from `torch.autograd.grad`.
    """

    logits: torch.Tensor
    positions: Optional[torch.Tensor] = None  # [n] long: the columns `logits` holds (None: all)
    senders: list = field(default_factory=list)
    qkv_inputs: list = field(default_factory=list)
    mlp_inputs: list = field(default_factory=list)
    output_input: Optional[torch.Tensor] = None
    qkv: list = field(default_factory=list)

    def cache(self) -> SenderCache:
        return SenderCache(torch.stack(self.senders).detach(), torch.stack(self.qkv).detach())


class _Rows:
    """values[index[s]] for sender ids s (an int or a list): compact held values read as if they
    were [n_senders, ...]."""

    def __init__(self, values: torch.Tensor, index: torch.Tensor):
        self.values, self.index = values, index

    def __getitem__(self, s):
        return self.values[self.index[s].tolist()] if isinstance(s, list) else self.values[int(self.index[s])]


def _gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


_ACTS: dict[str, Callable] = {"gelu_new": _gelu_new, "gelu": F.gelu, "relu": F.relu, "silu": F.silu,
                              "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dimension's halves: the rotate-half RoPE layout."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def spread_order(n: int) -> list:
    """0..n-1 in bit-reversed order (0, n/2, n/4, 3n/4, ...): every prefix is spread evenly over
    the range, so the first k chunks of a run sample all of it."""
    bits = max(1, (n - 1).bit_length())
    order = (int(format(i, f"0{bits}b")[::-1], 2) for i in range(1 << bits))
    return [j for j in order if j < n]


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
        self._flat_add = (g.add_receiver * len(g.senders) + g.add_sender).to(weights.device)
        self._direct_slot = g.direct_slot.reshape(-1).to(weights.device)
        self._rotary: dict = {}  # (pos, device, dtype) -> rotary cos, sin [pos, 1, rotary_dim]
        self.act_fn = _ACTS[self.cfg.act_fn]

    # ----- pieces -----------------------------------------------------------------------
    def _norm(self, x, prefix: str, freeze_scale: bool):
        t = self.cfg.normalization_type
        if t is None:
            return x
        if t == "RMS":
            scale = (x.pow(2).mean(-1, keepdim=True) + self.cfg.eps).sqrt()
            return x / (scale.detach() if freeze_scale else scale) * self.w[prefix + ".w"]
        x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + self.cfg.eps).sqrt()
        if freeze_scale:
            scale = scale.detach()
        x = x / scale
        if t == "LN":
            x = x * self.w[prefix + ".w"] + self.w[prefix + ".b"]
        return x

    def dense_patch(self, patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[*, n_edges] -> ADDITION part as [*, n_receivers, n_senders] and DIRECT part as
        [*, n_layers, 3, n_heads] (a grouped k/v edge's coefficient given to every head of its
        group, `Graph.direct_slot`); * is () or (batch,)."""
        g = self.graph
        lead = patch.shape[:-1]
        add = patch.new_zeros(*lead, len(g.receivers) * len(g.senders))
        add = add.index_copy(-1, self._flat_add, patch[..., : g.n_add])
        add = add.view(*lead, len(g.receivers), len(g.senders))
        direct = patch[..., g.n_add :][..., self._direct_slot].reshape(*lead, self.cfg.n_layers, 3, self.cfg.n_heads)
        return add, direct

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Rotary position embedding of q or k x [..., pos, heads, d_head] (positions 0..pos-1;
        identity for models without rotary): applied after the q/k receivers and DIRECT patching,
        so a q/k node and its patches mean what they mean in models without it."""
        cfg = self.cfg
        if cfg.positional_embedding_type != "rotary":
            return x
        P, rd = x.shape[-3], cfg.rotary_dims
        key = (P, x.device, x.dtype)
        if key not in self._rotary:  # angles in float64, then rounded once to the run's dtype
            inv = torch.tensor(cfg.rotary_inv_freq, dtype=torch.float64)
            ang = torch.arange(P, dtype=torch.float64)[:, None] * inv[None]
            ang = torch.cat((ang, ang), -1)[:, None]  # [P, 1, rd]
            self._rotary[key] = tuple((t * cfg.rotary_scale).to(x.device, x.dtype) for t in (ang.cos(), ang.sin()))
        cos, sin = self._rotary[key]
        rot, rest = x[..., :rd], x[..., rd:]
        rot = rot * cos + rotate_half(rot) * sin
        return torch.cat((rot, rest), -1) if rd < x.shape[-1] else rot

    def mlp_out(self, x: torch.Tensor, pre: str, freeze_ln_scale: bool = False, bias: bool = True) -> torch.Tensor:
        """One MLP's output [..., d_model] from its input x [..., d_model] (ln2, then plain or
        gated: act(n W_gate) * (n W_in + b_in)); `bias=False`: without b_out (no post-norm)."""
        w = self.w
        n = self._norm(x, pre + "ln2", freeze_ln_scale)
        pre_act = n @ w[pre + "mlp.W_in"] + w[pre + "mlp.b_in"]
        hidden = self.act_fn(n @ w[pre + "mlp.W_gate"]) * pre_act if self.cfg.gated_mlp else self.act_fn(pre_act)
        if not bias and not self.cfg.post_norms:
            return hidden @ w[pre + "mlp.W_out"]
        out = hidden @ w[pre + "mlp.W_out"] + w[pre + "mlp.b_out"]
        return self._norm(out, pre + "ln2_post", freeze_ln_scale) if self.cfg.post_norms else out

    def _post_scale(self, total: torch.Tensor, prefix: str, freeze_scale: bool) -> torch.Tensor:
        """w / rms(total) [..., d_model]: what a post-attention RMSNorm multiplies the attention
        output `total` [..., d_model] by, so each head's output times it is that head's share."""
        rms = (total.pow(2).mean(-1, keepdim=True) + self.cfg.eps).sqrt()
        return self.w[prefix + ".w"] / (rms.detach() if freeze_scale else rms)

    def pattern(self, q: torch.Tensor, k: torch.Tensor, layer: int) -> torch.Tensor:
        """Attention pattern [B, H, Q, K] of layer `layer` from unrotated q, k [B, P, H, d_head]:
        rotary, scale, soft-capping, causal and sliding-window masks, softmax."""
        cfg = self.cfg
        scores = torch.einsum("bqhe,bkhe->bhqk", self.rotate(q), self.rotate(k)) / cfg.scale
        if cfg.attn_softcap is not None:
            scores = torch.tanh(scores / cfg.attn_softcap) * cfg.attn_softcap
        P = scores.shape[-1]
        if cfg.causal:
            keep = torch.ones(P, P, dtype=torch.bool, device=scores.device).tril()
            if layer in cfg.local_layers:
                keep = keep.triu(-(cfg.sliding_window - 1))
            scores = scores.masked_fill(~keep, float("-inf"))
        return scores.softmax(-1)

    # ----- the forward ------------------------------------------------------------------
    def run(
        self,
        tokens: torch.Tensor,
        patch: Optional[torch.Tensor] = None,
        source: Optional[SenderCache] = None,
        *,
        record: bool = False,
        zero_senders: bool = False,
        freeze_ln_scale: bool = False,
        input_embeds: Optional[torch.Tensor] = None,
        positions: Optional[torch.Tensor] = None,
        hold: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        hold_grad: bool = False,
    ) -> Trace:
        """Forward `tokens` [batch, pos]; patch edges by `patch` ([n_edges] or [batch, n_edges],
        1 = patched) towards `source`. `record` keeps senders, receiver inputs and q/k/v in the
        trace. `zero_senders` zeroes every residual writer (how ACDC builds a zero-ablation
        source). `input_embeds` ([n_inputs, batch, pos, d_model]) replaces the input nodes'
        outputs (used to interpolate embeddings). `positions` ([n] long): unembed only these
        columns, logits [batch, n, d_vocab_out] (`TaskData.scored`: what the objectives read;
        empty when only the senders are wanted); None: every position.

        `hold` = (mask, values): mask bool [n_senders]; values [n_senders, batch, pos, d_model]
        (only the held rows are read) or [n_held, batch, pos, d_model] (the held senders' rows
        alone, in sender order; the two agree when every sender is held). Every held sender's output is
        values[s], detached (unless `hold_grad`), wherever it is read (by every receiver, and by a patch's `current`),
        and `trace.senders` records it: no gradient flows back into the held sender's computation
        (its receiver inputs and q/k/v get zero gradient). A held input node is just another input
        embedding; a held MLP, or a layer all of whose heads are held, is not computed (its
        receivers' inputs and q/k/v are still recorded). Equal to patching every edge out of the
        held senders (patch 1) towards a source whose senders are `values`, up to round-off
        (tests/test_engine_patching.py), but every receiver of a layer still reads one residual,
        so an unpatched run (patch None) keeps the plain/shared q/k/v paths' cost instead of the
        per-receiver patched one. With zero_senders every output, held or not, is zero.
        `hold_grad`: the held values are not detached, so gradients flow back into whatever
        computed them (SIIT's strict loss through the source run, harness.programs.siit).
        """
        cfg, w, g = self.cfg, self.w, self.graph
        tokens = tokens.to(w.device)
        B, P = tokens.shape
        if P > cfg.n_ctx:
            raise ValueError(f"sequence length {P} exceeds the model's n_ctx {cfg.n_ctx}")
        H, D = cfg.n_heads, cfg.d_model
        patching = patch is not None
        if patching:
            if source is None:
                raise ValueError("a patch needs a source SenderCache to patch towards")
            patch = patch.to(w.device, w.dtype)
            if patch.shape[-1] != g.n_edges:
                raise ValueError(f"patch has {patch.shape[-1]} edges, graph has {g.n_edges}")
            add_patch, direct_patch = self.dense_patch(patch)
            if patch.dim() == 1:
                add_patch, direct_patch = add_patch.unsqueeze(0), direct_patch.unsqueeze(0)
            source_senders = source.senders.to(w.device)
            if source_senders.shape[1] != B:
                raise ValueError(f"source cache has batch {source_senders.shape[1]}, tokens have {B}")
        held = held_values = None
        if hold is not None:
            held, held_values = hold
            held = torch.as_tensor(held, dtype=torch.bool).cpu()
            if held.shape != (len(g.senders),):
                raise ValueError(f"hold mask has shape {tuple(held.shape)}, graph has {len(g.senders)} senders")
            n_held = int(held.sum())
            rows_ok = held_values.shape[0] in (len(g.senders), n_held)
            if not rows_ok or tuple(held_values.shape[1:]) != (B, P, cfg.d_model):
                raise ValueError(f"hold values have shape {tuple(held_values.shape)}, want "
                                 f"[{len(g.senders)} or {n_held}, {B}, {P}, {cfg.d_model}]")
            held_values = (held_values if hold_grad else held_values.detach()).to(w.device, w.dtype)
            if held_values.shape[0] != len(g.senders):  # compact: row j is the j-th held sender's
                held_row = torch.full((len(g.senders),), -1, dtype=torch.long)
                held_row[held] = torch.arange(n_held)
                held_values = _Rows(held_values, held_row)
            if not n_held:
                held = held_values = None
        held_list = held.tolist() if held is not None else None
        trace = Trace(logits=None, positions=positions)  # type: ignore[arg-type]
        senders: list[torch.Tensor] = []

        def add_sender(x):
            if zero_senders:
                x = torch.zeros_like(x)
            senders.append(x)
            return x

        W_pos = w["pos_embed.W_pos"][:P] if cfg.has_pos_embed else None
        inputs = list(input_embeds.to(w.device) if input_embeds is not None else self.input_embeddings(tokens))
        if held is not None:  # held input nodes: other input embeddings
            inputs = [held_values[i] if held_list[i] else x for i, x in enumerate(inputs)]
        if not (patching or record or zero_senders or held is not None):
            return Trace(logits=self._plain(inputs, W_pos, freeze_ln_scale, positions), positions=positions)
        # an unpatched traced (or held) run with constant weights: q/k/v through `SharedQKV`
        shared = (record or held is not None) and not patching and not any(t.requires_grad for t in w.params.values())
        resid = 0
        for x in inputs:
            resid = resid + add_sender(x)

        def mix_in_source(base, rows, n_up):
            """base + sum_s patch[r, s] * (source_s - current_s) for receiver rows `rows`."""
            a = add_patch[:, rows, :n_up]  # [b, k, n]
            delta = source_senders[:n_up] - torch.stack(senders[:n_up])  # [n, B, P, D]
            return base + torch.einsum("bkn,nbpd->bpkd", a, delta)

        for L in range(cfg.n_layers):
            pre = f"blocks.{L}."
            layer_in = resid  # what a parallel MLP reads
            rows = g.qkv_receiver[L].reshape(-1)
            n_up = g.receivers[int(rows[0])].n_upstream
            qkv_in = resid.unsqueeze(2).expand(B, P, 3 * H, D)
            if patching:
                qkv_in = mix_in_source(qkv_in, rows, n_up)
            if record:
                trace.qkv_inputs.append(qkv_in)
            if shared:  # every receiver reads the residual: one LayerNorm, one fused product
                qkv = self._shared_qkv(qkv_in, L, W_pos, freeze_ln_scale)
                if record:
                    trace.qkv.append(qkv)
                q, k, v = qkv.unbind(0)
            else:
                q, k, v = self._receiver_qkv(qkv_in, pre, W_pos, freeze_ln_scale)
            if patching:
                source_qkv = source.qkv[L].to(w.device)  # [3, B, P, H, dh]
                beta = direct_patch[:, L]  # [b, 3, H]
                q = q + beta[:, None, 0, :, None] * (source_qkv[0] - q)
                k = k + beta[:, None, 1, :, None] * (source_qkv[1] - k)
                v = v + beta[:, None, 2, :, None] * (source_qkv[2] - v)
            if record and not shared:
                # Downstream reads the stacked tensor, so gradients w.r.t. it are defined.
                qkv = torch.stack([q, k, v])
                trace.qkv.append(qkv)
                q, k, v = qkv.unbind(0)
            n_held, post = 0, None
            if held is not None:
                heads = g.head_sender[L].tolist()
                n_held = sum(held_list[s] for s in heads)
            if n_held == H:  # the whole layer held: nothing reads its heads' computation
                result = held_values[heads].permute(1, 2, 0, 3)  # [B, P, H, D]
            else:
                z = torch.einsum("bhqk,bkhe->bqhe", self.pattern(q, k, L), v)
                result = torch.einsum("bqhe,hed->bqhd", z, w[pre + "attn.W_O"])  # [B, P, H, D]
                if cfg.post_norms:  # each head's share of the normed sum (b_O is zero, kept for its gradient)
                    post = self._post_scale(result.sum(2) + w[pre + "attn.b_O"], pre + "ln1_post", freeze_ln_scale)
                    result = result * post.unsqueeze(2)
                if n_held:  # (a compact `hold` gives the heads not held some other row: not selected)
                    mask = held[heads].to(w.device)[:, None]  # [H, 1]
                    result = torch.where(mask, held_values[heads].permute(1, 2, 0, 3), result)
            if zero_senders:
                result = torch.zeros_like(result)
            senders.extend(result.unbind(2))
            resid = resid + result.sum(2) + (w[pre + "attn.b_O"] if post is None else w[pre + "attn.b_O"] * post)
            if not cfg.attn_only:
                r = int(g.mlp_receiver[L])
                base = layer_in if cfg.parallel_attn_mlp else resid
                if patching:
                    mlp_in = mix_in_source(base.unsqueeze(2), [r], g.receivers[r].n_upstream).squeeze(2)
                else:
                    # A tensor of its own (not `resid`, which also flows on through the skip
                    # connection), so its gradient is the MLP input's alone.
                    mlp_in = base.clone() if record else base
                if record:
                    trace.mlp_inputs.append(mlp_in)
                if held is not None and held_list[int(g.mlp_sender[L])]:  # held: not computed
                    out = add_sender(held_values[int(g.mlp_sender[L])])
                else:
                    out = add_sender(self.mlp_out(mlp_in, pre, freeze_ln_scale))
                resid = resid + out
        final_in = resid
        if patching:
            r = g.output_receiver
            final_in = mix_in_source(final_in.unsqueeze(2), [r], g.receivers[r].n_upstream).squeeze(2)
        if record:
            trace.output_input = final_in
            trace.senders = senders
        trace.logits = self.unembed(final_in, positions, freeze_ln_scale)
        return trace

    def sender_outputs(self, trace: Trace, ids) -> torch.Tensor:
        """Outputs [len(ids), batch, pos, d_model] of the heads and MLPs `ids` (sender ids)
        recomputed from a recorded trace's receiver inputs, detached: gradients reach those
        senders' own weights and nothing upstream of them (SIIT's strict loss,
        harness.programs.siit). Not for input nodes, nor for post-normed heads (Gemma-2's
        post-attention norm mixes a layer's heads)."""
        g, w = self.graph, self.w
        if not trace.qkv_inputs:
            raise ValueError("sender_outputs needs a trace recorded with record=True")
        out = []
        for j in ids:
            s = g.senders[j]
            pre = f"blocks.{s.layer}."
            if s.kind == "mlp":
                out.append(self.mlp_out(trace.mlp_inputs[s.layer].detach(), pre))
                continue
            if s.kind != "head" or self.cfg.post_norms:
                raise ValueError(f"sender_outputs recomputes heads and MLPs of models without post-norms, not {s.name}")
            qkv_in = trace.qkv_inputs[s.layer].detach()
            W_pos = w["pos_embed.W_pos"][: qkv_in.shape[1]] if self.cfg.has_pos_embed else None
            q, k, v = self._receiver_qkv(qkv_in, pre, W_pos, False)
            z = torch.einsum("bhqk,bkhe->bqhe", self.pattern(q, k, s.layer), v)[:, :, s.head]
            out.append(z @ w[pre + "attn.W_O"][s.head])
        return torch.stack(out)

    def unembed(self, final_in, positions: Optional[torch.Tensor] = None, freeze_ln_scale: bool = False) -> torch.Tensor:
        """Logits [batch, n, d_vocab_out] at columns `positions` of the output's input final_in
        [batch, pos, d_model] (every column when None)."""
        if positions is not None:
            final_in = final_in[:, positions.to(final_in.device)]
        logits = self._norm(final_in, "ln_final", freeze_ln_scale) @ self.w["unembed.W_U"] + self.w["unembed.b_U"]
        cap = self.cfg.logit_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def _receiver_qkv(self, qkv_in, pre: str, W_pos, freeze_ln_scale: bool):
        """q, k, v [B, P, H, dh] from each receiver's own input qkv_in [B, P, 3H, D]."""
        w, H = self.w, self.cfg.n_heads
        normed = self._norm(qkv_in, pre + "ln1", freeze_ln_scale)
        q_in, k_in, v_in = normed[:, :, :H], normed[:, :, H : 2 * H], normed[:, :, 2 * H :]
        if self.cfg.positional_embedding_type == "shortformer":
            q_in = q_in + W_pos[None, :, None, :]
            k_in = k_in + W_pos[None, :, None, :]
        q = torch.einsum("bphd,hde->bphe", q_in, w[pre + "attn.W_Q"]) + w[pre + "attn.b_Q"]
        k = torch.einsum("bphd,hde->bphe", k_in, w[pre + "attn.W_K"]) + w[pre + "attn.b_K"]
        v = torch.einsum("bphd,hde->bphe", v_in, w[pre + "attn.W_V"]) + w[pre + "attn.b_V"]
        return q, k, v

    def _shared_qkv(self, qkv_in, L: int, W_pos, freeze_ln_scale: bool) -> torch.Tensor:
        """qkv [3, B, P, H, dh] of receivers whose inputs qkv_in [B, P, 3H, D] are all the
        residual (`harness.core.shared_qkv`)."""
        cfg = self.cfg
        pos = W_pos if cfg.positional_embedding_type == "shortformer" else None
        return SharedQKV.apply(qkv_in, layer_qkv(self.w, L), pos, cfg.eps, cfg.normalization_type, freeze_ln_scale)

    def _plain(self, inputs: list, W_pos: torch.Tensor, freeze_ln_scale: bool, positions=None) -> torch.Tensor:
        """Logits [batch, pos or len(positions), d_vocab_out] of an unpatched, unrecorded run: every receiver of a
        layer reads the same residual, so one LayerNorm per position, one fused q/k/v product and
        one output product per layer (what `run` computes per receiver, up to round-off)."""
        cfg, w = self.cfg, self.w
        B, P, D = inputs[0].shape
        H, dh = cfg.n_heads, cfg.d_head
        resid = sum(inputs[1:], inputs[0])
        for L in range(cfg.n_layers):
            pre = f"blocks.{L}."
            normed = self._norm(resid, pre + "ln1", freeze_ln_scale)
            pos = W_pos if cfg.positional_embedding_type == "shortformer" else None
            q, k, v = fused_qkv(normed, layer_qkv(w, L), pos).unbind(2)
            z = torch.einsum("bhqk,bkhe->bqhe", self.pattern(q, k, L), v)
            zW = z.reshape(B, P, H * dh) @ w[pre + "attn.W_O"].reshape(H * dh, D)
            if cfg.post_norms:
                attn = zW + w[pre + "attn.b_O"]
                resid = resid + attn * self._post_scale(attn, pre + "ln1_post", freeze_ln_scale)
                resid = resid + self.mlp_out(resid, pre, freeze_ln_scale)
            elif cfg.parallel_attn_mlp:
                resid = resid + zW + w[pre + "attn.b_O"] + self.mlp_out(resid, pre, freeze_ln_scale)
            else:  # summed in this order (GPT-2's, tracr's, the trained models'): their logits stay bit for bit
                resid = resid + zW + w[pre + "attn.b_O"]
                if not cfg.attn_only:
                    resid = resid + self.mlp_out(resid, pre, freeze_ln_scale, bias=False) + w[pre + "mlp.b_out"]
        return self.unembed(resid, positions, freeze_ln_scale)

    def clean_run(self, tokens: torch.Tensor, source: SenderCache, positions: Optional[torch.Tensor] = None):
        """Record the clean run of `tokens` that `run_patches` starts from (a
        `harness.core.patched_forward.CleanRun`); `positions`: the columns to unembed (default all)."""
        from harness.core import patched_forward

        return patched_forward.clean_run(self, tokens, source, positions)

    def run_patches(self, clean, patches: torch.Tensor) -> torch.Tensor:
        """No grad: patches [c, n_edges] over the clean run `clean` -> logits [c, batch,
        n_positions, d_vocab_out], one forward of c x batch rows that starts at the first layer the
        patches touch (`harness.core.patched_forward`). Equal to `run` up to round-off."""
        from harness.core import patched_forward

        return patched_forward.patched_logits(self, clean, patches)

    def run_many(self, tokens: torch.Tensor, patches: torch.Tensor, source: SenderCache, max_rows: int = 256,
                 chunk: Optional[int] = None, clean=None):
        """Many patches over one batch, no grad: yields (first patch index, logits [c, batch,
        n_positions, d_vocab_out]) per chunk of c patches. patches [k, n_edges] (a tensor, or an
        object with `shape` and `rows(i, j, device, dtype)`); a forward's rows are
        patches x examples (patch-major), `chunk` patches per forward (default: as many as keep
        rows <= `max_rows`). `clean`: the `clean_run` to start from (default: recorded here, all
        positions). Every caller that evaluates many circuits goes through here: patching, ACDC,
        faithfulness.

        Chunks come in `spread_order`: a forward costs more the earlier the layer it starts at, so a
        run cut short by a timing budget has sampled every part of the graph, not its first layers."""
        clean = clean if clean is not None else self.clean_run(tokens, source)
        chunk = chunk or max(1, max_rows // clean.batch)
        if isinstance(patches, torch.Tensor):
            patches = patches.to(self.w.device, self.w.dtype)
            take = lambda i: patches[i : i + chunk]  # noqa: E731
        else:  # rows formed a chunk at a time (`harness.core.patched_forward.OneEdgePatches`)
            take = lambda i: patches.rows(i, i + chunk, self.w.device, self.w.dtype)  # noqa: E731
        for j in spread_order(math.ceil(patches.shape[0] / chunk)):
            yield j * chunk, self.run_patches(clean, take(j * chunk))

    def input_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """The input nodes' outputs [n_inputs, batch, pos, d_model]: token+position embedding
        (one node), token and position embeddings (two nodes, tracr), or the token embedding
        alone (shortformer and rotary models, whose positions enter only queries and keys)."""
        w, cfg = self.w, self.cfg
        tokens = tokens.to(w.device)
        B, P = tokens.shape
        emb = w["embed.W_E"][tokens]
        if cfg.embed_scale != 1.0:
            emb = emb * cfg.embed_scale
        if not cfg.has_pos_embed:  # rotary: positions enter only queries and keys
            return emb.unsqueeze(0)
        W_pos = w["pos_embed.W_pos"][:P]
        if cfg.split_embed:
            return torch.stack([emb, W_pos.expand(B, P, cfg.d_model)])
        if cfg.positional_embedding_type == "shortformer":
            return emb.unsqueeze(0)
        return (emb + W_pos).unsqueeze(0)

    @torch.no_grad()
    def cache(self, tokens: torch.Tensor, zero: bool = False, input_embeds: Optional[torch.Tensor] = None) -> SenderCache:
        """Sender outputs and q/k/v of a run on `tokens` (zero=True: ACDC's zero ablation, made
        without a forward by `zero_cache`; `input_embeds` as in `run`). Nothing is unembedded."""
        if zero:
            return self.zero_cache(*tokens.shape)
        none = torch.zeros(0, dtype=torch.long)
        return self.run(tokens, record=True, input_embeds=input_embeds, positions=none).cache()

    @torch.no_grad()
    def zero_cache(self, batch: int, pos: int) -> SenderCache:
        """The zero-ablated run's cache without running it: every sender's output is zero, so
        layer L's receivers all read the attention output biases of layers < L, the same vector at
        every token, and its q/k/v follow from that vector alone (plus W_pos in queries and keys
        of shortformer models). Equal to `run(tokens, record=True, zero_senders=True).cache()`
        (tests/test_engine_patching.py); a forward's cost saved wherever a zero reference is
        patched from or attributed against."""
        cfg, w = self.cfg, self.w
        W_pos = w["pos_embed.W_pos"][:pos] if cfg.positional_embedding_type == "shortformer" else None
        resid = torch.zeros(1, pos if W_pos is not None else 1, cfg.d_model, dtype=w.dtype, device=w.device)
        qkv = []
        for L in range(cfg.n_layers):
            layer = fused_qkv(self._norm(resid, f"blocks.{L}.ln1", False), layer_qkv(w, L), W_pos)  # [1, 1 or P, 3, H, dh]
            qkv.append(layer.permute(2, 0, 1, 3, 4).expand(3, batch, pos, cfg.n_heads, cfg.d_head))
            resid = resid + w[f"blocks.{L}.attn.b_O"]
        # one zero broadcast to every sender: nothing is written (a [n_senders, B, P, D] fill was
        # a tenth of grad-wrong's zero-reference time on GPT-2)
        senders = torch.zeros((), dtype=w.dtype, device=w.device).expand(len(self.graph.senders), batch, pos, cfg.d_model)
        return SenderCache(senders, torch.stack(qkv), zero_senders=True)

    def logits(self, tokens: torch.Tensor, patch=None, source=None, positions=None) -> torch.Tensor:
        return self.run(tokens, patch, source, positions=positions).logits


def attention_patterns(cfg, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Softmax patterns [..., batch, heads, query, key] of q, k [..., batch, pos, heads, d_head]
    (leading dims broadcast; causal where `cfg` is), as `Engine.run` makes them: for code that
    reads a run's recorded q/k (`Trace.qkv`)."""
    scores = q.movedim(-2, -3) @ k.movedim(-2, -3).transpose(-1, -2) / cfg.scale
    if cfg.causal:
        P = scores.shape[-1]
        causal = torch.ones(P, P, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    return scores.softmax(-1)
