"""The no-grad forward of many patches at once, started from a recorded clean run.

`Engine.run` is the reference: every forward starts at the embedding, every receiver gets its
own LayerNorm and q/k/v product, every sender's output is stacked and subtracted for every
receiver, and every position is unembedded. For patches that touch few edges almost all of that
repeats the clean run. This path does only what a chunk of patches changes:

- it starts at the first layer any patch of the chunk touches, from the clean residual recorded
  there (`CleanRun.resid`): nothing upstream of a patched receiver differs from the clean run;
- receivers no patch of the chunk touches read one shared LayerNorm of the residual through one
  fused q/k/v product; a touched receiver gets its own input
  x + sum_s patch[s->r] * (source_s - current_s), LayerNorm and projection, with the sum taken
  over the senders the chunk patches only (for senders upstream of the start, source - clean is
  recorded once, `CleanRun.delta`);
- heads' outputs are summed by one product with W_O; a head's (or MLP's) own output is formed,
  and kept, only in the row groups whose patch reads it;
- only the scored positions (`CleanRun.positions`) are unembedded.

Values equal `Engine.run`'s up to float round-off (tests/test_patched_forward.py); patching
semantics as in `harness.core.engine` (docs/graph-and-patching.md#patching-semantics).

Shapes: tokens [batch, pos]; patches [c, n_edges]; a forward's rows are c x batch, patch-major;
logits [c, batch, n_positions, d_vocab_out].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from harness.core.engine import SenderCache
from harness.core.shared_qkv import fused_qkv, layer_qkv

if TYPE_CHECKING:
    from harness.core.engine import Engine


@dataclass
class CleanRun:
    """What patched forwards start from: the clean run, its source and the scored positions.

    tokens [batch, pos]; resid: n_layers + 1 tensors [batch, pos, d_model], the residual entering
    each layer, then the final residual; delta [n_senders, batch, pos, d_model], source minus
    clean sender outputs; positions [n_positions] long, the columns unembedded; logits
    [batch, n_positions, d_vocab_out], the clean model's at those columns."""

    tokens: torch.Tensor
    resid: list
    delta: torch.Tensor
    source: SenderCache
    positions: torch.Tensor
    logits: torch.Tensor

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[0])


class OneEdgePatches:
    """Patches [len(ids), n_edges] whose row i patches edge ids[i] alone, formed a chunk at a time
    (`rows`): on GPT-2 the whole matrix would be 32,923 x 32,923 (4.3 GB in float32)."""

    def __init__(self, ids: torch.Tensor, n_edges: int):
        self.ids, self.n_edges = torch.as_tensor(ids, dtype=torch.long).cpu(), n_edges

    @property
    def shape(self) -> tuple:
        return (len(self.ids), self.n_edges)

    def rows(self, i: int, j: int, device, dtype) -> torch.Tensor:
        part = self.ids[i:j]
        out = torch.zeros(len(part), self.n_edges, device=device, dtype=dtype)
        out[torch.arange(len(part), device=device), part.to(device)] = 1
        return out


