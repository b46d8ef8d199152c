"""Shared machinery of the gradient methods: traced runs, gradients at every receiver, and the
contraction that turns them into one score per edge without edge loops.

For an edge s -> r, d(objective)/d(patch[s->r]) = <dL/d input_r, source_s - current_s>
(summed over batch, positions, d_model); for a DIRECT edge it is <dL/d q, q_source - q>.
So one backward gives every edge's score (Syed et al. 2023; docs/methods.md#all-edge-attribution-in-one-backward).
"""
from __future__ import annotations

import torch

from harness.core.engine import Engine, SenderCache, Trace


def traced_run(engine: Engine, tokens, patch=None, source=None, input_embeds=None, freeze_ln_scale=False,
               positions=None) -> Trace:
    """A forward whose receiver inputs and q/k/v can be differentiated; `positions`: the columns
    unembedded (`TaskData.scored`; default all), the only ones an objective's gradient starts at."""
    if input_embeds is None:
        input_embeds = engine.input_embeddings(tokens)
    # Gradients need a leaf upstream of everything: the input embeddings.
    input_embeds = input_embeds.detach().requires_grad_(True)
    return engine.run(tokens, patch, source, record=True, input_embeds=input_embeds, freeze_ln_scale=freeze_ln_scale,
                      positions=positions)


def receiver_grads(trace: Trace, objective: torch.Tensor):
    """Gradients of a scalar objective at every receiver input and every q/k/v."""
    targets = list(trace.qkv_inputs) + list(trace.mlp_inputs) + [trace.output_input] + list(trace.qkv)
    grads = torch.autograd.grad(objective, targets, allow_unused=True)
    nq = len(trace.qkv_inputs)
    nm = len(trace.mlp_inputs)
    fix = lambda g, t: torch.zeros_like(t) if g is None else g  # noqa: E731
    grads = [fix(g, t) for g, t in zip(grads, targets)]
    return {
        "qkv_in": grads[:nq],
        "mlp_in": grads[nq : nq + nm],
        "out": grads[nq + nm],
        "qkv": grads[nq + nm + 1 :],
    }


def differences(trace: Trace, source: SenderCache, towards_source: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """source - trace (towards_source; the change an edge's patch makes) or trace - source, for
    the senders [n_senders, batch, pos, d_model] and the q/k/v [n_layers, 3, batch, pos, heads,
    d_head], each written once into its result: `trace.cache()` and a subtraction made two
    passes over a fresh block (stack, then difference: 10% of EAP's time over its floor on
    attn-only-4l), and a zero source is not read at all."""
    here = trace.senders
    S = torch.empty(len(here), *here[0].shape, dtype=here[0].dtype, device=here[0].device)
    for i, s in enumerate(here):
        s = s.detach()
        if source.zero_senders:
            torch.neg(s, out=S[i]) if towards_source else S[i].copy_(s)
        else:
            torch.sub(*((source.senders[i], s) if towards_source else (s, source.senders[i])), out=S[i])
    Q = torch.empty(len(trace.qkv), *trace.qkv[0].shape, dtype=S.dtype, device=S.device)
    for L, q in enumerate(trace.qkv):
        q = q.detach()
        torch.sub(*((source.qkv[L], q) if towards_source else (q, source.qkv[L])), out=Q[L])
    return S, Q


def contract(engine: Engine, grads: dict, sender_vec: torch.Tensor, qkv_vec: torch.Tensor, per_example: bool = False,
             per_position: bool = False) -> torch.Tensor:
    """Score every edge: <grad at receiver, sender_vec[sender]> and <grad at q/k/v, qkv_vec>.

    sender_vec: [n_senders, batch, pos, d_model]; qkv_vec: [n_layers, 3, batch, pos, heads, d_head].
    Returns [n_edges]; `per_example` keeps the batch axis and `per_position` the token positions'
    ([batch, n_edges], [pos, n_edges] or [batch, pos, n_edges]), terms that sum over the kept axes
    to the [n_edges] scores. A position's term is what that token's residual (ADDITION edges) or
    that token's q/k/v (DIRECT edges) contributes to the edge's score.
    The sender tensor is read in place as one [n_senders, batch*pos*d_model] matrix and only the
    smaller gradient block is laid out, so each receiver group is one matrix product (an einsum
    per group copied the sender block every time: 5x slower on GPT-2, measured by the timing
    suite); with kept axes, one batched product over them.
    """
    g, cfg = engine.graph, engine.cfg
    n_senders, B, P, _ = sender_vec.shape
    keep = ("b" if per_example else "") + ("p" if per_position else "")
    lead = tuple({"b": B, "p": P}[c] for c in keep)
    if keep:
        summed = "".join(c for c in "bpd" if c not in keep)
        n_lead = B ** per_example * P ** per_position
        # senders "xbpd" laid out [kept, x, summed] (one copy); gradients "bpkd" as [kept, k, summed]
        S = sender_vec.permute(*("xbpd".index(c) for c in keep + "x" + summed)).reshape(n_lead, n_senders, -1)

        def block(grad, n_up):  # grad [B, P, k, D] -> [kept, k, n_up]
            G = grad.permute(*("bpkd".index(c) for c in keep + "k" + summed)).reshape(n_lead, grad.shape[2], -1)
            return torch.bmm(G, S[:, :n_up].transpose(1, 2)).view(*lead, grad.shape[2], n_up)
    else:
        S = sender_vec.reshape(n_senders, -1)

        def block(grad, n_up):  # grad [B, P, k, D] -> [k, n_up]
            G = grad.permute(2, 0, 1, 3).reshape(grad.shape[2], -1)
            return G @ S[:n_up].T
    dense = sender_vec.new_zeros(*lead, len(g.receivers), len(g.senders))
    for L in range(cfg.n_layers):
        rows = g.qkv_receiver[L].reshape(-1)
        n_up = g.receivers[int(rows[0])].n_upstream
        if cfg.kv_group > 1:  # a group's heads read one k/v receiver each: their terms add up
            dense[..., :n_up].index_add_(len(lead), rows.to(dense.device), block(grads["qkv_in"][L], n_up))
        else:
            dense[..., rows, :n_up] = block(grads["qkv_in"][L], n_up)
        if not cfg.attn_only:
            r = int(g.mlp_receiver[L])
            n_up = g.receivers[r].n_upstream
            dense[..., r : r + 1, :n_up] = block(grads["mlp_in"][L].unsqueeze(2), n_up)
    r = g.output_receiver
    dense[..., r : r + 1, :] = block(grads["out"].unsqueeze(2), n_senders)
    flat = (g.add_receiver * n_senders + g.add_sender).to(dense.device)
    add = dense.reshape(*lead, -1)[..., flat]
    eq = f"xbphe,xbphe->{keep}xh"
    direct = torch.stack([torch.einsum(eq, gq, qkv_vec[L]) for L, gq in enumerate(grads["qkv"])], -3)  # [*, L, 3, H]
    direct = g.direct_from_heads(direct) if cfg.kv_group > 1 else direct.reshape(*lead, -1)
    return torch.cat([add, direct], -1)