class _Pass:
    """One forward over rows = c x batch from layer `start`; see the module docstring.

    Patched receivers are handled per (row group, receiver) pair: group i is patch i's batch
    rows, and a pair gets its own input only where patch i patches an edge into that receiver."""

    def __init__(self, engine: "Engine", run: Optional[CleanRun], add, direct, start: int, c: int, B: int, P: int):
        self.e, self.run, self.add, self.direct = engine, run, add, direct
        self.start, self.c, self.B, self.P = start, c, B, P
        g = engine.graph
        self.n_pre = int((torch.tensor([s.layer for s in g.senders]) < start).sum())  # senders before `start`
        # sender -> (row groups that read it [g], its output there [g, B, P, D], group -> row of it [c])
        self.fresh: dict[int, tuple] = {}
        if add is None:  # the clean run: one group, every sender kept
            self.readers = torch.ones(1, len(g.senders), dtype=torch.bool)
        else:
            self.readers = (add != 0).any(1).cpu()  # [c, n_senders]: row group reads sender
        self.wanted = self.readers.any(0)

    def pairs(self, receivers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(group [q], index into `receivers` [q]) of every pair whose patch patches an edge into
        that receiver."""
        if self.add is None:
            return receivers.new_zeros(0), receivers.new_zeros(0)
        on = (self.add[:, receivers.to(self.add.device)] != 0).any(-1).cpu()  # [c, k]
        grp, idx = torch.nonzero(on, as_tuple=True)
        return grp, idx

    def contribution(self, grp: torch.Tensor, receivers: torch.Tensor) -> torch.Tensor:
        """sum_s patch[s->r] * (source_s - current_s) for pairs (grp[i], receivers[i]) as
        [q, B, P, D], current_s the output of s in that pair's row group."""
        dev = self.add.device
        a = self.add[grp.to(dev), receivers.to(dev)]  # [q, n_senders]
        cols = torch.nonzero((a != 0).any(0)).flatten()
        pre, post = cols[cols < self.n_pre], cols[cols >= self.n_pre]
        if pre.numel():
            out = torch.einsum("qn,nbpd->qbpd", a[:, pre], self.run.delta[pre])
        else:
            out = a.new_zeros(len(grp), self.B, self.P, self.e.cfg.d_model)
        for s in post.tolist():  # senders computed in this pass, in the row groups that read them
            _, cur, row_of = self.fresh[s]
            sel = torch.nonzero(a[:, s] != 0).flatten()
            d = self.run.source.senders[s] - cur[row_of[grp.to(dev)[sel]]]  # [n, B, P, D]
            out.index_add_(0, sel, a[sel, s][:, None, None, None] * d)
        return out

    def keep(self, sender: int, compute) -> None:
        """Keep a sender's output, `compute(groups)` -> [g, B, P, D], in the row groups that read it."""
        if self.wanted[sender]:
            grp = torch.nonzero(self.readers[:, sender]).flatten().to(self.e.w.device)
            row_of = torch.full((self.c,), -1, dtype=torch.long, device=grp.device)
            row_of[grp] = torch.arange(len(grp), device=grp.device)
            self.fresh[sender] = (grp, compute(grp), row_of)

    def patched_into(self, x: torch.Tensor, receiver: int) -> torch.Tensor:
        """x [R, P, D] with the patched edges into one receiver (an MLP input, the output) added
        in the row groups that patch it."""
        grp, _ = self.pairs(torch.tensor([receiver]))
        if not grp.numel():
            return x
        extra = self.contribution(grp, torch.full_like(grp, receiver))
        return x.view(self.c, self.B, self.P, -1).index_add(0, grp.to(x.device), extra).view_as(x)

    def attention(self, L: int, resid: torch.Tensor) -> torch.Tensor:
        """Layer L's attention over resid [R, P, D]: q/k/v (patched where asked), the attention
        pattern, the summed head outputs plus b_O [R, P, D]; heads' own outputs kept when read."""
        e, cfg, g, w = self.e, self.e.cfg, self.e.graph, self.e.w
        c, B, P = self.c, self.B, self.P
        R, H, dh, D = c * B, cfg.n_heads, cfg.d_head, cfg.d_model
        pre = f"blocks.{L}."
        layer = layer_qkv(w, L)
        W, b = layer.W, layer.b
        shortformer = cfg.positional_embedding_type == "shortformer"
        W_pos = w["pos_embed.W_pos"][:P] if shortformer else None
        qkv = fused_qkv(e._norm(resid, pre + "ln1", False), layer, W_pos if shortformer else None)  # [R, P, 3, H, dh]
        recv = g.qkv_receiver[L].reshape(-1)  # [3H], letter-major
        grp, k = self.pairs(recv)
        if grp.numel():  # each patched (group, q/k/v input) pair: its own input, LayerNorm and product
            grp_d, k_d = grp.to(w.device), k.to(w.device)
            x = resid.view(c, B, P, D)[grp_d] + self.contribution(grp, recv[k])  # [q, B, P, D]
            xn = e._norm(x, pre + "ln1", False)
            if shortformer:
                xn = xn + (k_d < 2 * H).to(xn.dtype)[:, None, None, None] * W_pos
            proj = torch.einsum("qbpd,qde->qbpe", xn, W.reshape(3 * H, D, dh)[k_d]) + b.reshape(3 * H, dh)[k_d][:, None, None]
            qkv = qkv.view(c, B, P, 3 * H, dh)
            qkv[grp_d, :, :, k_d] = proj
            qkv = qkv.view(R, P, 3, H, dh)
        if self.direct is not None:
            beta = self.direct[:, L]  # [c, 3, H]
            if bool((beta != 0).any()):
                src = self.run.source.qkv[L].permute(1, 2, 0, 3, 4)  # [B, P, 3, H, dh]
                q5 = qkv.view(c, B, P, 3, H, dh)
                qkv = (q5 + beta[:, None, None, :, :, None] * (src - q5)).view(R, P, 3, H, dh)
        q, k, v = qkv.unbind(2)
        z = torch.einsum("bhqk,bkhe->bqhe", e.pattern(q, k, L), v)  # [R, P, H, dh]
        W_O = w[pre + "attn.W_O"]  # [H, dh, D]
        zc = z.view(c, B, P, H, dh)
        out = (z.reshape(R, P, H * dh) @ W_O.reshape(H * dh, D)) + w[pre + "attn.b_O"]
        if cfg.post_norms:  # each head's output is its share of the normed sum (b_O is zero)
            mult = e._post_scale(out, pre + "ln1_post", False)  # [R, P, D]
            mc = mult.view(c, B, P, D)
            for h in range(H):
                self.keep(int(g.head_sender[L, h]), lambda grp, h=h: (zc[grp, :, :, h] @ W_O[h]) * mc[grp])
            return out * mult
        for h in range(H):  # a head's own output, in the row groups that read it
            self.keep(int(g.head_sender[L, h]), lambda grp, h=h: zc[grp, :, :, h] @ W_O[h])
        return out

    def mlp(self, L: int, resid: torch.Tensor) -> torch.Tensor:
        e, g = self.e, self.e.graph
        pre = f"blocks.{L}."
        x = self.patched_into(resid, int(g.mlp_receiver[L]))
        out = e.mlp_out(x, pre)
        self.keep(int(g.mlp_sender[L]), lambda grp: out.view(self.c, self.B, self.P, -1)[grp])
        return out

    def layers(self, resid: torch.Tensor, record: Optional[list] = None) -> torch.Tensor:
        """resid [R, P, D] entering layer `start` -> the final residual (patched into the output
        receiver); `record` collects the residual entering each layer and the final one."""
        cfg, g = self.e.cfg, self.e.graph
        for L in range(self.start, cfg.n_layers):
            if record is not None:
                record.append(resid)
            attn = self.attention(L, resid)
            if cfg.attn_only:
                resid = resid + attn
            elif cfg.parallel_attn_mlp:  # the MLP reads the layer's input
                resid = resid + attn + self.mlp(L, resid)
            else:
                resid = resid + attn
                resid = resid + self.mlp(L, resid)
        if record is not None:
            record.append(resid)
        return self.patched_into(resid, g.output_receiver)


@torch.no_grad()
def clean_run(engine: "Engine", tokens: torch.Tensor, source: SenderCache,
              positions: Optional[torch.Tensor] = None) -> CleanRun:
    """Record the clean run of `tokens` [B, P] that patched forwards towards `source` start from.
    positions: the columns to unembed (default: all)."""
    w, g = engine.w, engine.graph
    tokens = tokens.to(w.device)
    B, P = tokens.shape
    if P > engine.cfg.n_ctx:
        raise ValueError(f"sequence length {P} exceeds the model's n_ctx {engine.cfg.n_ctx}")
    if source.senders.shape[1] != B:
        raise ValueError(f"source cache has batch {source.senders.shape[1]}, tokens have {B}")
    positions = torch.arange(P) if positions is None else torch.as_tensor(positions, dtype=torch.long)
    p = _Pass(engine, None, None, None, 0, 1, B, P)  # keeps every sender's clean output, for delta
    inputs = engine.input_embeddings(tokens)  # [n_inputs, B, P, D]
    for i in range(len(inputs)):
        p.keep(i, lambda grp, i=i: inputs[i][None])
    resid: list = []
    final = p.layers(inputs.sum(0), resid)
    clean = torch.stack([p.fresh[s][1][0] for s in range(len(g.senders))])  # [n_senders, B, P, D]
    src = SenderCache(source.senders.to(w.device), source.qkv.to(w.device))
    return CleanRun(tokens, resid, src.senders - clean, src, positions, engine.unembed(final, positions))


@torch.no_grad()
def patched_logits(engine: "Engine", run: CleanRun, patches: torch.Tensor) -> torch.Tensor:
    """patches [c, n_edges] (1 = patched towards run.source) -> logits [c, B, n_positions, V]."""
    g = engine.graph
    patches = patches.to(engine.w.device, engine.w.dtype)
    if patches.dim() != 2 or patches.shape[-1] != g.n_edges:
        raise ValueError(f"patches must be [k, {g.n_edges}], not {tuple(patches.shape)}")
    c, (B, P) = patches.shape[0], run.tokens.shape
    add, direct = engine.dense_patch(patches)
    recv_on = (add != 0).any(-1).any(0).cpu()  # [n_receivers]
    direct_on = (direct != 0).any(0).cpu()  # [n_layers, 3, H]
    layers = [r.layer for r, on in zip(g.receivers, recv_on.tolist()) if on]
    layers += torch.nonzero(direct_on.flatten(1).any(1)).flatten().tolist()
    if not layers:
        return run.logits.unsqueeze(0).expand(c, *run.logits.shape).clone()
    start = min(layers)
    p = _Pass(engine, run, add, direct, start, c, B, P)
    final = p.layers(run.resid[start].repeat(c, 1, 1))
    return engine.unembed(final, run.positions).view(c, B, len(run.positions), -1)
